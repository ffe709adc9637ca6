"""``Request``: what every baseline shares — data, true counts, budget, passes, restore, record.

A baseline runs one deletion request through an [`IAUTrainer`] and the same
:class:`~hf_iau.engine.Engine` as IAU (ordered per-process batches through the trainer's collator,
sums over processes, gradients through ``accelerator.backward``); it weighs every mean by true
token/example counts, charges example passes against a budget, restores the original weights on
any error, and records itself with ``trainer.record_unlearning``.

Pass accounting (comparable across methods): one example through forward+backward is one
*gradient pass*; a Hessian-vector product is two gradient passes per example; a forward alone is
one *forward pass*. ``budget`` caps gradient passes only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch
from datasets import Dataset

from ..losses import BatchLoss, batch_losses
from ..engine import Engine, make_optimizer  # noqa: F401  (re-exported for methods)
from ..unlearning import UnlearningError, UnlearningResult, request_id, retain_sample

if TYPE_CHECKING:
    from ..trainer import IAUTrainer

Term = Callable[[BatchLoss, Sequence[int]], torch.Tensor]
"""Per-example objective of a batch, given its losses and its dataset indices."""


@dataclass
class Stats:
    """Sums over a pass: losses, true counts, examples, correct predictions."""

    loss_sum: float = 0.0
    count: float = 0.0
    examples: float = 0.0
    correct: float = 0.0
    has_correct: bool = False

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples if self.has_correct and self.examples else float("nan")


class BudgetError(ValueError):
    """The budget does not pay for the smallest unit of work of a method."""


class Request:
    """One deletion request handled by baseline ``method`` on ``trainer.model`` (in place)."""

    def __init__(
        self,
        method: str,
        trainer: "IAUTrainer",
        forget_dataset: Dataset,
        retain_dataset: Dataset | None = None,
        budget: float | None = None,
    ) -> None:
        if budget is not None and (isinstance(budget, bool) or not budget > 0 or not math.isfinite(budget)):
            raise ValueError(f"budget={budget!r} is invalid: use None or a positive number of example-gradient passes.")
        self.start = time.perf_counter()
        self.method, self.trainer, self.args = method, trainer, trainer.args
        deletion = trainer._deletion_request(forget_dataset, retain_dataset)  # retain = train − every deleted row
        forget_dataset, retain_dataset, self.fingerprint = deletion.forget, deletion.retain, deletion.fingerprint
        self.seed = self.args.unlearn_seed if self.args.unlearn_seed is not None else self.args.seed
        self.request_id = request_id(self.fingerprint, self.seed + len(trainer.unlearning_history))
        self.forget_raw, self.retain_raw = forget_dataset, retain_dataset
        self.forget = trainer._model_columns(forget_dataset)
        self.retain = trainer._model_columns(retain_dataset)
        self.engine = self.dist = Engine(trainer)
        self.model, self.kind, self.params = self.engine.model, self.engine.kind, self.engine.params
        if not self.params:
            raise UnlearningError("The model has no trainable parameters (requires_grad=False everywhere).")
        self.budget = budget
        self.grad_passes = 0.0
        self.fwd_passes = 0.0
        self.was_training = self.model.training
        self.original: list[torch.Tensor] = []
        # Retain loss is measured on IAU's first-step retain sample, so metrics compare across methods.
        self.retain_eval = retain_sample(len(self.retain), self.args.retain_sample_size, self.seed, self.request_id, 0)
        self.before_f = self.before_r = Stats()

    # --- data -------------------------------------------------------------------------------
    def batches(self, ds: Dataset, idx: Sequence[int]) -> Iterator[tuple[dict[str, Any], list[int]]]:
        """This process's share of ``idx`` in batches, with each batch's indices (``[]`` for a padding batch of a
        sharded model, which must still run so that every process stays in step)."""
        idx = list(idx)
        local = self.engine.shard(idx)
        bs = self.engine.batch_size
        chunks = [local[i : i + bs] for i in range(0, len(local), bs)]
        for k, batch in enumerate(self.engine.batches(ds, local, len(idx))):
            yield batch, (chunks[k] if k < len(chunks) else [])

    def count(self, ds: Dataset, idx: Sequence[int], per_example: bool = False) -> float:
        """True count of ``idx`` over all processes: predicted tokens (causal LM) or examples."""
        local = self.engine.shard(list(idx))
        if per_example:
            return self.engine.sum([float(len(local))])[0]
        return self.engine.count(ds, local)

    # --- passes -----------------------------------------------------------------------------
    def evaluate(self, ds: Dataset, idx: Sequence[int] | None = None) -> Stats:
        """Mean loss/accuracy over ``idx`` (all rows by default), forward only."""
        idx = range(len(ds)) if idx is None else idx
        stats = Stats()
        with torch.no_grad():
            for batch, ix in self.batches(ds, idx):
                with self.engine.autocast():
                    bl = batch_losses(self.model, batch, self.kind)
                if ix:
                    self._add(stats, bl)
        return self._reduce(stats, forward=True)

    def accumulate(
        self,
        ds: Dataset,
        idx: Sequence[int],
        scale: float,
        term: Term | None = None,
        per_example: bool = False,
    ) -> Stats:
        """Add ``scale·∇(Σ term / N)`` over ``idx`` to ``.grad`` (term: summed loss; N: true count,
        or examples when ``per_example``). Returns the loss statistics of the pass."""
        total = self.count(ds, idx, per_example)
        stats = Stats()
        for batch, ix in self.batches(ds, idx):
            with self.engine.autocast():
                bl = batch_losses(self.model, batch, self.kind)
            if ix:
                self._check_finite(bl.loss_sum)
                objective = bl.loss_sum if term is None else term(bl, ix)
                self._check_finite(objective)
                self._add(stats, bl)
            else:
                objective = bl.loss_sum * 0.0  # padding batch: runs, adds nothing
            if total > 0 and scale != 0:
                self.engine.backward(objective.sum() * (scale / total))
        return self._reduce(stats, forward=False)

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    def sync_grads(self) -> None:
        """Sum ``.grad`` over processes (each holds its share of ``scale·Σ/N_global``)."""
        self.engine.sync_grads()

    def _add(self, stats: Stats, bl: BatchLoss) -> None:
        stats.loss_sum += float(bl.loss_sum.detach().sum())
        stats.count += float(bl.count.sum())
        stats.examples += float(bl.loss_sum.shape[0])
        if bl.correct is not None:
            stats.correct += float(bl.correct.sum())
            stats.has_correct = True

    def _reduce(self, stats: Stats, forward: bool) -> Stats:
        vals = self.engine.sum([stats.loss_sum, stats.count, stats.examples, stats.correct, float(stats.has_correct)])
        out = Stats(*vals[:4], has_correct=vals[4] > 0)
        if forward:
            self.fwd_passes += out.examples
        else:
            self.grad_passes += out.examples
        return out

    def _check_finite(self, t: torch.Tensor) -> None:
        if not torch.isfinite(t.detach()).all():
            raise UnlearningError(
                f"non-finite loss during {self.method}; the original weights were restored. "
                "Lower the learning rate or the number of steps."
            )

    # --- budget -----------------------------------------------------------------------------
    def affordable(self, cost: float) -> bool:
        """Whether ``cost`` more gradient passes stay within the budget."""
        return self.budget is None or self.grad_passes + cost <= self.budget + 1e-9

    def need(self, cost: float, what: str) -> None:
        """Raise ``BudgetError`` when the first ``cost`` passes (``what``) do not fit the budget."""
        if not self.affordable(cost):
            raise BudgetError(
                f"budget={self.budget:g} example-gradient passes cannot pay for {what} ({cost:g} passes) in "
                f"method {self.method!r}; raise the budget or shrink the work (batch size, sample size)."
            )

    # --- lifecycle --------------------------------------------------------------------------
    def begin(self, measure: bool = True) -> None:
        """Snapshot the weights, switch to eval mode, measure the losses before."""
        self.model.eval()
        self.engine.broadcast_weights()
        self.original = self.engine.snapshot()
        if measure:
            self.before_f = self.evaluate(self.forget)
            self.before_r = self.evaluate(self.retain, self.retain_eval)

    def restore(self) -> None:
        """Put the original weights back (after an error)."""
        self.engine.restore(self.original)
        self.engine.clear_grad()
        self.model.train(self.was_training)

    def finish(
        self,
        config: dict[str, Any],
        metrics: dict[str, float] | None = None,
        history: list[dict[str, float]] | None = None,
    ) -> UnlearningResult:
        """Measure the losses after, check them, build the result and record it on the trainer."""
        self.engine.clear_grad()
        after_f = self.evaluate(self.forget)
        after_r = self.evaluate(self.retain, self.retain_eval)
        if not (math.isfinite(after_f.mean_loss) and math.isfinite(after_r.mean_loss)):
            raise UnlearningError(
                f"non-finite loss after {self.method}; the original weights were restored. "
                "Lower the learning rate or the number of steps."
            )
        norm = self.engine.distance(self.original)
        self.model.train(self.was_training)
        out = {
            "forget_loss_before": self.before_f.mean_loss,
            "forget_loss_after": after_f.mean_loss,
            "retain_loss_before": self.before_r.mean_loss,
            "retain_loss_after": after_r.mean_loss,
            "forget_accuracy_before": self.before_f.accuracy,
            "forget_accuracy_after": after_f.accuracy,
            "retain_accuracy_before": self.before_r.accuracy,
            "retain_accuracy_after": after_r.accuracy,
            "update_norm": norm,
            "forget_examples": float(len(self.forget)),
            "retain_examples": float(len(self.retain)),
            **(metrics or {}),
            "example_gradient_passes": self.grad_passes,
            "example_forward_passes": self.fwd_passes,
            "wall_time_s": time.perf_counter() - self.start,
        }
        if self.budget is not None:
            out["budget"] = float(self.budget)
        out = {k: float(v) for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}
        result = UnlearningResult(out, history or [], self.request_id, len(self.forget), len(self.retain))
        return self.trainer.record_unlearning(
            result, self.fingerprint, self.request_id, method=self.method, config=config
        )

    def rng(self, *stream: int) -> np.random.Generator:
        """A generator seeded by (seed, request, *stream): the same on every process."""
        return np.random.default_rng([self.seed, int(self.request_id[:12], 16), *stream])
