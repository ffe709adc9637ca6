"""Counterfactual targets: each forget example's loss under the model retrained without the forget set.

First-order group influence (Koh & Liang 2017; Koh et al. 2019 for groups). With n training examples
and the objective (1/n)Σℓ_j (+ a regulariser), removing the set F moves the optimum by

    Δθ ≈ (1/n)·H⁻¹·G_F,        G_F = Σ_{j∈F} ∇ℓ_j(θ*),

i.e. along the gradient of the forget set, amplified where the rest of the data does not constrain
the weights (small curvature: a trigger, a removed class or topic, a duplicated secret) and for
examples the other forget examples support. A forget example's loss under the retrained model is
estimated by moving its LOGITS linearly and evaluating the loss exactly (a linear move in loss space
saturates: a fitted example has a tiny gradient however much it depends on its group):

    z_i(θ_{−F}) ≈ z_i + c·J_i·P·G_F,      ℓ̂_i = CE(z_i + c·J_i·P·G_F, y_i),

with P = (diag F̂ + δ·mean F̂)⁻¹, F̂ = Σ_D g² the empirical Fisher (a random retained sample S,
scaled to the retained set, plus the forget set), δ = ``DAMPING``. The scale c stands for 1/n and the
rest of the curvature and is CALIBRATED on held-out data with the same estimator: a random sample S
of retained examples, once removed, is never-seen data, so c is where the estimate for S reaches the
mean held-out loss (``calibrate``). Finally each forget estimate is read against the sample's
estimates by rank and given the held-out loss of the same rank (``quantile_map``): a random forget set
lands on the held-out loss distribution, and an example the estimate ranks above every random
retained one gets the largest held-out loss (the cap: a never-seen example is at most as surprising
as the most surprising held-out one). Targets never fall below the current loss.

J·P·G is a central finite difference of the logits (forward passes only). Cost per request:
|F| + |S| example-gradient passes (one per example, for G and F̂) and 3(|F| + |S|) forward passes.
``estimate_targets`` runs it for an ``IAUUnlearner``; the functions below are plain torch and are
checked against exact leave-set-out retraining in tests/test_counterfactual.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
PerExample = Callable[[dict], torch.Tensor]  # batch -> per-example loss [B] (with graph)
Logits = Callable[[dict], tuple[torch.Tensor, torch.Tensor]]  # batch -> (logits, labels)
Reduce = Callable[[list[torch.Tensor]], None]  # in-place sum over processes
SCALES = np.concatenate([[0.0], np.geomspace(1e-9, 1e9, 73)])  # grid searched for c (0 = the unshifted loss)
# Curvature proxy: "diagonal" (empirical Fisher, damped by DAMPING × its mean) or "identity". Chosen on the
# TUNE scenario poison_vision (random forget rows on the same model: mean target 0.22 vs held-out 0.21 at
# 0.1; 1.5 at 1e-3; identity 0.007), see benchmarks/results/removal.md.
CURVATURE = "diagonal"
DAMPING = 0.1


def group_gradient(
    params: Sequence[torch.nn.Parameter], batches: Iterable[dict], per_example: PerExample,
    reduce: Reduce | None = None,
) -> tuple[list[torch.Tensor], list[float]]:
    """G = Σ_i ∇ℓ_i over ``batches`` (summed over processes by ``reduce``) and the local losses ℓ_i."""
    grad = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    losses: list[float] = []
    for batch in batches:
        loss = per_example(batch)
        gs = torch.autograd.grad(loss.sum(), list(params), allow_unused=True)
        for acc, g in zip(grad, gs):
            if g is not None:
                acc.add_(g.detach().float())
        losses.extend(loss.detach().double().tolist())
    if reduce is not None:
        reduce(grad)
    return grad, losses


def example_gradients(
    params: Sequence[torch.nn.Parameter], batches: Iterable[dict], per_example: PerExample,
    backward: Callable[[torch.Tensor], float] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float]]:
    """(Σ_i ∇ℓ_i, Σ_i (∇ℓ_i)², ℓ_i) over one-example ``batches`` (this process's share; sum them yourself).

    ``backward(loss) -> scale`` (e.g. the request engine's: ``accelerator.backward``) fills ``.grad``
    with scale·∇loss; without it the gradients come from ``torch.autograd.grad``."""
    grad = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    sq = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    losses: list[float] = []
    for batch in batches:
        loss = per_example(batch)
        if backward is None:
            gs = torch.autograd.grad(loss.sum(), list(params), allow_unused=True)
        else:
            for p in params:
                p.grad = None
            scale = backward(loss.sum())
            gs = [None if p.grad is None else p.grad / scale for p in params]
            for p in params:
                p.grad = None
        for acc, acc2, g in zip(grad, sq, gs):
            if g is not None:
                acc.add_(g.detach().float())
                acc2.add_(g.detach().float().pow(2))
        losses.extend(loss.detach().double().tolist())
    return grad, sq, losses


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """Per-example mean cross-entropy ([B]): classifier logits [B, C], or causal-LM logits [B, T, V] with the
    one-token shift and ``-100`` labels ignored."""
    if not causal:
        return F.cross_entropy(logits.double(), labels.view(-1), reduction="none")
    lg, lb = logits[:, :-1, :].double(), labels[:, 1:]
    tok = F.cross_entropy(lg.reshape(-1, lg.size(-1)), lb.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    mask = (lb != IGNORE_INDEX).to(tok.dtype)
    return (tok.view(lb.shape) * mask).sum(-1) / mask.sum(-1).clamp_min(1)


@torch.no_grad()
def shifted_losses(
    params: Sequence[torch.nn.Parameter], direction: Sequence[torch.Tensor], make_batches: Callable[[], Iterable[dict]],
    logits_of: Logits, scales: Sequence[float], causal: bool, rel_step: float = 1e-3,
) -> np.ndarray:
    """[examples, len(scales)]: CE(z + s·J·d, y) for every example and scale s, J·d a central difference of the
    logits along ``direction`` (θ is restored exactly)."""
    d_norm = math.sqrt(sum(_total(d.double().pow(2).sum()) for d in direction))
    t_norm = math.sqrt(sum(_total(p.detach().double().pow(2).sum()) for p in params))
    eps = rel_step * max(t_norm, 1.0) / d_norm if d_norm > 0 and math.isfinite(d_norm) else 0.0
    saved = [p.detach().clone() for p in params]

    def at(shift: float, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        for p, s, d in zip(params, saved, direction):
            p.copy_(s + shift * d.to(p.dtype) if shift else s)
        return logits_of(batch)

    rows: list[np.ndarray] = []
    try:
        for batch in make_batches():
            z0, y = at(0.0, batch)
            z0 = z0.double()
            if eps > 0:
                dz = (at(eps, batch)[0].double() - at(-eps, batch)[0].double()) / (2 * eps)
            else:
                dz = torch.zeros_like(z0)
            cols = [cross_entropy(z0 + float(s) * dz, y, causal) for s in scales]
            rows.append(torch.stack(cols, -1).cpu().numpy())
    finally:
        for p, s in zip(params, saved):
            p.copy_(s)
    return np.concatenate(rows, 0) if rows else np.zeros((0, len(scales)))


def calibrate(sample_curves: np.ndarray, scales: Sequence[float], held_out_loss: float) -> float:
    """The smallest scale c at which the mean sample loss reaches ``held_out_loss`` (log-linear interpolation
    between grid points); 0 when it is already there, the largest scale when it never gets there."""
    scales = np.asarray(scales, dtype=np.float64)
    if not len(sample_curves):
        return 0.0
    mean = np.asarray(sample_curves, dtype=np.float64).mean(0)
    if not math.isfinite(held_out_loss) or held_out_loss <= mean[0]:
        return 0.0
    above = np.flatnonzero(mean >= held_out_loss)
    if not len(above):
        return float(scales[-1])
    k = int(above[0])
    lo, hi = mean[k - 1], mean[k]
    w = (held_out_loss - lo) / (hi - lo) if hi > lo else 1.0
    if scales[k - 1] <= 0:
        return float(w * scales[k])
    return float(np.exp(np.log(scales[k - 1]) + w * (np.log(scales[k]) - np.log(scales[k - 1]))))


def at_scale(curves: np.ndarray, scales: Sequence[float], c: float) -> np.ndarray:
    """Each example's curve read at scale ``c`` (log-linear interpolation; the unshifted loss at c = 0)."""
    curves = np.asarray(curves, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float64)
    if not len(curves):
        return np.zeros(0)
    if c <= 0:
        return curves[:, 0]
    pos = scales > 0
    first = int(np.argmax(pos))
    if c < scales[first]:  # between 0 and the first positive grid point: linear in c
        return curves[:, 0] + (c / scales[first]) * (curves[:, first] - curves[:, 0])
    x = np.log(scales[pos])
    return np.array([np.interp(math.log(c), x, row[pos]) for row in curves])


def quantile_map(estimates: Sequence[float], sample_estimates: Sequence[float], held_out: Sequence[float]) -> np.ndarray:
    """Each estimate's mid-rank u among the random sample's estimates, read as the held-out loss quantile u.

    A random retained sample, once removed, is never-seen data: its estimates are matched to the held-out
    losses by rank, and a forget example is given the held-out loss of the same rank (above every sample
    estimate: the largest held-out loss). This keeps the estimate's ordering and puts a random forget set
    on the held-out loss distribution, without trusting the linearisation's scale in its tails."""
    s = np.sort(np.asarray(sample_estimates, dtype=np.float64))
    e = np.asarray(estimates, dtype=np.float64)
    if not len(s):
        return e
    u = (np.searchsorted(s, e, "left") + np.searchsorted(s, e, "right")) / (2.0 * len(s))
    return np.quantile(np.asarray(held_out, dtype=np.float64), np.clip(u, 0.0, 1.0))


def counterfactual_losses(losses: Sequence[float], estimates: Sequence[float], ceiling: float | None = None) -> list[float]:
    """The estimates clipped to [ℓ_i, max(ℓ_i, ceiling)] (never below the current loss, never above the ceiling)."""
    out = []
    for l, t in zip(losses, estimates):
        t = max(float(t), float(l)) if math.isfinite(t) else float(l)
        if ceiling is not None and math.isfinite(ceiling):
            t = min(t, max(float(l), ceiling))
        out.append(t)
    return out


@dataclass
class TargetEstimate:
    """Counterfactual loss targets of a forget set and what they cost."""

    targets: np.ndarray  # one loss target per forget row, in the row order of `forget`
    gradient_passes: float
    forward_passes: float
    diagnostics: dict[str, float]


def estimate_targets(
    engine: Any, forget: Any, retain: Any, sample_rows: Sequence[int], held_out_losses: Sequence[float],
    curvature: Any = None,
) -> TargetEstimate:
    """Counterfactual loss targets of ``forget`` (see the module docstring); ``sample_rows``: the random retained
    sample (retain indices) that calibrates the scale against ``held_out_losses``."""
    from types import SimpleNamespace

    un = SimpleNamespace(
        dist=engine, n_forget=len(forget), n_retain=len(retain), kind=engine.kind, autocast=engine.autocast,
        model=engine.model, params=engine.params, device=engine.device,
        reference={"losses": list(held_out_losses), "loss": float(np.mean(held_out_losses))},
        forget_batches=lambda local: engine.batches(forget, local), retain_batches=lambda local: engine.batches(retain, local),
    )
    targets, grad, fwd, info = _estimate(un, engine.shard(range(len(forget))), list(sample_rows))
    return TargetEstimate(np.asarray([targets[i] for i in range(len(forget))]), grad, fwd, info)


def _estimate(un: Any, forget_local: list[int], s_idx: list[int]) -> tuple[dict[int, float], float, float, dict[str, float]]:
    """Counterfactual loss targets of an ``IAUUnlearner``'s forget set (see the module docstring).

    Returns (targets by forget index, example-gradient passes, forward passes, diagnostics). Multi-process:
    every process takes its share of the forget set and of the sample; G and all per-example values are
    summed over processes, so every process gets the same targets.
    """
    from .losses import batch_losses

    d = un.dist
    # A sharded (FSDP2) model: every process runs EVERY example (its reduce-scatter then averages identical
    # gradients into the example's own gradient shard), so nothing is summed over processes afterwards.
    sharded = bool(getattr(d, "sharded", False))
    if sharded:
        forget_local = list(range(un.n_forget))
    causal = un.kind == "causal_lm"

    def per_example(batch: dict) -> torch.Tensor:
        with un.autocast():
            return batch_losses(un.model, batch, un.kind).per_example

    def logits_of(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        with un.autocast():
            out = un.model(**{k: v for k, v in batch.items() if k != "labels"})
        return out.logits, batch["labels"].to(out.logits.device)

    def reduce(tensors: list[torch.Tensor]) -> None:
        if not d.on or sharded:
            return
        acc = getattr(d, "accelerator", None)
        for t in tensors:
            if acc is not None:
                t.copy_(acc.reduce(t, reduction="sum"))
            else:
                t.copy_(torch.tensor(d.sum_list(t.flatten().tolist(), un.device), dtype=t.dtype).view_as(t))

    def gather(local: list[int], values: np.ndarray, n: int, pos: dict[int, int]) -> np.ndarray:
        width = values.shape[1] if values.ndim == 2 else 1
        full = np.zeros((n, width))
        for i, v in zip(local, np.asarray(values).reshape(len(local), width)):
            full[pos[i]] = v
        if sharded:
            return full
        return np.asarray(d.sum_list(full.ravel().tolist(), un.device)).reshape(n, width)

    s_local = list(s_idx) if sharded else d.shard(s_idx)
    s_pos = {j: k for k, j in enumerate(s_idx)}
    f_pos = {i: i for i in range(un.n_forget)}
    generic = un.kind == "generic"
    ref_losses = un.reference.get("losses")
    held_out = float(un.reference.get("loss", float(np.mean(ref_losses)) if ref_losses else float("nan")))
    lg = (lambda b: _loss_as_logit(per_example, b)) if generic else logits_of  # generic: the loss as a logit

    # Per-example gradients of the sample and the forget set: their sums G_S, G_F and a diagonal curvature
    # H ≈ diag(Σ_D g²) (empirical Fisher of the training set: the sample stands for the retained rows).
    def backward(loss: torch.Tensor) -> float:  # the request engine's gradient path (accelerator.backward)
        if sharded:
            d.accelerator.backward(loss)  # the same example on every process: the shard's mean is its gradient
        else:
            d.backward(loss)
        return d.grad_scale()

    g_s, sq_s, _ = example_gradients(un.params, (b for i in s_local for b in un.retain_batches([i])), per_example, backward)
    g_f, sq_f, _ = example_gradients(un.params, (b for i in forget_local for b in un.forget_batches([i])), per_example, backward)
    reduce(g_s + sq_s + g_f + sq_f)
    weight = un.n_retain / max(len(s_idx), 1)
    fisher = [weight * a + b for a, b in zip(sq_s, sq_f)]
    del sq_s, sq_f
    damp = DAMPING * sum(_total(f.double().sum()) for f in fisher) / max(sum(f.numel() for f in fisher), 1)
    inv = [1.0 / (f + max(damp, 1e-30)) if CURVATURE == "diagonal" else torch.ones_like(f) for f in fisher]
    del fisher

    def curves(local: list[int], batches: Any, n: int, pos: dict[int, int], g: list[torch.Tensor],
               scales: Sequence[float], inv: list[torch.Tensor]) -> np.ndarray:
        direction = [a * b for a, b in zip(g, inv)]
        c = shifted_losses(un.params, direction, lambda: batches(local), lg, scales, causal and not generic)
        return gather(local, c, n, pos)

    sample = curves(s_local, un.retain_batches, len(s_idx), s_pos, g_s, SCALES, inv)
    scale = calibrate(sample, SCALES, held_out)
    forget = curves(forget_local, un.forget_batches, un.n_forget, f_pos, g_f, [0.0, scale], inv)
    del g_s, g_f, inv
    losses = forget[:, 0]
    ceiling = float(np.max(ref_losses)) if ref_losses else None
    estimates = forget[:, 1]
    s_est = at_scale(sample, SCALES, scale)
    raw = float(np.mean(estimates)) if len(estimates) else float("nan")
    rank = float(np.mean([(s_est < e).mean() for e in estimates])) if len(estimates) and len(s_est) else float("nan")
    if ref_losses:
        estimates = quantile_map(estimates, s_est, ref_losses)
    targets = counterfactual_losses(losses.tolist(), estimates.tolist(), ceiling)
    info = {
        "scale": scale,
        "held_out_loss": held_out,
        "sample_loss": float(sample[:, 0].mean()) if len(s_idx) else float("nan"),
        "forget_loss": float(losses.mean()) if len(losses) else float("nan"),
        "estimate_mean": raw,
        "estimate_rank": rank,  # mean share of the sample's estimates below a forget example's
        "target_mean": float(np.mean(targets)) if targets else float("nan"),
        "ceiling_fraction": float(np.mean([ceiling is not None and t >= ceiling - 1e-9 for t in targets])),
    }
    return {i: t for i, t in enumerate(targets)}, float(un.n_forget + len(s_idx)), float(3 * (un.n_forget + len(s_idx))), info


def _total(x: torch.Tensor) -> float:
    """A scalar's value; for a DTensor (a sharded parameter's sum), the total over all shards."""
    return float(x.full_tensor()) if hasattr(x, "full_tensor") else float(x)


def _loss_as_logit(per_example: PerExample, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A generic model's loss ℓ as a 2-class 'logit' whose CE with label 0 is ℓ: z = (0, log(e^ℓ − 1))."""
    loss = per_example(batch).double().clamp_min(1e-12)
    z = torch.stack([torch.zeros_like(loss), torch.log(torch.expm1(loss))], -1)
    return z, torch.zeros(len(loss), dtype=torch.long, device=loss.device)


__all__ = ["at_scale", "calibrate", "counterfactual_losses", "cross_entropy", "estimate_targets", "group_gradient",
           "quantile_map", "shifted_losses"]
