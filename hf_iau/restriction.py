"""Gradient restriction (GR): the gradient of ℓ_GR(θ) = ℓ(θ) + α·‖∇θ ℓ(θ)‖.

With g = ∇ℓ and u = ∂‖g‖/∂g (u = g/‖g‖ for the global norm; blockwise gₜ/‖gₜ‖ for the sum of
per-tensor norms), ∇ℓ_GR = g + α·H·u. Two ways to get H·u:

* exact: double backward through autograd (``create_graph=True``);
* finite difference: H·u ≈ (∇ℓ(θ + r·u) − ∇ℓ(θ)) / r — two ordinary forward/backward passes,
  so it works with fused attention kernels that have no double backward. Both passes see the same
  random state (same dropout masks); under bf16/fp16 the difference is central,
  (∇ℓ(θ + r·u) − ∇ℓ(θ − r·u)) / 2r, with r set from the measured length scale ‖g‖/‖H·u‖
  (:data:`LOW_PRECISION_RHO`; benchmarks/results/gr_precision.md).

:func:`gr_training_step` is the Trainer step: every gradient goes through ``accelerator.backward``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

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
    """‖g‖₂ over all tensors (``"global"``) or Σₜ‖gₜ‖₂ (``"per_tensor"``), differentiable.

    Zero-safe: √ is taken of max(Σg², tiny), so a zero tensor (e.g. LoRA B = 0 at initialisation) has
    derivative 0 instead of NaN.
    """
    tiny = torch.finfo(torch.float32).tiny
    squares = torch.stack([g.float().pow(2).sum() for g in grads])
    if norm == "per_tensor":
        return squares.clamp_min(tiny).sqrt().sum()
    return squares.sum().clamp_min(tiny).sqrt()


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


def rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """The torch CPU (and, when initialised, every CUDA device's) random state."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    """Restore a state from :func:`rng_state` (so a second pass draws the same dropout masks)."""
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def _direction_scales(grads: Sequence[torch.Tensor], norm: str, radius: float) -> list[float]:
    """Per-tensor c_t with r·u_t = c_t·g_t (u = ∂‖g‖/∂g): r/‖g‖ (global) or r/‖g_t‖ (per_tensor), 0 where g is 0."""
    norms = _squared_norms(grads).sqrt().tolist()
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

    Both passes run from the same random state (same dropout masks).

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
    rng = rng_state()  # the perturbed pass reuses the dropout masks of the first one
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
        set_rng_state(rng)
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


# --- the Trainer step ------------------------------------------------------------------------
# Under bf16/fp16 (autocast or low-precision weights) a perturbation r·u much smaller than the weights'
# rounding step is lost, and H·u is noise (relative error 1.6 at r = 1e-3 on a tiny Llama). There the
# difference is central and r = LOW_PRECISION_RHO · ‖g‖/‖H·u‖: truncation grows like (r/L)², rounding
# noise like ε·L/r, with L = ‖g‖/‖H·u‖ the distance over which the gradient changes by its own size.
# ρ was tuned on one tiny Llama and checked on held-out models (benchmarks/gr_precision.py).
LOW_PRECISION_RHO = 0.08
_CALIBRATION_PASSES = 4  # at most this many radius corrections in one step (first GR step only, in practice)


@dataclass
class GRState:
    """What GR keeps between Trainer steps: the length scale ‖g‖/‖H·u‖ and the penalty gradient to reuse."""

    length: float | None = None
    penalty_grads: list[torch.Tensor] | None = None
    radii: list[float] = field(default_factory=list)  # radii of the last step (tests, logs)


def low_precision_eps(trainer: Any, params: Sequence[torch.Tensor]) -> float | None:
    """Unit round-off of the passes' arithmetic when it is bf16/fp16 (mixed precision or weights), else None."""
    dtypes = {p.dtype for p in params}
    mp = getattr(trainer.args, "mixed_precision", "no")  # this trainer's (accelerate's state is shared)
    if mp == "bf16" or torch.bfloat16 in dtypes:
        return 2.0**-8
    if mp == "fp16" or torch.float16 in dtypes:
        return 2.0**-11
    return None


def _grad_scale(trainer: Any) -> float:
    scaler = getattr(trainer.accelerator, "scaler", None)
    return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0


def _scaled_loss(trainer: Any, model: torch.nn.Module, batch: dict[str, Any], num_items: Any, weight: float) -> torch.Tensor:
    """The micro-batch loss exactly as ``Trainer.training_step`` scales it (token counts or 1/GA); ``weight``
    is the rows' share of the micro-batch, used when the loss is a per-micro-batch mean."""
    with trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(model, batch, num_items_in_batch=num_items)
    if trainer.args.n_gpu > 1:
        loss = loss.mean()
    scaled = trainer.loss_is_scaled_for_ga
    if scaled is None:
        scaled = (trainer.model_accepts_loss_kwargs and num_items is not None) or trainer.compute_loss_func is not None
    if not scaled:
        loss = loss * (weight / trainer.current_gradient_accumulation_steps)
    return loss


def _grads(params: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        yield p.grad


def _is_sharded(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor"


def _squared_norms(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-tensor ‖gₜ‖² (float64, not differentiable); FSDP2 shards: local squares summed over the processes."""
    if not any(_is_sharded(g) for g in grads):
        return torch.stack([g.detach().double().pow(2).sum() for g in grads])
    import torch.distributed as dist

    world = dist.get_world_size()
    parts = []
    for g in grads:
        if _is_sharded(g) and all(pl.is_shard() for pl in g.placements):
            parts.append(g.to_local().detach().double().pow(2).sum())
        else:  # replicated on every process: count it once
            full = g.full_tensor() if _is_sharded(g) else g
            parts.append(full.detach().double().pow(2).sum() / world)
    squares = torch.stack(parts)
    dist.all_reduce(squares)
    return squares


def _norm_value(squares: torch.Tensor, norm: str) -> float:
    return float(squares.sqrt().sum()) if norm == "per_tensor" else float(squares.sum().sqrt())


def _mean_over_processes(trainer: Any, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Mean over processes of per-process tensors; FSDP2 gradient shards are already that mean (reduce-scatter)."""
    if trainer.accelerator.num_processes == 1 or any(_is_sharded(t) for t in tensors):
        return tensors
    from accelerate.utils import reduce

    return reduce(tensors, reduction="mean")


def _no_sync(acc: Any, model: torch.nn.Module, params: Sequence[torch.Tensor]) -> contextlib.AbstractContextManager:
    """``accelerator.no_sync``, except for FSDP2 shards (whose unsynced gradients do not land in ``.grad``)."""
    return contextlib.nullcontext() if any(_is_sharded(p) for p in params) else acc.no_sync(model)


def _norm_stat_buffers(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) for BatchNorm-style running statistics, to undo the perturbed passes' updates."""
    from torch.nn.modules.batchnorm import _NormBase

    return [(b, b.detach().clone()) for m in model.modules() if isinstance(m, _NormBase) and m.training
            for b in m.buffers(recurse=False)]


def gr_training_step(
    trainer: Any, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """``IAUTrainer.training_step`` with GR: adds ∇(ℓ + α‖∇ℓ‖) of this micro-batch to ``.grad``.

    Every gradient goes through ``accelerator.backward`` (GradScaler, DDP): the loss is scaled exactly as in
    ``Trainer.training_step``, so gr_alpha → 0 gives the plain step. Finite difference: pass 1 at θ (no
    gradient sync) gives g; under several processes u comes from the mean g over processes (N processes
    equal 1 process with the same global batch); the perturbed pass(es) run with the same random state
    (dropout masks) and their BatchNorm statistic updates are undone. Cheaper variants: the penalty only on
    every ``gr_every_n_steps``-th step (in between plain steps, or the last penalty gradient with
    ``gr_reuse_penalty``), H·u on a ``gr_sub_batch_fraction`` of the rows.
    """
    from transformers import Trainer

    args = trainer.args
    state: GRState = getattr(trainer, "_gr_state", None) or GRState()
    trainer._gr_state = state
    if trainer.state.global_step % args.gr_every_n_steps != 0:
        loss = Trainer.training_step(trainer, model, inputs, num_items_in_batch)
        if args.gr_reuse_penalty and state.penalty_grads is not None:
            s = _grad_scale(trainer)
            params = [p for p in model.parameters() if p.requires_grad]
            with torch.no_grad():
                for g, pg in zip(_grads(params), state.penalty_grads):
                    g.add_(pg.to(g.dtype), alpha=s)
        return loss
    model.train()
    if callable(getattr(trainer.optimizer, "train", None)):  # schedule-free optimizers, as Trainer.training_step
        trainer.optimizer.train()
    inputs = trainer._prepare_inputs(inputs)
    keep = args.gr_reuse_penalty and args.gr_every_n_steps > 1
    if args.gr_mode == "exact":
        loss, penalty = _exact_step(trainer, model, inputs, num_items_in_batch, keep)
    else:
        loss, penalty = _finite_difference_step(trainer, model, inputs, num_items_in_batch, keep)
    ga = trainer.current_gradient_accumulation_steps
    trainer._gr_logs["gr_penalty"].append(float(penalty) * ga)  # ‖∇ℓ‖ of the micro-batch mean (equal-size micro-batches)
    trainer._gr_logs["gr_loss"].append(float(loss) * ga)
    return loss.detach()


def _exact_step(trainer: Any, model: torch.nn.Module, inputs: dict[str, Any], num_items: Any, keep: bool):
    """L + α‖∇L‖ by double backward (L: the scaled loss; c·(ℓ + α‖∇ℓ‖) = L + α‖∇L‖ for L = c·ℓ). One process."""
    args, acc = trainer.args, trainer.accelerator
    params = [p for p in model.parameters() if p.requires_grad]
    with math_sdpa():
        loss = _scaled_loss(trainer, model, inputs, num_items, 1.0)
        penalty = gradient_norm(_grad(loss, params, create_graph=True), args.gr_norm)
        if keep:
            before = [g.detach().clone() for g in _grads(params)]
            acc.backward(args.gr_alpha * penalty, retain_graph=True)
            s = _grad_scale(trainer)
            trainer._gr_state.penalty_grads = [(p.grad - b) / s for p, b in zip(params, before)]
            acc.backward(loss)
        else:
            acc.backward(loss + args.gr_alpha * penalty)
    return loss.detach(), penalty.detach()


def _finite_difference_step(trainer: Any, model: torch.nn.Module, inputs: dict[str, Any], num_items: Any, keep: bool):
    """Pass 1 (g at θ, direction u from the mean g over processes), then the perturbed pass(es) of
    :func:`_perturbed_passes`; under bf16/fp16 the radius is recalibrated when r is off ρ·‖g‖/‖H·u‖ by > 2×."""
    args, acc, state = trainer.args, trainer.accelerator, trainer._gr_state
    params = [p for p in model.parameters() if p.requires_grad]
    alpha = args.gr_alpha
    parts = [(inputs, 1.0)]
    if args.gr_sub_batch_fraction < 1:
        from .losses import loss_kind

        split = split_rows(inputs, args.gr_sub_batch_fraction, loss_kind(model) == "causal_lm")
        if split is not None:
            parts = [(split[0], split[2]), (split[1], 1.0 - split[2])]
    sub, w = parts[0]
    rng = rng_state()
    # pass 1 at θ, no gradient sync: buf = this micro-batch's gradient (times the scaler's scale s). FSDP2
    # (DTensor parameters) reduce-scatters every pass instead: its .grad shards are then the mean over processes.
    if any(_is_sharded(p) for p in params) and hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(True)
    with _no_sync(acc, model, params):
        buf = [g.detach().clone() for g in _grads(params)]
        loss = _scaled_loss(trainer, model, sub, num_items, w)
        acc.backward(loss)
        buf_sub = None
        if len(parts) > 1:
            buf_sub = [g - b for g, b in zip(_grads(params), buf)]
            rest = _scaled_loss(trainer, model, parts[1][0], num_items, parts[1][1])
            acc.backward(rest)
            loss = loss.detach() + rest.detach()
        with torch.no_grad():
            for b, g in zip(buf, _grads(params)):
                b.neg_().add_(g)
    norm_stats = _norm_stat_buffers(model)
    # u from the global micro-batch gradient; the forward difference subtracts each process's own
    # ∇L(θ) (buf_sub stays local): the same mean after DDP's average, without cancelling large terms
    buf_sub = buf if buf_sub is None else buf_sub
    buf = _mean_over_processes(trainer, buf)
    s = _grad_scale(trainer)
    squares = _squared_norms(buf)
    penalty = torch.tensor(_norm_value(squares, args.gr_norm) / s)
    if not torch.isfinite(penalty) or float(penalty) == 0.0:
        return loss.detach(), penalty  # fp16 overflow: the scaler skips this step; zero gradient: no direction
    eps = low_precision_eps(trainer, params)
    central = eps is not None
    if central:
        radius = LOW_PRECISION_RHO * state.length if state.length else args.gr_fd_radius
    else:
        radius = args.gr_fd_radius
    exact_restore = [p.detach().clone() for p in params] if any(p.dtype not in (torch.float32, torch.float64) for p in params) else None
    before = [g.detach().clone() for g in _grads(params)] if (keep or central) else None
    state.radii = []
    for attempt in range(_CALIBRATION_PASSES + 1):
        state.radii.append(radius)
        _perturbed_passes(trainer, model, params, sub, num_items, w, buf, buf_sub, radius, central, rng, exact_restore)
        with torch.no_grad():
            for buffer, saved in norm_stats:  # running statistics: updated by pass 1 only
                buffer.copy_(saved)
        if before is None:
            break
        contrib = _mean_over_processes(trainer, [g - b for g, b in zip(_grads(params), before)])  # α·c·s·H·u
        if not central:
            break
        hu_norm = _norm_value(_squared_norms(contrib), "global") / (alpha * s)
        if hu_norm == 0 or not torch.isfinite(torch.tensor(hu_norm)):
            break
        state.length = _norm_value(squares, "global") / s / hu_norm  # ‖g‖/‖H·u‖ (both carry the loss scale)
        target = LOW_PRECISION_RHO * state.length
        if 0.5 <= radius / target <= 2.0 or attempt == _CALIBRATION_PASSES:
            break
        radius = target  # outside the accurate range: redo the perturbed passes at the measured scale
        with torch.no_grad():
            for g, b in zip(_grads(params), before):
                g.copy_(b)
    if keep:
        state.penalty_grads = [c / s for c in contrib]
    return loss.detach(), penalty


def _perturbed_passes(trainer, model, params, batch, num_items, w, buf, buf_sub, radius, central, rng, exact_restore):
    """Adds α·(∇L(θ + r·u) − ∇L(θ))/r (forward) or α·(∇L(θ + r·u) − ∇L(θ − r·u))/2r (central) to ``.grad``."""
    args, acc = trainer.args, trainer.accelerator
    alpha = args.gr_alpha
    coef = _direction_scales(buf, args.gr_norm, radius)

    def move(sign: float) -> None:
        with torch.no_grad():
            for p, b, c in zip(params, buf, coef):
                if c:
                    p.add_(b.to(p.dtype), alpha=sign * c)

    def backward(weight: float) -> None:
        set_rng_state(rng)  # the dropout masks of pass 1
        loss = _scaled_loss(trainer, model, batch, num_items, w)
        acc.backward(loss * weight)

    k = alpha / (radius * w)
    try:
        if central:
            move(1.0)
            with _no_sync(acc, model, params):
                backward(k / 2)
            move(-2.0)
            backward(-k / 2)
        else:
            with torch.no_grad():
                for g, b in zip(_grads(params), buf_sub):
                    g.sub_(b, alpha=k)  # −α·∇L_S(θ)·s/(r·w), this process's own term
            move(1.0)
            backward(k)
    finally:
        if exact_restore is not None:
            with torch.no_grad():
                for p, saved in zip(params, exact_restore):
                    p.copy_(saved)
        else:
            move(-1.0 if not central else 1.0)


def split_rows(inputs: dict[str, Any], fraction: float, causal_lm: bool) -> tuple[dict, dict, float] | None:
    """(first rows, the rest, the first rows' share of the loss count) for a GR sub-batch; None if no split."""
    rows = next((v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor) and v.dim() > 0), 0)
    k = max(1, int(round(fraction * rows)))
    if k >= rows:
        return None
    labels = inputs.get("labels")
    if isinstance(labels, torch.Tensor) and causal_lm and labels.dim() >= 2:
        counts = (labels[:, 1:] != -100).sum(dim=tuple(range(1, labels.dim()))).double()
    else:
        counts = torch.ones(rows, dtype=torch.float64)
    total = float(counts.sum())
    if total == 0:
        return None

    def part(sl: slice) -> dict[str, Any]:
        return {k2: (v[sl] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == rows else v)
                for k2, v in inputs.items()}

    return part(slice(0, k)), part(slice(k, rows)), float(counts[:k].sum()) / total


def check_gr_setup(trainer: Any) -> None:
    """ValueError for GR set-ups whose gradients would be wrong or cannot be checked here (named fix)."""
    args = trainer.args
    if args.gr_alpha == 0:
        return
    if args.fp16 or getattr(args, "mixed_precision", "no") == "fp16":
        raise ValueError(
            "gr_alpha > 0 with fp16=True is not supported (GR through the fp16 GradScaler is untested); "
            "use bf16=True, full precision, or gr_alpha=0."
        )
    if trainer.is_deepspeed_enabled:
        raise ValueError(
            "gr_alpha > 0 is not supported with DeepSpeed (ZeRO keeps no .grad to take the GR direction from); "
            "train with DDP (or set gr_alpha=0)."
        )
    # A model sharded with FSDP2's fully_shard (DTensor parameters) is supported: every GR pass reduce-scatters
    # and the norms sum shard-local squares (tests/test_gr_distributed.py). The Trainer's own `fsdp` setting is
    # refused: FSDP1 flat parameters and accelerate's FSDP2 wrapping cannot be checked on this CPU-only machine.
    if trainer.is_fsdp_enabled:
        raise ValueError(
            "gr_alpha > 0 with the Trainer's `fsdp` setting is not verified (FSDP1 flat parameters, accelerate's "
            "FSDP2 wrapping); train with DDP, shard the model yourself with torch.distributed.fsdp.fully_shard, "
            "or set gr_alpha=0."
        )
    if args.gr_mode == "exact" and args.world_size > 1:
        raise ValueError(
            "gr_mode='exact' is single-process only (double backward does not go through DDP's gradient sync); "
            "use gr_mode='finite_difference' with several processes."
        )
