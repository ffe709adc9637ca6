"""Per-request cost of IAU unlearning as a share of retraining, and how it scales.

    python benchmarks/request_cost.py [--quick]

Scenario: tiny ViT on mislabelled sklearn digits (benchmarks/common.py), trained with
finite-difference GR (α = 0.005); the gold model is retrained on the retain set with the same
recipe, timed in the same run. Unlearning = one IAU request (Adam, one step, lr 3e-3), either
over the whole retain set (`retain_sample_size=None`, reference parity) or a bounded retain
sample (`retain_sample_size=256`). Times: median of 3 requests, the weights restored in between.
Retraining cost for other |D| (scaling curve) = example-gradient passes of the recipe
(epochs × |D_r| × 2 with GR) and time = those passes × the seconds per pass measured when
retraining here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, digits_data, fmt, gap_to_retrain, restore, snapshot, train_digits, write_results  # noqa: E402

SAMPLE = 256


def unlearn_cost(trainer, forget, retain, state, sample, repeats=3):
    trainer.args.retain_sample_size = sample
    times, res = [], None
    for _ in range(repeats):
        restore(trainer.model, state)
        res = trainer.unlearn(forget, retain)
        times.append(res.metrics["wall_time_s"])
    return statistics.median(times), res.metrics["example_gradient_passes"], res.metrics["example_forward_passes"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    q = a.quick
    n_train, n_forget, epochs = (400, 10, 2) if q else (1397, 40, 6)
    data = digits_data(n_train, n_forget)
    gr = {"gr_alpha": 0.005}
    trainer = train_digits(data, epochs, **gr)
    trainer.args.unlearn_learning_rate = 3e-3
    trainer.args.unlearn_batch_size = 256
    gold = train_digits(data, epochs, on="retain", **gr)
    retrain_s, retrain_passes = gold.train_seconds, gold.train_passes
    s_per_pass = retrain_s / retrain_passes
    state = snapshot(trainer.model)
    out, md = {"retrain": {"seconds": retrain_s, "example_gradient_passes": retrain_passes}}, []

    # 1. one request, per recipe
    rows = []
    for name, sample in (("reference parity (whole retain set)", None), (f"retain_sample_size={SAMPLE}", SAMPLE)):
        t, gp, fp = unlearn_cost(trainer, data.forget, data.retain, state, sample)
        gap = gap_to_retrain(trainer.model, gold.model, data)["gap_to_retrain"]
        rows.append({"recipe": name, "seconds": t, "gradient_passes": gp, "forward_passes": fp,
                     "time_pct_of_retrain": 100 * t / retrain_s, "passes_pct_of_retrain": 100 * gp / retrain_passes,
                     "gap_after": gap})
    restore(trainer.model, state)
    gap0 = gap_to_retrain(trainer.model, gold.model, data)["gap_to_retrain"]
    out["per_request"] = {"gap_before": gap0, "rows": rows}
    md += ["# Per-request cost of IAU vs retraining", "",
           f"Tiny ViT (mislabelled digits, |D| = {n_train}, |D_f| = {n_forget}, {epochs} epochs with FD GR); retraining "
           f"measured in this run: {retrain_s:.1f} s, {retrain_passes:,.0f} example-gradient passes. Gap to retrain before "
           f"unlearning: {gap0:.3f}. The scenarios of benchmarks/scenarios.py were not committed when this ran.", "",
           "| recipe | time % of retrain | gradient passes % of retrain | gap to retrain after |", "|---|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['recipe']} | {fmt(r['time_pct_of_retrain'])} % | {fmt(r['passes_pct_of_retrain'])} % | {fmt(r['gap_after'], 3)} |")

    # 2. scaling with |D_f| at fixed |D|
    ks = [1, 10, 100] if q else [1, 10, 100, 1000]
    fscale = []
    for k in ks:
        forget, retain = data.train.select(range(k)), data.train.select(range(k, n_train))
        for sample in (None, SAMPLE):
            t, gp, _ = unlearn_cost(trainer, forget, retain, state, sample, repeats=1 if q else 3)
            fscale.append({"forget_size": k, "retain_sample_size": sample, "seconds": t, "gradient_passes": gp,
                           "time_pct_of_retrain": 100 * t / (s_per_pass * epochs * 2 * (n_train - k))})
    # 3. scaling with |D| at fixed |D_f|
    ns = [100, 200, 400] if q else [200, 400, 800, 1397]
    kf = 10
    dscale = []
    for n in ns:
        forget, retain = data.train.select(range(kf)), data.train.select(range(kf, n))
        for sample in (None, SAMPLE):
            t, gp, _ = unlearn_cost(trainer, forget, retain, state, sample, repeats=1 if q else 3)
            retrain_est = s_per_pass * epochs * 2 * (n - kf)
            dscale.append({"train_size": n, "retain_sample_size": sample, "seconds": t, "gradient_passes": gp,
                           "retrain_passes": epochs * 2 * (n - kf), "time_pct_of_retrain": 100 * t / retrain_est})
    out["forget_scaling"], out["train_scaling"] = fscale, dscale
    md += ["", f"## Scaling with |D_f| (|D| = {n_train})", "",
           "| |D_f| | passes, whole retain | passes, sample 256 | time s, whole retain | time s, sample 256 |", "|---:|---:|---:|---:|---:|"]
    for k in ks:
        a_, b_ = [r for r in fscale if r["forget_size"] == k]
        md.append(f"| {k} | {a_['gradient_passes']:,.0f} | {b_['gradient_passes']:,.0f} | {fmt(a_['seconds'])} | {fmt(b_['seconds'])} |")
    md += ["", f"## Scaling with |D| (|D_f| = {kf})", "",
           "| |D| | passes, whole retain | passes, sample 256 | time % of retrain, whole | time % of retrain, sample 256 |", "|---:|---:|---:|---:|---:|"]
    for n in ns:
        a_, b_ = [r for r in dscale if r["train_size"] == n]
        md.append(f"| {n} | {a_['gradient_passes']:,.0f} | {b_['gradient_passes']:,.0f} | {fmt(a_['time_pct_of_retrain'])} % | {fmt(b_['time_pct_of_retrain'])} % |")

    # 4. ten sequential requests (bounded retain sample)
    restore(trainer.model, state)
    trainer.args.retain_sample_size = SAMPLE
    per = max(1, n_forget // 10)
    seq = []
    for i in range(10):
        f = data.train.select(range(i * per, (i + 1) * per))
        r = data.train.select(range((i + 1) * per, n_train))
        res = trainer.unlearn(f, r)
        g = gap_to_retrain(trainer.model, gold.model, data)
        seq.append({"request": i + 1, "seconds": res.metrics["wall_time_s"], "gradient_passes": res.metrics["example_gradient_passes"],
                    "test_accuracy": g["test_accuracy"], "forget_accuracy_all": g["forget_accuracy"], "gap_to_retrain": g["gap_to_retrain"]})
    out["sequential"] = seq
    md += ["", f"## 10 sequential requests of {per} examples (retain_sample_size={SAMPLE})", "",
           "Gap to the model retrained without the whole forget set (reached after the 10th request).", "",
           "| request | time s | gradient passes | test acc | forget acc (all 10 requests' rows) | gap to retrain |", "|---:|---:|---:|---:|---:|---:|"]
    for s in seq:
        md.append(f"| {s['request']} | {fmt(s['seconds'])} | {s['gradient_passes']:,.0f} | {fmt(s['test_accuracy'], 3)} | "
                  f"{fmt(s['forget_accuracy_all'], 3)} | {fmt(s['gap_to_retrain'], 3)} |")
    md += ["", "Goal: cost grows with |D_f|, not |D| (bounded retain sample) at unchanged fidelity. Plot: "
           f"`request_cost{'.quick' if q else ''}.png`."]
    plot(fscale, dscale, q)
    write_results("request_cost", out, md, q)


def plot(fscale, dscale, quick):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for sample, style in ((None, "o-"), (SAMPLE, "s--")):
        lab = "whole retain set" if sample is None else f"retain sample {SAMPLE}"
        f = [r for r in fscale if r["retain_sample_size"] == sample]
        ax[0].plot([r["forget_size"] for r in f], [r["gradient_passes"] for r in f], style, label=lab)
        d = [r for r in dscale if r["retain_sample_size"] == sample]
        ax[1].plot([r["train_size"] for r in d], [r["gradient_passes"] for r in d], style, label=lab)
    d = [r for r in dscale if r["retain_sample_size"] is None]
    ax[1].plot([r["train_size"] for r in d], [r["retrain_passes"] for r in d], "k:", label="retrain")
    for x, t in zip(ax, ("|D_f| (|D| fixed)", "|D| (|D_f| = 10)")):
        x.set_xscale("log"), x.set_yscale("log"), x.set_xlabel(t), x.set_ylabel("example-gradient passes"), x.legend()
    fig.suptitle("IAU request cost (tiny ViT, digits)")
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / f"request_cost{'.quick' if quick else ''}.png", dpi=100)


if __name__ == "__main__":
    main()
