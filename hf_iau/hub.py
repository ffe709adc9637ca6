"""Model card, deletion ledger and Hub upload for unlearned checkpoints.

``IAUTrainer.save_model()`` calls :func:`write_unlearning_artifacts` on the folder being saved:
it copies the parent checkpoint's ledger (from ``trainer.parent_checkpoint`` or the local folder
the model was loaded from, ``trainer.model_id``) into the new folder as a new file, appends one
entry per request in ``trainer.unlearning_history``, renders ``README.md`` from the ledger, and writes
the deletion record ``deleted_rows.json`` (keyed digests of every row deleted so far, see hf_iau.request).
Each entry also records what the card says about the model (base model, parent, dataset, the GR of
the training behind the weights read from the checkpoint's own record, task, hardware, versions), so
the card is rendered from the ledger alone; :func:`update_card` rewrites it once ``hf-iau evaluate``
has compared the checkpoint with the retrained model.
``IAUTrainer.push_to_hub()`` calls :func:`push_unlearned`: full model, LoRA adapter alone, or
the adapter merged into its base model, safetensors only. :func:`fetch_record_folder` reads a Hub
repo's ledger and deletion record into a temporary folder that is removed after use.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

from .card import build_model_card, is_hub_id
from .ledger import (
    DELETION_RECORD_NAME,
    LEDGER_NAME,
    append_entry,
    card_metadata,
    checkpoint_digest,
    config_hash,
    ledger_path,
    read_ledger,
    weight_hashes,
    write_ledger,
)

CARD_NAME = "README.md"
PUSH_IGNORE_PATTERNS = [
    "_*",
    "checkpoint-*",
    ".tmp-*",
    "*.tmp",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.pkl",
    "*.pickle",
    "*.ckpt",
]
_VERSION_PACKAGES = (
    "hf-iau", "torch", "transformers", "peft", "accelerate", "datasets", "safetensors", "huggingface_hub",
)
_KEYED_FIELDS = ("fingerprint_scheme", "fingerprint_key_id", "deleted_rows", "deleted_rows_sha256")
_STATE_ATTR = "_hf_iau_hub_state"
_PUSHING_ATTR = "_hf_iau_pushing"


@dataclass
class _Parent:
    source: str | None = None
    local_dir: Path | None = None
    sha256: str | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)
    base_model: str | None = None
    training: dict[str, Any] | None = None  # how the parent's weights were trained, from its own record


@dataclass
class _State:
    parent: _Parent
    times: dict[tuple[int, str], str] = field(default_factory=dict)
    children: dict[tuple[int, str], tuple[str | None, dict[str, str], str]] = field(default_factory=dict)


# --------------------------------------------------------------------------- context


def parent_checkpoint(trainer: Any) -> str | None:
    """Where the trainer's model came from: ``trainer.parent_checkpoint`` if set, else ``trainer.model_id``.

    Set ``trainer.parent_checkpoint = "<folder>"`` when the model object was loaded from an
    unlearned checkpoint by hand (e.g. ``PeftModel.from_pretrained(base, folder)``), so that
    the new ledger extends that folder's chain.
    """
    explicit = getattr(trainer, "parent_checkpoint", None)
    if explicit:
        return str(explicit)
    model_id = getattr(trainer, "model_id", None)
    return str(model_id) if model_id else None


def has_unlearning_record(trainer: Any) -> bool:
    """True when the trainer has unlearning requests or its parent checkpoint folder has a ledger."""
    if getattr(trainer, "unlearning_history", None):
        return True
    source = parent_checkpoint(trainer)
    return bool(source) and Path(source).is_dir() and ledger_path(source).is_file()


def _load_parent(source: str | None, output_dir: Path) -> _Parent:
    if not source or not Path(source).is_dir():
        return _Parent(source=source)
    folder = Path(source).resolve()
    entries = read_ledger(folder)  # raises LedgerError on a torn parent ledger
    last = entries[-1] if entries else {}
    base = last.get("base_model") or card_metadata(folder / CARD_NAME).get("base_model")
    base = (base[0] if base else None) if isinstance(base, list) else base
    # an unlearned parent carries its training record along the ledger; its training_args.json is the unlearning
    # run's. A plain checkpoint's training_args.json is the record of the training that made it.
    training = last.get("training") if entries else training_record(folder)
    parent = _Parent(source=str(folder), local_dir=folder, entries=entries, base_model=str(base) if base else None,
                     training=training)
    if folder == output_dir.resolve():  # saving in place: the weights there are already the child's
        parent.sha256 = last.get("child_checkpoint_sha256")
        return parent
    parent.sha256 = checkpoint_digest(weight_hashes(folder))
    if entries and parent.sha256 and last.get("child_checkpoint_sha256") != parent.sha256:
        warnings.warn(
            f"The weights in {folder} do not match the last entry of its deletion ledger (changed after the last "
            "request); the new ledger records the actual parent hash and `hf-iau ledger verify` will flag the gap.",
            stacklevel=3,
        )
    return parent


def training_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """Gradient restriction of the training that produced a plain checkpoint, from its ``training_args.json``.

    ``{"gr_alpha", "gr_mode", "gr_norm", "source"}``; ``gr_alpha`` 0 when the arguments have no GR fields (a plain
    ``Trainer``); None when the folder holds no readable training arguments (then nothing is claimed).
    """
    data = _json_file(Path(folder) / "training_args.json")
    return _gr_fields(data, f"`training_args.json` of `{Path(folder).name}`") if data else None


def _gr_fields(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    return {"gr_alpha": float(values.get("gr_alpha") or 0.0), "gr_mode": values.get("gr_mode"),
            "gr_norm": values.get("gr_norm"), "source": source}


@contextmanager
def fetch_record_folder(repo_id: str) -> Iterator[Path | None]:
    """A temporary folder holding the Hub repo's deletion ledger and record, removed when the block ends.

    ``from_pretrained`` does not fetch these files; use it as ``with fetch_record_folder(repo_id) as folder:``
    and read the record inside the block. Yields None when ``repo_id`` is not a Hub id or the repo holds neither
    file; when the Hub cannot be reached (offline, network, access), warns that earlier deletions were not
    checked and yields None.
    """
    if not is_hub_id(repo_id):
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="hf_iau_record_") as tmp:
        yield _download_record(repo_id, Path(tmp))


def _download_record(repo_id: str, folder: Path) -> Path | None:
    """Copy the repo's ledger and deletion record into ``folder``; None when it has neither or cannot be read."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, RemoteEntryNotFoundError, RepositoryNotFoundError

    found = False
    for name in (LEDGER_NAME, DELETION_RECORD_NAME):
        try:
            hf_hub_download(repo_id, name, local_dir=folder)  # not the user's cache: everything goes with `folder`
        except (RemoteEntryNotFoundError, RepositoryNotFoundError) as err:
            if isinstance(err, GatedRepoError):  # it exists, but this token may not read it
                return _unreachable(repo_id, err)
            continue
        except OSError as err:  # offline, no connection and not cached, HTTP errors: the record cannot be read
            return _unreachable(repo_id, err)
        found = True
    return folder if found else None


