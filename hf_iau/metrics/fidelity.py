"""Fidelity to the retrained model: metric gap and divergence of predictive distributions.

Divergences use natural logarithms and the direction KL(P_retrained ‖ P_model): the cost of
using the model's predictions in place of the gold (retrained) ones.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def kl_js_per_position(p_logits: torch.Tensor, q_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position (all dims but the last): KL(P‖Q) = Σ_c P_c log(P_c/Q_c) and
    JS(P,Q) = ½KL(P‖M) + ½KL(Q‖M), M = ½(P+Q), for P = softmax(p_logits), Q = softmax(q_logits)."""
    lp = F.log_softmax(p_logits.double(), dim=-1)
    lq = F.log_softmax(q_logits.double().to(lp.device), dim=-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    lm = torch.logaddexp(lp, lq) - np.log(2.0)
    js = 0.5 * (lp.exp() * (lp - lm)).sum(-1) + 0.5 * (lq.exp() * (lq - lm)).sum(-1)
    return kl.clamp_min(0), js.clamp_min(0)


def causal_lm_mask(labels: torch.Tensor) -> torch.Tensor:
    """Predicted-token mask after the causal shift: ``labels[:, 1:] != -100``."""
    return labels[:, 1:] != IGNORE_INDEX


def kl_js_divergence(
    p_logits: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[float, float]:
    """Mean KL(P‖Q) and JS(P,Q) over positions (those where ``mask`` is true, if given).

    Classifiers: logits ``[N, C]``, the mean is over examples. Causal LMs: pass
    ``logits[:, :-1]`` of both models and ``causal_lm_mask(labels)``: the mean is over predicted tokens.
    """
    kl, js = kl_js_per_position(p_logits, q_logits)
    if mask is not None:
        m = mask.to(kl.device)
        kl, js = kl[m], js[m]
    if kl.numel() == 0:
        return float("nan"), float("nan")
    return float(kl.mean()), float(js.mean())


def gap_to_retrain(
    model_metrics: Mapping[str, float],
    retrained_metrics: Mapping[str, float],
    keys: Iterable[str] = ("forget_accuracy", "test_accuracy", "mia_loss_auc"),
) -> float:
    """gap = (1/|K|) Σ_{k∈K} |m_k(model) − m_k(retrained)| over the keys both define (NaN if none)."""
    diffs = [
        abs(float(model_metrics[k]) - float(retrained_metrics[k]))
        for k in keys
        if k in model_metrics and k in retrained_metrics
    ]
    return float(np.mean(diffs)) if diffs else float("nan")
