"""Membership-inference attacks (MIA): per-example scores and ROC AUC.

Convention: a higher score means "more likely a member". AUC is taken with members = the
forget set and non-members = held-out test data; 0.5 = indistinguishable. After exact
unlearning the target is the retrained model's AUC, not 0.5.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from sklearn.metrics import roc_auc_score

IGNORE_INDEX = -100


def roc_auc(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> float:
    """ROC AUC of telling members (label 1) from non-members (label 0) by score (sklearn)."""
    m = np.asarray(member_scores, dtype=np.float64).reshape(-1)
    n = np.asarray(nonmember_scores, dtype=np.float64).reshape(-1)
    if len(m) == 0 or len(n) == 0:
        return float("nan")
    y = np.concatenate([np.ones(len(m)), np.zeros(len(n))])
    return float(roc_auc_score(y, np.concatenate([m, n])))


def loss_scores(losses: ArrayLike) -> np.ndarray:
    """LOSS attack (Yeom et al. 2018): s_i = −ℓ_i."""
    return -np.asarray(losses, dtype=np.float64)


def zlib_length(text: str) -> int:
    """Length in bytes of ``zlib.compress(text.encode("utf-8"))``."""
    return len(zlib.compress(text.encode("utf-8")))


def zlib_scores(losses: ArrayLike, zlib_lengths: ArrayLike) -> np.ndarray:
    """ZLib attack (Carlini et al. 2021): s_i = −ℓ_i / zlib_i, ℓ_i the mean token loss of text i."""
    return -np.asarray(losses, dtype=np.float64) / np.asarray(zlib_lengths, dtype=np.float64)


def reference_scores(target_losses: ArrayLike, reference_losses: ArrayLike) -> np.ndarray:
    """Reference-model (ratio) attack: s_i = −(ℓ_i(target) − ℓ_i(reference))."""
    return -(np.asarray(target_losses, dtype=np.float64) - np.asarray(reference_losses, dtype=np.float64))


CONVENTIONS = ("open_unlearning", "muse")
DEFAULT_CONVENTION = "open_unlearning"
DEPRECATED_CONVENTIONS = {"hf_iau": "muse"}  # old name → new name; removed in the next release
DEFAULT_MIN_K = 0.4  # TOFU and MUSE configurations (open-unlearning) use k = 0.4 for LMs


@dataclass
class TokenLogProbs:
    """Per predicted token (after the causal shift): log p(x_t), and μ_t, σ_t of log p over the vocabulary."""

    logp: torch.Tensor  # [B, T-1] log p(x_t | x_<t)
    mu: torch.Tensor  # [B, T-1] E_{z~p}[log p(z)]
    sigma: torch.Tensor  # [B, T-1] sqrt(Var_{z~p}[log p(z)])
    mask: torch.Tensor  # [B, T-1] bool: the tokens the scores use
    target: torch.Tensor | None = None  # [B, T-1] the target ids (-100 outside ``mask``)


def resolve_convention(convention: str, field: str = "convention") -> str:
    """The canonical token convention: ``"open_unlearning"`` or ``"muse"`` (the old name ``"hf_iau"``
    still maps to ``"muse"`` with a FutureWarning); anything else is a ValueError naming ``field``."""
    if convention in DEPRECATED_CONVENTIONS:
        new = DEPRECATED_CONVENTIONS[convention]
        warnings.warn(f"{field}={convention!r} is renamed {new!r}; the old name goes in the next release.",
                      FutureWarning, stacklevel=3)
        return new
    if convention not in CONVENTIONS:
        raise ValueError(f"{field} must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    return convention


def scored_token_mask(labels: torch.Tensor, convention: str = DEFAULT_CONVENTION) -> torch.Tensor:
    """Which predicted tokens (after the shift, ``[B, T-1]``) per-token metrics use.

    ``"muse"`` (MUSE's original code): every labelled target, ``labels[:, 1:] != -100`` (the loss's
    tokens). ``"open_unlearning"`` (default): the span from the first labelled position to the
    second-to-last labelled one (open-unlearning drops the last labelled token, usually EOS); empty
    with fewer than two labelled tokens. Position 0 is never predicted in either convention.
    """
    convention = resolve_convention(convention)
    lab = labels != IGNORE_INDEX
    if convention == "muse":
        return lab[:, 1:]
    pos = torch.arange(labels.size(-1), device=labels.device).expand_as(labels)
    last = torch.where(lab, pos, -1).amax(-1, keepdim=True)
    end = torch.where(lab & (pos < last), pos, -1).amax(-1, keepdim=True)  # second-to-last labelled
    first = torch.where(lab, pos, labels.size(-1)).amin(-1, keepdim=True)
    return ((pos >= first) & (pos <= end))[:, 1:]


def scored_targets(
    labels: torch.Tensor, input_ids: torch.Tensor | None = None, convention: str = DEFAULT_CONVENTION
) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, mask), both ``[B, T-1]``: the target id of each scored predicted token (-100 elsewhere).

    Targets are ``labels[:, 1:]``, or ``input_ids[:, 1:]`` inside open-unlearning's span when given.
    """
    convention = resolve_convention(convention)
    mask = scored_token_mask(labels, convention)
    target = labels[:, 1:]
    if convention == "open_unlearning" and input_ids is not None:
        target = input_ids[:, 1:].to(labels.device)
    if (mask & (target == IGNORE_INDEX)).any():
        raise ValueError("open_unlearning convention: the labelled span has unlabelled positions; pass `input_ids`.")
    return target.masked_fill(~mask, IGNORE_INDEX), mask


