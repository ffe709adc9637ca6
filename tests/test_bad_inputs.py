"""Catalogue of bad inputs: each raises a ValueError that names the field and the fix, BEFORE anything
changes: the model's weights stay bit-identical and no file or folder is written.

Extends tests/test_trainer.py (which checks the first unlearn() errors and config field names) with
the message's fix, "nothing written", a still-usable trainer, and the inputs checked by
hf_iau/validation.py (lengths, vocabularies, images, output folders, resume checkpoints, id types).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from tiny import (
    VOCAB,
    image_dataset,
    lm_dataset,
    params_of,
    text_cls_dataset,
    tiny_bert,
    tiny_gpt2,
    tiny_vit,
)
from tiny import parity_args as make_args
from transformers import PreTrainedTokenizerFast, default_data_collator

from hf_iau import IAUTrainer


def tree(root: Path) -> dict[str, str]:
    """Every file (sha256) and folder under ``root``: a change anywhere shows up."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "<dir>"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@dataclass
class Case:
    call: Callable[[], Any]  # must raise ValueError
    model: torch.nn.Module  # its weights must not change
    field: str  # regex: the field the message names
    fix: str  # regex: the fix the message proposes
    after: Callable[[], Any] | None = None  # a valid call that must still work afterwards


def _ids_as_str(ds: Dataset) -> Dataset:
    return ds.remove_columns("id").add_column("id", [str(i) for i in ds["id"]])


def _with_tokens(ds: Dataset, length: int, token: int | None = None) -> Dataset:
    rng = np.random.default_rng(1)
    ids = rng.integers(1, VOCAB, size=(len(ds), length))
    if token is not None:
        ids[:, 3] = token
    ids = ids.tolist()
    ds = ds.remove_columns([c for c in ("input_ids", "attention_mask", "labels") if c in ds.column_names])
    ds = ds.add_column("input_ids", ids).add_column("attention_mask", [[1] * length] * len(ds))
    return ds


def _with_pixels(ds: Dataset, shape: tuple[int, ...]) -> Dataset:
    pix = np.random.default_rng(2).normal(size=(len(ds), *shape)).astype("float32").tolist()
    return ds.remove_columns("pixel_values").add_column("pixel_values", pix)


def _tokenizer(n_tokens: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(n_tokens - 1)} | {"[UNK]": n_tokens - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="w0")


# --- unlearn(): a built trainer, a bad request --------------------------------------------------------------
def _cls_trainer(tmp_path: Path):
    ds = text_cls_dataset(16)
    trainer = IAUTrainer(tiny_bert(), args=make_args(tmp_path / "out"), train_dataset=ds, data_collator=default_data_collator)
    good = lambda: trainer.unlearn(ds.select([0, 1]), ds.select(range(2, 16)))  # noqa: E731
    return trainer, ds, good


def _unlearn_case(tmp_path, make_request, field, fix, model_fn=None):
    if model_fn is None:
        trainer, ds, good = _cls_trainer(tmp_path)
    else:
        trainer, ds, good = model_fn(tmp_path)
    forget, retain = make_request(ds)
    return Case(lambda: trainer.unlearn(forget, retain), trainer.model, field, fix, good)


def _lm_trainer(tmp_path):
    ds = lm_dataset(16)
    trainer = IAUTrainer(tiny_gpt2(), args=make_args(tmp_path / "out"), train_dataset=ds, data_collator=default_data_collator)
    return trainer, ds, lambda: trainer.unlearn(ds.select([0, 1]), ds.select(range(2, 16)))


def _vit_trainer(tmp_path):
    ds = image_dataset(16)
    trainer = IAUTrainer(tiny_vit(), args=make_args(tmp_path / "out"), train_dataset=ds, data_collator=default_data_collator)
    return trainer, ds, lambda: trainer.unlearn(ds.select([0, 1]), ds.select(range(2, 16)))


def _first_two(ds):
    return ds.select([0, 1])


