"""Removal benchmark: every unlearning method against the retrained model on eight kinds of deletion request.

    python benchmarks/removal.py            # full sizes: 8 scenarios × 2 seeds
    python benchmarks/removal.py --quick    # smaller data, 2 seeds (~25 min on 2 shared CPU cores, nice -n 10)

For each scenario (``benchmarks/scenarios.py``; TUNE and HELD_OUT blocks declared there before tuning)
and seed: train the original model, retrain the gold model on the retain set (``run_method("retrain")``),
then run each method on a fresh copy of the original and measure it with
``hf_iau.report.evaluate_unlearning`` against the retrained model.

gap = the report's ``gap_to_retrain``: mean |Δ| between the unlearned and retrained models of the
forget-set accuracy, test accuracy (token accuracy for the LMs) and loss-attack MIA AUC.
Cost = example-gradient passes and wall time, both as % of the retrain's. Baselines
(gradient_ascent, gradient_difference, npo, finetune, salun, scrub; fisher with --methods) run at EQUAL
COMPUTE: their budget is the example-gradient passes IAU (default settings, counterfactual estimate
included) used on the same request, and each one's learning rate is chosen from ``LR_GRID`` by the gap
measured on the VALIDATION split (never test). ``iau_reference`` is the authors' single step (reference
parity). Writes ``benchmarks/results/removal.json`` and ``.md`` (``removal.quick.*`` with --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scenarios import HELD_OUT, SCENARIOS, TUNE, Scenario, build_scenario  # noqa: E402

from hf_iau.losses import loss_kind  # noqa: E402
from hf_iau.methods import run_method  # noqa: E402
from hf_iau.methods._request import BudgetError  # noqa: E402
from hf_iau.report import evaluate_unlearning  # noqa: E402

REFERENCE = dict(
    unlearn_optimizer="adam", unlearn_learning_rate=1e-3, unlearn_steps=1, forget_weight=1.0, retain_weight=1.0,
    retain_sample_size=None, forget_saturation="none", unlearn_stop="fixed",
)
# name -> (registered method, options, runs at IAU's budget)
METHODS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "iau": ("iau", {}, False),
    "iau_reference": ("iau", REFERENCE, False),
    "gradient_ascent": ("gradient_ascent", {}, True),
    "gradient_difference": ("gradient_difference", {}, True),
    "npo": ("npo", {"retain_weight": 1.0}, True),
    "finetune": ("finetune", {}, True),
    "salun": ("salun", {}, True),
    "scrub": ("scrub", {}, True),
    "fisher": ("fisher", {}, True),
}
DEFAULT_METHODS = [m for m in METHODS if m != "fisher"]  # fisher: slow, untuned; --methods adds it
CLASSIFIER_ONLY = {"salun", "scrub"}
# Learning-rate grid of the baselines (multiples of the config's unlearn_learning_rate), each point at IAU's
# example-gradient budget; the point with the smallest gap on VALIDATION data (validation split as the utility
# and MIA non-member set) is kept and graded on test.
LR_GRID = (0.3, 1.0, 3.0)
TUNED = {"gradient_ascent", "gradient_difference", "npo", "finetune", "salun", "scrub"}


def evaluate(s: Scenario, model: torch.nn.Module, retrained: torch.nn.Module, original: bool = False,
             split: str = "test") -> dict[str, float]:
    rep = evaluate_unlearning(
        model, s.original if original else None, retrained, forget=s.forget, retain=s.retain,
        test=s.validation if split == "validation" else s.test,
        data_collator=s.data_collator, tokenizer=s.tokenizer, mia=("loss",), batch_size=64, seed=s.seed,
        max_examples=1000,
    )
    m = rep.metrics
    acc = "accuracy" if "unlearned/test_accuracy" in m else "loss"
    out = {
        "gap": m["gap_to_retrain"],
        "forget_metric": m[f"unlearned/forget_{acc}"],
        "test_metric": m[f"unlearned/test_{acc}"],
        "mia_auc": m["unlearned/mia_loss_auc"],
        "forget_loss": m["unlearned/forget_loss"],
        "test_loss": m["unlearned/test_loss"],
        "retrained_forget_metric": m[f"retrained/forget_{acc}"],
        "retrained_test_metric": m[f"retrained/test_{acc}"],
        "retrained_mia_auc": m["retrained/mia_loss_auc"],
    }
    if original:
        out.update(
            original_gap=m["original/gap_to_retrain"], original_forget_metric=m[f"original/forget_{acc}"],
            original_test_metric=m[f"original/test_{acc}"], original_mia_auc=m["original/mia_loss_auc"],
        )
    if s.info.get("attack") is not None and split == "test":
        out["attack_success"] = attack_success(s, model)
        if original:
            out["original_attack_success"] = attack_success(s, s.original)
    return out


@torch.no_grad()
def attack_success(s: Scenario, model: torch.nn.Module) -> float:
    """Share of triggered test inputs (true class ≠ target) predicted as the trigger's target class."""
    from hf_iau.losses import evaluate_losses

    from transformers import default_data_collator

    ds = s.info["attack"]
    collate = s.data_collator or default_data_collator
    cols = [c for c in ds.column_names if c != "id"]
    rows = [{c: ds[i][c] for c in cols} for i in range(len(ds))]
    was = model.training
    model.eval()
    out = evaluate_losses(model, (collate(rows[i : i + 64]) for i in range(0, len(rows), 64)))
    model.train(was)
    return float(out["correct"].mean())


