"""RMU: Representation Misdirection for Unlearning (Li et al. 2024, WMDP, arXiv 2403.03218).

With h_θ(x) the output of decoder layer ``layer`` at each real token of x, u a fixed random unit
vector and c the steering coefficient, each step minimises

    L = mean_{x∈B_f} ‖h_θ(x) − c·u‖²  +  α · mean_{x∈B_r} ‖h_θ(x) − h_ref(x)‖²

where ‖·‖² is the squared error averaged over hidden units and over the row's real tokens
(attention mask, WMDP's convention; open-unlearning averages over labelled tokens only) and h_ref
is the frozen model's activation. Only the parameters of ``update_layers`` whose names match
``param_pattern`` change (WMDP: layers ℓ−2..ℓ, ``mlp.down_proj``).

The reference is never a copy of the model: ``reference="original"`` computes h_ref under
``no_grad`` for every retain row the run will visit, before the first update (memory: those rows'
activations); ``reference="base"`` computes them per step with the peft adapter disabled.
"""

from __future__ import annotations

import math
import re
from contextlib import nullcontext
from typing import TYPE_CHECKING, Sequence

import torch
from datasets import Dataset

from ..losses import BatchLoss, base_model_of
from ..result import UnlearningResult
from . import register_method
from ._request import Request, Term, make_optimizer
from ._steps import Schedule, schedule

