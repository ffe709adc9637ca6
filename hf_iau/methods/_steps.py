"""Mini-batch unlearning loop shared by finetune, gradient ascent/difference and NPO.

Step t minimises  s_f · Σ_{B_f} term / N(B_f)  +  s_r · Σ_{B_r} ℓ / N(B_r)  with a fresh optimizer,
where B_f, B_r are the t-th mini-batches of seeded per-epoch shuffles of the forget and retain
sets and N(·) their true counts (tokens for causal LMs, examples otherwise; examples for a
per-example ``term``). A term with scale 0 is skipped and costs nothing. The model runs in eval
mode (no dropout), so a run is a deterministic function of the data and the seed.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterator

from ..unlearning import UnlearningResult
from ._request import BudgetError, Request, Term, make_optimizer


def _chunks(req: Request, n: int, size: int, stream: int) -> Iterator[list[int]]:
    """Endless mini-batches of indices: per epoch a seeded permutation of range(n), cut in ``size``."""
    for epoch in itertools.count():
        perm = req.rng(stream, epoch).permutation(n).tolist()
        for i in range(0, n, size):
            yield sorted(perm[i : i + size])


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
    """Run the loop on ``req`` (see module docstring) and record the result.

    Options: ``learning_rate`` (default ``args.unlearn_learning_rate``), ``optimizer`` ("adam"/"sgd",
    default ``args.unlearn_optimizer``), ``batch_size`` (default ``per_device_train_batch_size ×
    gradient_accumulation_steps``), ``retain_batch_size`` (default ``batch_size``), and the length:
    ``steps``, or ``epochs`` over the driving set (forget when ``forget_scale != 0``, else retain);
    with neither, one epoch — or, when a budget is set, as many steps as the budget pays for.
    """
    args = req.args
    lr = float(learning_rate if learning_rate is not None else args.unlearn_learning_rate)
    opt_name = optimizer or args.unlearn_optimizer
    bs = int(batch_size or args.per_device_train_batch_size * args.gradient_accumulation_steps)
    rbs = int(retain_batch_size or bs)
    if bs < 1 or rbs < 1 or not (lr > 0 and math.isfinite(lr)):
        raise ValueError("batch sizes must be >= 1 and learning_rate a finite value > 0.")
    use_f, use_r = forget_scale != 0, retain_scale != 0
    n_f, n_r = len(req.forget), len(req.retain)
    if use_r and n_r == 0:
        raise ValueError(f"{req.method} needs retained data, but the retain set is empty.")
    drive_n, drive_bs = (n_f, bs) if use_f else (n_r, rbs)
    if steps is not None:
        max_steps: float = int(steps)
    elif epochs is not None:
        max_steps = math.ceil(float(epochs) * drive_n / drive_bs)
    else:
        max_steps = math.inf if req.budget is not None else math.ceil(drive_n / drive_bs)
    forget_stream, retain_stream = _chunks(req, n_f, bs, 0), _chunks(req, n_r, rbs, 1)
    config = {
        "learning_rate": lr,
        "optimizer": opt_name,
        "batch_size": bs,
        "retain_batch_size": rbs,
        "forget_scale": forget_scale,
        "retain_scale": retain_scale,
        "steps": steps,
        "epochs": epochs,
        "seed": req.seed,
        "budget": req.budget,
        **(extra_config or {}),
    }
    history: list[dict[str, float]] = []
    req.begin()
    try:
        opt = make_optimizer(opt_name, req.params, lr)
        step, cost = 0, 0
        while step < max_steps:
            f_idx = next(forget_stream) if use_f else []
            r_idx = next(retain_stream) if use_r else []
            cost = len(f_idx) + len(r_idx)
            if not req.affordable(cost):
                break
            req.zero_grad()
            rec: dict[str, float] = {"step": float(step)}
            if use_f:
                fs = req.accumulate(req.forget, f_idx, forget_scale, forget_term, forget_per_example)
                rec["forget_loss"] = fs.mean_loss
            if use_r:
                rec["retain_loss"] = req.accumulate(req.retain, r_idx, retain_scale).mean_loss
            req.sync_grads()
            req.engine.step(opt)
            history.append(rec)
            step += 1
        if step == 0:
            raise BudgetError(
                f"budget={req.budget:g} example-gradient passes cannot pay for one step of {req.method} "
                f"({cost} example passes); raise the budget or lower the batch size."
            )
        return req.finish(config, {"steps": float(step), "learning_rate": lr}, history)
    except BaseException:
        req.restore()
        raise
