"""What a deletion request produces: ``UnlearningResult``, the errors, and the pass accumulator ``Stats``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class UnlearningError(ValueError):
    """Unlearning could not finish safely; the model holds its original weights."""


class BudgetError(ValueError):
    """The budget does not pay for the smallest unit of work of a method."""


@dataclass
class UnlearningResult:
    """Outcome of one deletion request: ``metrics`` plus the per-step ``history``."""

    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    forget_fingerprint: str = ""
    forget_size: int = 0
    retain_size: int = 0


@dataclass
class Stats:
    """Sums over one pass: summed losses, true counts (tokens or examples), examples, correct, still-active rows."""

    loss_sum: float = 0.0
    count: float = 0.0
    examples: float = 0.0
    correct: float = 0.0
    has_correct: bool = False
    active: float = 0.0

    def vector(self) -> list[float]:
        """The sums as one list (to add them over processes in one reduce)."""
        return [self.loss_sum, self.count, self.examples, self.correct, float(self.has_correct), self.active]

    @classmethod
    def from_vector(cls, v: list[float]) -> "Stats":
        return cls(v[0], v[1], v[2], v[3], v[4] > 0, v[5])

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples if self.has_correct and self.examples else float("nan")

    @property
    def active_fraction(self) -> float:
        return self.active / self.examples if self.examples else 0.0


def finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` as floats, without the NaN entries (a metric that does not apply is absent, not NaN)."""
    out = {k: float(v) for k, v in metrics.items()}
    return {k: v for k, v in out.items() if not math.isnan(v)}


__all__ = ["BudgetError", "Stats", "UnlearningError", "UnlearningResult", "finite_metrics"]
