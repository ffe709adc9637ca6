"""Per-example losses with true counts, for any HF model whose forward takes ``labels``.

Unlearning weighs every example (or token) by its true count, never by batch index, so the
mean over a set does not depend on how it was batched or sharded. Three cases:

* causal LM (``*ForCausalLM``): token cross-entropy with the one-token shift; an example's
  weight is its number of predicted tokens (labels != -100 after the shift);
* classification (logits ``[B, C]``, integer labels ``[B]``): cross-entropy, weight 1 (0 for a
  row labelled -100);
* anything else: the model's own ``.loss`` taken as the mean over the batch, weight 1 each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def base_model_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP/peft wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def loss_kind(model: torch.nn.Module) -> str:
    """``"causal_lm"``, ``"classification"`` or ``"generic"`` for ``model``."""
    name = type(base_model_of(model)).__name__
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return "causal_lm"
    if name.endswith("ForSequenceClassification") or name.endswith("ForImageClassification"):
        problem = getattr(base_model_of(model).config, "problem_type", None)
        if problem in (None, "single_label_classification") and getattr(
            base_model_of(model).config, "num_labels", 2
        ) > 1:
            return "classification"
    return "generic"


@dataclass
class BatchLoss:
    """Per-example summed losses, weights (counts) and, when defined, correctness."""

    loss_sum: torch.Tensor  # [B] sum of token/example losses, keeps the graph
    count: torch.Tensor  # [B] number of predicted tokens (LM) or 1
    correct: torch.Tensor | None = None  # [B] fraction of correct predictions
    logits: torch.Tensor | None = None

    @property
    def per_example(self) -> torch.Tensor:
        """Mean loss of each example."""
        return self.loss_sum / self.count.clamp_min(1)


def _full(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits are upcast to float32; float32/float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """True where the label's logit is the largest (argmax == label; ~10x cheaper than argmax on CPU)."""
    label_logit = logits.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return label_logit >= logits.amax(-1)


def batch_losses(model: torch.nn.Module, batch: dict[str, Any], kind: str | None = None) -> BatchLoss:
    """Run ``model`` on ``batch`` and return per-example losses with their counts."""
    kind = kind or loss_kind(model)
    labels = batch.get("labels")
    if labels is None:
        raise ValueError(
            "A batch has no `labels`: every forget/retain row needs a label (`label`/`labels` column, "
            "or a data collator that creates `labels`, e.g. DataCollatorForLanguageModeling(mlm=False))."
        )
    if kind == "generic":
        out = model(**batch)
        n = labels.shape[0]
        return BatchLoss(out.loss.expand(n) * 1.0, torch.ones(n, device=out.loss.device))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs)
    logits = out.logits
    if kind == "causal_lm":
        shift_logits = _full(logits[:, :-1, :])
        shift_labels = labels[:, 1:].to(shift_logits.device)
        tok = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)),
            shift_labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view(shift_labels.shape)
        mask = shift_labels != IGNORE_INDEX
        count = mask.sum(-1).to(tok.dtype)
        hits = (_hits(shift_logits.detach(), shift_labels) & mask).sum(-1).to(tok.dtype)
        return BatchLoss((tok * mask).sum(-1), count, hits / count.clamp_min(1), logits)
    labels = labels.to(logits.device).view(-1)
    ce = F.cross_entropy(_full(logits), labels, ignore_index=IGNORE_INDEX, reduction="none")
    valid = labels != IGNORE_INDEX  # a row labelled -100 (padding) weighs nothing
    correct = (_hits(logits.detach(), labels) & valid).to(ce.dtype)
    return BatchLoss(ce, valid.to(ce.dtype), correct, logits)


def true_count(batch: dict[str, Any], kind: str) -> float:
    """Predicted tokens (causal LM, after the one-token shift) or examples in ``batch``."""
    labels = batch["labels"]
    if kind == "causal_lm":
        return float((labels[:, 1:] != IGNORE_INDEX).sum())
    if kind == "classification":
        return float((labels != IGNORE_INDEX).sum())
    return float(labels.shape[0])


@torch.no_grad()
def evaluate_losses(
    model: torch.nn.Module, batches: Iterable[dict[str, Any]], kind: str | None = None
) -> dict[str, torch.Tensor]:
    """Per-example ``loss`` (mean), ``count`` and ``correct`` over ``batches`` (no grad, CPU tensors)."""
    losses, counts, correct = [], [], []
    for batch in batches:
        bl = batch_losses(model, batch, kind)
        losses.append(bl.per_example.detach().float().cpu())
        counts.append(bl.count.detach().float().cpu())
        if bl.correct is not None:
            correct.append(bl.correct.detach().float().cpu())
    out = {
        "loss": torch.cat(losses) if losses else torch.zeros(0),
        "count": torch.cat(counts) if counts else torch.zeros(0),
    }
    if correct:
        out["correct"] = torch.cat(correct)
    return out
