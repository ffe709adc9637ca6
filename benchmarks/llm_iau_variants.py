"""IAU options on the LLM benchmark's TUNING authors (trained on, never graded), scored with the baselines' own
validation proxy: the KS distance between the tuning rows' truth ratios and the never-trained validation authors',
and the retain probability against the original model's (``llm_unlearning.tune``). No retain model is used.

    python benchmarks/llm_iau_variants.py [--split forget10] [--seeds 1 2] [--run-dir /tmp/llm_unlearning_quick]

Quick size of ``llm_unlearning.py`` (the original models are read from / written to its run folder).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llm_unlearning as L  # noqa: E402
from common import write_results  # noqa: E402

from hf_iau.fictitious_authors import FORGET_SPLITS  # noqa: E402
from hf_iau.metrics import llm as M  # noqa: E402

VARIANTS: dict[str, dict[str, Any] | None] = {
    "original": None,
    "default": {},
    "held_out_quantile targets": {"unlearn_targets": "held_out_quantile"},
    "mean_target stop": {"unlearn_stop": "mean_target"},
    "calibration by author": {"unlearn_target_group_column": "author"},
    "influence step alone": {"unlearn_steps": 1, "unlearn_stop": "fixed", "unlearn_learning_rate": 1e-12},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", default="forget10", choices=list(FORGET_SPLITS))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--run-dir", default="/tmp/llm_unlearning_quick")
    a = p.parse_args()
    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    b = L.Bench(L.SIZES["quick"], Path(a.run_dir), print)
    rows = []
    for seed in a.seeds:
        original, _, _ = L.cached_train(b, f"original_s{seed}", b.qa(b.raw_train), seed)
        tune_f, tune_r, retain_eval = L.tuning_split(b, a.split, seed)
        p0 = float(np.mean(M.answer_probability(b.stats(original, retain_eval)["loss"])))
        forget, retain = b.qa(tune_f), b.qa(tune_r)
        assert len(retain) == len(tune_r)  # one LM row per QA pair: the author column lines up
        retain = retain.add_column("author", tune_r["author"])  # read only by unlearn_target_group_column
        for name, opts in VARIANTS.items():
            model, r = (original, None) if opts is None else L.unlearn(b, original, "iau", seed, forget, retain, None, opts)
            proxy = L.tuning_proxy(b, model, tune_f, retain_eval, p0)
            row = {"seed": seed, "variant": name, "options": opts, "ks_to_unseen": proxy["ks_distance_to_unseen"],
                   "retain_probability_vs_original": proxy["retain_probability_vs_original"],
                   "tuning_rows_loss": float(np.mean(b.stats(model, tune_f)["loss"])),
                   "validation_authors_loss": float(np.mean(b.stats(model, b.raw_val)["loss"])),
                   "steps": r.metrics.get("steps", 0.0) if r else 0.0, "target_mean": r.metrics.get("target_mean") if r else None}
            rows.append(row)
            print(row, flush=True)
    md = [f"# IAU options on the tuning authors ({a.split}, seeds {a.seeds})", "",
          "Tuning authors: trained on, never graded (the baselines' learning rates are chosen on them). Proxy as in "
          "`llm_unlearning.tune`: KS distance between the tuning rows' truth ratios and the validation authors' "
          "(never trained); retain probability on retained rows, relative to the original model. Per seed.", "",
          "| variant | KS to unseen ↓ | retain probability vs original | tuning rows' loss | validation authors' loss | steps |",
          "|---|---|---|---|---|---|"]
    for name in VARIANTS:
        rs = [r for r in rows if r["variant"] == name]
        md.append(f"| {name} | " + " | ".join(" / ".join(f"{r[k]:.3f}" if k != "steps" else f"{r[k]:.0f}" for r in rs)
                                              for k in ("ks_to_unseen", "retain_probability_vs_original", "tuning_rows_loss",
                                                        "validation_authors_loss", "steps")) + " |")
    md += ["", f"Whole script: {time.perf_counter() - t0:.0f} s."]
    write_results(f"llm_iau_variants_{a.split}", {"rows": rows}, md, quick=False)


if __name__ == "__main__":
    main()
