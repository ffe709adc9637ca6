"""LLM unlearning on invented authors (TOFU-like, offline): IAU against the LLM baselines and retraining.

    nice -n 10 python benchmarks/llm_unlearning.py --quick                  # 2 CPU cores, ≤ 30 min
    nice -n 10 python benchmarks/llm_unlearning.py --quick --splits forget10
    python benchmarks/llm_unlearning.py                                     # 200 authors, ≈30M params (meant for a GPU)

Data (``hf_iau.fictitious_authors``): N training authors (quick 100, full 200) plus N/10 validation
authors (IAU's held-out reference, never graded) and N/10 holdout authors (PrivLeak's non-members),
10 QA pairs each, with a paraphrased and 3 perturbed answers. Forget splits forget01/05/10 = 1/5/10%
of the training authors (by author), seeded per seed.

Models: a Llama-architecture model from config with a byte-level BPE tokenizer trained here,
pretrained on gensim's Lee news corpus (so "world facts" — continuations of that corpus — measure
utility), then fine-tuned on every training author's QA (prompts masked: loss on answers only).
The retain model is the same fine-tune without the forget authors (the gold standard).

Per (split, seed): IAU default, IAU+LoRA (a fresh rank-8 adapter, IAU defaults), and the baselines
gradient ascent, gradient difference, NPO, SimNPO, RMU, each run at IAU default's example-gradient
budget (equal passes). Graded against the retain model with hf_iau.metrics.llm:
forget quality = KS p-value of forget-set truth ratios (model vs retain model), model utility =
harmonic mean of retain-set probability / ROUGE-L / truth-ratio score and world-facts option
probability / ROUGE-L (reported relative to the retain model's), forget ROUGE-L recall, PrivLeak
(loss attack, forget vs holdout authors, relative to the retain model's AUC), passes and time as %
of the retain model's fine-tuning. Writes benchmarks/results/llm_unlearning.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import write_results  # noqa: E402
import datasets  # noqa: E402

from hf_iau import IAUConfig, IAUTrainer  # noqa: E402
from hf_iau.collators import CausalLMCollator  # noqa: E402
from hf_iau.fictitious_authors import FORGET_SPLITS, fictitious_authors, forget_retain, world_facts  # noqa: E402
from hf_iau.metrics import llm as M  # noqa: E402
from hf_iau.metrics.mia import loss_scores, roc_auc  # noqa: E402
from hf_iau.methods import run_method  # noqa: E402
from hf_iau.qa import qa_to_lm_examples  # noqa: E402

SIZES = {
    "micro": dict(authors=20, vocab=500, hidden=32, layers=2, heads=2, inter=64, block=32, pretrain_epochs=1,
                  pretrain_lr=3e-3, finetune_epochs=1, finetune_lr=3e-3, batch=32, retain_eval=20, world=20,
                  pretrain_blocks=64),
    "quick": dict(authors=100, vocab=2000, hidden=96, layers=3, heads=4, inter=256, block=64, pretrain_epochs=2,
                  pretrain_lr=3e-3, finetune_epochs=15, finetune_lr=3e-3, batch=32, retain_eval=100, world=100),
    "full": dict(authors=200, vocab=8000, hidden=512, layers=8, heads=8, inter=1536, block=128, pretrain_epochs=8,
                 pretrain_lr=1e-3, finetune_epochs=10, finetune_lr=5e-4, batch=32, retain_eval=400, world=200),
}
# name -> (registered method, options, runs at IAU default's budget, LoRA adapter)
METHODS: dict[str, tuple[str, dict[str, Any], bool, bool]] = {
    "iau": ("iau", {}, False, False),
    "iau_lora": ("iau", {}, False, True),
    "gradient_ascent": ("gradient_ascent", {}, True, False),
    "gradient_difference": ("gradient_difference", {}, True, False),
    "npo": ("npo", {"retain_weight": 1.0}, True, False),
    "simnpo": ("simnpo", {}, True, False),
    "rmu": ("rmu", {"layer": 1}, True, False),  # the middle block of the quick model (default: depth // 4 = 0)
}
MAX_LEN = 64


# --------------------------------------------------------------------------- data and models


def tokenizer_for(texts: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "<eos>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")


def model_init(tok, size: dict[str, Any], seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=size["hidden"], intermediate_size=size["inter"],
        num_hidden_layers=size["layers"], num_attention_heads=size["heads"], num_key_value_heads=size["heads"],
        max_position_embeddings=2 * max(size["block"], MAX_LEN), tie_word_embeddings=True,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg)


def args_for(out: str, seed: int, **kw: Any) -> IAUConfig:
    base = dict(
        output_dir=out, use_cpu=not torch.cuda.is_available(), report_to=[], disable_tqdm=True, save_strategy="no", eval_strategy="no",
        logging_strategy="no", seed=seed, data_seed=seed, dataloader_num_workers=0, lr_scheduler_type="constant",
        per_device_eval_batch_size=64, weight_decay=0.0,
    )
    base.update(kw)
    return IAUConfig(**base)


def train(model, args: IAUConfig, data, tok) -> tuple[torch.nn.Module, float, float]:
    """Fine-tune ``model`` in place; (model, seconds, example-gradient passes)."""
    t0 = time.perf_counter()
    tr = IAUTrainer(model=model, args=args, train_dataset=data, data_collator=CausalLMCollator(tok),
                    processing_class=tok)
    tr.train()
    return tr.model.eval(), time.perf_counter() - t0, float(args.num_train_epochs) * len(data)


def lee_blocks(tok, block: int):
    from datasets import Dataset

    from hf_iau.offline_data import lee_text

    ids: list[int] = []
    for text in lee_text()["text"]:
        ids += tok(text)["input_ids"] + [tok.eos_token_id]
    rows = [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)]
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * block] * len(rows), "labels": rows})


class Bench:
    """Shared data, tokenizer and pretrained model (built once per run)."""

    def __init__(self, size: dict[str, Any], log) -> None:
        self.size, self.log = size, log
        self.originals: dict[int, torch.nn.Module] = {}
        n, extra = size["authors"], size["authors"] // 10
        raw = fictitious_authors(n + 2 * extra, 10, 3, seed=0)
        self.raw_train = raw.filter(lambda r: r["author"] < n)
        self.raw_val = raw.filter(lambda r: n <= r["author"] < n + extra)
        self.raw_hold = raw.filter(lambda r: r["author"] >= n + extra)
        self.world = world_facts(size["world"], seed=0)
        from hf_iau.offline_data import lee_text

        texts = list(lee_text()["text"])
        for col in ("question", "answer", "paraphrased_answer"):
            texts += list(raw[col])
        texts += [a for row in raw["perturbed_answers"] for a in row]
        self.tok = tokenizer_for(texts, size["vocab"])
        blocks = lee_blocks(self.tok, size["block"])
        if size.get("pretrain_blocks"):
            blocks = blocks.select(range(min(size["pretrain_blocks"], len(blocks))))
        self.pretrained, secs, _ = train(
            model_init(self.tok, size, 0), args_for("/tmp/llm_unlearning/pre", 0, num_train_epochs=size["pretrain_epochs"],
                                                    per_device_train_batch_size=size["batch"], learning_rate=size["pretrain_lr"]),
            blocks, self.tok)
        n_params = sum(p.numel() for p in self.pretrained.parameters())
        self.description = (f"Llama {size['layers']}L/{size['hidden']}d ({n_params / 1e6:.2f}M params, BPE vocab "
                            f"{len(self.tok)}), pretrained {size['pretrain_epochs']} epochs on {len(blocks)} Lee blocks "
                            f"of {size['block']} tokens ({secs:.0f}s)")
        log(self.description)
        self.val = self.qa(self.raw_val)
        # World facts: the true continuation against 3 continuations of other sentences.
        rng = np.random.default_rng(7)
        n = len(self.world)
        self.world_wrong = [[int(j) for j in rng.choice([k for k in range(n) if k != i], 3, replace=False)] for i in range(n)]

    def qa(self, ds, answer: str = "answer"):
        return qa_to_lm_examples(ds, self.tok, "question", answer, max_length=MAX_LEN,
                                 id_column="id" if "id" in ds.column_names else None)

    def losses(self, model, ds, answer: str = "answer") -> np.ndarray:
        return M.lm_example_stats(model, self.qa(ds, answer).select_columns(["input_ids", "attention_mask", "labels"]),
                                  tokenizer=self.tok, batch_size=64)["loss"]

    def perturbed_losses(self, model, ds) -> np.ndarray:
        k = len(ds[0]["perturbed_answers"])
        cols = []
        for j in range(k):
            d = ds.map(lambda r: {"wrong": r["perturbed_answers"][j]})
            cols.append(self.losses(model, d, "wrong"))
        return np.stack(cols, axis=1)

    def evaluate(self, model, forget, retain_eval) -> dict[str, Any]:
        """Per-model statistics; the comparisons with the retain model are made later."""
        model.eval()
        out: dict[str, Any] = {}
        f_loss = self.losses(model, forget)
        out["forget_tr"] = M.truth_ratio(self.losses(model, forget, "paraphrased_answer"), self.perturbed_losses(model, forget))
        out["forget_loss"] = f_loss
        out["hold_loss"] = self.losses(model, self.raw_hold)
        out["forget_rouge"] = float(np.mean(M.answer_rouge(model, self.tok, list(forget["question"]), list(forget["answer"]),
                                                           max_new_tokens=24, batch_size=64)))
        r_tr = M.truth_ratio(self.losses(model, retain_eval, "paraphrased_answer"), self.perturbed_losses(model, retain_eval))
        w_loss = self.losses(model, self.world)
        w_wrong = np.stack([w_loss[[row[j] for row in self.world_wrong]] for j in range(3)], axis=1)
        parts = {
            "retain_prob": float(np.mean(M.answer_probability(self.losses(model, retain_eval)))),
            "retain_rouge": float(np.mean(M.answer_rouge(model, self.tok, list(retain_eval["question"]),
                                                         list(retain_eval["answer"]), max_new_tokens=24, batch_size=64))),
            "retain_truth_ratio": M.truth_ratio_score(r_tr, "retain"),
            "world_prob": float(np.mean(M.option_probability(w_loss, w_wrong))),
            "world_rouge": float(np.mean(M.answer_rouge(model, self.tok, list(self.world["question"]),
                                                        list(self.world["answer"]), max_new_tokens=16, batch_size=64))),
        }
        out.update(parts)
        out["utility"] = M.model_utility(parts)
        out["auc"] = roc_auc(loss_scores(f_loss), loss_scores(out["hold_loss"]))
        out["forget_tr_score"] = M.truth_ratio_score(out["forget_tr"], "forget")
        return out


def grade(ev: dict[str, Any], gold: dict[str, Any]) -> dict[str, float]:
    return {
        "forget_quality": M.forget_quality(ev["forget_tr"], gold["forget_tr"]),
        "utility": ev["utility"],
        "utility_vs_retain": ev["utility"] / gold["utility"] if gold["utility"] > 0 else float("nan"),
        "forget_rouge": ev["forget_rouge"],
        "privleak": M.privleak(ev["auc"], gold["auc"]),
        "mia_auc": ev["auc"],
        "forget_loss": float(np.nanmean(ev["forget_loss"])),
        "forget_truth_ratio": ev["forget_tr_score"],
        **{k: ev[k] for k in ("retain_prob", "retain_rouge", "retain_truth_ratio", "world_prob", "world_rouge")},
    }


# --------------------------------------------------------------------------- one seed


def run_seed(b: Bench, seed: int, splits: list[str], methods: list[str], log) -> list[dict[str, Any]]:
    size = b.size
    ft = dict(num_train_epochs=size["finetune_epochs"], per_device_train_batch_size=size["batch"],
              learning_rate=size["finetune_lr"])
    train_qa = b.qa(b.raw_train)
    if seed not in b.originals:  # one original per seed, shared by the splits
        original, osecs, _ = train(copy.deepcopy(b.pretrained), args_for(f"/tmp/llm_unlearning/o{seed}", seed, **ft),
                                   train_qa, b.tok)
        b.originals[seed] = original
        log(f"[seed {seed}] original fine-tuned on {len(train_qa)} QA pairs in {osecs:.0f}s")
    original = b.originals[seed]
    records = []
    for split in splits:
        t0 = time.perf_counter()
        parts = forget_retain(b.raw_train, split, seed=seed)
        raw_f, raw_r = parts["forget"], parts["retain"]
        forget, retain = b.qa(raw_f), b.qa(raw_r)
        retain_eval = raw_r.select(sorted(np.random.default_rng([seed, 5]).choice(len(raw_r), min(size["retain_eval"], len(raw_r)), replace=False).tolist()))
        gold, rsecs, rpasses = train(copy.deepcopy(b.pretrained), args_for(f"/tmp/llm_unlearning/r{seed}", seed, **ft), retain, b.tok)
        g = b.evaluate(gold, raw_f, retain_eval)
        rec: dict[str, Any] = {"split": split, "seed": seed, "n_forget": len(forget), "n_retain": len(retain),
                               "retain_train_seconds": rsecs, "retain_train_passes": rpasses, "methods": {}}
        rec["retain_model"] = {**grade(g, g), "passes_pct": 100.0, "time_pct": 100.0}
        rec["original"] = {**grade(b.evaluate(original, raw_f, retain_eval), g), "passes_pct": 0.0, "time_pct": 0.0}
        log(f"  {split}: retain model {rsecs:.0f}s; original FQ {rec['original']['forget_quality']:.2e} "
            f"utility {rec['original']['utility_vs_retain']:.3f} forget ROUGE {rec['original']['forget_rouge']:.3f} "
            f"(retain model {g['forget_rouge']:.3f})")
        budget = None
        for m in methods:
            method, options, at_budget, lora = METHODS[m]
            peft = None
            if lora:
                from peft import LoraConfig

                peft = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0)
            tr = IAUTrainer(model=copy.deepcopy(original), args=args_for(f"/tmp/llm_unlearning/u{seed}", seed, **ft),
                            train_dataset=train_qa, eval_dataset=b.val, data_collator=CausalLMCollator(b.tok),
                            processing_class=b.tok, peft_config=peft)
            try:
                r = run_method(method, tr, forget, retain, budget=budget if at_budget else None, **options)
            except Exception as exc:  # a failed method is a row, not a crash
                rec["methods"][m] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                log(f"    {m}: {rec['methods'][m]['error']}")
                continue
            if m == "iau":
                budget = r.metrics["example_gradient_passes"]
            model = tr.model
            if lora:
                model = model.merge_and_unload()
            row = grade(b.evaluate(model.eval(), raw_f, retain_eval), g)
            row.update(
                passes=r.metrics["example_gradient_passes"], seconds=r.metrics["wall_time_s"],
                passes_pct=100 * r.metrics["example_gradient_passes"] / rpasses,
                time_pct=100 * r.metrics["wall_time_s"] / rsecs, steps=r.metrics.get("steps"),
                budget=budget if at_budget else None,
            )
            rec["methods"][m] = row
            log(f"    {m:20s} FQ {row['forget_quality']:.3g}  util {row['utility_vs_retain']:.3f}  "
                f"fROUGE {row['forget_rouge']:.3f}  PrivLeak {row['privleak']:.1f}  passes {row['passes_pct']:.1f}%  "
                f"time {row['time_pct']:.1f}%")
        rec["seconds"] = time.perf_counter() - t0
        records.append(rec)
    return records


# --------------------------------------------------------------------------- report


def _agg(values: list[float]) -> str:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return "–"
    fmt = (lambda x: f"{x:.2g}") if max(abs(x) for x in v) < 0.01 else (lambda x: f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}")
    return fmt(float(np.mean(v))) + (f" ± {fmt(float(np.std(v)))}" if len(v) > 1 else "")


def markdown(runs: list[dict[str, Any]], methods: list[str], meta: dict[str, Any]) -> list[str]:
    lines = [
        "# LLM unlearning on invented authors (TOFU-like, offline)",
        "",
        meta["description"],
        "",
        "Forget quality: KS-test p-value of the forget set's truth ratios against the retain model's (≥ 0.05 = "
        "indistinguishable). Utility: model utility (harmonic mean of retain-set probability, ROUGE-L, truth ratio "
        "and world-facts option probability, ROUGE-L) relative to the retain model's. PrivLeak: loss-attack AUC "
        "(forget vs holdout authors) relative to the retain model's, % (0 = like retraining). Passes, time: the "
        "method's example-gradient passes and wall time as % of the retain model's fine-tuning. Baselines run at "
        "IAU default's example-gradient budget. Mean ± std over seeds.",
        "",
    ]
    rows = ["original", "retain_model", *methods]
    for split in sorted({r["split"] for r in runs}, key=lambda s: FORGET_SPLITS[s]):
        rs = [r for r in runs if r["split"] == split]
        seeds = sorted({r["seed"] for r in rs})
        lines += [f"## {split} ({rs[0]['n_forget']} forget QA pairs, seeds {seeds})", "",
                  "| method | forget quality | utility vs retain | forget ROUGE-L | PrivLeak % | passes % | time % |",
                  "|---|---|---|---|---|---|---|"]
        for m in rows:
            vals = [r[m] if m in ("original", "retain_model") else r["methods"].get(m, {}) for r in rs]
            if all("error" in v or not v for v in vals):
                err = next((v.get("error") for v in vals if v), "not run")
                lines.append(f"| {m} | error: {err[:80]} | | | | | |")
                continue
            get = lambda k: [v.get(k) for v in vals if "error" not in v]  # noqa: E731
            lines.append(
                f"| {m} | {_agg(get('forget_quality'))} | {_agg(get('utility_vs_retain'))} | {_agg(get('forget_rouge'))} "
                f"| {_agg(get('privleak'))} | {_agg(get('passes_pct'))} | {_agg(get('time_pct'))} |"
            )
        lines.append("")
    lines += goal_lines(runs, methods)
    lines += [
        "",
        "## Settings (nothing tuned on this benchmark: every figure is out of sample)",
        "",
        "- IAU: `IAUConfig` defaults (multi-step, loss targets from the validation authors, retain sample 32/step, "
        "auto stop); unlearning learning rate = half the fine-tuning rate (the default). IAU+LoRA: the same on a "
        "fresh rank-8 adapter on every linear layer (merged for evaluation).",
        "- Baselines at IAU default's example-gradient budget, Adam, the same learning rate, batch 32: gradient "
        "ascent; gradient difference (weights 1/1); NPO (β = 0.1, retain weight 1); SimNPO (β = 2.5, γ = 0, retain "
        "weight 1); RMU (block 1 of 3 steered, c = 6.5, α = 100, MLP parameters of blocks 0–1).",
        "- One pretrained model (seed 0) shared by all seeds; a seed changes the forgotten authors and the "
        "fine-tuning/unlearning seeds. Wall-time percentages come from a CPU machine shared with other jobs: "
        "read them as rough; passes are exact.",
        "- Utility is TOFU's harmonic mean; world-facts ROUGE is low for every model (the small model learned "
        "little of the Lee continuations), so read utility as the ratio to the retain model.",
    ]
    return lines


def goal_lines(runs: list[dict[str, Any]], methods: list[str]) -> list[str]:
    rs = [r for r in runs if r["split"] == "forget10"]
    if not rs:
        return ["Goal (forget10): not run."]
    def mean(m: str, k: str) -> float:
        v = [r["methods"].get(m, {}).get(k) for r in rs]
        v = [x for x in v if x is not None and math.isfinite(x)]
        return float(np.mean(v)) if v else float("nan")
    fq, ut = mean("iau", "forget_quality"), mean("iau", "utility_vs_retain")
    base = [m for m in methods if METHODS[m][2]]
    ahead = [m for m in base if not fq > mean(m, "forget_quality")]
    met = fq >= 0.05 and ut >= 0.95 and not ahead
    lines = [
        "## Goal (forget10)",
        "",
        f"IAU forget quality ≥ 0.05 with utility ≥ 95% of the retain model's, ahead of every baseline at equal passes: "
        f"**{'met' if met else 'missed'}** — IAU forget quality {fq:.3g}, utility {ut:.3f} of the retain model's; "
        + (f"baselines with forget quality ≥ IAU's: {', '.join(ahead)}." if ahead else "every baseline's forget quality is lower."),
    ]
    if "iau_lora" in methods:
        fq_l, ut_l = mean("iau_lora", "forget_quality"), mean("iau_lora", "utility_vs_retain")
        ahead_l = [m for m in base if not fq_l > mean(m, "forget_quality")]
        lines += ["", f"IAU+LoRA: forget quality {fq_l:.3g}, utility {ut_l:.3f} of the retain model's; "
                  + (f"baselines with forget quality ≥ its: {', '.join(ahead_l)}." if ahead_l else "ahead of every baseline.")]
    return lines


def methods_of(runs: list[dict[str, Any]]) -> list[str]:
    names = {m for r in runs for m in r["methods"]}
    return [m for m in METHODS if m in names]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the 2-CPU size (100 authors, ≈0.5M-parameter model)")
    p.add_argument("--micro", action="store_true", help="a seconds-long smoke run of the code path (no figures)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--splits", nargs="+", default=list(FORGET_SPLITS), choices=list(FORGET_SPLITS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--from-json", default=None, help="rebuild the Markdown from a results JSON and exit")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    a = p.parse_args(argv)
    if a.from_json:
        data = json.loads(Path(a.from_json).read_text())
        meta = {k: data[k] for k in ("description", "seeds", "splits", "size", "seconds")}
        md = markdown(data["runs"], methods_of(data["runs"]), meta) + ["", f"Run time: {meta['seconds'] / 60:.1f} min."]
        out = Path(a.from_json).with_suffix(".md")
        head = out.read_text().splitlines()[:2] if out.exists() else []
        out.write_text("\n".join(head + md) + "\n")
        print("\n".join(md))
        return 0
    torch.set_num_threads(a.threads)
    datasets.disable_progress_bars()
    methods = ["iau", *[m for m in a.methods if m != "iau"]]  # IAU first: it sets the budget
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    size = SIZES["micro" if a.micro else "quick" if a.quick else "full"]
    b = Bench(size, log)
    runs: list[dict[str, Any]] = []
    # forget10 first, every seed, then the smaller splits; results are rewritten after each (split, seed).
    for split in sorted(a.splits, key=lambda s: -FORGET_SPLITS[s]):
        for seed in a.seeds:
            try:
                runs += run_seed(b, seed, [split], methods, log)
            except Exception:
                traceback.print_exc()
                raise
            meta = {"description": b.description, "seeds": a.seeds, "splits": a.splits, "size": size,
                    "seconds": time.perf_counter() - t0}
            md = markdown(runs, methods, meta) + ["", f"Run time so far: {meta['seconds'] / 60:.1f} min."]
            write_results("llm_unlearning" + (".micro" if a.micro else ""), {"runs": runs, **meta}, md, quick=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
