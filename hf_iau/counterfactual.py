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

with P = (F̂ + δ·mean F̂)⁻¹ (``hf_iau.curvature.preconditioner``, δ = ``DAMPING``), F̂ the diagonal
empirical Fisher Σ_D g² (``hf_iau.curvature``: saved at training time, or from per-example gradients of
the forget set and a random retained sample S scaled to the retained set). J·P·G is a central finite
difference of the logits.

The scale c stands for 1/n and the rest of the curvature and is CALIBRATED on held-out data with the
same estimator: S, once removed, is never-seen data. S is cut into groups the size of F (at most
``MAX_GROUPS`` of them), each group removed as F is, and c is where the mean estimate over S reaches the mean held-out
loss (``calibrate``). Each forget estimate is then read through the monotone map that sends the
sample's estimates onto the held-out losses (``calibrated_targets``: the held-out quantile at the
estimate's interpolated rank among S's estimates; beyond S's range the estimate continues in its own
loss units, up or down, uncapped), and never falls below the example's current loss. A forget example
the retained data still supports (estimate below every removed sample row's) may thus stay below the
held-out losses; the shares beyond S's range are reported, not clipped.

A classifier's forget row whose estimated class c* (argmax of the moved logits) is not its label y gets a
second level, read from held-out rows rather than from the linear move (which under-predicts memorised rows:
mislabelled digits, estimate 2.0 against retrained losses of 9.2): the median of −log p(y | x_j) over the
held-out rows the model predicts as c* (``flipped_label_losses``; the caller takes the larger level).

Cost per request: |F| + |S| example-gradient passes (in batches through ``engine.backward``): the hooked
passes that measure F̂ give G_F and, passing S group by group, each group's G (kept while they fit in
``KEPT_GRADIENT_BYTES``, else |S| more passes; a saved curvature: plain passes), and 3(|F| + |S|)
forward passes. Multi-process: every process takes its share of each set; gradients and per-example
values are summed over processes, so every process gets the same targets.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .curvature import Curvature, ExampleGradients, damping_level, full_total, mean_filled, preconditioner, shard_like
from .kfac import KroneckerFactors, kronecker_solvers, without
from .losses import IGNORE_INDEX, batch_losses

if TYPE_CHECKING:
    from datasets import Dataset

    from .engine import Engine

logger = logging.getLogger(__name__)
Logits = Callable[[dict], tuple[torch.Tensor, torch.Tensor]]  # batch -> (logits, labels)
SCALES = np.concatenate([[0.0], np.geomspace(1e-9, 1e9, 73)])  # grid searched for c (0 = the unshifted loss)
MAX_GROUPS = 64  # the sample is removed in groups the size of F, at most this many (a tiny F: larger groups)
KEPT_GRADIENT_BYTES = 2 << 30  # the calibration groups' gradients are kept from the F̂ pass up to this size in all


@dataclass
class TargetEstimate:
    """Counterfactual loss targets of a forget set and what they cost."""

    targets: np.ndarray  # one loss target per forget row, in the row order of `forget`
    gradient_passes: float  # example-gradient passes spent (all processes)
    forward_passes: float
    diagnostics: dict[str, float] = field(default_factory=dict)
    curvature: Curvature | None = None  # F̂ measured on the rows (when none was given): reusable by later requests
    direction: list[torch.Tensor] | None = None  # P·G_F, the removal direction (θ_{−F} ≈ θ + scale·direction)
    losses: np.ndarray | None = None  # each forget row's current loss
    predicted: np.ndarray | None = None  # classifiers: each forget row's class under the estimated removal
    labels: np.ndarray | None = None  # classifiers: each forget row's label


