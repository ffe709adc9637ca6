"""Gradient restriction: finite difference vs exact double backward, and its effect in training."""

from __future__ import annotations

import pytest
import torch
from tiny import lm_dataset, text_cls_dataset, tiny_bert, tiny_gpt2, tiny_llama
from transformers import default_data_collator

from hf_iau import IAUConfig, IAUTrainer
from hf_iau.restriction import direction_scales, math_sdpa, norm_value


def _batch(ds, lo, hi):
    b = default_data_collator([ds[i] for i in range(lo, hi)])
    b.pop("id")
    return b


def _rel(a, b) -> float:
    fa = torch.cat([x.flatten().double() for x in a])
    fb = torch.cat([x.flatten().double() for x in b])
    return float((fa - fb).norm() / fb.norm())


def exact_gr(model, batch, alpha, norm="global"):
    """Reference ∇(ℓ + α‖∇ℓ‖) by double backward, independent of hf_iau: (total, plain ∇ℓ, α·H·u, ‖∇ℓ‖)."""
    params = [p for p in model.parameters() if p.requires_grad]
    with math_sdpa():
        loss = model(**batch).loss
        g = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        g = [torch.zeros_like(p) if x is None else x for p, x in zip(params, g)]
        squares = torch.stack([x.double().pow(2).sum() for x in g])
        tiny = torch.finfo(torch.float32).tiny  # zero-safe √ (a zero tensor: LoRA B = 0)
        penalty = squares.clamp_min(tiny).sqrt().sum() if norm == "per_tensor" else squares.sum().clamp_min(tiny).sqrt()
        hu = torch.autograd.grad(alpha * penalty, params, retain_graph=True, allow_unused=True)
    hu = [torch.zeros_like(p) if x is None else x for p, x in zip(params, hu)]
    plain = [x.detach() for x in g]
    return [a + b for a, b in zip(plain, hu)], plain, hu, float(penalty.detach())


def gr_trainer(tmp_path, model, **kw):
    """An IAUTrainer whose ``training_step`` is called directly (one micro-batch per optimizer step)."""
    args = IAUConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=4, **kw)
    trainer = IAUTrainer(model, args=args)
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def step_grads(trainer, batch, seed=None):
    """``.grad`` after one ``IAUTrainer.training_step`` from zero gradients."""
    for p in trainer.model.parameters():
        p.grad = None
    if seed is not None:
        torch.manual_seed(seed)
    trainer.training_step(trainer.model, dict(batch))
    return [p.grad.detach().clone() for p in trainer.model.parameters() if p.requires_grad]


def _no_dropout_gpt2(attn):
    return tiny_gpt2(attn=attn, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


@pytest.mark.parametrize("make_model", [tiny_llama, _no_dropout_gpt2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("norm", ["global", "per_tensor"])
def test_finite_difference_matches_exact(tmp_path, make_model, attn, norm):
    """The FD GR step equals the exact GR gradient within a few 1e-2 relative, restores the weights, logs ‖∇ℓ‖;
    its H·u error shrinks like O(r); the exact GR step equals the double-backward reference."""
    batch = _batch(lm_dataset(4), 0, 4)
    trainer = gr_trainer(tmp_path, make_model(attn=attn), gr_alpha=0.005, gr_norm=norm)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    fd = step_grads(trainer, batch)
    assert all(torch.allclose(p, q, atol=1e-6, rtol=0) for p, q in zip(trainer.model.parameters(), before))  # restored
    exact, _, _, penalty = exact_gr(trainer.model, batch, 0.005, norm)
    assert _rel(fd, exact) < 3e-2
    assert trainer.gradient_restriction.pop_logs()["gr_penalty"] == pytest.approx(penalty, rel=1e-4)
    assert trainer.gradient_restriction.pop_logs() == {}

    # The penalty part alone, α = 1, float64: H·u by finite difference vs double backward; the exact step.
    model = make_model(attn=attn).double()
    total, plain, hu_exact, _ = exact_gr(model, batch, 1.0, norm)
    errors = []
    for radius in (1e-3, 1e-4):
        fd = step_grads(gr_trainer(tmp_path, model, gr_alpha=1.0, gr_norm=norm, gr_fd_radius=radius), batch)
        errors.append(_rel([a - g for a, g in zip(fd, plain)], hu_exact))
    assert errors[0] < 0.1 and errors[1] < 1e-2 and errors[1] < errors[0] / 3, errors
    exact_step = step_grads(gr_trainer(tmp_path, model, gr_alpha=1.0, gr_norm=norm, gr_mode="exact"), batch)
    assert _rel(exact_step, total) < 1e-6  # Llama rotary runs in float32


def test_exact_gr_on_fused_sdpa_runs_on_the_math_backend(tmp_path):
    """Double backward through SDPA's fused CPU kernel fails; the exact step runs it under the MATH backend
    and gives the gradient of the same model with eager attention."""
    batch = _batch(lm_dataset(2), 0, 2)
    got = step_grads(gr_trainer(tmp_path, tiny_llama(attn="sdpa"), gr_alpha=0.01, gr_mode="exact"), batch)
    eager = step_grads(gr_trainer(tmp_path, tiny_llama(attn="eager"), gr_alpha=0.01, gr_mode="exact"), batch)
    assert all(torch.isfinite(g).all() for g in got)
    assert _rel(got, eager) < 1e-5


def test_norms_and_directions_from_per_tensor_norms():
    assert norm_value([5.0, 1.0], "per_tensor") == pytest.approx(6.0)
    assert norm_value([5.0, 1.0], "global") == pytest.approx(26**0.5)
    assert direction_scales([5.0, 0.0], "per_tensor", 2.0) == [0.4, 0.0]  # zero tensor: no direction
    assert direction_scales([3.0, 4.0], "global", 2.0) == [0.4, 0.4]
    assert direction_scales([0.0, 0.0], "global", 2.0) == [0.0, 0.0]


def _mean_grad_norm(model, ds) -> float:
    """Mean per-example gradient norm ‖∇θ ℓ(z)‖ over ``ds``."""
    model.eval()
    norms = []
    for i in range(len(ds)):
        batch = default_data_collator([ds[i]])
        batch.pop("id")
        grads = torch.autograd.grad(model(**batch).loss, [p for p in model.parameters() if p.requires_grad])
        norms.append(float(torch.cat([g.flatten() for g in grads]).norm()))
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
    """With GA=2, .grad after two micro-batches = mean of the two micro-batch GR gradients (each GR step
    subtracts the gradient already in .grad before it takes its direction)."""
    ds = text_cls_dataset(8)
    batches = [_batch(ds, 0, 4), _batch(ds, 4, 8)]
    trainer = gr_trainer(tmp_path, tiny_bert().double(), gr_alpha=0.1)
    alone = [step_grads(trainer, b) for b in batches]
    expected = [(a + b) / 2 for a, b in zip(*alone)]
    trainer.current_gradient_accumulation_steps = 2
    for p in trainer.model.parameters():
        p.grad = None
    for b in batches:
        trainer.training_step(trainer.model, dict(b))
    assert _rel([p.grad for p in trainer.model.parameters()], expected) < 1e-9
    assert _rel(expected, [(a + b) / 2 for a, b in zip(exact_gr(trainer.model, batches[0], 0.1)[0],
                                                       exact_gr(trainer.model, batches[1], 0.1)[0])]) < 5e-3


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
