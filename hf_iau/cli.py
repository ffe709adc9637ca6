"""``hf-iau``: train, unlearn, evaluate and demo from the command line (or a recipe YAML).

    hf-iau train    --config recipes/mnist_vit/config.yaml   # original model  -> <output_dir>/original
    hf-iau unlearn  --config recipes/mnist_vit/config.yaml   # IAU update      -> <output_dir>/unlearned
    hf-iau evaluate --config recipes/mnist_vit/config.yaml   # retrain (gold) if missing, then the report
    hf-iau demo                                              # all of the above on mnist_resnet, offline
    hf-iau ledger verify <model_dir>                         # check a deletion ledger (hf_iau.ledger)

Arguments come from ``DataArguments``, ``ModelArguments``, ``RunArguments`` and ``IAUConfig``
(``HfArgumentParser``); values in ``--config`` YAML become defaults and the command line overrides
them (TRL's ``TrlParser`` pattern). Works under ``accelerate launch`` / ``torchrun``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

COMMANDS = ("train", "unlearn", "evaluate", "demo", "ledger")
TASKS = ("auto", "image-classification", "sequence-classification", "causal-lm")
TRAIN_ON = ("full", "retain")
RUN_FILE = "hf_iau_run.json"
DEMO_RECIPE = "mnist_resnet"


# --- argument dataclasses -------------------------------------------------------------------------
@dataclass
class DataArguments:
    """Which data, how it is split into train/test, and which training rows are forgotten."""

    dataset_name: str = field(
        default="mnist5k",
        metadata={"help": "An offline dataset (mnist5k, digits, bbc_news, lee_text, wiki_text: see hf_iau.offline_data) "
                  "or a Hub dataset id / local path for datasets.load_dataset."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments of the offline loader (JSON on the command line)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split holding the training data (Hub datasets)."})
    test_split: str | None = field(
        default=None, metadata={"help": "Held-out split; None carves a seeded `test_size` out of the training data."}
    )
    test_size: float = field(default=0.2, metadata={"help": "Held-out fraction (<1) or count (>=1) when test_split is None."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows (after the seeded split)."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Keep the first N held-out rows."})
    text_column: str = field(default="text", metadata={"help": "Text column (text tasks)."})
    text_template: str | None = field(
        default=None, metadata={"help": "Python format string over a row that builds the text, e.g. 'Q: {question}\\nA: {answer}'."}
    )
    label_column: str = field(default="label", metadata={"help": "Label column (classification)."})
    image_column: str = field(default="pixel_values", metadata={"help": "Image column: PIL images or [C,H,W] arrays."})
    image_mean: list[float] | None = field(default=None, metadata={"help": "Per-channel mean for PIL images (default 0.5)."})
    image_std: list[float] | None = field(default=None, metadata={"help": "Per-channel std for PIL images (default 0.5)."})
    max_length: int = field(default=128, metadata={"help": "Tokens per row; longer causal-LM documents become several rows."})
    max_chunks_per_doc: int = field(default=8, metadata={"help": "Causal LM: at most this many rows per document."})
    id_source: str | None = field(default=None, metadata={"help": "Column to use as the row id (default: `id`, else the row index)."})
    forget: str = field(
        default="0.05",
        metadata={"help": "Forget set: a fraction '0.05', 'n:40' (seeded random rows), 'ids:1,2,3', 'range:3600:4000' "
                  "(row positions), 'column:is_canary' (rows where the column is true), 'file:ids.json', or "
                  "'config:forget10' (rows of that dataset config, matched on `forget_match_column`)."},
    )
    forget_match_column: str | None = field(default=None, metadata={"help": "Column matched for forget='config:...'."})
    forget_label_noise: bool = field(
        default=False,
        metadata={"help": "Memorisation scenario: give forget rows a seeded wrong label in the training data, so the "
                  "original model must memorise them (classification only)."},
    )


@dataclass
class ModelArguments:
    """A pretrained model, or a config dict for a model trained from scratch, plus optional LoRA."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or local folder of a pretrained model; 'offline:all-MiniLM-L6-v2' is the wheel copy."},
    )
    model_config: dict | str | None = field(
        default=None, metadata={"help": "Config of a from-scratch model, e.g. {\"model_type\": \"vit\", ...} (JSON on the CLI)."}
    )
    task: str = field(default="auto", metadata={"help": "Model head.", "choices": list(TASKS)})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Tokenizer (default: the model's)."})
    tokenizer_vocab_size: int | None = field(
        default=None, metadata={"help": "Train a byte-level BPE tokenizer of this size on the training text (from-scratch LMs)."}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "'sdpa', 'eager', ... (default: the model's)."})
    use_peft: bool = field(default=False, metadata={"help": "Train and unlearn a LoRA adapter only."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(default=None, metadata={"help": "LoRA target modules (default: all-linear)."})


@dataclass
class RunArguments:
    """Where each model of a run lives, and what `evaluate` does when the gold model is missing."""

    original_model: str | None = field(default=None, metadata={"help": "Trained model (default <output_dir>/original)."})
    unlearned_model: str | None = field(default=None, metadata={"help": "Unlearned model (default <output_dir>/unlearned)."})
    retrained_model: str | None = field(default=None, metadata={"help": "Gold model retrained on retain (default <output_dir>/retrained)."})
    report_dir: str | None = field(default=None, metadata={"help": "Report folder (default <output_dir>/report)."})
    train_on: str = field(
        default="full", metadata={"help": "`train`: 'full' (the original) or 'retain' (the gold model).", "choices": list(TRAIN_ON)}
    )
    method: str = field(default="iau", metadata={"help": "`unlearn`: 'iau' or a baseline of hf_iau.methods."})
    retrain_if_missing: bool = field(default=True, metadata={"help": "`evaluate`: retrain the gold model when it is missing."})
    eval_batch_size: int = field(default=256, metadata={"help": "Batch size of the report's forward passes."})


# --- parsing --------------------------------------------------------------------------------------
def _dataclass_types() -> tuple[type, ...]:
    from .config import IAUConfig

    return (DataArguments, ModelArguments, RunArguments, IAUConfig)


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The YAML mapping of a recipe file (keys are argument names)."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping of argument names to values")
    return data


def make_parser(command: str = "train"):
    """``HfArgumentParser`` over the four argument dataclasses, with ``--config``."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(_dataclass_types(), prog=f"hf-iau {command}")
    parser.add_argument("--config", default=None, help="Recipe YAML: its values become defaults; flags override them.")
    return parser


def parse_args(command: str, argv: Sequence[str]) -> tuple[Any, Any, Any, Any]:
    """Parse ``argv`` (after the sub-command) into (data, model, run, IAUConfig)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(list(argv))
    parser = make_parser(command)
    if known.config is None and command == "demo":
        known.config = str(recipe_path(DEMO_RECIPE) / "config.yaml")
        argv = ["--config", known.config, *argv]
    if known.config:
        recipe = load_recipe(known.config)
        valid = {f.name for dc in _dataclass_types() for f in fields(dc)}
        unknown = sorted(set(recipe) - valid)
        if unknown:
            raise SystemExit(f"hf-iau: {known.config}: unknown argument(s) {unknown}; see `hf-iau {command} --help`.")
        parser.set_defaults(**recipe)
    if "--output_dir" not in argv and not any(a.startswith("--output_dir=") for a in argv):
        if parser.get_default("output_dir") is None:
            parser.set_defaults(output_dir=f"runs/{command}")
    data, model, run, args, _ = parser.parse_args_into_dataclasses(args=list(argv), return_remaining_strings=False)
    for obj, name in ((data, "dataset_kwargs"), (model, "model_config")):
        value = getattr(obj, name)
        if isinstance(value, str):
            setattr(obj, name, json.loads(value))
    return data, model, run, args


def recipe_path(name: str) -> Path:
    """Folder of the bundled recipe ``name`` (``recipes/<name>`` next to the package)."""
    path = Path(__file__).resolve().parent.parent / "recipes" / name
    if not path.exists():
        raise SystemExit(f"hf-iau: recipe {name!r} not found at {path}; pass --config <recipe.yaml>.")
    return path


# --- data -----------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """Model-ready splits of a run."""

    task: str
    train: Any  # Dataset: every training row (forget rows relabelled under forget_label_noise)
    test: Any
    forget: Any
    retain: Any
    num_labels: int | None
    label_names: list[str] | None
    tokenizer: Any
    collator: Any


def _is_main(args) -> bool:
    return getattr(args, "process_index", 0) == 0


def load_raw(data: DataArguments, seed: int):
    """(train, test) raw datasets with an integer-or-string ``id`` column."""
    from datasets import load_dataset

    from . import offline_data

    if data.dataset_name in offline_data.OFFLINE_DATASETS:
        full = offline_data.load_offline(data.dataset_name, **(data.dataset_kwargs or {}))
        split = offline_data.train_test(full, _size(data.test_size), seed=seed, stratify=data.label_column)
        train, test = split["train"], split["test"]
    else:
        train = load_dataset(data.dataset_name, data.dataset_config, split=data.train_split)
        if data.test_split:
            test = load_dataset(data.dataset_name, data.dataset_config, split=data.test_split)
        else:
            train = train.add_column("__row", list(range(len(train))))
            split = train.train_test_split(test_size=_size(data.test_size), seed=seed)
            train, test = split["train"].sort("__row").remove_columns("__row"), split["test"].remove_columns("__row")
        train, test = _with_ids(train, data.id_source), _with_ids(test, data.id_source, offset=len(train))
    if data.max_train_samples is not None:
        train = train.select(range(min(data.max_train_samples, len(train))))
    if data.max_test_samples is not None:
        test = test.select(range(min(data.max_test_samples, len(test))))
    return train, test


def _size(x: float) -> float | int:
    return int(x) if x >= 1 else float(x)


def _with_ids(ds, source: str | None, offset: int = 0):
    if source and source != "id":
        return ds.remove_columns([c for c in ["id"] if c in ds.column_names]).rename_column(source, "id")
    if "id" in ds.column_names:
        return ds
    return ds.add_column("id", list(range(offset, offset + len(ds))))


def resolve_forget_ids(train, data: DataArguments, seed: int) -> list[Any]:
    """Ids of the training rows named by ``data.forget`` (see ``DataArguments.forget``)."""
    spec = str(data.forget).strip()
    ids = train["id"]
    kind, _, value = spec.partition(":")
    if not value:
        try:
            frac = float(spec)
        except ValueError:
            raise SystemExit(f"hf-iau: cannot read forget={spec!r}; see `--help` for the forms.") from None
        k = max(1, round(frac * len(ids))) if frac < 1 else int(frac)
        kind, value = "n", str(k)
    if kind == "n":
        k = int(value)
        if not 0 < k < len(ids):
            raise SystemExit(f"hf-iau: forget=n:{k} must lie in [1, {len(ids) - 1}].")
        pos = np.random.default_rng([seed, 0xF0]).choice(len(ids), size=k, replace=False)
        return [ids[i] for i in sorted(pos.tolist())]
    if kind == "ids":
        typ = type(ids[0])
        return [typ(v.strip()) for v in value.split(",") if v.strip()]
    if kind == "range":
        lo, _, hi = value.partition(":")
        return ids[int(lo) : int(hi)]
    if kind == "column":
        return [i for i, flag in zip(ids, train[value]) if flag]
    if kind == "file":
        with open(value, encoding="utf-8") as fh:
            return list(json.load(fh))
    if kind == "config":
        from datasets import load_dataset

        col = data.forget_match_column or data.text_column
        wanted = set(load_dataset(data.dataset_name, value, split=data.train_split)[col])
        return [i for i, v in zip(ids, train[col]) if v in wanted]
    raise SystemExit(f"hf-iau: unknown forget form {kind!r} in forget={spec!r}.")


def _noisy_labels(train, forget_ids: list[Any], label_column: str, num_labels: int, seed: int):
    """Give every forget row a seeded wrong label (shift by 1..C-1)."""
    wanted = set(forget_ids)
    rng = np.random.default_rng([seed, 0x1AB])
    shifts = {i: int(rng.integers(1, num_labels)) for i in sorted(wanted, key=str)}

    def relabel(row: dict) -> dict:
        if row["id"] in wanted:
            row[label_column] = (int(row[label_column]) + shifts[row["id"]]) % num_labels
        return row

    return train.map(relabel, desc="forget_label_noise")


def infer_task(model: ModelArguments, data: DataArguments, columns: list[str]) -> str:
    """The model head: explicit ``task``, else from the data's columns."""
    if model.task != "auto":
        return model.task
    if data.image_column in columns or "img" in columns or "image" in columns:
        return "image-classification"
    if data.label_column in columns:
        return "sequence-classification"
    return "causal-lm"


def _label_info(train, column: str) -> tuple[int | None, list[str] | None]:
    from datasets import ClassLabel

    feat = train.features.get(column)
    if isinstance(feat, ClassLabel):
        return feat.num_classes, list(feat.names)
    if column in train.column_names:
        values = sorted(set(train[column]))
        return int(max(values)) + 1, None
    return None, None


def _image_to_array(ds, data: DataArguments):
    """PIL image column -> float32 ``pixel_values`` [C,H,W], standardised."""
    from datasets import Array3D

    col = data.image_column if data.image_column in ds.column_names else ("img" if "img" in ds.column_names else "image")
    if col == "pixel_values" and not hasattr(ds[0][col], "convert"):
        return ds
    mean, std = data.image_mean, data.image_std

    def convert(batch: dict) -> dict:
        arrs = []
        for img in batch[col]:
            a = np.asarray(img.convert("RGB") if getattr(img, "mode", "RGB") not in ("L", "RGB") else img, np.float32) / 255.0
            a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
            m = np.asarray(mean or [0.5] * a.shape[0], np.float32)[:, None, None]
            s = np.asarray(std or [0.5] * a.shape[0], np.float32)[:, None, None]
            arrs.append((a - m) / s)
        return {"pixel_values": arrs}

    out = ds.map(convert, batched=True, batch_size=256, remove_columns=[col], desc="images")
    shape = tuple(np.asarray(out[0]["pixel_values"]).shape)
    feats = out.features.copy()
    feats["pixel_values"] = Array3D(shape=shape, dtype="float32")
    return out.cast(feats)


def _texts(ds, data: DataArguments) -> list[str]:
    if data.text_template:
        return [data.text_template.format(**row) for row in ds]
    return list(ds[data.text_column])


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (``<|endoftext|>`` = bos/eos/pad)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = "<|endoftext|>"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[special], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=special, eos_token=special, pad_token=special)


