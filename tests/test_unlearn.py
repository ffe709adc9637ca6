"""The IAU update: reference parity, true-count weighting, models, retain sampling, saturation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from tiny import (
    image_dataset,
    lm_dataset,
    max_abs_diff,
    params_of,
    text_cls_dataset,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
    tiny_vit,
)
from transformers import default_data_collator

from hf_iau import IAUConfig, IAUTrainer, forget_retain_split


def make_args(tmp_path, **kw) -> IAUConfig:
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no")
    base.update(kw)
    return IAUConfig(**base)


# The fixed single-step, whole-retain-set, no-saturation mode (the defaults before "auto").
SINGLE_STEP = dict(unlearn_steps=1, unlearn_retain_sample_size=None, unlearn_targets="none", unlearn_stop="fixed")


def padded_lm_dataset(n: int = 20, seed: int = 0):
    """Sequences of different lengths: per-token weighting matters."""
    g = torch.Generator().manual_seed(seed)
    rows = {"id": [], "input_ids": [], "attention_mask": [], "labels": []}
    for i in range(n):
        length = 4 + int(torch.randint(0, 12, (1,), generator=g))
        ids = torch.randint(1, 64, (16,), generator=g).tolist()
        rows["id"].append(i)
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * length + [0] * (16 - length))
        rows["labels"].append(ids[:length] + [-100] * (16 - length))
    from datasets import Dataset

    return Dataset.from_dict(rows)


def hand_adam_step(model, forget, retain, lr, kind):
    """One fresh Adam step on mean ℓ(retain) − mean ℓ(forget), each set in ONE batch."""
    model = copy.deepcopy(model).eval()

    def mean_loss(ds):
        batch = default_data_collator([ds[i] for i in range(len(ds))])
        if kind == "lm":
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            lab = batch["labels"][:, 1:]
            return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), lab.reshape(-1), ignore_index=-100)
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "id")}
        return F.cross_entropy(model(**inputs).logits, batch["labels"])

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3 if lr is None else lr)
    loss = mean_loss(retain) - mean_loss(forget)
    loss.backward()
    opt.step()
    return params_of(model)


@pytest.mark.parametrize(
    "kind,make_model,make_data",
    [("lm", tiny_gpt2, padded_lm_dataset), ("cls", tiny_bert, text_cls_dataset)],
)
def test_reference_parity_equals_one_fresh_adam_step(tmp_path, kind, make_model, make_data):
    """Authors' update: one fresh Adam(lr) step on mean ℓ(D_r) − mean ℓ(D_f), means over whole sets."""
    model = make_model().double()
    ds = make_data(20)
    split = forget_retain_split(ds, forget=[1, 4, 7, 11, 15], id_column="id")
    expected = hand_adam_step(model, split["forget"], split["retain"], 1e-3, kind)
    original = params_of(model)
    args = make_args(
        tmp_path, unlearn_optimizer="adam", unlearn_learning_rate=1e-3, unlearn_steps=1, unlearn_forget_weight=1.0,
        unlearn_retain_weight=1.0, unlearn_retain_sample_size=None, unlearn_targets="none", unlearn_batch_size=3,
    )
    trainer = IAUTrainer(model, args=args, data_collator=default_data_collator)
    result = trainer.unlearn(split["forget"], retain_dataset=split["retain"])
    got = params_of(trainer.model)
    assert max_abs_diff(got, expected) <= 1e-5
    assert max_abs_diff(got, original) > 1e-4  # the step did move the weights
    assert result.metrics["forget_loss_after"] > result.metrics["forget_loss_before"]
    assert result.metrics["example_gradient_passes"] == 20


