"""Data preparation of ``hf-iau``: load, split into train / validation / test, pick the forget rows, preprocess."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..tokenization import train_tokenizer
from .arguments import DataArguments, ModelArguments


@dataclass
class Prepared:
    """Model-ready, disjoint splits of a run.

    ``train`` = ``forget`` ∪ ``retain`` (by id); ``validation`` is the reference for every decision
    (saturation level, stopping); ``test`` only grades (utility, MIA non-members).
    """

    task: str
    train: Any  # Dataset: every training row (forget rows relabelled under forget_label_noise)
    validation: Any
    test: Any
    forget: Any
    retain: Any
    num_labels: int | None
    label_names: list[str] | None
    tokenizer: Any
    collator: Any
    dataset_name: str | None = None  # named in the unlearned model's card (`datasets:`)


def _size(x: float) -> float | int:
    return int(x) if x >= 1 else float(x)


def _with_ids(ds, source: str | None, offset: int = 0):
    if source and source != "id":
        return ds.remove_columns([c for c in ["id"] if c in ds.column_names]).rename_column(source, "id")
    if "id" in ds.column_names:
        return ds
    return ds.add_column("id", list(range(offset, offset + len(ds))))


def keep_in_train(ds, data: DataArguments, seed: int = 0) -> list[bool] | None:
    """Rows that must stay in train (never drawn into validation or test): canaries (``is_canary``) and
    the rows of a forget set named before the split (``ids:``, ``file:``, ``column:``, ``config:``)."""
    flags = [bool(v) for v in ds["is_canary"]] if "is_canary" in ds.column_names else None
    kind = str(data.forget).strip().partition(":")[0]
    if kind in ("ids", "file", "column", "config"):
        wanted = set(resolve_forget_ids(ds, data, seed))
        named = [v in wanted for v in ds["id"]]
        flags = named if flags is None else [a or b for a, b in zip(flags, named)]
    return flags


def load_raw(data: DataArguments, seed: int):
    """(train, validation, test) raw datasets with an ``id`` column, disjoint by id.

    Canary rows and forget rows named before the split (see :func:`keep_in_train`) are never drawn into
    validation or test; ``check_splits`` verifies the result.
    """
    from datasets import load_dataset

    from .. import offline_data

    stratify = data.label_column
    if data.dataset_name in offline_data.OFFLINE_DATASETS:
        full = offline_data.load_offline(data.dataset_name, **(data.dataset_kwargs or {}))
        split = offline_data.train_validation_test(
            full, _size(data.test_size), _size(data.validation_size), seed=seed, stratify=stratify,
            keep_in_train=keep_in_train(full, data, seed),
        )
        train, validation, test = split["train"], split["validation"], split["test"]
    else:
        def load(split_name: str):
            try:
                return load_dataset(data.dataset_name, data.dataset_config, split=split_name)
            except ConnectionError as err:
                raise SystemExit(needs_hub("dataset", data.dataset_name, err)) from err

        train = _with_ids(load(data.train_split), data.id_source)
        n = len(train)
        test = _with_ids(load(data.test_split), data.id_source, offset=n) if data.test_split else None
        validation = None
        if data.validation_split:
            validation = _with_ids(load(data.validation_split), data.id_source, offset=n + (len(test) if test is not None else 0))
        train = train.add_column("__row", list(range(n)))
        split = offline_data.train_validation_test(
            train, 0 if test is not None else _size(data.test_size),
            0 if validation is not None else _size(data.validation_size), seed=seed, stratify=stratify,
            keep_in_train=keep_in_train(train, data, seed),
        )
        train = split["train"].sort("__row").remove_columns("__row")  # row order of the source
        test = test if test is not None else split["test"].remove_columns("__row")
        validation = validation if validation is not None else split["validation"].remove_columns("__row")
    if data.max_train_samples is not None:
        train = train.select(range(min(data.max_train_samples, len(train))))
    if data.max_validation_samples is not None:
        validation = validation.select(range(min(data.max_validation_samples, len(validation))))
    if data.max_test_samples is not None:
        test = test.select(range(min(data.max_test_samples, len(test))))
    check_splits(train, validation, test, data.text_column)
    return train, validation, test


def needs_hub(what: str, name: str, err: BaseException) -> str:
    """The error text of a Hub dataset/model that cannot be fetched (offline, or the Hub unreachable)."""
    return (f"hf-iau: this recipe needs the Hugging Face Hub: the {what} {name!r} is neither cached nor reachable "
            f"({type(err).__name__}: {str(err).splitlines()[0]}). Run it once where the Hub is reachable (it is then "
            f"cached), or download it and pass the local folder (--{'dataset_name' if what == 'dataset' else 'model_name_or_path'}). "
            "Offline recipes: mnist_resnet, mnist_vit, bbc_minilm, wiki_gpt2_canary, fictitious_authors_llama.")


def check_splits(train, validation, test, text_column: str = "text") -> None:
    """Raise ValueError unless train / validation / test are disjoint by id and no canary is held out.

    With a ``text`` column, the held-out splits must also share no text with a training canary.
    """
    ids = {name: set(ds["id"]) for name, ds in (("train", train), ("validation", validation), ("test", test))}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        if ids[a] & ids[b]:
            raise ValueError(
                f"the {a} and {b} splits share {len(ids[a] & ids[b])} id(s); give every row a unique `id` "
                "(or set `id_source`) and use disjoint splits."
            )
    canaries = set()
    if "is_canary" in train.column_names and text_column in train.column_names:
        canaries = {t for t, c in zip(train[text_column], train["is_canary"]) if c}
    for name, ds in (("validation", validation), ("test", test)):
        if "is_canary" in ds.column_names and any(ds["is_canary"]):
            raise ValueError(f"the {name} split holds canary rows; canaries belong to train (and the forget set) only.")
        if canaries and text_column in ds.column_names and canaries & set(ds[text_column]):
            raise ValueError(f"the {name} split holds a copy of a training canary's text; canaries belong to train only.")


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
    if len(ds) == 0:
        return ds if col == "pixel_values" else ds.rename_column(col, "pixel_values")
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

    if data.question_column:
        from ..qa import qa_to_lm_examples

        extra = [c for c in ("is_canary", "is_forget") if c in ds.column_names]
        return qa_to_lm_examples(
            ds, tokenizer, data.question_column, data.answer_column, max_length=data.max_length, keep_columns=extra
        )
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
    """Load, split, (mis)label, preprocess; forget/retain by id. Deterministic given ``args.seed``.

    A tokenizer trained from scratch (``tokenizer_vocab_size``) sees the training text only.
    """
    from transformers import AutoTokenizer, DataCollatorWithPadding, default_data_collator

    from ..collators import CausalLMCollator
    from ..data import forget_retain_split
    from .fields import resolve_model_path

    seed = args.seed
    train, validation, test = load_raw(data, seed)
    task = infer_task(model, data, train.column_names)
    forget_ids = resolve_forget_ids(train, data, seed)
    num_labels, names = (None, None)
    if task != "causal-lm":
        num_labels, names = _label_info(train, data.label_column)
    if data.forget_label_noise:
        if task == "causal-lm":
            raise SystemExit("hf-iau: forget_label_noise needs a classification task.")
        train = _noisy_labels(train, forget_ids, data.label_column, num_labels, seed)
    splits = [train, validation, test]
    if task == "image-classification":
        splits = [_image_to_array(ds, data) for ds in splits]
        if data.label_column != "labels":
            splits = [ds.rename_column(data.label_column, "labels") for ds in splits]
        collator = default_data_collator
    else:
        if tokenizer is None:
            if model.tokenizer_name_or_path or (model.model_name_or_path and not model.tokenizer_vocab_size):
                name = resolve_model_path(model.tokenizer_name_or_path or model.model_name_or_path)
                try:
                    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=args.trust_remote_code)
                except OSError as err:
                    if Path(name).exists():
                        raise
                    raise SystemExit(needs_hub("tokenizer", name, err)) from err
            elif model.tokenizer_vocab_size:
                tokenizer = train_tokenizer(_texts(train, data), model.tokenizer_vocab_size)
            else:
                raise SystemExit("hf-iau: text data needs a tokenizer: set tokenizer_name_or_path or tokenizer_vocab_size.")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        splits = [_tokenize(ds, data, tokenizer, task) for ds in splits]
        if task == "causal-lm":
            collator = CausalLMCollator(tokenizer)  # keeps prompt-masked labels; padding masked by attention
        else:
            collator = DataCollatorWithPadding(tokenizer)
    train, validation, test = splits
    split = forget_retain_split(train, forget_ids, id_column="id", seed=seed)
    return Prepared(task, train, validation, test, split["forget"], split["retain"], num_labels, names, tokenizer, collator,
                    data.dataset_name)
