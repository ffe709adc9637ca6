"""Negative Preference Optimization (Zhang et al. 2024, arXiv 2404.05868).

    L_NPO = (2/β) · mean_{x∈B_f} log(1 + (π_θ(x)/π_ref(x))^β)
          = (2/β) · mean_{x∈B_f} softplus(β·(log π_θ(x) − log π_ref(x)))     (+ w_r·mean_{B_r} ℓ)

with log π(x) = −(summed loss of x): the sequence log-likelihood of its labelled tokens for a
causal LM, log p(y|x) for a classifier. The mean is over forget examples. At θ = θ_ref the
gradient is that of gradient ascent on summed losses; as π_θ(x) falls below π_ref(x) the weight
σ(β·log-ratio) of x vanishes, so NPO slows down instead of diverging.

The reference is frozen: since the forget set is fixed, log π_ref is computed once (|D_f| forward
passes) before the first update, so no copy of the model is ever made (LoRA, FSDP, DeepSpeed
alike). ``reference="original"`` (default) uses the model as it is before unlearning;
``reference="base"`` uses a PeftModel with its adapter disabled (``with model.disable_adapter():``),
the usual choice when the adapter was added for unlearning rather than trained on the data.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from datasets import Dataset

from ..losses import BatchLoss, batch_losses
from ..result import UnlearningResult
from . import register_method
from ._request import Request
from ._steps import check_length, minibatch_unlearning

if TYPE_CHECKING:
    from ..trainer import IAUTrainer


def reference_log_likelihoods(req: Request, reference: str = "original") -> dict[int, float]:
    """log π_ref(x) of every forget example, by dataset index (forward passes only, summed over processes)."""
    model = req.model
    if reference == "base":
        if not hasattr(model, "disable_adapter"):
            raise ValueError("reference='base' needs a peft model (adapter to disable); use reference='original'.")
        ctx = model.disable_adapter()
    elif reference == "original":
        ctx = nullcontext()
    else:
        raise ValueError(f"reference={reference!r} is unknown; use 'original' or 'base'.")
    values = [0.0] * len(req.forget)
    was_training = model.training
    model.eval()
    with ctx, torch.no_grad():
        for batch, ix in req.batches(req.forget, range(len(req.forget))):
            with req.engine.autocast():
                bl = batch_losses(model, batch, req.kind)
            for i, v in zip(ix, (-bl.loss_sum.double()).tolist()):
                values[i] = v
    model.train(was_training)
    out = dict(enumerate(req.engine.sum(values)))  # every process needs every example's reference
    req.fwd_passes += req.count(req.forget, range(len(req.forget)), per_example=True)
    return out


def npo_term(ref: dict[int, float], beta: float):
    """Per-example (2/β)·softplus(β·(log π_θ(x) − log π_ref(x)))."""

    def term(bl: BatchLoss, ix: Sequence[int]) -> torch.Tensor:
        ref_ll = torch.tensor([ref[i] for i in ix], dtype=bl.loss_sum.dtype, device=bl.loss_sum.device)
        return (2.0 / beta) * F.softplus(beta * (-bl.loss_sum - ref_ll))

    return term


@register_method("npo")
def npo(
    trainer: "IAUTrainer",
    forget_dataset: Dataset,
    retain_dataset: Dataset | None = None,
    budget: float | None = None,
    *,
    beta: float = 0.1,
    retain_weight: float = 0.0,
    reference: str = "original",
    **options: Any,
) -> UnlearningResult:
    """NPO on forget mini-batches, plus ``retain_weight``·NLL on retain mini-batches when > 0
    (``options``: see ``_steps.minibatch_unlearning``)."""
    if not beta > 0:
        raise ValueError(f"beta={beta!r} is invalid: use a value > 0 (the paper uses 0.1).")
    check_length(options.get("steps"), options.get("epochs"))  # before the work that precedes the steps
    req = Request("npo", trainer, forget_dataset, retain_dataset, budget)
    ref = reference_log_likelihoods(req, reference)
    return minibatch_unlearning(
        req,
        forget_scale=1.0,
        retain_scale=retain_weight,
        forget_term=npo_term(ref, beta),
        forget_per_example=True,
        extra_config={"beta": beta, "reference": reference},
        **options,
    )
