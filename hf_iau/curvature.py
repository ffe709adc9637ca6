"""Curvature for influence estimates: the diagonal empirical Fisher F̂ = Σ_{i∈D} (∇ℓ_i)², per parameter.

Two ways to get it, both from gradients the library computes anyway:

* **at training time** (:class:`CurvatureCallback`, paid once): with a mini-batch of B examples and
  mean gradient ḡ_t at optimizer step t, E[ḡ_t²] = ḡ² + Var(g)/B, so over the last epoch

      F̂ ≈ n·B·mean_t ḡ_t²          (n = training rows; exact up to the mean-gradient term, small at θ*),

  saved with the checkpoint as ``curvature.safetensors`` bound to the weights' sha256
  (:meth:`Curvature.save`, :meth:`Curvature.load`); with ``IAUConfig.train_curvature="per_example"``, the
  per-example squares below from hooks on the last epoch's own backward passes instead. Requests use either only
  when asked (``unlearn_curvature="training"``): both cost fidelity on the tuning scenarios
  (benchmarks/results/saved_curvature_decision.md);
* **from rows** (:class:`ExampleGradients`, per request): per-example gradients in batches from per-layer
  hooks — the layer input a and the back-propagated output gradient δ = ∂L/∂y that
  ``engine.backward`` (``accelerator.backward``) produces, summed over the positions t of example i:

      Linear     y = a·Wᵀ + b     ∇W_i = Σ_t δ_it a_itᵀ      ∇b_i = Σ_t δ_it
      Conv1D     y = a·W + b      ∇W_i = Σ_t a_it δ_itᵀ      (GPT-2)
      Conv2d     y = W ⋆ a + b    ∇W_i = δ_i · unfold(a_i)ᵀ   (groups = 1, zero padding)
      Embedding  y = W[x]         ∇W_i[v] = Σ_{t: x_it = v} δ_it
      LayerNorm  y = â ⊙ w + b    ∇w_i = Σ_t δ_it ⊙ â_it      (â the normalised input)

  A parameter shared by several layers (tied embeddings) sums their contributions per example before
  squaring. An Embedding called with one row of ids (position ids) is called with them expanded to the
  batch, so its output gradient is per example (the forward is unchanged). Every batch checks that the
  per-example gradients add up to the batch gradient; a parameter that no supported layer owns, or that
  fails the check, is listed in :attr:`ExampleGradients.uncovered` and its F̂ is the mean of the others
  (identity curvature at the average level) — stated in the estimate's diagnostics, never silent.

Only the shape of F̂ matters downstream (``hf_iau.counterfactual`` damps with a multiple of its mean and
calibrates the overall scale on held-out data).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from .kfac import KroneckerFactors

logger = logging.getLogger(__name__)

# Damping δ of the diagonal curvature, × its mean. Chosen on the TUNE scenario poison_vision (random forget rows:
# mean target 0.22 vs held-out 0.21 at 0.1; 1.5 at 1e-3), see benchmarks/results/removal.md; benchmarks/curvature.py
# measures 0.01–1 against leave-group-out retraining.
DAMPING = 0.1
FILE = "curvature.safetensors"
FORMAT = "diagonal_fisher/1"
CHUNK = 1 << 24  # elements of per-example gradients materialised at once


def damping_level(fisher: Sequence[torch.Tensor], damping: float = DAMPING) -> float:
    """d = δ·mean F̂, the mean over every element of every tensor (sharded ones in full)."""
    total = sum(full_total(f.double().sum()) for f in fisher)
    return max(damping * total / max(sum(f.numel() for f in fisher), 1), 1e-30)


def preconditioner(fisher: Sequence[torch.Tensor], damping: float = DAMPING) -> list[torch.Tensor]:
    """P = 1 / (F̂ + d) elementwise, d = :func:`damping_level`."""
    damp = damping_level(fisher, damping)
    return [1.0 / (f + damp) for f in fisher]


def mean_filled(squares: Sequence[torch.Tensor | None], shapes: Sequence[Sequence[int]],
                devices: Sequence[torch.device | str] | None = None) -> tuple[list[torch.Tensor], float]:
    """(F̂ per parameter, share of elements filled): a parameter without per-example squares (None) gets the mean of
    the covered entries — identity curvature at the average level; ``devices``: where each filled tensor lives."""
    covered = [f for f in squares if f is not None]
    mean = sum(float(f.double().sum()) for f in covered) / max(sum(f.numel() for f in covered), 1)
    filled = [torch.full(tuple(shape), mean, device=None if devices is None else devices[k]) if f is None else f
              for k, (f, shape) in enumerate(zip(squares, shapes))]
    total = sum(math.prod(shape) for shape in shapes)
    return filled, 1.0 - sum(f.numel() for f in covered) / max(total, 1)


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over every parameter's name, dtype, shape and bytes, in ``named_parameters`` order."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        t = p.detach()
        t = t.full_tensor() if hasattr(t, "full_tensor") else t
        t = t.contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class CurvatureError(ValueError):
    """A saved curvature that does not belong to the model's weights."""


