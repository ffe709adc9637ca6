"""Utility metrics: accuracy, token-weighted loss and perplexity.

Every function takes per-example values plus per-example weights ``counts`` (the number of
predicted tokens for a causal LM, 1 for a classifier), so a set's mean never depends on batching.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike


def _weights(values: np.ndarray, counts: ArrayLike | None) -> np.ndarray:
    if counts is None:
        return np.ones_like(values, dtype=np.float64)
    w = np.asarray(counts, dtype=np.float64).reshape(-1)
    if w.shape != values.shape:
        raise ValueError(f"counts has shape {w.shape}, values {values.shape}")
    return w


def accuracy(correct: ArrayLike, counts: ArrayLike | None = None) -> float:
    """acc = Σ_i n_i·c_i / Σ_i n_i, with c_i the fraction of example i predicted right and n_i its count.

    For a classifier (n_i = 1) this is example accuracy; for an LM (c_i = token accuracy of
    sequence i, n_i = its predicted tokens) it is token accuracy over the set.
    """
    c = np.asarray(correct, dtype=np.float64).reshape(-1)
    w = _weights(c, counts)
    return float((w * c).sum() / w.sum()) if w.sum() > 0 else float("nan")


def mean_loss(losses: ArrayLike, counts: ArrayLike | None = None) -> float:
    """L = Σ_i n_i·ℓ_i / Σ_i n_i, with ℓ_i the mean loss of example i over its n_i tokens."""
    loss = np.asarray(losses, dtype=np.float64).reshape(-1)
    w = _weights(loss, counts)
    return float((w * loss).sum() / w.sum()) if w.sum() > 0 else float("nan")


def perplexity(losses: ArrayLike, counts: ArrayLike | None = None) -> float:
    """PPL = exp(L), L the token-weighted mean cross-entropy (nats) from :func:`mean_loss`."""
    value = mean_loss(losses, counts)
    return math.exp(value) if value < 709 else float("inf")
