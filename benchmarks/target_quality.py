"""How close IAU's per-row targets are to the retrained models' losses, before any step.

    python benchmarks/target_quality.py [--scenarios mislabelled,poison_vision,...] [--variants default,nbr=1,flipt=1]
                                        [--seeds 0,1,2]

A target is IAU's estimate of a forget row's loss under the model retrained without the forget set. The removal
benchmark grades the model after the steps, and the steps overshoot or undershoot (``land_neighbour_decision.md``),
so a better target can give a worse gap and the other way round. This script grades the targets themselves.
It runs ``IAURun.resolve_targets`` only (no step; the weights are restored) for each unlearning seed, which draws the
calibration sample. It compares each row's target with that row's mean loss under the scenario's cached retrains
(``benchmarks/removal.py`` must have cached their weights: ``runs/removal_cache/<scenario>/quick-seed0``): the
per-example loss the targets are in (mean over the labelled tokens for LMs). The classifier-only variants run on
classifiers; LMs get the default.

Variants: ``default`` (the IAUConfig defaults) or ``key=value:...`` with the keys of ``removal.VARIANT_KEYS`` (for
example ``nbr=1``, ``flipt=1``). Reported per scenario and variant, means over seeds:
- the mean target against the retrains' mean forget loss;
- Spearman's ρ between the targets and the retrains' per-row losses;
- the mean absolute error;
- the share of rows below every retrain's loss (under-predicted) and above every retrain's (over-predicted).
Blocks as declared in ``removal_declaration.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios as sc  # noqa: E402
from common import write_results  # noqa: E402
from removal import VARIANT_KEYS, _batches  # noqa: E402

from hf_iau.methods import run_method  # noqa: E402
from hf_iau.methods import iau as iau_module  # noqa: E402

CLASSIFIERS = ("mislabelled", "poison_vision", "class_vision", "outlier_vision", "poison_text", "lora_text", "privacy")
LMS = ("topic_lm", "qa_lm", "canary", "wiki_lm")  # the classifier-only variants (nbr, flipt) leave their targets as they are


class _Targets(Exception):
    """Carries the targets out of a request stopped right after they were estimated (the request restores the weights)."""

    def __init__(self, targets: np.ndarray) -> None:
        super().__init__("targets estimated")
        self.targets = targets


def options(variant: str) -> dict[str, Any]:
    """IAU options of ``variant`` ('default' or 'key=value:...' with removal.VARIANT_KEYS)."""
    if variant == "default":
        return {}
    out = {}
    for part in variant.split(":"):
        key, value = part.split("=")
        name, kind = VARIANT_KEYS[key]
        out[name] = kind(value)
    return out


def targets_of(s: sc.Scenario, seed: int, variant: str) -> np.ndarray:
    """IAU's per-row targets of the scenario's forget set at unlearning seed ``seed`` (no step is taken)."""
    resolve = iau_module.IAURun.resolve_targets

    def stop_after(run):  # noqa: ANN001, ANN202
        raise _Targets(np.array(resolve(run).targets, dtype=np.float64))

    iau_module.IAURun.resolve_targets = stop_after
    try:
        run_method("iau", s.trainer(seed=seed, data_seed=seed), s.forget, s.retain, allow_noop=True, **options(variant))
    except _Targets as found:
        return found.targets
    finally:
        iau_module.IAURun.resolve_targets = resolve
    raise RuntimeError(f"{s.name}: the request ended without estimating targets")


def retrained_losses(s: sc.Scenario, cache: Path) -> np.ndarray:
    """[retrains, forget rows] per-row loss (mean over labelled tokens for LMs) of each cached retrain of ``s``."""
    import copy

    from safetensors.torch import load_model

    from hf_iau.losses import batch_losses

    out = []
    for path in sorted(cache.glob("retrain*.safetensors")):
        model = copy.deepcopy(s.original)
        load_model(model, str(path))
        model.eval()
        with torch.no_grad():
            out.append(np.concatenate([batch_losses(model, b).per_example.double().numpy()
                                       for b in _batches(s, s.forget, list(range(len(s.forget))))]))
    return np.asarray(out)


def grade(targets: np.ndarray, retrained: np.ndarray) -> dict[str, float]:
    """How ``targets`` [rows] sit against the retrains' per-row losses [retrains, rows]."""
    mean = retrained.mean(0)
    return {"target_mean": float(targets.mean()), "retrain_mean": float(mean.mean()),
            "spearman": float(spearmanr(targets, mean).statistic) if len(targets) > 2 else float("nan"),
            "mae": float(np.abs(targets - mean).mean()),
            "under": float((targets < retrained.min(0)).mean()), "over": float((targets > retrained.max(0)).mean())}


def block(name: str) -> str:
    return "tune" if name in sc.TUNE else "held-out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default=",".join(CLASSIFIERS + LMS))
    ap.add_argument("--variants", default="default,nbr=1,flipt=1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--cache-dir", default=str(Path(__file__).resolve().parents[1] / "runs" / "removal_cache"))
    ap.add_argument("--out", default="target_quality")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = [int(x) for x in a.seeds.split(",")]
    variants = a.variants.split(",")
    rows = []
    for name in a.scenarios.split(","):
        if name not in CLASSIFIERS + LMS:
            raise SystemExit(f"--scenarios: {name!r} is not one of {', '.join(CLASSIFIERS + LMS)}")
        s = sc.build_scenario(name, 0, True, a.cache_dir)
        retrained = retrained_losses(s, Path(a.cache_dir) / name / "quick-seed0")
        if retrained.shape[0] < 2 or retrained.shape[1] != len(s.forget):
            raise SystemExit(f"{name}: cached retrains missing or stale; run benchmarks/removal.py --quick --scenarios {name}")
        for v in (variants if name in CLASSIFIERS else ["default"]):
            graded = [grade(targets_of(s, seed, v), retrained) for seed in seeds]
            row = {"scenario": name, "block": block(name), "variant": v,
                   **{k: float(np.mean([g[k] for g in graded])) for k in graded[0]},
                   "spearman_std": float(np.std([g["spearman"] for g in graded]))}
            rows.append(row)
            print({k: (round(x, 3) if isinstance(x, float) else x) for k, x in row.items()}, flush=True)
    md = ["# IAU's per-row targets against the retrained models' losses, before any step", "",
          f"Seeds {a.seeds} (each draws its own calibration sample), data seed 0, quick sizes; retrains: the removal "
          "benchmark's cached 3. A row's retrained loss is the mean over the retrains; under / over = the share of rows "
          f"whose target lies below / above every retrain's loss. {time.perf_counter() - t0:.0f} s.", "",
          "| scenario (block) | variant | mean target | retrains' mean | Spearman ρ (± over seeds) | MAE | under | over |",
          "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['scenario']} ({r['block']}) | {r['variant']} | {r['target_mean']:.2f} | {r['retrain_mean']:.2f} | "
                  + (f"{r['spearman']:.2f} ± {r['spearman_std']:.2f}" if np.isfinite(r["spearman"]) else "— (every target equal)")
                  + f" | {r['mae']:.2f} | {r['under']:.2f} | {r['over']:.2f} |")
    write_results(a.out, {"rows": rows, "seeds": seeds, "variants": variants}, md, quick=False)


if __name__ == "__main__":
    main()