def _unreachable(repo_id: str, err: BaseException) -> None:
    warnings.warn(
        f"Could not read the deletion ledger of Hub model {repo_id!r} ({err.__class__.__name__}); rows deleted by "
        "earlier requests on it are not excluded from retain_dataset=None. Load it from a local folder holding "
        f"{DELETION_RECORD_NAME}, or pass `retain_dataset=` explicitly.",
        stacklevel=5,
    )


def _state(trainer: Any, output_dir: Path) -> _State:
    source = parent_checkpoint(trainer)
    state = trainer.__dict__.get(_STATE_ATTR)
    resolved = str(Path(source).resolve()) if source and Path(source).is_dir() else source
    if state is None or state.parent.source != resolved:
        state = _State(parent=_load_parent(source, output_dir))
        trainer.__dict__[_STATE_ATTR] = state
    return state


def _unwrap(trainer: Any) -> Any:
    accelerator = getattr(trainer, "accelerator", None)
    return trainer.model if accelerator is None else accelerator.unwrap_model(trainer.model)


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _base_model(trainer: Any, parent: _Parent) -> str | None:
    """The model the weights descend from: the parent's recorded base, the LoRA adapter's base, the base model's
    name or the trainer's source (Hub id or local path, as recorded); None for a model built in memory."""
    if parent.base_model:
        return str(parent.base_model)
    model = _unwrap(trainer)
    if _is_peft(model):
        cfg = model.peft_config.get(getattr(model, "active_adapter", "default"))
        if cfg is not None and getattr(cfg, "base_model_name_or_path", None):
            return str(cfg.base_model_name_or_path)
    from .losses import base_model_of

    name = getattr(getattr(base_model_of(model), "config", None), "_name_or_path", None)
    name = name or getattr(trainer, "model_id", None)
    return (hub_origin(name) or str(name)) if name else None