class Curvature:
    """Diagonal Fisher F̂ per trainable parameter name, bound to the weights it was measured at."""

    def __init__(self, fisher: dict[str, torch.Tensor], weights_sha256: str, meta: dict[str, str] | None = None):
        self.fisher = fisher
        self.weights_sha256 = weights_sha256
        self.meta = dict(meta or {})

    def diagonal(self, model: torch.nn.Module) -> list[torch.Tensor]:
        """F̂ for each trainable parameter of ``model`` (``requires_grad``, in order), shaped (and, for FSDP2
        DTensors, sharded) like it. Raises :class:`CurvatureError` naming a parameter it does not cover."""
        out = []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            f = self.fisher.get(name)
            if f is None or tuple(f.shape) != tuple(p.shape):
                raise CurvatureError(
                    f"the curvature has no entry of shape {tuple(p.shape)} for trainable parameter {name!r} (it was "
                    "saved for other trainable parameters, e.g. before a LoRA adapter was added); pass curvature=None "
                    "to recompute it from the request's rows."
                )
            out.append(shard_like(p, f.to(device=_local(p).device, dtype=torch.float32)))
        return out

    def preconditioner(self, model: torch.nn.Module, damping: float = DAMPING) -> list[torch.Tensor]:
        """P = (F̂ + δ·mean F̂)⁻¹ for each trainable parameter of ``model`` (e.g. a Newton-like step θ − η·P·g)."""
        return preconditioner(self.diagonal(model), damping)

    @classmethod
    def of(cls, model: torch.nn.Module, diagonal: Sequence[torch.Tensor], meta: dict[str, str]) -> "Curvature":
        """A curvature from F̂ tensors aligned with ``model``'s trainable parameters (as :meth:`diagonal` returns
        them), bound to the model's current weights."""
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        fisher = {n: f.detach().float().cpu().clone() for n, f in zip(names, diagonal)}
        return cls(fisher, weights_sha256(model), meta)

    def content_sha256(self) -> str:
        """sha256 over every entry's name, shape and float32 bytes, in name order: what a request that used this
        curvature depends on (recorded in the ledger)."""
        h = hashlib.sha256()
        for name in sorted(self.fisher):
            t = self.fisher[name].detach().float().contiguous().cpu()
            h.update(f"{name}|{tuple(t.shape)}\n".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def record(self) -> dict[str, str]:
        """What the ledger keeps of a curvature a request reused: its source and content hash."""
        return {"source": self.meta.get("source", "unknown"), "content_sha256": self.content_sha256()}

    def bind(self, model: torch.nn.Module, reason: str) -> "Curvature":
        """This curvature carried over to ``model``'s current weights (e.g. after an unlearning update, whose small
        change leaves F̂ valid to first order); ``reason`` is recorded with the previous hash."""
        meta = {**self.meta, "carried_from": self.weights_sha256, "carried_because": reason}
        return Curvature(self.fisher, weights_sha256(model), meta)

    def save(self, folder: str) -> str:
        """Write ``folder/curvature.safetensors`` (atomically); returns its path."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, FILE)
        tmp = path + ".tmp"
        meta = {**self.meta, "format": FORMAT, "weights_sha256": self.weights_sha256}
        # one key holding sorted JSON: safetensors writes several metadata keys in hash-map order (bytes would differ
        # between identical runs)
        save_file({k: v.detach().float().contiguous().cpu() for k, v in self.fisher.items()}, tmp,
                  metadata={"hf_iau": json.dumps({k: str(v) for k, v in meta.items()}, sort_keys=True)})
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, folder: str, model: torch.nn.Module) -> "Curvature | None":
        """The curvature saved in ``folder`` for ``model``'s weights; ``None`` when there is none (the caller then
        recomputes it from rows). Raises :class:`CurvatureError` when it was saved for other weights."""
        from safetensors import safe_open

        path = os.path.join(folder, FILE)
        if not os.path.isfile(path):
            return None
        with safe_open(path, framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("hf_iau", "{}"))
            fisher = {k: fh.get_tensor(k) for k in fh.keys()}
        if meta.get("format") != FORMAT:
            raise CurvatureError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}; delete the file to recompute.")
        digest = weights_sha256(model)
        if meta.get("weights_sha256") != digest:
            raise CurvatureError(
                f"{path} was measured at weights sha256 {str(meta.get('weights_sha256'))[:16]}…, but the model's "
                f"weights are {digest[:16]}… (changed after it was saved): it would give wrong influence estimates. "
                "Delete the file (or pass curvature=None) to recompute the curvature from the request's rows, or "
                "save it again with the weights (Curvature.bind)."
            )
        return cls(fisher, digest, {k: v for k, v in meta.items() if k not in ("format", "weights_sha256")})


class CurvatureCallback(TrainerCallback):
    """Accumulates F̂ ≈ n·B·mean_t ḡ_t² over the last epoch from the gradients training computed (read in
    ``on_pre_optimizer_step``, after gradient accumulation, the DDP all-reduce and clipping).

    With ``per_example`` the trainer also hooks its last epoch's backward passes (:class:`ExampleGradients`, the
    estimator requests use on their rows) and hands each batch's Σ_i (∇ℓ_i)² to :meth:`add_examples`:
    F̂ = (n / rows seen)·Σ_i (∇ℓ_i)², summed over processes.

    ``curvature(model)`` returns the :class:`Curvature` bound to the trained weights. FSDP2 (DTensor) gradients
    are not collected: ``curvature`` then returns ``None`` and requests recompute F̂ from rows."""

    def __init__(self, per_example: bool = False) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.sharded = False
        self.examples_per_step = 1
        self.n_train = 0
        self.per_example = per_example
        self.last_epoch = False
        self.example_sums: dict[str, torch.Tensor] = {}
        self.example_rows = 0
        self.uncovered: set[str] = set()

    def on_train_begin(self, args: Any, state: Any, control: Any, train_dataloader: Any = None, **kw: Any) -> None:
        self.examples_per_step = int(args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size)
        dataset = getattr(train_dataloader, "dataset", None)
        self.n_train = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else 0

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.sums, self.steps = {}, 0  # the last epoch is closest to θ*
        self.example_sums, self.example_rows, self.uncovered = {}, 0, set()
        epochs = math.ceil(float(state.num_train_epochs or args.num_train_epochs))
        self.last_epoch = int(round(float(state.epoch or 0.0))) >= epochs - 1

    def wants_examples(self) -> bool:
        """Whether the trainer should hook this step's backward (per-example estimator, last epoch)."""
        return self.per_example and self.last_epoch and not self.sharded

    def add_examples(self, names: Sequence[str], squares: Sequence[torch.Tensor | None], uncovered: set[int],
                     rows: int) -> None:
        """One batch's Σ_i (∇ℓ_i)² per trainable parameter (``None``/``uncovered``: no per-example gradient)."""
        with torch.no_grad():
            for k, (name, sq) in enumerate(zip(names, squares)):
                if k in uncovered or sq is None:
                    self.uncovered.add(name)
                    continue
                acc = self.example_sums.get(name)
                self.example_sums[name] = sq.detach().float().clone() if acc is None else acc.add_(sq.detach().float())
        self.example_rows += rows

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        scale = _unscale_factor(kw.get("optimizer"))
        step: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not p.requires_grad or p.grad is None:
                    continue
                if hasattr(p.grad, "to_local"):
                    self.sharded = True
                    return
                step[name] = (p.grad.detach().float() * scale).pow(2)
            if not all(bool(torch.isfinite(v).all()) for v in step.values()):
                return  # an fp16 step that overflowed: the optimizer skips it, so do we
            for name, g2 in step.items():
                acc = self.sums.get(name)
                self.sums[name] = g2 if acc is None else acc.add_(g2)
        self.steps += 1

    def curvature(self, model: torch.nn.Module, estimator: str | None = None) -> Curvature | None:
        """F̂ bound to ``model``'s weights now (call after training), or ``None`` when nothing was collected; the
        per-example estimate when it was collected (unless ``estimator="batch"``), else the mini-batch one."""
        if self.sharded or not self.steps:
            if self.sharded:
                logger.warning("curvature not collected: FSDP2-sharded gradients; requests recompute it from rows.")
            return None
        if self.per_example and self.example_rows and estimator != "batch":
            return self._per_example_curvature(model)
        factor = max(self.n_train, 1) * self.examples_per_step / self.steps
        fisher = {k: v * factor for k, v in self.sums.items()}
        meta = {"source": "training", "steps": str(self.steps), "examples_per_step": str(self.examples_per_step)}
        return Curvature(fisher, weights_sha256(model), meta)

    def _per_example_curvature(self, model: torch.nn.Module) -> Curvature:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        rows = torch.tensor([float(self.example_rows)])
        uncovered = torch.tensor([float(n in self.uncovered or n not in self.example_sums) for n in names])
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # each process saw its own rows
            device = next(model.parameters()).device
            for t in [*[self.example_sums[n] for n in names if n in self.example_sums], rows, uncovered]:
                moved = t.to(device)
                torch.distributed.all_reduce(moved)
                t.copy_(moved.to(t.device))
        factor = max(self.n_train, 1) / float(rows)
        shapes = dict(model.named_parameters())
        filled, fraction = mean_filled([None if uncovered[k] else self.example_sums[n] * factor for k, n in enumerate(names)],
                                       [shapes[n].shape for n in names])
        meta = {"source": "training", "estimator": "per_example", "rows": str(int(rows)),
                "identity_curvature_fraction": f"{fraction:.4g}"}
        return Curvature(dict(zip(names, filled)), weights_sha256(model), meta)


