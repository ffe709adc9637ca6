"""SCRUB: teacher–student unlearning (Kurmanji et al. 2023, arXiv 2302.09880), for classifiers.

The teacher is the original model (frozen); the student starts as a copy of it and alternates

* a max-step on a forget mini-batch:  minimise  −mean_{B_f} KL(p_T(x) ‖ p_S(x))   (move away from the teacher),
* a min-step on a retain mini-batch:  minimise  α·mean_{B_r} KL(p_T ‖ p_S) + γ·mean_{B_r} CE(p_S, y),

max-steps only during the first ``max_fraction`` of the steps (the paper's ``msteps``). The teacher is never
copied: its class probabilities on every row the loop will use are computed once, before the first update
(forward passes), so LoRA/sharded models need no second model. Each step costs |B_f| + |B_r| passes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from datasets import Dataset

from ..losses import BatchLoss, batch_losses
from ..result import UnlearningResult
from . import register_method
from ._request import Request, make_optimizer
from ._steps import Schedule, schedule

if TYPE_CHECKING:
    from ..trainer import IAUTrainer


def teacher_log_probs(req: Request, ds: Dataset, idx: Sequence[int]) -> dict[int, torch.Tensor]:
    """log p_T(·|x) of rows ``idx`` under the current (original) weights, by index (forward passes; every
    process gets every row's, since later mini-batches are shared out differently)."""
    idx = sorted(set(idx))
    if not idx:  # the same on every process: no step uses this set
        return {}
    pos = {i: k for k, i in enumerate(idx)}
    table = torch.zeros(len(idx), req.model.config.num_labels, dtype=torch.float32, device=req.engine.device)
    with torch.no_grad():
        for batch, ix in req.batches(ds, idx):
            with req.engine.autocast():
                bl = batch_losses(req.model, batch, req.kind)
            lp = F.log_softmax(bl.logits.float(), -1).detach()
            for k, i in enumerate(ix):
                table[pos[i]] = lp[k]
    req.engine.sum_([table])
    req.fwd_passes += req.count(ds, idx, per_example=True)
    return {i: table[k] for i, k in pos.items()}


def kl_term(teacher: dict[int, torch.Tensor], ce_weight: float = 0.0, kl_weight: float = 1.0):
    """Per-example kl_weight·KL(p_T ‖ p_S) + ce_weight·CE."""

    def term(bl: BatchLoss, ix: Sequence[int]) -> torch.Tensor:
        lt = torch.stack([teacher[i] for i in ix]).to(bl.logits.device)
        ls = F.log_softmax(bl.logits.float(), -1)
        kl = (lt.exp() * (lt - ls)).sum(-1)
        return kl_weight * kl + ce_weight * bl.loss_sum

    return term


def scrub_steps(req: Request, sched: Schedule, alpha: float, gamma: float) -> list[dict[str, float]]:
    """Teacher outputs once, then per step a max-step on B_f (when scheduled) and a min-step on B_r."""
    t_f = teacher_log_probs(req, req.forget, [i for f, _ in sched.steps for i in f])
    t_r = teacher_log_probs(req, req.retain, [i for _, r in sched.steps for i in r])
    opt = make_optimizer(sched.optimizer, req.params, sched.learning_rate)
    history: list[dict[str, float]] = []
    for t, (f_idx, r_idx) in enumerate(sched.steps):
        rec: dict[str, float] = {"step": float(t)}
        if f_idx:
            req.zero_grad()
            rec["forget_loss"] = req.accumulate(req.forget, f_idx, -1.0, kl_term(t_f), per_example=True).mean_loss
            req.sync_grads()
            req.engine.step(opt)
        req.zero_grad()
        rec["retain_loss"] = req.accumulate(req.retain, r_idx, 1.0, kl_term(t_r, gamma, alpha), per_example=True).mean_loss
        req.sync_grads()
        req.engine.step(opt)
        history.append(rec)
    return history


@register_method("scrub")
def scrub(
    trainer: "IAUTrainer",
    forget_dataset: Dataset,
    retain_dataset: Dataset | None = None,
    budget: float | None = None,
    *,
    alpha: float = 1.0,
    gamma: float = 1.0,
    max_fraction: float = 0.5,
    learning_rate: float | None = None,
    optimizer: str | None = None,
    batch_size: int | None = None,
    retain_batch_size: int | None = None,
    steps: int | None = None,
    epochs: float | None = None,
) -> UnlearningResult:
    """SCRUB on a classifier; length: ``steps``, or ``epochs`` over the forget set (its max-steps see every forget
    row ``epochs`` times; default 1), or (with a budget) what it pays."""
    if not (alpha >= 0 and gamma >= 0 and 0 <= max_fraction <= 1):
        raise ValueError("scrub needs alpha >= 0, gamma >= 0 and max_fraction in [0, 1].")
    req = Request("scrub", trainer, forget_dataset, retain_dataset, budget)
    if req.kind != "classification":
        raise ValueError("scrub needs a single-label classifier (class-probability KL); use npo or iau for this model.")
    sched = schedule(
        req, forget=True, retain=True, learning_rate=learning_rate, optimizer=optimizer, batch_size=batch_size,
        retain_batch_size=retain_batch_size, steps=steps, epochs=epochs, forget_fraction=max_fraction,
    )
    n_max = sum(1 for f, _ in sched.steps if f)
    config = {**sched.config(), "alpha": alpha, "gamma": gamma, "steps": len(sched.steps), "max_steps": n_max,
              "seed": req.seed, "budget": budget}
    req.begin()
    try:
        history = scrub_steps(req, sched, alpha, gamma)
        return req.finish(config, {"steps": float(len(sched.steps)), "learning_rate": sched.learning_rate}, history)
    except BaseException:
        req.restore()
        raise