def estimate_targets(
    engine: "Engine", forget: "Dataset", retain: "Dataset", sample_rows: Sequence[int],
    held_out_losses: Sequence[float], curvature: Curvature | None = None, kind: str = "diagonal",
    groups: Sequence[Sequence[int]] | None = None, leverage: bool = False, step_kind: str | None = None,
) -> TargetEstimate:
    """Counterfactual loss targets of every row of ``forget`` (see the module docstring).

    ``sample_rows``: the random retained rows S (indices into ``retain``, chosen by the caller); ``groups``: how S is
    removed for the calibration (a partition of ``sample_rows`` in its order; None: consecutive groups the size of F);
    ``held_out_losses``: per-example losses of never-seen rows; ``curvature``: F̂ saved at training time
    (``None``: measured on F and S); ``kind``: 'diagonal' F̂, or 'kfac' (``hf_iau.kfac``: Kronecker factors measured
    on F and S in the same passes; a saved diagonal is then not used; sharded models keep the diagonal).
    ``leverage``: each removed set (F, and each calibration group) is preconditioned by the curvature of the data
    that remains, (F̂ − Σ_{i∈set} g_i² + d)⁻¹ (with K-FAC, the factors less the set's own), the Newton step to the
    model retrained without it (see :func:`leave_out`). ``step_kind``: the curvature of the returned removal
    ``direction`` (the influence step) when it differs from ``kind`` ('kfac': factors measured in the same passes, a
    saved diagonal then not used; its own scale ``step_scale``, calibrated on the same groups at 2|S| more forward
    passes; not with ``leverage``). ``forget``/``retain`` hold model columns only."""
    s_rows, f_rows = _check(engine, forget, retain, sample_rows, held_out_losses)
    if groups is None:
        step = min(len(s_rows), max(len(f_rows), math.ceil(len(s_rows) / MAX_GROUPS)))
        groups = [s_rows[i : i + step] for i in range(0, len(s_rows), step)]
    groups = [[int(i) for i in g] for g in groups]
    if [i for g in groups for i in g] != s_rows or not all(groups):
        raise ValueError("groups must split sample_rows, in its order, into non-empty groups (or be None).")
    held_out = np.asarray(held_out_losses, dtype=np.float64)
    measured, factors = None, None
    kfac = kind == "kfac" and not engine.sharded
    step_kfac = step_kind == "kfac" and not kfac and not engine.sharded  # K-FAC for the step only
    if step_kfac and leverage:
        raise ValueError("a K-FAC influence step with leverage: use kind='kfac' (both) or leverage=False.")
    level = float(held_out.mean())
    measure = curvature is None or kfac or step_kfac
    hooks = ExampleGradients(engine.model, engine.params, KroneckerFactors() if kfac or step_kfac else None) if measure else None
    keep = not leverage and keeps_gradients(engine, groups)  # (the leave-out passes each group hooked, on its own)
    on_s = sample_pass(engine, retain, s_rows, groups if keep else None, hooks) if measure or keep else None
    if on_s is not None and on_s.loss >= level:  # retained rows already look never-seen: no removal moves them (c = 0)
        early = _at_current_losses(engine, forget, f_rows, retain, s_rows, held_out)
        if early is not None:
            early.diagnostics.update(saved_curvature=float(curvature is not None and not measure), leverage=float(leverage))
            return early
    kept = on_s.group_gradients if on_s is not None else None  # the calibration groups' G, when the pass kept them
    if measure:
        rows = fisher_from_rows(engine, forget, f_rows, retain, s_rows, kfac or step_kfac, on_sample=on_s)
        fisher, g_f, uncovered, factors, own_f = rows.fisher, rows.g_f, rows.uncovered, rows.factors, rows.own_f
        if not engine.sharded:
            measured = Curvature.of(engine.model, fisher, {"source": "rows", "rows": str(len(s_rows) + len(f_rows)),
                                                           "identity_curvature_fraction": f"{uncovered:.4g}"})
    else:
        fisher, uncovered = curvature.diagonal(engine.model), 0.0
        g_f, own_f = squared_group_gradient(engine, forget, f_rows) if leverage else (group_gradient(engine, forget, f_rows), None)
    passes = len(f_rows) + len(s_rows) * (1 + (on_s is not None and kept is None))  # S once more unless kept
    inv: list | None = None  # with leverage, each removed set gets its own preconditioner (leave_out) instead
    step_inv: list | None = None  # the influence step's, when its curvature differs
    left_out = (fisher, damping_level(fisher), factors) if leverage else None
    if not leverage:
        inv = preconditioner(fisher)
        if factors is not None:  # K-FAC where a weight has factors, the diagonal elsewhere, one damping level
            solvers = kronecker_solvers(engine.params, fisher, factors, damping_level(fisher))
            kron = [solvers.get(k, x) for k, x in enumerate(inv)]
            inv, step_inv = (inv, kron) if step_kfac else (kron, None)
    sample, step_sample = sample_curves(engine, retain, groups, inv, level, left_out, step_inv, kept)
    scale = calibrate(sample, SCALES, level)
    step_scale = scale if step_sample is None else calibrate(step_sample, SCALES, level)
    direction = precondition(g_f, leave_out(engine.params, own_f, *left_out) if leverage else inv)
    del fisher
    classes = engine.kind == "classification"
    fc = example_curves(engine, forget, f_rows, direction, [0.0, scale], classes)
    if step_inv is not None:
        direction = precondition(g_f, step_inv)
    s_est = at_scale(sample, SCALES, scale)
    targets, info = calibrated_targets(fc[:, 0], fc[:, 1], s_est, held_out)
    info.update(
        scale=scale, group_size=float(max(map(len, groups))), sample_size=float(len(s_rows)), held_out_loss=float(held_out.mean()),
        sample_loss=float(sample[:, 0].mean()), sample_estimate=float(s_est.mean()), forget_loss=float(fc[:, 0].mean()),
        estimate_mean=float(fc[:, 1].mean()), identity_curvature_fraction=uncovered,
        saved_curvature=float(curvature is not None and not step_kfac), leverage=float(leverage), step_scale=step_scale,
        step_kfac=float(step_kfac), at_level=0.0,
    )
    forwards = 3 * (len(s_rows) + len(f_rows)) + 2 * len(s_rows) * (step_sample is not None)
    return TargetEstimate(targets, float(passes), float(forwards), info, measured, direction,
                          fc[:, 0], fc[:, 2].astype(int) if classes else None, fc[:, 3].astype(int) if classes else None)


