"""How much of IAU's gap is its targets, and how much the update: the same request with ORACLE targets.

    python benchmarks/oracle_targets.py [--scenarios mislabelled,...] [--variants default,oracle,oracle+land,oracle@jump=0]
                                        [--seeds 0,1,2]

A diagnostic, not a method: it reads the answer. ``oracle`` replaces each forget row's counterfactual target by that
row's mean loss under the scenario's cached retrains (``target_quality.retrained_losses``) and then runs the default
request unchanged (the same influence step, steps and stop), except that the targets stay put
(``unlearn_follow_held_out`` off: the oracle is in absolute loss). ``oracle+land`` also pulls rows past their target
back (``unlearn_land``). ``default`` is today's request (the recorded run predates following the held-out losses). With oracle targets the remaining gap to the retrains is what the
update itself costs: collateral damage to the test rows, overshoot, and the limits of 20 Adam steps.

Every run is graded on the TEST split against the mean of the cached retrains, exactly as ``benchmarks/removal.py``
grades (gap, × floor, KLoM p95 of the forget rows, forget loss in units of the retrains' spread). The retrains must be
cached (run ``benchmarks/removal.py --quick --scenarios <name>`` once).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios as sc  # noqa: E402
from common import write_results  # noqa: E402
from removal import GAP_KEYS, block, floor, grade, mean_metrics, measure, retrained, unlearn  # noqa: E402
from target_quality import CLASSIFIERS, LMS, retrained_losses  # noqa: E402

from hf_iau.methods import iau as iau_module  # noqa: E402

# the oracle's targets are absolute losses: they do not follow the held-out losses (unlearn_follow_held_out off)
VARIANTS = {"default": ("iau", False), "oracle": ("iau@follow=0", True), "oracle+land": ("iau@land=1:follow=0", True)}


def variant(v: str) -> tuple[str, bool]:
    """(removal.py method, oracle targets?) of a variant: a VARIANTS name, ``oracle@key=value:...`` (the oracle with
    IAU options, keys of ``removal.VARIANT_KEYS``) or ``iau@key=value:...`` (without the oracle)."""
    if v in VARIANTS:
        return VARIANTS[v]
    if v.startswith("oracle@"):
        return "iau" + v[len("oracle"):] + ":follow=0", True
    if v.startswith("iau@"):
        return v, False
    raise SystemExit(f"--variants: {v!r} is not one of {', '.join(VARIANTS)}, oracle@key=value:... or iau@key=value:...")


@contextlib.contextmanager
def oracle_targets(per_row: np.ndarray) -> Iterator[None]:
    """Within the block, every IAU request's loss targets are ``per_row`` (the estimate still runs: the influence step
    uses it)."""
    resolve = iau_module.IAURun.resolve_targets

    def with_oracle(run):  # noqa: ANN001, ANN202
        targets = resolve(run)
        if targets.mode == "loss":
            targets.targets = np.asarray(per_row, dtype=np.float64).copy()
        return targets

    iau_module.IAURun.resolve_targets = with_oracle
    try:
        yield
    finally:
        iau_module.IAURun.resolve_targets = resolve


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default=",".join(CLASSIFIERS + LMS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--cache-dir", type=Path, default=Path(__file__).resolve().parents[1] / "runs" / "removal_cache")
    ap.add_argument("--out", default="oracle_targets")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = [int(x) for x in a.seeds.split(",")]
    variants = a.variants.split(",")
    for v in variants:
        variant(v)
    rows: list[dict[str, Any]] = []
    for name in a.scenarios.split(","):
        if name not in CLASSIFIERS + LMS:
            raise SystemExit(f"--scenarios: {name!r} is not one of {', '.join(CLASSIFIERS + LMS)}")
        s = sc.build_scenario(name, 0, True, str(a.cache_dir))
        per_row = retrained_losses(s, a.cache_dir / name / "quick-seed0")
        if per_row.shape[0] < 2 or per_row.shape[1] != len(s.forget):
            raise SystemExit(f"{name}: cached retrains missing or stale; run benchmarks/removal.py --quick --scenarios {name}")
        golds = [retrained(s, k, a.cache_dir, print) for k in range(per_row.shape[0])]
        fl = floor(golds)
        original = grade([{"test": measure(s, s.original)}], golds, fl)
        ref = mean_metrics([g["test"] for g in golds])
        for v in variants:
            method, oracle = variant(v)
            with oracle_targets(per_row.mean(0)) if oracle else contextlib.nullcontext():
                runs = [unlearn(s, method, seed, None, None, False) for seed in seeds]
            bad = [r["error"] for r in runs if "error" in r]
            if bad:
                raise SystemExit(f"{name} {v}: {bad[0]}")
            g = grade(runs, golds, fl)
            row = {"scenario": name, "block": block(name), "variant": v, "floor": fl["gap"], "original_gap": original["gap"],
                   "retrain_forget_loss": fl.get("forget_loss"),
                   "retrained": {k: ref[k] for k in GAP_KEYS}, **{k: x for k, x in g.items() if k != "gaps"}}
            rows.append(row)
            print(f"{name:15s} {v:12s} gap {g['gap']:.3f} ± {g['gap_std']:.3f} ({g['x_floor']:.1f}× floor) forget "
                  f"{g['forget_metric']:.3f} test {g['test_metric']:.3f} mia {g['mia_auc']:.3f} loss "
                  f"{g.get('forget_loss', float('nan')):.2f} steps {g.get('steps', float('nan')):.1f}", flush=True)
    md = ["# IAU with oracle targets: how much of the gap is the targets, how much the update", "",
          f"Seeds {a.seeds}, data seed 0, quick sizes; test split; gap against the mean of the cached retrains (as "
          "`removal.py` grades). `oracle` = each forget row's target set to its mean loss under the retrains, the rest "
          f"of the request unchanged; `oracle+land` = the same with `unlearn_land=True`. {time.perf_counter() - t0:.0f} s.", "",
          "| scenario (block) | floor | original gap | variant | gap (× floor) | forget / test / MIA AUC (retrains) | forget loss (retrains; × spread) | KLoM p95 forget | steps | passes % retrain |",
          "|---|---:|---:|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        fl_ = f"{r['forget_loss']:.2f} ({r['retrain_forget_loss']:.2f}; {r['forget_loss_x_floor']:.1f}×)" if "forget_loss" in r else "—"
        gold = " / ".join(f"{r['retrained'][k]:.3f}" for k in GAP_KEYS)
        md.append(f"| {r['scenario']} ({r['block']}) | {r['floor']:.3f} | {r['original_gap']:.3f} | {r['variant']} | "
                  f"{r['gap']:.3f} ± {r['gap_std']:.3f} ({r['x_floor']:.1f}×) | {r['forget_metric']:.3f} / {r['test_metric']:.3f} / "
                  f"{r['mia_auc']:.3f} ({gold}) | {fl_} | {r['klom']['forget_p95']:.1f} | {r['steps']:.1f} | {r['passes_pct_of_retrain']:.1f} |")
    write_results(a.out, {"rows": rows, "seeds": seeds, "variants": variants}, md, quick=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
