"""Canary exposure (Carlini et al. 2019, "The Secret Sharer").

exposure = log2(|R|) − log2(rank), where R is the candidate set (the secret included) and rank is
the secret's 1-based position when R is sorted by loss, lowest first. Ties count in the secret's
favour (only strictly lower losses rank above it). Maximum log2(|R|): the secret is the most
likely candidate; ≈ 1/ln 2 on average for a random position.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike

from ..losses import IGNORE_INDEX, batch_losses


def canary_rank(losses: ArrayLike, secret_index: int) -> int:
    """1-based rank of ``losses[secret_index]``: 1 + #{j : losses[j] < losses[secret_index]}."""
    loss = np.asarray(losses, dtype=np.float64).reshape(-1)
    return int(1 + (loss < loss[secret_index]).sum())


def canary_exposure(losses: ArrayLike, secret_index: int) -> float:
    """exposure = log2(|R|) − log2(rank of the secret), ``losses`` over all candidates R."""
    n = np.asarray(losses).size
    return math.log2(n) - math.log2(canary_rank(losses, secret_index))


@torch.no_grad()
def sequence_nll(
    model: torch.nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 32
) -> np.ndarray:
    """Total negative log-likelihood (nats, summed over predicted tokens) of each text under a causal LM."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        for start in range(0, len(texts), batch_size):
            enc = [tokenizer(t)["input_ids"] for t in texts[start : start + batch_size]]
            width = max(len(e) for e in enc)
            ids = torch.full((len(enc), width), pad_id if pad_id is not None else 0, dtype=torch.long)
            att = torch.zeros((len(enc), width), dtype=torch.long)
            for i, e in enumerate(enc):
                ids[i, : len(e)] = torch.tensor(e)
                att[i, : len(e)] = 1
            labels = ids.masked_fill(att == 0, IGNORE_INDEX)
            batch = {"input_ids": ids.to(device), "attention_mask": att.to(device), "labels": labels.to(device)}
            out.append(batch_losses(model, batch, "causal_lm").loss_sum.double().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


def model_canary_exposure(
    model: torch.nn.Module, tokenizer, secret: str, candidates: Sequence[str], batch_size: int = 32
) -> float:
    """Exposure of ``secret`` among ``candidates`` (the secret is added if absent) by sequence NLL."""
    pool = list(candidates)
    if secret not in pool:
        pool.append(secret)
    return canary_exposure(sequence_nll(model, tokenizer, pool, batch_size), pool.index(secret))
