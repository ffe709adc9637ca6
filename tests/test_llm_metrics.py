"""LLM metrics against independent references: hand loops over a tiny model, scipy, rouge-score."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from scipy.special import log_softmax
from scipy.stats import ks_2samp

from hf_iau.collators import CausalLMCollator
from hf_iau.metrics import (
    answer_probability,
    exact_memorisation,
    extraction_strength,
    forget_quality,
    greedy_answers,
    lm_example_stats,
    min_k_plus_plus_scores,
    min_k_scores,
    model_utility,
    option_probability,
    privleak,
    rouge_l_recall,
    token_log_probs,
    truth_ratio,
    truth_ratio_score,
)
from hf_iau.qa import qa_prompt_ids, qa_to_lm_examples

from tiny import tiny_gpt2, tiny_llama, word_tokenizer

QA = {
    "id": [0, 1, 2, 3, 4],
    "question": ["w1 w2 w3", "w4 w5", "w6", "w7 w8 w9 w10", "w11 w12"],
    "answer": ["w20 w21 w22", "w23", "w24 w25 w26 w27 w28", "w29 w30", "w31 w32 w33"],
}


_CACHE: dict = {}


def memorised(make_model=tiny_gpt2, steps: int = 150):
    """A tiny LM trained on rows 0-2's answers (prompt-masked): a real mix of hits and misses (cached)."""
    if make_model not in _CACHE:
        _CACHE[make_model] = _train(make_model, steps)
    return _CACHE[make_model]


def _train(make_model, steps):
    tok = word_tokenizer()
    ds = qa_to_lm_examples(Dataset.from_dict(QA), tok)
    model = make_model()
    batch = CausalLMCollator(tok)([{k: r[k] for k in ("input_ids", "labels")} for r in ds.select([0, 1, 2])])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), tok, ds


# ------------------------------------------------------------------ hand references


def hand_tokens(lp, ids, labels, convention):
    """(log-prob rows [n, V], targets [n]) of the scored tokens of one row, by a plain loop.

    muse: every t >= 1 with labels[t] != -100, target labels[t].
    open_unlearning (as its tokenwise_logprobs reads): labelled positions minus the last one; the
    span from the first to the last remaining one; shifted rows start-1 .. end-1, targets input_ids.
    """
    if convention == "muse":
        ts = [t for t in range(1, len(labels)) if labels[t] != -100]
        return [lp[t - 1] for t in ts], [labels[t] for t in ts]
    actual = [t for t in range(len(labels)) if labels[t] != -100][:-1]
    if not actual:
        return [], []
    start, end = actual[0], actual[-1]
    return [lp[t - 1] for t in range(start, end + 1)], [ids[t] for t in range(start, end + 1)]


def hand_min_k(rows, targets, k, plus_plus, ou):
    scores = []
    for row, y in zip(rows, targets):
        if not plus_plus:
            scores.append(row[y])
            continue
        p = np.exp(row)
        mu = (p * row).sum()
        var = (p * row**2).sum() - mu**2
        sigma = math.sqrt(max(var, 1e-6)) if ou else math.sqrt(max(var, 0.0))
        scores.append((row[y] - mu) / sigma)
    if not scores:
        return float("nan")
    m = max(1, int(len(scores) * k))
    return float(np.mean(sorted(scores)[:m]))


def hand_es(rows, targets, ou):
    n = len(rows)
    if n == 0:
        return 0.0 if ou else float("nan")
    preds = [int(np.argmax(r)) for r in rows]
    last = n - 1 if ou else n
    for k in range(0, last + 1):
        if preds[k:] == list(targets[k:]):
            break
    return 1 - k / n


