"""Retraining from scratch on the retain set: the gold standard every method is measured against.

The model is re-initialised with the trainer's training seed — ``set_seed(args.seed)`` then
``model_init()``, or ``type(model)(config)`` — and trained by a fresh ``IAUTrainer`` with the same
arguments (GR, epochs, learning rate, schedule, batch size, data seed ...) on D_r only, so it
never sees D_f; only checkpointing, reporting and evaluation are switched off. The result is
copied into ``trainer.model`` in place. For a PeftModel pass ``model_init`` returning the base
model: the same LoRA config is applied to it.

Cost: every example of every training step is one gradient pass (an epoch = |D_r|), two with
gradient restriction (its extra gradient or HVP; an upper bound when GR runs only on some steps).
Under a budget, training stops after the last optimizer step that fits.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from typing import TYPE_CHECKING, Any, Callable

import torch
from datasets import Dataset
from transformers import TrainerCallback, set_seed

from ..result import UnlearningResult
from . import register_method
from ._request import Request

if TYPE_CHECKING:
    from ..trainer import IAUTrainer


def fresh_model(trainer: "IAUTrainer", model_init: Callable[[], torch.nn.Module] | None) -> torch.nn.Module:
    """A new model seeded with ``args.seed``: ``model_init()`` or the model's class on its config."""
    set_seed(trainer.args.seed)
    if model_init is not None:
        return model_init()
    model = trainer.model
    if hasattr(model, "peft_config"):
        raise ValueError(
            "retrain of a PeftModel needs `model_init=` returning the base model (the same adapter config is re-added)."
        )
    if getattr(model, "config", None) is None:
        raise ValueError("retrain cannot re-initialise a model without `config`; pass `model_init=`.")
    new = type(model)(copy.deepcopy(model.config))
    return new.to(next(model.parameters()).dtype)


class _Budget(TrainerCallback):
    """Stops training once the next optimizer step could exceed ``budget`` example passes."""

    def __init__(self, budget: float | None, step_cost: float) -> None:
        self.budget, self.step_cost, self.passes = budget, step_cost, 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.budget is not None and self.passes + self.step_cost > self.budget:
            control.should_training_stop = True


def _counting_trainer(base: type, counter: _Budget, factor: float, world: int) -> type:
    class CountingTrainer(base):  # type: ignore[misc, valid-type]
        def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001, ANN202
            first = next(v for v in inputs.values() if isinstance(v, torch.Tensor))
            counter.passes += float(first.shape[0]) * factor * world
            return super().training_step(model, inputs, num_items_in_batch)

    return CountingTrainer


@register_method("retrain")
def retrain(
    trainer: "IAUTrainer",
    forget_dataset: Dataset,
    retain_dataset: Dataset | None = None,
    budget: float | None = None,
    *,
    model_init: Callable[[], torch.nn.Module] | None = None,
) -> UnlearningResult:
    """Train a freshly initialised model on the retain set with ``trainer.args``; copy it in place."""
    from ..trainer import IAUTrainer

    req = Request("retrain", trainer, forget_dataset, retain_dataset, budget)
    args = trainer.args
    factor = 2.0 if args.gr_alpha > 0 else 1.0
    world = max(args.world_size, 1)
    step_cost = args.per_device_train_batch_size * args.gradient_accumulation_steps * world * factor
    first_cost = min(step_cost, len(req.retain_raw) * factor)
    req.need(first_cost, "the first retraining step")
    req.begin()
    try:
        counter = _Budget(budget, step_cost)
        model = fresh_model(trainer, model_init)  # before new arguments: they reset the accelerator state
        with tempfile.TemporaryDirectory() as tmp:
            new_args = dataclasses.replace(
                args, output_dir=tmp, save_strategy="no", eval_strategy="no", report_to="none",
                push_to_hub=False, load_best_model_at_end=False,
            )
            peft_config = None
            if hasattr(trainer.model, "peft_config"):
                peft_config = next(iter(trainer.model.peft_config.values()))
            fresh = _counting_trainer(IAUTrainer, counter, factor, world)(
                model=model, args=new_args, data_collator=trainer.data_collator, train_dataset=req.retain_raw,
                processing_class=trainer.processing_class, peft_config=peft_config, callbacks=[counter],
            )
            out = fresh.train()
            state = fresh.model.state_dict()
        with torch.no_grad():
            req.model.load_state_dict(state)
        req.grad_passes = counter.passes
        metrics = {
            "retrain_steps": float(fresh.state.global_step),
            "retrain_epochs": float(fresh.state.epoch or 0.0),
            "retrain_train_loss": float(out.training_loss),
        }
        config = {
            "seed": args.seed, "model_init": getattr(model_init, "__name__", None), "budget": budget,
            **{k: getattr(args, k) for k in (
                "num_train_epochs", "max_steps", "learning_rate", "lr_scheduler_type", "warmup_steps",
                "weight_decay", "per_device_train_batch_size", "gradient_accumulation_steps", "optim",
                "gr_alpha", "gr_mode", "gr_norm", "data_seed",
            ) if hasattr(args, k)},
        }
        config = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in config.items()}
        return req.finish(config, metrics)
    except BaseException:
        req.restore()
        raise
