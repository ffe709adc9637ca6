"""Mini-batch scheduling shared by every step-wise baseline, and the loop of finetune, gradient
ascent/difference, NPO, SimNPO and SalUn.

Schedule: step t takes B_f(t), B_r(t), the t-th mini-batches of seeded per-epoch shuffles of the forget
and retain sets (``Request.rng(stream, epoch)``, the same on every process), forget batches only in the
first round(forget_fraction·T) of the T steps (SCRUB's max-steps). T is ``steps``; or ``epochs`` over
the driving set (forget when the method uses it, else retain; the forget set is seen ``epochs`` times
in those first steps); or, under a budget, the most steps whose example-gradient passes
Σ_t |B_f(t)| + |B_r(t)| it pays for; else one epoch. The schedule is fixed
before the first update, so a length the budget cannot pay for is refused with the weights untouched.

Loop: step t minimises  s_f · Σ_{B_f} term / N(B_f)  +  s_r · Σ_{B_r} ℓ / N(B_r)  with a fresh optimizer,
N(·) the true counts (tokens for token-level LMs, examples otherwise; examples for a per-example
``term``). A term with scale 0 is skipped and costs nothing. The model runs in eval mode (no dropout),
so a run is a deterministic function of the data and the seed.
"""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass
from typing import Any, Iterator

from ..result import UnlearningResult
from ._request import BudgetError, Request, Term, make_optimizer

Step = tuple[list[int], list[int]]
"""(forget indices, retain indices) of one step; either may be empty."""


@dataclass(frozen=True)
class Schedule:
    """Resolved options of a step-wise run and its mini-batches, step by step."""

    learning_rate: float
    optimizer: str
    batch_size: int
    retain_batch_size: int
    steps: list[Step]

    def config(self) -> dict[str, Any]:
        """The options as recorded in the ledger."""
        return {"learning_rate": self.learning_rate, "optimizer": self.optimizer, "batch_size": self.batch_size,
                "retain_batch_size": self.retain_batch_size}


