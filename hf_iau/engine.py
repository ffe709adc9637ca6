"""The request engine: the one place where unlearning meets data, devices, gradients and processes.

IAU and every baseline run their passes through an :class:`Engine` built from the trainer:

* **batches** — an ordered share of a list of dataset rows per process (accelerate's
  ``split_between_processes``: contiguous, sizes differ by at most one), read in one batched
  access per batch, collated by the trainer's ``data_collator`` and placed by ``_prepare_inputs``;
  for a sharded (FSDP2) model every process runs the same number of batches, the short ones
  padded with one-row batches whose labels are all ignored (-100), which add nothing to any sum;
* **sums** — every mean is Σ loss / Σ true count over all processes (``accelerator.reduce``), so
  N processes give the 1-process result whatever the shard sizes;
* **gradients** — ``accelerator.backward`` (the GradScaler under fp16); replicated parameters get
  their gradient sums with ``accelerator.reduce`` once per step (:meth:`Engine.sync_grads`); an
  FSDP2 model (``fully_shard``, DTensor parameters) reduce-scatters in its own backward, scaled so
  its mean becomes the same sum; the optimizer step goes through the scaler when there is one.

DeepSpeed keeps gradients inside its engine (``p.grad`` is not populated): it is refused.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .losses import IGNORE_INDEX, TOKEN_KINDS, batch_losses, loss_kind, true_count

LABEL_COLUMNS = ("label", "labels", "label_ids")
from .sharding import is_sharded

if TYPE_CHECKING:
    from datasets import Dataset


class Engine:
    """Batches, sums, gradients and weight snapshots of one model under the trainer's accelerator."""

    def __init__(self, trainer: Any, model: torch.nn.Module | None = None) -> None:
        if getattr(trainer, "is_deepspeed_enabled", False):
            raise ValueError(
                "unlearning under DeepSpeed is not supported: ZeRO keeps gradients inside its engine, so the "
                "unlearning gradients cannot be read or summed correctly (and this could not be verified here). "
                "Unlearn with DDP or FSDP2 (`fsdp_version: 2` in the accelerate config, or a model sharded with "
                "hf_iau.sharding.shard_per_block), or in one process."
            )
        if getattr(trainer, "is_fsdp_enabled", False) and not is_sharded(trainer.model):
            raise ValueError(_fsdp_refusal(trainer))
        from accelerate.state import AcceleratorState

        if not AcceleratorState._shared_state:  # reset by a later TrainingArguments (e.g. a nested trainer's)
            trainer.create_accelerator_and_postprocess()
        self.trainer = trainer
        self.args = trainer.args
        self.accelerator = trainer.accelerator
        self.model = trainer.model if model is None else model
        self.kind = loss_kind(self.model)
        self.sharded = is_sharded(self.model)
        first = next(self.model.parameters())
        if not self.sharded and not getattr(trainer, "is_fsdp_enabled", False) and first.device != self.args.device:
            self.model.to(self.args.device)
            first = next(self.model.parameters())
        self.device = first.to_local().device if hasattr(first, "to_local") else first.device
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.world = int(self.accelerator.num_processes)
        self.rank = int(self.accelerator.process_index)
        self.on = self.world > 1
        self.batch_size = int(self.args.unlearn_batch_size or self.args.per_device_eval_batch_size)
        self.autocast: Callable[[], AbstractContextManager] = trainer.autocast_smart_context_manager

    # --- data ---------------------------------------------------------------------------------
    def signature(self) -> list[str]:
        """Columns the model's forward takes (the Trainer's signature columns) plus the label columns."""
        self.trainer._set_signature_columns_if_needed()
        return list(self.trainer._signature_columns) + list(LABEL_COLUMNS)

    def model_columns(self, dataset: "Dataset") -> "Dataset":
        """``dataset`` without the columns the model does not take (ids, text, ...)."""
        keep = set(self.signature())
        drop = [c for c in dataset.column_names if c not in keep]
        return dataset.remove_columns(drop) if drop else dataset

    def agree(self, value: str, name: str, fix: str) -> None:
        """Raise on EVERY process (before any collective) when processes hold different ``value``s of ``name``."""
        if not self.on:
            return
        from accelerate.utils import gather_object

        values = gather_object([value])
        if len(set(values)) > 1:
            raise ValueError(f"the processes hold {len(set(values))} different {name}s; {fix}")

    def shard(self, indices: Sequence[int]) -> list[int]:
        """This process's share of ``indices``: a contiguous slice, in order (accelerate's split)."""
        indices = list(indices)
        if not self.on:
            return indices
        with self.accelerator.split_between_processes(indices) as local:
            return list(local)

    def _batches_per_process(self, n: int) -> int:
        """Batches of the longest share of ``n`` rows (every process can compute it: no communication)."""
        longest = n // self.world + (1 if n % self.world else 0)
        return math.ceil(longest / self.batch_size)

    def batches(self, dataset: "Dataset", local: Sequence[int], n_global: int | None = None) -> Iterator[dict[str, Any]]:
        """Collated batches of rows ``local`` of ``dataset`` (this process's share), on the device.

        For a sharded model every process must run the same number of batches: ``n_global`` (the size
        of the list ``local`` was taken from) gives it without communication, else it is agreed on with
        a max-reduce. Missing batches are one-row batches with every label ignored, after the real rows.
        """
        local = list(local)
        mine = math.ceil(len(local) / self.batch_size)
        needed = mine
        if self.sharded and self.on:
            if n_global is not None:
                needed = self._batches_per_process(n_global)
            else:
                t = torch.tensor([mine], dtype=torch.int64, device=self.device)
                needed = int(self.accelerator.reduce(t, reduction="max").item())
        for start in range(0, len(local), self.batch_size):
            yield self.collate(dataset, local[start : start + self.batch_size])
        for _ in range(needed - mine):
            yield self.pad_batch(dataset)

    def collate(self, dataset: "Dataset", rows: Sequence[int]) -> dict[str, Any]:
        """Rows ``rows`` of ``dataset`` read at once, through the trainer's collator, on the device."""
        columns = dataset[list(rows)]
        names = list(columns)
        examples = [dict(zip(names, values)) for values in zip(*(columns[n] for n in names))]
        return self.trainer._prepare_inputs(self.trainer.data_collator(examples))

    def pad_batch(self, dataset: "Dataset") -> dict[str, Any]:
        """A one-row batch that contributes nothing: row 0 with every label set to -100."""
        if self.kind == "generic":
            raise ValueError(
                "a sharded model with uneven shards needs per-example losses (a causal LM or a classifier); "
                "make the forget/retain sizes a multiple of the number of processes."
            )
        batch = self.collate(dataset, [0])
        batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
        return batch

    def count(self, dataset: "Dataset", local: Sequence[int]) -> float:
        """True count over all processes: predicted/labelled tokens (causal and seq2seq LMs) or rows."""
        if self.kind not in TOKEN_KINDS:
            return self.sum([float(len(local))])[0]
        return self.sum([sum(true_count(b, self.kind) for b in self.batches(dataset, local))])[0]

    # --- sums ---------------------------------------------------------------------------------
    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over processes (float64)."""
        if not self.on:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(t, reduction="sum").tolist()

    def sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum each tensor over processes, in place."""
        if self.on:
            for t in tensors:
                t.copy_(self.accelerator.reduce(t, reduction="sum"))

    def per_example(self, dataset: "Dataset", indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Per-example mean ``loss`` and, when defined, ``correct`` of rows ``indices`` (in that order), forward
        only, assembled on every process."""
        indices = list(indices)
        local = self.shard(indices)
        start = self.shard(list(range(len(indices))))
        offset = start[0] if start else 0
        losses = np.zeros(len(indices))
        correct = np.zeros(len(indices))
        has_correct = 0.0
        was_training = self.model.training
        self.model.eval()
        pos = 0
        with torch.no_grad():
            for batch in self.batches(dataset, local, len(indices)):
                with self.autocast():
                    bl = batch_losses(self.model, batch, self.kind)
                k = max(0, min(int(bl.loss_sum.shape[0]), len(local) - pos))
                losses[offset + pos : offset + pos + k] = bl.per_example.detach().double().cpu().numpy()[:k]
                if bl.correct is not None:
                    correct[offset + pos : offset + pos + k] = bl.correct.detach().double().cpu().numpy()[:k]
                    has_correct = 1.0
                pos += k
        self.model.train(was_training)
        summed = self.sum([*losses.tolist(), *correct.tolist(), has_correct])
        out = {"loss": np.asarray(summed[: len(indices)])}
        if summed[-1] > 0:
            out["correct"] = np.asarray(summed[len(indices) : 2 * len(indices)])
        return out

    # --- gradients ----------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        """``accelerator.backward`` of this process's part of a global sum (FSDP2's mean made a sum)."""
        self.accelerator.backward(loss * self.world if self.sharded else loss)

    def zero_grad(self) -> None:
        """Zero gradient buffers (allocated, so every process holds a tensor to sum)."""
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            else:
                p.grad.zero_()

    def clear_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def sync_grads(self) -> None:
        """Sum the gradients of replicated parameters over processes (sharded ones are already summed)."""
        if not self.on or self.sharded:
            return
        self.sum_([p.grad for p in self.params])

    def grad_scale(self) -> float:
        """The factor ``accelerator.backward`` multiplies gradients by (the fp16 GradScaler's scale, else 1)."""
        scaler = getattr(self.accelerator, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None else 1.0

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``, through the GradScaler when mixed precision uses one."""
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is None:
            optimizer.step()
            return
        scaler.step(optimizer)
        scaler.update()

    def make_optimizer(self, name: str, lr: float) -> torch.optim.Optimizer:
        """A fresh optimizer over the trainable parameters (see :func:`make_optimizer`)."""
        return make_optimizer(name, self.params, lr)

    def refuse_sharded(self, what: str) -> None:
        """ValueError for a computation that needs unsharded, per-process gradients."""
        if self.sharded:
            raise ValueError(
                f"{what} needs per-example or second-order gradients, which a sharded (FSDP2) model does not give; "
                "run it on an unsharded model (one process, or DDP)."
            )

    # --- weights ------------------------------------------------------------------------------
    def broadcast_weights(self) -> None:
        """Make replicated weights equal to process 0's (sharded ones are consistent by construction)."""
        if not self.on:
            return
        from accelerate.utils import broadcast

        with torch.no_grad():
            for p in self.model.parameters():
                if not hasattr(p, "to_local"):
                    broadcast(p.data, from_process=0)

    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.params]

    def restore(self, snapshot: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, s in zip(self.params, snapshot):
                p.copy_(s)

    def distance(self, snapshot: Sequence[torch.Tensor]) -> float:
        """‖θ − snapshot‖₂ over the trainable parameters (sharded parts summed over processes)."""
        local = replicated = 0.0
        with torch.no_grad():
            for p, s in zip(self.params, snapshot):
                if hasattr(p, "to_local"):
                    local += float((p.to_local() - s.to_local()).double().pow(2).sum())
                else:
                    replicated += float((p - s).double().pow(2).sum())
        if self.sharded and self.on:
            local = self.sum([local])[0]
        return math.sqrt(local + replicated)


def _fsdp_refusal(trainer: Any) -> str:
    """Why an FSDP model without DTensor parameters cannot be unlearned, and the fix for the user's setting."""
    plugin = getattr(getattr(trainer.accelerator, "state", None), "fsdp_plugin", None)
    if getattr(plugin, "fsdp_version", 1) == 2:
        return ("unlearning under FSDP2: the model is not sharded yet (accelerate shards it when `train()` prepares "
                "it). Unlearn after `trainer.train()`, or shard the model before unlearning with "
                "hf_iau.sharding.shard_per_block (then FSDP in the accelerate config is not needed).")
    return ("unlearning under FSDP needs FSDP2 (DTensor parameters): set `fsdp_version: 2` in the accelerate config "
            "(or `fsdp_config={'version': 2}`), or shard with hf_iau.sharding.shard_per_block.")


def make_optimizer(name: str, params: Sequence[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """A fresh ``torch.optim.Adam`` or ``SGD`` (``name`` in ``("adam", "sgd")``)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"optimizer={name!r} is unknown; use 'adam' or 'sgd'.")
