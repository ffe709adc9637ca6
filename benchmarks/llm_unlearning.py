"""LLM unlearning on invented authors (TOFU-like, offline): IAU against tuned LLM baselines and retraining.

    nice -n 10 python benchmarks/llm_unlearning.py --quick --splits forget10 --methods iau npo   # 2 CPUs
    nice -n 10 python benchmarks/llm_unlearning.py --micro                                       # smoke run
    python benchmarks/llm_unlearning.py                     # full size (a GPU; see benchmarks/llm_gpu.py)

Data (``hf_iau.fictitious_authors``): 400 training authors × 10 QA pairs (forget10 = 400 rows from 40
authors, TOFU's scale; the micro size has fewer), plus validation authors (never trained: IAU's
reference and the baselines' tuning target) and holdout authors (PrivLeak's non-members). World
facts (``hf_iau.offline_data.world_facts``): continuations of the Lee corpus, each scored against
perturbed continuations under the SAME prompt (TOFU).

Models: a Llama from config with a BPE tokenizer trained here. It first learns language (a fixed
number of steps on the bundled Lee and Wikipedia corpora: minutes on a CPU), cached in the run folder
(``--run-dir``; never downloaded), then the authors. Retain models: the same fine-tune without the
forget authors, with ≥ 3 seeds. Methods: IAU (defaults, untuned), IAU+LoRA, and GradDiff, NPO,
SimNPO, RMU, each tuned over a learning-rate grid at IAU's example-gradient budget on a tuning split
(other trained authors, never graded) against the validation authors, then run once on the graded split.

Grading (``hf_iau.metrics``, open-unlearning's token convention): forget quality = two-sample KS test of
the forget set's truth ratios against each retain model: distance D (mean over retain models), n, and
the p-value against retain model 0, never averaged; the floor = D between retain models (and the
original model's D). Utility = harmonic mean of retain probability / ROUGE-L / truth ratio and
world-facts option probability / ROUGE-L / truth ratio ("reduced (6 parts)": no real-authors set
offline), relative to the retain models'. PrivLeak = Min-K% (k = 0.4) AUC, forget vs holdout authors,
against retain model 0. Robustness probes per method (``hf_iau.metrics.robustness``): int8 and 4-bit
weights, relearning on 10% of the forget set (measured on the rest), paraphrased questions.
Writes benchmarks/results/llm_unlearning[.<size>].{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import sys
import time
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
from hf_iau.fictitious_authors import FORGET_SPLITS, fictitious_authors, forget_retain, tuning_authors  # noqa: E402
from hf_iau.metrics import llm as M  # noqa: E402
from hf_iau.metrics.mia import roc_auc  # noqa: E402
from hf_iau.metrics.robustness import robustness_probes  # noqa: E402
from hf_iau.methods import run_method  # noqa: E402
from hf_iau.offline_data import lee_text, wiki_text, world_facts  # noqa: E402
from hf_iau.qa import qa_to_lm_examples  # noqa: E402

SIZES: dict[str, dict[str, Any]] = {
    "micro": dict(authors=40, extra=8, vocab=600, hidden=32, layers=2, heads=2, inter=64, block=32, pretrain_steps=30,
                  pretrain_lr=3e-3, finetune_epochs=3, finetune_lr=3e-3, batch=32, retain_seeds=3, retain_eval=20,
                  world=20, gen_tokens=16, grid=(0.5, 1.0), probe_rows=20, relearn_steps=3, wiki_pages=20),
    "quick": dict(authors=400, extra=40, vocab=2000, hidden=64, layers=2, heads=4, inter=192, block=64,
                  pretrain_steps=600, pretrain_lr=3e-3, finetune_epochs=10, finetune_lr=3e-3, batch=32, retain_seeds=3,
                  retain_eval=100, world=100, gen_tokens=48, grid=(0.5, 1.0, 2.0), probe_rows=100, relearn_steps=10,
                  wiki_pages=None),
    "full": dict(authors=400, extra=40, vocab=8000, hidden=512, layers=8, heads=8, inter=1536, block=128,
                 pretrain_steps=6000, pretrain_lr=1e-3, finetune_epochs=10, finetune_lr=5e-4, batch=32, retain_seeds=5,
                 retain_eval=400, world=200, gen_tokens=200, grid=(0.25, 0.5, 1.0, 2.0, 4.0), probe_rows=400,
                 relearn_steps=20, wiki_pages=None),
}
# name -> (registered method, options, tuned at IAU's budget, LoRA adapter)
METHODS: dict[str, tuple[str, dict[str, Any], bool, bool]] = {
    "iau": ("iau", {}, False, False),
    "iau_lora": ("iau", {}, False, True),
    "iau_by_author": ("iau", {"unlearn_target_group_column": "author"}, False, False),
    "gradient_difference": ("gradient_difference", {}, True, False),
    "npo": ("npo", {"retain_weight": 1.0}, True, False),
    "simnpo": ("simnpo", {}, True, False),
    "rmu": ("rmu", {"layer": 1}, True, False),
    # LoRA adapters (r 8, all linear; tuned and run at IAU+LoRA's budget)
    "gradient_difference_lora": ("gradient_difference", {}, True, True),
    "npo_lora": ("npo", {"retain_weight": 1.0}, True, True),
    "simnpo_lora": ("simnpo", {}, True, True),
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
    cuda = torch.cuda.is_available()
    base = dict(
        output_dir=out, use_cpu=not cuda, bf16=cuda, report_to=[], disable_tqdm=True, save_strategy="no",
        eval_strategy="no", logging_strategy="no", seed=seed, data_seed=seed, dataloader_num_workers=0,
        lr_scheduler_type="constant", per_device_eval_batch_size=64, weight_decay=0.0,
    )
    base.update(kw)
    return IAUConfig(**base)


def train(model, args: IAUConfig, data, tok) -> tuple[torch.nn.Module, float, float]:
    """Fine-tune ``model`` in place; (model, seconds, example-gradient passes)."""
    t0 = time.perf_counter()
    tr = IAUTrainer(model=model, args=args, train_dataset=data, data_collator=CausalLMCollator(tok), processing_class=tok)
    tr.train()
    passes = float(args.max_steps * args.per_device_train_batch_size) if args.max_steps > 0 else float(args.num_train_epochs) * len(data)
    return tr.model.eval(), time.perf_counter() - t0, passes


def corpus_blocks(tok, texts: list[str], block: int):
    from datasets import Dataset

    ids: list[int] = []
    for text in texts:
        ids += tok(text)["input_ids"] + [tok.eos_token_id]
    rows = [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)]
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * block] * len(rows), "labels": rows})


def pretrained(size: dict[str, Any], run_dir: Path, texts: list[str], corpus: list[str], log) -> tuple[Any, Any, str]:
    """(tokenizer, language-model, description): loaded from ``run_dir`` when a run with the same size saved
    them (safetensors), else trained here (tokenizer on every text, model ``pretrain_steps`` on ``corpus``)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    key = json.dumps({k: size[k] for k in ("vocab", "hidden", "layers", "heads", "inter", "block", "pretrain_steps",
                                           "pretrain_lr", "wiki_pages", "authors", "extra")}, sort_keys=True)
    folder = run_dir / "pretrained"
    if (folder / "size.json").exists() and (folder / "size.json").read_text() == key:
        tok = AutoTokenizer.from_pretrained(folder)
        model = LlamaForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
        desc = (folder / "description.txt").read_text()
        log(f"pretrained model loaded from {folder}")
        return tok, model, desc
    tok = tokenizer_for(texts, size["vocab"])
    blocks = corpus_blocks(tok, corpus, size["block"])
    model, secs, _ = train(model_init(tok, size, 0), args_for(str(run_dir / "pre_tmp"), 0, max_steps=size["pretrain_steps"],
                                                            per_device_train_batch_size=size["batch"],
                                                            learning_rate=size["pretrain_lr"]), blocks, tok)
    n_params = sum(p.numel() for p in model.parameters())
    desc = (f"Llama {size['layers']}L/{size['hidden']}d ({n_params / 1e6:.2f}M params, BPE vocab {len(tok)}), "
            f"pretrained {size['pretrain_steps']} steps × {size['batch']} blocks of {size['block']} tokens on the Lee and "
            f"Wikipedia corpora ({len(blocks)} blocks; {secs:.0f}s)")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    (folder / "description.txt").write_text(desc)
    (folder / "size.json").write_text(key)
    log(desc)
    return tok, model, desc


