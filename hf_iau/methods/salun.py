"""SalUn: saliency-masked random relabelling (Fan et al. 2024, arXiv 2310.12508), for classifiers.

1. Saliency mask from the forget gradient: m = 1[|∇_θ mean_{D_f} ℓ| ≥ q], q the ``sparsity``-quantile of
   the gradient magnitudes over all trainable weights (the paper keeps the top 50%).
2. Relabel: each forget example gets a seeded random label other than its own; descend on
       mean_{B_f} CE(f_θ(x), y_rand)  +  w_r · mean_{B_r} ℓ
   with the update restricted to the salient weights (θ ← θ − lr·m ⊙ step).

Cost: |D_f| example-gradient passes for the mask, then the mini-batch loop of ``_steps``.
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
from ._steps import check_length, minibatch_unlearning

if TYPE_CHECKING:
    from ..trainer import IAUTrainer


def saliency_mask(req: Request, sparsity: float) -> list[torch.Tensor]:
    """1 where |∇ mean_{D_f} ℓ| is at or above its ``sparsity`` quantile over all weights, else 0. The gradient
    is taken in eval mode (no dropout: the mask is a function of the weights and data); the mode is restored."""
    req.need(len(req.forget), "the saliency gradient over the forget set")
    was_training = req.model.training
    req.model.eval()
    try:
        req.zero_grad()
        req.accumulate(req.forget, range(len(req.forget)), 1.0)
        req.sync_grads()
    finally:
        req.model.train(was_training)
    mags = torch.cat([p.grad.detach().abs().flatten().float() for p in req.params])
    k = min(int(sparsity * mags.numel()), mags.numel() - 1)
    q = mags.kthvalue(k + 1).values if k > 0 else mags.min()
    masks = [(p.grad.detach().abs() >= q).to(p.dtype) for p in req.params]
    req.zero_grad()
    return masks


def random_labels(req: Request, num_labels: int) -> dict[int, int]:
    """A seeded label ≠ the true label for every forget example (the same on every process)."""
    true = req.forget["label"] if "label" in req.forget.column_names else req.forget["labels"]
    shift = req.rng(7).integers(1, num_labels, size=len(true))
    return {i: int((int(y) + int(s)) % num_labels) for i, (y, s) in enumerate(zip(true, shift))}


def relabel_term(labels: dict[int, int]):
    """Per-example CE of the logits against the random labels."""

    def term(bl: BatchLoss, ix: Sequence[int]) -> torch.Tensor:
        y = torch.tensor([labels[i] for i in ix], device=bl.logits.device)
        return F.cross_entropy(bl.logits.float(), y, reduction="none")

    return term


@register_method("salun")
def salun(
    trainer: "IAUTrainer",
    forget_dataset: Dataset,
    retain_dataset: Dataset | None = None,
    budget: float | None = None,
    *,
    sparsity: float = 0.5,
    retain_weight: float = 1.0,
    **options: Any,
) -> UnlearningResult:
    """SalUn on a classifier (``options``: see ``_steps.minibatch_unlearning``)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity={sparsity!r} is invalid: use a fraction in [0, 1) of weights left unchanged.")
    check_length(options.get("steps"), options.get("epochs"))  # before the work that precedes the steps
    req = Request("salun", trainer, forget_dataset, retain_dataset, budget)
    if req.kind != "classification":
        raise ValueError("salun needs a single-label classifier (random relabelling); use npo or iau for this model.")
    labels = random_labels(req, int(req.model.config.num_labels))
    masks = saliency_mask(req, sparsity)
    hooks = [p.register_hook(lambda g, m=m: g * m) for p, m in zip(req.params, masks)]
    try:
        return minibatch_unlearning(
            req, forget_scale=1.0, retain_scale=retain_weight, forget_term=relabel_term(labels), forget_per_example=True,
            extra_config={"sparsity": sparsity, "salient_fraction": float(sum(m.sum() for m in masks) / sum(m.numel() for m in masks))},
            **options,
        )
    finally:
        for h in hooks:
            h.remove()
