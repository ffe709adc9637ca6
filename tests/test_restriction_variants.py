"""Cheaper gradient restriction: penalty every n steps, reused penalty gradient, H·u on a sub-batch."""

from __future__ import annotations

import pytest
import torch
from test_restriction import _batch, _rel, exact_gr, gr_trainer, step_grads
from tiny import lm_dataset, text_cls_dataset, tiny_bert, tiny_llama

from hf_iau import IAUConfig
from hf_iau.restriction import split_rows as _split_rows


def _model64():
    return tiny_llama(attn="eager").double()


def test_sub_batch_keeps_the_full_gradient_and_estimates_hu_on_the_sub_batch(tmp_path):
    """total − α·H_S·u = ∇ℓ_B exactly; α·H_S·u matches double backward on the sub-batch with u from ∇ℓ_B."""
    alpha = 0.5
    ds = lm_dataset(4)
    full, sub = _batch(ds, 0, 4), _batch(ds, 0, 1)
    trainer = gr_trainer(tmp_path, _model64(), gr_alpha=alpha, gr_fd_radius=1e-4, gr_sub_batch_fraction=0.25,
                         gr_every_n_steps=2, gr_reuse_penalty=True)  # keeps α·H_S·u
    model, gr = trainer.model, trainer.gradient_restriction
    params = list(model.parameters())
    got = step_grads(trainer, full)
    _, g_full, _, norm = exact_gr(model, full, alpha)
    assert _rel([t - pg for t, pg in zip(got, gr.penalty_grads)], g_full) < 1e-6  # round-off of total − penalty, amplified by α/r
    n = torch.cat([g.flatten() for g in g_full]).norm()
    g_sub = torch.autograd.grad(model(**sub).loss, params, create_graph=True)
    hu = torch.autograd.grad(sum((g * (v / n)).sum() for g, v in zip(g_sub, g_full)), params)
    assert _rel(gr.penalty_grads, [alpha * h for h in hu]) < 3e-3  # O(r); Llama rotary runs in float32
    assert gr.pop_logs()["gr_penalty"] == pytest.approx(norm, rel=1e-6)


@pytest.mark.parametrize("mode", ["finite_difference", "exact"])
def test_kept_penalty_gradient_is_total_minus_plain_gradient(tmp_path, mode):
    b = _batch(lm_dataset(4), 0, 4)
    trainer = gr_trainer(tmp_path, _model64(), gr_alpha=0.1, gr_mode=mode, gr_every_n_steps=2, gr_reuse_penalty=True)
    got = step_grads(trainer, b)
    exact, plain, _, _ = exact_gr(trainer.model, b, 0.1)
    assert _rel([t - pg for t, pg in zip(got, trainer.gradient_restriction.penalty_grads)], plain) < 1e-9
    assert _rel(got, exact) < (5e-3 if mode == "finite_difference" else 1e-6)  # FD error O(r), r = 1e-3


def test_split_rows_weights_by_predicted_tokens():
    labels = torch.tensor([[1, 2, 3, 4], [1, 2, -100, -100], [5, 6, 7, -100], [1, -100, -100, -100]])
    inputs = {"input_ids": labels.clamp(min=0), "labels": labels, "flag": True}
    sub, rest, w = _split_rows(inputs, 0.5, causal_lm=True)
    assert sub["input_ids"].shape[0] == 2 and rest["labels"].shape[0] == 2 and sub["flag"] is True
    assert w == pytest.approx(4 / 6)  # tokens after the shift: 3 + 1 of 3 + 1 + 2 + 0
    _, _, w = _split_rows(inputs, 0.25, causal_lm=False)
    assert w == pytest.approx(0.25)
    assert _split_rows(inputs, 1.0, causal_lm=True) is None


@pytest.mark.parametrize("reuse", [False, True])
def test_every_n_steps_plain_or_reused_penalty_between(tmp_path, reuse):
    ds = text_cls_dataset(8)
    b1, b2 = _batch(ds, 0, 4), _batch(ds, 4, 8)
    trainer = gr_trainer(tmp_path, tiny_bert().double(), gr_alpha=0.1, gr_every_n_steps=3, gr_reuse_penalty=reuse)
    model = trainer.model
    params = list(model.parameters())
    trainer.state.global_step = 0  # a GR step
    got = step_grads(trainer, b1)
    assert _rel(got, exact_gr(model, b1, 0.1)[0]) < 5e-3
    penalty = [g - p for g, p in zip(got, torch.autograd.grad(model(**b1).loss, params))]
    for step in (1, 2):  # steps without a fresh penalty
        trainer.state.global_step = step
        got = step_grads(trainer, b2)
        plain = torch.autograd.grad(model(**b2).loss, params)
        expected = [g + pg for g, pg in zip(plain, penalty)] if reuse else plain
        assert _rel(got, expected) < 1e-9
    assert (trainer.gradient_restriction.penalty_grads is not None) == reuse


def test_cheap_gr_still_lowers_gradient_norm(tmp_path):
    """Trained with the penalty every 2nd step on half-batches, per-example gradients still shrink."""
    from test_restriction import _mean_grad_norm, _train

    plain, ds = _train(tmp_path / "plain", 0.0)
    cheap, _ = _train(tmp_path / "cheap", 0.5, gr_every_n_steps=2, gr_sub_batch_fraction=0.5)
    assert _mean_grad_norm(cheap.model, ds) < 0.85 * _mean_grad_norm(plain.model, ds)


@pytest.mark.parametrize(
    "field,value",
    [("gr_every_n_steps", 0), ("gr_every_n_steps", 1.5), ("gr_every_n_steps", True), ("gr_sub_batch_fraction", 0.0),
     ("gr_sub_batch_fraction", 1.5), ("gr_sub_batch_fraction", float("nan")), ("gr_reuse_penalty", "yes")],
)
def test_bad_cheap_gr_fields(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        IAUConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **{field: value})


def test_sub_batch_needs_finite_difference(tmp_path):
    with pytest.raises(ValueError, match="gr_sub_batch_fraction"):
        IAUConfig(output_dir=str(tmp_path), use_cpu=True, gr_mode="exact", gr_sub_batch_fraction=0.5)
