"""Gradient ascent: θ ← θ + η·∇ mean_{B_f} ℓ  for mini-batches B_f of the forget set.

Descends −ℓ on the forget set only; nothing holds the retained data in place, so long runs
collapse utility (watch ``retain_loss_after``).
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


@register_method("gradient_ascent")
def gradient_ascent(
    trainer: "IAUTrainer",
    forget_dataset: Dataset,
    retain_dataset: Dataset | None = None,
    budget: float | None = None,
    *,
    forget_weight: float = 1.0,
    **options: Any,
) -> UnlearningResult:
    """Mini-batch ascent on the forget loss (``options``: see ``_steps.minibatch_unlearning``)."""
    req = Request("gradient_ascent", trainer, forget_dataset, retain_dataset, budget)
    return minibatch_unlearning(req, forget_scale=-forget_weight, retain_scale=0.0, **options)