def hub_origin(folder: str | os.PathLike) -> str | None:
    """The Hub id a local checkpoint folder descends from, as its card (``base_model``) or LoRA adapter config
    (``base_model_name_or_path``) records it; None when it records none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    base = card_metadata(folder / CARD_NAME).get("base_model")
    names = list(base) if isinstance(base, list) else [base]
    names.append(_json_file(folder / "adapter_config.json").get("base_model_name_or_path"))
    return next((str(n) for n in names if n and is_hub_id(str(n))), None)


def _json_file(path: Path) -> dict[str, Any]:
    """A JSON object file's content; ``{}`` when absent or not a JSON object (it then records nothing)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _training(trainer: Any, parent: _Parent) -> dict[str, Any] | None:
    """GR of the training behind the unlearned weights: this trainer's own when it trained, else the parent's record."""
    state = getattr(trainer, "state", None)
    if state is not None and (getattr(state, "global_step", 0) or 0) > 0:
        return _gr_fields(vars(trainer.args), "this run's `train()`")
    return parent.training


def _dataset_name(trainer: Any, parent: _Parent) -> str | None:
    """``trainer.dataset_name`` (set it to the Hub id, as TRL's ``dataset_name``), else the train dataset's own name
    (not a loader's: ``load_dataset("csv", ...)`` names its data "csv"), else the parent's."""
    info = getattr(getattr(trainer, "train_dataset", None), "info", None)
    own = getattr(info, "dataset_name", None)
    own = own if own and own != getattr(info, "builder_name", None) else None
    name = getattr(trainer, "dataset_name", None) or own or (parent.entries[-1].get("dataset") if parent.entries else None)
    return str(name) if name else None


def _task_type(model: Any) -> str:
    from .losses import base_model_of, loss_kind

    kind = loss_kind(model)
    if kind == "causal_lm":
        return "text-generation"
    if kind == "classification":
        main = getattr(base_model_of(model), "main_input_name", "input_ids")
        return "image-classification" if main == "pixel_values" else "text-classification"
    return "other"


def library_versions() -> dict[str, str]:
    """Installed versions of python, hf-iau and the libraries it builds on."""
    versions = {"python": platform.python_version()}
    for name in _VERSION_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name == "hf-iau":
                from . import __version__

                versions[name] = __version__
    return versions


def hardware_description(trainer: Any) -> str:
    """Accelerator name (or CPU, with the vector ISA of torch's kernels) and process count of the trainer's run."""
    import torch

    args = trainer.args
    world = int(getattr(args, "world_size", 1) or 1)
    device = args.device
    if device.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
        return f"{world} × {name}" if world > 1 else name
    if device.type == "mps":
        return "Apple MPS"
    kernels = torch.backends.cpu.get_cpu_capability()  # the vector ISA of torch's CPU kernels: it changes the rounding
    text = f"CPU ({platform.machine() or 'unknown'}, {kernels} kernels, {os.cpu_count()} cores visible)"
    return text + (f", {world} processes" if world > 1 else "")


