"""K-FAC curvature for the counterfactual estimate: F̂_W ≈ κ·(S ⊗ A) per Linear / Conv1D / Conv2d weight.

For a layer y = W·a (+ b) the per-example gradient is ∇W_i = Σ_t δ_it a_itᵀ (δ = ∂L/∂y); K-FAC (Martens &
Grosse 2015; KFC for convolutions, a the unfolded patch) approximates Σ_i vec(∇W_i) vec(∇W_i)ᵀ by the
Kronecker product of A = Σ_{i,t} a aᵀ and S = Σ_{i,t} δ δᵀ, over the positions t with δ ≠ 0 (padding, masked
positions and the like carry no gradient, so A does not depend on how rows are batched). With A = Q_A diag(α) Q_Aᵀ, S = Q_S diag(σ) Q_Sᵀ,

    P·G = Q_S [ (Q_Sᵀ G Q_A) ⊘ (κ·σ αᵀ + d) ] Q_Aᵀ,

κ = tr F̂_W / (Σσ · Σα) so the layer keeps the trace of its diagonal Fisher F̂_W (layers on K-FAC and layers on
the diagonal share one scale), d = δ·mean F̂ the damping of the diagonal preconditioner. Biases, embeddings,
norms, weights shared by several layers and layers wider than ``MAX_DIM`` keep the diagonal.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

MAX_DIM = 4096  # a factor is dim × dim: wider layers keep the diagonal


def _kind(module: torch.nn.Module) -> str | None:
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, Conv1D):
        return "conv1d"
    if isinstance(module, torch.nn.Conv2d):
        return "conv2d"
    return None


class KroneckerFactors:
    """A = Σ a aᵀ and S = Σ δ δᵀ per parameter index, fed by :class:`hf_iau.curvature.ExampleGradients`."""

    def __init__(self) -> None:
        self.a: dict[int, torch.Tensor] = {}
        self.s: dict[int, torch.Tensor] = {}
        self.kinds: dict[int, str] = {}

    def add(self, k: int, module: torch.nn.Module, a: torch.Tensor, g: torch.Tensor, scale: float) -> None:
        """Add one batch of layer inputs ``a`` and output gradients ``g`` (multiplied by ``scale``) of weight ``k``."""
        kind = _kind(module)
        if kind is None:
            return
        if kind == "conv2d":
            a = F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)  # [c, in·k·k, L]
            a, g = a.transpose(1, 2), g.reshape(g.shape[0], g.shape[1], -1).transpose(1, 2)  # [c, L, ·]
        a2 = a.reshape(-1, a.shape[-1]).double()
        g2 = g.reshape(-1, g.shape[-1]).double() / scale
        used = g2.abs().sum(1) > 0  # padded / masked positions (no output gradient) stay out of A: batching-independent
        a2, g2 = a2[used], g2[used]
        if max(a2.shape[1], g2.shape[1]) > MAX_DIM:
            return
        self.kinds[k] = kind
        self.a[k] = a2.T @ a2 + self.a.get(k, 0)
        self.s[k] = g2.T @ g2 + self.s.get(k, 0)

    def drop(self, k: int) -> None:
        for held in (self.a, self.s, self.kinds):
            held.pop(k, None)

    def merged(self, other: "KroneckerFactors", weight: float) -> "KroneckerFactors":
        """weight·self + other, for the parameters both hold (the retained sample scaled to the retain set)."""
        out = KroneckerFactors()
        for k in set(self.a) & set(other.a):
            out.kinds[k] = self.kinds[k]
            out.a[k], out.s[k] = weight * self.a[k] + other.a[k], weight * self.s[k] + other.s[k]
        return out


def without(factors: KroneckerFactors, own: KroneckerFactors) -> KroneckerFactors:
    """The factors of the data left after removing a set whose own factors are ``own`` (A − A_set, S − S_set; a
    weight the set has no factors for keeps its own)."""
    out = KroneckerFactors()
    for k in factors.a:
        out.kinds[k] = factors.kinds[k]
        out.a[k] = factors.a[k] - own.a[k] if k in own.a else factors.a[k]
        out.s[k] = factors.s[k] - own.s[k] if k in own.s else factors.s[k]
    return out


def kronecker_solvers(
    params: Sequence[torch.Tensor], diagonal: Sequence[torch.Tensor], factors: KroneckerFactors, damping: float,
) -> dict[int, Callable[[torch.Tensor], torch.Tensor]]:
    """G ↦ P·G for each parameter index with factors; ``diagonal`` gives each layer's trace, ``damping`` is d (the
    diagonal preconditioner's own, ``hf_iau.curvature.damping_level``). Other parameters keep the diagonal."""
    out: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}
    for k in factors.a:
        alpha, qa = torch.linalg.eigh(factors.a[k])
        sigma, qs = torch.linalg.eigh(factors.s[k])
        alpha, sigma = alpha.clamp_min(0), sigma.clamp_min(0)
        kappa = float(diagonal[k].double().sum()) / max(float(sigma.sum() * alpha.sum()), 1e-300)
        out[k] = _solver(factors.kinds[k], tuple(params[k].shape), qa, qs, kappa * sigma[:, None] * alpha[None, :] + damping)
    return out


def _solver(kind: str, shape: tuple[int, ...], qa: torch.Tensor, qs: torch.Tensor, denom: torch.Tensor):
    def apply(g: torch.Tensor) -> torch.Tensor:
        m = g.double().T if kind == "conv1d" else g.double().reshape(shape[0], -1)  # [out, in]
        m = qs @ ((qs.T @ m @ qa) / denom) @ qa.T
        return (m.T if kind == "conv1d" else m.reshape(shape)).to(g.dtype)

    return apply