UNLEARN_CASES: dict[str, tuple] = {
    "empty_forget_set": (lambda ds: (ds.select([]), None), r"`forget_dataset` is empty", r"at least one row"),
    "ids_not_in_dataset": (
        lambda ds: (text_cls_dataset(3).map(lambda r: {"id": r["id"] + 100}), None),
        r"`forget_dataset`.*not in the train dataset's `id`",
        r"check the ids",
    ),
    "id_type_mismatch_vs_train": (
        lambda ds: (_ids_as_str(_first_two(ds)), None),
        r"`forget_dataset`\.id holds string ids but `train_dataset`\.id holds integer",
        r"cast_column",
    ),
    "id_type_mismatch_vs_retain": (
        lambda ds: (_ids_as_str(_first_two(ds)), ds.select(range(2, 16))),
        r"`retain_dataset`\.id holds integer",
        r"cast_column",
    ),
    "forget_retain_overlap": (lambda ds: (_first_two(ds), ds), r"overlap", r"remove the forget rows"),
    "empty_retain_set": (
        lambda ds: (_first_two(ds), ds.select([])), r"`retain_dataset` is empty", r"retain_weight=0"
    ),
    "rows_without_labels": (
        lambda ds: (_first_two(ds).remove_columns("label"), ds.select(range(2, 16))),
        r"`forget_dataset` rows have no labels",
        r"add a `label`",
    ),
    "label_out_of_range": (
        lambda ds: (_first_two(ds).map(lambda r: {"label": 7}), ds.select(range(2, 16))),
        r"num_labels=3",
        r"fix the labels",
    ),
    "sequence_longer_than_max_positions": (
        lambda ds: (_with_tokens(_first_two(ds), 40), ds.select(range(2, 16))),
        r"`forget_dataset`\.input_ids.*40 tokens.*config\.max_position_embeddings",
        r"truncation=True, max_length=32",
    ),
    "token_ids_outside_vocabulary": (
        lambda ds: (_first_two(ds), _with_tokens(ds.select(range(2, 16)), 16, token=VOCAB + 16)),
        r"`retain_dataset`\.input_ids.*\[1, 80\].*64 rows",
        r"resize_token_embeddings",
    ),
}

LM_CASES = {
    "lm_sequence_longer_than_n_positions": (
        lambda ds: (_with_tokens(_first_two(ds), 40).map(lambda r: {"labels": r["input_ids"]}), ds.select(range(2, 16))),
        r"40 tokens.*config\.n_positions",
        r"truncat",
    ),
    "lm_labels_outside_vocabulary": (
        lambda ds: (_first_two(ds).map(lambda r: {"labels": [VOCAB + 1] * len(r["labels"])}), ds.select(range(2, 16))),
        r"`forget_dataset`\.labels.*predicts 64 tokens",
        r"-100 for positions to ignore",
    ),
}

IMAGE_CASES = {
    "image_wrong_channels": (
        lambda ds: (_with_pixels(_first_two(ds), (3, 8, 8)), ds.select(range(2, 16))),
        r"`forget_dataset`\.pixel_values.*3 channel\(s\).*num_channels=1",
        r"convert the images",
    ),
    "image_channels_last": (
        lambda ds: (_first_two(ds), _with_pixels(ds.select(range(2, 16)), (8, 8, 1))),
        r"`retain_dataset`\.pixel_values.*8 channel\(s\)",
        r"transpose to \(C, H, W\)",
    ),
    "image_wrong_size": (
        lambda ds: (_with_pixels(_first_two(ds), (1, 16, 16)), ds.select(range(2, 16))),
        r"images are 16×16.*image_size=8",
        r"resize them",
    ),
}


