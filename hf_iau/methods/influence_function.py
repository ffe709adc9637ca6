r"""Influence-function unlearning: one Newton step on the retain objective, solved by CG.

Derivation. Let N_r, N_f be the true counts (tokens for causal LMs, else examples) of D_r, D_f,
ℓ(z, θ) the summed loss of example z, L_r(θ) = (1/N_r)·Σ_{z∈D_r} ℓ(z, θ) the mean retain loss and
H = ∇²L_r(θ*). The trained θ* minimises the mean loss over D = D_r ∪ D_f, so

    N_r·∇L_r(θ*) + Σ_{z∈D_f} ∇ℓ(z, θ*) = 0.

One Newton step on L_r from θ* — exact when the loss is quadratic — therefore gives

    θ_r ≈ θ* − H⁻¹·∇L_r(θ*) = θ* + (1/N_r)·H⁻¹·Σ_{z∈D_f} ∇ℓ(z, θ*)
                            = θ* + (N_f/N_r)·H⁻¹·∇ mean_{D_f} ℓ(θ*),

the first-order influence of removing D_f (Koh & Liang 2017, with n = N_r and the Hessian of
the retain objective): a *plus* sign, ascent on the forget loss preconditioned by H⁻¹.

Computation. (H + λI)·x = b with b = (N_f/N_r)·∇ mean_{D_f} ℓ is solved by conjugate gradient
from x = 0 (damping λ keeps the system positive definite on non-convex models). H·v is a
Hessian-vector product by double backward, ∇(∇L_S · v), under SDPA's MATH backend, with L_S the
mean loss over the retain set (or a seeded sample S of it, ``hessian_sample_size``). CG stops at
relative residual ``tol``, after ``max_iterations``, on non-positive curvature, or when the budget
cannot pay the next product. Cost: |D_f| gradient passes + 2·|S| per Hessian-vector product.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch
from datasets import Dataset

from ..losses import batch_losses
from ..restriction import math_sdpa
from ..lifecycle import retain_sample
from ..result import UnlearningResult
from . import register_method
from ._request import Request

if TYPE_CHECKING:
    from ..trainer import IAUTrainer

Vec = list[torch.Tensor]


def _dot(a: Vec, b: Vec) -> float:
    return sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b))


def _axpy(alpha: float, x: Vec, y: Vec) -> Vec:
    return [yi + alpha * xi for xi, yi in zip(x, y)]


def hessian_vector_product(req: Request, idx: list[int]) -> Callable[[Vec], Vec]:
    """v ↦ ∇²(mean loss over ``idx`` of the retain set)·v, summed over processes."""
    req.engine.refuse_sharded("influence_function")
    total = req.count(req.retain, idx)

    def hvp(v: Vec) -> Vec:
        out = [torch.zeros_like(p) for p in req.params]
        with math_sdpa():
            for batch, _ in req.batches(req.retain, idx):
                with req.trainer.autocast_smart_context_manager():
                    bl = batch_losses(req.model, batch, req.kind)
                req._check_finite(bl.loss_sum)
                grads = torch.autograd.grad(bl.loss_sum.sum() / total, req.params, create_graph=True, allow_unused=True)
                pairs = [(g, vi) for g, vi in zip(grads, v) if g is not None]
                dot = sum((g * vi.to(g.dtype)).sum() for g, vi in pairs)
                hv = torch.autograd.grad(dot, req.params, allow_unused=True)
                for o, h in zip(out, hv):
                    if h is not None:
                        o.add_(h.detach())
        req.engine.sum_(out)
        req.grad_passes += 2.0 * len(idx)
        return out

    return hvp


def conjugate_gradient(
    matvec: Callable[[Vec], Vec], b: Vec, tol: float, max_iterations: int, can_iterate: Callable[[], bool]
) -> tuple[Vec, dict[str, float]]:
    """Solve A·x = b for symmetric A from x = 0; returns x and (iterations, relative residual, curvature flag)."""
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rr = b_norm2 = _dot(b, b)
    its, negative = 0, 0.0
    while its < max_iterations and rr > (tol**2) * b_norm2 and can_iterate():
        ap = matvec(p)
        curvature = _dot(p, ap)
        if not curvature > 0:
            negative = 1.0
            break
        alpha = rr / curvature
        x = _axpy(alpha, p, x)
        r = _axpy(-alpha, ap, r)
        rr_new = _dot(r, r)
        p = _axpy(rr_new / rr, p, r)
        rr = rr_new
        its += 1
    rel = math.sqrt(rr / b_norm2) if b_norm2 > 0 else 0.0
    return x, {"cg_iterations": float(its), "cg_relative_residual": rel, "cg_negative_curvature": negative}


@register_method("influence_function")
def influence_function(
    trainer: "IAUTrainer",
    forget_dataset: Dataset,
    retain_dataset: Dataset | None = None,
    budget: float | None = None,
    *,
    damping: float = 1e-2,
    max_iterations: int = 50,
    tol: float = 1e-6,
    hessian_sample_size: int | None = None,
) -> UnlearningResult:
    """θ ← θ + (N_f/N_r)·(H + λI)⁻¹·∇ mean_{D_f} ℓ, with H⁻¹ applied by CG on Hessian-vector products."""
    if not (damping >= 0 and math.isfinite(damping)) or max_iterations < 1 or not tol > 0:
        raise ValueError("influence_function: use damping >= 0, max_iterations >= 1 and tol > 0.")
    req = Request("influence_function", trainer, forget_dataset, retain_dataset, budget)
    n_f_rows, n_r_rows = len(req.forget), len(req.retain)
    if n_r_rows == 0:
        raise ValueError("influence_function needs retained data (the Hessian is that of the retain loss).")
    h_idx = retain_sample(n_r_rows, hessian_sample_size, req.seed, req.request_index, 1)
    req.need(n_f_rows + 2.0 * len(h_idx), "the forget gradient and one Hessian-vector product")
    req.begin()
    try:
        n_f = req.count(req.forget, range(n_f_rows))
        n_r = req.count(req.retain, range(n_r_rows))
        req.zero_grad()
        req.accumulate(req.forget, range(n_f_rows), n_f / n_r)
        req.sync_grads()
        b = [p.grad.detach().clone() for p in req.params]
        for p in req.params:
            p.grad = None
        hvp = hessian_vector_product(req, h_idx)

        def damped(v: Vec) -> Vec:
            return _axpy(damping, v, hvp(v)) if damping else hvp(v)

        x, info = conjugate_gradient(damped, b, tol, max_iterations, lambda: req.affordable(2.0 * len(h_idx)))
        with torch.no_grad():
            for p, dx in zip(req.params, x):
                p.add_(dx.to(p.dtype))
        config = {
            "damping": damping, "max_iterations": max_iterations, "tol": tol,
            "hessian_sample_size": hessian_sample_size, "seed": req.seed, "budget": budget,
        }
        metrics = {
            **info, "damping": damping, "hessian_examples": float(len(h_idx)), "forget_count": n_f, "retain_count": n_r,
        }
        return req.finish(config, metrics)
    except BaseException:
        req.restore()
        raise