def _at_current_losses(engine: "Engine", forget: "Dataset", f_rows: list[int], retain: "Dataset", s_rows: list[int],
                       held_out: np.ndarray) -> TargetEstimate | None:
    """The estimate when the sample's current losses already reach the held-out level (the calibrated scale is 0):
    targets from the current losses alone, at |S| + |F| forward passes instead of F's gradients and the scale grid;
    None when the scale-0 curves do not confirm it (rounding at the level: the caller takes the full path)."""
    zero = [torch.zeros_like(p) for p in engine.params]
    sample = example_curves(engine, retain, s_rows, zero, [0.0])
    if calibrate(sample, [0.0], float(held_out.mean())) != 0.0:
        return None
    classes = engine.kind == "classification"
    fc = example_curves(engine, forget, f_rows, zero, [0.0], classes)
    targets, info = calibrated_targets(fc[:, 0], fc[:, 0], sample[:, 0], held_out)
    info.update(scale=0.0, step_scale=0.0, group_size=0.0, sample_size=float(len(s_rows)),
                held_out_loss=float(held_out.mean()), sample_loss=float(sample[:, 0].mean()),
                sample_estimate=float(sample[:, 0].mean()), forget_loss=float(fc[:, 0].mean()),
                estimate_mean=float(fc[:, 0].mean()), identity_curvature_fraction=0.0, step_kfac=0.0, at_level=1.0)
    return TargetEstimate(targets, float(len(s_rows)), float(len(s_rows) + len(f_rows)), info, None, None, fc[:, 0],
                          fc[:, 1].astype(int) if classes else None, fc[:, 2].astype(int) if classes else None)


def _check(engine: "Engine", forget: "Dataset", retain: "Dataset", sample_rows: Sequence[int],
           held_out_losses: Sequence[float]) -> tuple[list[int], list[int]]:
    """(sample rows, forget rows) after checking the inputs; ValueError naming the field and the fix."""
    if engine.kind not in ("causal_lm", "classification"):
        raise ValueError(
            f"counterfactual targets move a causal LM's or a single-label classifier's logits; this model's loss is "
            f"{engine.kind!r}. Use unlearn_targets='held_out_quantile' (per-row held-out levels) or 'none'."
        )
    s_rows = [int(i) for i in sample_rows]
    if not s_rows or len(set(s_rows)) != len(s_rows) or min(s_rows) < 0 or max(s_rows) >= len(retain):
        raise ValueError(f"sample_rows must be distinct indices into the retain set (0..{len(retain) - 1}), at least one.")
    held = np.asarray(held_out_losses, dtype=np.float64)
    if not len(held) or not np.isfinite(held).all():
        raise ValueError("held_out_losses must be the finite per-example losses of at least one held-out row.")
    if not len(forget):
        raise ValueError("the forget set is empty: nothing to estimate.")
    return s_rows, list(range(len(forget)))


def group_gradient(engine: "Engine", dataset: "Dataset", rows: Sequence[int],
                   hooks: ExampleGradients | None = None, losses: list[float] | None = None) -> list[torch.Tensor]:
    """G = Σ_{i∈rows} ∇ℓ_i summed over processes, in batches through ``engine.backward``; with ``hooks``, the
    per-example squared gradients of the same passes are added to ``hooks.squares`` (this process's rows); with
    ``losses`` = [sum, count], this process's rows' losses are added to it."""
    rows = list(rows)
    total = [torch.zeros_like(p, dtype=torch.float32) for p in engine.params]
    scale = engine.grad_scale()
    for batch in engine.batches(dataset, engine.shard(rows), len(rows)):
        engine.clear_grad()
        if hooks is not None:
            hooks.expect(int(batch["labels"].shape[0]))
        with engine.autocast():
            loss = batch_losses(engine.model, batch, engine.kind).per_example
        if losses is not None:
            losses[0] += float(loss.detach().double().sum())
            losses[1] += int(loss.shape[0])
        engine.backward(loss.sum())
        grads = [p.grad for p in engine.params]
        if hooks is not None:  # FSDP2: the backward multiplied by the world size, and .grad holds only a shard
            hooks.collect(scale * (engine.world if engine.sharded else 1), [None] * len(grads) if engine.sharded else grads)
        for t, g in zip(total, grads):
            if g is not None:
                t.add_(g.detach().float() / scale)
    engine.clear_grad()
    if not engine.sharded:  # an FSDP2 backward already summed over processes
        engine.sum_(total)
    return total