class Bench:
    """Shared data, tokenizer and pretrained model (built once per run, the model cached in ``run_dir``)."""

    def __init__(self, size: dict[str, Any], run_dir: Path, log) -> None:
        self.size, self.log, self.run_dir = size, log, run_dir
        n, extra = size["authors"], size["extra"]
        raw = fictitious_authors(n + 2 * extra, 10, 3, seed=0)
        self.raw_train = raw.filter(lambda r: r["author"] < n)
        self.raw_val = raw.filter(lambda r: n <= r["author"] < n + extra)
        self.raw_hold = raw.filter(lambda r: r["author"] >= n + extra)
        self.world = world_facts(size["world"], seed=0)
        corpus = list(lee_text()["text"]) + list(wiki_text(max_pages=size["wiki_pages"])["text"])
        texts = corpus + [t for col in ("question", "answer", "paraphrased_answer", "paraphrased_question") for t in raw[col]]
        texts += [a for row in raw["perturbed_answers"] for a in row]
        self.tok, self.pretrained, self.description = pretrained(size, run_dir, texts, corpus, log)
        self.val = self.qa(self.raw_val)
        self.originals: dict[int, torch.nn.Module] = {}
        self.gen = dict(max_new_tokens=size["gen_tokens"], batch_size=64)

    def qa(self, ds, answer: str = "answer", question: str = "question"):
        return qa_to_lm_examples(ds, self.tok, question, answer, max_length=MAX_LEN,
                                 id_column="id" if "id" in ds.column_names else None)

    def stats(self, model, ds, answer: str = "answer") -> dict[str, np.ndarray]:
        ex = self.qa(ds, answer).select_columns(["input_ids", "attention_mask", "labels"])
        return M.lm_example_stats(model, ex, tokenizer=self.tok, batch_size=64)

    def truth_ratios(self, model, ds, correct: str) -> tuple[np.ndarray, np.ndarray]:
        """(ℓ of ``correct`` answers, ℓ of each perturbed answer [N, K]), all under the row's own question."""
        k = len(ds[0]["perturbed_answers"])
        wrong = [self.stats(model, ds.map(lambda r: {"wrong": r["perturbed_answers"][j]}), "wrong")["loss"] for j in range(k)]
        return self.stats(model, ds, correct)["loss"], np.stack(wrong, axis=1)

    def utility(self, model, retain_eval) -> dict[str, float]:
        """TOFU's utility parts available offline: retain set and world facts (no real-authors set): 6 of 9."""
        lp, lw = self.truth_ratios(model, retain_eval, "paraphrased_answer")
        wc, ww = self.truth_ratios(model, self.world, "answer")
        rouge = {name: float(np.mean(M.answer_rouge(model, self.tok, list(d["question"]), list(d["answer"]), **self.gen)))
                 for name, d in (("retain", retain_eval), ("world_facts", self.world))}
        return {
            "retain_probability": float(np.mean(M.answer_probability(self.stats(model, retain_eval)["loss"]))),
            "retain_rouge_l_recall": rouge["retain"],
            "retain_truth_ratio": M.truth_ratio_score(M.truth_ratio(lp, lw), "retain"),
            "world_facts_probability": float(np.mean(M.option_probability(wc, ww))),
            "world_facts_rouge_l_recall": rouge["world_facts"],
            "world_facts_truth_ratio": M.truth_ratio_score(M.truth_ratio(wc, ww), "retain"),
        }

    def evaluate(self, model, forget, retain_eval) -> dict[str, Any]:
        """Per-model statistics; comparisons with the retain models are made in :func:`grade`."""
        model.eval()
        f = self.stats(model, forget)
        out: dict[str, Any] = {"forget_tr": M.truth_ratio(*self.truth_ratios(model, forget, "paraphrased_answer"))}
        out["forget_loss"] = float(np.nanmean(f["loss"]))
        out["forget_rouge"] = float(np.mean(M.answer_rouge(model, self.tok, list(forget["question"]),
                                                           list(forget["answer"]), **self.gen)))
        out["forget_knowmem"] = float(np.mean(M.knowledge_memorisation(model, self.tok, list(forget["question"]),
                                                                       list(forget["answer"]), batch_size=64)))
        out["auc"] = roc_auc(M._finite(f["min_k"]), M._finite(self.stats(model, self.raw_hold)["min_k"]))  # Min-K%, k 0.4
        out["parts"] = self.utility(model, retain_eval)
        out["utility"] = M.model_utility(out["parts"])
        out["forget_tr_score"] = M.truth_ratio_score(out["forget_tr"], "forget")
        return out

    def measure(self, model, rows) -> dict[str, float]:
        """The robustness probes' forget metrics: answer probability and ROUGE-L recall of greedy answers."""
        return {"forget_probability": float(np.nanmean(M.answer_probability(self.stats(model, rows)["loss"]))),
                "forget_rouge": float(np.mean(M.answer_rouge(model, self.tok, list(rows["question"]),
                                                             list(rows["answer"]), **self.gen)))}