def _tokenize(ds, data: DataArguments, tokenizer, task: str):
    keep = {"id", data.label_column}
    if task == "sequence-classification":
        def enc(batch: dict) -> dict:
            texts = _texts_batch(batch, data)
            out = tokenizer(texts, truncation=True, max_length=data.max_length)
            out["labels"] = batch[data.label_column]
            return out

        drop = [c for c in ds.column_names if c != "id"]
        return ds.map(enc, batched=True, remove_columns=drop, desc="tokenize")

    eos = tokenizer.eos_token or ""

    def chunk(batch: dict) -> dict:
        texts = _texts_batch(batch, data)
        enc_ = tokenizer([t + eos for t in texts])["input_ids"]
        out: dict[str, list] = {"id": [], "input_ids": [], "attention_mask": []}
        extra = [c for c in batch if c not in ("id", "input_ids", "attention_mask") and c in keep | {"is_canary"}]
        for c in extra:
            out[c] = []
        for j, ids in enumerate(enc_):
            for k in range(0, min(len(ids), data.max_length * data.max_chunks_per_doc), data.max_length):
                piece = ids[k : k + data.max_length]
                if len(piece) < 2:
                    continue
                out["id"].append(batch["id"][j])
                out["input_ids"].append(piece)
                out["attention_mask"].append([1] * len(piece))
                for c in extra:
                    out[c].append(batch[c][j])
        return out

    return ds.map(chunk, batched=True, remove_columns=ds.column_names, desc="tokenize")