def _evaluation(trainer: Any, fingerprint: str, folders: list[Path]) -> dict[str, float] | None:
    """Aggregate metrics vs the retrained model for the latest request, if an evaluation is attached."""
    candidates: list[tuple[Any, bool]] = []
    attached = getattr(trainer, "unlearning_report", None)
    if attached is not None:
        candidates.append((attached, True))
    candidates += [(_json_file(folder / "report.json"), False) for folder in folders]
    for rep, explicit in candidates:
        metrics = getattr(rep, "metrics", None) if not isinstance(rep, Mapping) else rep.get("metrics")
        info = getattr(rep, "info", None) if not isinstance(rep, Mapping) else rep.get("info")
        info = info or {}
        if not isinstance(metrics, Mapping):
            continue
        fp = info.get("forget_fingerprint")
        if fp == fingerprint or (explicit and fp is None):
            return {str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    return None


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    return str(value)


# --------------------------------------------------------------------------- artifacts


def write_unlearning_artifacts(
    trainer: Any, output_dir: str | os.PathLike, variant: str | None = None, record: bool = True
) -> dict[str, str]:
    """Write ``deletion_ledger.jsonl`` and the card ``README.md`` into ``output_dir`` (weights already saved).

    The ledger is the parent checkpoint's ledger copied to a new file plus one entry per request
    in ``trainer.unlearning_history`` (child hash = sha256 of ``output_dir``'s ``*.safetensors``
    files for the latest request). ``variant``: ``"full"``, ``"adapter"`` (default for PEFT
    models) or ``"merged"``; ``record=False`` leaves the trainer's saved-checkpoint record as is.
    Writes nothing and returns ``{}`` when there is neither a request nor a parent ledger.
    """
    history = list(getattr(trainer, "unlearning_history", None) or [])
    out = Path(output_dir)
    state = _state(trainer, out)
    if not history and not state.parent.entries:
        return {}
    variant = variant or ("adapter" if _is_peft(_unwrap(trainer)) else "full")
    ledger = _write_ledger(trainer, state, out, history, variant, record)
    trainer.deletion_record.save(out)  # keyed row digests of every row deleted so far; never ids, never the key
    entries = read_ledger(ledger)
    args = trainer.args
    evaluation = _evaluation(trainer, entries[-1]["forget_fingerprint"], [out, Path(args.output_dir)])
    model_name = (getattr(args, "hub_model_id", None) or Path(args.output_dir).absolute().name).split("/")[-1]
    card_path = write_card(out, entries, model_name, evaluation)
    return {"card": str(card_path), "ledger": str(ledger)}


def _write_ledger(trainer: Any, state: _State, out: Path, history: list[dict[str, Any]], variant: str,
                  record: bool) -> Path:
    """The parent's chain as a new file in ``out`` plus one entry per request of ``history``."""
    parent = state.parent
    files = weight_hashes(out)
    digest = checkpoint_digest(files)
    ledger = write_ledger(ledger_path(out), parent.entries)  # a new inode: the parent's file is never appended to
    prev_child = parent.sha256 or (parent.entries[-1].get("child_checkpoint_sha256") if parent.entries else None)
    last = len(history) - 1
    about = _checkpoint_facts(trainer, parent)
    for i, rec in enumerate(history):
        key = (i, str(rec["request_id"]))
        when = state.times.setdefault(key, _utc_now())
        if i == last and not (record and key in state.children):
            child, child_files, fmt = digest, files, variant
        else:  # an earlier request: the checkpoint saved right after it, if any
            child, child_files, fmt = state.children.get(key, (None, {}, variant))
        entry = request_entry(rec, i)
        entry.update(time_utc=when, parent_checkpoint_sha256=prev_child, child_checkpoint_sha256=child,
                     child_weight_files=dict(child_files), checkpoint_format=fmt, **about)
        append_entry(ledger, entry)
        prev_child = child
    if record and history:
        state.children.setdefault((last, str(history[-1]["request_id"])), (digest, dict(files), variant))
    return ledger


def request_entry(rec: Mapping[str, Any], position: int) -> dict[str, Any]:
    """The ledger fields of one ``unlearning_history`` record: everything that determines the update.

    ``config`` is written whole, as the request recorded it; ``seed`` and ``request_index`` are the public
    inputs of the request's random choices (from the record; else ``unlearn_seed``/``seed`` of the config and
    the request's position in the trainer's history).
    """
    config = {str(k): _jsonable(v) for k, v in (rec.get("config") or {}).items()}
    seed = rec.get("seed", config.get("unlearn_seed") if config.get("unlearn_seed") is not None else config.get("seed"))
    metrics = {
        str(k): float(v) for k, v in (rec.get("metrics") or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return {
        "request_id": str(rec["request_id"]),
        "method": str(rec.get("method") or "iau"),
        "seed": _jsonable(seed),
        "request_index": int(rec.get("request_index", position)),
        "forget_fingerprint": str(rec["forget_fingerprint"]),
        **{k: _jsonable(rec[k]) for k in _KEYED_FIELDS if rec.get(k) is not None},
        # a kept curvature the estimate used (source, content hash); absent: measured on the request's rows, or none
        **({"curvature": {str(k): str(v) for k, v in rec["curvature"].items()}} if rec.get("curvature") else {}),
        "forget_size": int(rec["forget_size"]),
        "retain_size": int(rec.get("retain_size", 0)),
        "config": config,
        "config_sha256": config_hash(config),
        "metrics": metrics,
    }


def _checkpoint_facts(trainer: Any, parent: _Parent) -> dict[str, Any]:
    """What every entry of this save records about the model: origin, data, training, task, machine, versions."""
    versions = library_versions()
    return {
        "base_model": _base_model(trainer, parent),
        # a local parent by its folder name only (the card is public); a Hub parent by its id
        "parent_checkpoint": (Path(parent.source).name if parent.local_dir else parent.source) if parent.source else None,
        "parent_checkpoint_local": parent.local_dir is not None,
        "dataset": _dataset_name(trainer, parent),
        "training": _training(trainer, parent),
        "task_type": _task_type(_unwrap(trainer)),
        "environment": {"hardware": hardware_description(trainer), "versions": versions},
        "hf_iau_version": versions.get("hf-iau"),
    }


def write_card(folder: Path, entries: list[dict[str, Any]], model_name: str,
               evaluation: Mapping[str, Any] | None = None, base_model: str | None = None) -> Path:
    """Render ``README.md`` in ``folder`` from its ledger ``entries`` (and an evaluation vs the retrained model)."""
    card = build_model_card(entries, model_name=model_name, base_model=base_model, evaluation=evaluation,
                            ledger_name=LEDGER_NAME)
    path = Path(folder) / CARD_NAME
    card.save(path)
    return path


def update_card(folder: str | os.PathLike, report: Any = None) -> Path:
    """Rewrite the card of an unlearned checkpoint folder with an evaluation against the retrained model.

    Call it after ``hf-iau evaluate`` (or ``evaluate_unlearning``): ``report`` is an ``UnlearningReport``, its
    ``to_dict()``, or a path to ``report.json`` (default: ``<folder>/report.json``). Raises ``ValueError`` when the
    folder has no ledger, no report is found, or the report evaluated another forget set (other fingerprint).
    """
    folder = Path(folder)
    entries = read_ledger(folder)
    if not entries:
        raise ValueError(f"{folder} has no {LEDGER_NAME}: update_card rewrites the card of an unlearned checkpoint.")
    latest = entries[-1]
    evaluation = _report_metrics(report if report is not None else folder / "report.json", latest["forget_fingerprint"])
    meta = card_metadata(folder / CARD_NAME)
    base = latest.get("base_model") or meta.get("base_model")  # cards of old ledgers hold it in their metadata
    return write_card(folder, entries, str(meta.get("model_name") or folder.name), evaluation,
                      base_model=str(base) if base else None)


def _report_metrics(report: Any, fingerprint: str) -> dict[str, float]:
    if isinstance(report, (str, os.PathLike)):
        path = Path(report)
        if not path.is_file():
            raise ValueError(f"no evaluation report at {path}: run `hf-iau evaluate` first, or pass `report=`.")
        report = json.loads(path.read_text())
    metrics = report.get("metrics") if isinstance(report, Mapping) else getattr(report, "metrics", None)
    info = (report.get("info") if isinstance(report, Mapping) else getattr(report, "info", None)) or {}
    if not isinstance(metrics, Mapping):
        raise ValueError("`report` holds no `metrics`: pass an UnlearningReport, its to_dict() or a report.json path.")
    seen = info.get("forget_fingerprint")
    if seen is not None and seen != fingerprint:
        raise ValueError(
            f"the report evaluated forget set {str(seen)[:16]}…, the checkpoint's latest request forgot "
            f"{fingerprint[:16]}…: evaluate this checkpoint's forget set (same ids and fingerprint key)."
        )
    return {str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# --------------------------------------------------------------------------- upload


def save_merged(trainer: Any, output_dir: str | os.PathLike) -> None:
    """Save the trainer's PEFT model merged into its base (``merge_and_unload`` on a copy) as safetensors."""
    model = _unwrap(trainer)
    if not _is_peft(model):
        raise ValueError(
            "merge_adapter=True needs a PEFT (LoRA) model; this trainer holds a full model: push it without "
            "merge_adapter."
        )
    if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False):
        raise ValueError(
            "merge_adapter=True is not supported under FSDP/DeepSpeed; push the adapter, then merge offline with "
            "PeftModel.from_pretrained(base, folder).merge_and_unload()."
        )
    merged = copy.deepcopy(model).merge_and_unload()  # the trainer's model keeps its adapter
    merged.save_pretrained(str(output_dir))
    if getattr(trainer, "processing_class", None) is not None:
        trainer.processing_class.save_pretrained(str(output_dir))
    args_json = Path(trainer.args.output_dir) / "training_args.json"
    if args_json.is_file():
        shutil.copyfile(args_json, Path(output_dir) / "training_args.json")


def push_unlearned(
    trainer: Any,
    repo_id: str | None = None,
    commit_message: str | None = "Upload unlearned checkpoint (hf-iau)",
    blocking: bool = True,
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
    merge_adapter: bool = False,
    endpoint: str | None = None,
    create_pr: bool = False,
) -> Any:
    """Save the model with its card and ledger, create the repo if needed, and upload.

    Uploads ``args.output_dir`` (full model, or the LoRA adapter alone for PEFT models; pickle
    files and ``checkpoint-*`` folders excluded), or with ``merge_adapter=True`` a temporary
    folder holding the merged model, its card and ledger. Returns the ``CommitInfo`` (a
    ``Future`` when ``blocking=False``), ``None`` on non-main processes or when re-entered.
    """
    if trainer.__dict__.get(_PUSHING_ATTR):
        return None  # save_model() -> Trainer.save_model -> push_to_hub (args.push_to_hub=True): already pushing
    from huggingface_hub import HfApi

    from . import __version__

    args = trainer.args
    trainer.__dict__[_PUSHING_ATTR] = True
    try:
        trainer.callback_handler.on_push_begin(args, trainer.state, trainer.control)
        trainer.save_model()
        if not trainer.is_world_process_zero():
            return None
        endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None  # read at call time, not import time
        api = HfApi(endpoint=endpoint.rstrip("/") if endpoint else None, library_name="hf-iau", library_version=__version__)
        token = token if token is not None else getattr(args, "hub_token", None)
        name = repo_id or getattr(args, "hub_model_id", None) or Path(args.output_dir).absolute().name
        private = private if private is not None else getattr(args, "hub_private_repo", None)
        url = api.create_repo(name, token=token, private=private, exist_ok=True)
        trainer.hub_model_id = url.repo_id
        revision = revision if revision is not None else getattr(args, "hub_revision", None)
        common = dict(
            repo_id=url.repo_id,
            commit_message=commit_message,
            token=token,
            revision=revision,
            create_pr=create_pr or None,
            ignore_patterns=list(PUSH_IGNORE_PATTERNS),
            run_as_future=not blocking,
        )
        if not merge_adapter:
            return api.upload_folder(folder_path=args.output_dir, **common)
        staging = Path(tempfile.mkdtemp(prefix=".hf-iau-merged-"))
        try:
            save_merged(trainer, staging)
            write_unlearning_artifacts(trainer, staging, variant="merged", record=False)
            result = api.upload_folder(folder_path=str(staging), **common)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if blocking:
            shutil.rmtree(staging, ignore_errors=True)
        else:
            result.add_done_callback(lambda _f: shutil.rmtree(staging, ignore_errors=True))
        return result
    finally:
        trainer.__dict__.pop(_PUSHING_ATTR, None)