def test_batching_does_not_change_the_update(tmp_path):
    """True-count weighting: batch size 1, 3 and 20 give the same weights (SGD, so no sign amplification)."""
    ds = padded_lm_dataset(20)
    split = forget_retain_split(ds, forget=[0, 5, 9], id_column="id")
    results = []
    for bs in (1, 3, 20):
        args = make_args(tmp_path, unlearn_optimizer="sgd", unlearn_learning_rate=0.5, unlearn_batch_size=bs, **SINGLE_STEP)
        trainer = IAUTrainer(tiny_gpt2().double(), args=args, data_collator=default_data_collator)
        trainer.unlearn(split["forget"], split["retain"])
        results.append(params_of(trainer.model))
    assert max_abs_diff(results[0], results[1]) < 1e-10
    assert max_abs_diff(results[0], results[2]) < 1e-10


@pytest.mark.parametrize(
    "make_model,make_data,collator",
    [
        (tiny_gpt2, lm_dataset, default_data_collator),
        (tiny_llama, lm_dataset, default_data_collator),
        (tiny_bert, text_cls_dataset, default_data_collator),
        (tiny_vit, image_dataset, default_data_collator),
    ],
    ids=["gpt2", "llama", "bert", "vit"],
)
def test_unlearning_raises_forget_loss_on_each_model_family(tmp_path, make_model, make_data, collator):
    ds = make_data(24)
    split = forget_retain_split(ds, forget=0.25, id_column="id", seed=0)
    args = make_args(tmp_path, unlearn_steps=3, unlearn_learning_rate=1e-3, unlearn_retain_sample_size=8,
                     unlearn_targets="none", unlearn_stop="fixed")
    trainer = IAUTrainer(make_model(), args=args, train_dataset=ds, data_collator=collator)
    before = params_of(trainer.model)
    result = trainer.unlearn(split["forget"])  # retain = train − forget (by id)
    m = result.metrics
    assert m["forget_loss_after"] > m["forget_loss_before"] + 1e-3
    assert m["steps"] == 3 and m["retain_examples_per_step"] == 8
    assert m["update_norm"] > 0 and max_abs_diff(params_of(trainer.model), before) > 0
    assert m["example_gradient_passes"] == 3 * (6 + 8)
    assert trainer.unlearning_history[-1]["forget_size"] == 6


def test_retain_sample_is_seeded_and_changes_per_step(tmp_path):
    from hf_iau.lifecycle import retain_sample

    a = retain_sample(100, 10, seed=0, request_index=0, step=0)
    assert a == retain_sample(100, 10, seed=0, request_index=0, step=0)
    assert a != retain_sample(100, 10, seed=0, request_index=0, step=1)
    assert a != retain_sample(100, 10, seed=1, request_index=0, step=0)
    assert a != retain_sample(100, 10, seed=0, request_index=1, step=0)
    assert len(set(a)) == 10 and retain_sample(5, 10, 0, 0, 0) == list(range(5))
    with pytest.raises(TypeError, match="request index"):  # a keyed request id must never seed anything
        retain_sample(100, 10, 0, "ab" * 32, 0)

    ds = text_cls_dataset(30)
    split = forget_retain_split(ds, forget=[0, 1, 2], id_column="id")
    runs = []
    for _ in range(2):
        args = make_args(tmp_path, unlearn_steps=2, unlearn_retain_sample_size=5, unlearn_targets="none", unlearn_stop="fixed")
        trainer = IAUTrainer(tiny_bert(), args=args, data_collator=default_data_collator)
        trainer.unlearn(split["forget"], split["retain"])
        runs.append(params_of(trainer.model))
    assert max_abs_diff(*runs) == 0.0  # same seed, bit-identical


def test_flip_saturation_stops_automatically(tmp_path):
    """With unlearn_targets='flip' and unlearn_stop='targets', ascent stops once no forget example is fit."""
    ds = text_cls_dataset(24)
    split = forget_retain_split(ds, forget=[0, 1, 2, 3], id_column="id")
    train_args = make_args(tmp_path, num_train_epochs=30, learning_rate=5e-3, per_device_train_batch_size=8)
    trainer = IAUTrainer(tiny_bert(), args=train_args, train_dataset=ds, data_collator=default_data_collator)
    trainer.train()
    result = trainer.unlearn(split["forget"], unlearn_targets="flip", unlearn_stop="targets", unlearn_steps=50,
                             unlearn_stop_tolerance=0.0, unlearn_learning_rate=1e-2)  # stop once NO row is fit
    m = result.metrics
    assert m["forget_accuracy_before"] > 0.5
    assert m["stopped_early"] == 1.0 and m["steps"] < 50
    assert m["forget_accuracy_after"] == 0.0
    assert m["forget_active_fraction_final"] == 0.0


