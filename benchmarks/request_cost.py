"""Per-request cost of IAU unlearning as a share of retraining, and how it scales.

    python benchmarks/request_cost.py [--quick] [--seed 0] [--repeats 3]

Scenario: ``build_scenario("mislabelled")`` of benchmarks/scenarios.py — MNIST-5k (14×14), 5% of
the training digits given a wrong label, a small ResNet-CNN trained 15 epochs so that it fits
(memorises) most of the wrong labels; forget = the mislabelled points. The scaling curves use
training sets of other sizes built from the same data and model helpers (same pooling, same
held-out test / validation rows, same CNN and training recipe), with a chosen number of wrong
labels; the gold model of every configuration is retrained on its retain set in this run.

1. One request: DEFAULT IAU (``run_method("iau")``, no option) and reference-parity mode (one Adam
   step over the whole retain set, no saturation) as % of retraining's time and example-gradient
   passes, times = medians of ``--repeats`` interleaved runs (retrain included); gap to retrain
   after (``common.scenario_gap``, as methods_cost.py).
2. Scaling with |D_f| (fixed |D|) and with |D| (fixed |D_f|), each point its own training set with
   exactly |D_f| wrong labels (5% or less), its own original and retrained model: default IAU (retain
   sample 32) vs ``unlearn_retain_sample_size=None`` (whole retain set per step), one run each, back to back;
   gap to retrain before and after.
3. Ten sequential requests with default IAU, each forgetting a disjoint chunk of the mislabelled
   points; gap to the model retrained without all of them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios as sc  # noqa: E402
from common import RESULTS, fmt, scenario_gap, write_results  # noqa: E402

PARITY = {"unlearn_optimizer": "adam", "unlearn_steps": 1, "unlearn_forget_weight": 1.0, "unlearn_retain_weight": 1.0,
          "unlearn_retain_sample_size": None, "unlearn_targets": "none", "unlearn_stop": "fixed"}
WHOLE = {"unlearn_retain_sample_size": None}
EPOCHS = 15


def pool(seed: int):
    """The mislabelled scenario's data: 14×14 MNIST-5k, test 1000 / validation 500 rows, the rest a training pool."""
    from datasets import Dataset

    from hf_iau.offline_data import mnist5k

    data = mnist5k()
    x = np.asarray(data["pixel_values"], dtype=np.float32).reshape(-1, 1, 14, 2, 14, 2).mean(axis=(3, 5))
    data = Dataset.from_dict({"id": data["id"], "pixel_values": x, "label": data["label"]}, features=sc._small_features(data))
    te, va, tr = sc._split3(len(data), 1000, 500, len(data) - 1500, seed)
    return data, data.select(te), data.select(va), tr


def make_scenario(p, n: int, n_flip: int, seed: int, quick: bool) -> sc.Scenario:
    """|D| = n training rows of the pool, n_flip of them given a wrong label (= forget), model trained as in scenarios.py."""
    data, test, val, tr = p
    train = sc._with_ids(data.select(tr[:n]))
    rng = np.random.default_rng([seed, 5, n, n_flip])
    flip_order = rng.choice(n, size=n_flip, replace=False).tolist()  # forget order (prefixes = smaller requests)
    flip = set(flip_order)
    new = [int((y + rng.integers(1, 10)) % 10) if i in flip else int(y) for i, y in enumerate(train["label"])]
    train = train.remove_columns("label").add_column("label", new).cast(data.features)
    forget = train.select(flip_order)
    retain = train.select([i for i in range(n) if i not in flip])
    args = sc._args(tempfile.mkdtemp(prefix="hf_iau_rc_"), seed, num_train_epochs=EPOCHS, per_device_train_batch_size=64,
                    learning_rate=2e-3, weight_decay=0.0)
    model, secs, passes = sc._train(sc._cnn, args, train, None, None)
    s = sc.Scenario("mislabelled", seed, quick, model, args, train, forget, retain, val, test, sc._cnn,
                    train_seconds=secs, train_passes=passes)
    s.info["flip_order"] = flip_order
    return s


def retrain(s: sc.Scenario):
    from hf_iau.methods import run_method

    tr = s.trainer()
    res = run_method("retrain", tr, s.forget, s.retain, model_init=s.model_init)
    return tr.model.eval(), res.metrics