@pytest.mark.parametrize("convention", ["muse", "open_unlearning"])
@pytest.mark.parametrize("make_model", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_token_metrics_match_hand_loops(make_model, convention):
    model, tok, ds = memorised(make_model)
    rows = [{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in ds]
    rows.append({"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, -100, -100]})  # no answer
    batch = CausalLMCollator(tok)(rows)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lp_all = log_softmax(logits.double().numpy(), -1)
    ids, labels = batch["input_ids"].numpy(), batch["labels"].numpy()
    ou = convention == "open_unlearning"
    stats = token_log_probs(logits, batch["labels"], batch["input_ids"], convention)
    got = {
        "min_k": min_k_scores(stats, 0.4),
        "min_k_pp": min_k_plus_plus_scores(stats, 0.4),
        "em": exact_memorisation(logits, batch["labels"], batch["input_ids"], convention),
        "es": extraction_strength(logits, batch["labels"], batch["input_ids"], convention),
    }
    es_values = []
    for i in range(len(rows)):
        r, y = hand_tokens(lp_all[i], ids[i], labels[i], convention)
        want_em = float(np.mean([np.argmax(a) == b for a, b in zip(r, y)])) if r else float("nan")
        want = {"min_k": hand_min_k(r, y, 0.4, False, ou), "min_k_pp": hand_min_k(r, y, 0.4, True, ou),
                "em": want_em, "es": hand_es(r, y, ou)}
        for key, value in want.items():
            if math.isnan(value):
                assert math.isnan(got[key][i]), (key, i)
            else:
                assert got[key][i] == pytest.approx(value, rel=1e-6, abs=1e-6), (key, i)  # float32 model
        es_values.append(got["es"][i])
        n_scored = len(y)
        n_labelled = int((labels[i] != -100).sum())
        assert n_scored == (max(n_labelled - 1, 0) if ou else n_labelled)  # OU drops the last (EOS) token
    # the memorised rows are extracted in full, the others are not (the test has teeth)
    assert es_values[0] == 1.0 and min(es_values[3:5]) < 1.0
    assert got["em"][0] == 1.0 and got["em"][3] < 1.0


def test_lm_example_stats_one_pass_and_empty_rows():
    model, tok, ds = memorised()
    rows = [{k: r[k] for k in ("input_ids", "labels")} for r in ds] + [{"input_ids": [5, 6], "labels": [-100, -100]}]
    for convention in ("muse", "open_unlearning"):
        s = lm_example_stats(model, rows, tokenizer=tok, batch_size=4, convention=convention)
        again = lm_example_stats(model, rows, batch_size=2, convention=convention)  # no tokenizer, other batches
        for key in s:
            np.testing.assert_allclose(s[key], again[key], rtol=1e-5, atol=1e-6, err_msg=key)
        assert math.isnan(s["loss"][-1]) and math.isnan(s["min_k"][-1]) and s["count"][-1] == 0
        for i, r in enumerate(rows[:-1]):
            with torch.no_grad():
                lp = log_softmax(model(input_ids=torch.tensor([r["input_ids"]])).logits.double().numpy()[0], -1)
            labelled = [t for t in range(1, len(r["labels"])) if r["labels"][t] != -100]
            nll = -sum(lp[t - 1, r["labels"][t]] for t in labelled)
            n = len(labelled)  # both conventions: the predicted labelled tokens
            assert s["loss"][i] == pytest.approx(nll / n, rel=1e-5)
            assert s["probability"][i] == pytest.approx(math.exp(-nll / n), rel=1e-5)
    ds_stats = lm_example_stats(model, ds, tokenizer=tok)  # a Dataset works too (extra columns ignored)
    np.testing.assert_allclose(ds_stats["loss"], lm_example_stats(model, rows[:-1])["loss"], rtol=1e-6)


# ------------------------------------------------------------------ aggregates


def test_privleak_as_muse_and_open_unlearning_define_it():
    # our AUC: members (forget) scored higher. A memorising model (AUC 0.95) vs retrained (0.45)
    assert privleak(0.95, 0.45) == pytest.approx(100 * ((1 - 0.95) - (1 - 0.45)) / (1 - 0.45))
    assert privleak(0.95, 0.45) < -90  # strongly negative: under-unlearning, as MUSE reads it
    assert privleak(0.45, 0.45) == 0.0
    rng = np.random.default_rng(0)
    for auc_u, auc_r in rng.uniform(0.05, 0.95, size=(20, 2)):
        # open-unlearning's privleak: its AUC a (= ours) becomes 1 - a, then 100 (s - r) / (r + 1e-10)
        s, r = 1 - auc_u, 1 - auc_r
        assert privleak(auc_u, auc_r) == pytest.approx((s - r) / (r + 1e-10) * 100, abs=1e-6)


def test_forget_quality_is_the_ks_p_value():
    rng = np.random.default_rng(1)
    a, b, c = rng.normal(0, 1, 40), rng.normal(0, 1, 35), rng.normal(1.5, 1, 35)
    assert forget_quality(a, b) == pytest.approx(ks_2samp(a, b).pvalue, abs=1e-12)
    assert forget_quality(a, c) < 0.05 < forget_quality(a, b)
    # open-unlearning's TOFU helper tests 1/(tr + 1e-10): the same p-value (monotone transform)
    tr_u, tr_r = np.exp(a), np.exp(b)
    assert forget_quality(tr_u, tr_r) == pytest.approx(ks_2samp(1 / (tr_u + 1e-10), 1 / (tr_r + 1e-10)).pvalue, abs=1e-9)
    assert forget_quality(np.r_[a, np.nan], b) == pytest.approx(ks_2samp(a, b).pvalue)  # NaN rows skipped
    assert math.isnan(forget_quality([], b))


def test_truth_ratio_and_its_aggregates():
    rng = np.random.default_rng(2)
    para, pert = rng.uniform(0.5, 3, 6), rng.uniform(0.5, 3, (6, 4))
    tr = truth_ratio(para, pert)
    for i in range(6):
        p_para = math.exp(-para[i])
        p_pert = math.prod(math.exp(-x) for x in pert[i]) ** (1 / 4)  # geometric mean of normalised probs
        assert tr[i] == pytest.approx(p_pert / p_para, rel=1e-12)
        # open-unlearning: exp(-mean wrong avg_loss) / (exp(-correct avg_loss) + 1e-10)
        assert tr[i] == pytest.approx(math.exp(-pert[i].mean()) / (math.exp(-para[i]) + 1e-10), abs=1e-6)
    assert truth_ratio_score(tr, "forget") == pytest.approx(np.mean([min(x, 1 / x) for x in tr]))
    assert truth_ratio_score(tr, "retain") == pytest.approx(np.mean([max(0.0, 1 - x) for x in tr]))
    assert truth_ratio_score([1.0, 1.0], "forget") == 1.0
    with pytest.raises(ValueError):
        truth_ratio_score(tr, "test")
    with pytest.raises(ValueError):
        truth_ratio(para, pert[:3])


def test_probabilities_and_model_utility():
    np.testing.assert_allclose(answer_probability([0.0, math.log(2)]), [1.0, 0.5])
    op = option_probability([math.log(2)], [[math.log(4), math.log(4)]])  # 0.5 / (0.5 + 0.25 + 0.25)
    assert op[0] == pytest.approx(0.5)
    vals = {"retain_prob": 0.8, "retain_rouge": 0.5, "retain_tr": 0.4}
    assert model_utility(vals) == pytest.approx(3 / (1 / 0.8 + 1 / 0.5 + 1 / 0.4))
    assert model_utility([0.3, 0.0]) == 0.0
    with pytest.raises(ValueError, match="finite"):
        model_utility([0.3, float("nan")])


def test_rouge_l_recall_equals_rouge_score():
    from rouge_score import rouge_scorer

    preds = ["the cat sat on the mat", "w1 w2 w3", "", "running dogs"]
    refs = ["the cat was on a mat", "w1 w3", "something", "the dog runs"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = [scorer.score(r, p)["rougeL"].recall for p, r in zip(preds, refs)]
    assert rouge_l_recall(preds, refs).tolist() == want  # exactly
    assert want[1] == 1.0 and want[2] == 0.0
    assert rouge_l_recall(["the cat sat"], ["the cat was here"])[0] == 0.5  # LCS 2 of 4 reference tokens


def test_greedy_answers_match_a_hand_greedy_loop():
    model, tok, ds = memorised()
    questions = QA["question"]
    got = greedy_answers(model, tok, questions, max_new_tokens=6, batch_size=3)
    assert got == greedy_answers(model, tok, questions, max_new_tokens=6, batch_size=1)
    for q, answer in zip(questions, got):
        ids = qa_prompt_ids(tok, q)
        new = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
                if nxt == tok.eos_token_id:
                    break
                new.append(nxt)
        assert answer == tok.decode(new, skip_special_tokens=True).strip()
    # the memorised answers come back verbatim: ROUGE-L recall 1 on them
    rouge = rouge_l_recall(got, QA["answer"])
    assert rouge[:3].tolist() == [1.0, 1.0, 1.0]
    assert got[0] == QA["answer"][0]


# ------------------------------------------------------------------ conventions and defaults (issue 18)


def hand_greedy(model, ids, steps, eos):
    """Greedy decoding by a plain loop: argmax of the last position, stop at EOS."""
    new = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(input_ids=torch.tensor([list(ids) + new])).logits[0, -1].argmax())
            if nxt == eos:
                break
            new.append(nxt)
    return new


def hand_lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def hand_rouge_l(pred, ref):
    """(recall, F1) of ROUGE-L from its definition: LCS over lower-cased alphanumeric tokens (no stemming)."""
    import re

    p, r = (re.sub(r"[^a-z0-9]+", " ", s.lower()).split() for s in (pred, ref))
    lcs = hand_lcs(p, r)
    if lcs == 0:
        return 0.0, 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return rec, 2 * prec * rec / (prec + rec)


def test_default_token_convention_is_open_unlearning_and_the_old_name_warns():
    from hf_iau.metrics import DEFAULT_CONVENTION, resolve_convention, scored_token_mask

    assert DEFAULT_CONVENTION == "open_unlearning"
    labels = torch.tensor([[-100, -100, 5, 6, 7, 3]])
    assert scored_token_mask(labels).tolist() == scored_token_mask(labels, "open_unlearning").tolist()
    assert scored_token_mask(labels).sum() == 3 and scored_token_mask(labels, "muse").sum() == 4  # OU drops EOS
    with pytest.warns(FutureWarning, match="'muse'"):
        assert resolve_convention("hf_iau") == "muse"
    with pytest.warns(FutureWarning):
        old = scored_token_mask(labels, "hf_iau")
    assert old.tolist() == scored_token_mask(labels, "muse").tolist()
    with pytest.raises(ValueError, match="open_unlearning, muse"):
        resolve_convention("tofu")


def test_raw_text_loss_divides_by_the_predicted_tokens_in_both_conventions():
    """A raw-text row labels position 0, which is never predicted: the mean loss is over n = len − 1 tokens
    (the open_unlearning mode used to divide by n + 1)."""
    model, tok, _ = memorised()
    ids = [5, 9, 12, 7, 20, 3]
    with torch.no_grad():
        lp = log_softmax(model(input_ids=torch.tensor([ids])).logits.double().numpy()[0], -1)
    want = -sum(lp[t - 1, ids[t]] for t in range(1, len(ids))) / (len(ids) - 1)
    for convention in ("open_unlearning", "muse"):
        s = lm_example_stats(model, [{"input_ids": ids, "labels": ids}], convention=convention)
        assert s["loss"][0] == pytest.approx(want, abs=1e-6) and s["count"][0] == len(ids) - 1


def test_generation_defaults_tofu_200_and_muse_128_32():
    import inspect

    from hf_iau.metrics import knowledge_memorisation, verbatim_memorisation
    from hf_iau.report import evaluate_unlearning

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    assert default(greedy_answers, "max_new_tokens") == 200
    assert default(evaluate_unlearning, "rouge_max_new_tokens") == 200
    assert default(evaluate_unlearning, "token_convention") == "open_unlearning"
    assert default(verbatim_memorisation, "max_new_tokens") == 128
    assert default(knowledge_memorisation, "max_new_tokens") == 32


def test_rouge_l_f1_and_recall_match_the_lcs_definition():
    from hf_iau.metrics import rouge_l_f1

    preds = ["the cat sat on the mat", "w1 w2 w3", "", "Running, dogs!", "a b c d e f"]
    refs = ["the cat was on a mat", "w1 w3", "something", "the dog runs", "f e d c b a"]
    want = [hand_rouge_l(p, r) for p, r in zip(preds, refs)]
    np.testing.assert_allclose(rouge_l_recall(preds, refs, use_stemmer=False), [w[0] for w in want], atol=1e-12)
    np.testing.assert_allclose(rouge_l_f1(preds, refs, use_stemmer=False), [w[1] for w in want], atol=1e-12)
    assert want[0][1] == pytest.approx(2 * (4 / 6) * (4 / 6) / (4 / 6 + 4 / 6))  # LCS "the cat on mat"


def test_knowledge_and_verbatim_memorisation_match_a_hand_greedy_loop():
    from hf_iau.metrics import knowledge_memorisation, verbatim_memorisation, verbatim_pairs

    model, tok, _ = memorised()
    got = knowledge_memorisation(model, tok, QA["question"], QA["answer"], max_new_tokens=6, batch_size=2)
    for i, q in enumerate(QA["question"]):
        text = tok.decode(hand_greedy(model, qa_prompt_ids(tok, q), 6, tok.eos_token_id), skip_special_tokens=True)
        assert got[i] == pytest.approx(hand_rouge_l(text.strip(), QA["answer"][i])[1], abs=1e-6)
    assert got[:3].tolist() == [1.0, 1.0, 1.0]  # the memorised answers
    texts = [q + " " + a for q, a in zip(QA["question"], QA["answer"])]
    prompts, conts = verbatim_pairs(tok, texts, prompt_tokens=1, continuation_tokens=4)
    assert prompts[0] == tok("w1", add_special_tokens=False)["input_ids"] and conts[0] == "w2 w3 w20 w21"
    vm = verbatim_memorisation(model, tok, prompts, conts, max_new_tokens=4, batch_size=3)
    for i, p in enumerate(prompts):
        text = tok.decode(hand_greedy(model, p, 4, tok.eos_token_id), skip_special_tokens=True)
        assert vm[i] == pytest.approx(hand_rouge_l(text.strip(), conts[i])[1], abs=1e-6)
    with pytest.raises(ValueError, match="prompt_tokens=3"):
        verbatim_pairs(tok, ["w1 w2"], prompt_tokens=3)


def test_ks_test_reports_distance_n_and_p():
    from hf_iau.metrics import ks_test

    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 30), rng.normal(0.5, 1, 25)
    grid = np.sort(np.r_[a, b])
    d = max(abs(np.searchsorted(np.sort(a), x, "right") / 30 - np.searchsorted(np.sort(b), x, "right") / 25) for x in grid)
    got = ks_test(np.r_[a, np.nan], b)
    assert got["ks_distance"] == pytest.approx(d, abs=1e-12) and got["n_model"] == 30 and got["n_retrained"] == 25
    assert got["p_value"] == pytest.approx(ks_2samp(a, b).pvalue, abs=1e-12) == forget_quality(a, b)


def test_tofu_nine_part_model_utility_and_reduced_label():
    from hf_iau.metrics import TOFU_UTILITY_PARTS, utility_label

    assert len(TOFU_UTILITY_PARTS) == 9 and TOFU_UTILITY_PARTS[3] == "real_authors_probability"
    vals = np.linspace(0.2, 0.9, 9)
    assert model_utility(dict(zip(TOFU_UTILITY_PARTS, vals))) == pytest.approx(9 / np.sum(1 / vals), abs=1e-12)
    assert utility_label(TOFU_UTILITY_PARTS) == "TOFU (9 parts)"
    assert utility_label(TOFU_UTILITY_PARTS[:3]).startswith("reduced (3 parts: retain_probability")
    # option probability as open-unlearning: correct / (correct + Σ wrong + 1e-10), probabilities exp(−mean loss)
    rng = np.random.default_rng(5)
    lc, lw = rng.uniform(0.2, 3, 7), rng.uniform(0.2, 3, (7, 3))
    want = np.exp(-lc) / (np.exp(-lc) + np.exp(-lw).sum(1) + 1e-10)
    np.testing.assert_allclose(option_probability(lc, lw), want, atol=1e-6)


def test_greedy_continuations_stop_at_the_models_last_position():
    """TOFU's 200 new tokens on a model with 16 learned positions: it generates up to its last position (before, an
    IndexError in the position embedding stopped the whole report)."""
    from tiny import tiny_gpt2, word_tokenizer

    from hf_iau.metrics.llm import greedy_continuations

    from transformers import GPT2Config, GPT2LMHeadModel

    tok = word_tokenizer()
    base = tiny_gpt2().config.to_dict()
    model = GPT2LMHeadModel(GPT2Config(**{**base, "n_positions": 16, "eos_token_id": None}))  # never stops early
    out = greedy_continuations(model, tok, [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]], max_new_tokens=200)
    assert len(out) == 1 and 0 < len(tok(out[0])["input_ids"]) <= 6
    assert greedy_continuations(model, tok, [list(range(4, 20))], max_new_tokens=200) == [""]  # no room left
