"""Per-example losses with true counts, for any HF model whose forward takes ``labels``.

Unlearning weighs every example (or token) by its true count, never by batch index, so the
mean over a set does not depend on how it was batched or sharded. For every kind below the
count-weighted batch mean  Σ loss_sum / Σ count  is the model's own ``.loss``:

* ``causal_lm`` (``*ForCausalLM``): token cross-entropy with the one-token shift; an example's
  weight is its number of predicted tokens (labels != -100 after the shift);
* ``seq2seq_lm`` (encoder-decoder, ``config.is_encoder_decoder``): token cross-entropy of the
  decoder's labels, no shift (the model shifts its labels right into decoder inputs); weight:
  labelled tokens (labels != -100);
* ``classification`` (single label, logits ``[B, C]``, integer labels ``[B]``): cross-entropy,
  weight 1 (0 for a row labelled -100);
* ``multi_label`` (``problem_type="multi_label_classification"``): binary cross-entropy with
  logits, averaged over the row's labels, weight 1;
* ``regression`` (``problem_type="regression"``, or one label without a problem type): squared
  error averaged over the row's outputs, weight 1;
* ``generic`` (anything else): only the model's own batch loss is known, which is one example's
  loss only for a one-row batch; a larger batch is refused (never its mean copied to every row).

A multi-label or regression row whose labels are all -100 is padding (the engine's padding rows for
sharded models): weight 0, loss 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
TOKEN_KINDS = ("causal_lm", "seq2seq_lm")
"""Kinds whose examples are weighted by their labelled tokens (the others: one per labelled row)."""


def base_model_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP/peft wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def loss_kind(model: torch.nn.Module) -> str:
    """``"causal_lm"``, ``"seq2seq_lm"``, ``"classification"``, ``"multi_label"``, ``"regression"`` or
    ``"generic"`` for ``model`` (see the module docstring)."""
    base = base_model_of(model)
    name = type(base).__name__
    config = getattr(base, "config", None)
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return "causal_lm"
    if getattr(config, "is_encoder_decoder", False) and (name.endswith("ForConditionalGeneration") or name.endswith("Seq2SeqLM")):
        return "seq2seq_lm"
    if name.endswith("ForSequenceClassification") or name.endswith("ForImageClassification"):
        problem = getattr(config, "problem_type", None)
        num_labels = getattr(config, "num_labels", 2)
        if problem == "regression" or (problem is None and num_labels == 1):
            return "regression"
        if problem == "multi_label_classification":
            return "multi_label"
        if problem in (None, "single_label_classification"):
            return "classification"
    return "generic"


@dataclass
class BatchLoss:
    """Per-example summed losses, weights (counts) and, when defined, correctness."""

    loss_sum: torch.Tensor  # [B] sum of token/example losses, keeps the graph
    count: torch.Tensor  # [B] number of predicted tokens (LM) or 1 (0 for a padding row)
    correct: torch.Tensor | None = None  # [B] fraction of correct predictions (tokens, labels)
    logits: torch.Tensor | None = None  # class/token logits (causal LM and single-label classifiers)

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


def _token_ce(logits: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
    """Σ_t CE(logits[b, t], labels[b, t]) over each row's labelled tokens; count = those tokens."""
    logits = _full(logits)
    labels = labels.to(logits.device)
    tok = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(labels.shape)
    mask = labels != IGNORE_INDEX
    count = mask.sum(-1).to(tok.dtype)
    hits = (_hits(logits.detach(), labels) & mask).sum(-1).to(tok.dtype)
    return BatchLoss((tok * mask).sum(-1), count, hits / count.clamp_min(1))