if TYPE_CHECKING:
    from ..trainer import IAUTrainer


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer's list of blocks (``model.layers``, ``transformer.h``, ...): the longest ModuleList."""
    lists = [m for m in base_model_of(model).modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ValueError("RMU needs a model with a list of transformer blocks (torch.nn.ModuleList); none was found.")
    return max(lists, key=len)


class _Capture:
    """Holds the output of one block and the attention mask of the latest forward pass."""

    def __init__(self, model: torch.nn.Module, block: torch.nn.Module) -> None:
        self.hidden: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self._hooks = [
            block.register_forward_hook(self._on_block),
            model.register_forward_pre_hook(self._on_model, with_kwargs=True),
        ]

    def _on_block(self, module, inputs, output) -> None:
        self.hidden = output[0] if isinstance(output, (tuple, list)) else output

    def _on_model(self, module, args, kwargs) -> None:
        self.mask = kwargs.get("attention_mask")

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [B, T, d] (float32 or wider) and the real-token mask [B, T]."""
        h = self.hidden
        h = h if h.dtype in (torch.float32, torch.float64) else h.float()
        m = self.mask if self.mask is not None else torch.ones(h.shape[:2], device=h.device)
        return h, m.to(h.device, h.dtype)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _row_mse(diff: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row: squared error averaged over hidden units, then over the row's real tokens."""
    return (diff.pow(2).mean(-1) * mask).sum(-1) / mask.sum(-1).clamp_min(1)


def steering_term(cap: _Capture, target: torch.Tensor):
    """Per-example mean ‖h − c·u‖² (``target`` = c·u)."""

    def term(bl: BatchLoss, ix: Sequence[int]) -> torch.Tensor:
        h, m = cap.rows()
        return _row_mse(h - target.to(h.dtype), m)

    return term


def retain_term(cap: _Capture, ref: dict[int, torch.Tensor]):
    """Per-example mean ‖h − h_ref‖² over the row's real tokens (h_ref stored per dataset index)."""

    def term(bl: BatchLoss, ix: Sequence[int]) -> torch.Tensor:
        h, m = cap.rows()
        out = []
        for b, i in enumerate(ix):
            keep = m[b] > 0
            out.append((h[b][keep] - ref[i].to(h.device, h.dtype)).pow(2).mean())
        return torch.stack(out)

    return term


def _reference(req: Request, cap: _Capture, steps: Sequence[Sequence[int]], ctx, out: dict[int, torch.Tensor]) -> None:
    """Store the real-token activations of the retain rows of each step (forward only, under ``ctx``),
    batched exactly as the update will batch them."""
    with ctx, torch.no_grad():
        for idx in steps:
            for batch, ix in req.batches(req.retain, idx):
                if all(i in out for i in ix):
                    continue
                with req.trainer.autocast_smart_context_manager():
                    req.model(**{k: v for k, v in batch.items() if k != "labels"})
                h, m = cap.rows()
                for b, i in enumerate(ix):
                    out[i] = h[b][m[b] > 0].detach().clone()
                req.fwd_passes += len(ix)


def steered_layer(blocks: torch.nn.ModuleList, layer: int | None) -> int:
    """The block whose output is steered: ``layer``, by default a quarter of the depth."""
    n_layers = len(blocks)
    layer = n_layers // 4 if layer is None else int(layer)
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer={layer} is out of range: the model has {n_layers} blocks (use 0..{n_layers - 1}).")
    return layer


def updated_parameters(
    blocks: torch.nn.ModuleList, layer: int, update_layers: Sequence[int] | None, param_pattern: str
) -> tuple[list[int], list[torch.nn.Parameter]]:
    """The blocks that change (default ``layer``−2..``layer``) and their trainable parameters matching
    ``param_pattern``."""
    n_layers = len(blocks)
    chosen = list(range(max(0, layer - 2), layer + 1)) if update_layers is None else [int(i) for i in update_layers]
    if any(not 0 <= i < n_layers for i in chosen) or not chosen:
        raise ValueError(f"update_layers={update_layers!r} is invalid: name blocks in 0..{n_layers - 1}.")
    pattern = re.compile(param_pattern)
    updated = [
        p for i in chosen for name, p in blocks[i].named_parameters() if p.requires_grad and pattern.search(name)
    ]
    if not updated:
        raise ValueError(
            f"param_pattern={param_pattern!r} matches no trainable parameter of blocks {chosen}; "
            "widen the pattern (e.g. '.') or the layers (for LoRA, the adapter must sit in those blocks)."
        )
    return chosen, updated


def steering_target(req: Request, steering_coeff: float) -> torch.Tensor:
    """c·u with u a seeded unit vector of uniform [0, 1) entries (WMDP), on the model's device."""
    hidden = int(getattr(base_model_of(req.model).config, "hidden_size", 0) or 0)
    if hidden < 1:
        raise ValueError("RMU needs `config.hidden_size` (the width of the steered activations); the model has none.")
    u = torch.from_numpy(req.rng(12).random(hidden)).float()
    return (steering_coeff * u / u.norm()).to(next(req.model.parameters()).device)


def rmu_steps(
    req: Request, sched: Schedule, cap: _Capture, target: torch.Tensor, updated: list[torch.nn.Parameter],
    alpha: float, reference: str,
) -> list[dict[str, float]]:
    """The reference activations (all before the first update for ``"original"``, per step for ``"base"``),
    then per step: α-weighted sum of the steering and retain terms, one optimizer step on ``updated``."""
    ref: dict[int, torch.Tensor] = {}
    if alpha > 0 and reference == "original":  # before any update: the frozen model's activations
        _reference(req, cap, [r for _, r in sched.steps], nullcontext(), ref)
    opt = make_optimizer(sched.optimizer, updated, sched.learning_rate)  # only the parameters RMU may change
    history: list[dict[str, float]] = []
    for step, (f_idx, r_idx) in enumerate(sched.steps):
        if r_idx and reference == "base":
            ref.clear()
            _reference(req, cap, [r_idx], req.model.disable_adapter(), ref)
        req.zero_grad()
        rec: dict[str, float] = {"step": float(step)}
        rec["steering_mse"] = _accumulate(req, req.forget, f_idx, 1.0, steering_term(cap, target))
        if r_idx:
            rec["retain_activation_mse"] = _accumulate(req, req.retain, r_idx, alpha, retain_term(cap, ref))
        req.sync_grads()
        req.engine.step(opt)
        history.append(rec)
    return history


def _accumulate(req: Request, ds: Dataset, idx: Sequence[int], scale: float, term: Term) -> float:
    """``req.accumulate`` of a per-example ``term``; returns the term's mean over ``idx``."""
    values: list[torch.Tensor] = []

    def kept(bl: BatchLoss, ix: Sequence[int]) -> torch.Tensor:
        out = term(bl, ix)
        values.append(out.detach().float().cpu())
        return out

    req.accumulate(ds, idx, scale, kept, per_example=True)
    return float(torch.cat(values).mean()) if values else float("nan")


@register_method("rmu")
def rmu(
    trainer: "IAUTrainer",
    forget_dataset: Dataset,
    retain_dataset: Dataset | None = None,
    budget: float | None = None,
    *,
    layer: int | None = None,
    steering_coeff: float = 6.5,
    alpha: float = 100.0,
    update_layers: Sequence[int] | None = None,
    param_pattern: str = r"mlp",
    reference: str = "original",
    learning_rate: float | None = None,
    optimizer: str | None = None,
    batch_size: int | None = None,
    retain_batch_size: int | None = None,
    steps: int | None = None,
    epochs: float | None = None,
) -> UnlearningResult:
    """RMU (see module docstring). ``layer``: block whose output is steered (default: a quarter of the
    depth); ``update_layers``: blocks whose ``param_pattern``-matching trainable parameters change
    (default ``layer``−2..``layer``); ``alpha``: retain weight; length: ``steps``, ``epochs`` over the
    forget set, or as many steps as ``budget`` pays (one epoch when neither)."""
    blocks = decoder_layers(trainer.model)
    layer = steered_layer(blocks, layer)
    if not (steering_coeff > 0 and math.isfinite(steering_coeff)):
        raise ValueError(f"steering_coeff={steering_coeff!r} is invalid: use a finite value > 0 (WMDP: 6.5-300).")
    if not alpha >= 0:
        raise ValueError(f"alpha={alpha!r} is invalid: use a retain weight >= 0.")
    if reference not in ("original", "base"):
        raise ValueError(f"reference={reference!r} is unknown; use 'original' or 'base'.")
    if reference == "base" and not hasattr(trainer.model, "disable_adapter"):
        raise ValueError("reference='base' needs a peft model (adapter to disable); use reference='original'.")
    chosen, updated = updated_parameters(blocks, layer, update_layers, param_pattern)
    req = Request("rmu", trainer, forget_dataset, retain_dataset, budget)
    if len(req.retain) == 0 and alpha > 0:
        raise ValueError("rmu needs retained data (alpha > 0), but the retain set is empty; pass alpha=0 to skip it.")
    sched = schedule(
        req, forget=True, retain=alpha > 0, learning_rate=learning_rate, optimizer=optimizer, batch_size=batch_size,
        retain_batch_size=retain_batch_size, steps=steps, epochs=epochs, streams=(10, 11),  # RMU's own, as before
    )
    target = steering_target(req, steering_coeff)
    config = {
        "layer": layer, "steering_coeff": steering_coeff, "alpha": alpha, "update_layers": chosen,
        "param_pattern": param_pattern, "reference": reference, **sched.config(),
        "steps": len(sched.steps), "seed": req.seed, "budget": req.budget,
    }
    cap = _Capture(req.model, blocks[layer])
    req.begin()
    try:
        history = rmu_steps(req, sched, cap, target, updated, alpha, reference)
        metrics = {"steps": float(len(sched.steps)), "learning_rate": sched.learning_rate,
                   "updated_parameters": float(sum(p.numel() for p in updated)),
                   **{k: v for k, v in history[-1].items() if k != "step"}}
        return req.finish(config, metrics, history)
    except BaseException:
        req.restore()
        raise
    finally:
        cap.close()
