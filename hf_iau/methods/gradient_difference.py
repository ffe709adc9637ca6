"""Gradient difference: each step descends  w_r·mean_{B_r} ℓ − w_f·mean_{B_f} ℓ.

Ascent on a forget mini-batch B_f plus descent on a retain mini-batch B_r (the mini-batch,
multi-step relative of IAU's one-step update on whole-set means).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from datasets import Dataset

from ..result import UnlearningResult
from . import register_method
from ._request import Request
from ._steps import minibatch_unlearning

if TYPE_CHECKING:
    from ..trainer import IAUTrainer


@register_method("gradient_difference")
def gradient_difference(
    trainer: "IAUTrainer",
    forget_dataset: Dataset,
    retain_dataset: Dataset | None = None,
    budget: float | None = None,
    *,
    forget_weight: float = 1.0,
    retain_weight: float = 1.0,
    **options: Any,
) -> UnlearningResult:
    """Mini-batch ascent on forget + descent on retain (``options``: see ``_steps.minibatch_unlearning``)."""
    req = Request("gradient_difference", trainer, forget_dataset, retain_dataset, budget)
    return minibatch_unlearning(req, forget_scale=-forget_weight, retain_scale=retain_weight, **options)