def run_one(name: str, seed: int, quick: bool, methods: list[str], log) -> dict[str, Any]:
    t0 = time.perf_counter()
    s = build_scenario(name, seed, quick)
    log(f"[{name} seed {seed}] {s.description}; original trained in {s.train_seconds:.0f}s")
    rec: dict[str, Any] = {"scenario": name, "seed": seed, "description": s.description,
                           "n_forget": len(s.forget), "n_retain": len(s.retain), "n_test": len(s.test),
                           "train_seconds": s.train_seconds, "methods": {}}
    tr = s.trainer()
    res = run_method("retrain", tr, s.forget, s.retain, model_init=s.model_init)
    retrained = tr.model.eval()
    rt = res.metrics
    base = evaluate(s, retrained, retrained)
    orig = evaluate(s, s.original, retrained, original=True)
    rec["retrain"] = {"example_gradient_passes": rt["example_gradient_passes"], "wall_time_s": rt["wall_time_s"]}
    rec["original"] = {k[len("original_"):]: v for k, v in orig.items() if k.startswith("original_")}
    rec["retrained"] = {k: base[k] for k in ("forget_metric", "test_metric", "mia_auc")}
    log(f"  retrain: {rt['example_gradient_passes']:.0f} passes, {rt['wall_time_s']:.1f}s; "
        f"retrained forget/test/auc {base['forget_metric']:.3f}/{base['test_metric']:.3f}/{base['mia_auc']:.3f}; "
        f"original gap {rec['original']['gap']:.3f}")
    budget = None
    classifier = loss_kind(s.original) == "classification"
    for m in methods:
        method, options, at_budget = METHODS[m]
        if m in CLASSIFIER_ONLY and not classifier:
            rec["methods"][m] = {"error": "n/a: classifiers only"}
            continue
        grid = [None] if not (at_budget and m in TUNED) else [f * s.args.unlearn_learning_rate for f in LR_GRID]
        tried = []
        for lr in grid:
            tr = s.trainer()
            opts = dict(options, **({"learning_rate": lr} if lr is not None else {}))
            try:
                r = run_method(method, tr, s.forget, s.retain, budget=budget if at_budget else None, **opts)
            except (BudgetError, ValueError, RuntimeError) as exc:
                tried.append({"learning_rate": lr, "error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            val = evaluate(s, tr.model.eval(), retrained, split="validation") if len(grid) > 1 else None
            tried.append({"learning_rate": lr, "r": r, "model": tr.model, "val_gap": val["gap"] if val else None})
        ok = [t for t in tried if "r" in t]
        if not ok:
            rec["methods"][m] = {"error": tried[-1]["error"]}
            log(f"  {m}: {tried[-1]['error']}")
            continue
        best = min(ok, key=lambda t: t["val_gap"]) if len(grid) > 1 else ok[0]
        r = best["r"]
        passes = r.metrics["example_gradient_passes"]  # IAU's include its counterfactual estimate
        if m == "iau":
            budget = passes
        ev = evaluate(s, best["model"].eval(), retrained)
        row = {
            **{k: ev[k] for k in ("gap", "forget_metric", "test_metric", "mia_auc", "forget_loss", "test_loss")},
            "attack_success": ev.get("attack_success"),
            "example_gradient_passes": passes,
            "wall_time_s": r.metrics["wall_time_s"],
            "passes_pct_of_retrain": 100 * passes / rt["example_gradient_passes"],
            "wall_pct_of_retrain": 100 * r.metrics["wall_time_s"] / rt["wall_time_s"],
            "steps": r.metrics.get("steps"),
            "saturation": "flip" if r.metrics.get("saturation_flip") else ("loss" if r.metrics.get("saturation_loss") else None),
            "budget": budget if at_budget else None,
        }
        if len(grid) > 1:
            row["learning_rate"] = best["learning_rate"]
            row["grid"] = [{"learning_rate": t["learning_rate"], "validation_gap": t.get("val_gap"), "error": t.get("error")}
                           for t in tried]
        rec["methods"][m] = row
        log(f"  {m:20s} gap {row['gap']:.3f}  forget {row['forget_metric']:.3f} test {row['test_metric']:.3f} "
            f"auc {row['mia_auc']:.3f}  passes {row['passes_pct_of_retrain']:.2f}%  wall {row['wall_pct_of_retrain']:.2f}%"
            f"  steps {row['steps']}" + (f"  lr {row['learning_rate']:.2g} (val gaps "
            + ", ".join(f"{t['validation_gap']:.3f}" if t.get("validation_gap") is not None else "err" for t in row["grid"]) + ")"
            if "grid" in row else "") + (f"  attack {row['attack_success']:.3f}" if row.get("attack_success") is not None else ""))
    rec["seconds"] = time.perf_counter() - t0
    return rec


def _ms(values: list[float], fmt: str = "{:.3f}") -> str:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "—"
    return fmt.format(np.mean(v)) + (" ± " + fmt.format(np.std(v)) if len(v) > 1 else "")


def summarise(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["scenario"] for r in runs):
        rs = [r for r in runs if r["scenario"] == name]
        rows = {}
        for m in ["original", *methods]:
            vals = [r["original"] if m == "original" else r["methods"].get(m, {}) for r in rs]
            ok = [v for v in vals if "gap" in v]
            if not ok:
                continue
            rows[m] = {k: float(np.mean([v[k] for v in ok])) for k in ok[0] if isinstance(ok[0][k], (int, float)) and ok[0][k] is not None}
            rows[m]["gap_std"] = float(np.std([v["gap"] for v in ok]))
            rows[m]["gap_max"] = float(np.max([v["gap"] for v in ok]))
            rows[m]["seeds"] = len(ok)
        out[name] = rows
    return out


def _block(result: dict[str, Any], names: list[str], methods: list[str]) -> list[str]:
    lines: list[str] = []
    for name in names:
        if name not in result["summary"]:
            continue
        rows = result["summary"][name]
        runs = [r for r in result["runs"] if r["scenario"] == name]
        rt = [r["retrained"] for r in runs]
        att = [r["original"].get("attack_success") for r in runs if r["original"].get("attack_success") is not None]
        lines += [
            f"### {name}", "", runs[0]["description"] + f" (seeds: {', '.join(str(r['seed']) for r in runs)}).", "",
            f"Retrained model: forget {np.mean([x['forget_metric'] for x in rt]):.3f}, test {np.mean([x['test_metric'] for x in rt]):.3f}, "
            f"MIA AUC {np.mean([x['mia_auc'] for x in rt]):.3f}" + (f"; original attack success {np.mean(att):.3f}" if att else "") + ".", "",
            "| method | gap ↓ | forget | test | MIA AUC | attack | passes % retrain | wall % retrain | steps | lr (grid pick) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m in ["original", *methods]:
            if m not in rows:
                errs = [r["methods"].get(m, {}).get("error") for r in runs]
                if any(errs):
                    lines.append(f"| {m} | {next(e for e in errs if e)[:80]} | | | | | | | | |")
                continue
            vals = [r["original"] if m == "original" else r["methods"][m] for r in runs
                    if m == "original" or "gap" in r["methods"].get(m, {})]
            row = rows[m]
            star = "*" if m in METHODS and METHODS[m][2] else ""
            cost = ("—", "—") if m == "original" else (
                _ms([v["passes_pct_of_retrain"] for v in vals], "{:.2f}"), _ms([v["wall_pct_of_retrain"] for v in vals], "{:.2f}"))
            steps = "—" if m == "original" or row.get("steps") is None else f"{row['steps']:.1f}"
            attack = _ms([v.get("attack_success") for v in vals]) if any(v.get("attack_success") is not None for v in vals) else "—"
            lrs = ", ".join(f"{v['learning_rate']:.2g}" for v in vals if v.get("learning_rate")) or "—"
            lines.append(
                f"| {m}{star} | {_ms([v['gap'] for v in vals])} | {row['forget_metric']:.3f} | {row['test_metric']:.3f} | "
                f"{row['mia_auc']:.3f} | {attack} | {cost[0]} | {cost[1]} | {steps} | {lrs} |"
            )
        lines.append("")
    return lines


def _goal_rows(result: dict[str, Any], names: list[str], methods: list[str], block: str) -> list[str]:
    lines = []
    for name in names:
        rows = result["summary"].get(name, {})
        if "iau" not in rows:
            continue
        iau = rows["iau"]
        lm = any("token accuracy" in r["description"] or "GPT-2" in r["description"] for r in result["runs"] if r["scenario"] == name)
        goal = 0.05 if lm else 0.02
        rivals = {m: rows[m]["gap"] for m in methods if m in rows and m in TUNED}
        best = min(rivals.items(), key=lambda kv: kv[1]) if rivals else None
        orig = rows.get("original", {}).get("gap", float("nan"))
        lines.append(
            f"| {name} | {block} | {orig:.3f} | {iau['gap']:.3f} ({iau['gap_max']:.3f}) | ≤ {goal} {'yes' if iau['gap_max'] <= goal else 'no'} | "
            f"{iau['passes_pct_of_retrain']:.1f} {'yes' if iau['passes_pct_of_retrain'] <= 5 else 'no'} | "
            + (f"{best[0]} {best[1]:.3f} | {'yes' if iau['gap'] < best[1] else 'no'} |" if best else "— | — |")
        )
    return lines


def markdown(result: dict[str, Any], methods: list[str]) -> str:
    lines = [
        "# Removal benchmark: unlearning vs retraining",
        "",
        "**Declared before tuning (issue 12):** the default (`forget_saturation='auto'`: per-example counterfactual "
        f"targets, `hf_iau/counterfactual.py`) may be tuned on {', '.join(TUNE)} only; {', '.join(HELD_OUT)} are "
        "held out (never used to choose anything) and reported in their own block.",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; total {result['total_seconds'] / 60:.1f} min.  ",
        "gap = mean |Δ| (unlearned − retrained) of forget accuracy, test accuracy (token accuracy for the LMs) and "
        "loss-attack MIA AUC (forget vs test), as in `evaluate_unlearning`. Cost as % of the retrain's "
        "example-gradient passes (IAU's include its counterfactual estimate) / wall time. Baselines marked * run at "
        f"IAU's example-gradient budget; their learning rate is picked from {{{', '.join(f'{f:g}' for f in LR_GRID)}}} × "
        "unlearn_learning_rate by the gap on the VALIDATION split (column 'lr'), then graded on test. attack = share "
        "of triggered non-target test inputs predicted as the trigger's class. Mean ± std over seeds.",
        "",
        "## Goal check (IAU with default settings)", "",
        "Goals: gap ≤ 0.02 (classifiers) / ≤ 0.05 (causal LMs) on the worst seed, ≤ 5% of the retrain's passes, "
        "smaller mean gap than every tuned baseline at equal passes.", "",
        "| scenario | block | original gap | IAU gap (mean, worst seed) | gap goal | passes % retrain ≤ 5? | best tuned baseline | IAU better? |",
        "|---|---|---|---|---|---|---|---|",
        *_goal_rows(result, [n for n in TUNE], methods, "tune"),
        *_goal_rows(result, [n for n in HELD_OUT], methods, "held-out"),
        "",
        "## Tuning scenarios", "",
        *_block(result, [n for n in TUNE], methods),
        "## Held-out scenarios", "",
        *_block(result, [n for n in HELD_OUT], methods),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller data (2 seeds; ~25 min on 2 shared cores)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--seeds", default=None, help="comma-separated (default: 0,1)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    p.add_argument("--out", default=None, help="output stem (default: results/removal, results/removal.quick with --quick)")
    p.add_argument("--from-json", default=None, help="only rewrite the Markdown table from an existing results JSON")
    p.add_argument("--merge", nargs="+", default=None,
                   help="combine results JSONs (a later file's scenarios replace an earlier one's) into --out")
    a = p.parse_args(argv)
    if a.merge:
        parts = [json.loads(Path(f).read_text()) for f in a.merge]
        runs: list[dict[str, Any]] = []
        for part in parts:
            names = {r["scenario"] for r in part["runs"]}
            runs = [r for r in runs if r["scenario"] not in names] + part["runs"]
        order = {n: i for i, n in enumerate(SCENARIOS)}
        runs.sort(key=lambda r: (order.get(r["scenario"], 99), r["seed"]))
        used = [m for m in METHODS if any(m in r["methods"] for r in runs)]
        result = {
            "command": " ; then ".join(f"{q['command']} (kept: {', '.join(sorted({r['scenario'] for r in q['runs'] if r in runs}))})" for q in parts),
            "machine": parts[-1]["machine"], "torch": parts[-1]["torch"], "quick": parts[-1]["quick"],
            "seeds": [p_["seeds"] for p_ in parts],
            "total_seconds": sum(p_["total_seconds"] for p_ in parts),
            "merged_from": [{"command": q["command"], "total_seconds": q["total_seconds"]} for q in parts],
            "runs": runs,
        }
        result["summary"] = summarise(runs, used)
        out = Path(a.out or Path(__file__).resolve().parent / "results" / "removal")
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(markdown(result, used))
        return 0
    if a.from_json:
        result = json.loads(Path(a.from_json).read_text())
        Path(a.from_json).with_suffix(".md").write_text(markdown(result, [m for m in METHODS if any(m in r["methods"] for r in result["runs"])]))
        return 0
    default_seeds = {n: [0, 1] for n in SCENARIOS}
    methods = a.methods.split(",")
    torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    out = Path(a.out or Path(__file__).resolve().parent / "results" / ("removal.quick" if a.quick else "removal"))
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".log")
    fh = open(log_path, "w")

    def log(msg: str) -> None:
        print(msg, flush=True)
        fh.write(msg + "\n")
        fh.flush()

    runs: list[dict[str, Any]] = []

    def save() -> dict[str, Any]:  # after every run, so an interrupted run keeps what it measured
        result = {
            "command": "python benchmarks/removal.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"{os.cpu_count()} CPUs (shared; wall times noisy)",
            "torch": torch.__version__,
            "quick": a.quick,
            "seeds": a.seeds or default_seeds,
            "total_seconds": time.perf_counter() - t0,
            "runs": runs,
        }
        result["summary"] = summarise(runs, methods)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float))
        out.with_suffix(".md").write_text(markdown(result, methods))
        return result

    for name in a.scenarios.split(","):
        seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else default_seeds[name]
        for seed in seeds:
            try:
                runs.append(run_one(name, seed, a.quick, methods, log))
            except Exception:  # keep the other scenarios
                log(traceback.format_exc())
            save()
    result = save()
    log(f"wrote {out.with_suffix('.json')} and .md in {result['total_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