def grade(ev: dict[str, Any], golds: list[dict[str, Any]]) -> dict[str, Any]:
    """Compare a model's statistics with the retain models': KS distance to each (mean), n, the p-value
    against retain model 0 (one test, never averaged), utility relative to the retain models' mean,
    PrivLeak against retain model 0."""
    ks = [M.ks_test(ev["forget_tr"], g["forget_tr"]) for g in golds]
    gold_utility = float(np.mean([g["utility"] for g in golds]))
    return {
        "ks_distance": float(np.mean([k["ks_distance"] for k in ks])),
        "ks_distance_r0": ks[0]["ks_distance"],
        "ks_p_value_r0": ks[0]["p_value"],
        "n": int(ks[0]["n_model"]),
        "utility": ev["utility"],
        "utility_vs_retain": ev["utility"] / gold_utility if gold_utility > 0 else float("nan"),
        "forget_rouge": ev["forget_rouge"],
        "forget_knowmem": ev["forget_knowmem"],
        "forget_truth_ratio": ev["forget_tr_score"],
        "forget_loss": ev["forget_loss"],
        "privleak": M.privleak(ev["auc"], golds[0]["auc"]),
        "mia_min_k_auc": ev["auc"],
        **ev["parts"],
    }


def floor(golds: list[dict[str, Any]]) -> dict[str, float]:
    """The retain-vs-retain KS distances (every pair of retain seeds): what retraining itself varies by."""
    d = [M.ks_test(a["forget_tr"], b["forget_tr"]) for a, b in itertools.combinations(golds, 2)]
    return {"ks_distance_mean": float(np.mean([x["ks_distance"] for x in d])),
            "ks_distance_max": float(np.max([x["ks_distance"] for x in d])),
            "ks_p_value_min": float(np.min([x["p_value"] for x in d])), "pairs": len(d)}


