"""SimNPO: reference-free NPO with a length-normalised likelihood (Fan et al. 2024, arXiv 2410.07163).

    L_SimNPO = −(2/β) · mean_{(x,y)∈B_f} log σ(−(β/|y|)·log π_θ(y|x) − γ)      (+ w_r·mean_{B_r} ℓ)
             =  (2/β) · mean_{(x,y)∈B_f} softplus(γ + (β/|y|)·log π_θ(y|x))

with log π_θ(y|x) = −(summed loss of the labelled tokens) and |y| their number (``normalize=True``),
γ ≥ 0 a reward margin. No reference model: nothing is computed before the first update.
open-unlearning writes the same loss as −(2/β)·log σ(β·(NLL/|y| − δ)), i.e. δ = γ/β.

With γ = 0 and ``normalize=False`` the loss is NPO's with the uniform reference log π_ref = 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from datasets import Dataset

from ..losses import BatchLoss
from ..result import UnlearningResult
from . import register_method
from ._request import Request
from ._steps import minibatch_unlearning

if TYPE_CHECKING:
    from ..trainer import IAUTrainer


def simnpo_term(beta: float, gamma: float = 0.0, normalize: bool = True):
    """Per-example (2/β)·softplus(γ + (β/|y|)·log π_θ(y|x)); |y| = 1 when ``normalize`` is off."""

    def term(bl: BatchLoss, ix: Sequence[int]) -> torch.Tensor:
        log_lik = -bl.loss_sum
        if normalize:
            log_lik = log_lik / bl.count.clamp_min(1).to(log_lik.dtype)
        return (2.0 / beta) * F.softplus(gamma + beta * log_lik)

    return term


@register_method("simnpo")
def simnpo(
    trainer: "IAUTrainer",
    forget_dataset: Dataset,
    retain_dataset: Dataset | None = None,
    budget: float | None = None,
    *,
    beta: float = 2.5,
    gamma: float = 0.0,
    normalize: bool = True,
    retain_weight: float = 1.0,
    **options: Any,
) -> UnlearningResult:
    """SimNPO on forget mini-batches, plus ``retain_weight``·NLL on retain mini-batches when > 0
    (``options``: see ``_steps.minibatch_unlearning``)."""
    if not beta > 0:
        raise ValueError(f"beta={beta!r} is invalid: use a value > 0 (e.g. the default 2.5).")
    if not gamma >= 0:
        raise ValueError(f"gamma={gamma!r} is invalid: use a margin >= 0 (default 0).")
    req = Request("simnpo", trainer, forget_dataset, retain_dataset, budget)
    return minibatch_unlearning(
        req,
        forget_scale=1.0,
        retain_scale=retain_weight,
        forget_term=simnpo_term(beta, gamma, normalize),
        forget_per_example=True,
        extra_config={"beta": beta, "gamma": gamma, "normalize": normalize},
        **options,
    )
