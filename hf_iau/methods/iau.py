"""IAU: steps on  w_r·mean ℓ(R_t) − w_f·Σ_{i active} ℓ_i / N(D_f),  one method on the common lifecycle.

Each mean is over the whole forget set (true token/example counts N) and the step's retain
sample R_t, so batching and the number of processes do not change the result. Options are the
``IAUConfig`` ``unlearn_*`` fields, overridable per call (``trainer.unlearn(forget, unlearn_steps=5)``);
nothing writes ``trainer.args``.

Targets (``unlearn_targets``) decide which forget rows the ascent pushes at each step: ``counterfactual``
— those whose loss is short (by more than 1%) of their estimated loss under the model retrained
without the forget set (``hf_iau.counterfactual``); ``held_out_quantile`` — short of the held-out loss
of their rank; ``flip`` — still predicted correctly; ``none`` — every row (reference parity). A row that
reached its target and fell back is pushed again (chosen on the TUNE scenario mislabelled: gap to the
retrains 0.181 ± 0.039 → 0.092 ± 0.026 over 5 seeds, at 15% instead of 10% of a retrain's passes;
held-out poison_text 0.095 → 0.095, qa_lm 0.046 → 0.044; benchmarks/results/removal_quick.md).
The stop (``unlearn_stop="targets"``) follows the targets: once at most ``unlearn_stop_tolerance`` of
the rows are short of their target (else after ``unlearn_steps``) — never a stall count, which fired
while rows were still far from their targets. Cost per step: |D_f| + |R_t| gradient passes; an
optional runaway guard undoes a step that breaks the retain loss and retries with a smaller one.

The targets follow the model (``unlearn_follow_held_out``, default): a target is a held-out level of the model as it
was, so at every step the mean loss of 32 seeded held-out rows is measured again and every target moves by its change
since the request began (clipped at 0). Tune block: mislabelled's validation gap −0.012 (test 0.071 → 0.059);
held-out (test): privacy 0.137 → 0.057, outlier_vision 0.141 → 0.116, lora_text 0.131 → 0.157 worse (the held-out
losses fall below their start as the steps repair the model, and its wrongly labelled rows stop under-forgotten;
benchmarks/results/tracking_targets_decision.md).

Two more options, off by default (``benchmarks/results/land_neighbour_decision.md``). ``unlearn_land``: a row past
its target by more than 1% is pulled back (descent) while short rows are pushed, and the stop counts both. By default
92–100% of the rows end > 10% past their target, because the steps that lift the last short rows throw the others
past. ``unlearn_neighbour_targets`` (classifiers): a row whose 10 nearest held-out rows in the input embedding are
mostly predicted as another class is held at least to its label's cost on them. The first-order estimate
under-predicts memorised mislabelled rows (2.0 against the retrains' 9.2). Landing alone is worse on mislabelled,
whose targets are low. With v1 of the levels the pair passed the tune and held-out blocks, but v1 over-forgets random
image rows; v2, which fixes that, is worse on mislabelled by 0.006 against a floor of 0.005.

With ``unlearn_flipped_targets`` (off by default), a classifier's row whose estimated class is not its label is held
at least to what its label costs on held-out rows of that class (``IAURun.flipped_levels``; tune block, validation:
mislabelled 0.060 → 0.051; held-out: class_vision 0.016 → 0.035 and lora_text 0.130 → 0.157, worse;
benchmarks/results/flipped_targets_decision.md). Rows at their target leave the
backward pass (checked forward only each step, pushed again when they fall back): the same update for fewer passes.
Three more options, off by default on their measured evidence: ``unlearn_stop="mean_target"`` (also stop once the
forget set's mean loss reaches its mean target), ``unlearn_retain_restore`` (descend only on retained rows whose
loss rose above their pre-request loss) and ``unlearn_target_group_column`` (calibrate the targets on removing whole
entities, e.g. authors, one group per entity; benchmarks/results/target_group_decision.md). With
``unlearn_retain_label_share`` (classifiers, 0 by default) a share of each step's retain sample carries the forget rows'
labels, where the ascent's damage falls (``IAURun.retain_rows``; benchmarks/results/label_share_decision.md).

Before the steps, with counterfactual targets, the influence step θ ← θ + λ·c·P·G_F takes a share λ
(``unlearn_influence_step``, 0.5) of the removal step the estimate itself predicts, at no extra pass; it
is skipped when the targets already hold, and halved (then dropped) while it leaves the retain sample's
mean loss above the held-out level. Chosen on the tune block (validation gap, 3 seeds: mislabelled
0.085 → 0.060); held-out, 5 seeds: class_vision 0.063 → 0.015, outlier_vision 0.184 → 0.122, qa_lm
0.044 → 0.034, canary 0.001 → 0.002, poison_text 0.095 → 0.146 (benchmarks/results/influence_step_decision.md).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from datasets import Dataset

from ..config import UNLEARNING_FIELDS, check_fields
from ..counterfactual import (TargetEstimate, class_log_probs, estimate_targets, flipped_label_losses,
                              neighbour_label_losses)
from ..curvature import full_total
from ..engine import LABEL_COLUMNS
from ..lifecycle import Mask, Request, make_optimizer
from ..losses import BatchLoss
from ..result import BudgetError, Stats, UnlearningError, UnlearningResult
from . import register_method

if TYPE_CHECKING:
    from ..trainer import IAUTrainer

HELD_OUT_STREAM = 2**31 - 1  # rng streams of the held-out sample and of the targets' retained sample
TARGET_SAMPLE_STREAM = 2**31 - 2  # (the steps' retain samples use the step number)
REACHED = 0.01  # a row is at its target once its loss is within 1% of it
NEIGHBOURS = 10  # unlearn_neighbour_targets: held-out rows nearest to each forget row
FOLLOW_ROWS = 32  # unlearn_follow_held_out: held-out rows re-measured at every step
FOLLOW_STREAM = 2**31 - 3  # rng stream of those rows
LABEL_STREAM = 2**31 - 4  # unlearn_retain_label_share: rng stream of the label-matched retain rows (with the step)
INFLUENCE_HALVINGS = 3  # an influence step that leaves the retained rows looking unseen is retried at λ/2, λ/4, λ/8
_OPTION_NAMES = set(UNLEARNING_FIELDS) - {"gr_alpha", "gr_mode", "gr_norm", "seed", "unlearn_seed", "unlearn_batch_size"}


def iau_options(args: Any, **overrides: Any) -> dict[str, Any]:
    """The unlearning options of ``args`` with ``overrides`` (``unlearn_*`` names), checked like IAUConfig."""
    from ..config import ALIASES

    renamed = {ALIASES[k][0] if k in ALIASES else k: (ALIASES[k][1](v) if k in ALIASES else v) for k, v in overrides.items()}
    unknown = sorted(set(renamed) - _OPTION_NAMES)
    if unknown:
        raise ValueError(f"iau: unknown option(s) {unknown}; use IAUConfig unlearning fields: {sorted(_OPTION_NAMES)}.")
    options = {name: getattr(args, name) for name in _OPTION_NAMES} | renamed
    check_fields(options, "iau")
    return options


@register_method("iau")
def iau(
    trainer: "IAUTrainer",
    forget_dataset: Dataset,
    retain_dataset: Dataset | None = None,
    budget: float | None = None,
    *,
    held_out_dataset: Dataset | None = None,
    allow_noop: bool = False,
    **options: Any,
) -> UnlearningResult:
    """IAU on ``forget_dataset`` with ``options`` overriding the IAUConfig ``unlearn_*`` fields; under a ``budget``
    (example-gradient passes) the steps are capped at ⌊budget / step cost⌋."""
    opts = iau_options(trainer.args, **options)
    req = Request("iau", trainer, forget_dataset, retain_dataset, budget, held_out_dataset=held_out_dataset,
                  allow_noop=allow_noop, retain_weight=opts["unlearn_retain_weight"], uses_held_out=True)
    if budget is not None:
        n_r = len(req.retain) if opts["unlearn_retain_sample_size"] is None else min(opts["unlearn_retain_sample_size"], len(req.retain))
        cost = len(req.forget) + n_r
        steps = min(opts["unlearn_steps"], int(budget // cost))
        if steps < 1:
            raise BudgetError(
                f"budget={budget:g} example-gradient passes cannot pay for one IAU step ({cost} passes); "
                "raise the budget or set unlearn_retain_sample_size."
            )
        opts["unlearn_steps"] = steps
    return IAURun(req, opts).run()


@dataclass
class Targets:
    """Which forget rows still take part in the ascent (see the module docstring)."""

    mode: str
    targets: np.ndarray | None = None  # per forget row (loss modes)
    land: bool = False  # loss modes: rows past their target are pulled back (unlearn_land)
    base: np.ndarray | None = None  # with unlearn_follow_held_out: the targets before any shift
    by: float = 0.0  # and the last shift

    def mask(self, bl: BatchLoss, rows: list[int]) -> torch.Tensor:
        """1 for rows still pushed: short of their target (loss modes) or still predicted correctly (flip); all for
        'none'; with ``land``, −1 for rows past their target (pulled back). A row that reached its target and fell
        back is pushed again."""
        ones = torch.ones_like(bl.loss_sum)
        if self.mode == "none" or (self.mode == "flip" and bl.correct is None):
            return ones
        if self.mode == "flip":
            return (bl.correct > 0.5).to(ones.dtype)
        losses = bl.per_example.detach().double().cpu().numpy()
        sign = self.short(losses, rows).astype(np.float64) - self.past(losses, rows)
        return torch.as_tensor(sign, dtype=ones.dtype, device=ones.device)

    def shift(self, by: float) -> None:
        """Loss modes: every target becomes its value at the start of the request plus ``by`` (at least 0)."""
        if self.base is None:
            self.base = np.array(self.targets, dtype=np.float64)
        self.by = float(by)
        self.targets = np.maximum(self.base + by, 0.0)

    def short(self, losses: np.ndarray, rows: list[int] | None = None) -> np.ndarray:
        """Loss modes: which rows (all, or ``rows``) are short of their target by more than ``REACHED``."""
        targets = self.targets if rows is None else self.targets[rows]
        return losses < targets * (1 - REACHED)

    def past(self, losses: np.ndarray, rows: list[int] | None = None) -> np.ndarray:
        """With ``land``: which rows are past their target by more than ``REACHED`` (none without)."""
        targets = self.targets if rows is None else self.targets[rows]
        return (losses > targets * (1 + REACHED)) if self.land else np.zeros(len(losses), dtype=bool)

    def off(self, losses: np.ndarray, rows: list[int] | None = None) -> np.ndarray:
        """Rows still taking part in the steps: short of their target, or (``land``) past it."""
        return self.short(losses, rows) | self.past(losses, rows)


class IAURun:
    """The IAU loop on one :class:`~hf_iau.lifecycle.Request` with resolved options."""

    def __init__(self, req: Request, opts: dict[str, Any]) -> None:
        self.req, self.opts = req, opts
        self.n_forget = len(req.forget)
        self.info: dict[str, float] = {}
        self.estimate: TargetEstimate | None = None
        self.held_rows: list[int] = []  # the held-out sample's rows
        self._held_classes: tuple[np.ndarray, np.ndarray | None] | None = None  # (held_out_classes)
        self.held_losses = np.zeros(0)  # the held-out sample's losses before any change
        self.follow: tuple[list[int], float] | None = None  # (rows, their mean loss before any change): follow_rows
        self._label_pools: tuple[list[np.ndarray], np.ndarray] | None = None  # (pools, forget rows' pool) for retain_rows

    # --- targets -------------------------------------------------------------------------
    def resolve_targets(self) -> Targets:
        """Targets of ``unlearn_targets``; the loss modes need held-out data and refuse without it."""
        req, mode = self.req, self.opts["unlearn_targets"]
        targets = Targets("flip" if mode == "flip" else "none" if mode == "none" else "loss", land=self.opts["unlearn_land"])
        if mode in ("none", "flip"):
            return targets
        if req.held_out is None or len(req.held_out) == 0:
            raise ValueError(
                f"unlearn_targets={mode!r} needs held-out data (what a never-seen row looks like): pass "
                "`eval_dataset` to the trainer or `held_out_dataset=` to unlearn(), or choose unlearn_targets='flip' "
                "(classifiers) or 'none' explicitly."
            )
        held = self.held_out_losses()
        if mode == "held_out_quantile":
            losses = req.engine.per_example(req.forget, range(self.n_forget))["loss"]
            req.fwd_passes += self.n_forget
            order = np.argsort(losses, kind="stable")
            levels = np.quantile(np.sort(held), (np.arange(self.n_forget) + 0.5) / self.n_forget)
            targets.targets = np.empty(self.n_forget)
            targets.targets[order] = levels
            return targets
        rows, groups = self.calibration_rows(min(self.opts["unlearn_target_sample_size"], len(req.retain)))
        kind = self.opts["unlearn_curvature"]
        saved = req.curvature
        if saved is not None and saved.meta.get("source") == "training" and kind != "training":
            saved = None  # the mini-batch estimate from training: only when asked (saved_curvature_decision.md)
        estimate = estimate_targets(req.engine, req.forget, req.retain, rows, held, curvature=saved,
                                    kind="diagonal" if kind == "training" else kind, groups=groups,
                                    leverage=self.opts["unlearn_leverage"],
                                    step_kind=self.opts["unlearn_influence_curvature"])
        self.estimate = estimate
        req.curvature_used = saved  # recorded in the ledger: the update depends on it
        req.curvature = saved or estimate.curvature or req.curvature  # measured on rows: later requests reuse it
        req.grad_passes += estimate.gradient_passes
        req.fwd_passes += estimate.forward_passes
        self.info.update({f"target_{k}": float(v) for k, v in estimate.diagnostics.items()})
        # a never-seen row is at most as surprising as the most surprising held-out row: the linear estimate's
        # extrapolation beyond it (losses of 20–110 on poisoned digits whose retrained loss is ~9) is not trusted
        cap = float(np.max(held))
        raw = np.asarray(estimate.targets, dtype=np.float64)
        self.info["target_capped_fraction"] = float(np.mean(raw > cap))
        targets.targets = np.maximum(np.minimum(raw, cap), np.maximum(self.flipped_levels(estimate), self.neighbour_levels(estimate)))
        return targets

    def calibration_rows(self, size: int) -> tuple[list[int], list[list[int]] | None]:
        """(rows, groups): the retained rows whose removal calibrates the targets, and how they are removed. A seeded
        sample of ``size`` rows, removed in the estimate's default groups (None); with ``unlearn_target_group_column``,
        whole entities in a seeded order until there are ``size`` rows, each entity removed as its own group."""
        req, column = self.req, self.opts["unlearn_target_group_column"]
        if column is None:
            return req.retain_sample(size, TARGET_SAMPLE_STREAM), None
        if column not in req.retain_raw.column_names:
            raise ValueError(
                f"unlearn_target_group_column={column!r} is not a column of the retain set (it has "
                f"{req.retain_raw.column_names}); add the entity of each row as a column, or set it to None."
            )
        members: dict[str, list[int]] = {}
        for i, value in enumerate(req.retain_raw[column]):
            members.setdefault(str(value), []).append(i)
        entities, picked = list(members.values()), []
        for k in req.rng(TARGET_SAMPLE_STREAM).permutation(len(entities)):
            picked.append(entities[int(k)])
            if sum(map(len, picked)) >= size:
                break
        return [i for g in picked for i in g], picked

    def flipped_levels(self, estimate: TargetEstimate) -> np.ndarray:
        """With ``unlearn_flipped_targets``, classifiers: a forget row whose estimated class c* is not its label y is
        held to what y costs on held-out rows predicted as c* (``counterfactual.flipped_label_losses``; the estimate
        gives the class, held-out rows the size of the loss, which the linear estimate under-predicts for memorised
        rows); 0 elsewhere."""
        if estimate.predicted is None or not self.opts["unlearn_flipped_targets"]:
            return np.zeros(self.n_forget)
        log_probs, _ = self.held_out_classes()
        levels = flipped_label_losses(estimate.predicted, estimate.labels, log_probs)
        flipped = np.isfinite(levels)
        self.info.update(target_flipped_fraction=float(flipped.mean()),
                         target_flipped_level=float(levels[flipped].mean()) if flipped.any() else 0.0)
        return np.where(flipped, levels, 0.0)

    def neighbour_levels(self, estimate: TargetEstimate) -> np.ndarray:
        """With ``unlearn_neighbour_targets``, classifiers: what a forget row's label costs on its nearest held-out
        rows when most of them are predicted as another class (``counterfactual.neighbour_label_losses``); 0
        elsewhere."""
        if estimate.labels is None or not self.opts["unlearn_neighbour_targets"]:
            return np.zeros(self.n_forget)
        req = self.req
        held_lp, held_x = self.held_out_classes()
        _, forget_x = class_log_probs(req.engine, req.forget, range(self.n_forget), features=True)
        req.fwd_passes += self.n_forget
        levels = neighbour_label_losses(forget_x, estimate.labels, held_x, held_lp, k=NEIGHBOURS)
        found = np.isfinite(levels)
        self.info.update(target_neighbour_fraction=float(found.mean()),
                         target_neighbour_level=float(levels[found].mean()) if found.any() else 0.0)
        return np.where(found, levels, 0.0)

    def held_out_classes(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(log-probs, input features or None) of the held-out sample, one forward pass shared by the flipped and the
        neighbour levels (features only when the neighbour levels are on)."""
        if self._held_classes is None:
            req, features = self.req, bool(self.opts["unlearn_neighbour_targets"])
            out = class_log_probs(req.engine, req.held_out, self.held_rows, features=features)
            self._held_classes = out if features else (out, None)
            req.fwd_passes += len(self.held_rows)
        return self._held_classes

    def held_out_losses(self) -> np.ndarray:
        """Per-row losses of a seeded sample of the held-out data (the 'never seen' level)."""
        req = self.req
        n = min(len(req.held_out), self.opts["unlearn_held_out_sample_size"])
        idx = sorted(req.rng(HELD_OUT_STREAM).choice(len(req.held_out), size=n, replace=False).tolist())
        self.held_rows = idx
        out = req.engine.per_example(req.held_out, idx)
        req.fwd_passes += n
        self.held_losses = np.asarray(out["loss"], dtype=np.float64)
        req.held_out_loss = float(out["loss"].mean())
        self.info["held_out_loss"] = req.held_out_loss
        if "correct" in out:
            self.info["held_out_accuracy"] = float(out["correct"].mean())
        return out["loss"]

    def follow_rows(self, targets: Targets) -> None:
        """With ``unlearn_follow_held_out`` and loss targets: a seeded subset of ``FOLLOW_ROWS`` rows of the held-out
        sample and their mean loss before any change, which :meth:`follow_held_out` compares each step with."""
        if not self.opts["unlearn_follow_held_out"] or targets.mode != "loss" or not len(self.held_rows):
            return
        k = min(FOLLOW_ROWS, len(self.held_rows))
        pick = np.sort(self.req.rng(FOLLOW_STREAM).choice(len(self.held_rows), size=k, replace=False))
        self.follow = ([self.held_rows[i] for i in pick], float(self.held_losses[pick].mean()))

    def follow_held_out(self, targets: Targets) -> float | None:
        """Move every target by the change of the followed held-out rows' mean loss since the request began (a
        target is a held-out level of the model as it is); returns the shift, None when not following."""
        if self.follow is None:
            return None
        rows, before = self.follow
        now = float(self.req.engine.per_example(self.req.held_out, rows)["loss"].mean())
        self.req.fwd_passes += len(rows)
        targets.shift(now - before)
        return now - before

    @torch.no_grad()
    def influence_step(self, targets: Targets) -> None:
        """θ ← θ + λ·c·P·G_F (λ = ``unlearn_influence_step``): a part of the removal step the targets estimate;
        none when the targets already hold (at most ``unlearn_stop_tolerance`` of the rows short: nothing to remove).
        Retained rows must still look seen: while the retain sample's mean loss after the step is above the held-out
        level, the step is undone and λ halved (at most ``INFLUENCE_HALVINGS`` times, then no step)."""
        req, est, lam = self.req, self.estimate, self.opts["unlearn_influence_step"]
        if lam == 0 or est is None or est.direction is None:
            return
        if np.mean(targets.short(est.losses)) <= self.opts["unlearn_stop_tolerance"]:
            return
        direction, est.direction = est.direction, None
        norm = math.sqrt(sum(full_total(d.double().pow(2).sum()) for d in direction))
        for _ in range(INFLUENCE_HALVINGS + 1):
            c = lam * est.diagnostics["step_scale"]
            for p, d in zip(req.params, direction):
                p.add_(d.to(p.dtype), alpha=c)
            after = req.evaluate(req.retain, req.retain_eval) if req.retain_eval else Stats()
            if after.count == 0 or after.mean_loss <= req.held_out_loss:
                self.info.update(influence_step_lambda=lam, influence_step_norm=c * norm)
                return
            req.engine.restore(req.original)
            lam /= 2
        self.info.update(influence_step_lambda=0.0, influence_step_norm=0.0)

    # --- the retain sample -----------------------------------------------------------------
    def retain_rows(self, step: int) -> list[int]:
        """The retained rows of ``step``'s descent term: the request's seeded sample; with ``unlearn_retain_label_share``
        s > 0 (single-label classifiers), a share s of the sample is drawn from retained rows that carry a forget row's
        label (each slot takes the label of a forget row drawn at random, without repeating a row) and the rest
        uniformly, seeded by (seed, request index, ``LABEL_STREAM``, step)."""
        req, o = self.req, self.opts
        size, share = o["unlearn_retain_sample_size"], o["unlearn_retain_label_share"]
        pools = self.label_pools() if share > 0 and size is not None and size < len(req.retain) else None
        if pools is None:
            return req.retain_sample(size, step)
        by_label, forget_pool = pools
        rng = req.rng(LABEL_STREAM, step)
        drawn = np.bincount(forget_pool[rng.integers(0, len(forget_pool), size=int(round(share * size)))],
                            minlength=len(by_label))
        picked = [rng.choice(by_label[k], size=min(int(n), len(by_label[k])), replace=False)
                  for k, n in enumerate(drawn) if n > 0]
        chosen = np.zeros(len(req.retain), dtype=bool)
        for rows in picked:
            chosen[rows] = True
        rest = rng.permutation(np.flatnonzero(~chosen))[: size - int(chosen.sum())]
        chosen[rest] = True
        return np.flatnonzero(chosen).tolist()

    def label_pools(self) -> tuple[list[np.ndarray], np.ndarray] | None:
        """(retained rows of each label, each forget row's label index) for a single-label classifier whose forget
        rows share a label with some retained row (only those forget rows count); None otherwise."""
        if self._label_pools is None:
            req = self.req
            column = next((c for c in LABEL_COLUMNS if c in req.retain.column_names and c in req.forget.column_names), None)
            if req.engine.kind != "classification" or column is None:
                self._label_pools = ([], np.zeros(0, dtype=np.int64))
            else:
                retain, forget = np.asarray(req.retain[column]), np.asarray(req.forget[column])
                labels = sorted(set(forget.tolist()) & set(retain.tolist()))
                index = {v: k for k, v in enumerate(labels)}
                self._label_pools = ([np.flatnonzero(retain == v) for v in labels],
                                     np.array([index[v] for v in forget.tolist() if v in index], dtype=np.int64))
        return self._label_pools if len(self._label_pools[1]) else None

    # --- the loop ------------------------------------------------------------------------
    def run(self) -> UnlearningResult:
        req, o = self.req, self.opts
        req.begin(steps=o["unlearn_steps"])
        try:
            t0 = time.perf_counter()
            targets = self.resolve_targets()
            self.follow_rows(targets)
            restore = self.retain_levels()
            self.influence_step(targets)
            t1 = time.perf_counter()
            history, lr, retries, stop = self.loop(targets, restore)
            self.info.update({"wall_time_targets_s": t1 - t0, "wall_time_steps_s": time.perf_counter() - t1})
            metrics = self.final_metrics(targets)
        except BaseException:
            req.restore()
            raise
        steps = sum(1 for h in history if "guard_retries" in h)
        metrics.update({"steps": float(steps), "stopped_early": float(stop != "max_steps"),
                        "stopped_targets_reached": float(stop == "targets_reached"),
                        "stopped_mean_target_reached": float(stop == "mean_target_reached"), "guard_retries": float(retries),
                        "final_learning_rate": lr, "retain_examples_per_step": float(len(req.retain_eval)), **self.info})
        config = {**o, "seed": req.seed}  # replayable: IAUConfig(**config) reproduces the update from the parent
        return req.finish(config, metrics, history)

    def retain_levels(self) -> dict[int, float] | None:
        """With ``unlearn_retain_restore``: the loss before the request of every retained row the steps will sample
        (one forward pass over them, before the influence step); else None."""
        req, o = self.req, self.opts
        if not o["unlearn_retain_restore"]:
            return None
        rows = sorted({i for step in range(o["unlearn_steps"]) for i in self.retain_rows(step)})
        if not rows:
            return {}
        losses = req.engine.per_example(req.retain, rows)["loss"]
        req.fwd_passes += len(rows)
        return dict(zip(rows, np.asarray(losses, dtype=np.float64).tolist()))

    def loop(self, targets: Targets, restore: dict[int, float] | None = None) -> tuple[list[dict[str, float]], float, int, str]:
        """Steps until the stop; returns (history, final learning rate, guard retries, stop reason). With ``restore``
        (row → loss before the request), the retain term descends only on rows whose loss rose above it."""
        req, o = self.req, self.opts
        n_f = req.count(req.forget, range(self.n_forget))
        if n_f == 0:
            raise UnlearningError("The forget set has no labelled tokens/examples: nothing to unlearn.")
        optimizer = make_optimizer(o["unlearn_optimizer"], req.params, o["unlearn_learning_rate"])
        lr, retries, history = o["unlearn_learning_rate"], 0, []
        pushed = list(range(self.n_forget))  # rows in the last gradient pass that were still short of their target
        r_mask = None if restore is None else self._risen(restore)
        for step in range(o["unlearn_steps"]):
            r_idx = self.retain_rows(step)
            rows, losses = self._rows_to_push(targets, pushed)
            sign, mine = np.zeros(self.n_forget), np.zeros(self.n_forget)  # this process's rows; summed below

            def mask(bl: BatchLoss, ix: list[int]) -> torch.Tensor:
                m = targets.mask(bl, ix)
                sign[ix] = m.detach().double().cpu().numpy()
                mine[ix] = bl.per_example.detach().double().cpu().numpy()
                return m

            req.zero_grad()
            f = req.accumulate(req.forget, rows, -o["unlearn_forget_weight"], total=n_f, mask=mask)
            synced = np.asarray(req.engine.sum(sign.tolist() + mine.tolist()), dtype=np.float64)
            pushed = np.flatnonzero(np.abs(synced[: self.n_forget]) > 0.5).tolist()
            losses[rows] = synced[self.n_forget:][rows]
            r = req.accumulate(req.retain, r_idx, o["unlearn_retain_weight"], mask=r_mask) if r_idx else Stats()
            rec = {"step": float(step), "forget_loss_active_rows": f.mean_loss, "retain_loss": r.mean_loss,
                   "forget_active_fraction": f.active / self.n_forget, "learning_rate": lr}
            shift = self.follow_held_out(targets)  # from this step's stop on, as the step's masks were set
            if shift is not None:
                rec["target_shift"] = shift
            stop = self._stop(targets, f, losses)
            if stop:
                history.append(rec)
                return history, lr, retries, stop
            req.sync_grads()
            lr, tries = self._guarded_step(optimizer, lr, r_idx, r)
            retries += tries
            rec["guard_retries"] = float(tries)
            history.append(rec)
            req.step_done(rec)
        return history, lr, retries, "max_steps"

    @staticmethod
    def _risen(restore: dict[int, float]) -> Mask:
        """Mask of the retained rows whose loss is above their loss before the request by more than ``REACHED``."""

        def mask(bl: BatchLoss, ix: list[int]) -> torch.Tensor:
            before = torch.tensor([restore[i] for i in ix], dtype=torch.float64)
            risen = bl.per_example.detach().double().cpu() > before * (1 + REACHED)
            return risen.to(device=bl.loss_sum.device, dtype=bl.loss_sum.dtype)

        return mask

    def _rows_to_push(self, targets: Targets, pushed: list[int]) -> tuple[list[int], np.ndarray]:
        """The forget rows of this step's gradient pass, and the losses of the rows left out of it (NaN elsewhere):
        every row for unlearn_targets 'none'/'flip'; else the rows that were still off their target in the last pass
        plus the reached rows that moved off it again (checked forward only). Rows at their target leave the
        backward pass; the step's gradient is the same as pushing every row with the mask."""
        losses = np.full(self.n_forget, np.nan)
        if targets.mode != "loss" or len(pushed) == self.n_forget:
            return list(range(self.n_forget)), losses
        req, held = self.req, sorted(set(range(self.n_forget)) - set(pushed))
        if not held:
            return pushed, losses
        losses[held] = req.engine.per_example(req.forget, held)["loss"]
        req.fwd_passes += len(held)
        fell_back = [i for i, s in zip(held, targets.off(losses[held], held)) if s]
        return sorted(pushed + fell_back), losses

    def _stop(self, targets: Targets, f: Stats, losses: np.ndarray) -> str | None:
        """Under unlearn_stop 'targets' / 'mean_target' with loss targets: 'targets_reached' once at most
        ``unlearn_stop_tolerance`` of the rows are short of their target; with 'mean_target' also
        'mean_target_reached' once the forget set's mean loss (``losses``, every row at this step) is within 1% of
        its mean target — the set has landed on the estimate, further steps only push some rows past theirs.
        Else None."""
        o = self.opts
        if o["unlearn_stop"] == "fixed" or targets.mode == "none":
            return None
        if f.active <= o["unlearn_stop_tolerance"] * self.n_forget:
            return "targets_reached"
        if o["unlearn_stop"] == "mean_target" and targets.mode == "loss" and np.all(np.isfinite(losses)):
            if losses.mean() >= targets.targets.mean() * (1 - REACHED):
                return "mean_target_reached"
        return None

    def _guarded_step(self, optimizer: torch.optim.Optimizer, lr: float, r_idx: list[int], r_before: Stats) -> tuple[float, int]:
        """optimizer.step(); with a tolerance set, undo and retry smaller while the retain loss runs away."""
        req, o = self.req, self.opts
        tol = o["unlearn_max_retain_loss_rise"]
        if tol is None:
            req.engine.step(optimizer)
            return lr, 0
        snap, state = req.engine.snapshot(), copy.deepcopy(optimizer.state_dict())
        for attempt in range(o["unlearn_guard_retries"] + 1):
            for g in optimizer.param_groups:
                g["lr"] = lr
            req.engine.step(optimizer)
            after = req.evaluate(req.retain, r_idx) if r_idx else Stats()
            rise = after.mean_loss - r_before.mean_loss
            if after.count == 0 or (math.isfinite(after.mean_loss) and rise <= tol):
                return lr, attempt
            req.engine.restore(snap)
            optimizer.load_state_dict(state)
            lr *= o["unlearn_guard_shrink"]
        raise UnlearningError(
            f"runaway unlearning step: the retain loss rose by more than unlearn_max_retain_loss_rise={tol} even "
            f"after {o['unlearn_guard_retries']} retries with smaller steps; the original weights were "
            "restored. Lower `unlearn_learning_rate`, raise `unlearn_retain_weight`, or raise the tolerance."
        )

    def final_metrics(self, targets: Targets) -> dict[str, float]:
        """Share of forget rows still short of their target (loss modes) or still predicted correctly (flip),
        measured on the final weights — a row that fell back below its target counts as not forgotten."""
        req = self.req
        if targets.mode == "none":
            return {}
        req.engine.clear_grad()
        out = req.engine.per_example(req.forget, range(self.n_forget))
        req.fwd_passes += self.n_forget
        if targets.mode == "loss":
            short, past = targets.short(out["loss"]), out["loss"] > targets.targets * (1 + REACHED)
            res = {"forget_active_fraction_final": float(short.mean()), "forget_past_fraction_final": float(past.mean()),
                   "target_mean": float(targets.targets.mean())}
            if targets.base is not None:
                res["target_shift"] = targets.by
            return res
        if "correct" in out:
            return {"forget_active_fraction_final": float((out["correct"] > 0.5).mean())}
        return {}
