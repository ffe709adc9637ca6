"""The LLM benchmark's grading pieces (benchmarks/llm_unlearning.py), on tiny inputs: options scored under the
row's own question, KS distance/floor reported without averaging p-values, PrivLeak on Min-K%."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from scipy.special import log_softmax
from scipy.stats import ks_2samp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import llm_unlearning as bench  # noqa: E402

from tiny import tiny_gpt2, word_tokenizer  # noqa: E402


def hand_loss(model, tok, question, answer):
    from hf_iau.qa import qa_example

    ex = qa_example(tok, question, answer)
    with torch.no_grad():
        lp = log_softmax(model(input_ids=torch.tensor([ex["input_ids"]])).logits.double().numpy()[0], -1)
    lab = ex["labels"]
    return float(np.mean([-lp[t - 1, lab[t]] for t in range(1, len(lab)) if lab[t] != -100]))


def test_options_are_scored_under_the_rows_own_question():
    """World facts (TOFU): each answer against the perturbed answers under the SAME question (the old benchmark
    scored other rows' answers under their own prompts, so every model scored chance)."""
    b = bench.Bench.__new__(bench.Bench)  # the scoring methods only need a tokenizer
    b.tok = word_tokenizer()
    model = tiny_gpt2().eval()
    ds = Dataset.from_dict({"question": ["w1 w2", "w3 w4 w5"], "answer": ["w6 w7", "w8"],
                            "perturbed_answers": [["w9 w10", "w11"], ["w12 w13 w14", "w15"]]})
    correct, wrong = b.truth_ratios(model, ds, "answer")
    for i, row in enumerate(ds):
        assert correct[i] == pytest.approx(hand_loss(model, b.tok, row["question"], row["answer"]), abs=1e-6)
        for j, w in enumerate(row["perturbed_answers"]):
            assert wrong[i, j] == pytest.approx(hand_loss(model, b.tok, row["question"], w), abs=1e-6)


def fake_eval(tr, utility=0.5, auc=0.6):
    return {"forget_tr": np.asarray(tr), "utility": utility, "auc": auc, "forget_rouge": 0.1, "forget_knowmem": 0.1,
            "forget_tr_score": 0.5, "forget_loss": 1.0, "parts": {"retain_probability": utility}}


def test_grade_reports_distance_n_and_one_p_value_and_the_floor():
    rng = np.random.default_rng(0)
    golds = [fake_eval(rng.normal(0, 1, 60), utility=u, auc=0.55) for u in (0.4, 0.6, 0.5)]
    model = fake_eval(rng.normal(0.8, 1, 60), utility=0.45, auc=0.9)
    g = bench.grade(model, golds)
    ds = [ks_2samp(model["forget_tr"], x["forget_tr"]) for x in golds]
    assert g["ks_distance"] == pytest.approx(np.mean([d.statistic for d in ds]), abs=1e-12)
    assert g["ks_p_value_r0"] == pytest.approx(ds[0].pvalue, abs=1e-12) and g["n"] == 60  # one test, not a mean
    assert g["utility_vs_retain"] == pytest.approx(0.45 / 0.5)
    assert g["privleak"] == pytest.approx(100 * ((1 - 0.9) - (1 - 0.55)) / (1 - 0.55))
    fl = bench.floor(golds)
    pairs = [ks_2samp(golds[i]["forget_tr"], golds[j]["forget_tr"]) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert fl["pairs"] == 3 and fl["ks_distance_mean"] == pytest.approx(np.mean([p.statistic for p in pairs]))
    assert fl["ks_p_value_min"] == pytest.approx(min(p.pvalue for p in pairs))
    assert not math.isnan(g["ks_distance_r0"])


def test_quick_size_is_tofu_scale_with_three_retain_seeds():
    for name in ("quick", "full"):
        size = bench.SIZES[name]
        forget10_authors = round(0.1 * size["authors"])
        assert forget10_authors >= 40 and 10 * forget10_authors >= 400  # 10 questions per author
        assert size["retain_seeds"] >= 3 and len(size["grid"]) >= 3
    assert bench.SIZES["full"]["gen_tokens"] == 200
