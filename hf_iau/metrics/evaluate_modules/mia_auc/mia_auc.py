"""Membership-inference ROC AUC: how well attack scores separate members from non-members."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import roc_auc_score

_DESCRIPTION = """ROC AUC of membership-inference scores (higher score = more likely a member), with
members = the forget set and non-members = held-out data. 0.5 means indistinguishable; after
unlearning, compare with the AUC of the model retrained without the forget set."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): attack scores, higher = member (e.g. minus the loss).
    references (`list` of `int`): 1 for members (forget set), 0 for non-members.
Returns:
    mia_auc (`float`): sklearn.metrics.roc_auc_score(references, predictions).
Examples:
    >>> metric = evaluate.load("path/to/mia_auc")
    >>> metric.compute(predictions=[0.9, 0.2, 0.8, 0.1], references=[1, 0, 1, 0])
    {'mia_auc': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MiaAuc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        y = np.asarray(references)
        if len(np.unique(y)) < 2:
            return {"mia_auc": float("nan")}
        return {"mia_auc": float(roc_auc_score(y, np.asarray(predictions, dtype=np.float64)))}
