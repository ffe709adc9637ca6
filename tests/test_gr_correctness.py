"""GR in the Trainer step: same dropout masks in both passes, BatchNorm statistics updated once, a
zero-safe norm for exact GR (LoRA B = 0), bf16 autocast accuracy, fp16 and multi-process refusals."""

from __future__ import annotations

import pytest
import torch
from test_restriction import exact_gr
from test_restriction import gr_trainer as _trainer
from test_restriction import step_grads as _step_grads
from tiny import image_dataset, lm_dataset, tiny_gpt2, tiny_llama
from transformers import ResNetConfig, ResNetForImageClassification, default_data_collator

from hf_iau import IAUConfig, IAUTrainer
from hf_iau.restriction import direction_scales, math_sdpa


def _batch(ds, n):
    b = default_data_collator([ds[i] for i in range(n)])
    b.pop("id")
    return b


def _flat(xs) -> torch.Tensor:
    return torch.cat([x.flatten().double() for x in xs])


def _rel(a, b) -> float:
    return float((_flat(a) - _flat(b)).norm() / _flat(b).norm())


def test_dropout_finite_difference_matches_exact_with_the_same_mask(tmp_path):
    """GPT-2 with its default dropout 0.1, train mode: the FD GR gradient of the Trainer step equals the
    exact GR gradient computed with the same dropout mask (same seed) within 3%."""
    alpha = 0.2  # the penalty part α·H·u is about half of ‖g‖ here, so its error is visible in the total
    model = tiny_gpt2(attn="eager").double()
    assert model.config.resid_pdrop == model.config.attn_pdrop == 0.1
    batch = _batch(lm_dataset(4), 4)
    trainer = _trainer(tmp_path, model, gr_alpha=alpha)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.model.train()
    torch.manual_seed(7)
    exact, _, _, _ = exact_gr(trainer.model, batch, alpha)
    torch.manual_seed(7)
    plain = torch.autograd.grad(trainer.model(**batch).loss, params)
    fd = _step_grads(trainer, batch, seed=7)
    hu_exact = [e - g for e, g in zip(exact, plain)]
    assert _rel(hu_exact, plain) > 0.3  # the penalty part matters
    assert _rel(fd, exact) < 0.03
    assert _rel([f - g for f, g in zip(fd, plain)], hu_exact) < 0.1
    # negative control: the perturbed pass under another dropout mask (what the step did before) is noise
    r = 1e-3
    n = _flat(plain).norm()
    with torch.no_grad():
        for p, g in zip(params, plain):
            p.add_(g, alpha=r / float(n))
    torch.manual_seed(8)
    shifted = torch.autograd.grad(trainer.model(**batch).loss, params)
    with torch.no_grad():
        for p, g in zip(params, plain):
            p.sub_(g, alpha=r / float(n))
    assert _rel([(a - b) / r for a, b in zip(shifted, plain)], [h / alpha for h in hu_exact]) > 10

def _resnet():
    torch.manual_seed(0)
    cfg = ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8], depths=[1], layer_type="basic", num_labels=3)
    return ResNetForImageClassification(cfg)


@pytest.mark.parametrize("unlabelled", [False, True], ids=["labels", "no-labels"])
def test_batchnorm_running_stats_updated_once_per_gr_step(tmp_path, unlabelled):
    """Also when the micro-batch has no label (no GR direction; the step still runs its synced pass)."""
    batch = _batch(image_dataset(8), 8)
    if unlabelled:
        batch["labels"] = torch.full_like(batch["labels"], -100)
    stats = {}
    for name, alpha in (("plain", 0.0), ("gr", 0.05)):
        trainer = _trainer(tmp_path / name, _resnet(), gr_alpha=alpha)
        _step_grads(trainer, batch)
        stats[name] = {k: v.clone() for k, v in trainer.model.state_dict().items()
                       if "running" in k or "num_batches_tracked" in k}
    assert stats["plain"] and set(stats["plain"]) == set(stats["gr"])
    assert all(int(v) == 1 for k, v in stats["gr"].items() if "num_batches_tracked" in k)
    for k in stats["plain"]:
        assert torch.equal(stats["plain"][k], stats["gr"][k]), k
    fresh = _resnet().state_dict()
    assert any(not torch.equal(fresh[k], stats["gr"][k]) for k in stats["gr"] if "running_mean" in k)


