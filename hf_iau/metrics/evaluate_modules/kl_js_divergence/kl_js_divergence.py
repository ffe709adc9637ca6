"""KL and Jensen-Shannon divergence between two models' predictive distributions.

KL(R‖P) = Σ_c R_c log(R_c / P_c); JS(R,P) = ½KL(R‖M) + ½KL(P‖M), M = ½(R+P); natural log,
averaged over rows. References R = the retrained (gold) model, predictions P = the model tested.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Mean KL(references ‖ predictions) and Jensen-Shannon divergence (nats) over rows of
class (or next-token) distributions. For causal LMs pass one row per predicted token."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): distributions of the model tested (one row each).
    references (`list` of `list` of `float`): distributions of the retrained model.
    from_logits (`bool`, default False): rows are logits; a softmax is applied first.
Returns:
    kl_divergence (`float`), js_divergence (`float`): means over rows.
Examples:
    >>> metric = evaluate.load("path/to/kl_js_divergence")
    >>> metric.compute(predictions=[[0.5, 0.5]], references=[[0.5, 0.5]])
    {'kl_divergence': 0.0, 'js_divergence': 0.0}
"""


def _log_probs(rows, from_logits):
    x = np.asarray(rows, dtype=np.float64)
    if from_logits:
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    x = x / x.sum(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return np.log(x)


def _kl(lp, lq):
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (lp - lq), 0.0)
    return terms.sum(-1)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class KlJsDivergence(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.Value("float64")),
                    "references": datasets.List(datasets.Value("float64")),
                }
            ),
        )

    def _compute(self, predictions, references, from_logits=False):
        lp = _log_probs(predictions, from_logits)
        lr = _log_probs(references, from_logits)
        lm = np.logaddexp(lp, lr) - np.log(2.0)
        kl = _kl(lr, lp)
        js = 0.5 * _kl(lr, lm) + 0.5 * _kl(lp, lm)
        return {"kl_divergence": float(np.maximum(kl, 0).mean()), "js_divergence": float(np.maximum(js, 0).mean())}