# --- construction, config, saving, resuming ------------------------------------------------------------------
def _init_cases(tmp_path: Path) -> dict[str, Callable[[], Case]]:
    out = tmp_path / "out"

    def tokenizer_vocab_mismatch():
        model = tiny_gpt2()
        return Case(
            lambda: IAUTrainer(model, args=make_args(out), processing_class=_tokenizer(VOCAB + 36)),
            model, r"processing_class: the tokenizer has 100 tokens.*64 rows", r"resize_token_embeddings",
        )

    def train_dataset_too_long():
        model = tiny_bert()
        return Case(
            lambda: IAUTrainer(model, args=make_args(out), train_dataset=_with_tokens(text_cls_dataset(4), 33)),
            model, r"`train_dataset`\.input_ids.*33 tokens", r"truncation=True",
        )

    def peft_targets_missing():
        model = tiny_gpt2()
        return Case(
            lambda: IAUTrainer(model, args=make_args(out), peft_config=LoraConfig(r=2, target_modules=["nope"])),
            model, r"peft_config\.target_modules", r"name modules that exist",
        )

    def peft_model_plus_config():
        model = get_peft_model(tiny_gpt2(), LoraConfig(r=2, target_modules=["c_attn"]))
        return Case(
            lambda: IAUTrainer(model, args=make_args(out), peft_config=LoraConfig(r=2, target_modules=["c_attn"])),
            model, r"PeftModel and a `peft_config`", r"merge_and_unload",
        )

    def exact_gr_on_fused_attention():
        model = tiny_gpt2()
        model.config._attn_implementation = "flash_attention_2"  # a kernel without double backward
        return Case(
            lambda: IAUTrainer(model, args=make_args(out, gr_alpha=0.005, gr_mode="exact")),
            model, r"gr_mode='exact'.*attn_implementation='flash_attention_2'", r"gr_mode='finite_difference'",
        )

    def config(field, value, fix):
        def make():
            return Case(lambda: make_args(out, **{field: value}), tiny_bert(), rf"IAUConfig\.{field}=", fix)

        return make

    def output_dir_under_a_file():
        (tmp_path / "blocker").write_text("a file, not a folder")
        model = tiny_bert()
        return Case(
            lambda: IAUTrainer(model, args=make_args(tmp_path / "blocker" / "out")),
            model, r"output_dir=.*cannot be created: .*blocker' is a file", r"choose another `output_dir`",
        )

    def output_dir_is_a_file():
        (tmp_path / "weights.txt").write_text("x")
        model = tiny_bert()
        return Case(
            lambda: IAUTrainer(model, args=make_args(tmp_path / "weights.txt")),
            model, r"output_dir=.*is a file", r"choose a folder path",
        )

    def output_dir_read_only():
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        model = tiny_bert()
        return Case(
            lambda: IAUTrainer(model, args=make_args(locked / "out")),
            model, r"output_dir=.*is not writable", r"choose a writable `output_dir`",
        )

    def output_dir_gone_at_save():
        trainer, ds, _ = _cls_trainer_at(tmp_path / "a" / "out")
        trainer.unlearn(ds.select([0, 1]), ds.select(range(2, 16)))
        shutil.rmtree(tmp_path / "a")
        (tmp_path / "a").write_text("the folder was replaced by a file")
        return Case(lambda: trainer.save_model(), trainer.model, r"output_dir=.*cannot be created", r"choose another")

    def resume(value_fn, field, fix):
        def make():
            ds = text_cls_dataset(8)
            trainer = IAUTrainer(
                tiny_bert(), args=make_args(out, max_steps=1), train_dataset=ds, data_collator=default_data_collator
            )
            value = value_fn()
            return Case(lambda: trainer.train(resume_from_checkpoint=value), trainer.model, field, fix)

        return make

    def pickle_only_checkpoint():
        ckpt = tmp_path / "out" / "checkpoint-5"
        ckpt.mkdir(parents=True)
        torch.save({"w": torch.zeros(1)}, ckpt / "pytorch_model.bin")
        return str(ckpt)

    return {
        "tokenizer_vocab_mismatch": tokenizer_vocab_mismatch,
        "train_dataset_sequence_too_long": train_dataset_too_long,
        "peft_target_modules_missing": peft_targets_missing,
        "peft_model_plus_peft_config": peft_model_plus_config,
        "exact_gr_on_fused_attention": exact_gr_on_fused_attention,
        "config_negative_alpha": config("gr_alpha", -0.005, r"use a finite value >= 0"),
        "config_zero_learning_rate": config("unlearn_learning_rate", 0.0, r"use a finite value > 0"),
        "config_negative_learning_rate": config("unlearn_learning_rate", -1e-3, r"use a finite value > 0"),
        "config_unknown_gr_mode": config("gr_mode", "hessian", r"use one of \('finite_difference', 'exact'\)"),
        "config_unknown_optimizer": config("unlearn_optimizer", "lion", r"use one of \('adam', 'sgd'\)"),
        "output_dir_under_a_file": output_dir_under_a_file,
        "output_dir_is_a_file": output_dir_is_a_file,
        "output_dir_read_only": output_dir_read_only,
        "output_dir_unwritable_at_save": output_dir_gone_at_save,
        "resume_missing_checkpoint": resume(
            lambda: str(tmp_path / "out" / "checkpoint-999"), r"resume_from_checkpoint=.*checkpoint-999.* does not exist",
            r"pass an existing checkpoint folder",
        ),
        "resume_true_without_checkpoints": resume(
            lambda: True, r"resume_from_checkpoint=True .* holds no checkpoint-\* folder", r"train without resume"
        ),
        "resume_pickle_only_checkpoint": resume(
            pickle_only_checkpoint, r"resume_from_checkpoint=.*only pickle-based weights \(pytorch_model\.bin\)",
            r"pass an existing checkpoint folder",
        ),
    }


def _cls_trainer_at(out: Path):
    ds = text_cls_dataset(16)
    trainer = IAUTrainer(tiny_bert(), args=make_args(out), train_dataset=ds, data_collator=default_data_collator)
    return trainer, ds, None