def _texts_batch(batch: dict, data: DataArguments) -> list[str]:
    if data.text_template:
        n = len(next(iter(batch.values())))
        return [data.text_template.format(**{k: v[i] for k, v in batch.items()}) for i in range(n)]
    return list(batch[data.text_column])


def prepare_data(data: DataArguments, model: ModelArguments, args, tokenizer=None) -> Prepared:
    """Load, split, (mis)label, preprocess; forget/retain by id. Deterministic given ``args.seed``."""
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling, DataCollatorWithPadding, default_data_collator

    from .data import forget_retain_split

    seed = args.seed
    train, test = load_raw(data, seed)
    task = infer_task(model, data, train.column_names)
    forget_ids = resolve_forget_ids(train, data, seed)
    num_labels, names = (None, None)
    if task != "causal-lm":
        num_labels, names = _label_info(train, data.label_column)
    if data.forget_label_noise:
        if task == "causal-lm":
            raise SystemExit("hf-iau: forget_label_noise needs a classification task.")
        train = _noisy_labels(train, forget_ids, data.label_column, num_labels, seed)
    if task == "image-classification":
        train, test = _image_to_array(train, data), _image_to_array(test, data)
        if data.label_column != "labels":
            train, test = train.rename_column(data.label_column, "labels"), test.rename_column(data.label_column, "labels")
        collator = default_data_collator
    else:
        if tokenizer is None:
            if model.tokenizer_name_or_path or (model.model_name_or_path and not model.tokenizer_vocab_size):
                tokenizer = AutoTokenizer.from_pretrained(
                    _resolve(model.tokenizer_name_or_path or model.model_name_or_path),
                    trust_remote_code=args.trust_remote_code,
                )
            elif model.tokenizer_vocab_size:
                tokenizer = train_tokenizer(_texts(train, data), model.tokenizer_vocab_size)
            else:
                raise SystemExit("hf-iau: text data needs a tokenizer: set tokenizer_name_or_path or tokenizer_vocab_size.")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        train, test = _tokenize(train, data, tokenizer, task), _tokenize(test, data, tokenizer, task)
        if task == "causal-lm":
            collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
        else:
            collator = DataCollatorWithPadding(tokenizer)
    split = forget_retain_split(train, forget_ids, id_column="id", seed=seed)
    return Prepared(task, train, test, split["forget"], split["retain"], num_labels, names, tokenizer, collator)


