"""Canary exposure (Carlini et al. 2019): exposure = log2|R| − log2 rank(secret among R by loss)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Exposure of inserted secrets (canaries). Each secret is ranked, lowest loss first,
among all non-secret candidates plus itself (|R| = non-secrets + 1); rank = 1 + number of
non-secrets with a strictly lower loss. Exposure log2|R| means the secret is the most likely
candidate; a forgotten secret should look like a random candidate."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `float`): loss (e.g. sequence NLL) of every candidate.
    references (`list` of `int`): 1 for a secret, 0 for other candidates.
Returns:
    exposure (`float`): mean exposure over secrets.
    exposures (`list` of `float`): exposure of each secret, in input order.
Examples:
    >>> metric = evaluate.load("path/to/canary_exposure")
    >>> metric.compute(predictions=[0.1, 2.0, 3.0, 4.0], references=[1, 0, 0, 0])
    {'exposure': 2.0, 'exposures': [2.0]}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CanaryExposure(evaluate.Metric):
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
        loss = np.asarray(predictions, dtype=np.float64)
        secret = np.asarray(references).astype(bool)
        others = loss[~secret]
        size = len(others) + 1
        exposures = [float(np.log2(size) - np.log2(1 + (others < s).sum())) for s in loss[secret]]
        mean = float(np.mean(exposures)) if exposures else float("nan")
        return {"exposure": mean, "exposures": exposures}
