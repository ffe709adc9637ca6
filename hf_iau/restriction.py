"""Gradient restriction (GR): the gradient of ℓ_GR(θ) = ℓ(θ) + α·‖∇θ ℓ(θ)‖.

With g = ∇ℓ and u = ∂‖g‖/∂g (u = g/‖g‖ for the global norm; blockwise gₜ/‖gₜ‖ for the sum of
per-tensor norms), ∇ℓ_GR = g + α·H·u. Two ways to get H·u:

* exact: double backward through autograd (``create_graph=True``);
* finite difference: H·u ≈ (∇ℓ(θ + r·u) − ∇ℓ(θ)) / r — two ordinary forward/backward passes,
  so it works with fused attention kernels that have no double backward.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

LossFn = Callable[[], torch.Tensor]


@dataclass
class GRGradient:
    """Gradient of the GR objective, with the plain loss and the penalty ‖∇ℓ‖ for logging."""

    grads: list[torch.Tensor]
    loss: torch.Tensor
    penalty: torch.Tensor


def _grad(loss: torch.Tensor, params: Sequence[torch.Tensor], create_graph: bool = False) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def gradient_norm(grads: Sequence[torch.Tensor], norm: str = "global") -> torch.Tensor:
    """‖g‖₂ over all tensors (``"global"``) or Σₜ‖gₜ‖₂ (``"per_tensor"``), differentiable."""
    norms = torch.stack([g.float().pow(2).sum().sqrt() for g in grads])
    if norm == "per_tensor":
        return norms.sum()
    return norms.pow(2).sum().sqrt()


def norm_direction(grads: Sequence[torch.Tensor], norm: str = "global") -> list[torch.Tensor]:
    """u = ∂‖g‖/∂g: g/‖g‖ (global) or gₜ/‖gₜ‖ per tensor (per_tensor); zero where g is zero."""
    if norm == "per_tensor":
        out = []
        for g in grads:
            n = g.float().norm()
            out.append(g / n if n > 0 else torch.zeros_like(g))
        return out
    total = gradient_norm(grads, "global")
    if total == 0:
        return [torch.zeros_like(g) for g in grads]
    return [g / total for g in grads]


def math_sdpa() -> contextlib.AbstractContextManager:
    """Context that forces PyTorch SDPA onto its MATH backend (which supports double backward)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # pragma: no cover - old torch
        return contextlib.nullcontext()


def gr_exact(loss_fn: LossFn, params: Sequence[torch.Tensor], alpha: float, norm: str = "global") -> GRGradient:
    """∇(ℓ + α‖∇ℓ‖) by double backward (fused SDPA kernels are avoided via the MATH backend)."""
    with math_sdpa():
        loss = loss_fn()
        grads = _grad(loss, params, create_graph=True)
        penalty = gradient_norm(grads, norm)
        total = _grad(loss + alpha * penalty, params)
    return GRGradient(total, loss.detach(), penalty.detach())


def gr_finite_difference(
    loss_fn: LossFn, params: Sequence[torch.Tensor], alpha: float, norm: str = "global", radius: float = 1e-3
) -> GRGradient:
    """g + α·(∇ℓ(θ + r·u) − g)/r, with the weights restored after the second pass."""
    loss = loss_fn()
    g1 = _grad(loss, params)
    penalty = gradient_norm(g1, norm)
    u = norm_direction(g1, norm)
    with torch.no_grad():
        for p, d in zip(params, u):
            p.add_(d.to(p.dtype), alpha=radius)
    try:
        g2 = _grad(loss_fn(), params)
    finally:
        with torch.no_grad():
            for p, d in zip(params, u):
                p.sub_(d.to(p.dtype), alpha=radius)
    scale = alpha / radius
    total = [a + scale * (b - a) for a, b in zip(g1, g2)]
    return GRGradient(total, loss.detach(), penalty.detach())


def gr_gradient(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    alpha: float,
    mode: str = "finite_difference",
    norm: str = "global",
    radius: float = 1e-3,
) -> GRGradient:
    """Dispatch to :func:`gr_exact` or :func:`gr_finite_difference`."""
    if mode == "exact":
        return gr_exact(loss_fn, params, alpha, norm)
    return gr_finite_difference(loss_fn, params, alpha, norm, radius)