def check_length(steps: Any, epochs: Any) -> None:
    """Refuse a run length that is not a positive number of steps or epochs (``None`` chooses one)."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1):
        raise ValueError(
            f"steps={steps!r} is invalid: use an integer >= 1, or leave it None (one epoch, or as many steps as "
            "the budget pays for)."
        )
    if epochs is not None and (
        isinstance(epochs, bool) or not isinstance(epochs, numbers.Real) or not (epochs > 0 and math.isfinite(epochs))
    ):
        raise ValueError(
            f"epochs={epochs!r} is invalid: use a number > 0, or leave it None (one epoch, or as many steps as "
            "the budget pays for)."
        )


def _chunks(req: Request, n: int, size: int, stream: int) -> Iterator[list[int]]:
    """Endless mini-batches of indices: per epoch a seeded permutation of range(n), cut in ``size``
    (empty ones when ``size`` is 0)."""
    if size == 0:
        yield from itertools.repeat([])
    if n == 0:
        raise ValueError(f"{req.method}: no rows to draw mini-batches of {size} from.")
    for epoch in itertools.count():
        perm = req.rng(stream, epoch).permutation(n).tolist()
        for i in range(0, n, size):
            yield sorted(perm[i : i + size])


def plan_steps(
    req: Request, forget_batch: int, retain_batch: int, max_steps: float, forget_fraction: float = 1.0,
    streams: tuple[int, int] = (0, 1),
) -> list[Step]:
    """The longest schedule of at most ``max_steps`` steps whose gradient passes fit ``req``'s budget (a batch
    size of 0 leaves that set out)."""
    f_stream = _chunks(req, len(req.forget), forget_batch, streams[0])
    r_stream = _chunks(req, len(req.retain), retain_batch, streams[1])
    f_list: list[list[int]] = []
    r_list: list[list[int]] = []
    f_cost, r_cost = [0], [0]  # passes of the first k forget / retain batches

    def cost(k: int) -> int:
        n_f = round(forget_fraction * k)
        while len(f_list) < n_f:
            f_list.append(next(f_stream))
            f_cost.append(f_cost[-1] + len(f_list[-1]))
        while len(r_list) < k:
            r_list.append(next(r_stream))
            r_cost.append(r_cost[-1] + len(r_list[-1]))
        return f_cost[n_f] + r_cost[k]

    k = 0
    while k < max_steps and req.affordable(cost(k + 1)):
        k += 1
    n_f = round(forget_fraction * k)
    return [(f_list[t] if t < n_f else [], r_list[t]) for t in range(k)]


def schedule(
    req: Request,
    *,
    forget: bool,
    retain: bool,
    learning_rate: float | None = None,
    optimizer: str | None = None,
    batch_size: int | None = None,
    retain_batch_size: int | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    forget_fraction: float = 1.0,
    streams: tuple[int, int] = (0, 1),
) -> Schedule:
    """The schedule of a run on ``req`` that uses the forget and/or retain set (see the module docstring).

    Defaults: ``learning_rate`` and ``optimizer`` from ``args.unlearn_*``, ``batch_size`` =
    ``per_device_train_batch_size × gradient_accumulation_steps``, ``retain_batch_size`` = ``batch_size``.
    Raises ``ValueError`` for invalid options, ``BudgetError`` when the budget pays for no step.
    """
    check_length(steps, epochs)
    if not (forget or retain):
        raise ValueError(
            f"{req.method}: the forget and retain weights are both 0, so no step would change the model; "
            "give the forget or the retain term a nonzero weight."
        )
    args = req.args
    lr = float(learning_rate if learning_rate is not None else args.unlearn_learning_rate)
    bs = int(batch_size or args.per_device_train_batch_size * args.gradient_accumulation_steps)
    rbs = int(retain_batch_size or bs)
    if bs < 1 or rbs < 1 or not (lr > 0 and math.isfinite(lr)):
        raise ValueError("batch sizes must be >= 1 and learning_rate a finite value > 0.")
    if retain and len(req.retain) == 0:
        raise ValueError(f"{req.method} needs retained data, but the retain set is empty.")
    drives = forget and forget_fraction > 0  # the forget set drives the length when its batches are used
    drive_n, drive_bs = (len(req.forget), bs) if drives else (len(req.retain), rbs)
    if steps is not None:
        max_steps: float = int(steps)
    elif epochs is None and req.budget is not None:
        max_steps = math.inf
    else:  # `epochs` (default 1) over the driving set: its batches run in the first forget_fraction of the steps
        passes = math.ceil(float(1.0 if epochs is None else epochs) * drive_n / drive_bs)
        max_steps = math.ceil(passes / forget_fraction) if drives else passes
    plan = plan_steps(req, bs if forget else 0, rbs if retain else 0, max_steps, forget_fraction, streams)
    if not plan:
        first = (min(bs, len(req.forget)) if forget else 0) + (min(rbs, len(req.retain)) if retain else 0)
        raise BudgetError(
            f"budget={req.budget:g} example-gradient passes cannot pay for one step of {req.method} ({first} "
            f"example passes after {req.grad_passes:g} already spent); raise the budget or lower the batch size."
        )
    return Schedule(lr, optimizer or args.unlearn_optimizer, bs, rbs, plan)


def minibatch_unlearning(
    req: Request,
    *,
    forget_scale: float,
    retain_scale: float,
    forget_term: Term | None = None,
    forget_per_example: bool = False,
    learning_rate: float | None = None,
    optimizer: str | None = None,
    batch_size: int | None = None,
    retain_batch_size: int | None = None,
    epochs: float | None = None,
    steps: int | None = None,
    extra_config: dict[str, Any] | None = None,
) -> UnlearningResult:
    """Run the loop on ``req`` (see module docstring) and record the result; options as in :func:`schedule`."""
    use_f, use_r = forget_scale != 0, retain_scale != 0
    sched = schedule(
        req, forget=use_f, retain=use_r, learning_rate=learning_rate, optimizer=optimizer, batch_size=batch_size,
        retain_batch_size=retain_batch_size, steps=steps, epochs=epochs,
    )
    config = {
        **sched.config(), "forget_scale": forget_scale, "retain_scale": retain_scale, "steps": steps,
        "epochs": epochs, "seed": req.seed, "budget": req.budget, **(extra_config or {}),
    }
    history: list[dict[str, float]] = []
    req.begin()
    try:
        opt = make_optimizer(sched.optimizer, req.params, sched.learning_rate)
        for step, (f_idx, r_idx) in enumerate(sched.steps):
            req.zero_grad()
            rec: dict[str, float] = {"step": float(step)}
            if f_idx:
                fs = req.accumulate(req.forget, f_idx, forget_scale, forget_term, forget_per_example)
                rec["forget_loss"] = fs.mean_loss
            if r_idx:
                rec["retain_loss"] = req.accumulate(req.retain, r_idx, retain_scale).mean_loss
            req.sync_grads()
            req.engine.step(opt)
            history.append(rec)
        return req.finish(config, {"steps": float(len(sched.steps)), "learning_rate": sched.learning_rate}, history)
    except BaseException:
        req.restore()
        raise
