"""One deletion request, start to finish: request → method → engine → result → record.

Every method — IAU and each baseline — runs the same lifecycle:

1. ``Request(method, trainer, forget, retain, budget, held_out_dataset=...)`` checks the request
   (``hf_iau.request.DeletionRequest``: retain = train − forget − every row deleted so far; held-out
   data shares no row with train or forget; every process holds the same fingerprint key);
2. ``begin()`` snapshots the weights and measures the losses before;
3. the method adds gradients with ``accumulate`` (Σ term / true count, through the
   :class:`~hf_iau.engine.Engine`: ``accelerator.backward``, sums over processes) and steps;
   ``step_done`` logs each step through the Trainer's ``log`` (callbacks, ``report_to``) and a progress bar;
4. ``finish()`` measures the losses after, refuses an update that changed nothing (no deletion is
   recorded for it unless ``allow_noop``), builds the :class:`~hf_iau.result.UnlearningResult` and
   hands it to ``trainer.record_unlearning`` (card, ledger, deletion record).
   Any error restores the original weights (``restore``).

Random choices (retain samples, orders) come from ``rng(*stream)``, seeded by the PUBLIC inputs
(seed, request index, stream) — never by the keyed fingerprint, the clock or the machine — so the
same model, data, config and seed give the same weights.

Pass accounting (comparable across methods): one example through forward+backward is one
*gradient pass*; a Hessian-vector product is two; a forward alone is one *forward pass*.
``budget`` caps gradient passes.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from datasets import Dataset

from .data import key_id, load_key
from .engine import Engine, make_optimizer  # noqa: F401  (make_optimizer re-exported for methods)
from .losses import BatchLoss, batch_losses
from .request import DeletionRequest, RequestContext
from .result import BudgetError, Stats, UnlearningError, UnlearningResult, finite_metrics
from .validation import check_labels

Term = Callable[[BatchLoss, Sequence[int]], torch.Tensor]
"""Per-example objective of a batch, given its losses and its dataset indices."""
Mask = Callable[[BatchLoss, Sequence[int]], torch.Tensor]
"""Per-example 0/1 weights of a batch (1 = the row still takes part), given its losses and dataset indices."""

NOOP_TOLERANCE = 1e-7  # relative change of the forget loss below which a request changed nothing


def retain_sample(n_retain: int, size: int | None, seed: int, request_index: int, step: int) -> list[int]:
    """Indices of the retain rows used at ``step``: all, or a sample seeded by (seed, request index, step)."""
    if not isinstance(request_index, (int, np.integer)):
        raise TypeError("retain_sample takes the public request index (an int), never a keyed request id.")
    if size is None or size >= n_retain:
        return list(range(n_retain))
    rng = np.random.default_rng([int(seed), int(request_index), int(step)])
    return sorted(rng.choice(n_retain, size=size, replace=False).tolist())


def request_label(fingerprint: str, seed: int, request_index: int) -> str:
    """The id a request is recorded under (a label only: no random choice depends on it)."""
    return hashlib.sha256(f"{fingerprint}:{seed}:{request_index}".encode()).hexdigest()


class Request:
    """One deletion request handled by method ``method`` on ``trainer.model`` (in place)."""

    def __init__(
        self,
        method: str,
        trainer: Any,
        forget_dataset: Dataset,
        retain_dataset: Dataset | None = None,
        budget: float | None = None,
        *,
        held_out_dataset: Dataset | None = None,
        allow_noop: bool = False,
        retain_weight: float = 1.0,
        uses_held_out: bool = False,
    ) -> None:
        if budget is not None and (isinstance(budget, bool) or not budget > 0 or not math.isfinite(budget)):
            raise ValueError(f"budget={budget!r} is invalid: use None or a positive number of example-gradient passes.")
        self.start = time.perf_counter()
        self.method, self.trainer, self.args = method, trainer, trainer.args
        self.engine = Engine(trainer)
        self.model, self.kind, self.params = self.engine.model, self.engine.kind, self.engine.params
        if not self.params:
            raise UnlearningError("The model has no trainable parameters (requires_grad=False everywhere).")
        if uses_held_out and held_out_dataset is None and isinstance(trainer.eval_dataset, Dataset):
            held_out_dataset = trainer.eval_dataset  # a method that reads held-out data defaults to eval_dataset
        self.deletion = self._check(forget_dataset, retain_dataset, held_out_dataset, retain_weight)
        self.fingerprint = self.deletion.fingerprint
        self.forget_raw, self.retain_raw = self.deletion.forget, self.deletion.retain
        self.forget = self.engine.model_columns(self.deletion.forget)
        self.retain = self.engine.model_columns(self.deletion.retain)
        held_out = self.deletion.held_out
        self.held_out = None if held_out is None else self.engine.model_columns(held_out)
        self.seed = self.args.unlearn_seed if self.args.unlearn_seed is not None else self.args.seed
        self.request_index = self.record.requests + len(trainer.unlearning_history)
        self.request_id = request_label(self.fingerprint, self.seed, self.request_index)
        self.budget, self.allow_noop = budget, allow_noop
        self.held_out_loss: float | None = None  # set by a method that measures the held-out level
        # F̂ saved at training time (hf_iau.curvature), or None; a method that measures it on rows sets it for reuse
        self.curvature = getattr(trainer, "curvature", None)
        self.curvature_used: Any = None  # a kept curvature the method's estimate used (None: measured, or none)
        self.grad_passes = self.fwd_passes = 0.0
        self.was_training = self.model.training
        self.original: list[torch.Tensor] = []
        # Retain loss is measured on IAU's first-step retain sample, so metrics compare across methods.
        self.retain_eval = self.retain_sample(self.args.unlearn_retain_sample_size, 0)
        self.before_f = self.before_r = Stats()
        self._bar: Any = None

    def _check(self, forget: Dataset, retain: Dataset | None, held_out: Dataset | None, retain_weight: float):
        trainer, args, engine = self.trainer, self.args, self.engine
        key = load_key(args.fingerprint_key_file)
        engine.agree(key_id(key), "fingerprint key", "give every node the same key file "
                     "(IAUConfig.fingerprint_key_file or $HF_IAU_KEY_FILE): digests must match across processes.")
        self.record = trainer.deletion_record
        signature = engine.signature()
        ctx = RequestContext(
            trainer.train_dataset, args.id_column, key, self.record, retain_weight,
            lambda name, ds: check_labels(name, ds, self.model, trainer.data_collator, signature),
        )
        return DeletionRequest.build(self.model, forget, retain, held_out, ctx)

    # --- randomness -------------------------------------------------------------------------
    def rng(self, *stream: int) -> np.random.Generator:
        """A generator seeded by (seed, request index, *stream): the same on every process and machine."""
        return np.random.default_rng([int(self.seed), int(self.request_index), *[int(s) for s in stream]])

    def retain_sample(self, size: int | None, step: int) -> list[int]:
        """The retain rows of ``step`` (all when ``size`` is None)."""
        return retain_sample(len(self.retain), size, self.seed, self.request_index, step)

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
                    _add(stats, bl, len(ix), None)
        return self._reduce(stats, forward=True)

    def accumulate(
        self,
        ds: Dataset,
        idx: Sequence[int],
        scale: float,
        term: Term | None = None,
        per_example: bool = False,
        *,
        total: float | None = None,
        mask: Mask | None = None,
    ) -> Stats:
        """Add ``scale·∇(Σ mask·term / N)`` over ``idx`` to ``.grad`` (term: summed loss; mask: 1; N: ``total``, else
        the true count of ``idx`` — examples when ``per_example``). Returns the loss statistics of the pass."""
        total = self.count(ds, idx, per_example) if total is None else float(total)
        stats = Stats()
        for batch, ix in self.batches(ds, idx):
            with self.engine.autocast():
                bl = batch_losses(self.model, batch, self.kind)
            if ix:
                _check_finite(bl.loss_sum, self.method)
                objective = bl.loss_sum if term is None else term(bl, ix)
                _check_finite(objective, self.method)
                active = None if mask is None else mask(_head(bl, len(ix)), ix)
                if active is not None:
                    objective = objective[: len(ix)] * active
                _add(stats, bl, len(ix), active)
            else:
                objective = bl.loss_sum * 0.0  # padding batch: runs, adds nothing
            if total > 0 and scale != 0:
                self.engine.backward(objective.sum() * (scale / total))
        return self._reduce(stats, forward=False)

    def _check_finite(self, t: torch.Tensor) -> None:
        """UnlearningError when ``t`` holds a non-finite value (the caller restores the weights)."""
        _check_finite(t, self.method)

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    def sync_grads(self) -> None:
        """Sum ``.grad`` over processes (each holds its share of ``scale·Σ/N_global``)."""
        self.engine.sync_grads()

    def _reduce(self, stats: Stats, forward: bool) -> Stats:
        out = Stats.from_vector(self.engine.sum(stats.vector()))
        if forward:
            self.fwd_passes += out.examples
        else:
            self.grad_passes += out.examples
        return out

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
    def begin(self, measure: bool = True, steps: int | None = None) -> None:
        """Snapshot the weights, switch to eval mode (no dropout), measure the losses before; a progress bar of
        ``steps`` steps when given."""
        self.model.eval()
        self.engine.broadcast_weights()
        self.original = self.engine.snapshot()
        if measure:
            self.before_f = self.evaluate(self.forget)
            self.before_r = self.evaluate(self.retain, self.retain_eval)
        if steps:
            from tqdm.auto import tqdm

            quiet = self.args.disable_tqdm or not self.engine.accelerator.is_local_main_process
            self._bar = tqdm(total=steps, desc=f"unlearn ({self.method})", disable=quiet, leave=False)

    def step_done(self, record: dict[str, float]) -> None:
        """One step finished: advance the progress bar; every ``logging_steps`` steps, log ``record`` through the
        Trainer (``state.log_history``, callbacks, ``report_to``)."""
        if self._bar is not None:
            self._bar.update(1)
        step = int(record.get("step", 0)) + 1
        every = self.args.logging_steps
        every = max(1, int(every if every >= 1 else 1))
        if step % every == 0 or step == 1:
            self.trainer.log({f"unlearn/{k}": float(v) for k, v in record.items()})

    def restore(self) -> None:
        """Put the original weights back (after an error)."""
        self._close_bar()
        if self.original:
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
        try:
            result = self._result(config, metrics or {}, history or [])
        except BaseException:
            self.restore()
            raise
        self._close_bar()
        self.model.train(self.was_training)
        inputs = {"seed": self.seed, "request_index": self.request_index, "allow_noop": self.allow_noop}
        if self.curvature_used is not None:  # the update depends on it: an auditor must start from the same file
            inputs["curvature"] = self.curvature_used.record()
        return self.trainer.record_unlearning(result, self.deletion, self.request_id, self.method, config, inputs,
                                              curvature=self.curvature)

    def _result(self, config: dict[str, Any], metrics: dict[str, float], history: list[dict[str, float]]):
        self.engine.clear_grad()
        after_f = self.evaluate(self.forget)
        after_r = self.evaluate(self.retain, self.retain_eval)
        if not (math.isfinite(after_f.mean_loss) and math.isfinite(after_r.mean_loss)):
            raise UnlearningError(
                f"non-finite loss after {self.method}; the original weights were restored. "
                "Lower the learning rate or the number of steps."
            )
        norm = self.engine.distance(self.original)
        moved = abs(after_f.mean_loss - self.before_f.mean_loss) > NOOP_TOLERANCE * max(1.0, abs(self.before_f.mean_loss))
        if not self.allow_noop and (norm == 0.0 or not moved):
            raise UnlearningError(
                f"{self.method} changed nothing (update norm {norm:.3g}, forget loss {self.before_f.mean_loss:.6g} → "
                f"{after_f.mean_loss:.6g}), so no deletion is recorded. Either the forget rows already sit where the "
                "model retrained without them would put them (their targets: nothing to remove), or the steps are too "
                "small (raise the learning rate or the steps). Pass allow_noop=True to record a request that changes "
                "nothing."
            )
        self._warn_if_never_learned()
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
            **metrics,
            "example_gradient_passes": self.grad_passes,
            "example_forward_passes": self.fwd_passes,
            "wall_time_s": time.perf_counter() - self.start,
        }
        if self.budget is not None:
            out["budget"] = float(self.budget)
        out.update(self._against_retraining())
        return UnlearningResult(finite_metrics(out), history, self.fingerprint, len(self.forget), len(self.retain))

    def _against_retraining(self) -> dict[str, float]:
        """``retrain_passes_estimate``: the example-gradient passes of training on the retained rows under this
        config's schedule (``max_steps`` × global batch, else ``num_train_epochs`` × |D_r|; no GR overhead), and the
        request's passes as a share of it; a warning when the request took more (retraining, which is exact, is then
        cheaper)."""
        a = self.args
        if a.max_steps and a.max_steps > 0:
            retrain = float(a.max_steps * a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size)
        else:
            retrain = float(a.num_train_epochs) * len(self.retain)
        if retrain <= 0:
            return {}
        share = self.grad_passes / retrain
        if share > 1 and self.engine.accelerator.is_main_process:
            warnings.warn(
                f"this request took {self.grad_passes:,.0f} example-gradient passes, more than training on the "
                f"{len(self.retain):,} retained rows would ({retrain:,.0f} under this config's schedule: "
                f"{'max_steps' if a.max_steps and a.max_steps > 0 else 'num_train_epochs'}): for data this small, "
                "retraining without the forget rows is cheaper, and exact.",
                stacklevel=4,
            )
        return {"retrain_passes_estimate": retrain, "passes_vs_retrain": share}

    def _warn_if_never_learned(self) -> None:
        held = self.held_out_loss
        main = self.engine.accelerator.is_main_process
        if main and held is not None and math.isfinite(held) and self.before_f.mean_loss >= held:
            warnings.warn(
                f"the forget set's loss before unlearning ({self.before_f.mean_loss:.4g}) is not below the held-out loss "
                f"({held:.4g}): the model fits these rows no better than unseen data (rows it never learned, or rows "
                "the rest of the data contradicts), so there may be little to remove — is this the trained model?",
                stacklevel=4,
            )

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _add(stats: Stats, bl: BatchLoss, k: int, active: torch.Tensor | None) -> None:
    """Add the first ``k`` (real) rows of a batch to ``stats``."""
    stats.loss_sum += float(bl.loss_sum[:k].detach().sum())
    stats.count += float(bl.count[:k].sum())
    stats.examples += float(k)
    stats.active += float(k) if active is None else float(active.abs().sum())
    if bl.correct is not None:
        stats.correct += float(bl.correct[:k].sum())
        stats.has_correct = True


def _head(bl: BatchLoss, k: int) -> BatchLoss:
    """The first ``k`` rows of a batch's losses (the real rows before any padding)."""
    if k == int(bl.loss_sum.shape[0]):
        return bl
    return BatchLoss(bl.loss_sum[:k], bl.count[:k], None if bl.correct is None else bl.correct[:k])


def _check_finite(t: torch.Tensor, method: str) -> None:
    if not torch.isfinite(t.detach()).all():
        raise UnlearningError(
            f"non-finite loss during {method}; the original weights were restored. "
            "Lower the learning rate or the number of steps."
        )


__all__ = ["BudgetError", "Mask", "Request", "Stats", "Term", "make_optimizer", "request_label", "retain_sample"]