ALL_UNLEARN = {**UNLEARN_CASES, **LM_CASES, **IMAGE_CASES}
INIT_NAMES = list(_init_cases(Path("/nonexistent")).keys())


def _run(tmp_path: Path, case: Case) -> None:
    weights, files = params_of(case.model), tree(tmp_path)
    with pytest.raises(ValueError) as err:
        case.call()
    msg = str(err.value)
    assert re.search(case.field, msg), f"field not named: {msg}"
    assert re.search(case.fix, msg), f"no fix proposed: {msg}"
    assert same_weights(params_of(case.model), weights)  # bit-identical
    assert tree(tmp_path) == files  # nothing written, created or removed
    if case.after is not None:  # the trainer is still usable: a valid request goes through
        assert case.after().metrics["update_norm"] > 0


def test_catalogue_has_at_least_15_distinct_bad_inputs():
    assert len(ALL_UNLEARN) + len(INIT_NAMES) >= 15
    assert len(set(ALL_UNLEARN) | set(INIT_NAMES)) == len(ALL_UNLEARN) + len(INIT_NAMES)


@pytest.mark.parametrize("name", list(ALL_UNLEARN))
def test_bad_unlearning_request(tmp_path, name):
    make_request, field, fix = ALL_UNLEARN[name]
    model_fn = _lm_trainer if name in LM_CASES else _vit_trainer if name in IMAGE_CASES else None
    _run(tmp_path, _unlearn_case(tmp_path, make_request, field, fix, model_fn))


@pytest.mark.parametrize("name", INIT_NAMES)
def test_bad_construction_config_save_or_resume(tmp_path, name):
    if name == "output_dir_read_only" and os.geteuid() == 0:
        pytest.skip("root ignores folder permissions; output_dir_under_a_file covers the check")
    case = _init_cases(tmp_path)[name]()
    try:
        _run(tmp_path, case)
    finally:
        if (tmp_path / "locked").exists():
            (tmp_path / "locked").chmod(0o755)


class _AnySizeConvNet(torch.nn.Module):
    """A convolutional classifier whose config names image_size=8 yet accepts any size (global pooling)."""

    def __init__(self) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(num_channels=1, image_size=8)
        self.conv = torch.nn.Conv2d(1, 3, 3)

    def forward(self, pixel_values, labels=None):
        return self.conv(pixel_values).mean(dim=(2, 3))


def test_image_size_check_asks_the_model(tmp_path):
    """A size other than config.image_size is an error only when the model rejects it: ViT (patch
    embeddings) rejects 16×16 for image_size=8; a pooling convnet accepts it, and its weights stay as they were."""
    from hf_iau.validation import check_dataset

    ds = _with_pixels(image_dataset(2), (1, 16, 16))
    convnet = _AnySizeConvNet()
    before = params_of(convnet)
    check_dataset(convnet, ds, "forget_dataset")  # no error
    assert same_weights(params_of(convnet), before) and convnet.training
    with pytest.raises(ValueError, match=r"images are 16×16 .*image_size=8"):
        check_dataset(tiny_vit(), ds, "forget_dataset")
    with pytest.raises(ValueError, match=r"1 channel\(s\) .*num_channels=3"):
        convnet.config.num_channels = 3
        check_dataset(convnet, ds, "forget_dataset")


# --- runaway-step guard: undo, shrink, retry; give up with the original weights ----------------------------------
def _guard_split():
    from hf_iau import forget_retain_split

    return forget_retain_split(text_cls_dataset(20), forget=[0, 1, 2], id_column="id")


def _guard_run(tmp_path, optimizer, lr, steps=1, **kw):
    """Pure ascent (unlearn_retain_weight=0), so every step raises the retain loss; bigger steps raise it more."""
    split = _guard_split()
    args = make_args(
        tmp_path / "out", unlearn_optimizer=optimizer, unlearn_learning_rate=lr, unlearn_steps=steps, unlearn_retain_weight=0.0,
        **kw,
    )
    trainer = IAUTrainer(tiny_bert(), args=args, data_collator=default_data_collator)
    return trainer, split


def _rise(tmp_path, optimizer, lr) -> float:
    trainer, split = _guard_run(tmp_path, optimizer, lr)
    m = trainer.unlearn(split["forget"], split["retain"]).metrics
    return m["retain_loss_after"] - m["retain_loss_before"]


