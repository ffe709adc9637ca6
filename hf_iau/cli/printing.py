"""Printing of ``hf-iau``: the usage text, the one-screen summary box and the model comparison table."""

from __future__ import annotations

import math
from typing import Any, Sequence

TABLE_COLUMNS = (
    ("forget acc", "forget_accuracy"), ("retain acc", "retain_accuracy"), ("test acc", "test_accuracy"),
    ("forget loss", "forget_loss"), ("forget qual.", "forget_quality"), ("MIA AUC", "mia_loss_auc"),
    ("gap→retrain", "gap_to_retrain"),
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
        "--config takes a recipe YAML or a bundled recipe name (e.g. mnist_vit); --quick uses its small sizes.\n"
        "`hf-iau <command> --help` lists that command's options by group (--help_all: every Trainer option)."
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


def stage(args, text: str) -> None:
    """A progress line of a command, printed by the main process only."""
    if getattr(args, "process_index", 0) == 0:
        print(text, flush=True)


def train_loss_line(final: float | None, mean: float) -> str:
    """The train summary's loss line: the last logged loss (``logging_steps``) and the mean over training."""
    if final is None:
        return f"loss       mean over training {mean:.4f} (no loss was logged: fewer steps than logging_steps)"
    return f"loss       final train loss {final:.4f} (last logged step; mean over training {mean:.4f})"


def _toward_retrain(u: float | None, o: float | None, r: float | None) -> str:
    if u is None or o is None or r is None or abs(o - r) < 1e-12:
        return ""
    return f", {100 * (o - u) / (o - r):.0f}% of the way from the original to the retrained model"


def verdict(rows: dict[str, dict[str, float]], times: dict[str, float | None]) -> str:
    """One line each on forgetting, utility, privacy and cost of the unlearned model, against the retrained one."""
    u, o, r = rows.get("unlearned", {}), rows.get("original", {}), rows.get("retrained", {})
    key = "forget_accuracy" if "forget_accuracy" in u else "forget_loss"
    name = key.replace("_", " ")
    lines = ["verdict"]
    if key in u:
        text = f"  forgetting  {name} {fmt(u[key])} (original {fmt(o.get(key))}, retrained {fmt(r.get(key))})"
        lines.append(text + _toward_retrain(u[key], o.get(key), r.get(key)))
    if "forget_quality" in u:
        fq = u["forget_quality"]
        tell = "indistinguishable from the retrained model" if fq >= 0.05 else "distinguishable from the retrained model"
        lines.append(f"  forget quality {fmt(fq)} (KS p-value vs the retrained model; ≥ 0.05: {tell})")
    util = "test_accuracy" if "test_accuracy" in u else "test_loss"
    if util in u:
        delta = f", {u[util] - r[util]:+.3f} vs retrained" if util in r else ""
        lines.append(f"  utility     {util.replace('_', ' ')} {fmt(u[util])} (retrained {fmt(r.get(util))}{delta})")
    if "mia_loss_auc" in u:
        lines.append(f"  privacy     MIA AUC forget vs test {fmt(u['mia_loss_auc'])} (retrained {fmt(r.get('mia_loss_auc'))}; "
                     "0.5: the forget rows look unseen)")
    t, rt = times.get("unlearned"), times.get("retrained")
    if t is not None and rt:
        lines.append(f"  cost        {t:.2f} s = {100 * t / rt:.2f}% of retraining ({rt:.2f} s), {rt / t:.0f}× faster")
    return "\n".join(lines)
