"""Cheaper gradient restriction: penalty every n steps, reused penalty gradient, H·u on a sub-batch."""

from __future__ import annotations

import pytest
import torch
from tiny import lm_dataset, text_cls_dataset, tiny_bert, tiny_llama
from transformers import default_data_collator

from hf_iau import IAUConfig, IAUTrainer
from hf_iau.restriction import gr_exact, gr_finite_difference, gr_gradient, norm_direction
from hf_iau.restriction import split_rows as _split_rows


def _batch(ds, lo, hi):
    b = default_data_collator([ds[i] for i in range(lo, hi)])
    b.pop("id")
    return b


def _rel(a, b) -> float:
    fa = torch.cat([x.flatten() for x in a])
    fb = torch.cat([x.flatten() for x in b])
    return float((fa - fb).norm() / fb.norm())


def _model64():
    return tiny_llama(attn="eager").double().eval()


def test_sub_batch_of_whole_batch_equals_plain_finite_difference():
    model = _model64()
    params = list(model.parameters())
    b = _batch(lm_dataset(4), 0, 4)
    ref = gr_finite_difference(lambda: model(**b).loss, params, 0.01)
    out = gr_finite_difference(lambda: model(**b).loss, params, 0.01, sub_batch=(lambda: model(**b).loss, None, 1.0))
    assert _rel(out.grads, ref.grads) < 1e-12
    assert float(out.penalty) == pytest.approx(float(ref.penalty), rel=1e-12)


def test_sub_batch_keeps_the_full_gradient_and_estimates_hu_on_the_sub_batch():
    """total − α·H_S·u = ∇ℓ_B exactly; α·H_S·u matches double backward on the sub-batch with u from ∇ℓ_B."""
    model = _model64()
    params = list(model.parameters())
    ds = lm_dataset(4)
    full, sub, rest = _batch(ds, 0, 4), _batch(ds, 0, 1), _batch(ds, 1, 4)
    alpha = 0.5
    out = gr_finite_difference(
        lambda: model(**full).loss, params, alpha, radius=1e-4,
        sub_batch=(lambda: model(**sub).loss, lambda: model(**rest).loss, 0.25), keep_penalty_grads=True,
    )
    g_full = torch.autograd.grad(model(**full).loss, params)
    plain_part = [t - pg for t, pg in zip(out.grads, out.penalty_grads)]
    assert _rel(plain_part, g_full) < 1e-6  # round-off of total − penalty, amplified by α/r
    u = norm_direction(list(g_full))
    g_sub = torch.autograd.grad(model(**sub).loss, params, create_graph=True)
    hu = torch.autograd.grad(sum((g * v).sum() for g, v in zip(g_sub, u)), params)
    assert _rel(out.penalty_grads, [alpha * h for h in hu]) < 3e-3  # O(r); Llama rotary runs in float32
    assert float(out.penalty) == pytest.approx(float(torch.cat([g.flatten() for g in g_full]).norm()), rel=1e-6)  # norms in float32


@pytest.mark.parametrize("mode", ["finite_difference", "exact"])
def test_kept_penalty_gradient_is_total_minus_plain_gradient(mode):
    model = _model64()
    params = list(model.parameters())
    b = _batch(lm_dataset(4), 0, 4)
    out = gr_gradient(lambda: model(**b).loss, params, 0.1, mode, keep_penalty_grads=True)
    plain = torch.autograd.grad(model(**b).loss, params)
    assert _rel([t - pg for t, pg in zip(out.grads, out.penalty_grads)], plain) < 1e-9
    exact = gr_exact(lambda: model(**b).loss, params, 0.1)
    assert _rel(out.grads, exact.grads) < 5e-3  # FD error O(r), r = 1e-3


def test_exact_mode_rejects_a_sub_batch():
    model = _model64()
    b = _batch(lm_dataset(2), 0, 2)
    f = lambda: model(**b).loss  # noqa: E731
    with pytest.raises(ValueError, match="finite_difference"):
        gr_gradient(f, list(model.parameters()), 0.1, "exact", sub_batch=(f, f, 0.5))


def test_split_rows_weights_by_predicted_tokens():
    labels = torch.tensor([[1, 2, 3, 4], [1, 2, -100, -100], [5, 6, 7, -100], [1, -100, -100, -100]])
    inputs = {"input_ids": labels.clamp(min=0), "labels": labels, "flag": True}
    sub, rest, w = _split_rows(inputs, 0.5, causal_lm=True)
    assert sub["input_ids"].shape[0] == 2 and rest["labels"].shape[0] == 2 and sub["flag"] is True
    assert w == pytest.approx(4 / 6)  # tokens after the shift: 3 + 1 of 3 + 1 + 2 + 0
    _, _, w = _split_rows(inputs, 0.25, causal_lm=False)
    assert w == pytest.approx(0.25)
    assert _split_rows(inputs, 1.0, causal_lm=True) is None


def _trainer(tmp_path, **kw):
    ds = text_cls_dataset(8)
    args = IAUConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=4, **kw)
    trainer = IAUTrainer(tiny_bert().double(), args=args, train_dataset=ds, data_collator=default_data_collator)
    trainer.current_gradient_accumulation_steps = 1
    return trainer, [_batch(ds, 0, 4), _batch(ds, 4, 8)]


def _grads_after_step(trainer, batch):
    for p in trainer.model.parameters():
        p.grad = None
    trainer.training_step(trainer.model, dict(batch))
    return [p.grad.clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize("reuse", [False, True])
def test_every_n_steps_plain_or_reused_penalty_between(tmp_path, reuse):
    trainer, (b1, b2) = _trainer(tmp_path, gr_alpha=0.1, gr_every_n_steps=3, gr_reuse_penalty=reuse)
    model = trainer.model
    model.train()
    params = list(model.parameters())
    trainer.state.global_step = 0  # a GR step
    got = _grads_after_step(trainer, b1)
    ref = gr_finite_difference(lambda: model(**b1).loss, params, 0.1, keep_penalty_grads=True)
    assert _rel(got, ref.grads) < 1e-9
    for step in (1, 2):  # steps without a fresh penalty
        trainer.state.global_step = step
        got = _grads_after_step(trainer, b2)
        plain = torch.autograd.grad(model(**b2).loss, params)
        expected = [g + pg for g, pg in zip(plain, ref.penalty_grads)] if reuse else plain
        assert _rel(got, expected) < 1e-9
    assert (trainer._gr_state.penalty_grads is not None) == reuse


def test_sub_batch_fraction_in_training_step(tmp_path):
    trainer, (b1, _) = _trainer(tmp_path, gr_alpha=0.1, gr_sub_batch_fraction=0.5)
    model = trainer.model
    model.train()
    params = list(model.parameters())
    got = _grads_after_step(trainer, b1)
    sub = {k: v[:2] for k, v in b1.items()}
    rest = {k: v[2:] for k, v in b1.items()}
    ref = gr_finite_difference(
        lambda: model(**b1).loss, params, 0.1,
        sub_batch=(lambda: model(**sub).loss, lambda: model(**rest).loss, 0.5),
    )
    assert _rel(got, ref.grads) < 1e-9


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