# --- models ---------------------------------------------------------------------------------------
def _resolve(name: str | None) -> str | None:
    if name and name.startswith("offline:"):
        from .offline_data import minilm_path

        if name.split(":", 1)[1].lower() not in ("all-minilm-l6-v2", "minilm"):
            raise SystemExit(f"hf-iau: unknown offline model {name!r}; available: offline:all-MiniLM-L6-v2")
        return minilm_path()
    return name


def _auto_class(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForSequenceClassification

    return {
        "image-classification": AutoModelForImageClassification,
        "sequence-classification": AutoModelForSequenceClassification,
        "causal-lm": AutoModelForCausalLM,
    }[task]


def build_model(model: ModelArguments, args, prep: Prepared):
    """A fresh model: from ``model_config`` (seeded init) or from pretrained ``model_name_or_path``."""
    import torch
    from transformers import AutoConfig

    auto = _auto_class(prep.task)
    extra: dict[str, Any] = {}
    if prep.num_labels:
        extra["num_labels"] = prep.num_labels
        if prep.label_names:
            extra["id2label"] = dict(enumerate(prep.label_names))
            extra["label2id"] = {n: i for i, n in enumerate(prep.label_names)}
    if model.attn_implementation:
        extra["attn_implementation"] = model.attn_implementation
    torch.manual_seed(args.seed)
    if model.model_config:
        cfg = dict(model.model_config)
        if prep.task == "causal-lm" and prep.tokenizer is not None:
            tok = prep.tokenizer
            cfg.setdefault("vocab_size", len(tok))
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                cfg.setdefault(key, tok.eos_token_id)
        config = AutoConfig.for_model(**{**cfg, **extra})
        return auto.from_config(config)
    if not model.model_name_or_path:
        raise SystemExit("hf-iau: set model_name_or_path or model_config.")
    kwargs = {"use_safetensors": True, "trust_remote_code": args.trust_remote_code, **extra}
    if isinstance(args.model_init_kwargs, dict):
        kwargs.update(args.model_init_kwargs)
    return auto.from_pretrained(_resolve(model.model_name_or_path), **kwargs)


def peft_config_of(model: ModelArguments, task: str):
    """``LoraConfig`` from the LoRA arguments, or None when ``use_peft`` is off."""
    if not model.use_peft:
        return None
    from peft import LoraConfig, TaskType

    task_type = {"causal-lm": TaskType.CAUSAL_LM, "sequence-classification": TaskType.SEQ_CLS}.get(task)
    return LoraConfig(
        r=model.lora_r, lora_alpha=model.lora_alpha, lora_dropout=model.lora_dropout,
        target_modules=model.lora_target_modules or "all-linear", task_type=task_type,
    )


def load_trained(path: str, model: ModelArguments, prep: Prepared, args, trainable: bool = True):
    """A saved model or LoRA adapter folder (safetensors only).

    A from-scratch base (``model_config``) under an adapter is rebuilt from its seeded initialisation.
    """
    task = prep.task
    auto = _auto_class(task)
    kw = {"use_safetensors": True, "trust_remote_code": args.trust_remote_code}
    if model.attn_implementation:
        kw["attn_implementation"] = model.attn_implementation
    if (Path(path) / "adapter_config.json").exists():
        from peft import PeftConfig, PeftModel

        if model.model_config:
            base = build_model(model, args, prep)
        else:
            base_id = PeftConfig.from_pretrained(path).base_model_name_or_path or model.model_name_or_path
            base = auto.from_pretrained(_resolve(base_id), **kw)
        return PeftModel.from_pretrained(base, path, is_trainable=trainable)
    if not Path(path).exists():
        raise SystemExit(f"hf-iau: no model at {path}; run `hf-iau train` first (or pass the path).")
    return auto.from_pretrained(path, **kw)


def _load_tokenizer(path: str, args):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError):
        return None