def _causal_lm(logits: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
    """Token CE of position t predicting label t+1."""
    out = _token_ce(logits[:, :-1, :], labels[:, 1:])
    out.logits = logits
    return out


def _seq2seq_lm(logits: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
    """Token CE of decoder position t predicting label t (the decoder input is the labels shifted right)."""
    return _token_ce(logits, labels)


def _classification(logits: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
    """CE per row; a row labelled -100 weighs nothing."""
    labels = labels.to(logits.device).view(-1)
    ce = F.cross_entropy(_full(logits), labels, ignore_index=IGNORE_INDEX, reduction="none")
    valid = labels != IGNORE_INDEX
    correct = (_hits(logits.detach(), labels) & valid).to(ce.dtype)
    return BatchLoss(ce, valid.to(ce.dtype), correct, logits)


def _rows(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits and labels as [B, K] (float), and the rows that are not padding (some label != -100)."""
    logits = _full(logits).reshape(logits.shape[0], -1)
    labels = labels.to(logits.device, logits.dtype).reshape(logits.shape[0], -1)
    return logits, labels, (labels != IGNORE_INDEX).any(-1)


def _multi_label(logits: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
    """mean_k BCE(σ(z_k), y_k) per row; correct: the fraction of labels on the right side of 0."""
    z, y, valid = _rows(logits, labels)
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none").mean(-1) * valid
    correct = ((z.detach() > 0) == (y > 0.5)).to(z.dtype).mean(-1) * valid
    return BatchLoss(bce, valid.to(z.dtype), correct)


def _regression(logits: torch.Tensor, labels: torch.Tensor) -> BatchLoss:
    """mean_k (f_k − y_k)² per row."""
    f, y, valid = _rows(logits, labels)
    return BatchLoss((f - y).pow(2).mean(-1) * valid, valid.to(f.dtype))


_PER_EXAMPLE: dict[str, Callable[[torch.Tensor, torch.Tensor], BatchLoss]] = {
    "causal_lm": _causal_lm,
    "seq2seq_lm": _seq2seq_lm,
    "classification": _classification,
    "multi_label": _multi_label,
    "regression": _regression,
}


def _generic(model: torch.nn.Module, batch: dict[str, Any]) -> BatchLoss:
    """The model's own loss as the loss of a one-row batch."""
    n = batch["labels"].shape[0]
    if n != 1:
        raise ValueError(
            f"{type(base_model_of(model)).__name__} returns one loss per batch, not a loss per example (hf_iau computes "
            "per-example losses for causal/seq2seq LMs, single-/multi-label classifiers and regressors), so a batch of "
            f"{n} rows has no per-example losses. Use batches of one row (unlearn_batch_size=1; batch_size=1 for "
            "evaluate_unlearning), or a model with one of those heads."
        )
    loss = model(**batch).loss
    return BatchLoss(loss.reshape(1), torch.ones(1, device=loss.device, dtype=loss.dtype))


def batch_losses(model: torch.nn.Module, batch: dict[str, Any], kind: str | None = None) -> BatchLoss:
    """Run ``model`` on ``batch`` and return per-example losses with their counts."""
    kind = kind or loss_kind(model)
    labels = batch.get("labels")
    if labels is None:
        raise ValueError(
            "A batch has no `labels`: every forget/retain row needs a label (`label`/`labels` column, "
            "or a data collator that creates `labels`, e.g. DataCollatorForLanguageModeling(mlm=False))."
        )
    if kind not in _PER_EXAMPLE:
        return _generic(model, batch)
    # a seq2seq model builds its decoder inputs from the labels; the others must not see them (no batch loss)
    inputs = batch if kind == "seq2seq_lm" else {k: v for k, v in batch.items() if k != "labels"}
    return _PER_EXAMPLE[kind](model(**inputs).logits, labels)


def true_count(batch: dict[str, Any], kind: str) -> float:
    """The count ``batch_losses`` gives ``batch`` in total: labelled tokens (predicted ones for a causal LM, after
    the one-token shift) or labelled rows."""
    labels = batch["labels"]
    if kind in TOKEN_KINDS:
        predicted = labels[:, 1:] if kind == "causal_lm" else labels
        return float((predicted != IGNORE_INDEX).sum())
    if kind == "classification":
        return float((labels != IGNORE_INDEX).sum())
    if kind in ("multi_label", "regression"):
        return float((labels != IGNORE_INDEX).reshape(labels.shape[0], -1).any(-1).sum())
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
