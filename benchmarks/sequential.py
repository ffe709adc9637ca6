"""Ten sequential deletion requests on one model (MUSE's "sustainability"), through the public API.

    nice -n 10 python benchmarks/sequential.py [--quick] [--seed 0] [--scenarios mislabelled canary]

Per scenario (benchmarks/scenarios.py ``build_scenario``): the original model, then 10 requests,
each forgetting NEW rows (about 1% of the training set), each one
``IAUTrainer(model=<folder saved after the previous request>, train_dataset=train).unlearn(forget)``
with ``retain_dataset=None`` (default IAU settings), then ``save_model()``: every request after the
first starts from a reloaded folder, so retain = train − every row deleted so far comes from the
saved deletion record (``deleted_rows.json``), never from the benchmark. The retain size of each
request is checked against train − all deleted rows.

* ``mislabelled`` (MNIST-5k 14×14, 5% wrong labels, ResNet-CNN): request i forgets 1% of |D|:
  half of it mislabelled (memorised) digits, the rest random clean digits (|D| = 1500: 7 + 8 rows;
  ``--quick``, |D| = 1000: 5 + 5).
* ``canary`` (Lee corpus + 5 canary secrets × 4 copies, GPT-2 2L/96d, |D| = 240): odd requests
  forget every copy of one secret (4 rows ≈ 1.7%; deleting only some copies would leave the secret
  in the retrained model), even requests 3 random normal documents (1.25%).

After requests 1, 5 and 10 (three retrains per scenario instead of ten, to fit the shared CPU) a
gold model is retrained with the scenario's recipe (``run_method("retrain")``, ``model_init``) on
train − every row deleted so far; gap = ``evaluate_unlearning``'s gap_to_retrain (mean |Δ| of forget
accuracy, test accuracy and loss-MIA AUC, forget = all rows deleted so far) and utility (test
accuracy; LM: test perplexity) relative to that model. Cost = example-gradient passes (and wall time)
of the 10 requests together vs one retrain in the same run. Goal (issue 11): gap ≤ 0.05 after the
10th request, utility within 2% of the retrained model, total cost ≤ 25% of one retrain.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scenarios as sc  # noqa: E402
from common import RESULTS, fmt, write_results  # noqa: E402

REQUESTS = 10
GOLD_AT = (1, 5, 10)
GOALS = {"gap": 0.05, "utility_rel": 0.02, "cost_pct": 25.0}


def plan(s: sc.Scenario, seed: int) -> list[list[int]]:
    """Row indices of the 10 requests: new rows each time, memorised rows (mislabelled / canary) first in each."""
    rng = np.random.default_rng([seed, 23])
    ids = s.train["id"]
    row_of = {v: i for i, v in enumerate(ids)}
    special = [row_of[v] for v in s.forget["id"]]  # mislabelled digits / canary copies
    others = [i for i in range(len(ids)) if i not in set(special)]
    rng.shuffle(others)
    if s.name == "canary":
        # odd requests: every copy of one secret (4 rows ≈ 1.7%), even requests: 3 normal documents (1.25%)
        groups: dict[tuple, list[int]] = {}
        for v, t in zip(s.forget["id"], s.forget["input_ids"]):
            groups.setdefault(tuple(t), []).append(row_of[v])
        secrets = list(groups.values())
        out, o = [], 0
        for k in range(REQUESTS):
            if k % 2 == 0 and secrets:
                out.append(secrets.pop(0))
            else:
                out.append(others[o:o + 3])
                o += 3
        return out
    else:  # 1% of |D| per request, half of it (at most |forget| / 10) memorised rows
        rng.shuffle(special)
        k = max(2, round(0.01 * len(ids)))
        per_special = min(len(special) // REQUESTS, k // 2)
        per_other = k - per_special
    return [special[i * per_special:(i + 1) * per_special] + others[i * per_other:(i + 1) * per_other] for i in range(REQUESTS)]


def evaluate(s: sc.Scenario, model, gold, deleted: list[int]) -> dict[str, float]:
    from hf_iau.report import evaluate_unlearning

    gone = set(deleted)
    forget = s.train.select(sorted(gone))
    retain = s.train.select([i for i in range(len(s.train)) if i not in gone])
    rep = evaluate_unlearning(model, original=s.original if gold is not None else None, retrained=gold, forget=forget, retain=retain, test=s.test,
                              data_collator=s.data_collator, tokenizer=s.tokenizer, mia=("loss",), batch_size=64,
                              seed=s.seed, max_examples=1000)
    m = rep.metrics
    out = {"forget_accuracy": m["unlearned/forget_accuracy"], "test_accuracy": m["unlearned/test_accuracy"],
           "mia_auc": m["unlearned/mia_loss_auc"], "test_loss": m["unlearned/test_loss"]}
    if gold is not None:
        out.update({"gap_to_retrain": m["gap_to_retrain"], "retrained_forget_accuracy": m["retrained/forget_accuracy"],
                    "retrained_test_accuracy": m["retrained/test_accuracy"], "retrained_test_loss": m["retrained/test_loss"],
                    "retrained_mia_auc": m["retrained/mia_loss_auc"], "original_test_accuracy": m["original/test_accuracy"],
                    "original_test_loss": m["original/test_loss"]})
    return out


def retrain(s: sc.Scenario, deleted: list[int]) -> tuple[Any, dict[str, float]]:
    from hf_iau.methods import run_method

    gone = set(deleted)
    tr = s.trainer()
    forget = s.train.select(sorted(gone))
    retain = s.train.select([i for i in range(len(s.train)) if i not in gone])
    res = run_method("retrain", tr, forget, retain, model_init=s.model_init)
    return tr.model.eval(), res.metrics


def utility(s: sc.Scenario, row: dict[str, float], who: str = "") -> tuple[str, float, float | None]:
    """(name, value, relative difference to the retrained model: accuracy drop / perplexity rise) of the
    unlearned model (``who=""``) or the original one (``who="original_"``)."""
    if s.name == "canary":
        ppl = math.exp(row[f"{who}test_loss"])
        ref = math.exp(row["retrained_test_loss"]) if "retrained_test_loss" in row else None
        return "test perplexity", ppl, (ppl / ref - 1.0) if ref else None
    ref = row.get("retrained_test_accuracy")
    return "test accuracy", row[f"{who}test_accuracy"], (1.0 - row[f"{who}test_accuracy"] / ref) if ref else None


def run(name: str, seed: int, quick: bool, root: Path, log) -> dict[str, Any]:
    from hf_iau import IAUTrainer

    s = sc.build_scenario(name, seed, quick, str(root / f"{name}-train"))
    log(f"{name}: {s.description}; trained in {s.train_seconds:.1f} s")
    requests = plan(s, seed)
    n = len(s.train)
    folder = root / f"{name}-original"
    base = s.trainer(output_dir=str(folder))
    base.save_model()  # request 1 also starts from a folder
    rows, deleted, golds = [], [], {}
    before = evaluate(s, s.original, None, [r for req in requests for r in req])  # on the rows of all 10 requests
    for k, req in enumerate(requests, start=1):
        deleted += req
        args = copy.deepcopy(s.args)
        args.output_dir = str(root / f"{name}-req{k}")
        t0 = time.perf_counter()
        trainer = IAUTrainer(model=str(folder), args=args, train_dataset=s.train, eval_dataset=s.validation,
                             data_collator=s.data_collator, processing_class=s.tokenizer)
        load_s = time.perf_counter() - t0
        # retain_dataset=None: the folder's deletion record. allow_noop: a request whose rows already sit at their
        # targets (e.g. a canary copy an earlier request removed) must still be recorded, or later retain sets keep it
        res = trainer.unlearn(s.train.select(req), allow_noop=True)
        assert res.retain_size == n - len(deleted), (res.retain_size, n - len(deleted))
        t0 = time.perf_counter()
        trainer.save_model()
        save_s = time.perf_counter() - t0
        folder = Path(args.output_dir)
        m = res.metrics
        gold = None
        if k in GOLD_AT:
            gold, gm = retrain(s, deleted)
            golds[k] = {"seconds": gm["wall_time_s"], "gradient_passes": gm["example_gradient_passes"]}
        ev = evaluate(s, trainer.model.eval(), gold, deleted)
        row = {"request": k, "rows": len(req), "deleted_so_far": len(deleted), "retain_size": res.retain_size,
               "steps": m.get("steps", float("nan")), "seconds": m["wall_time_s"], "load_seconds": load_s,
               "save_seconds": save_s, "gradient_passes": m["example_gradient_passes"],
               "forward_passes": m.get("example_forward_passes", 0.0), **ev}
        uname, uval, urel = utility(s, row)
        row.update({"utility": uval, "utility_rel_to_retrain": urel})
        if gold is not None:
            row["original_utility_rel_to_retrain"] = utility(s, row, "original_")[2]
        rows.append(row)
        log(f"{name} request {k}: {res.retain_size} retained, {row['steps']:.0f} steps, forget acc {ev['forget_accuracy']:.3f}"
            + (f", gap {ev['gap_to_retrain']:.3f}, {uname} {uval:.3f} ({100 * urel:+.2f}% vs retrain)" if gold is not None else ""))
        del trainer
    rt_passes = float(np.mean([g["gradient_passes"] for g in golds.values()]))
    rt_seconds = float(np.mean([g["seconds"] for g in golds.values()]))
    tot_p = sum(r["gradient_passes"] for r in rows)
    tot_f = sum(r["forward_passes"] for r in rows)
    tot_s = sum(r["seconds"] for r in rows)
    last = rows[-1]
    summary = {
        "final_gap": last["gap_to_retrain"], "final_utility_rel": last["utility_rel_to_retrain"],
        "total_gradient_passes": tot_p, "total_forward_passes": tot_f, "total_seconds": tot_s,
        "retrain_gradient_passes": rt_passes, "retrain_seconds": rt_seconds,
        "cost_pct_passes": 100 * tot_p / rt_passes, "cost_pct_seconds": 100 * tot_s / rt_seconds,
    }
    summary["goal_gap"] = summary["final_gap"] <= GOALS["gap"]
    summary["goal_utility"] = abs(summary["final_utility_rel"]) <= GOALS["utility_rel"] if s.name != "canary" else \
        summary["final_utility_rel"] <= GOALS["utility_rel"]
    summary["goal_cost"] = summary["cost_pct_passes"] <= GOALS["cost_pct"]
    return {"scenario": name, "description": s.description, "train_size": n, "utility_name": utility(s, last)[0],
            "original": before, "requests": rows, "retrains": golds, "summary": summary,
            "train_seconds": s.train_seconds}


def markdown(results: list[dict[str, Any]], seed: int, quick: bool, total: float) -> list[str]:
    md = ["# Ten sequential deletion requests on one model", "",
          "Each request reloads the folder saved after the previous one (`IAUTrainer(model=folder)`), calls "
          "`unlearn(forget)` with `retain_dataset=None` (default IAU settings) and `save_model()`: the retain set of "
          "request k is train − every row deleted by requests 1..k, taken from the saved deletion record "
          "(checked: retain size = |D| − rows deleted so far, at every request). Gold models are retrained "
          f"(scenario recipe, `run_method('retrain')`) after requests {', '.join(map(str, GOLD_AT))} only "
          "(three retrains instead of ten, to fit the shared CPU), so gap and utility-vs-retrain exist at those requests.",
          "", f"Seed {seed}{', quick' if quick else ''}. Goals (issue 11): gap ≤ {GOALS['gap']} after request 10, "
          f"utility within {100 * GOALS['utility_rel']:.0f}% of the retrained model, all 10 requests ≤ "
          f"{GOALS['cost_pct']:.0f}% of one retrain (example-gradient passes).", ""]
    md += ["| scenario | gap after req 1 / 5 / 10 | gap goal | utility vs retrain after req 10 (original model) | utility goal | "
           "10 requests: % of one retrain (passes) | (wall time) | cost goal |",
           "|---|---|:-:|---|:-:|---:|---:|:-:|"]
    for r in results:
        sm = r["summary"]
        gaps = " / ".join(fmt(x["gap_to_retrain"], 3) for x in r["requests"] if "gap_to_retrain" in x)
        yn = lambda b: "met" if b else "**missed**"  # noqa: E731
        md.append(f"| {r['scenario']} | {gaps} | {yn(sm['goal_gap'])} | {r['utility_name']} "
                  f"{fmt(r['requests'][-1]['utility'], 3)} ({100 * sm['final_utility_rel']:+.2f}%; original "
                  f"{100 * r['requests'][-1]['original_utility_rel_to_retrain']:+.2f}%) | {yn(sm['goal_utility'])} | "
                  f"{fmt(sm['cost_pct_passes'], 1)} % | {fmt(sm['cost_pct_seconds'], 1)} % | {yn(sm['goal_cost'])} |")
    for r in results:
        o = r["original"]
        md += ["", f"## {r['scenario']}", "", f"{r['description']}. |D| = {r['train_size']}. Original model: forget accuracy "
               f"{fmt(o['forget_accuracy'], 3)} (on the rows of all 10 requests: see per-request rows), test accuracy "
               f"{fmt(o['test_accuracy'], 3)}.", "",
               f"| request | rows | deleted so far | retain size | steps | time s | gradient passes | forget acc (all deleted) | "
               f"retrained forget acc | test acc | {r['utility_name']} | vs retrain (original model) | MIA AUC | retrained MIA AUC | gap to retrain |",
               "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for x in r["requests"]:
            g = "gap_to_retrain" in x
            rel = f"{100 * x['utility_rel_to_retrain']:+.2f}% ({100 * x['original_utility_rel_to_retrain']:+.2f}%)" if g else "–"
            md.append(f"| {x['request']} | {x['rows']} | {x['deleted_so_far']} | {x['retain_size']} | {x['steps']:.0f} | "
                      f"{fmt(x['seconds'])} | {x['gradient_passes']:,.0f} | {fmt(x['forget_accuracy'], 3)} | "
                      f"{fmt(x['retrained_forget_accuracy'], 3) if g else '–'} | {fmt(x['test_accuracy'], 3)} | "
                      f"{fmt(x['utility'], 3)} | {rel} | "
                      f"{fmt(x['mia_auc'], 3)} | {fmt(x['retrained_mia_auc'], 3) if g else '–'} | "
                      f"{fmt(x['gap_to_retrain'], 3) if g else '–'} |")
        sm = r["summary"]
        md += ["", f"Ten requests: {sm['total_gradient_passes']:,.0f} example-gradient passes "
               f"(+ {sm['total_forward_passes']:,.0f} forward-only) vs {sm['retrain_gradient_passes']:,.0f} for one retrain "
               f"(mean of the {len(r['retrains'])} retrains) = {fmt(sm['cost_pct_passes'], 1)} %; wall time of the 10 `unlearn()` "
               f"calls {fmt(sm['total_seconds'])} s vs {fmt(sm['retrain_seconds'])} s per retrain = {fmt(sm['cost_pct_seconds'], 1)} % "
               "(load/save of the folder not included: see load_seconds / save_seconds in the JSON)."]
    md += ["", "Utility vs retrain: relative test-accuracy drop (MNIST) or relative test-perplexity rise (LM) of the "
           "unlearned model vs the model retrained without all rows deleted so far; in parentheses the same for the "
           "original (never unlearned) model, i.e. how far apart the two training runs are before any unlearning. Forget accuracy of the LM = "
           "next-token accuracy on the deleted rows.",
           "", f"Plot: `sequential{'.quick' if quick else ''}.png`. Whole script: {total:.0f} s on the shared CPU."]
    return md


def plot(results: list[dict[str, Any]], quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for r in results:
        reqs = r["requests"]
        ks = [x["request"] for x in reqs if "gap_to_retrain" in x]
        ax[0].plot(ks, [x["gap_to_retrain"] for x in reqs if "gap_to_retrain" in x], "o-", label=r["scenario"])
        ax[1].plot(ks, [100 * x["utility_rel_to_retrain"] for x in reqs if "gap_to_retrain" in x], "o-", label=r["scenario"])
        cum = np.cumsum([x["gradient_passes"] for x in reqs]) / r["summary"]["retrain_gradient_passes"] * 100
        ax[2].plot([x["request"] for x in reqs], cum, "o-", label=r["scenario"])
    ax[0].axhline(GOALS["gap"], ls="--", c="gray")
    ax[0].set(title="gap to retrain (all rows deleted so far)", xlabel="request")
    ax[1].axhline(100 * GOALS["utility_rel"], ls="--", c="gray")
    ax[1].axhline(-100 * GOALS["utility_rel"], ls="--", c="gray")
    ax[1].set(title="utility vs retrain (% worse)", xlabel="request")
    ax[2].axhline(GOALS["cost_pct"], ls="--", c="gray")
    ax[2].set(title="cumulative cost, % of one retrain", xlabel="request")
    for a in ax:
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / f"sequential{'.quick' if quick else ''}.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller mislabelled training set (1000 digits)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenarios", nargs="+", default=["mislabelled", "canary"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="hf_iau_seq_"))
    os.environ["HF_IAU_KEY_FILE"] = str(root / "fingerprint.key")  # a key of this run only
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:.0f}s] {msg}", flush=True)

    results = [run(name, a.seed, a.quick, root, log) for name in a.scenarios]
    total = time.perf_counter() - t0
    plot(results, a.quick)
    write_results("sequential", {"seed": a.seed, "goals": GOALS, "gold_at": list(GOLD_AT), "scenarios": results},
                  markdown(results, a.seed, a.quick, total), a.quick)


if __name__ == "__main__":
    main()