# --- run files ------------------------------------------------------------------------------------
def _paths(run: RunArguments, args) -> dict[str, str]:
    root = args.output_dir
    return {
        "original": run.original_model or os.path.join(root, "original"),
        "unlearned": run.unlearned_model or os.path.join(root, "unlearned"),
        "retrained": run.retrained_model or os.path.join(root, "retrained"),
        "report": run.report_dir or os.path.join(root, "report"),
    }


def _write_run(path: str, info: dict[str, Any], args) -> None:
    if _is_main(args) and os.path.isdir(path):
        with open(os.path.join(path, RUN_FILE), "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2, default=str)


def _read_run(path: str) -> dict[str, Any]:
    try:
        with open(os.path.join(path, RUN_FILE), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


# --- steps ----------------------------------------------------------------------------------------
def _trainer(model, args, prep: Prepared, train_dataset=None, peft_config=None):
    from .trainer import IAUTrainer

    return IAUTrainer(
        model=model, args=args, train_dataset=train_dataset, data_collator=prep.collator,
        processing_class=prep.tokenizer, peft_config=peft_config,
    )


def step_train(model_args: ModelArguments, args, prep: Prepared, dataset, out_dir: str, kind: str) -> dict[str, Any]:
    """Train a fresh model on ``dataset`` and save it to ``out_dir``; returns the run info."""
    model = build_model(model_args, args, prep)
    trainer = _trainer(model, args, prep, dataset, peft_config_of(model_args, prep.task))
    start = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - start
    trainer.save_model(out_dir)
    info = {
        "kind": kind, "train_wall_time_s": wall, "train_rows": len(dataset), "train_loss": out.training_loss,
        "gr_alpha": args.gr_alpha, "params": sum(p.numel() for p in trainer.model.parameters()),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }
    _write_run(out_dir, info, args)
    return {"trainer": trainer, **info}


def step_unlearn(model_args: ModelArguments, run: RunArguments, args, prep: Prepared, model, out_dir: str) -> dict[str, Any]:
    """Unlearn ``prep.forget`` from ``model`` (in place) and save it to ``out_dir``."""
    trainer = _trainer(model, args, prep)
    if run.method == "iau":
        result = trainer.unlearn(prep.forget, retain_dataset=prep.retain, reference_dataset=prep.test)
    else:
        try:
            from .methods import run_method
        except ImportError:
            raise SystemExit(f"hf-iau: method {run.method!r} needs hf_iau.methods, which is not installed.") from None
        result = run_method(run.method, trainer, prep.forget, prep.retain)
    trainer.save_model(out_dir)
    info = {
        "kind": "unlearned", "method": run.method, "unlearn_wall_time_s": result.metrics.get("wall_time_s"),
        "forget_fingerprint": result.forget_fingerprint, "forget_rows": len(prep.forget),
        "retain_rows": len(prep.retain), "metrics": result.metrics,
    }
    _write_run(out_dir, info, args)
    return {"trainer": trainer, "result": result, **info}


# --- evaluation (adapter over hf_iau.report) ------------------------------------------------------
class MiniReport:
    """Fallback report used while ``hf_iau.report`` is absent: per-model loss/accuracy and LOSS-MIA AUC."""

    KEYS = ("forget_accuracy", "retain_accuracy", "test_accuracy", "forget_loss", "mia_loss_auc")

    def __init__(self, metrics: dict[str, dict[str, float]]) -> None:
        self.metrics = metrics

    def to_markdown(self) -> str:
        cols = [k for k in self.KEYS + ("gap_to_retrain",) if any(k in m for m in self.metrics.values())]
        lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name, m in self.metrics.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(m.get(c)) for c in cols) + " |")
        return "\n".join(lines)

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "report.json"), "w", encoding="utf-8") as fh:
            json.dump(self.metrics, fh, indent=2)
        with open(os.path.join(directory, "report.md"), "w", encoding="utf-8") as fh:
            fh.write("# Unlearning report\n\n" + self.to_markdown() + "\n")
        _plot(self.metrics, os.path.join(directory, "report.png"))


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def _plot(metrics: dict[str, dict[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("forget_accuracy", "retain_accuracy", "test_accuracy", "mia_loss_auc") if any(k in m for m in metrics.values())]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / max(len(metrics), 1)
    for j, (name, m) in enumerate(metrics.items()):
        ax.bar(np.arange(len(keys)) + j * width, [m.get(k, np.nan) for k in keys], width, label=name)
    ax.set_xticks(np.arange(len(keys)) + width * (len(metrics) - 1) / 2, keys)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("forget / retain / test accuracy and MIA AUC (target: retrained)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _model_batches(ds, collator, batch_size: int, device):
    keep = {"input_ids", "attention_mask", "token_type_ids", "pixel_values", "labels", "label"}
    ds = ds.remove_columns([c for c in ds.column_names if c not in keep])
    for start in range(0, len(ds), batch_size):
        rows = ds.select(range(start, min(start + batch_size, len(ds))))
        batch = collator([rows[i] for i in range(len(rows))])
        if "label" in batch and "labels" not in batch:
            batch["labels"] = batch.pop("label")
        yield {k: v.to(device) for k, v in batch.items()}


def minimal_report(models: dict[str, Any], prep: Prepared, batch_size: int) -> MiniReport:
    """Loss/accuracy on forget, retain, test; LOSS-attack AUC (forget vs test); gap to retrain."""
    from .losses import evaluate_losses
    from .metrics import accuracy, gap_to_retrain, loss_scores, mean_loss, roc_auc

    out: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        device = next(model.parameters()).device
        was = model.training
        model.eval()
        m: dict[str, float] = {}
        per: dict[str, dict] = {}
        for split, ds in (("forget", prep.forget), ("retain", prep.retain), ("test", prep.test)):
            res = evaluate_losses(model, _model_batches(ds, prep.collator, batch_size, device))
            per[split] = res
            m[f"{split}_loss"] = mean_loss(res["loss"].numpy(), res["count"].numpy())
            if "correct" in res:
                m[f"{split}_accuracy"] = accuracy(res["correct"].numpy(), res["count"].numpy())
        m["mia_loss_auc"] = roc_auc(loss_scores(per["forget"]["loss"].numpy()), loss_scores(per["test"]["loss"].numpy()))
        model.train(was)
        out[name] = m
    if "retrained" in out:
        for name, m in out.items():
            m["gap_to_retrain"] = gap_to_retrain(m, out["retrained"])
    return MiniReport(out)


def evaluate_models(models: dict[str, Any], prep: Prepared, batch_size: int, seed: int = 0):
    """The report of ``hf_iau.report.evaluate_unlearning`` when available, else :class:`MiniReport`."""
    try:
        from .report import evaluate_unlearning
    except ImportError:
        evaluate_unlearning = None
    if evaluate_unlearning is not None and {"unlearned", "original", "retrained"} <= set(models):
        try:
            return evaluate_unlearning(
                models["unlearned"], models["original"], models["retrained"],
                forget=prep.forget, retain=prep.retain, test=prep.test, data_collator=prep.collator,
                batch_size=batch_size, tokenizer=prep.tokenizer if prep.task == "causal-lm" else None, seed=seed,
            )
        except TypeError:
            pass
    return minimal_report(models, prep, batch_size)


def report_rows(report) -> dict[str, dict[str, float]]:
    """{model: {metric: value}} from a report's ``metrics``: nested, or flat ``"<model>/<metric>"``."""
    metrics = getattr(report, "metrics", {}) or {}
    if all(isinstance(v, dict) for v in metrics.values()):
        return metrics
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        model, sep, name = key.partition("/")
        if sep:
            rows.setdefault(model, {})[name] = value
    if "gap_to_retrain" in metrics and "unlearned" in rows:
        rows["unlearned"].setdefault("gap_to_retrain", metrics["gap_to_retrain"])
    order = ("original", "unlearned", "retrained")
    return {m: rows[m] for m in sorted(rows, key=lambda m: order.index(m) if m in order else len(order))}


# --- summary --------------------------------------------------------------------------------------
def summary_table(rows: dict[str, dict[str, float]], times: dict[str, float | None]) -> str:
    """A fixed-width table: accuracy / loss / MIA AUC / gap to retrain / time (% of retrain)."""
    retrain_time = times.get("retrained")
    cols = [
        ("forget acc", "forget_accuracy"), ("retain acc", "retain_accuracy"), ("test acc", "test_accuracy"),
        ("forget loss", "forget_loss"), ("MIA AUC", "mia_loss_auc"), ("gap→retrain", "gap_to_retrain"),
    ]
    cols = [(h, k) for h, k in cols if any(k in r for r in rows.values())]
    head = f"{'model':<11}" + "".join(f"{h:>13}" for h, _ in cols) + f"{'time s':>9}{'% retrain':>11}"
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        t = times.get(name)
        pct = f"{100 * t / retrain_time:.2f}%" if t is not None and retrain_time else "–"
        lines.append(
            f"{name:<11}" + "".join(f"{_fmt(r.get(k)):>13}" for _, k in cols)
            + f"{(f'{t:.2f}' if t is not None else '–'):>9}{pct:>11}"
        )
    return "\n".join(lines)


def print_summary(title: str, body: Sequence[str]) -> None:
    """Print a boxed one-screen summary."""
    width = min(max([len(title) + 4] + [len(line) for b in body for line in b.splitlines() or [""]]) + 2, 120)
    print("\n" + "=" * width)
    print(f"  {title}")
    print("=" * width)
    for line in body:
        print(line)
    print("=" * width, flush=True)


# --- commands -------------------------------------------------------------------------------------
def _setup(args) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    os.makedirs(args.output_dir, exist_ok=True)


def cmd_train(data: DataArguments, model: ModelArguments, run: RunArguments, args) -> int:
    prep = prepare_data(data, model, args)
    paths = _paths(run, args)
    target = paths["original"] if run.train_on == "full" else paths["retrained"]
    dataset = prep.train if run.train_on == "full" else prep.retain
    info = step_train(model, args, prep, dataset, target, "original" if run.train_on == "full" else "retrained")
    if _is_main(args):
        print_summary(
            f"hf-iau train ({run.train_on})",
            [f"model      {info['params']:,} params ({info['trainable_params']:,} trainable), task {prep.task}",
             f"data       {len(dataset)} training rows, {len(prep.test)} held out; GR alpha {args.gr_alpha}",
             f"time       {info['train_wall_time_s']:.1f} s, final train loss {info['train_loss']:.4f}",
             f"saved      {target}"],
        )
    return 0


def cmd_unlearn(data: DataArguments, model: ModelArguments, run: RunArguments, args) -> int:
    paths = _paths(run, args)
    tok = _load_tokenizer(paths["original"], args) if not _is_image(data, model) else None
    prep = prepare_data(data, model, args, tokenizer=tok)
    original = load_trained(paths["original"], model, prep, args)
    info = step_unlearn(model, run, args, prep, original, paths["unlearned"])
    if _is_main(args):
        m = info["metrics"]
        body = [f"forget set  {info['forget_rows']} rows, fingerprint {info['forget_fingerprint'][:16]}…; retain {info['retain_rows']} rows",
                f"method      {run.method}: {int(m.get('steps', 1))} step(s), update norm {m.get('update_norm', float('nan')):.4g}"]
        for key in ("forget_loss", "retain_loss", "forget_accuracy", "retain_accuracy"):
            if f"{key}_before" in m:
                body.append(f"{key:<16}{m[f'{key}_before']:>10.4f} -> {m[f'{key}_after']:.4f}")
        body += [f"time        {m.get('wall_time_s', float('nan')):.2f} s", f"saved       {paths['unlearned']}"]
        print_summary("hf-iau unlearn", body)
    return 0


def _is_image(data: DataArguments, model: ModelArguments) -> bool:
    return model.task == "image-classification" or data.dataset_name in ("mnist5k", "digits")


def cmd_evaluate(data: DataArguments, model: ModelArguments, run: RunArguments, args) -> int:
    paths = _paths(run, args)
    tok = _load_tokenizer(paths["original"], args) if not _is_image(data, model) else None
    prep = prepare_data(data, model, args, tokenizer=tok)
    if not os.path.isdir(paths["retrained"]):
        if not run.retrain_if_missing:
            raise SystemExit(f"hf-iau: no retrained model at {paths['retrained']}; run `hf-iau train --train_on retain`.")
        step_train(model, args, prep, prep.retain, paths["retrained"], "retrained")
    models = {name: load_trained(paths[name], model, prep, args, trainable=False)
              for name in ("original", "unlearned", "retrained") if os.path.isdir(paths[name])}
    times = {"unlearned": _read_run(paths["unlearned"]).get("unlearn_wall_time_s"),
             "retrained": _read_run(paths["retrained"]).get("train_wall_time_s")}
    _finish_report(models, prep, run, args, paths, times, "hf-iau evaluate")
    return 0


def _finish_report(models, prep, run, args, paths, times, title: str, extra: Sequence[str] = ()) -> Any:
    if not _is_main(args):
        return None
    report = evaluate_models(models, prep, run.eval_batch_size, args.seed)
    report.save(paths["report"])
    rows = report_rows(report)
    body = [f"forget {len(prep.forget)} rows, retain {len(prep.retain)}, test {len(prep.test)}; task {prep.task}", "",
            summary_table(rows, times), "", *extra, f"report     {paths['report']} (report.json, report.md, report.png)"]
    print_summary(title, body)
    return report


def cmd_demo(data: DataArguments, model: ModelArguments, run: RunArguments, args) -> int:
    """Train (GR) -> unlearn -> retrain -> evaluate, in one process."""
    total = time.perf_counter()
    paths = _paths(run, args)
    prep = prepare_data(data, model, args)
    if _is_main(args):
        print(f"[1/4] training the original model on {len(prep.train)} rows "
              f"({len(prep.forget)} to be forgotten{', mislabelled' if data.forget_label_noise else ''}), GR alpha={args.gr_alpha}", flush=True)
    orig = step_train(model, args, prep, prep.train, paths["original"], "original")
    original_copy = copy.deepcopy(orig["trainer"].model)
    if _is_main(args):
        print(f"[2/4] deletion request: unlearning {len(prep.forget)} rows with {run.method}", flush=True)
    unl = step_unlearn(model, run, args, prep, orig["trainer"].model, paths["unlearned"])
    if _is_main(args):
        print(f"[3/4] retraining the gold model on the {len(prep.retain)} retained rows", flush=True)
    ret = step_train(model, args, prep, prep.retain, paths["retrained"], "retrained")
    if _is_main(args):
        print("[4/4] evaluating against the retrained model", flush=True)
    models = {"original": original_copy, "unlearned": unl["trainer"].model, "retrained": ret["trainer"].model}
    times = {"original": orig["train_wall_time_s"], "unlearned": unl["unlearn_wall_time_s"], "retrained": ret["train_wall_time_s"]}
    extra = [f"models     {paths['original']}, {paths['unlearned']} (card + ledger), {paths['retrained']}",
             f"forget fp  {unl['forget_fingerprint'][:16]}… (sha256 of the forget ids; no content is stored)",
             f"wall time  {time.perf_counter() - total:.0f} s in all"]
    _finish_report(models, prep, run, args, paths, times, "hf-iau demo: IAU vs retraining", extra)
    return 0


def cmd_ledger(argv: Sequence[str]) -> int:
    """``hf-iau ledger verify <dir>``: delegate to hf_iau.ledger."""
    try:
        from . import ledger
    except ImportError:
        print("hf-iau ledger: hf_iau.ledger is not available in this installation.", file=sys.stderr)
        return 2
    if hasattr(ledger, "main_ledger"):
        return int(ledger.main_ledger(list(argv)) or 0)
    p = argparse.ArgumentParser(prog="hf-iau ledger")
    sub = p.add_subparsers(dest="action", required=True)
    v = sub.add_parser("verify", help="Check a model folder's deletion ledger (hash chain, card, weights).")
    v.add_argument("directory")
    ns = p.parse_args(list(argv))
    result = ledger.verify_ledger(ns.directory)
    ok = bool(getattr(result, "ok", result))
    print(result if not isinstance(result, bool) else ("ledger OK" if ok else "ledger INVALID"))
    return 0 if ok else 1


def _usage() -> str:
    return (
        "usage: hf-iau {train,unlearn,evaluate,demo,ledger} [--config recipe.yaml] [--arg value ...]\n\n"
        "  train     train the original model (or --train_on retain: the gold model) with gradient restriction\n"
        "  unlearn   make <output_dir>/original forget the `forget` rows -> <output_dir>/unlearned\n"
        "  evaluate  compare original / unlearned / retrained (retrains when missing); writes the report\n"
        "  demo      train -> unlearn -> retrain -> evaluate on the mnist_resnet recipe, offline\n"
        "  ledger    `ledger verify <dir>`: check a deletion ledger\n\n"
        "`hf-iau <command> --help` lists every argument (data, model, run and IAUConfig fields)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-iau`` / ``python -m hf_iau``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"hf-iau: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if command == "ledger":
        return cmd_ledger(rest)
    data, model, run, args = parse_args(command, rest)
    _setup(args)
    return {"train": cmd_train, "unlearn": cmd_unlearn, "evaluate": cmd_evaluate, "demo": cmd_demo}[command](
        data, model, run, args
    )


if __name__ == "__main__":
    raise SystemExit(main())
