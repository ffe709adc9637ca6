"""Fisher forgetting (Golatkar et al. 2020, "Eternal Sunshine of the Spotless Net"), simplified.

    θ ← θ + σ ⊙ ξ,   σ_j = sqrt(α · min(1 / (F_j + ε), v_max)),   ξ ~ N(0, I)

with F the empirical diagonal Fisher of the retain set (or a seeded sample S of it):
F_j = Σ_{i∈S} (∂ℓ_i/∂θ_j)² / N_S, ℓ_i the summed loss of example i and N_S the true count
(tokens for causal LMs; for classifiers F is the mean squared per-example gradient). Noise is
large where the retained data do not pin the weights (small F) — directions that mostly encode
the forget set — and small where they do. Simplifications against the paper: the empirical (not
expected) Fisher, a per-coordinate variance (not averaged per output row), no class-specific
handling of the head. ξ is seeded by (seed, request): the same on every process. ``alpha``,
``max_variance`` (the authors clamp at 1e3) and ``eps`` are options.

Cost: one gradient pass per Fisher example (per-example gradients); under a budget the sample
is cut to ⌊budget⌋ examples.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from datasets import Dataset

from ..losses import batch_losses
from ..lifecycle import retain_sample
from ..result import UnlearningResult
from . import register_method
from ._request import Request

if TYPE_CHECKING:
    from ..trainer import IAUTrainer


def diagonal_fisher(req: Request, idx: list[int]) -> list[torch.Tensor]:
    """F = Σ_{i∈idx} (∇ℓ_i)² / N over the retain set, from per-example gradients (summed over processes)."""
    req.engine.refuse_sharded("fisher")
    fisher = [torch.zeros_like(p) for p in req.params]
    total = req.count(req.retain, idx)
    unscale = 1.0 / req.engine.grad_scale() ** 2
    for i in req.engine.shard(idx):
        req.engine.zero_grad()
        batch = req.engine.collate(req.retain, [i])
        with req.engine.autocast():
            bl = batch_losses(req.model, batch, req.kind)
        req._check_finite(bl.loss_sum)
        req.engine.backward(bl.loss_sum.sum())
        for f, p in zip(fisher, req.params):
            f.add_(p.grad.detach().pow(2), alpha=unscale)
    req.engine.clear_grad()
    req.engine.sum_(fisher)
    req.grad_passes += float(len(idx))
    return [f / total for f in fisher]


def noise_scale(fisher: list[torch.Tensor], alpha: float, max_variance: float, eps: float) -> list[torch.Tensor]:
    """σ = sqrt(α · min(1/(F + ε), v_max))."""
    return [(alpha * (1.0 / (f + eps)).clamp(max=max_variance)).sqrt() for f in fisher]


@register_method("fisher")
def fisher(
    trainer: "IAUTrainer",
    forget_dataset: Dataset,
    retain_dataset: Dataset | None = None,
    budget: float | None = None,
    *,
    alpha: float = 1e-6,
    max_variance: float = 1e3,
    eps: float = 1e-8,
    fisher_sample_size: int | None = None,
) -> UnlearningResult:
    """Add Gaussian noise with variance α·min(F⁻¹, v_max) (diagonal Fisher F of the retain set)."""
    if not (alpha > 0 and max_variance > 0 and eps > 0 and math.isfinite(alpha)):
        raise ValueError("fisher: use alpha > 0, max_variance > 0 and eps > 0.")
    if fisher_sample_size is not None and fisher_sample_size < 1:
        raise ValueError("fisher: use fisher_sample_size=None (whole retain set) or an integer >= 1.")
    req = Request("fisher", trainer, forget_dataset, retain_dataset, budget)
    n_r = len(req.retain)
    if n_r == 0:
        raise ValueError("fisher needs retained data (the Fisher is that of the retain set).")
    size = fisher_sample_size if fisher_sample_size is not None else n_r
    if budget is not None:
        size = min(size, int(budget))
    req.need(1, "one per-example gradient for the Fisher")
    idx = retain_sample(n_r, size, req.seed, req.request_index, 2)
    req.begin()
    try:
        sigma = noise_scale(diagonal_fisher(req, idx), alpha, max_variance, eps)
        gen = torch.Generator().manual_seed(int(req.rng(2).integers(2**62)))
        with torch.no_grad():
            for p, s in zip(req.params, sigma):
                xi = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(device=p.device, dtype=p.dtype)
                p.add_(s.to(p.dtype) * xi)
        n_params = sum(s.numel() for s in sigma)
        metrics = {
            "alpha": alpha,
            "fisher_examples": float(len(idx)),
            "noise_std_mean": sum(float(s.double().sum()) for s in sigma) / max(n_params, 1),
        }
        config = {
            "alpha": alpha, "max_variance": max_variance, "eps": eps, "fisher_sample_size": fisher_sample_size,
            "seed": req.seed, "budget": budget,
        }
        return req.finish(config, metrics)
    except BaseException:
        req.restore()
        raise