@pytest.mark.parametrize("optimizer,lr", [("sgd", 4.0), ("adam", 0.05)])
@pytest.mark.parametrize("retries_needed", [1, 2])
def test_guard_undoes_a_runaway_step_and_retries_smaller(tmp_path, optimizer, lr, retries_needed):
    rises = [_rise(tmp_path, optimizer, lr * 0.5**k) for k in range(retries_needed + 1)]
    assert all(a > b > 0 for a, b in zip(rises, rises[1:])), rises  # the calibration below is valid
    tol = (rises[-2] + rises[-1]) / 2  # the step at lr·0.5^(needed−1) breaks it, lr·0.5^needed does not
    trainer, split = _guard_run(
        tmp_path, optimizer, lr, unlearn_max_retain_loss_rise=tol, unlearn_guard_retries=3, unlearn_guard_shrink=0.5
    )
    result = trainer.unlearn(split["forget"], split["retain"])
    m = result.metrics
    assert m["guard_retries"] == retries_needed and result.history[0]["guard_retries"] == retries_needed
    assert m["final_learning_rate"] == lr * 0.5**retries_needed < lr
    assert m["retain_loss_after"] - m["retain_loss_before"] <= tol
    assert trainer.unlearning_history[-1]["metrics"]["guard_retries"] == retries_needed  # logged for cards/ledger
    # Undo is exact (weights AND optimizer state): the result equals a clean run at the smaller step size.
    clean, _ = _guard_run(tmp_path, optimizer, lr * 0.5**retries_needed)
    clean.unlearn(split["forget"], split["retain"])
    assert same_weights(params_of(trainer.model), params_of(clean.model))


def test_guard_exhausting_retries_restores_the_original_weights(tmp_path):
    lr = 4.0
    rises = [_rise(tmp_path, "sgd", lr * 0.5**k) for k in range(4)]
    assert min(rises) > 0
    tol = min(rises) / 2  # every attempt (lr, lr/2, lr/4, lr/8) breaks it
    trainer, split = _guard_run(
        tmp_path, "sgd", lr, unlearn_max_retain_loss_rise=tol, unlearn_guard_retries=3, unlearn_guard_shrink=0.5
    )
    before, files = params_of(trainer.model), tree(tmp_path)
    with pytest.raises(ValueError, match=r"runaway unlearning step.*unlearn_max_retain_loss_rise=.*after 3 retries") as err:
        trainer.unlearn(split["forget"], split["retain"])
    assert "original weights were restored" in str(err.value) and "Lower `unlearn_learning_rate`" in str(err.value)
    assert same_weights(params_of(trainer.model), before)
    assert all(p.grad is None for p in trainer.model.parameters())
    assert not trainer.unlearning_history and tree(tmp_path) == files


def test_guard_failure_at_a_later_step_restores_the_weights_from_before_the_first(tmp_path):
    """Step 0 passes, step 1 runs away: the model goes back to the ORIGINAL weights, not step 0's."""
    lr = 0.02
    trainer, split = _guard_run(tmp_path, "adam", lr, steps=2)
    original = params_of(trainer.model)
    r = trainer.unlearn(split["forget"], split["retain"])
    losses = [h["retain_loss"] for h in r.history] + [r.metrics["retain_loss_after"]]
    rise0, rise1 = losses[1] - losses[0], losses[2] - losses[1]
    assert rise1 > rise0 > 0, (rise0, rise1)
    one_step, _ = _guard_run(tmp_path, "adam", lr, steps=1)
    one_step.unlearn(split["forget"], split["retain"])
    assert not same_weights(params_of(one_step.model), original)  # step 0 alone does move the weights

    trainer, _ = _guard_run(
        tmp_path, "adam", lr, steps=2, unlearn_max_retain_loss_rise=(rise0 + rise1) / 2, unlearn_guard_retries=0
    )
    with pytest.raises(ValueError, match="runaway unlearning step"):
        trainer.unlearn(split["forget"], split["retain"])
    assert same_weights(params_of(trainer.model), original)


def test_guard_retries_a_step_whose_retain_loss_is_non_finite(tmp_path):
    # An SGD step of 1e30 sends the loss to inf/nan; shrinking by 1e-3 each retry reaches a sane step size.
    trainer, split = _guard_run(
        tmp_path, "sgd", 1e30, unlearn_max_retain_loss_rise=2.0, unlearn_guard_retries=12, unlearn_guard_shrink=1e-3
    )
    m = trainer.unlearn(split["forget"], split["retain"]).metrics
    assert m["guard_retries"] >= 1 and m["final_learning_rate"] < 1e30
    assert np.isfinite(m["retain_loss_after"]) and m["retain_loss_after"] - m["retain_loss_before"] <= 2.0
