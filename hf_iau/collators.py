"""Causal-LM collation that never overwrites a dataset's own ``labels``.

``DataCollatorForLanguageModeling(mlm=False)`` sets ``labels = input_ids`` and then masks every
position whose id is the pad id. Both are wrong for question–answer data: a row's prompt-masked
labels (question tokens = -100) are replaced by the full sequence, and with
``pad_token = eos_token`` (usual for Llama) the EOS target is masked too. Here:

* rows that carry ``labels`` keep them; padding adds -100;
* rows without ``labels`` get ``labels = input_ids``;
* in both cases a position is a target only where ``attention_mask == 1`` (padding is found by the
  attention mask, never by comparing ids with the pad id).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

IGNORE_INDEX = -100
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "labels")


def _pad(rows: Sequence[Sequence[int]], value: int, length: int, left: bool) -> torch.Tensor:
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        t = torch.as_tensor(row, dtype=torch.long).view(-1)
        if left:
            out[i, length - t.numel() :] = t
        else:
            out[i, : t.numel()] = t
    return out


@dataclass
class CausalLMCollator:
    """Pad ``input_ids``/``attention_mask``/``labels`` for a causal LM; keep given labels.

    Args:
        tokenizer: gives ``pad_token_id`` (falls back to ``eos_token_id``) and ``padding_side``.
        pad_token_id: overrides the tokenizer's (padding is masked, so any id works without a tokenizer).
        pad_to_multiple_of: round the padded length up to a multiple of this.
        label_pad_token_id: label of padded (and attention-masked) positions.

    Every row needs ``input_ids``; ``attention_mask`` defaults to ones. Either every row has
    ``labels`` or none has (then ``labels = input_ids``). Labels where ``attention_mask == 0`` become
    ``label_pad_token_id``. Other keys are stacked with ``torch.tensor`` when possible, else kept as lists.
    """

    tokenizer: Any = None
    pad_to_multiple_of: int | None = None
    pad_token_id: int | None = None
    label_pad_token_id: int = IGNORE_INDEX

    def _pad_id(self) -> int:
        if self.pad_token_id is not None:
            return int(self.pad_token_id)
        tok = self.tokenizer
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(tok, name, None) if tok is not None else None
            if value is not None:
                return int(value)
        raise ValueError(
            "CausalLMCollator needs a pad id: give the tokenizer a pad token "
            "(e.g. `tokenizer.pad_token = tokenizer.eos_token`)."
        )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("CausalLMCollator got an empty list of rows.")
        if any("input_ids" not in f for f in features):
            raise ValueError("CausalLMCollator: every row needs `input_ids` (tokenize the text first).")
        with_labels = ["labels" in f and f["labels"] is not None for f in features]
        if any(with_labels) and not all(with_labels):
            raise ValueError(
                "CausalLMCollator: some rows have `labels` and some do not; give every row labels "
                "(prompt tokens = -100) or none (then labels = input_ids)."
            )
        ids = [list(torch.as_tensor(f["input_ids"]).view(-1).tolist()) for f in features]
        masks = [
            list(torch.as_tensor(f["attention_mask"]).view(-1).tolist()) if f.get("attention_mask") is not None
            else [1] * len(r)
            for f, r in zip(features, ids)
        ]
        labels = [list(torch.as_tensor(f["labels"]).view(-1).tolist()) for f in features] if all(with_labels) else ids
        for i, (r, m, lab) in enumerate(zip(ids, masks, labels)):
            if not len(r) == len(m) == len(lab):
                raise ValueError(
                    f"CausalLMCollator: row {i} has input_ids/attention_mask/labels of lengths "
                    f"{len(r)}/{len(m)}/{len(lab)}; they must be equal."
                )
        length = max(len(r) for r in ids)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        batch: dict[str, Any] = {
            "input_ids": _pad(ids, self._pad_id(), length, left),
            "attention_mask": _pad(masks, 0, length, left),
        }
        lab = _pad(labels, self.label_pad_token_id, length, left)
        batch["labels"] = lab.masked_fill(batch["attention_mask"] == 0, self.label_pad_token_id)
        for key in features[0]:
            if key in _SEQUENCE_KEYS:
                continue
            values = [f.get(key) for f in features]
            if all(isinstance(v, (list, tuple)) and len(v) == len(r) for v, r in zip(values, ids)):
                batch[key] = _pad(values, 0, length, left)  # per-token extras, e.g. token_type_ids
                continue
            try:
                batch[key] = torch.tensor(values)
            except (TypeError, ValueError, RuntimeError):
                batch[key] = values
        return batch
