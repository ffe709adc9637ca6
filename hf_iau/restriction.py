"""Gradient restriction (GR): the gradient of ℓ_GR(θ) = ℓ(θ) + α·‖∇θ ℓ(θ)‖.

With g = ∇ℓ and u = ∂‖g‖/∂g (u = g/‖g‖ for the global norm; blockwise gₜ/‖gₜ‖ for the sum of
per-tensor norms), ∇ℓ_GR = g + α·H·u. :class:`GradientRestriction` is the Trainer step; its one
Hessian-vector routine (:meth:`GradientRestriction._add_hessian_vector`) gets H·u in one of two ways:

* exact: double backward through autograd, H·u = ∇θ⟨g(θ), u⟩ with u held fixed (``create_graph=True``);
* finite difference: H·u ≈ (∇ℓ(θ + r·u) − ∇ℓ(θ)) / r — two ordinary forward/backward passes,
  so it works with fused attention kernels that have no double backward. Both passes see the same
  random state (same dropout masks); under bf16/fp16 the difference is central,
  (∇ℓ(θ + r·u) − ∇ℓ(θ − r·u)) / 2r, with r set from the measured length scale ‖g‖/‖H·u‖
  (:data:`LOW_PRECISION_RHO`; benchmarks/results/gr_precision.md).

Both take the penalty and the direction u from the same per-tensor norms ‖gₜ‖ (:func:`norm_value`,
:func:`direction_scales`). Every gradient goes through ``accelerator.backward``; every sum over
processes through ``accelerator.reduce``.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from transformers import Trainer

from .losses import loss_kind

# Under bf16/fp16 (autocast or low-precision weights) a perturbation r·u much smaller than the weights'
# rounding step is lost, and H·u is noise (relative error 1.6 at r = 1e-3 on a tiny Llama). There the
# difference is central and r = LOW_PRECISION_RHO · ‖g‖/‖H·u‖: truncation grows like (r/L)², rounding
# noise like ε·L/r, with L = ‖g‖/‖H·u‖ the distance over which the gradient changes by its own size.
# ρ was tuned on one tiny Llama and checked on held-out models (benchmarks/gr_precision.py).
LOW_PRECISION_RHO = 0.08
_CALIBRATION_PASSES = 4  # at most this many radius corrections in one step (first GR step only, in practice)


def math_sdpa() -> contextlib.AbstractContextManager:
    """Context that forces PyTorch SDPA onto its MATH backend (which supports double backward)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # pragma: no cover - old torch
        return contextlib.nullcontext()


def direction_scales(norms: Sequence[float], norm: str, radius: float) -> list[float]:
    """Per-tensor cₜ with r·uₜ = cₜ·gₜ (u = ∂‖g‖/∂g), from the per-tensor norms ‖gₜ‖: r/‖g‖ (global) or
    r/‖gₜ‖ (per_tensor); 0 where g (or gₜ) is 0, so a zero gradient (LoRA B = 0) has no direction."""
    if norm == "per_tensor":
        return [radius / n if n > 0 else 0.0 for n in norms]
    total = sum(n * n for n in norms) ** 0.5
    return [radius / total if total > 0 else 0.0 for _ in norms]


def norm_value(norms: Sequence[float], norm: str) -> float:
    """‖g‖₂ over all tensors (``"global"``) or Σₜ‖gₜ‖₂ (``"per_tensor"``), from the per-tensor norms."""
    return sum(norms) if norm == "per_tensor" else sum(n * n for n in norms) ** 0.5


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


