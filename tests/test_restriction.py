"""Gradient restriction: finite difference vs exact double backward, and its effect in training."""

from __future__ import annotations

import pytest
import torch
from tiny import lm_dataset, text_cls_dataset, tiny_bert, tiny_gpt2, tiny_llama
from transformers import default_data_collator

from hf_iau import IAUConfig, IAUTrainer
from hf_iau.restriction import gr_exact, gr_finite_difference, gradient_norm


def _loss_fn(model, batch):
    return lambda: model(**batch).loss


def _rel(a, b) -> float:
    fa = torch.cat([x.flatten() for x in a])
    fb = torch.cat([x.flatten() for x in b])
    return float((fa - fb).norm() / fb.norm())


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("norm", ["global", "per_tensor"])
def test_finite_difference_matches_exact(make_model, attn, norm):
    """FD GR gradient equals the exact one within a few 1e-2 relative; its H·u error shrinks like O(r)."""
    ds = lm_dataset(4)
    batch = default_data_collator([ds[i] for i in range(4)])
    batch.pop("id")
    model = make_model(attn=attn).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    exact = gr_exact(_loss_fn(model, batch), params, 0.005, norm)
    before = [p.detach().clone() for p in params]
    fd = gr_finite_difference(_loss_fn(model, batch), params, 0.005, norm, radius=1e-3)
    assert all(torch.allclose(p, q, atol=1e-6, rtol=0) for p, q in zip(params, before))  # weights restored
    assert _rel(fd.grads, exact.grads) < 3e-2
    assert torch.isclose(fd.penalty, exact.penalty, rtol=1e-4)

    # The penalty part alone, α = 1, float64: H·u by finite difference vs double backward.
    model = model.double()
    params = [p for p in model.parameters() if p.requires_grad]
    plain = torch.autograd.grad(model(**batch).loss, params)
    hu_exact = [e - g for e, g in zip(gr_exact(_loss_fn(model, batch), params, 1.0, norm).grads, plain)]
    errors = []
    for radius in (1e-3, 1e-4):
        fd = gr_finite_difference(_loss_fn(model, batch), params, 1.0, norm, radius=radius)
        errors.append(_rel([a - g for a, g in zip(fd.grads, plain)], hu_exact))
    assert errors[0] < 0.1 and errors[1] < 1e-2 and errors[1] < errors[0] / 3, errors


def test_exact_gr_on_fused_sdpa_needs_math_backend():
    """Double backward through SDPA's fused CPU kernel fails; gr_exact runs it under the MATH backend."""
    model = tiny_llama(attn="sdpa").eval()
    ds = lm_dataset(2)
    batch = default_data_collator([ds[i] for i in range(2)])
    batch.pop("id")
    params = [p for p in model.parameters() if p.requires_grad]
    out = gr_exact(_loss_fn(model, batch), params, 0.01)
    assert all(torch.isfinite(g).all() for g in out.grads)


def test_per_tensor_norm_is_sum_of_tensor_norms():
    gs = [torch.tensor([3.0, 4.0]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])]
    assert float(gradient_norm(gs, "per_tensor")) == pytest.approx(6.0)
    assert float(gradient_norm(gs, "global")) == pytest.approx(26**0.5)


def _mean_grad_norm(model, ds) -> float:
    """Mean per-example gradient norm ‖∇θ ℓ(z)‖ over ``ds``."""
    model.eval()
    norms = []
    for i in range(len(ds)):
        batch = default_data_collator([ds[i]])
        batch.pop("id")
        grads = torch.autograd.grad(model(**batch).loss, [p for p in model.parameters() if p.requires_grad])
        norms.append(float(gradient_norm(grads)))
    return sum(norms) / len(norms)


def _train(tmp_path, alpha, mode="finite_difference", **kw):
    ds = text_cls_dataset(32)
    args = IAUConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
        num_train_epochs=15, learning_rate=3e-3, per_device_train_batch_size=8, seed=0, gr_alpha=alpha, gr_mode=mode,
        **{"logging_steps": 5, **kw},
    )
    trainer = IAUTrainer(tiny_bert(), args=args, train_dataset=ds, data_collator=default_data_collator)
    trainer.train()
    return trainer, ds


def test_gr_lowers_per_example_gradient_norm(tmp_path):
    plain, ds = _train(tmp_path / "plain", 0.0)
    restricted, _ = _train(tmp_path / "gr", 0.5)
    g_plain = _mean_grad_norm(plain.model, ds)
    g_gr = _mean_grad_norm(restricted.model, ds)
    assert g_gr < 0.8 * g_plain, (g_gr, g_plain)
    logs = [h for h in restricted.state.log_history if "gr_penalty" in h]
    assert logs and all(h["gr_penalty"] > 0 for h in logs)


def test_gr_under_gradient_accumulation_sums_micro_batch_gradients(tmp_path):
    """With GA=2, .grad after two micro-batches = mean of the two micro-batch GR gradients."""
    ds = text_cls_dataset(8)
    args = IAUConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], gr_alpha=0.1, gradient_accumulation_steps=2,
        per_device_train_batch_size=4,
    )
    trainer = IAUTrainer(tiny_bert().double(), args=args, train_dataset=ds, data_collator=default_data_collator)
    trainer.current_gradient_accumulation_steps = 2
    model = trainer.model
    params = [p for p in model.parameters() if p.requires_grad]
    batches = []
    for lo in (0, 4):
        b = default_data_collator([ds[i] for i in range(lo, lo + 4)])
        b.pop("id")
        batches.append(b)
    expected = [torch.zeros_like(p) for p in params]
    model.train()
    for b in batches:
        out = gr_finite_difference(_loss_fn(model, b), params, 0.1, "global", 1e-3)
        expected = [e + g / 2 for e, g in zip(expected, out.grads)]
    for b in batches:
        trainer.training_step(model, dict(b))
    assert _rel([p.grad for p in params], expected) < 1e-9


def test_gr_with_bf16_autocast_keeps_fp32_weights(tmp_path):
    trainer, _ = _train(tmp_path, 0.005, bf16=True, max_steps=3, logging_steps=1)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_exact_mode_trains_on_sdpa_and_eager(tmp_path):
    for attn in ("sdpa", "eager"):
        ds = lm_dataset(8)
        args = IAUConfig(
            output_dir=str(tmp_path / attn), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
            gr_alpha=0.005, gr_mode="exact", max_steps=2, per_device_train_batch_size=4, logging_steps=1,
        )
        trainer = IAUTrainer(tiny_llama(attn=attn), args=args, train_dataset=ds, data_collator=default_data_collator)
        before = [p.detach().clone() for p in trainer.model.parameters()]
        trainer.train()
        assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_exact_mode_rejects_attention_without_double_backward(tmp_path):
    model = tiny_llama()
    model.config._attn_implementation = "flash_attention_2"
    args = IAUConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], gr_alpha=0.005, gr_mode="exact")
    with pytest.raises(ValueError, match="attn_implementation"):
        IAUTrainer(model, args=args)
    args = IAUConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], gr_alpha=0.005)
    IAUTrainer(model, args=args)  # finite difference accepts any kernel
