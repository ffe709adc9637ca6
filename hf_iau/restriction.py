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
    penalty_grads: list[torch.Tensor] | None = None  # α·H·u alone, when asked for (reuse on later steps)


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


def _direction_scales(grads: Sequence[torch.Tensor], norm: str, radius: float) -> list[float]:
    """Per-tensor c_t with r·u_t = c_t·g_t (u = ∂‖g‖/∂g): r/‖g‖ (global) or r/‖g_t‖ (per_tensor), 0 where g is 0."""
    norms = [float(g.float().norm()) for g in grads]
    if norm == "per_tensor":
        return [radius / n if n > 0 else 0.0 for n in norms]
    total = sum(n * n for n in norms) ** 0.5
    return [radius / total if total > 0 else 0.0 for _ in norms]


def gr_finite_difference(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    alpha: float,
    norm: str = "global",
    radius: float = 1e-3,
    *,
    sub_batch: tuple[LossFn, LossFn, float] | None = None,
    keep_penalty_grads: bool = False,
) -> GRGradient:
    """g + α·(∇ℓ(θ + r·u) − g)/r, with the weights restored after the second pass.

    Memory: two gradient-sized buffers (g and the perturbed gradient, combined in place); the
    direction u is never stored (the weights move by c_t·g_t).

    ``sub_batch=(sub_fn, rest_fn, w)``: the batch loss is ℓ = w·ℓ_S + (1 − w)·ℓ_R (S a sub-batch,
    R the rest, w its share of the loss count). g is computed from the two parts (one pass over
    the batch in two pieces) and H·u is estimated on S alone: H_S·u ≈ (∇ℓ_S(θ + r·u) − ∇ℓ_S(θ))/r,
    so the step costs 1 + w forward/backward passes instead of 2 (and one more gradient buffer).
    ``rest_fn`` is not called when w == 1. ``keep_penalty_grads`` also returns α·H·u (for reuse
    on later steps) at the cost of one more buffer.
    """
    scale = alpha / radius
    if sub_batch is None:
        loss = loss_fn()
        g1 = _grad(loss, params)
        g1_sub, total_loss = g1, loss.detach()
    else:
        sub_fn, rest_fn, w = sub_batch
        loss_s = sub_fn()
        g1_sub = _grad(loss_s, params)
        if w < 1.0:
            loss_r = rest_fn()
            g1 = _grad(loss_r, params)
            with torch.no_grad():
                for a, b in zip(g1_sub, g1):
                    b.mul_(1.0 - w).add_(a, alpha=w)
            total_loss = (w * loss_s + (1.0 - w) * loss_r).detach()
        else:
            g1, total_loss = g1_sub, loss_s.detach()
        loss_fn = sub_fn
    penalty = gradient_norm(g1, norm).detach()
    coef = _direction_scales(g1, norm, radius)
    with torch.no_grad():
        for p, g, c in zip(params, g1, coef):
            if c:
                p.add_(g.to(p.dtype), alpha=c)
    try:
        g2 = _grad(loss_fn(), params)
    finally:
        with torch.no_grad():
            for p, g, c in zip(params, g1, coef):
                if c:
                    p.sub_(g.to(p.dtype), alpha=c)
    penalty_grads = None
    with torch.no_grad():
        for a, b in zip(g1_sub, g2):
            b.sub_(a).mul_(scale)  # g2 now holds α·H·u
        if keep_penalty_grads:
            penalty_grads = [b.clone() for b in g2]
        for a, b in zip(g1, g2):
            b.add_(a)
    return GRGradient(g2, total_loss, penalty, penalty_grads)


def gr_gradient(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    alpha: float,
    mode: str = "finite_difference",
    norm: str = "global",
    radius: float = 1e-3,
    *,
    sub_batch: tuple[LossFn, LossFn, float] | None = None,
    keep_penalty_grads: bool = False,
) -> GRGradient:
    """Dispatch to :func:`gr_exact` or :func:`gr_finite_difference` (``sub_batch``: finite difference only)."""
    if mode == "exact":
        if sub_batch is not None:
            raise ValueError("a GR sub-batch needs gr_mode='finite_difference'.")
        out = gr_exact(loss_fn, params, alpha, norm)
        if keep_penalty_grads:
            # exact mode gives ∇ℓ + α·H·u in one piece: recover α·H·u with one more plain pass.
            plain = _grad(loss_fn(), params)
            out.penalty_grads = [t - g for t, g in zip(out.grads, plain)]
        return out
    return gr_finite_difference(
        loss_fn, params, alpha, norm, radius, sub_batch=sub_batch, keep_penalty_grads=keep_penalty_grads
    )