@dataclass
class SetCurvature:
    """A removed set's own share of the curvature: Σ_{i∈set} g_i² per parameter (None: no per-example gradient),
    and with K-FAC its own factors."""

    squares: list[torch.Tensor | None]
    factors: KroneckerFactors | None = None


@dataclass
class RowsFisher:
    """What the hooked passes over F and S measure (:func:`fisher_from_rows`)."""

    fisher: list[torch.Tensor]  # F̂ = (|D_r|/|S|)·Σ_S g² + Σ_F g² (the mean F̂ where a parameter has no per-example gradient)
    g_f: list[torch.Tensor]  # G_F
    uncovered: float  # share of parameter elements with identity curvature
    factors: KroneckerFactors | None  # with kfac: the Kronecker factors, weighted alike
    own_f: SetCurvature  # Σ_F g² alone (None where a parameter has no per-example gradient)


@dataclass
class SamplePass:
    """One pass over the calibration sample S (:func:`sample_pass`)."""

    group_gradients: list[list[torch.Tensor]] | None  # each group's G (None: passed as one set, nothing kept)
    loss: float  # the mean loss of S at the current weights, over all processes
    hooks: ExampleGradients | None  # the per-example squares (and factors) of S, when measured


def keeps_gradients(engine: "Engine", groups: Sequence[Sequence[int]] | None) -> bool:
    """Whether the calibration groups' gradients (float32, this process's parameters or shard) fit in
    ``KEPT_GRADIENT_BYTES``."""
    return groups is not None and len(groups) * sum(p.numel() * 4 for p in engine.params) <= KEPT_GRADIENT_BYTES


def sample_pass(engine: "Engine", retain: "Dataset", s_rows: list[int], groups: Sequence[Sequence[int]] | None,
                hooks: ExampleGradients | None = None) -> SamplePass:
    """|S| example-gradient passes over S (hooked with ``hooks``). With ``groups`` (a partition of ``s_rows``, in
    order; the caller checks :func:`keeps_gradients`), S is passed group by group and each group's gradient G is kept
    (summed over processes) for the calibration, so it needs no pass of its own."""
    kept: list[list[torch.Tensor]] | None = None if groups is None else []
    losses = [0.0, 0]
    with hooks if hooks is not None else contextlib.nullcontext():
        if kept is None:
            group_gradient(engine, retain, s_rows, hooks, losses)
        else:
            kept.extend(group_gradient(engine, retain, g, hooks, losses) for g in groups)
    total, count = engine.sum(losses)
    return SamplePass(kept, total / max(count, 1), hooks)


def fisher_from_rows(engine: "Engine", forget: "Dataset", f_rows: list[int], retain: "Dataset", s_rows: list[int],
                     kfac: bool = False, on_sample: SamplePass | None = None) -> RowsFisher:
    """F̂, G_F and the rest of :class:`RowsFisher` from |S| + |F| hooked example-gradient passes (S's from
    ``on_sample`` when given, a hooked :func:`sample_pass`, else one over S as a single set)."""
    if on_sample is None:
        on_sample = sample_pass(engine, retain, s_rows, None,
                                ExampleGradients(engine.model, engine.params, KroneckerFactors() if kfac else None))
    on_s = on_sample.hooks
    with ExampleGradients(engine.model, engine.params, KroneckerFactors() if kfac else None) as on_f:
        g_f = group_gradient(engine, forget, f_rows, on_f)
    weight = len(retain) / len(s_rows)
    factors = _summed_factors(engine, on_s.factors.merged(on_f.factors, weight)) if kfac else None
    uncovered = on_s.uncovered | on_f.uncovered
    full = [None if k in uncovered else weight * on_s.squares[k] + on_f.squares[k] for k in range(len(engine.params))]
    engine.sum_([f for f in full if f is not None])  # every process: its own rows' squares
    if uncovered:
        logger.warning("identity curvature (the mean Fisher) for %d parameter tensors without per-example gradients",
                       len(uncovered))
    filled, fraction = mean_filled(full, [p.shape for p in engine.params], [g.device for g in g_f])
    fisher = [shard_like(p, f.float()) for p, f in zip(engine.params, filled)]
    own = SetCurvature(_summed_squares(engine, on_f.squares, uncovered), _summed_factors(engine, on_f.factors) if kfac else None)
    return RowsFisher(fisher, g_f, fraction, factors, own)


