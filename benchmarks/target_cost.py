"""Cost of the counterfactual target estimate before and after a change, side by side in one run, next to one retrain.

    python benchmarks/target_cost.py [--change grid|groups|level] [--scenarios canary,wiki_lm,qa_lm,topic_lm,mislabelled] [--repeats 2]

Changes (``--change``): 'grid' — the scale grid as it was (every scale, every position, float64, every calibration group over the
whole grid) vs now (labelled positions only, float32 logsumexp on label-relative logits, grid cut once the rows
computed so far prove the crossing); 'groups' — each calibration group's gradient in a pass of its own (|S| more
example-gradient passes) vs kept from the hooked F̂ pass over S (``counterfactual.KEPT_GRADIENT_BYTES``);
'level' — the whole estimate vs the shortcut when the retained sample is already at the held-out level.

Each scenario (benchmarks/scenarios.py, quick sizes, seed 0, original model read from ``--cache-dir``) runs one
default IAU request per variant, variants interleaved ``--repeats`` times (medians), then one retrain on D \\ D_f. The
'reference' variant sets the ``counterfactual`` attributes in ``BEFORE[change]`` to what they were before the change
(for 'grid': ``scaled_cross_entropy`` by the per-scale full cross-entropy, ``sample_curves`` by every group over the
whole grid).
Reported: example-gradient passes, estimate seconds, request seconds, both as % of the retrain, and the largest
relative difference of the targets and of the calibrated scale between the variants (rounding only: 'grid' from its
float32 logsumexp, 'groups' from the summation order; 'level' and the grid's cut are exact).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios as sc  # noqa: E402
from common import write_results  # noqa: E402

from hf_iau import counterfactual  # noqa: E402
from hf_iau.methods import run_method  # noqa: E402
from hf_iau.methods import iau as iau_module  # noqa: E402



def reference(z, dz, labels, causal, scales, stop_above=None, dtype=None):  # noqa: ANN001, ANN201
    """The grid before: cross-entropy of the full shifted logits (every position, float64) at every scale."""
    return torch.stack([counterfactual.cross_entropy(z.double() + float(s) * dz.double(), labels, causal)
                        for s in scales], -1)


def reference_sample_curves(engine, retain, groups, inv, level):  # noqa: ANN001, ANN201
    """The calibration curves before: every group over the whole grid (no proven crossing carried between groups)."""
    return np.concatenate([
        counterfactual.example_curves(engine, retain, g, counterfactual.precondition(
            counterfactual.group_gradient(engine, retain, g), inv), counterfactual.SCALES) for g in groups])


def reference_sample_curves_grid(engine, retain, groups, inv, level, left_out=None, step_inv=None, gradients=None):  # noqa: ANN001, ANN201
    return reference_sample_curves(engine, retain, groups, inv, level), None


BEFORE = {  # change -> (module attribute, its value before the change)
    "grid": [("scaled_cross_entropy", reference), ("sample_curves", reference_sample_curves_grid)],
    "groups": [("KEPT_GRADIENT_BYTES", 0)],
    "level": [("_at_current_losses", lambda *a, **k: None)],
}
DESCRIBE = {
    "grid": "'before' = the per-scale cross-entropy of the full shifted logits (every position, float64), as the library "
    "computed it until that change; 'now' = `counterfactual.scaled_cross_entropy` (labelled positions, float32 "
    "logsumexp of label-relative logits; a scale is computed only while the rows computed so far do not yet prove "
    "where the sample's mean crosses the held-out level: `counterfactual.sample_curves`). Same directions, same passes.",
    "groups": "'before' = each calibration group's gradient G in a pass of its own after the hooked F̂ pass over S "
    "(2|S| + |F| example-gradient passes); 'now' = S passed group by group in the hooked F̂ pass, each G kept "
    "(`counterfactual.KEPT_GRADIENT_BYTES`; |S| + |F|). Same directions up to summation order.",
    "level": "'before' = the whole estimate even when the calibration sample's mean loss already reaches the held-out "
    "level (the calibrated scale is then 0); 'now' = that case found from the losses of the pass over S, the targets "
    "read from the current losses (`counterfactual._at_current_losses`): no forget gradients, no scale grid.",
}


def request(s: sc.Scenario, change: str, before: bool) -> dict:
    """One default IAU request on a fresh copy of the original model, with the library as it was before ``change``
    when ``before``."""
    saved: dict = {}
    resolve = iau_module.IAURun.resolve_targets

    def keep(run):  # noqa: ANN001, ANN202
        t = resolve(run)
        saved["targets"] = np.array(t.targets, dtype=np.float64)
        return t

    current = {name: getattr(counterfactual, name) for name, _ in BEFORE[change]}
    if before:
        for name, value in BEFORE[change]:
            setattr(counterfactual, name, value)
    iau_module.IAURun.resolve_targets = keep
    try:
        m = run_method("iau", s.trainer(), s.forget, s.retain, allow_noop=True).metrics
    finally:
        for name, value in current.items():
            setattr(counterfactual, name, value)
        iau_module.IAURun.resolve_targets = resolve
    return {"estimate_s": m["wall_time_targets_s"], "request_s": m["wall_time_s"], "steps": m["steps"],
            "scale": m["target_scale"], "targets": saved["targets"], "passes": m["example_gradient_passes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--change", choices=sorted(BEFORE), default="groups")
    ap.add_argument("--scenarios", default="canary,wiki_lm,qa_lm,topic_lm,mislabelled")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cache-dir", default=str(Path(__file__).resolve().parents[1] / "runs" / "removal_cache"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = []
    for name in a.scenarios.split(","):
        s = sc.build_scenario(name, 0, True, a.cache_dir)
        runs: dict[str, list[dict]] = {"reference": [], "current": []}
        for r in range(a.repeats):
            for v in (["reference", "current"] if r % 2 == 0 else ["current", "reference"]):
                runs[v].append(request(s, a.change, before=v == "reference"))
        tr = s.trainer()
        t = time.perf_counter()
        run_method("retrain", tr, s.forget, s.retain, model_init=s.model_init)
        retrain_s = time.perf_counter() - t
        med = {v: {k: statistics.median(x[k] for x in runs[v]) for k in ("estimate_s", "request_s")} for v in runs}
        ref, cur = runs["reference"][0], runs["current"][0]
        row = {"scenario": name, "retrain_s": retrain_s, "steps": cur["steps"], "passes_before": ref["passes"],
               "passes_now": cur["passes"], **{f"{v}_{k}": med[v][k] for v in med for k in med[v]},
               "targets_max_rel_diff": float(np.max(np.abs(cur["targets"] - ref["targets"]) / np.maximum(np.abs(ref["targets"]), 1e-12))),
               "scale_rel_diff": abs(cur["scale"] - ref["scale"]) / max(abs(ref["scale"]), 1e-30)}
        rows.append(row)
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    md = [f"# Cost of the counterfactual target estimate before and after a change: {a.change}", "",
          f"Command: `python benchmarks/target_cost.py --change {a.change} --scenarios {a.scenarios} --repeats {a.repeats}`", "",
          f"Default IAU request on each quick scenario (seed 0), variants interleaved, medians of {a.repeats}; one retrain "
          "on D \\ D_f in the same run. " + DESCRIBE[a.change], "",
          "| scenario | retrain s | gradient passes before → now | estimate s before → now | request s before → now | request % of retrain before → now | IAU steps | targets max rel. diff | scale rel. diff |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['scenario']} | {r['retrain_s']:.1f} | {r['passes_before']:.0f} → {r['passes_now']:.0f} | "
                  f"{r['reference_estimate_s']:.2f} → {r['current_estimate_s']:.2f} | "
                  f"{r['reference_request_s']:.2f} → {r['current_request_s']:.2f} | "
                  f"{100 * r['reference_request_s'] / r['retrain_s']:.1f}% → {100 * r['current_request_s'] / r['retrain_s']:.1f}% | "
                  f"{r['steps']:.0f} | {r['targets_max_rel_diff']:.1e} | {r['scale_rel_diff']:.1e} |")
    md += ["", f"Whole script: {time.perf_counter() - t0:.0f} s on the shared CPU (1 torch thread)."]
    write_results("target_cost" if a.change == "grid" else f"target_cost_{a.change}", {"rows": rows, "repeats": a.repeats},
                  md, quick=False)


if __name__ == "__main__":
    main()
