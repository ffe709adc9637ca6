"""Unlearning methods under one API: IAU and its baselines, registered by name.

Every method has the signature of :func:`run_method` without ``name``::

    method(trainer, forget_dataset, retain_dataset=None, budget=None, **options) -> UnlearningResult

It changes ``trainer.model`` in place (or leaves it unchanged and raises), returns an
[`UnlearningResult`] whose ``metrics`` hold forget/retain loss before and after,
``example_gradient_passes``, ``example_forward_passes`` and ``wall_time_s``, and records itself
in ``trainer.unlearning_history``. ``budget`` caps example-gradient passes, so methods can be
compared at equal cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from datasets import Dataset

from ..result import UnlearningResult

if TYPE_CHECKING:
    from ..trainer import IAUTrainer

Method = Callable[..., UnlearningResult]
METHODS: dict[str, Method] = {}


def register_method(name: str) -> Callable[[Method], Method]:
    """Decorator: register ``fn`` under ``name`` in ``METHODS``."""

    def wrap(fn: Method) -> Method:
        if name in METHODS and METHODS[name] is not fn:
            raise ValueError(f"an unlearning method named {name!r} is already registered.")
        METHODS[name] = fn
        return fn

    return wrap


def get_method(name: str) -> Method:
    """The method registered as ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown unlearning method {name!r}; known methods: {', '.join(sorted(METHODS))}.") from None


def run_method(
    name: str,
    trainer: "IAUTrainer",
    forget_dataset: Dataset,
    retain_dataset: Dataset | None = None,
    budget: float | None = None,
    **options: Any,
) -> UnlearningResult:
    """Make ``trainer.model`` forget ``forget_dataset`` with method ``name`` (see ``METHODS``)."""
    return get_method(name)(trainer, forget_dataset, retain_dataset, budget=budget, **options)


# One line per method: importing a module registers it.
from . import iau  # noqa: E402,F401
from . import retrain  # noqa: E402,F401
from . import finetune  # noqa: E402,F401
from . import gradient_ascent  # noqa: E402,F401
from . import gradient_difference  # noqa: E402,F401
from . import npo  # noqa: E402,F401
from . import simnpo  # noqa: E402,F401
from . import rmu  # noqa: E402,F401
from . import influence_function  # noqa: E402,F401
from . import fisher  # noqa: E402,F401
from . import salun  # noqa: E402,F401
from . import scrub  # noqa: E402,F401

__all__ = ["METHODS", "Method", "get_method", "register_method", "run_method"]