def _unscale_factor(optimizer: Any) -> float:
    """1 / the fp16 GradScaler's scale while the gradients are still scaled (no clipping unscaled them), else 1."""
    scaler = getattr(optimizer, "scaler", None)
    if scaler is None:
        return 1.0
    state = scaler._per_optimizer_states.get(id(getattr(optimizer, "optimizer", optimizer)), {})
    unscaled = getattr(state.get("stage"), "name", "") == "UNSCALED"
    return 1.0 if unscaled else 1.0 / float(scaler.get_scale())


def full_total(x: torch.Tensor) -> float:
    """A scalar's value; for a DTensor (a sharded parameter's sum), the total over all shards."""
    return float(x.full_tensor()) if hasattr(x, "full_tensor") else float(x)


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p


def shard_like(p: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """``full`` (the same on every process) as a DTensor placed like ``p`` when ``p`` is one (no communication)."""
    if not hasattr(p, "to_local"):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)


class ExampleGradients:
    """Σ_i (∇ℓ_i)² per parameter of ``params``, from per-layer hooks on ``model`` (see the module docstring).

    Inside ``with ExampleGradients(model, params) as eg:``, for each batch of B rows call ``eg.expect(B)``
    before the forward, then ``engine.backward(per_example_loss.sum())``, then ``eg.collect(scale, grads)``
    with the factor ``backward`` multiplied the gradients by and the batch's gradients (``None`` entries
    skip the check). ``squares[k]`` is full-shaped; ``uncovered`` the indices with no per-example gradient."""

    def __init__(self, model: torch.nn.Module, params: Sequence[torch.Tensor], factors: KroneckerFactors | None = None) -> None:
        self.params = list(params)
        self.factors = factors  # also K-FAC factors of each weight owned by one Linear / Conv1D / Conv2d layer
        index = {id(p): k for k, p in enumerate(self.params)}
        self.owned: dict[torch.nn.Module, list[tuple[int, str]]] = {}
        for module in model.modules():
            own = [(index[id(p)], role) for role, p in module.named_parameters(recurse=False) if id(p) in index]
            if own and _supported(module) and all(role in ("weight", "bias") for _, role in own):
                self.owned[module] = own
        covered = {k for own in self.owned.values() for k, _ in own}
        self.uncovered = {k for k in range(len(self.params)) if k not in covered}
        self.squares: list[torch.Tensor | None] = [None] * len(self.params)
        self.pairs: list[tuple[torch.nn.Module, torch.Tensor, torch.Tensor]] = []
        self.rows = 0
        self.handles: list[Any] = []

    def __enter__(self) -> "ExampleGradients":
        for module in self.owned:
            if isinstance(module, torch.nn.Embedding):
                self.handles.append(module.register_forward_pre_hook(self._expand))
            self.handles.append(module.register_forward_hook(self._record))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.pairs = [], []

    def expect(self, rows: int) -> None:
        """The next forward is a batch of ``rows`` examples."""
        self.rows, self.pairs = rows, []

    def _expand(self, module: torch.nn.Module, inputs: tuple) -> tuple | None:
        ids = inputs[0]
        if self.rows > 1 and ids.dim() >= 1 and ids.shape[0] == 1:  # position ids shared by the batch
            return (ids.expand(self.rows, *ids.shape[1:]), *inputs[1:])
        return None

    def _record(self, module: torch.nn.Module, inputs: tuple, output: Any) -> None:
        if torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad:
            a = inputs[0].detach()
            output.register_hook(lambda g: self.pairs.append((module, a, g.detach())))

    def collect(self, scale: float, grads: Sequence[torch.Tensor | None]) -> None:
        """Add this batch's Σ_i (∇ℓ_i / scale)²; a parameter whose Σ_i ∇ℓ_i misses ``grads`` becomes uncovered."""
        found: dict[int, list[tuple[torch.nn.Module, str, torch.Tensor, torch.Tensor]]] = {}
        for module, a, g in self.pairs:
            for k, role in self.owned[module]:
                found.setdefault(k, []).append((module, role, a, g))
        self.pairs = []
        for k in {k for own in self.owned.values() for k, _ in own} - self.uncovered:
            self._collect_one(k, found.get(k, []), scale, grads[k] if k < len(grads) else None)

    def _collect_one(self, k: int, items: list, scale: float, grad: torch.Tensor | None) -> None:
        p = self.params[k]
        dtype = torch.promote_types(p.dtype, torch.float32)
        device = _local(p).device
        if any(a.shape[0] != self.rows or g.shape[0] != self.rows for _, _, a, g in items):
            return self._give_up(k, "a layer input without a leading batch dimension")
        total = torch.zeros(p.shape, dtype=dtype, device=device)
        sq = torch.zeros(p.shape, dtype=dtype, device=device)
        one_layer = items[0] if len(items) == 1 and items[0][1] == "weight" else None
        if items and all(isinstance(m, torch.nn.Embedding) for m, _, _, _ in items):
            _embedding_squares(items, scale, dtype, sq, total)
            items = []
        step = max(1, CHUNK // max(p.numel(), 1))
        for start in range(0, self.rows if items else 0, step):
            rows = slice(start, start + step)
            ge = sum(_example_grad(m, role, _as(a[rows], dtype), g[rows].to(dtype)) for m, role, a, g in items) / scale
            sq.add_(ge.pow(2).sum(0))
            total.add_(ge.sum(0))
        if grad is not None:
            ref = grad.detach().to(dtype) / scale
            if not torch.allclose(total, ref, rtol=1e-3, atol=1e-5 * float(ref.abs().max()) + 1e-12):
                return self._give_up(k, "per-example gradients that do not add up to the batch gradient")
        self.squares[k] = sq if self.squares[k] is None else self.squares[k].add_(sq)
        if self.factors is not None and one_layer is not None:
            module, _, a, g = one_layer
            self.factors.add(k, module, _as(a, dtype), g.to(dtype), scale)

    def _give_up(self, k: int, why: str) -> None:
        logger.warning("per-example gradients unavailable for parameter %d %s (%s): identity curvature there",
                       k, tuple(self.params[k].shape), why)
        self.uncovered.add(k)
        self.squares[k] = None
        if self.factors is not None:
            self.factors.drop(k)


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Floating ``x`` in ``dtype``; integer ids as they are."""
    return x.to(dtype) if x.is_floating_point() else x


def _supported(module: torch.nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, (torch.nn.Linear, Conv1D)):
        return True
    if isinstance(module, torch.nn.Embedding):
        return module.max_norm is None
    if isinstance(module, torch.nn.LayerNorm):
        return True
    if isinstance(module, torch.nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return False


def _embedding_squares(items: list, scale: float, dtype: torch.dtype, sq: torch.Tensor, total: torch.Tensor) -> None:
    """Embedding rows only (no dense [B, V, D]): each example's gradient row for token v is the sum of δ over
    its positions holding v; the (example, v) pairs are found with one ``unique``."""
    module = items[0][0]
    v, d = module.num_embeddings, sq.shape[-1]
    keys, rows = [], []
    for m, _, a, g in items:
        ids, g = a.reshape(a.shape[0], -1), g.reshape(g.shape[0], -1, d).to(dtype)
        if m.padding_idx is not None:
            g = g * (ids != m.padding_idx).unsqueeze(-1).to(dtype)
        keys.append((torch.arange(ids.shape[0], device=ids.device).unsqueeze(1) * v + ids).flatten())
        rows.append(g.reshape(-1, d))
    uniq, inverse = torch.unique(torch.cat(keys), return_inverse=True)
    per = torch.zeros(len(uniq), d, dtype=dtype, device=sq.device).index_add_(0, inverse, torch.cat(rows)) / scale
    sq.index_add_(0, uniq % v, per.pow(2))
    total.index_add_(0, uniq % v, per)


def _example_grad(module: torch.nn.Module, role: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-example gradient [c, *param.shape] of ``module.<role>`` from its input ``a`` and output gradient ``g``."""
    c = g.shape[0]
    if isinstance(module, torch.nn.Conv2d):
        g = g.reshape(c, g.shape[1], -1)  # [c, out, L]
        if role == "bias":
            return g.sum(2)
        u = F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)  # [c, in·k·k, L]
        return torch.bmm(g, u.transpose(1, 2)).view(c, *module.weight.shape)
    if isinstance(module, torch.nn.Embedding):
        d = g.shape[-1]
        ids, g = a.reshape(c, -1), g.reshape(c, -1, d)
        if module.padding_idx is not None:
            g = g * (ids != module.padding_idx).unsqueeze(-1).to(g.dtype)
        out = torch.zeros(c, module.num_embeddings, d, dtype=g.dtype, device=g.device)
        return out.scatter_add_(1, ids.unsqueeze(-1).expand(-1, -1, d), g)
    if isinstance(module, torch.nn.LayerNorm):
        shape = module.normalized_shape
        g = g.reshape(c, -1, *shape)
        if role == "bias":
            return g.sum(1)
        a_hat = F.layer_norm(a, shape, eps=module.eps).reshape(c, -1, *shape)
        return (g * a_hat).sum(1)
    g = g.reshape(c, -1, g.shape[-1])  # Linear / Conv1D: [c, positions, out]
    if role == "bias":
        return g.sum(1)
    a = a.reshape(c, -1, a.shape[-1])
    return torch.bmm(g.transpose(1, 2), a) if isinstance(module, torch.nn.Linear) else torch.bmm(a.transpose(1, 2), g)

