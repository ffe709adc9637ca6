"""Removal benchmark: every unlearning method against the retrained model on three real-data scenarios.

    python benchmarks/removal.py            # full: 3 scenarios × seeds (about 30 min on 2 busy CPU cores)
    python benchmarks/removal.py --quick    # smaller data, one seed (a few minutes)

For each scenario (``benchmarks/scenarios.py``) and seed: train the original model, retrain the gold
model on the retain set (``run_method("retrain")``), then run each method on a fresh copy of the
original and measure it with ``hf_iau.report.evaluate_unlearning`` against the retrained model.

gap = the report's ``gap_to_retrain``: mean |Δ| between the unlearned and retrained models of the
forget-set accuracy, test accuracy (token accuracy for the LM) and loss-attack MIA AUC.
Cost = example-gradient passes and wall time, both as % of the retrain's. Baselines
(gradient_ascent, gradient_difference, npo, finetune, fisher) run at EQUAL COMPUTE: their budget is
the example-gradient passes IAU (default settings) used on the same request. ``iau_reference`` is the
authors' single step (reference parity). Writes ``benchmarks/results/removal.json`` and ``.md``.
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

from scenarios import SCENARIOS, Scenario, build_scenario  # noqa: E402

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
    "fisher": ("fisher", {}, True),
}


def evaluate(s: Scenario, model: torch.nn.Module, retrained: torch.nn.Module, original: bool = False) -> dict[str, float]:
    rep = evaluate_unlearning(
        model, s.original if original else None, retrained, forget=s.forget, retain=s.retain, test=s.test,
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
    return out


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
    for m in methods:
        method, options, at_budget = METHODS[m]
        tr = s.trainer()
        try:
            r = run_method(method, tr, s.forget, s.retain, budget=budget if at_budget else None, **options)
        except (BudgetError, ValueError, RuntimeError) as exc:
            rec["methods"][m] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            log(f"  {m}: {rec['methods'][m]['error']}")
            continue
        if m == "iau":
            budget = r.metrics["example_gradient_passes"]
        ev = evaluate(s, tr.model.eval(), retrained)
        row = {
            **{k: ev[k] for k in ("gap", "forget_metric", "test_metric", "mia_auc", "forget_loss", "test_loss")},
            "example_gradient_passes": r.metrics["example_gradient_passes"],
            "wall_time_s": r.metrics["wall_time_s"],
            "passes_pct_of_retrain": 100 * r.metrics["example_gradient_passes"] / rt["example_gradient_passes"],
            "wall_pct_of_retrain": 100 * r.metrics["wall_time_s"] / rt["wall_time_s"],
            "steps": r.metrics.get("steps"),
            "saturation": "flip" if r.metrics.get("saturation_flip") else ("loss" if r.metrics.get("saturation_loss") else None),
            "budget": budget if at_budget else None,
        }
        rec["methods"][m] = row
        log(f"  {m:20s} gap {row['gap']:.3f}  forget {row['forget_metric']:.3f} test {row['test_metric']:.3f} "
            f"auc {row['mia_auc']:.3f}  passes {row['passes_pct_of_retrain']:.2f}%  wall {row['wall_pct_of_retrain']:.2f}%"
            f"  steps {row['steps']}")
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


def markdown(result: dict[str, Any], methods: list[str]) -> str:
    lines = [
        "# Removal benchmark: unlearning vs retraining",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; total {result['total_seconds'] / 60:.1f} min.  ",
        "gap = mean |Δ| (unlearned − retrained) of forget accuracy, test accuracy (token accuracy for the LM) and "
        "loss-attack MIA AUC (forget vs test), as in `evaluate_unlearning`. Cost as % of the retrain's "
        "example-gradient passes / wall time. Baselines marked * run at IAU's example-gradient budget "
        "(equal compute). Mean ± std over seeds.",
        "",
    ]
    for name, rows in result["summary"].items():
        r0 = next(r for r in result["runs"] if r["scenario"] == name)
        rt = [r["retrained"] for r in result["runs"] if r["scenario"] == name]
        lines += [
            f"## {name}", "", r0["description"] + f" (seeds: {', '.join(str(r['seed']) for r in result['runs'] if r['scenario'] == name)}).", "",
            f"Retrained model: forget {np.mean([x['forget_metric'] for x in rt]):.3f}, test {np.mean([x['test_metric'] for x in rt]):.3f}, "
            f"MIA AUC {np.mean([x['mia_auc'] for x in rt]):.3f}.", "",
            "| method | gap ↓ | forget | test | MIA AUC | passes % retrain | wall % retrain | steps |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in ["original", *methods]:
            if m not in rows:
                errs = [r["methods"].get(m, {}).get("error") for r in result["runs"] if r["scenario"] == name]
                if any(errs):
                    lines.append(f"| {m} | failed: {next(e for e in errs if e)[:80]} | | | | | | |")
                continue
            vals = [r["original"] if m == "original" else r["methods"][m] for r in result["runs"]
                    if r["scenario"] == name and (m == "original" or "gap" in r["methods"].get(m, {}))]
            row = rows[m]
            star = "*" if m in METHODS and METHODS[m][2] else ""
            cost = ("—", "—") if m == "original" else (
                _ms([v["passes_pct_of_retrain"] for v in vals], "{:.2f}"), _ms([v["wall_pct_of_retrain"] for v in vals], "{:.2f}"))
            steps = "—" if m == "original" or row.get("steps") is None else f"{row['steps']:.1f}"
            lines.append(
                f"| {m}{star} | {_ms([v['gap'] for v in vals])} | {row['forget_metric']:.3f} | {row['test_metric']:.3f} | "
                f"{row['mia_auc']:.3f} | {cost[0]} | {cost[1]} | {steps} |"
            )
        lines.append("")
    lines += ["## Goal check (IAU with default settings)", "",
              "Goal: gap ≤ 0.02 using ≤ 5% of the retrain's example-gradient passes, and a smaller gap than "
              "gradient_ascent / gradient_difference / npo at equal compute.", "",
              "| scenario | IAU gap (mean, worst seed) | ≤ 0.02? | passes % retrain | ≤ 5%? | best of GA/GD/NPO gap | IAU better? |",
              "|---|---|---|---|---|---|---|"]
    for name, rows in result["summary"].items():
        if "iau" not in rows:
            continue
        iau = rows["iau"]
        rivals = {m: rows[m]["gap"] for m in ("gradient_ascent", "gradient_difference", "npo") if m in rows}
        best = min(rivals.items(), key=lambda kv: kv[1]) if rivals else None
        lines.append(
            f"| {name} | {iau['gap']:.3f} ({iau['gap_max']:.3f}) | {'yes' if iau['gap_max'] <= 0.02 else 'no (+%.3f)' % (iau['gap_max'] - 0.02)} | "
            f"{iau['passes_pct_of_retrain']:.1f} | {'yes' if iau['passes_pct_of_retrain'] <= 5 else 'no (%.1f×)' % (iau['passes_pct_of_retrain'] / 5)} | "
            + (f"{best[0]} {best[1]:.3f} | {'yes' if iau['gap'] < best[1] else 'no'} |" if best else "— | — |")
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller data, one seed (a few minutes)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--seeds", default=None, help="comma-separated (default: 0 quick; full: 0,1,2 mislabelled, 0,1 others)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "removal"))
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
        out = Path(a.out)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(markdown(result, used))
        return 0
    if a.from_json:
        result = json.loads(Path(a.from_json).read_text())
        Path(a.from_json).with_suffix(".md").write_text(markdown(result, [m for m in METHODS if any(m in r["methods"] for r in result["runs"])]))
        return 0
    default_seeds = {"mislabelled": [0, 1, 2], "privacy": [0, 1], "canary": [0, 1]}  # privacy/canary cost most
    methods = a.methods.split(",")
    torch.set_num_threads(a.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".log")
    fh = open(log_path, "w")

    def log(msg: str) -> None:
        print(msg, flush=True)
        fh.write(msg + "\n")
        fh.flush()

    runs = []
    for name in a.scenarios.split(","):
        seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else ([0] if a.quick else default_seeds[name])
        for seed in seeds:
            try:
                runs.append(run_one(name, seed, a.quick, methods, log))
            except Exception:  # keep the other scenarios
                log(traceback.format_exc())
    result = {
        "command": "python benchmarks/removal.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs (shared; wall times noisy)",
        "torch": torch.__version__,
        "quick": a.quick,
        "seeds": a.seeds or ("0" if a.quick else default_seeds),
        "total_seconds": time.perf_counter() - t0,
        "runs": runs,
    }
    result["summary"] = summarise(runs, methods)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result, methods))
    log(f"wrote {out.with_suffix('.json')} and .md in {result['total_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
