"""Printing of ``hf-iau``: the usage text, the one-screen summary box and the model comparison table."""

from __future__ import annotations

import math
from typing import Any, Sequence

TABLE_COLUMNS = (
    ("forget acc", "forget_accuracy"), ("retain acc", "retain_accuracy"), ("test acc", "test_accuracy"),
    ("forget loss", "forget_loss"), ("MIA AUC", "mia_loss_auc"), ("gap→retrain", "gap_to_retrain"),
)
MODEL_ORDER = ("original", "unlearned", "retrained")


def usage() -> str:
    """The top-level help of ``hf-iau``."""
    return (
        "usage: hf-iau {train,unlearn,evaluate,demo,ledger} [--config recipe.yaml] [--arg value ...]\n\n"
        "  train     train the original model (or --train_on retain: the gold model) with gradient restriction\n"
        "  unlearn   make <output_dir>/original forget the `forget` rows -> <output_dir>/unlearned\n"
        "  evaluate  compare original / unlearned / retrained (retrains when missing); writes the report\n"
        "  demo      train -> unlearn -> retrain -> evaluate on the mnist_resnet recipe, offline\n"
        "  ledger    `ledger verify <dir>`: check a deletion ledger\n\n"
        "Data roles: train (forget ⊂ train), validation (the unlearning reference and stopping), test (grading only).\n"
        "`hf-iau <command> --help` lists every argument (data, model, run and IAUConfig fields)."
    )


def fmt(v: Any) -> str:
    """A table cell: 3 decimals, ``–`` for missing, ``nan`` for NaN."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def report_rows(report) -> dict[str, dict[str, float]]:
    """{model: {metric: value}} from an ``UnlearningReport``'s flat ``"<model>/<metric>"`` metrics."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in report.metrics.items():
        model, sep, name = key.partition("/")
        if sep:
            rows.setdefault(model, {})[name] = value
    if "gap_to_retrain" in report.metrics and "unlearned" in rows:
        rows["unlearned"].setdefault("gap_to_retrain", report.metrics["gap_to_retrain"])
    rank = {m: i for i, m in enumerate(MODEL_ORDER)}
    return {m: rows[m] for m in sorted(rows, key=lambda m: rank.get(m, len(rank)))}


def summary_table(rows: dict[str, dict[str, float]], times: dict[str, float | None]) -> str:
    """A fixed-width table: accuracy / loss / MIA AUC / gap to retrain / time (% of retrain)."""
    retrain_time = times.get("retrained")
    cols = [(h, k) for h, k in TABLE_COLUMNS if any(k in r for r in rows.values())]
    head = f"{'model':<11}" + "".join(f"{h:>13}" for h, _ in cols) + f"{'time s':>9}{'% retrain':>11}"
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        t = times.get(name)
        pct = f"{100 * t / retrain_time:.2f}%" if t is not None and retrain_time else "–"
        lines.append(
            f"{name:<11}" + "".join(f"{fmt(r.get(k)):>13}" for _, k in cols)
            + f"{(f'{t:.2f}' if t is not None else '–'):>9}{pct:>11}"
        )
    return "\n".join(lines)


def print_summary(title: str, body: Sequence[str]) -> None:
    """Print a boxed one-screen summary."""
    width = min(max([len(title) + 4] + [len(line) for b in body for line in b.splitlines() or [""]]) + 2, 120)
    print("\n" + "=" * width)
    print(f"  {title}")
    print("=" * width)
    for line in body:
        print(line)
    print("=" * width, flush=True)