@pytest.mark.parametrize("norm", ["global", "per_tensor"])
def test_exact_gr_with_default_lora_config_is_finite(tmp_path, norm):
    """A default LoraConfig starts with B = 0: zero gradient tensors (lora_A), whose u = g/‖g‖ would be NaN;
    the step equals the zero-safe double-backward reference."""
    from peft import LoraConfig

    assert direction_scales([0.0, 2.0], "per_tensor", 1.0) == [0.0, 0.5]
    args = IAUConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], gr_alpha=0.005, gr_mode="exact", gr_norm=norm)
    trainer = IAUTrainer(tiny_llama(attn="eager"), args=args, peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer.current_gradient_accumulation_steps = 1
    batch = _batch(lm_dataset(4), 4)
    grads = _step_grads(trainer, batch)
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert all(torch.isfinite(g).all() for g in grads)
    assert any("lora_B" in n and g.abs().sum() > 0 for n, g in zip(names, grads))
    assert _rel(grads, exact_gr(trainer.model, batch, 0.005, norm)[0]) < 1e-5


@pytest.mark.parametrize("make", [lambda: tiny_llama(0, "sdpa"), lambda: tiny_llama(1, "eager")], ids=["llama0", "llama1"])
def test_bf16_autocast_finite_difference_hu_within_10_percent(tmp_path, make, monkeypatch):
    """H·u from the bf16 Trainer step (central difference, calibrated radius) vs float32 double backward."""
    batch = _batch(lm_dataset(4, seed=1), 4)
    ref = make().eval()
    params = list(ref.parameters())
    with math_sdpa():
        g = torch.autograd.grad(ref(**batch).loss, params, create_graph=True)
        n = _flat(g).norm().float().detach()
        hu = torch.autograd.grad(sum((x * (x.detach() / n)).sum() for x in g), params)
    trainer = _trainer(tmp_path, make(), bf16=True, gr_alpha=1.0, gr_every_n_steps=2, gr_reuse_penalty=True)
    trainer.accelerator.prepare_model(trainer.model)  # bf16 autocast around forward, as in train()
    for _ in range(2):  # the 1st step calibrates the radius, the 2nd uses the stored length scale
        _step_grads(trainer, batch)
        assert _rel(trainer.gradient_restriction.penalty_grads, hu) < 0.1
    assert len(trainer.gradient_restriction.radii) == 1 and trainer.gradient_restriction.radii[0] > 1e-2
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    # the old rule (forward difference, r = 1e-3) under bf16 is noise: the test can fail
    trainer.args.gr_fd_radius = 1e-3
    trainer.gradient_restriction.length = None
    from hf_iau import restriction

    monkeypatch.setattr(restriction, "_CALIBRATION_PASSES", 0)
    _step_grads(trainer, batch)
    assert _rel(trainer.gradient_restriction.penalty_grads, hu) > 0.3


def test_fp16_with_gr_is_refused_with_the_fix(tmp_path):
    args = IAUConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], fp16=True, gr_alpha=0.005)
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"fp16=True.*bf16=True.*gr_alpha=0"):
        IAUTrainer(model, args=args)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_exact_gr_on_several_processes_is_refused(tmp_path, monkeypatch):
    args = IAUConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], gr_alpha=0.005, gr_mode="exact")
    monkeypatch.setattr(type(args), "world_size", property(lambda self: 2))
    with pytest.raises(ValueError, match="gr_mode='finite_difference'"):
        IAUTrainer(tiny_llama(attn="eager"), args=args)


def test_gr_step_restores_low_precision_weights_exactly(tmp_path):
    """bf16 weights: θ + r·u − r·u would round; the step restores a copy (central difference, no autocast)."""
    trainer = _trainer(tmp_path, tiny_llama().to(torch.bfloat16), gr_alpha=0.1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    grads = _step_grads(trainer, _batch(lm_dataset(4), 4))
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert all(torch.isfinite(g.float()).all() for g in grads)
    assert len(trainer.gradient_restriction.radii) >= 2  # central difference, radius calibrated on the first step
    assert IAUConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[]).mixed_precision == "no"