def squared_group_gradient(engine: "Engine", dataset: "Dataset", rows: Sequence[int], kfac: bool = False
                           ) -> tuple[list[torch.Tensor], SetCurvature]:
    """(G, the set's own curvature) from the same hooked passes, summed over processes."""
    with ExampleGradients(engine.model, engine.params, KroneckerFactors() if kfac else None) as hooks:
        g = group_gradient(engine, dataset, rows, hooks)
    return g, SetCurvature(_summed_squares(engine, hooks.squares, hooks.uncovered),
                           _summed_factors(engine, hooks.factors) if kfac else None)


def _summed_factors(engine: "Engine", factors: KroneckerFactors) -> KroneckerFactors:
    """Every process's own rows' factors, summed over processes (in place)."""
    for k in sorted(factors.a):
        engine.sum_([factors.a[k], factors.s[k]])
    return factors


def _summed_squares(engine: "Engine", squares: Sequence[torch.Tensor | None], uncovered: set[int]
                    ) -> list[torch.Tensor | None]:
    """This process's per-example squares summed over processes, placed like the parameters (None: uncovered)."""
    own = [None if k in uncovered or sq is None else sq for k, sq in enumerate(squares)]
    engine.sum_([f for f in own if f is not None])
    return [None if f is None else shard_like(p, f.float()) for p, f in zip(engine.params, own)]


def leave_out(params: Sequence[torch.Tensor], own: SetCurvature, fisher: Sequence[torch.Tensor], damp: float,
              factors: KroneckerFactors | None = None) -> list:
    """P_set = (F̂ − Σ_{i∈set} g_i² + d)⁻¹: the damped curvature of the data left after removing the set (clamped at
    0; a parameter without per-example gradients keeps F̂); with ``factors``, K-FAC of the factors less the set's
    own (``kfac.without``) where a weight has them. Removing a set moves the optimum by H_rest⁻¹·G_set (a Newton
    step on the remaining loss from θ*, where its gradient is −G_set); F̂ stands for the full H, which for rows only
    the set constrains (memorised, mislabelled) is mostly the set's own curvature."""
    rest = [f if o is None else (f - o).clamp_min(0.0) for f, o in zip(fisher, own.squares)]
    inv: list = [1.0 / (f + damp) for f in rest]
    if factors is not None:
        solvers = kronecker_solvers(params, rest, without(factors, own.factors or KroneckerFactors()), damp)
        inv = [solvers.get(k, x) for k, x in enumerate(inv)]
    return inv


