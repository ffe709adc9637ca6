"""Input checks that run before any weight changes or file writes.

Every check raises ``ValueError`` naming the offending field and how to fix it. Dataset checks read
columns through Arrow (no Python lists of whole columns), so they stay cheap on large datasets.

* :func:`check_model_source`: a local model folder holding only pickle-based weights is refused
  unless the caller opts in with ``model_init_kwargs={"use_safetensors": False}``;
* :func:`check_output_dir`: ``output_dir`` is (or can be created as) a writable folder;
* :func:`check_processing_class`: tokenizer vocabulary vs the model's embedding size;
* :func:`check_dataset`: sequence length vs ``max_position_embeddings``/``n_positions``, token ids
  and causal-LM labels vs the vocabulary, image channels/size vs ``num_channels``/``image_size``;
* :func:`check_id_types`: forget ids and train/retain ids have the same type;
* :func:`check_resume_checkpoint`: ``resume_from_checkpoint`` names an existing checkpoint.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable

import numpy as np
import torch

from .safe_io import check_output_dir, recover_directory  # noqa: F401  (check_output_dir re-exported)

_PICKLE_WEIGHTS = re.compile(r"(^pytorch_model.*\.bin$|^adapter_model\.bin$|\.(pt|pth|ckpt|pkl|pickle)$)")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Position embeddings offset by the padding index (RoBERTa family): usable length = max - pad - 1.
_PADDED_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod", "roberta-prelayernorm"}


# --- model source and output folder -----------------------------------------------------------------
def _init_kwargs(args: Any) -> dict[str, Any]:
    raw = getattr(args, "model_init_kwargs", None)
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(f"IAUConfig.model_init_kwargs is not valid JSON ({err}); pass a dict or a JSON object.") from None
    return dict(raw or {})


def pickle_weight_files(folder: str | os.PathLike) -> list[str]:
    """Names of pickle-based weight files (``pytorch_model.bin``, ``*.pt``, ...) directly in ``folder``."""
    return sorted(f for f in os.listdir(folder) if _PICKLE_WEIGHTS.search(f))


def check_model_source(name_or_path: str, args: Any) -> None:
    """Refuse a local model folder whose only weights are pickle files, unless the user opted in.

    Also finishes a save that was interrupted between its two renames (platforms without an atomic
    exchange), so the folder read is the complete previous checkpoint.
    """
    kwargs = _init_kwargs(args)
    if not os.path.isdir(name_or_path):
        recover_directory(name_or_path)
    if not os.path.isdir(name_or_path) or kwargs.get("use_safetensors", True) is False:
        return
    files = os.listdir(name_or_path)
    if any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files):
        return
    pickled = pickle_weight_files(name_or_path)
    if pickled:
        raise ValueError(
            f"model={name_or_path!r} holds only pickle-based weights ({', '.join(pickled)}), which can run code "
            "when loaded; hf-iau loads safetensors only. Convert them (load once in a trusted session and "
            "save_pretrained(..., safe_serialization=True)), or opt in explicitly with "
            "IAUConfig(model_init_kwargs={'use_safetensors': False}) if you trust the file."
        )


def check_resume_checkpoint(resume_from_checkpoint: Any, output_dir: str | os.PathLike) -> None:
    """``resume_from_checkpoint`` (True or a path) must name an existing checkpoint with safetensors weights."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return
    fix = "pass an existing checkpoint folder (e.g. <output_dir>/checkpoint-500), True for the latest one in output_dir, or None"
    if resume_from_checkpoint is True:
        latest = None
        if os.path.isdir(output_dir):
            found = [(int(m.group(1)), f) for f in os.listdir(output_dir) if (m := _CHECKPOINT.match(f))]
            found = [(n, f) for n, f in found if os.path.isdir(os.path.join(output_dir, f))]
            latest = os.path.join(output_dir, max(found)[1]) if found else None
        if latest is None:
            raise ValueError(
                f"resume_from_checkpoint=True but output_dir={str(output_dir)!r} holds no checkpoint-* folder; "
                f"train without resume_from_checkpoint, or {fix}."
            )
        folder = latest
    elif isinstance(resume_from_checkpoint, (str, os.PathLike)):
        folder = os.fspath(resume_from_checkpoint)
        if not os.path.isdir(folder):
            raise ValueError(f"resume_from_checkpoint={folder!r} does not exist or is not a folder; {fix}.")
    else:
        raise ValueError(f"resume_from_checkpoint={resume_from_checkpoint!r} has an unsupported type; {fix}.")
    files = os.listdir(folder)
    if not any(f.endswith(".safetensors") or f.endswith(".safetensors.index.json") for f in files):
        pickled = pickle_weight_files(folder)
        what = f"only pickle-based weights ({', '.join(pickled)})" if pickled else "no model weights"
        raise ValueError(f"resume_from_checkpoint={folder!r} holds {what}, not a safetensors checkpoint; {fix}.")


