"""Per-example distance to the retrain distribution (KLoM-style, Georgiev et al. 2024).

A set-level gap can be small while single examples sit far from where any retrained model puts
them. For each example x, let m_k(x) be the label margin of the k-th retrained model (k = 1..R,
retrains differing only in seed) and u_j(x) that of the j-th unlearned model (j = 1..U). With
Gaussian fits N(μ_r, σ_r²) and N(μ_u, σ_u²) of these values,

    KLoM(x) = KL(N(μ_r, σ_r²) ‖ N(μ_u, σ_u²)) = log(σ_u/σ_r) + (σ_r² + (μ_r − μ_u)²) / (2σ_u²) − ½,

where σ² = sample variance (ddof 1) + ``min_std``² (default 0.5 nat: margins closer than that
count as the same, and an example on which every retrain agrees exactly does not divide by zero). With one unlearned model (U = 1) its spread is taken
to be the retrain's, σ_u = σ_r, and KLoM(x) = z(x)²/2 with z(x) = (μ_u − μ_r)/σ_r: how many retrain
standard deviations the unlearned output lies from the retrain mean. The paper bins ~100 models per
side into histograms; a Gaussian fit is what a handful of retrains supports.

Margin (the model output compared): for a classifier, z_y − log Σ_{c≠y} exp z_c of the logits z and
label y; for a causal LM, the same per predicted token (after the one-token shift, labels ≠ -100),
averaged over the example's tokens.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ..losses import IGNORE_INDEX, base_model_of, loss_kind


def label_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_y − logsumexp_{c≠y} z_c along the last dim (labels of -100 give 0)."""
    z = logits.double()
    y = labels.clamp_min(0).unsqueeze(-1)
    z_y = z.gather(-1, y).squeeze(-1)
    others = z.scatter(-1, y, float("-inf"))
    return torch.where(labels == IGNORE_INDEX, torch.zeros_like(z_y), z_y - torch.logsumexp(others, dim=-1))


@torch.no_grad()
def example_margins(model: torch.nn.Module, batches: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """Label margin of every example in ``batches`` (classifier or causal LM; mean over tokens for LMs)."""
    kind = loss_kind(model)
    if kind == "generic":
        raise ValueError(f"example_margins needs a classifier or a causal LM, got {type(base_model_of(model)).__name__}")
    was = model.training
    model.eval()
    out = []
    try:
        for batch in batches:
            labels = batch["labels"]
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            if kind == "causal_lm":
                shifted = labels[:, 1:].to(logits.device)
                m = label_margin(logits[:, :-1], shifted)
                mask = (shifted != IGNORE_INDEX).double()
                out.append(((m * mask).sum(-1) / mask.sum(-1).clamp_min(1)).cpu())
            else:
                out.append(label_margin(logits, labels.to(logits.device).view(-1)).cpu())
    finally:
        model.train(was)
    return torch.cat(out).numpy() if out else np.zeros(0)


def _moments(values: np.ndarray, min_std: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean and floored variance over axis 0 (variance None for a single row)."""
    mean = values.mean(axis=0)
    if values.shape[0] < 2:
        return mean, None
    return mean, values.var(axis=0, ddof=1) + min_std**2


def _rows(unlearned: np.ndarray, retrained: np.ndarray, min_std: float) -> tuple[np.ndarray, np.ndarray]:
    u = np.atleast_2d(np.asarray(unlearned, dtype=np.float64))
    r = np.atleast_2d(np.asarray(retrained, dtype=np.float64))
    if r.shape[0] < 2:
        raise ValueError(f"retrained: need the margins of at least 2 retrained models (rows), got {r.shape[0]}")
    if u.shape[1] != r.shape[1]:
        raise ValueError(f"unlearned has {u.shape[1]} examples but retrained has {r.shape[1]}: pass the same examples")
    if not min_std > 0:
        raise ValueError(f"min_std must be > 0 (the floor of the spread), got {min_std}")
    return u, r


def klom_scores(unlearned: np.ndarray, retrained: np.ndarray, min_std: float = 0.5) -> np.ndarray:
    """Per-example KL(N(μ_r, σ_r²) ‖ N(μ_u, σ_u²)) of margins ``unlearned`` [U, N] (or [N]) and ``retrained`` [R, N].

    Needs R ≥ 2 retrained models; with U = 1 the unlearned spread is the retrain's (score = z²/2).
    """
    u, r = _rows(unlearned, retrained, min_std)
    mu_r, var_r = _moments(r, min_std)
    mu_u, var_u = _moments(u, min_std)
    var_u = var_r if var_u is None else var_u
    return 0.5 * np.log(var_u / var_r) + (var_r + (mu_r - mu_u) ** 2) / (2 * var_u) - 0.5


def z_scores(unlearned: np.ndarray, retrained: np.ndarray, min_std: float = 0.5) -> np.ndarray:
    """(μ_u − μ_r) / σ_r per example: where the mean unlearned output falls in the retrain distribution."""
    u, r = _rows(unlearned, retrained, min_std)
    mu_r, var_r = _moments(r, min_std)
    return (u.mean(axis=0) - mu_r) / np.sqrt(var_r)


def score_summary(scores: np.ndarray, forget_mask: np.ndarray) -> dict[str, float]:
    """Median and 95th percentile of ``scores`` on the forget examples and on the rest."""
    s = np.asarray(scores, dtype=np.float64)
    f = np.asarray(forget_mask, dtype=bool)
    if f.shape != s.shape:
        raise ValueError(f"forget_mask has shape {f.shape}, scores {s.shape}: one flag per example")
    out = {}
    for name, part in (("forget", s[f]), ("rest", s[~f])):
        out[f"{name}_median"] = float(np.median(part)) if part.size else float("nan")
        out[f"{name}_p95"] = float(np.percentile(part, 95)) if part.size else float("nan")
    return out


__all__ = ["example_margins", "klom_scores", "label_margin", "score_summary", "z_scores"]