def sample_curves(engine: "Engine", retain: "Dataset", groups: list[list[int]], inv: Sequence | None,
                  level: float, left_out: tuple[Sequence[torch.Tensor], float, KroneckerFactors | None] | None = None,
                  step_inv: Sequence | None = None, gradients: Sequence[Sequence[torch.Tensor]] | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """[|S|, len(SCALES)]: each sample row's loss along the removal of its own group (P·G of the group), groups in
    order. Only where the sample's mean loss first reaches ``level`` is ever read (:func:`calibrate`, :func:`at_scale`),
    so a scale is computed only while that place is unproven: the losses are ≥ 0, so once the rows computed so far
    (earlier groups, plus one batch) sum to |S|·level at a scale, the mean reaches it there, and later scales are left
    +inf for the remaining rows of that batch and for every later group. With ``left_out`` = (F̂, d, K-FAC factors or
    None), each group is preconditioned by :func:`leave_out` of its own curvature (measured in the same hooked pass)
    instead of ``inv``. With ``step_inv``, the same rows' curves along each group's gradient preconditioned by it too
    (second array; else None): the influence step's own calibration, from the same gradient passes. ``gradients``:
    each group's G when already measured (:func:`fisher_from_rows`), else a pass over each group."""
    n = sum(len(g) for g in groups)
    enough = n * level * (1 + 1e-9) + 1e-12
    tallies = [_Tally() for _ in range(1 + (step_inv is not None))]
    for k, group in enumerate(groups):
        if left_out is None:
            g = group_gradient(engine, retain, group) if gradients is None else gradients[k]
            directions = [precondition(g, p) for p in ([inv, step_inv] if step_inv is not None else [inv])]
        else:
            g, own = squared_group_gradient(engine, retain, group, kfac=left_out[2] is not None)
            directions = [precondition(g, leave_out(engine.params, own, *left_out))]
        for tally, direction in zip(tallies, directions):
            last = tally.last
            curves = example_curves(engine, retain, group, direction, SCALES[:last], stop_above=enough - tally.running[:last])
            tally.add(np.pad(curves, ((0, 0), (0, len(SCALES) - last)), constant_values=np.inf), enough)
    out = [np.concatenate(t.parts) for t in tallies]
    return out[0], (out[1] if len(out) > 1 else None)


@dataclass
class _Tally:
    """One direction's sample curves so far: their running sum per scale and the scales still unproven."""

    running: np.ndarray = field(default_factory=lambda: np.zeros(len(SCALES)))
    last: int = len(SCALES)
    parts: list[np.ndarray] = field(default_factory=list)

    def add(self, curves: np.ndarray, enough: float) -> None:
        self.running = self.running + curves.sum(0)
        proven = np.flatnonzero(self.running >= enough)
        self.last = min(self.last, int(proven[0]) + 1) if len(proven) else self.last
        self.parts.append(curves)


def precondition(g: Sequence[torch.Tensor], inv: Sequence) -> list[torch.Tensor]:
    """P·G per parameter: elementwise for a diagonal entry, the entry applied for a K-FAC one."""
    return [b(a) if callable(b) else a * b for a, b in zip(g, inv)]


def example_curves(engine: "Engine", dataset: "Dataset", rows: Sequence[int], direction: Sequence[torch.Tensor],
                   scales: Sequence[float], classes: bool = False,
                   stop_above: float | Sequence[float] | None = None) -> np.ndarray:
    """[len(rows), len(scales) (+ 2 with ``classes``)] of :func:`shifted_losses` for rows of ``dataset``, assembled on
    every process (``stop_above``: see :func:`scaled_cross_entropy`)."""
    rows = list(rows)
    local = engine.shard(rows)
    offset = (engine.shard(list(range(len(rows)))) or [0])[0]

    def logits_of(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        with engine.autocast():
            out = engine.model(**{k: v for k, v in batch.items() if k != "labels"})
        return out.logits, batch["labels"].to(out.logits.device)

    values = shifted_losses(engine.params, direction, engine.batches(dataset, local, len(rows)), logits_of, scales,
                            engine.kind == "causal_lm", classes=classes, stop_above=stop_above)
    values = values[: len(local)]  # padding rows (FSDP2) come last
    out = np.zeros((len(rows), len(scales) + 2 * classes))
    out[offset : offset + len(local)] = values
    return np.asarray(engine.sum(out.ravel().tolist())).reshape(out.shape)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """Per-example mean cross-entropy ([B]): classifier logits [B, C], or causal-LM logits [B, T, V] with the
    one-token shift and ``-100`` labels ignored."""
    if not causal:
        return F.cross_entropy(logits.double(), labels.view(-1), reduction="none", ignore_index=IGNORE_INDEX)
    lg, lb = logits[:, :-1, :].double(), labels[:, 1:]
    tok = F.cross_entropy(lg.reshape(-1, lg.size(-1)), lb.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    mask = (lb != IGNORE_INDEX).to(tok.dtype)
    return (tok.view(lb.shape) * mask).sum(-1) / mask.sum(-1).clamp_min(1)


def scaled_cross_entropy(z: torch.Tensor, dz: torch.Tensor | None, labels: torch.Tensor, causal: bool,
                         scales: Sequence[float], stop_above: float | Sequence[float] | None = None,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, len(scales)] (float64): ``cross_entropy(z + s·dz, labels, causal)`` for every scale s (in the given order),
    at the labelled positions only, as logsumexp(a + s·b) with a = z − z_y, b = dz − dz_y taken in float64 and the
    logsumexp in ``dtype`` (float32: within ~1e-6 of float64 where the losses are O(1), at half the time). With
    ``stop_above`` (one level, or one per scale), the scales after the first one at which the batch's summed loss
    reaches it are not computed (+inf): see :func:`sample_curves`. ``dz=None``: no shift (every scale gives the
    unshifted loss, without the [positions, classes] work of the shift)."""
    if causal:
        lb = labels[:, 1:]
        at = (lb != IGNORE_INDEX).nonzero(as_tuple=True)
        z, y, example = z[:, :-1][at], lb[at], at[0]
        dz = None if dz is None else dz[:, :-1][at]
    else:
        y = labels.view(-1)
        example = (y != IGNORE_INDEX).nonzero(as_tuple=True)[0]
        z, y = z[example], y[example]
        dz = None if dz is None else dz[example]
    n_ex = labels.shape[0]
    a = (z.double() - z.double().gather(-1, y[:, None])).to(dtype)  # the label's logit and shift are 0
    b = None if dz is None else (dz.double() - dz.double().gather(-1, y[:, None])).to(dtype)
    zeros = torch.zeros(n_ex, dtype=torch.float64, device=z.device)
    count = zeros.index_add(0, example, torch.ones_like(example, dtype=torch.float64)).clamp_min(1) if causal else 1
    levels = np.broadcast_to(np.inf if stop_above is None else np.asarray(stop_above, dtype=np.float64), (len(scales),))
    out = torch.full((n_ex, len(scales)), math.inf, dtype=torch.float64, device=z.device)
    shifted = None if b is None else torch.empty_like(a)
    for k, s in enumerate(np.asarray(scales, dtype=np.float64).tolist()):
        tok = torch.logsumexp(a if b is None else torch.add(a, b, alpha=s, out=shifted), -1).double()
        out[:, k] = zeros.index_add(0, example, tok) / count
        if stop_above is not None and float(out[:, k].sum()) >= levels[k]:  # (a device sync: only when asked)
            break
    return out


@torch.no_grad()
def shifted_losses(
    params: Sequence[torch.nn.Parameter], direction: Sequence[torch.Tensor], batches: Iterable[dict],
    logits_of: Logits, scales: Sequence[float], causal: bool, rel_step: float = 1e-3, classes: bool = False,
    stop_above: float | Sequence[float] | None = None,
) -> np.ndarray:
    """[examples, len(scales)]: CE(z + s·J·d, y) for every example and scale s, J·d a central difference of the
    logits along ``direction`` (θ is restored exactly). ``classes`` (classifiers): two more columns, the class
    argmax(z + s·J·d) at the last scale and the label y. ``stop_above``: see :func:`scaled_cross_entropy`."""
    d_norm = math.sqrt(sum(full_total(d.double().pow(2).sum()) for d in direction))
    t_norm = math.sqrt(sum(full_total(p.detach().double().pow(2).sum()) for p in params))
    eps = rel_step * max(t_norm, 1.0) / d_norm if d_norm > 0 and math.isfinite(d_norm) else 0.0
    saved = [p.detach().clone() for p in params]

    def at(shift: float, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        for p, s, d in zip(params, saved, direction):
            p.copy_(s + shift * d.to(p.dtype) if shift else s)
        return logits_of(batch)

    rows: list[np.ndarray] = []
    try:
        for batch in batches:
            z0, y = at(0.0, batch)
            z0 = z0.double()
            dz = (at(eps, batch)[0].double() - at(-eps, batch)[0].double()) / (2 * eps) if eps > 0 else None
            cols = list(scaled_cross_entropy(z0, dz, y, causal, scales, stop_above).unbind(-1))
            if classes:
                cols += [(z0 if dz is None else z0 + float(scales[-1]) * dz).argmax(-1).double(), y.view(-1).double()]
            rows.append(torch.stack(cols, -1).cpu().numpy())
    finally:
        for p, s in zip(params, saved):
            p.copy_(s)
    return np.concatenate(rows, 0) if rows else np.zeros((0, len(scales) + 2 * classes))


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


def calibrated_targets(losses: Sequence[float], estimates: Sequence[float], sample_estimates: Sequence[float],
                       held_out: Sequence[float]) -> tuple[np.ndarray, dict[str, float]]:
    """Targets max(ℓ_i, m(ℓ̂_i)), m the monotone map sending the sorted sample estimates s_(k) to the held-out
    quantiles Q((k − ½)/|S|), linear between them and continued with slope 1 beyond s_(1) and s_(|S|).
    Returns the targets and the shares above/below the sample's range and at the current loss."""
    ell = np.asarray(losses, dtype=np.float64)
    e = np.asarray(estimates, dtype=np.float64)
    s = np.sort(np.asarray(sample_estimates, dtype=np.float64))
    q = np.quantile(np.asarray(held_out, dtype=np.float64), (np.arange(len(s)) + 0.5) / len(s))
    mapped = np.interp(e, s, q)
    mapped = np.where(e > s[-1], q[-1] + (e - s[-1]), np.where(e < s[0], q[0] - (s[0] - e), mapped))
    mapped = np.where(np.isfinite(mapped), mapped, ell)
    targets = np.maximum(mapped, ell)
    info = {
        "estimate_rank": float(np.mean([(s < x).mean() for x in e])),  # mean share of the sample's estimates below
        "above_sample_fraction": float((e > s[-1]).mean()),  # extrapolated upward (no cap)
        "below_sample_fraction": float((e < s[0]).mean()),
        "at_current_loss_fraction": float((mapped <= ell).mean()),
        "below_held_out_fraction": float((targets < q[0]).mean()),
        "target_mean": float(targets.mean()),
    }
    if info["above_sample_fraction"] > 0.25:
        logger.warning("%.0f%% of the forget set is estimated above every removed sample row: their targets are "
                       "extrapolated beyond the held-out losses (not capped)", 100 * info["above_sample_fraction"])
    return targets, info


def class_log_probs(
    engine: "Engine", dataset: "Dataset", rows: Sequence[int], features: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """[len(rows), classes] log-softmax of a classifier's logits on rows of ``dataset`` (forward only, eval mode),
    assembled on every process. ``features``: also each row's input embedding (:func:`input_features`), as
    (log_probs, features)."""
    rows = list(rows)
    local = engine.shard(rows)
    offset = (engine.shard(list(range(len(rows)))) or [0])[0]
    parts, feats, was_training = [], [], engine.model.training
    engine.model.eval()
    with torch.no_grad():
        for batch in engine.batches(dataset, local, len(rows)):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with engine.autocast():
                out = engine.model(**inputs, output_hidden_states=features)
            parts.append(torch.log_softmax(out.logits.double(), -1).cpu().numpy())
            if features:
                feats.append(input_features(out.hidden_states[0], inputs.get("attention_mask")).cpu().numpy())
    engine.model.train(was_training)
    n = len(local)

    def assembled(blocks: list[np.ndarray], width: int) -> np.ndarray:
        full = np.zeros((len(rows), width))
        if blocks:
            full[offset : offset + n] = np.concatenate(blocks, 0)[:n]
        return np.asarray(engine.sum(full.ravel().tolist())).reshape(full.shape)

    log_probs = assembled(parts, int(engine.model.config.num_labels))
    if not features:
        return log_probs
    width, having = engine.sum([float(feats[0].shape[1]), 1.0] if feats else [0.0, 0.0])  # (a process may hold no row)
    return log_probs, assembled(feats, int(round(width / max(having, 1.0))))


def input_features(embedded: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[rows, dim] of a model's first hidden state (its input embedding: the stem's feature map, flattened — a mean
    over space loses the shape, and random digits then look alike —, or the token embeddings, mean over the attended
    tokens): what a row looks like before the model's memory of it."""
    h = embedded.double()
    if h.dim() == 4:  # [B, C, H, W]
        return h.flatten(1)
    if h.dim() == 3:  # [B, T, D]
        m = torch.ones(h.shape[:2], dtype=h.dtype, device=h.device) if attention_mask is None else attention_mask.to(h.dtype)
        return (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1)
    return h.reshape(h.shape[0], -1)


def neighbour_label_losses(forget_features: np.ndarray, labels: np.ndarray, held_out_features: np.ndarray,
                           held_out_log_probs: np.ndarray, k: int = 10) -> np.ndarray:
    """Per forget row with label y whose ``k`` nearest held-out rows (cosine similarity of input features) are mostly
    (more than half) predicted as one class c ≠ y: the median of −log p(y | x_j) over those neighbours predicted c —
    what the label costs on never-seen rows that look like the row and that the model puts elsewhere. NaN where the
    neighbours agree on y, or on no class."""
    f = np.asarray(forget_features, dtype=np.float64)
    h = np.asarray(held_out_features, dtype=np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    h = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
    k = min(k, len(h))
    near = np.argsort(-(f @ h.T), axis=1, kind="stable")[:, :k]
    lp = np.asarray(held_out_log_probs, dtype=np.float64)
    predicted = lp.argmax(1)
    out = np.full(len(f), np.nan)
    for i, (rows, y) in enumerate(zip(near, np.asarray(labels, dtype=int))):
        classes, counts = np.unique(predicted[rows], return_counts=True)
        c = classes[counts.argmax()]
        if 2 * counts.max() > k and c != y and 0 <= y < lp.shape[1]:
            out[i] = float(np.median(-lp[rows[predicted[rows] == c], y]))
    return out


def flipped_label_losses(predicted: np.ndarray, labels: np.ndarray, held_out_log_probs: np.ndarray) -> np.ndarray:
    """Per forget row whose estimated class c* differs from its label y: the median of −log p(y | x_j) over the
    held-out rows j the model predicts as c* — what the label costs on never-seen rows of the class the estimate
    says the row belongs to; NaN where c* = y or no held-out row is predicted c*."""
    lp = np.asarray(held_out_log_probs, dtype=np.float64)
    pred_h = lp.argmax(1)
    out = np.full(len(labels), np.nan)
    for i, (c, y) in enumerate(zip(np.asarray(predicted, int), np.asarray(labels, int))):
        rows = pred_h == c
        if c != y and rows.any() and 0 <= y < lp.shape[1]:
            out[i] = float(np.median(-lp[rows, y]))
    return out


__all__ = ["TargetEstimate", "at_scale", "calibrate", "calibrated_targets", "class_log_probs", "cross_entropy",
           "estimate_targets", "flipped_label_losses", "group_gradient", "input_features", "neighbour_label_losses",
           "sample_curves", "scaled_cross_entropy", "shifted_losses"]
