"""Fine-tuning on the retain set: θ ← θ − η·∇ mean_{B_r} ℓ  for mini-batches B_r of D_r.

Forgets only through catastrophic forgetting: the forget set is never touched.
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


@register_method("finetune")
def finetune(
    trainer: "IAUTrainer",
    forget_dataset: Dataset,
    retain_dataset: Dataset | None = None,
    budget: float | None = None,
    **options: Any,
) -> UnlearningResult:
    """Continue training on retained data only (``options``: see ``_steps.minibatch_unlearning``)."""
    req = Request("finetune", trainer, forget_dataset, retain_dataset, budget)
    return minibatch_unlearning(req, forget_scale=0.0, retain_scale=1.0, **options)
