"""Robustness probes of an unlearned model: does forgotten knowledge come back?

Three probes the LLM-unlearning literature now reports next to forget quality:

- relearning (Hu et al. 2024; Lynch et al. 2024): a few fine-tuning steps on a small part of the
  forget set, then the forget metrics on the REST of it: knowledge that was hidden, not removed,
  returns faster than the retrained model relearns it;
- weight quantisation (Zhang et al. 2024, "Catastrophic failure of LLM unlearning via
  quantization"): round-to-nearest int8 / 4-bit weights; gradient-ascent style updates are small
  enough for rounding to undo them;
- paraphrased questions: the same facts asked in other words.

Each probe returns a model or a dataset; :func:`robustness_probes` applies a user ``measure``
(model, rows) → {metric: value} to each variant, so the forget metrics stay the caller's choice.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

Measure = Callable[[torch.nn.Module, Any], Mapping[str, float]]


@torch.no_grad()
def quantize_weights(model: torch.nn.Module, bits: int) -> torch.nn.Module:
    """A copy of ``model`` whose Linear and Embedding weights are rounded to ``bits``-bit integers and back
    (symmetric round-to-nearest per output row: s = max|w_row| / (2^(bits−1) − 1), w ← s·clamp(round(w/s))).

    Biases and norms stay in full precision; a weight shared by two modules (tied embeddings) is
    rounded once. ``model`` itself is not changed.
    """
    if not 2 <= bits <= 16:
        raise ValueError(f"bits={bits} must lie in 2..16 (8 = int8, 4 = 4-bit).")
    out = copy.deepcopy(model)
    qmax = 2 ** (bits - 1) - 1
    seen: set[int] = set()
    for module in out.modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) or id(module.weight) in seen:
            continue
        seen.add(id(module.weight))
        w = module.weight.data
        flat = w.reshape(w.size(0), -1).float()
        scale = flat.abs().amax(dim=1, keepdim=True) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = (flat / scale).round().clamp(-qmax, qmax) * scale
        w.copy_(q.reshape(w.shape).to(w.dtype))
    return out


def relearn_split(n_rows: int, fraction: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """(relearn rows, held-out rows) of a forget set of ``n_rows``: a seeded ``fraction`` (at least one row)
    to fine-tune on and the rest to measure."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction} must lie in (0, 1), e.g. 0.1.")
    if n_rows < 2:
        raise ValueError(f"relearning needs at least 2 forget rows (one to train, one to measure), got {n_rows}.")
    k = min(n_rows - 1, max(1, round(fraction * n_rows)))
    order = np.random.default_rng([seed, 0x4E1]).permutation(n_rows)
    return sorted(order[:k].tolist()), sorted(order[k:].tolist())


def relearn(
    model: torch.nn.Module,
    examples: Any,
    *,
    data_collator: Callable,
    steps: int = 10,
    learning_rate: float = 1e-4,
    batch_size: int = 8,
    seed: int = 0,
) -> torch.nn.Module:
    """A copy of ``model`` fine-tuned for ``steps`` AdamW steps (constant ``learning_rate``) on ``examples``
    (model inputs with ``labels``) with ``transformers.Trainer``, every parameter trainable (an attacker
    fine-tunes the whole released model, whatever the method froze); ``model`` itself is not changed."""
    from transformers import Trainer, TrainingArguments

    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1.")
    twin = copy.deepcopy(model)
    for p in twin.parameters():
        p.requires_grad_(True)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=learning_rate,
            lr_scheduler_type="constant", weight_decay=0.0, seed=seed, data_seed=seed, report_to=[],
            save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
        )
        Trainer(model=twin, args=args, train_dataset=examples, data_collator=data_collator).train()
    return twin.eval()


def paraphrased(rows: Any, question_column: str = "question", paraphrased_column: str = "paraphrased_question") -> Any:
    """``rows`` (a QA Dataset) with each question replaced by its paraphrase (same answers)."""
    missing = [c for c in (question_column, paraphrased_column) if c not in rows.column_names]
    if missing:
        raise ValueError(f"paraphrased(): columns {missing} are missing; pass question_column / paraphrased_column.")
    return rows.remove_columns(question_column).rename_column(paraphrased_column, question_column)


def robustness_probes(
    model: torch.nn.Module,
    measure: Measure,
    forget_rows: Any,
    *,
    quantization_bits: Sequence[int] = (8, 4),
    relearn_examples: Callable[[Any], Any] | None = None,
    data_collator: Callable | None = None,
    relearn_fraction: float = 0.1,
    relearn_steps: int = 10,
    relearn_learning_rate: float = 1e-4,
    question_column: str = "question",
    paraphrased_column: str | None = "paraphrased_question",
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """``measure`` of the model under each probe: ``"as_is"``, ``"int<b>"`` per bit width, ``"relearned"``
    (after :func:`relearn` on a ``relearn_fraction`` of ``forget_rows``, measured with the model as is
    on the held-out rest as ``"relearn_baseline"``, and after, as ``"relearned"``), and ``"paraphrased"``.

    ``relearn_examples`` maps rows to model inputs (e.g. ``lambda d: qa_to_lm_examples(d, tok)``);
    relearning is skipped without it or ``data_collator``; paraphrases are skipped when the rows lack
    ``paraphrased_column``.
    """
    out: dict[str, dict[str, float]] = {"as_is": dict(measure(model, forget_rows))}
    for bits in quantization_bits:
        out[f"int{bits}"] = dict(measure(quantize_weights(model, bits), forget_rows))
    if relearn_examples is not None and data_collator is not None:
        train_idx, held_idx = relearn_split(len(forget_rows), relearn_fraction, seed)
        held = forget_rows.select(held_idx)
        twin = relearn(model, relearn_examples(forget_rows.select(train_idx)), data_collator=data_collator,
                       steps=relearn_steps, learning_rate=relearn_learning_rate, seed=seed)
        out["relearn_baseline"] = dict(measure(model, held))
        out["relearned"] = dict(measure(twin, held))
    if paraphrased_column and paraphrased_column in forget_rows.column_names:
        out["paraphrased"] = dict(measure(model, paraphrased(forget_rows, question_column, paraphrased_column)))
    return out