def _is_sharded(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor"


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """The torch CPU (and, when initialised, every CUDA device's) random state."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    """Restore a state from :func:`_rng_state` (so a later pass draws the same dropout masks)."""
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def _norm_stat_buffers(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) for BatchNorm-style running statistics, to undo the perturbed passes' updates."""
    from torch.nn.modules.batchnorm import _NormBase

    return [(b, b.detach().clone()) for m in model.modules() if isinstance(m, _NormBase) and m.training
            for b in m.buffers(recurse=False)]


class _Step:
    """One micro-batch of a GR step: the trainer's loss scaling, backward, sync switch and sums over processes."""

    def __init__(self, trainer: Any, model: torch.nn.Module, num_items: Any) -> None:
        self.trainer, self.model, self.num_items = trainer, model, num_items
        self.acc = trainer.accelerator
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.sharded = any(_is_sharded(p) for p in self.params)
        scaler = getattr(self.acc, "scaler", None)
        self.scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        self.rng = _rng_state()  # the perturbed passes draw the dropout masks of pass 1

    def grads(self) -> Iterator[torch.Tensor]:
        """Every trainable parameter's ``.grad`` (zeros where there is none yet)."""
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            yield p.grad

    def loss(self, batch: dict[str, Any], weight: float) -> torch.Tensor:
        """The micro-batch loss exactly as ``Trainer.training_step`` scales it (token counts or 1/GA); ``weight``
        is the rows' share of the micro-batch, used when the loss is a per-micro-batch mean."""
        trainer = self.trainer
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(self.model, batch, num_items_in_batch=self.num_items)
        if trainer.args.n_gpu > 1:
            loss = loss.mean()
        scaled = trainer.loss_is_scaled_for_ga
        if scaled is None:
            scaled = trainer.model_accepts_loss_kwargs and self.num_items is not None
            scaled = scaled or trainer.compute_loss_func is not None
        if not scaled:
            loss = loss * (weight / trainer.current_gradient_accumulation_steps)
        return loss

    def backward_at_first_masks(self, batch: dict[str, Any], weight: float, factor: float) -> None:
        """``accelerator.backward(factor · L)`` with the random state (dropout masks) of pass 1."""
        _set_rng_state(self.rng)
        self.acc.backward(self.loss(batch, weight) * factor)

    def no_sync(self) -> contextlib.AbstractContextManager:
        """``accelerator.no_sync``, except for FSDP2 shards (whose unsynced gradients do not land in ``.grad``)."""
        return contextlib.nullcontext() if self.sharded else self.acc.no_sync(self.model)

    def mean(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mean over processes of per-process tensors; FSDP2 gradient shards are already that mean (reduce-scatter)."""
        if self.acc.num_processes == 1 or any(_is_sharded(t) for t in tensors):
            return tensors
        return self.acc.reduce(tensors, reduction="mean")

    def norms(self, grads: Sequence[torch.Tensor]) -> list[float]:
        """Per-tensor ‖gₜ‖ (float64); FSDP2 shards: local squares summed over the processes."""
        if not any(_is_sharded(g) for g in grads):
            return torch.stack([g.detach().double().pow(2).sum() for g in grads]).sqrt().tolist()
        parts = []
        for g in grads:
            if _is_sharded(g) and all(pl.is_shard() for pl in g.placements):
                parts.append(g.to_local().detach().double().pow(2).sum())
            else:  # replicated on every process: count it once
                full = g.full_tensor() if _is_sharded(g) else g
                parts.append(full.detach().double().pow(2).sum() / self.acc.num_processes)
        return self.acc.reduce(torch.stack(parts), reduction="sum").sqrt().tolist()

    def move(self, direction: Sequence[torch.Tensor], coef: Sequence[float], sign: float) -> None:
        """θ += sign·cₜ·directionₜ, tensor by tensor."""
        with torch.no_grad():
            for p, d, c in zip(self.params, direction, coef):
                if c:
                    p.add_(d.to(p.dtype), alpha=sign * c)


@dataclass
class _FirstPass:
    """Pass 1 at θ. ``grads``: g for the norm and u (times the scaler's scale s; finite difference: mean over
    processes, exact: with its autograd graph); ``own``: this process's ∇L_S(θ)·s of the H·u rows S (finite
    difference); ``batch``/``weight``: those rows and their share w of the loss count."""

    loss: torch.Tensor
    grads: list[torch.Tensor]
    own: list[torch.Tensor]
    batch: dict[str, Any]
    weight: float
    exact: bool


class GradientRestriction:
    """GR for ``IAUTrainer``: adds ∇(ℓ + α‖∇ℓ‖) of each micro-batch to ``.grad`` (``args``: an ``IAUConfig``).

    Every gradient goes through ``accelerator.backward`` (GradScaler, DDP): the loss is scaled exactly as in
    ``Trainer.training_step``, so gr_alpha → 0 gives the plain step. Finite difference: pass 1 at θ (no
    gradient sync) gives g; under several processes u comes from the mean g over processes (N processes
    equal 1 process with the same global batch); the perturbed pass(es) run with the same random state
    (dropout masks) and their BatchNorm statistic updates are undone; the last pass syncs gradients, also
    when g = 0. Cheaper variants: the penalty only on every ``gr_every_n_steps``-th step (in between plain
    steps, or the last penalty gradient with ``gr_reuse_penalty``), H·u on a ``gr_sub_batch_fraction`` of the rows.

    State between steps: ``length`` (‖g‖/‖H·u‖ measured under bf16/fp16), ``penalty_grads`` (α·H·u of the
    last GR step, kept for ``gr_reuse_penalty``), ``radii`` (finite-difference radii of the last GR step).
    """

    def __init__(self, args: Any) -> None:
        self.args = args
        self.length: float | None = None
        self.penalty_grads: list[torch.Tensor] | None = None
        self.radii: list[float] = []
        self._logs: dict[str, list[float]] = defaultdict(list)

    def pop_logs(self) -> dict[str, float]:
        """Mean GR penalty ‖∇ℓ‖ and loss ℓ of the micro-batches since the last call ({} when none)."""
        logs = {key: sum(values) / len(values) for key, values in self._logs.items() if values}
        self._logs.clear()
        return logs

    def check_setup(self, trainer: Any) -> None:
        """ValueError for GR set-ups whose gradients would be wrong or cannot be checked here (named fix)."""
        args = self.args
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

    def training_step(
        self,
        trainer: Any,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """``Trainer.training_step`` with GR: adds ∇(ℓ + α‖∇ℓ‖) of this micro-batch to ``.grad``; returns the loss."""
        if trainer.state.global_step % self.args.gr_every_n_steps != 0:
            return self._step_without_penalty(trainer, model, inputs, num_items_in_batch)
        model.train()
        if callable(getattr(trainer.optimizer, "train", None)):  # schedule-free optimizers, as Trainer.training_step
            trainer.optimizer.train()
        inputs = trainer._prepare_inputs(inputs)
        step = _Step(trainer, model, num_items_in_batch)
        with math_sdpa() if self.args.gr_mode == "exact" else contextlib.nullcontext():
            first = self._first_pass(step, inputs)
            norm_stats = _norm_stat_buffers(model)  # running statistics: updated by pass 1 only
            norms = step.norms([g.detach() for g in first.grads])
            penalty = norm_value(norms, self.args.gr_norm) / (1.0 if first.exact else step.scale)
            if first.exact or (math.isfinite(penalty) and penalty > 0):
                self._penalty_gradient(step, first, norms)
            else:  # g = 0: no direction (fp16 overflow: the scaler skips the step); the synced pass is still due
                step.backward_at_first_masks(first.batch, first.weight, 0.0)
            with torch.no_grad():
                for buffer, saved in norm_stats:
                    buffer.copy_(saved)
        ga = trainer.current_gradient_accumulation_steps
        self._logs["gr_penalty"].append(penalty * ga)  # ‖∇ℓ‖ of the micro-batch mean (equal-size micro-batches)
        self._logs["gr_loss"].append(float(first.loss.detach()) * ga)
        return first.loss.detach()

    def _step_without_penalty(
        self, trainer: Any, model: torch.nn.Module, inputs: dict[str, Any], num_items: Any
    ) -> torch.Tensor:
        """The plain step, plus the last penalty gradient α·H·u when ``gr_reuse_penalty``."""
        loss = Trainer.training_step(trainer, model, inputs, num_items)
        if self.args.gr_reuse_penalty and self.penalty_grads is not None:
            step = _Step(trainer, model, num_items)
            with torch.no_grad():
                for g, pg in zip(step.grads(), self.penalty_grads):
                    g.add_(pg.to(g.dtype), alpha=step.scale)
        return loss

    def _first_pass(self, step: _Step, inputs: dict[str, Any]) -> _FirstPass:
        """Exact: L and g = ∇L with its graph (nothing in ``.grad`` yet). Finite difference: ∇L added to ``.grad``
        without gradient sync (FSDP2 reduce-scatters every pass instead: its shards are then the mean over
        processes), over the H·u rows S then the rest of the micro-batch."""
        if self.args.gr_mode == "exact":
            loss = step.loss(inputs, 1.0)
            grads = torch.autograd.grad(loss, step.params, create_graph=True, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(step.params, grads)]
            return _FirstPass(loss, grads, grads, inputs, 1.0, exact=True)
        parts = [(inputs, 1.0)]
        if self.args.gr_sub_batch_fraction < 1:
            split = split_rows(inputs, self.args.gr_sub_batch_fraction, loss_kind(step.model) == "causal_lm")
            if split is not None:
                parts = [(split[0], split[2]), (split[1], 1.0 - split[2])]
        if step.sharded and hasattr(step.model, "set_requires_gradient_sync"):
            step.model.set_requires_gradient_sync(True)
        with step.no_sync():
            grads = [g.detach().clone() for g in step.grads()]
            loss = step.loss(*parts[0])
            step.acc.backward(loss)
            own = None
            if len(parts) > 1:
                own = [g - b for g, b in zip(step.grads(), grads)]
                rest = step.loss(*parts[1])
                step.acc.backward(rest)
                loss = loss.detach() + rest.detach()
            with torch.no_grad():
                for b, g in zip(grads, step.grads()):
                    b.neg_().add_(g)  # g·s of this micro-batch, this process
        # u from the global micro-batch gradient; the forward difference subtracts each process's own
        # ∇L(θ) (own stays local): the same mean after DDP's average, without cancelling large terms
        own = grads if own is None else own
        return _FirstPass(loss.detach(), step.mean(grads), own, *parts[0], exact=False)

    def _penalty_gradient(self, step: _Step, first: _FirstPass, norms: list[float]) -> None:
        """Adds α·H·u (exact: and ∇L) to ``.grad``; keeps α·H·u for ``gr_reuse_penalty``. Under bf16/fp16 the
        finite difference is central and its radius recalibrated when r is off ρ·‖g‖/‖H·u‖ by more than 2×."""
        args = self.args
        keep = args.gr_reuse_penalty and args.gr_every_n_steps > 1
        central = not first.exact and self._low_precision(step.params)
        radius = LOW_PRECISION_RHO * self.length if central and self.length else args.gr_fd_radius
        before = [g.detach().clone() for g in step.grads()] if (keep or central) else None
        self.radii = []
        for attempt in range(_CALIBRATION_PASSES + 1):
            if not first.exact:
                self.radii.append(radius)
            self._add_hessian_vector(step, first, norms, radius, central, with_loss=first.exact and not keep)
            if before is None:
                break
            contrib = step.mean([g - b for g, b in zip(step.grads(), before)])  # α·s·H·u
            if not central:
                break
            hu_norm = norm_value(step.norms(contrib), "global") / (args.gr_alpha * step.scale)
            if hu_norm == 0 or not math.isfinite(hu_norm):
                break
            self.length = norm_value(norms, "global") / step.scale / hu_norm  # ‖g‖/‖H·u‖ (both carry the scale)
            target = LOW_PRECISION_RHO * self.length
            if 0.5 <= radius / target <= 2.0 or attempt == _CALIBRATION_PASSES:
                break
            radius = target  # outside the accurate range: redo the perturbed passes at the measured scale
            with torch.no_grad():
                for g, b in zip(step.grads(), before):
                    g.copy_(b)
        if keep:
            self.penalty_grads = [c / step.scale for c in contrib]
        if first.exact and keep:
            step.acc.backward(first.loss)

    def _add_hessian_vector(
        self, step: _Step, first: _FirstPass, norms: list[float], radius: float, central: bool, with_loss: bool
    ) -> None:
        """Adds α·H·u to ``.grad``, u = ∂‖g‖/∂g. Exact: backward of α·⟨g, u⟩ through g's graph (u fixed; with
        ``with_loss`` the same backward adds ∇L). Finite difference at radius r on the rows S (share w):
        forward α·(∇L_S(θ + r·u) − ∇L_S(θ))/(r·w), central α·(∇L_S(θ + r·u) − ∇L_S(θ − r·u))/(2r·w)."""
        alpha = self.args.gr_alpha
        if first.exact:
            coef = direction_scales(norms, self.args.gr_norm, 1.0)
            wide = [g.double() if g.dtype == torch.float64 else g.float() for g in first.grads]
            inner = [c * (g * g.detach()).sum() for g, c in zip(wide, coef) if c]
            penalty = alpha * torch.stack(inner).sum() if inner else None
            if with_loss:
                step.acc.backward(first.loss if penalty is None else first.loss + penalty)
            elif penalty is not None:
                step.acc.backward(penalty, retain_graph=True)
            return
        coef = direction_scales(norms, self.args.gr_norm, radius)
        low_precision_weights = any(p.dtype not in (torch.float32, torch.float64) for p in step.params)
        restore = [p.detach().clone() for p in step.params] if low_precision_weights else None
        k = alpha / (radius * first.weight)
        try:
            if central:
                step.move(first.grads, coef, 1.0)
                with step.no_sync():
                    step.backward_at_first_masks(first.batch, first.weight, k / 2)
                step.move(first.grads, coef, -2.0)
                step.backward_at_first_masks(first.batch, first.weight, -k / 2)
            else:
                with torch.no_grad():
                    for g, b in zip(step.grads(), first.own):
                        g.sub_(b, alpha=k)  # −α·∇L_S(θ)·s/(r·w), this process's own term
                step.move(first.grads, coef, 1.0)
                step.backward_at_first_masks(first.batch, first.weight, k)
        finally:
            if restore is not None:  # low-precision weights: θ + r·u − r·u would round
                with torch.no_grad():
                    for p, saved in zip(step.params, restore):
                        p.copy_(saved)
            else:
                step.move(first.grads, coef, 1.0 if central else -1.0)

    def _low_precision(self, params: Sequence[torch.Tensor]) -> bool:
        """Whether the passes run in bf16/fp16 (this trainer's mixed precision, or the weights' dtype)."""
        dtypes = {p.dtype for p in params}
        mp = getattr(self.args, "mixed_precision", "no")  # this trainer's (accelerate's state is shared)
        return mp in ("bf16", "fp16") or bool(dtypes & {torch.bfloat16, torch.float16})
