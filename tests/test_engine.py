"""The request engine: refusals where results would be wrong, padding rows that weigh nothing, and one path for
gradients (accelerator.backward)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny import lm_dataset, params_of, parity_args, text_cls_dataset, tiny_bert, tiny_gpt2  # noqa: E402

from hf_iau import IAUTrainer  # noqa: E402
from hf_iau.engine import Engine  # noqa: E402
from hf_iau.losses import batch_losses  # noqa: E402


@pytest.mark.parametrize("flag, match", [("is_deepspeed_enabled", "DeepSpeed"), ("is_fsdp_enabled", "fsdp_version: 2")])
def test_deepspeed_and_fsdp1_are_refused_before_any_change(tmp_path, flag, match):
    ds = lm_dataset(10)
    trainer = IAUTrainer(model=tiny_gpt2(0), args=parity_args(tmp_path))
    before = params_of(trainer.model)
    setattr(trainer, flag, True)  # what accelerate sets for a DeepSpeed / FSDP1 run (no DTensor parameters)
    with pytest.raises(ValueError, match=match):
        trainer.unlearn(ds.select(range(3)), ds.select(range(3, 10)))
    assert all(torch.equal(v, params_of(trainer.model)[k]) for k, v in before.items())
    assert trainer.unlearning_history == []


def test_rows_labelled_minus_100_weigh_nothing(tmp_path):
    """The padding rows that keep sharded processes in step: zero loss, zero count, never correct."""
    ds = text_cls_dataset(6)
    trainer = IAUTrainer(model=tiny_bert(0), args=parity_args(tmp_path))
    engine = Engine(trainer)
    batch = engine.collate(trainer._model_columns(ds), [0, 1, 2])
    full = batch_losses(trainer.model.eval(), batch)
    batch["labels"][1] = -100
    part = batch_losses(trainer.model, batch)
    assert part.count.tolist() == [1.0, 0.0, 1.0]
    assert float(part.loss_sum[1].detach()) == 0.0 and float(part.correct[1]) == 0.0
    torch.testing.assert_close(part.loss_sum[[0, 2]], full.loss_sum[[0, 2]])
    pad = engine.pad_batch(trainer._model_columns(ds))
    assert float(batch_losses(trainer.model, pad).count.sum()) == 0.0


def test_unlearning_gradients_go_through_accelerator_backward(tmp_path, monkeypatch):
    ds = lm_dataset(10)
    trainer = IAUTrainer(model=tiny_gpt2(0), args=parity_args(tmp_path, per_device_eval_batch_size=4))
    calls = []
    original = trainer.accelerator.backward
    monkeypatch.setattr(trainer.accelerator, "backward", lambda loss, **kw: (calls.append(1), original(loss, **kw)))
    trainer.unlearn(ds.select(range(3)), ds.select(range(3, 10)))
    assert len(calls) == 1 + 2  # one forget batch (3 rows) + two retain batches (7 rows, batch size 4)


def test_default_mode_takes_no_gradient_outside_accelerator_backward(tmp_path, monkeypatch):
    """The counterfactual targets of the default mode use the engine's backward too (no torch.autograd.grad)."""
    ds = lm_dataset(24)
    trainer = IAUTrainer(model=tiny_gpt2(0), args=parity_args(tmp_path, unlearn_targets="counterfactual", unlearn_steps=2),
                         eval_dataset=ds.select(range(16, 24)))
    calls = []
    original = trainer.accelerator.backward
    monkeypatch.setattr(trainer.accelerator, "backward", lambda loss, **kw: (calls.append(1), original(loss, **kw)))

    def no_autograd_grad(*a, **k):
        raise AssertionError("torch.autograd.grad used outside accelerator.backward")

    monkeypatch.setattr(torch.autograd, "grad", no_autograd_grad)
    res = trainer.unlearn(ds.select(range(4)), ds.select(range(4, 16)))
    assert len(calls) >= 4 + 1  # 4 per-example forget gradients (+ the sample's) for the targets, then the steps
    assert res.metrics["update_norm"] > 0