# --- model-dependent checks ----------------------------------------------------------------------------
def _base(model: torch.nn.Module) -> torch.nn.Module:
    from .losses import base_model_of

    return base_model_of(model)


def _embedding_rows(model: torch.nn.Module) -> int | None:
    try:
        emb = _base(model).get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    return getattr(emb, "num_embeddings", None)


def _max_positions(model: torch.nn.Module) -> tuple[int, str] | None:
    config = getattr(_base(model), "config", None)
    for attr in ("n_positions", "max_position_embeddings"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            if getattr(config, "model_type", None) in _PADDED_POSITIONS:
                value -= (getattr(config, "pad_token_id", None) or 0) + 1
            return value, attr
    return None


def check_processing_class(model: torch.nn.Module, processing_class: Any) -> None:
    """A tokenizer with more tokens than the model has embedding rows would index out of range."""
    from transformers import PreTrainedTokenizerBase

    if not isinstance(processing_class, PreTrainedTokenizerBase):
        return
    rows = _embedding_rows(model)
    n = len(processing_class)
    if rows is not None and n > rows:
        raise ValueError(
            f"processing_class: the tokenizer has {n} tokens but the model's input embedding has {rows} rows "
            "(tokenizer/model vocabulary mismatch); pass the tokenizer the model was trained with, or call "
            "model.resize_token_embeddings(len(tokenizer)) before creating the trainer."
        )


def _column(ds: Any, col: str) -> Any:
    import pyarrow as pa

    arr = ds.with_format("arrow")[col]  # memory-mapped chunks (rows taken when ds has an indices mapping)
    if isinstance(arr, pa.Table):
        arr = arr.column(0)
    return arr


def _is_list(t: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _flat_ints(arr: Any) -> tuple[int, int] | None:
    """(min, max) of the integers inside a (possibly nested) list column, or None when not integer/empty."""
    import pyarrow as pa
    import pyarrow.compute as pc

    while _is_list(arr.type):
        arr = pc.list_flatten(arr)
    if not pa.types.is_integer(arr.type) or len(arr) == 0:
        return None
    mm = pc.min_max(arr)
    lo, hi = mm["min"].as_py(), mm["max"].as_py()
    return None if lo is None else (int(lo), int(hi))


def _level_lengths(arr: Any) -> list[set[int]]:
    """Distinct list lengths at each nesting level of a list column (the per-example shape)."""
    import pyarrow.compute as pc

    levels = []
    while _is_list(arr.type):
        lengths = pc.list_value_length(arr)
        levels.append({int(v) for v in pc.unique(lengths).to_pylist() if v is not None})
        arr = pc.list_flatten(arr)
    return levels


def check_dataset(model: torch.nn.Module, ds: Any, name: str) -> None:
    """Sequence length, token ids, causal-LM labels and image shape of ``ds`` against ``model``."""
    from datasets import Dataset

    if not isinstance(ds, Dataset) or len(ds) == 0:
        return
    cols = set(ds.column_names)
    if "input_ids" in cols:
        _check_tokens(model, ds, name)
    if "pixel_values" in cols:
        _check_images(model, ds, name)


def _check_tokens(model: torch.nn.Module, ds: Any, name: str) -> None:
    import pyarrow.compute as pc

    from .losses import loss_kind

    arr = _column(ds, "input_ids")
    if not _is_list(arr.type):
        return
    limit = _max_positions(model)
    if limit is not None:
        longest = pc.max(pc.list_value_length(arr)).as_py() or 0
        if longest > limit[0]:
            raise ValueError(
                f"`{name}`.input_ids: sequences of up to {longest} tokens exceed this model's maximum of {limit[0]} "
                f"positions (config.{limit[1]}); truncate when tokenizing (tokenizer(..., truncation=True, "
                f"max_length={limit[0]})) or drop the long rows."
            )
    rows = _embedding_rows(model)
    span = _flat_ints(arr)
    if rows is not None and span is not None and (span[0] < 0 or span[1] >= rows):
        raise ValueError(
            f"`{name}`.input_ids: token ids span [{span[0]}, {span[1]}] but the model's input embedding has {rows} "
            "rows (tokenizer/model vocabulary mismatch); tokenize with the model's own tokenizer, or call "
            "model.resize_token_embeddings(len(tokenizer))."
        )
    if loss_kind(model) == "causal_lm" and "labels" in ds.column_names:
        labels = _column(ds, "labels")
        span = _flat_ints(labels) if _is_list(labels.type) else None
        vocab = getattr(getattr(_base(model), "config", None), "vocab_size", None) or rows
        if vocab and span is not None and (span[1] >= vocab or (span[0] < 0 and span[0] != -100)):
            raise ValueError(
                f"`{name}`.labels: token ids span [{span[0]}, {span[1]}] but the model predicts {vocab} tokens; "
                "use token ids in [0, vocab_size) and -100 for positions to ignore."
            )


def _check_images(model: torch.nn.Module, ds: Any, name: str) -> None:
    config = getattr(_base(model), "config", None)
    channels = getattr(config, "num_channels", None)
    if channels is None:
        return
    arr = _column(ds, "pixel_values")
    if _is_list(arr.type):
        levels = _level_lengths(arr)
    else:  # extension types (Array3D): look at the first row
        levels = [{d} for d in np.asarray(ds[0]["pixel_values"]).shape]
    shapes = " × ".join("/".join(str(v) for v in sorted(lv)) for lv in levels)
    if len(levels) != 3 or any(len(lv) != 1 for lv in levels):
        raise ValueError(
            f"`{name}`.pixel_values: each example must be one (channels, height, width) array of the same shape, "
            f"found shapes {shapes}; preprocess with the model's image processor."
        )
    (c,), (h,), (w,) = levels
    if c != channels:
        hint = " (they look channels-last: transpose to (C, H, W))" if w == channels else ""
        raise ValueError(
            f"`{name}`.pixel_values: examples have {c} channel(s) but the model expects config.num_channels="
            f"{channels}{hint}; convert the images (e.g. RGB ↔ grayscale) or use a model built for them."
        )
    size = getattr(config, "image_size", None)
    expected = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (list, tuple)) else None
    if expected is None or (h, w) == tuple(expected):
        return
    # Some models (convolutional, patch-padding) accept other sizes: ask the model itself.
    error = _probe(model, torch.tensor(np.asarray(ds[0]["pixel_values"], dtype=np.float32))[None])
    if error is not None:
        raise ValueError(
            f"`{name}`.pixel_values: images are {h}×{w} but the model expects config.image_size={size} "
            f"({error}); resize them with the model's image processor."
        )


def _probe(model: torch.nn.Module, pixel_values: torch.Tensor) -> str | None:
    """Run one example without gradients in eval mode (no weights or buffers change); the error or None."""
    was_training = model.training
    param = next(model.parameters(), None)
    if param is not None:
        pixel_values = pixel_values.to(device=param.device, dtype=param.dtype if param.is_floating_point() else None)
    model.eval()
    try:
        with torch.no_grad():
            model(pixel_values=pixel_values)
    except Exception as err:  # noqa: BLE001 - the message is reported to the user
        return str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    finally:
        model.train(was_training)
    return None


def check_id_types(forget: Any, other: Any, id_column: str, other_name: str) -> None:
    """Forget ids must have the type of the ids they are compared with (int 3 never matches "3")."""
    from datasets import Dataset

    if not isinstance(forget, Dataset) or not isinstance(other, Dataset):
        return
    if id_column not in forget.column_names or id_column not in other.column_names:
        return
    a, b = _id_kind(forget, id_column), _id_kind(other, id_column)
    if a and b and a != b and {a, b} != {"integer", "float"}:  # 3 == 3.0 matches in Python
        raise ValueError(
            f"`forget_dataset`.{id_column} holds {a} ids but `{other_name}`.{id_column} holds {b} ids, so no id can "
            f"match; convert one side (e.g. forget_dataset.cast_column('{id_column}', "
            f"{type(other.features[id_column]).__name__}('{other.features[id_column].dtype}')))."
        )


def _id_kind(ds: Any, col: str) -> str | None:
    import pyarrow as pa

    t = ds.features[col].pa_type if hasattr(ds.features[col], "pa_type") else None
    if t is None:
        return None
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_floating(t):
        return "float"
    return str(t)


# --- entry points called by IAUTrainer -----------------------------------------------------------------
def validate_trainer_inputs(
    model: torch.nn.Module, args: Any, processing_class: Any = None, datasets: Iterable[tuple[str, Any]] = ()
) -> None:
    """Checks run by ``IAUTrainer.__init__`` before ``Trainer.__init__`` creates ``output_dir``."""
    check_output_dir(args.output_dir)
    check_processing_class(model, processing_class)
    for name, ds in datasets:
        if isinstance(ds, dict):
            for key, part in ds.items():
                check_dataset(model, part, f"{name}[{key!r}]")
        else:
            check_dataset(model, ds, name)


def validate_unlearning_ids(forget: Any, retain: Any, train_dataset: Any, id_column: str) -> None:
    """Id types of the forget set vs the retain set (or, without one, the train dataset)."""
    if retain is not None:
        check_id_types(forget, retain, id_column, "retain_dataset")
    else:
        check_id_types(forget, train_dataset, id_column, "train_dataset")


def validate_unlearning_data(model: torch.nn.Module, forget: Any, retain: Any) -> None:
    """Data checks run by ``IAUTrainer.unlearn`` before the first forward pass."""
    check_dataset(model, forget, "forget_dataset")
    check_dataset(model, retain, "retain_dataset")


def check_labels(name: str, ds: Any, model: torch.nn.Module, collator: Any, signature: list[str]) -> None:
    """Rows of ``ds`` must carry labels the model can use (or, causal LM, get them from the collator)."""
    from transformers import DataCollatorForLanguageModeling

    from .collators import CausalLMCollator
    from .losses import loss_kind

    label_columns = ("label", "labels", "label_ids")
    cols = [c for c in label_columns if c in ds.column_names]
    kind = loss_kind(model)
    if not cols:
        if kind == "causal_lm" and isinstance(collator, (DataCollatorForLanguageModeling, CausalLMCollator)):
            return
        if kind == "causal_lm" and "input_ids" in ds.column_names and len(ds):
            if "labels" in collator([{k: v for k, v in ds[0].items() if k in signature}]):
                return
        raise ValueError(
            f"`{name}` rows have no labels: add a `label`/`labels` column, or (causal LM) use a collator that "
            "creates `labels`, e.g. DataCollatorForLanguageModeling(tokenizer, mlm=False)."
        )
    if kind == "classification":
        labels = np.asarray(ds.with_format(None, columns=[cols[0]])[:][cols[0]] if len(ds) else [])
        num_labels = model.config.num_labels
        if labels.ndim == 1 and len(labels) and (labels.min() < 0 or labels.max() >= num_labels):
            raise ValueError(
                f"`{name}`: label values must lie in [0, {num_labels - 1}] for this model's head "
                f"(num_labels={num_labels}), found [{labels.min()}, {labels.max()}]; fix the labels or the head."
            )