def _full(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@torch.no_grad()
def token_log_probs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    convention: str = DEFAULT_CONVENTION,
) -> TokenLogProbs:
    """Shift ``logits[:, :-1]`` against the targets ``[:, 1:]`` and return per-token log-prob statistics.

    Targets are ``labels`` (``"muse"``) or, inside open-unlearning's span, ``input_ids`` when given
    (``"open_unlearning"``, see :func:`scored_token_mask`). σ_t = sqrt(max(Var, 0)) (``"muse"``) or
    sqrt(max(Var, 1e-6)) (``"open_unlearning"``).
    """
    convention = resolve_convention(convention)
    lp = F.log_softmax(_full(logits[:, :-1, :]), dim=-1)
    target, mask = scored_targets(labels, input_ids, convention)
    target, mask = target.to(lp.device), mask.to(lp.device)
    logp = lp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    p = lp.exp()
    mu = (p * lp).sum(-1)
    var = (p * lp.square()).sum(-1) - mu.square()
    var = var.clamp_min(1e-6 if convention == "open_unlearning" else 0.0)
    return TokenLogProbs(logp, mu, var.sqrt(), mask, target)


def _mean_lowest(values: torch.Tensor, mask: torch.Tensor, k: float) -> np.ndarray:
    """Mean of the max(1, ⌊k·n_i⌋) lowest valid values of each row (NaN for rows with n_i = 0)."""
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    v = values.double().masked_fill(~mask, float("inf")).sort(dim=-1).values
    n = mask.sum(-1)
    m = (n.double() * k).floor().clamp_min(1).long()
    take = torch.arange(v.size(-1), device=v.device).unsqueeze(0) < m.unsqueeze(-1)
    out = torch.where(take, v, torch.zeros_like(v)).sum(-1) / m
    out[n == 0] = float("nan")
    return out.cpu().numpy()


def min_k_scores(stats: TokenLogProbs, k: float = DEFAULT_MIN_K) -> np.ndarray:
    """Min-K% (Shi et al. 2024): s_i = mean of the max(1, ⌊k·n_i⌋) lowest log p(x_t) of sequence i.

    NaN for a sequence with no scored token (callers skip such rows).
    """
    return _mean_lowest(stats.logp, stats.mask, k)


def min_k_plus_plus_scores(stats: TokenLogProbs, k: float = DEFAULT_MIN_K) -> np.ndarray:
    """Min-K%++ (Zhang et al. 2024): Min-K% over z_t = (log p(x_t) − μ_t) / σ_t.

    μ_t and σ_t are the mean and standard deviation of log p(z) for z drawn from the model's
    next-token distribution at position t (expectations over the vocabulary weighted by p).
    """
    z = (stats.logp.double() - stats.mu.double()) / stats.sigma.double().clamp_min(1e-12)
    return _mean_lowest(z, stats.mask, k)


def zlib_token_ids(labels: torch.Tensor, convention: str = DEFAULT_CONVENTION) -> list[list[int]]:
    """Token ids whose decoded text ZLib compresses: the loss's targets, ``labels[:, 1:] != -100``
    (``"muse"``), or every labelled token (``"open_unlearning"``). Never the unlabelled prompt."""
    convention = resolve_convention(convention)
    lab = labels[:, 1:] if convention == "muse" else labels
    return [row[row != IGNORE_INDEX].tolist() for row in lab]


def shadow_features(logits: torch.Tensor | np.ndarray, labels: ArrayLike) -> np.ndarray:
    """Attack features of a classifier: softmax probabilities sorted descending, then CE loss."""
    logits = torch.as_tensor(logits).double()
    labels = torch.as_tensor(np.asarray(labels)).long().view(-1)
    probs = logits.softmax(-1).sort(dim=-1, descending=True).values
    loss = F.cross_entropy(logits, labels, reduction="none")
    return torch.cat([probs, loss.unsqueeze(-1)], dim=-1).numpy()


def shadow_attack_scores(
    member_features: ArrayLike,
    nonmember_features: ArrayLike,
    eval_features: ArrayLike,
    seed: int = 0,
) -> np.ndarray:
    """Shadow-model attack: fit a logistic regression on member (1) vs non-member (0) features,
    return P(member) for ``eval_features``.

    Features come from :func:`shadow_features` of a shadow model on its own training data vs
    held-out data; as a cheaper stand-in, of the target model on retain data vs part of the test set.
    Classes are balanced by weighting; features are standardised.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xm = np.asarray(member_features, dtype=np.float64)
    xn = np.asarray(nonmember_features, dtype=np.float64)
    x = np.concatenate([xm, xn])
    y = np.concatenate([np.ones(len(xm)), np.zeros(len(xn))])
    clf = make_pipeline(
        StandardScaler(),
        LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed),
    )
    clf.fit(x, y)
    return clf.predict_proba(np.asarray(eval_features, dtype=np.float64))[:, 1]
