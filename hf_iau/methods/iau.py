"""IAU itself (``trainer.unlearn``) under the method API, with a budget.

Each IAU step costs |D_f| + |R_t| example-gradient passes (R_t: the step's retain sample, the
whole retain set when ``retain_sample_size`` is None). Under a budget, ``unlearn_steps`` is capped
at ⌊budget / step cost⌋. ``options`` temporarily override ``IAUConfig`` unlearning fields
(e.g. ``unlearn_learning_rate=1e-4, unlearn_steps=5``); ``reference_dataset`` is passed through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from datasets import Dataset

from ..unlearning import UnlearningResult
from . import register_method
from ._request import BudgetError

if TYPE_CHECKING:
    from ..trainer import IAUTrainer


@register_method("iau")
def iau(
    trainer: "IAUTrainer",
    forget_dataset: Dataset,
    retain_dataset: Dataset | None = None,
    budget: float | None = None,
    *,
    reference_dataset: Dataset | None = None,
    **options: Any,
) -> UnlearningResult:
    """``trainer.unlearn`` with ``options`` as IAUConfig overrides and steps capped by ``budget``."""
    args = trainer.args
    fields = set(trainer.unlearning_config()) | {"unlearn_batch_size", "unlearn_guard_retries", "unlearn_guard_shrink"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"iau: unknown option(s) {unknown}; use IAUConfig unlearning fields: {sorted(fields)}.")
    saved = {k: getattr(args, k) for k in {*options, "unlearn_steps"}}
    try:
        for k, v in options.items():
            setattr(args, k, v)
        getattr(args, "_validate_iau", lambda: None)()  # IAUConfig's own checks on the overrides
        if budget is not None:
            forget, retain = trainer._validate_unlearning_data(forget_dataset, retain_dataset)
            n_r = len(retain) if args.retain_sample_size is None else min(args.retain_sample_size, len(retain))
            cost = len(forget) + n_r
            steps = min(args.unlearn_steps, int(budget // cost))
            if steps < 1:
                raise BudgetError(
                    f"budget={budget:g} example-gradient passes cannot pay for one IAU step ({cost} passes); "
                    "raise the budget or set retain_sample_size."
                )
            args.unlearn_steps = steps
        result = trainer.unlearn(forget_dataset, retain_dataset, reference_dataset)
    finally:
        for k, v in saved.items():
            setattr(args, k, v)
    if budget is not None:
        result.metrics["budget"] = float(budget)
        trainer.unlearning_history[-1]["metrics"]["budget"] = float(budget)
    return result