def test_loss_saturation_uses_held_out_reference(tmp_path):
    ds = text_cls_dataset(24)
    held_out = text_cls_dataset(12, seed=5)
    split = forget_retain_split(ds, forget=[0, 1, 2, 3], id_column="id")
    args = make_args(tmp_path, unlearn_targets="held_out_quantile", unlearn_stop="targets", unlearn_steps=40, unlearn_learning_rate=1e-2)
    trainer = IAUTrainer(tiny_bert(), args=args, eval_dataset=held_out, data_collator=default_data_collator)
    # an untrained model: the forget rows already sit at the held-out level, so the request changes nothing
    result = trainer.unlearn(split["forget"], split["retain"], allow_noop=True)
    m = result.metrics
    assert "held_out_loss" in m
    assert m["forget_active_fraction_final"] == 0.0 or m["steps"] == 40
    assert m["example_forward_passes"] >= 12  # the reference pass is counted


def test_sgd_multi_step_matches_manual_loop(tmp_path):
    """unlearn_steps=2 with SGD recomputes the gradient at the new weights."""
    ds = text_cls_dataset(12)
    split = forget_retain_split(ds, forget=[0, 1], id_column="id")
    model = tiny_bert().double()
    ref = copy.deepcopy(model).eval()
    collate = default_data_collator
    f = collate([split["forget"][i] for i in range(2)])
    r = collate([split["retain"][i] for i in range(10)])
    for _ in range(2):
        ref.zero_grad()
        lf = F.cross_entropy(ref(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits, f["labels"])
        lr_ = F.cross_entropy(ref(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits, r["labels"])
        (0.7 * lr_ - 2.0 * lf).backward()
        with torch.no_grad():
            for p in ref.parameters():
                p -= 0.1 * p.grad
    args = make_args(
        tmp_path, unlearn_optimizer="sgd", unlearn_learning_rate=0.1, unlearn_steps=2, unlearn_forget_weight=2.0, unlearn_retain_weight=0.7,
        unlearn_batch_size=16, unlearn_retain_sample_size=None, unlearn_targets="none", unlearn_stop="fixed",
    )
    trainer = IAUTrainer(model, args=args, data_collator=collate)
    trainer.unlearn(split["forget"], split["retain"])
    assert max_abs_diff(params_of(trainer.model), params_of(ref)) < 1e-10


def test_runaway_guard_retries_with_smaller_steps_then_restores(tmp_path):
    ds = text_cls_dataset(20)
    split = forget_retain_split(ds, forget=[0, 1, 2], id_column="id")
    # A tolerance of 0 forbids any rise in retain loss; a huge ascent-only step always raises it.
    args = make_args(
        tmp_path, unlearn_optimizer="sgd", unlearn_learning_rate=50.0, unlearn_retain_weight=0.0,
        unlearn_max_retain_loss_rise=0.0, unlearn_guard_retries=2, **SINGLE_STEP,
    )
    trainer = IAUTrainer(tiny_bert(), args=args, data_collator=default_data_collator)
    before = params_of(trainer.model)
    with pytest.raises(ValueError, match="unlearn_max_retain_loss_rise"):
        trainer.unlearn(split["forget"], split["retain"])
    assert max_abs_diff(params_of(trainer.model), before) == 0.0
    # A generous tolerance lets a small step through, after shrinking if needed.
    trainer.args.unlearn_max_retain_loss_rise = 5.0
    trainer.args.unlearn_learning_rate = 1e-3
    result = trainer.unlearn(split["forget"], split["retain"])
    assert result.metrics["guard_retries"] >= 0 and result.metrics["update_norm"] > 0