def unlearn(b: Bench, original, name: str, seed: int, forget, retain, budget, options: dict[str, Any]):
    """(model, result) of method ``name`` on a copy of ``original``; LoRA adapters merged for evaluation."""
    method, base_options, _, lora = METHODS[name]
    size = b.size
    peft = None
    if lora:
        from peft import LoraConfig

        peft = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0)
    ft = dict(num_train_epochs=size["finetune_epochs"], per_device_train_batch_size=size["batch"],
              learning_rate=size["finetune_lr"])
    tr = IAUTrainer(model=copy.deepcopy(original), args=args_for(str(b.run_dir / f"u{seed}"), seed, **ft),
                    train_dataset=b.qa(b.raw_train), eval_dataset=b.val, data_collator=CausalLMCollator(b.tok),
                    processing_class=b.tok, peft_config=peft)
    r = run_method(method, tr, forget, retain, budget=budget, **{**base_options, **options})
    model = tr.model.merge_and_unload() if lora else tr.model
    return model.eval(), r


def tuning_split(b: Bench, split: str, seed: int) -> tuple[Any, Any, Any]:
    """(tuning rows, the rest, a retained evaluation subset): the tuning authors of ``split`` (trained on, never
    graded) as a forget set."""
    gone = set(tuning_authors(b.size["authors"], FORGET_SPLITS[split], seed))
    tune_f = b.raw_train.filter(lambda r: r["author"] in gone)
    tune_r = b.raw_train.filter(lambda r: r["author"] not in gone)
    return tune_f, tune_r, tune_r.select(range(0, len(tune_r), max(1, len(tune_r) // b.size["retain_eval"])))


def tuning_proxy(b: Bench, model, tune_f, retain_eval, p0: float) -> dict[str, float]:
    """The validation proxy on the tuning rows: KS distance of their truth ratios to the validation authors' (never
    trained) under ``model``, and the retain probability relative to ``p0`` (the original model's)."""
    val_tr = M.truth_ratio(*b.truth_ratios(model, b.raw_val, "paraphrased_answer"))
    tr_f = M.truth_ratio(*b.truth_ratios(model, tune_f, "paraphrased_answer"))
    prob = float(np.mean(M.answer_probability(b.stats(model, retain_eval)["loss"])))
    return {"ks_distance_to_unseen": M.ks_test(tr_f, val_tr)["ks_distance"], "retain_probability_vs_original": prob / p0}


def tune(b: Bench, original, name: str, seed: int, split: str, log) -> dict[str, Any]:
    """The learning rate of baseline ``name`` (a multiple of the fine-tuning rate from the size's grid), chosen on
    the tuning authors (trained on, never graded) at IAU's budget there (IAU+LoRA's for a LoRA baseline): the
    smallest KS distance between the truth ratios of the tuning rows and of the validation authors (never trained)
    under the unlearned model, among rates keeping retain-set probability ≥ 95% of the original's (else the best
    probability)."""
    grid = b.size["grid"]
    lr0 = b.size["finetune_lr"]
    if len(grid) == 1:
        return {"learning_rate": lr0 * grid[0], "grid": [lr0 * g for g in grid], "tuned": False}
    tune_f, tune_r, retain_eval = tuning_split(b, split, seed)
    _, iau = unlearn(b, original, "iau_lora" if METHODS[name][3] else "iau", seed, b.qa(tune_f), b.qa(tune_r), None, {})
    budget = iau.metrics["example_gradient_passes"]
    p0 = float(np.mean(M.answer_probability(b.stats(original, retain_eval)["loss"])))
    rows = []
    for g in grid:
        model, _ = unlearn(b, original, name, seed, b.qa(tune_f), b.qa(tune_r), budget, {"learning_rate": lr0 * g})
        # the target: the validation authors' truth ratios under the same model (authors it never saw)
        rows.append({"learning_rate": lr0 * g, **tuning_proxy(b, model, tune_f, retain_eval, p0)})
    ok = [r for r in rows if r["retain_probability_vs_original"] >= 0.95]
    best = min(ok, key=lambda r: r["ks_distance_to_unseen"]) if ok else max(rows, key=lambda r: r["retain_probability_vs_original"])
    log(f"    tuned {name}: lr {best['learning_rate']:.2g} (grid {[round(r['ks_distance_to_unseen'], 3) for r in rows]})")
    return {"learning_rate": best["learning_rate"], "grid": rows, "tuned": True, "tuning_budget": budget}


def cached_train(b: Bench, key: str, data, seed: int) -> tuple[torch.nn.Module, float, float]:
    """Fine-tune a copy of the pretrained model on ``data`` (or load it from ``run_dir/models/<key>``)."""
    from transformers import LlamaForCausalLM

    folder = b.run_dir / "models" / key
    if (folder / "train.json").exists():
        meta = json.loads((folder / "train.json").read_text())
        return LlamaForCausalLM.from_pretrained(folder, use_safetensors=True).eval(), meta["seconds"], meta["passes"]
    size = b.size
    ft = dict(num_train_epochs=size["finetune_epochs"], per_device_train_batch_size=size["batch"],
              learning_rate=size["finetune_lr"])
    model, secs, passes = train(copy.deepcopy(b.pretrained), args_for(str(b.run_dir / "ft_tmp"), seed, **ft), data, b.tok)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "train.json").write_text(json.dumps({"seconds": secs, "passes": passes}))
    return model, secs, passes


def probes(b: Bench, model, forget_raw, seed: int) -> dict[str, dict[str, float]]:
    rows = forget_raw.select(range(min(b.size["probe_rows"], len(forget_raw))))
    return robustness_probes(
        model, b.measure, rows, relearn_examples=lambda d: b.qa(d).select_columns(["input_ids", "attention_mask", "labels"]),
        data_collator=CausalLMCollator(b.tok), relearn_fraction=0.1, relearn_steps=b.size["relearn_steps"],
        relearn_learning_rate=b.size["finetune_lr"], seed=seed)


def run_split(b: Bench, seed: int, split: str, methods: list[str], with_probes: bool, log) -> dict[str, Any]:
    t0 = time.perf_counter()
    size = b.size
    if seed not in b.originals:
        b.originals[seed], osecs, _ = cached_train(b, f"original_s{seed}", b.qa(b.raw_train), seed)
        log(f"[seed {seed}] original fine-tuned on {len(b.raw_train)} QA pairs ({osecs:.0f}s)")
    original = b.originals[seed]
    parts = forget_retain(b.raw_train, split, seed=seed)
    raw_f, raw_r = parts["forget"], parts["retain"]
    forget, retain = b.qa(raw_f), b.qa(raw_r)
    pick = np.random.default_rng([seed, 5]).choice(len(raw_r), min(size["retain_eval"], len(raw_r)), replace=False)
    retain_eval = raw_r.select(sorted(pick.tolist()))
    golds, gold_secs, gold_passes, gold0 = [], [], 0.0, None
    for j in range(size["retain_seeds"]):
        gold, secs, gold_passes = cached_train(b, f"retain_{split}_s{seed}_r{j}", retain, 1000 * seed + j)
        golds.append(b.evaluate(gold, raw_f, retain_eval))
        gold_secs.append(secs)
        gold0 = gold0 or gold
    rsecs = float(np.mean(gold_secs))
    retain = retain.add_column("author", raw_r["author"])  # read only by unlearn_target_group_column (iau_by_author)
    rec: dict[str, Any] = {"split": split, "seed": seed, "n_forget": len(raw_f), "forget_authors": len(set(raw_f["author"])),
                           "n_retain": len(raw_r), "retain_seeds": size["retain_seeds"], "retain_train_seconds": rsecs,
                           "retain_train_passes": gold_passes, "floor": floor(golds), "methods": {}}
    rec["retain_model"] = {**grade(golds[0], golds[1:]), "passes_pct": 100.0, "time_pct": 100.0}
    rec["original"] = {**grade(b.evaluate(original, raw_f, retain_eval), golds), "passes_pct": 0.0, "time_pct": 0.0}
    if with_probes:  # the retain model's probes: what relearning / paraphrases give without any memory
        rec["original"]["probes"] = probes(b, original, raw_f, seed)
        rec["retain_model"]["probes"] = probes(b, gold0, raw_f, seed)
    log(f"  {split}: floor D {rec['floor']['ks_distance_mean']:.3f}; original D {rec['original']['ks_distance']:.3f} "
        f"p {rec['original']['ks_p_value_r0']:.1e}")
    budgets: dict[bool, float] = {}  # LoRA or not -> IAU's passes with the same parameters
    for m in methods:
        try:
            choice = tune(b, original, m, seed, split, log) if METHODS[m][2] else None
            opts = {"learning_rate": choice["learning_rate"]} if choice else {}
            budget = budgets.get(METHODS[m][3], budgets.get(False)) if METHODS[m][2] else None
            model, r = unlearn(b, original, m, seed, forget, retain, budget, opts)
        except (RuntimeError, ValueError) as exc:  # a failed method is a row, not a crash
            rec["methods"][m] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            log(f"    {m}: {rec['methods'][m]['error']}")
            continue
        if METHODS[m][0] == "iau":
            budgets[METHODS[m][3]] = r.metrics["example_gradient_passes"]
        row = grade(b.evaluate(model, raw_f, retain_eval), golds)
        row.update(passes=r.metrics["example_gradient_passes"], seconds=r.metrics["wall_time_s"],
                   passes_pct=100 * r.metrics["example_gradient_passes"] / gold_passes,
                   time_pct=100 * r.metrics["wall_time_s"] / rsecs, tuning=choice)
        if with_probes:
            row["probes"] = probes(b, model, raw_f, seed)
        rec["methods"][m] = row
        log(f"    {m:20s} D {row['ks_distance']:.3f} (p {row['ks_p_value_r0']:.1e}) util {row['utility_vs_retain']:.3f} "
            f"fROUGE {row['forget_rouge']:.3f} PrivLeak {row['privleak']:.1f} passes {row['passes_pct']:.1f}%")
    rec["seconds"] = time.perf_counter() - t0
    return rec


# --------------------------------------------------------------------------- report


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.1e}" if 0 < abs(x) < 1e-3 else f"{x:.{digits}f}"


def _mean(values: list[Any]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def split_lines(rs: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """One split: the floor, the method table (means over forget seeds; p-values listed, never averaged), probes."""
    fl = _mean([r["floor"]["ks_distance_mean"] for r in rs])
    lines = [f"## {rs[0]['split']}: {rs[0]['n_forget']} forget rows from {rs[0]['forget_authors']} authors, "
             f"{rs[0]['retain_seeds']} retain seeds, forget seeds {[r['seed'] for r in rs]}", "",
             f"Floor (retain vs retain, every pair): KS D {_f(fl)} (max {_f(max(r['floor']['ks_distance_max'] for r in rs))}, "
             f"smallest p {_f(min(r['floor']['ks_p_value_min'] for r in rs))}).", "",
             "| model | KS D to retain | D / floor | p vs retain 0 (n) | utility vs retain | forget ROUGE-L | KnowMem F1 "
             "| PrivLeak % | passes % | time % |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m in ["original", "retain_model", *methods]:
        vals = [r[m] if m in ("original", "retain_model") else r["methods"].get(m, {}) for r in rs]
        if all("error" in v or not v for v in vals):
            lines.append(f"| {m} | error: {next((v.get('error') for v in vals if v), 'not run')[:80]} |||||||||")
            continue
        vals = [v for v in vals if "error" not in v]
        d = _mean([v["ks_distance"] for v in vals])
        ps = ", ".join(f"{_f(v['ks_p_value_r0'])}" for v in vals)
        lines.append(f"| {m} | {_f(d)} | {_f(d / fl if d is not None and fl else None, 2)} | {ps} (n {vals[0]['n']}) "
                     f"| {_f(_mean([v['utility_vs_retain'] for v in vals]))} | {_f(_mean([v['forget_rouge'] for v in vals]))} "
                     f"| {_f(_mean([v['forget_knowmem'] for v in vals]))} | {_f(_mean([v['privleak'] for v in vals]), 1)} "
                     f"| {_f(_mean([v['passes_pct'] for v in vals]), 1)} | {_f(_mean([v['time_pct'] for v in vals]), 1)} |")
    lines += [""] + probe_lines(rs, methods)
    return lines


def probe_lines(rs: list[dict[str, Any]], methods: list[str]) -> list[str]:
    rows = []
    for m in ["original", "retain_model", *methods]:
        vals = [(r[m] if m in ("original", "retain_model") else r["methods"].get(m, {})).get("probes") for r in rs]
        vals = [v for v in vals if v]
        if not vals:
            continue

        def cell(probe: str) -> str:
            return _f(_mean([v[probe]["forget_rouge"] for v in vals if probe in v]))

        rows.append(f"| {m} | {cell('as_is')} | {cell('int8')} | {cell('int4')} | {cell('relearn_baseline')} → "
                    f"{cell('relearned')} | {cell('paraphrased')} |")
    if not rows:
        return ["Robustness probes: not run (`--probes`).", ""]
    return ["Robustness probes: forget ROUGE-L recall of greedy answers on the first `probe_rows` forget rows "
            "(higher = more comes back); relearning: a few full-parameter steps on 10% of them, measured on the rest.", "",
            "| model | as is | int8 weights | 4-bit weights | relearning (held-out 90%: before → after) | paraphrased questions |",
            "|---|---|---|---|---|---|", *rows, ""]


def goal_lines(runs: list[dict[str, Any]], methods: list[str]) -> list[str]:
    lines = ["## Goal", ""]
    for split in sorted({r["split"] for r in runs}, key=lambda s: -FORGET_SPLITS[s]):
        rs = [r for r in runs if r["split"] == split]
        fl = _mean([r["floor"]["ks_distance_mean"] for r in rs])
        d = {m: _mean([r["methods"].get(m, {}).get("ks_distance") for r in rs]) for m in methods}
        ut = _mean([r["methods"].get("iau", {}).get("utility_vs_retain") for r in rs])
        orig_p = max(r["original"]["ks_p_value_r0"] for r in rs)
        ahead = [m for m in methods if METHODS[m][2] and d[m] is not None and d.get("iau") is not None and d[m] <= d["iau"]]
        met = (d.get("iau") is not None and fl and d["iau"] <= 1.5 * fl and ut is not None and ut >= 0.95 and not ahead)
        lines.append(f"- {split}: IAU KS D {_f(d.get('iau'))} vs 1.5 × floor {_f(1.5 * fl if fl else None)}, utility "
                     f"{_f(ut)} of the retain models' (≥ 0.95), baselines at or below IAU's D: {', '.join(ahead) or 'none'} "
                     f"→ **{'met' if met else 'missed'}**; original model p ≤ {_f(orig_p)} "
                     f"({'fails the floor clearly' if orig_p < 1e-3 else 'does NOT fail clearly: the benchmark cannot tell forgetting from noise'}).")
    return lines


def markdown(runs: list[dict[str, Any]], methods: list[str], meta: dict[str, Any]) -> list[str]:
    lines = ["# LLM unlearning on invented authors (TOFU-like, offline)", "", meta["description"], "",
             f"Size `{meta['size_name']}`; ran: splits {meta['splits']}, forget seeds {meta['seeds']}, methods "
             f"{methods}, probes {'on' if meta['probes'] else 'off'}. Everything not listed did not run.", ""]
    for split in sorted({r["split"] for r in runs}, key=lambda s: -FORGET_SPLITS[s]):
        lines += split_lines([r for r in runs if r["split"] == split], methods)
    lines += goal_lines(runs, methods) + ["", "## Conventions", "",
        "- Forget quality: two-sample KS test (scipy) of the forget rows' truth ratios R = P̄(perturbed)/P(paraphrased), "
        "model vs each retain model. D = mean KS distance over the retain models; p = the test against retain model 0 "
        "alone (p-values are listed per forget seed, never averaged; p > 0.05 only says the test cannot tell them apart "
        "at this n). Floor = mean D between retain models of different seeds. The retain_model row is retain seed 0 "
        "against the other retain seeds (its p: against retain seed 1).",
        "- Utility: harmonic mean of reduced (6 parts: retain probability / ROUGE-L recall / truth ratio, world-facts "
        "option probability / ROUGE-L recall / truth ratio; no real-authors set offline), relative to the mean of the "
        "retain models'. World-facts options: the perturbed continuations scored under the same prompt (TOFU).",
        f"- Token convention open_unlearning; ROUGE-L recall of greedy answers up to {meta['size']['gen_tokens']} new "
        "tokens (TOFU uses 200: the full size does); KnowMem = MUSE knowledge memorisation, ROUGE-L F1, 32 new tokens.",
        "- PrivLeak (MUSE): Min-K% (k = 0.4) AUC, forget vs holdout authors, against retain model 0; 0 = like "
        "retraining, negative = under-unlearning.",
        "- Baselines: learning rate tuned over the size's grid on tuning authors (trained on, never graded) at IAU's "
        "budget there, target = the validation authors' truth ratios; then run once at IAU's budget on the graded split. "
        "IAU and IAU+LoRA: defaults, untuned. Passes and time: % of one retain model's fine-tuning (time: a shared "
        "machine, rough)."]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="the 2-CPU size (400 authors, ≈0.2M-parameter model)")
    p.add_argument("--micro", action="store_true", help="a minutes-long smoke run of the code path (no figures)")
    p.add_argument("--size", default=None, choices=list(SIZES), help="explicit size (overrides --quick/--micro)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--splits", nargs="+", default=["forget10"], choices=list(FORGET_SPLITS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--probes", action="store_true", help="run the robustness probes for every model")
    p.add_argument("--run-dir", default=None, help="cache of the pretrained and fine-tuned models (default /tmp/...)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    a = p.parse_args(argv)
    name = a.size or ("micro" if a.micro else "quick" if a.quick else "full")
    size = SIZES[name]
    torch.set_num_threads(a.threads)
    datasets.disable_progress_bars()
    # IAU first (and IAU+LoRA before the LoRA baselines, added when one runs): they set the budgets
    asked = set(a.methods) | ({"iau_lora"} if any(METHODS[m][2] and METHODS[m][3] for m in a.methods) else set())
    methods = ["iau", *sorted((m for m in asked if m != "iau"), key=lambda m: (m != "iau_lora", a.methods.index(m) if m in a.methods else 0))]
    run_dir = Path(a.run_dir or f"/tmp/llm_unlearning_{name}")
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    b = Bench(size, run_dir, log)
    runs: list[dict[str, Any]] = []
    for split in sorted(a.splits, key=lambda s: -FORGET_SPLITS[s]):
        for seed in a.seeds:
            runs.append(run_split(b, seed, split, methods, a.probes, log))
            meta = {"description": b.description, "seeds": a.seeds, "splits": a.splits, "size": size, "size_name": name,
                    "probes": a.probes, "seconds": time.perf_counter() - t0}
            md = markdown(runs, methods, meta) + ["", f"Run time so far: {meta['seconds'] / 60:.1f} min."]
            stem = "llm_unlearning" if name == "full" else f"llm_unlearning.{name}"
            write_results(stem, {"runs": runs, **meta}, md, quick=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
