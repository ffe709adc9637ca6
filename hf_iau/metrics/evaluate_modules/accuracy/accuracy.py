"""Accuracy for unlearning evaluation (forget / retain / test sets), optionally token-level.

acc = Σ_i w_i·[pred_i = ref_i] / Σ_i w_i over pairs whose reference is not ``ignore_index``.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Weighted accuracy. Pairs whose reference equals `ignore_index` (default -100, the
HF label padding) are dropped, so flattened causal-LM token predictions give token accuracy."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels (or token ids).
    references (`list` of `int`): true labels (or token ids).
    sample_weight (`list` of `float`, optional): per-pair weights.
    ignore_index (`int`, optional, default -100): references with this value are skipped.
Returns:
    accuracy (`float`): in [0, 1]; NaN when no pair is left.
Examples:
    >>> metric = evaluate.load("path/to/accuracy")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, sample_weight=None, ignore_index=-100):
        pred = np.asarray(predictions).reshape(-1)
        ref = np.asarray(references).reshape(-1)
        w = np.ones(len(ref)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        keep = ref != ignore_index
        total = w[keep].sum()
        acc = float((w[keep] * (pred[keep] == ref[keep])).sum() / total) if total > 0 else float("nan")
        return {"accuracy": acc}