def iau(s: sc.Scenario, opts: dict, gold=None) -> dict:
    from hf_iau.methods import run_method

    tr = s.trainer()
    res = run_method("iau", tr, s.forget, s.retain, **opts)
    m = res.metrics
    row = {"seconds": m["wall_time_s"], "gradient_passes": m["example_gradient_passes"],
           "forward_passes": m.get("example_forward_passes", float("nan")), "steps": m.get("steps", float("nan"))}
    if gold is not None:
        row.update(scenario_gap(s, tr.model.eval(), gold))
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    q, seed = a.quick, a.seed
    repeats = a.repeats or (1 if q else 3)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:.0f}s] {msg}", flush=True)

    # ------------------------------------------------------------------ 1. one request
    s = sc.build_scenario("mislabelled", seed, q)
    gold, gold_m = retrain(s)
    before = scenario_gap(s, s.original, gold)
    log(f"{s.description}; gap before {before['gap_to_retrain']:.3f}")
    recipes = {"default IAU": {}, "reference parity (1 step, whole retain set)": PARITY}
    first = {name: iau(s, opts, gold) for name, opts in recipes.items()}
    times: dict[str, list[float]] = {n: [] for n in ["retrain", *recipes]}
    names = list(times)
    for r in range(repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            times[n].append(retrain(s)[1]["wall_time_s"] if n == "retrain" else iau(s, recipes[n])["seconds"])
    med = {n: statistics.median(v) for n, v in times.items()}
    rt_passes = gold_m["example_gradient_passes"]
    one = []
    for name in recipes:
        f = first[name]
        one.append({"recipe": name, **f, "median_seconds": med[name], "time_pct_of_retrain": 100 * med[name] / med["retrain"],
                    "passes_pct_of_retrain": 100 * f["gradient_passes"] / rt_passes})
    log("one request done")
    md = ["# Per-request cost of IAU vs retraining", "",
          f"Scenario `mislabelled` (benchmarks/scenarios.py, seed {seed}{', quick' if q else ''}): {s.description}. "
          f"The original model memorised its forget set: forget accuracy {before['forget_accuracy']:.3f} on the WRONG labels "
          f"(retrained: {before['retrained_forget_accuracy']:.3f}); gap to retrain before unlearning {before['gap_to_retrain']:.3f} "
          "(mean |Δ| of forget accuracy, test accuracy and loss-MIA AUC vs the retrained model, `common.scenario_gap`).", "",
          f"Retraining (same recipe on D_r) in this run: median {med['retrain']:.2f} s, {rt_passes:,.0f} example-gradient passes. "
          f"Times: medians of {repeats} interleaved run(s) of retrain and both IAU recipes, side by side.", "",
          "| recipe | steps | time % of retrain | gradient passes % of retrain | gap to retrain after | forget acc | test acc |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for r in one:
        md.append(f"| {r['recipe']} | {r['steps']:.0f} | {fmt(r['time_pct_of_retrain'])} % | {fmt(r['passes_pct_of_retrain'])} % | "
                  f"{fmt(r['gap_to_retrain'], 3)} | {fmt(r['forget_accuracy'], 3)} | {fmt(r['test_accuracy'], 3)} |")

    # ------------------------------------------------------------------ 2. scaling
    p = pool(seed)
    n_f, ks = (1200, [5, 20, 60]) if q else (3000, [5, 20, 75, 150])
    ns, k_d = ([120, 600, 1200], 6) if q else ([300, 800, 1500, 3000], 15)  # 10× the data end to end
    cache: dict[tuple[int, int], tuple] = {}

    def config(n: int, k: int):
        """A training set of n rows with exactly k wrong labels (= the request), its original and retrained models."""
        if (n, k) not in cache:
            t = make_scenario(p, n, k, seed, q)
            g, gm = retrain(t)
            cache[(n, k)] = (t, g, gm, scenario_gap(t, t.original, g))
        return cache[(n, k)]

    fscale, dscale = [], []
    for key, vals, rows in (("forget_size", ks, fscale), ("train_size", ns, dscale)):
        for v in vals:
            n, k = (n_f, v) if key == "forget_size" else (v, k_d)
            t, g, gm, b = config(n, k)
            for label, opts in (("default", {}), ("whole", WHOLE)):
                rows.append({"forget_size": k, "train_size": n, "recipe": label, "retrain_seconds": gm["wall_time_s"],
                             "retrain_passes": gm["example_gradient_passes"], "gap_before": b["gap_to_retrain"],
                             "forget_accuracy_before": b["forget_accuracy"], **iau(t, opts, g)})
            log(f"|D| = {n}, |D_f| = {k} done")

    def table(rows, key, title):
        out = ["", title, "",
               f"| {key[1]} | passes, default | passes, whole retain | time s, default | time s, whole retain | retrain s | "
               "default time % of retrain | steps default / whole | gap before → after default / whole | forget acc before → after default / whole |",
               "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for v in sorted({r[key[0]] for r in rows}):
            d, w = (next(r for r in rows if r[key[0]] == v and r["recipe"] == lab) for lab in ("default", "whole"))
            out.append(f"| {v} | {d['gradient_passes']:,.0f} | {w['gradient_passes']:,.0f} | {fmt(d['seconds'])} | {fmt(w['seconds'])} | "
                       f"{fmt(d['retrain_seconds'])} | {fmt(100 * d['seconds'] / d['retrain_seconds'])} % | {d['steps']:.0f} / {w['steps']:.0f} | "
                       f"{fmt(d['gap_before'], 3)} → {fmt(d['gap_to_retrain'], 3)} / {fmt(w['gap_to_retrain'], 3)} | "
                       f"{fmt(d['forget_accuracy_before'], 3)} → {fmt(d['forget_accuracy'], 3)} / {fmt(w['forget_accuracy'], 3)} |")
        return out

    md += table(fscale, ("forget_size", "|D_f|"),
                f"## Scaling with |D_f| (|D| = {n_f}; per row a training set with exactly |D_f| wrong labels, all of them forgotten)")
    md += ["", "Every row (both tables) is its own training set drawn from the same pool (the first |D| pool rows, then |D_f| "
           "of them given a wrong label), its own original model (15 epochs) and its own retrained model (same recipe on "
           "D \\ D_f, timed: 'retrain s'). Forget accuracy is on the wrong labels."]
    md += table(dscale, ("train_size", "|D|"), f"## Scaling with |D| (|D_f| = {k_d} wrong labels, the whole forget set)")
    ends = [r for r in dscale if r["recipe"] == "default" and r["train_size"] in (ns[0], ns[-1])]
    md += ["", f"{ns[-1] / ns[0]:.0f}× the data ({ns[0]} → {ns[-1]} rows): default request time × "
           f"{ends[1]['seconds'] / ends[0]['seconds']:.2f}, gradient passes × {ends[1]['gradient_passes'] / ends[0]['gradient_passes']:.2f} "
           f"(goal ≤ 1.2× time); retraining × {ends[1]['retrain_seconds'] / ends[0]['retrain_seconds']:.2f}."]
    # same model, same forget set, same work (20 steps): the whole retain set vs a tenth of it, interleaved
    from hf_iau.methods import run_method

    t, _, _, _ = config(ns[-1], k_d)
    tenth = t.retain.select(range(len(t.retain) // 10))
    fixed = {"unlearn_stop": "fixed"}
    same: dict[str, list[float]] = {"whole": [], "tenth": []}
    for r in range(max(repeats, 3)):
        for label in (["whole", "tenth"] if r % 2 == 0 else ["tenth", "whole"]):
            tr = t.trainer()
            res = run_method("iau", tr, t.forget, t.retain if label == "whole" else tenth, **fixed)
            same[label].append(res.metrics["wall_time_s"])
    sw, st = statistics.median(same["whole"]), statistics.median(same["tenth"])
    same_model = {"train_size": ns[-1], "retain_whole": len(t.retain), "retain_tenth": len(tenth),
                  "seconds_whole": same["whole"], "seconds_tenth": same["tenth"], "ratio": sw / st}
    md += ["", f"Same model and request at fixed work ({ns[-1]} rows, |D_f| = {k_d}, `unlearn_stop='fixed'`, 20 steps): "
           f"the whole retain set ({len(t.retain)} rows) vs its first tenth ({len(tenth)} rows) as `retain_dataset`, "
           f"medians of {len(same['whole'])} interleaved runs: {sw:.2f} s vs {st:.2f} s, **× {sw / st:.2f}** for 10× the retain "
           "set (the request's checks still hash the whole training set in both)."]
    log("same-model retain scaling done")
    md += ["", "Default IAU = retain sample 32 per step, `unlearn_targets='counterfactual'`, `unlearn_stop='targets'`, ≤ 20 steps; "
           "whole retain = the same with `unlearn_retain_sample_size=None`. One run each, back to back (timings noisy: shared cores)."]

    # ------------------------------------------------------------------ 3. ten sequential requests
    fo = list(range(len(s.forget)))
    chunks = np.array_split(np.asarray(fo), 10)
    forget_ids = s.forget["id"]
    id_to_row = {int(i): j for j, i in enumerate(s.train["id"])}
    tr = s.trainer()
    seq, gone = [], set()
    for i, ch in enumerate(chunks):
        rows = [id_to_row[int(forget_ids[int(c)])] for c in ch]
        gone.update(rows)
        res = run_method("iau", tr, s.train.select(rows), s.train.select([r for r in range(len(s.train)) if r not in gone]))
        g = scenario_gap(s, tr.model.eval(), gold)
        seq.append({"request": i + 1, "size": len(rows), "seconds": res.metrics["wall_time_s"],
                    "gradient_passes": res.metrics["example_gradient_passes"], "steps": res.metrics.get("steps", float("nan")), **g})
    log("sequential done")
    tot_p, tot_s = sum(r["gradient_passes"] for r in seq), sum(r["seconds"] for r in seq)
    md += ["", f"## 10 sequential requests (default IAU), disjoint chunks of the {len(s.forget)} mislabelled points", "",
           "Gap and forget accuracy are against the model retrained without ALL of them (reached only after the 10th request); "
           "forget accuracy is over all the mislabelled rows.", "",
           "| request | rows | steps | time s | gradient passes | forget acc (all) | test acc | gap to retrain |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in seq:
        md.append(f"| {r['request']} | {r['size']} | {r['steps']:.0f} | {fmt(r['seconds'])} | {r['gradient_passes']:,.0f} | "
                  f"{fmt(r['forget_accuracy'], 3)} | {fmt(r['test_accuracy'], 3)} | {fmt(r['gap_to_retrain'], 3)} |")
    md += ["", f"Ten requests together: {tot_p:,.0f} passes ({100 * tot_p / rt_passes:.1f}% of one retrain), {tot_s:.2f} s "
           f"(one retrain: {med['retrain']:.2f} s median); final gap {seq[-1]['gap_to_retrain']:.3f} vs one default request for "
           f"all {len(s.forget)}: {one[0]['gap_to_retrain']:.3f}."]
    md += ["", "Cost unit: an example-gradient pass = one example through forward + backward (IAU: |D_f| + |R_t| per step, "
           "including the last, discarded step; retrain: epochs × |D_r|). Forward-only passes are in the JSON, not the ratios."
           + (" **Quick run**: smaller sizes (scenario |D| = 1000, |D_f| scaling at |D| = 1200 with |D_f| ≤ 60, |D| up to 1200), 1 timing repeat."
              if q else ""),
           "", f"Plot: `request_cost{'.quick' if q else ''}.png`. Whole script: {time.perf_counter() - t0:.0f} s."]
    plot(fscale, dscale, k_d, n_f, q)
    write_results("request_cost", {"scenario": s.description, "seed": seed, "repeats": repeats, "original": before,
                                   "retrain": {"median_seconds": med["retrain"], "example_gradient_passes": rt_passes},
                                   "median_seconds": med, "per_request": one, "forget_scaling": fscale,
                                   "train_scaling": dscale, "same_model_retain_scaling": same_model,
                                   "sequential": seq}, md, q)


def plot(fscale, dscale, k_d, n_f, quick):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for label, style, name in (("default", "s--", "default IAU (retain sample 32)"), ("whole", "o-", "whole retain set")):
        f = [r for r in fscale if r["recipe"] == label]
        ax[0].plot([r["forget_size"] for r in f], [r["gradient_passes"] for r in f], style, label=name)
        d = [r for r in dscale if r["recipe"] == label]
        ax[1].plot([r["train_size"] for r in d], [r["gradient_passes"] for r in d], style, label=name)
    f = [r for r in fscale if r["recipe"] == "default"]
    ax[0].plot([r["forget_size"] for r in f], [r["retrain_passes"] for r in f], "k:", label="retrain")
    d = [r for r in dscale if r["recipe"] == "default"]
    ax[1].plot([r["train_size"] for r in d], [r["retrain_passes"] for r in d], "k:", label="retrain")
    for x, t in zip(ax, (f"|D_f| (|D| = {n_f})", f"|D| (|D_f| = {k_d})")):
        x.set_xscale("log"), x.set_yscale("log"), x.set_xlabel(t), x.set_ylabel("example-gradient passes"), x.legend()
    fig.suptitle("IAU request cost (mislabelled MNIST, ResNet-CNN)")
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / f"request_cost{'.quick' if quick else ''}.png", dpi=100)


if __name__ == "__main__":
    main()
