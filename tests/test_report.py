"""evaluate_unlearning on tiny LMs, text and image classifiers and a LoRA model, checked by hand."""

from __future__ import annotations

import copy
import json
import math
import os
import zlib

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from datasets import Dataset
from scipy.special import log_softmax, rel_entr, softmax
from scipy.stats import ks_2samp
from sklearn.metrics import accuracy_score
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
    ViTConfig,
    ViTForImageClassification,
    default_data_collator,
)

from hf_iau.report import UnlearningReport, evaluate_unlearning

from tiny import WORDS, word_tokenizer


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                      bos_token_id=2, eos_token_id=3, pad_token_id=0,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def fit(model: torch.nn.Module, batch: dict, steps: int, lr: float = 1e-2) -> torch.nn.Module:
    """Full-batch Adam on ``batch`` (memorises a few rows)."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def hand_auc(members, nonmembers) -> float:
    return float(np.mean([[1.0 if a > b else 0.5 if a == b else 0.0 for b in nonmembers] for a in members]))


# ------------------------------------------------------------------ causal LM


def lm_splits(tok):
    rng = np.random.default_rng(0)

    def rows(prefix, n):
        texts = [" ".join(rng.choice(WORDS, size=rng.integers(8, 13))) for _ in range(n)]
        enc = tok(texts)
        return Dataset.from_dict({"id": [f"{prefix}-row-{i:03d}" for i in range(n)], "text": texts,
                                  "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})

    return rows("forget", 8), rows("retain", 12), rows("test", 10)


@pytest.fixture(scope="module")
def lm_setup():
    tok = word_tokenizer()
    forget, retain, test = lm_splits(tok)
    collator = DataCollatorForLanguageModeling(tok, mlm=False)
    drop = ["id", "text"]
    train_all = collator([dict(r) for r in forget.remove_columns(drop)] + [dict(r) for r in retain.remove_columns(drop)])
    train_retain = collator([dict(r) for r in retain.remove_columns(drop)])
    original = fit(tiny_gpt2(0), train_all, 60)
    retrained = fit(tiny_gpt2(0), train_retain, 60)
    return tok, collator, forget, retain, test, original, retrained


def test_lm_report_matches_hand_computation(lm_setup, tmp_path):
    tok, collator, forget, retain, test, original, retrained = lm_setup
    unlearned = copy.deepcopy(original)
    with torch.no_grad():  # a stand-in "unlearning": a small perturbation
        for p in unlearned.parameters():
            p.add_(0.01 * torch.randn_like(p))
    report = evaluate_unlearning(unlearned, original, retrained, forget=forget, retain=retain, test=test,
                                 data_collator=collator, batch_size=4, tokenizer=tok, output_dir=tmp_path)
    m = report.metrics
    assert report.info["attacks"] == ["loss", "zlib", "min_k", "min_k_plus_plus"]
    assert set(report.info["skipped_attacks"]) == {"reference", "shadow"}
    assert report.info["n_retain"] == 10  # default sample: max(|forget|, |test|)

    # token-weighted loss, perplexity and token accuracy, by a hand loop over the whole forget set
    batch = collator([dict(r) for r in forget.remove_columns(["id", "text"])])
    with torch.no_grad():
        lp = log_softmax(original(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double().numpy(), -1)
    labels = batch["labels"].numpy()
    nll, hit, per_example = [], [], []
    for b in range(labels.shape[0]):
        row = [-lp[b, t - 1, labels[b, t]] for t in range(1, labels.shape[1]) if labels[b, t] != -100]
        hit += [lp[b, t - 1].argmax() == labels[b, t] for t in range(1, labels.shape[1]) if labels[b, t] != -100]
        nll += row
        per_example.append(np.mean(row))
    assert m["original/forget_loss"] == pytest.approx(np.mean(nll), rel=1e-5)
    assert m["original/forget_perplexity"] == pytest.approx(np.exp(np.mean(nll)), rel=1e-5)
    assert m["original/forget_accuracy"] == pytest.approx(np.mean(hit), rel=1e-6)

    # the original memorised the forget set; the retrained model never saw it
    assert m["original/forget_loss"] < m["original/test_loss"] - 1.0
    assert m["original/mia_loss_auc"] > 0.95
    assert m["retrained/mia_loss_auc"] < m["original/mia_loss_auc"] - 0.2
    np.testing.assert_allclose(report.scores["original"]["loss"]["forget"], -np.array(per_example), rtol=1e-5)
    assert m["original/mia_loss_auc"] == pytest.approx(
        hand_auc(report.scores["original"]["loss"]["forget"], report.scores["original"]["loss"]["test"]))
    # zlib scores (open-unlearning's convention, the default): loss / compressed length of every labelled
    # token's text (raw-text rows: the whole text)
    assert report.info["token_convention"] == "open_unlearning"
    zl = [len(zlib.compress(t.encode())) for t in forget["text"]]
    np.testing.assert_allclose(report.scores["original"]["zlib"]["forget"], -np.array(per_example) / zl, rtol=1e-5)

    # fidelity: gap = mean |Δ| over forget accuracy, test accuracy, loss-attack AUC
    keys = ["forget_accuracy", "test_accuracy", "mia_loss_auc"]
    assert report.info["gap_keys"] == keys
    want = np.mean([abs(m[f"original/{k}"] - m[f"retrained/{k}"]) for k in keys])
    assert m["original/gap_to_retrain"] == pytest.approx(want)
    assert m["gap_to_retrain"] == m["unlearned/gap_to_retrain"]
    assert m["original/kl_to_retrained_forget"] > m["original/kl_to_retrained_test"] > 0
    assert 0 < m["original/js_to_retrained_forget"] < math.log(2)
    # the only warnings: splits too small to read (8 forget, 10 test rows < 50)
    assert [w.split(" split")[0] for w in report.info["warnings"]] == ["forget", "test"]
    assert "(< 50)" in report.info["warnings"][0]

    md = report.to_markdown()
    assert "| metric | original | unlearned | retrained |" in md
    assert f"| forget loss | {m['original/forget_loss']:.4f} | {m['unlearned/forget_loss']:.4f} | {m['retrained/forget_loss']:.4f} |" in md
    assert "MIA AUC (min_k_plus_plus)" in md and "gap to retrain" in md

    # written files: aggregates only
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(files) == {"report.json", "report.md", "report.png"}
    assert files["report.png"][:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(files["report.json"])
    assert saved["metrics"]["original/forget_loss"] == pytest.approx(m["original/forget_loss"])
    assert saved["info"]["n_forget"] == 8 and len(saved["info"]["forget_fingerprint"]) == 64
    secrets = list(forget["id"]) + list(forget["text"])
    secrets += [" ".join(t.split()[i : i + 3]) for t in forget["text"] for i in range(len(t.split()) - 2)]
    for content in files.values():
        for s in secrets:
            assert s.encode() not in content


def test_lm_report_of_the_retrained_model_itself(lm_setup):
    tok, collator, forget, retain, test, original, retrained = lm_setup
    report = evaluate_unlearning(retrained, None, retrained, forget=forget, retain=retain, test=test,
                                 data_collator=collator, batch_size=8, tokenizer=tok, mia=("loss", "min_k"),
                                 max_examples=6, seed=3)
    m = report.metrics
    assert m["gap_to_retrain"] == 0.0
    assert m["unlearned/kl_to_retrained_test"] == pytest.approx(0.0, abs=1e-10)
    assert m["unlearned/js_to_retrained_forget"] == pytest.approx(0.0, abs=1e-10)
    assert report.info["n_forget"] == report.info["n_test"] == report.info["n_retain"] == 6
    assert report.models == ["unlearned", "retrained"]
    assert not any(k.startswith("original/") for k in m)
    assert "mia_zlib_auc" not in " ".join(m)
    same = evaluate_unlearning(retrained, None, retrained, forget=forget, retain=retain, test=test,
                               data_collator=collator, batch_size=8, tokenizer=tok, mia=("loss", "min_k"),
                               max_examples=6, seed=3)
    assert same.metrics == m  # seeded sampling
    with pytest.raises(ValueError, match="unknown MIA"):
        evaluate_unlearning(retrained, forget=forget, retain=retain, test=test, data_collator=collator, mia=("lira",))


def test_lora_reference_attack_defaults_to_disabled_adapter(lm_setup):
    from peft import LoraConfig, get_peft_model

    tok, collator, forget, retain, test, original, retrained = lm_setup
    lora = get_peft_model(copy.deepcopy(original),
                          LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True))
    report = evaluate_unlearning(lora, forget=forget, retain=retain, test=test, data_collator=collator,
                                 batch_size=4, mia=("loss", "reference", "zlib"))
    m = report.metrics
    assert report.info["reference_model"] == "unlearned model with its adapter disabled"
    assert report.info["skipped_attacks"] == {"zlib": "needs `tokenizer`"}
    # a fresh adapter (B = 0) leaves the model unchanged: target and reference losses agree
    np.testing.assert_allclose(report.scores["unlearned"]["reference"]["forget"], 0.0, atol=1e-5)
    assert m["unlearned/forget_loss"] == pytest.approx(evaluate_unlearning(
        original, forget=forget, retain=retain, test=test, data_collator=collator, mia=("loss",)
    ).metrics["unlearned/forget_loss"], rel=1e-6)
    # an explicit reference model (the retrained one): s = −(ℓ_target − ℓ_reference)
    report = evaluate_unlearning(original, forget=forget, retain=retain, test=test, data_collator=collator,
                                 mia=("loss", "reference"), reference_model=retrained)
    ref = evaluate_unlearning(retrained, forget=forget, retain=retain, test=test, data_collator=collator,
                              mia=("loss",))
    assert report.info["reference_model"] == "given"
    s = report.scores["unlearned"]
    np.testing.assert_allclose(s["reference"]["forget"], s["loss"]["forget"] - ref.scores["unlearned"]["loss"]["forget"],
                               rtol=1e-6, atol=1e-6)
    assert s["reference"]["forget"].shape == (8,)
    assert report.metrics["unlearned/mia_reference_auc"] > 0.9


# ------------------------------------------------------------------ classifiers


def cls_data(n: int, seed: int, prefix: str) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset.from_dict({
        "id": [f"{prefix}-{i:03d}" for i in range(n)],
        "input_ids": rng.integers(4, 64, size=(n, 10)).tolist(),
        "attention_mask": [[1] * 10] * n,
        "label": rng.integers(0, 3, size=n).tolist(),
    })


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def test_text_classifier_report_with_shadow_attack(tmp_path):
    forget, retain, test = cls_data(12, 1, "forget"), cls_data(24, 2, "retain"), cls_data(24, 3, "test")
    batch = lambda ds: default_data_collator([dict(r) for r in ds.remove_columns(["id"])])  # noqa: E731
    from datasets import concatenate_datasets

    original = fit(tiny_bert(0), batch(concatenate_datasets([forget, retain])), 60)
    retrained = fit(tiny_bert(0), batch(retain), 60)
    report = evaluate_unlearning(original, original, retrained, forget=forget, retain=retain, test=test,
                                 data_collator=default_data_collator, batch_size=8, seed=1)
    m = report.metrics
    assert report.info["attacks"] == ["loss", "shadow"]
    assert "perplexity" not in " ".join(m)
    with torch.no_grad():
        f_logits = original(**{k: v for k, v in batch(forget).items() if k != "labels"}).logits.numpy()
        t_logits = original(**{k: v for k, v in batch(test).items() if k != "labels"}).logits.numpy()
        t_gold = retrained(**{k: v for k, v in batch(test).items() if k != "labels"}).logits.numpy()
    assert m["original/forget_accuracy"] == pytest.approx(accuracy_score(forget["label"], f_logits.argmax(-1)))
    assert m["original/forget_accuracy"] == 1.0  # memorised random labels
    f_loss = -log_softmax(f_logits, -1)[np.arange(12), forget["label"]]
    assert m["original/forget_loss"] == pytest.approx(f_loss.mean(), rel=1e-5)
    assert m["original/kl_to_retrained_test"] == pytest.approx(
        rel_entr(softmax(t_gold, -1), softmax(t_logits, -1)).sum(-1).mean(), rel=1e-5)
    assert m["unlearned/kl_to_retrained_test"] == m["original/kl_to_retrained_test"]
    assert 0.0 <= m["original/mia_shadow_auc"] <= 1.0
    assert len(report.scores["original"]["shadow"]["test"]) == 12  # scored on the held-out half of test
    again = evaluate_unlearning(original, original, retrained, forget=forget, retain=retain, test=test,
                                data_collator=default_data_collator, batch_size=5, seed=1)
    for k, v in m.items():
        assert again.metrics[k] == pytest.approx(v, rel=1e-5, abs=1e-7)  # batch size does not matter

    report.save(tmp_path)
    for p in tmp_path.iterdir():
        content = p.read_bytes()
        assert not any(i.encode() in content for i in forget["id"])


def vit_data(n: int, seed: int, prefix: str) -> Dataset:
    """8×8 one-channel images whose label is the bright quadrant (0, 1 or 2)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    px = rng.normal(0, 0.3, size=(n, 1, 8, 8))
    for i, y in enumerate(labels):
        r, c = divmod(int(y), 2)
        px[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 2.0
    return Dataset.from_dict({"id": [f"{prefix}-{i}" for i in range(n)], "pixel_values": px.astype("float32").tolist(),
                              "label": labels.tolist()})


def test_image_classifier_collapse_is_flagged():
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=3))
    forget, retain, test = vit_data(10, 1, "forget"), vit_data(30, 2, "retain"), vit_data(30, 3, "test")
    train = default_data_collator([dict(r) for r in retain.remove_columns(["id"])])
    original = fit(model, train, 40)
    collapsed = copy.deepcopy(original)
    with torch.no_grad():
        collapsed.classifier.weight.zero_()
        collapsed.classifier.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))  # always class 0
    report = evaluate_unlearning(collapsed, original, forget=forget, retain=retain, test=test,
                                 data_collator=default_data_collator, batch_size=16)
    m = report.metrics
    assert m["original/test_accuracy"] > 0.8
    assert m["unlearned/test_accuracy"] == pytest.approx(np.mean(np.array(test["label"]) == 0))
    assert any(w.startswith("utility collapsed") for w in report.info["warnings"])
    assert "gap_to_retrain" not in m and "unlearned/kl_to_retrained_test" not in m
    assert set(report.info["skipped_attacks"]) == {"zlib", "min_k", "min_k_plus_plus", "reference"}
    assert isinstance(report, UnlearningReport) and "**Warnings**" in report.to_markdown()


# ------------------------------------------------------------------ QA data (prompt-masked), LLM metrics


def qa_splits(seed: int = 0):
    rng = np.random.default_rng(seed)

    def words(lo, hi):
        return " ".join(rng.choice(WORDS[:40], size=rng.integers(lo, hi)))

    def rows(prefix, n):
        answers = [words(3, 6) for _ in range(n)]
        return Dataset.from_dict({
            "id": [f"{prefix}-{i}" for i in range(n)],
            "question": [words(2, 4) for _ in range(n)],
            "answer": answers,
            "paraphrase": [" ".join(reversed(a.split())) for a in answers],
            "wrong_0": [words(3, 6) for _ in range(n)],
            "wrong_1": [words(3, 6) for _ in range(n)],
        })

    return rows("forget", 8), rows("retain", 8), rows("test", 8)


def hand_answer_loss(model, example) -> float:
    """Mean CE of the labelled (answer) tokens of one prompt-masked example, by a plain loop."""
    with torch.no_grad():
        lp = log_softmax(model(input_ids=torch.tensor([example["input_ids"]])).logits.double().numpy()[0], -1)
    lab = example["labels"]
    nll = [-lp[t - 1, lab[t]] for t in range(1, len(lab)) if lab[t] != -100]
    return float(np.mean(nll)) if nll else float("nan")


@pytest.fixture(scope="module")
def qa_setup():
    from hf_iau.collators import CausalLMCollator
    from hf_iau.qa import qa_to_lm_examples

    tok = word_tokenizer()
    raw = qa_splits()
    enc = [qa_to_lm_examples(d, tok, keep_columns=["question", "answer"]) for d in raw]
    collate = CausalLMCollator(tok)
    cols = ("input_ids", "attention_mask", "labels")

    def batch(*ds):
        return collate([{c: r[c] for c in cols} for d in ds for r in d])

    original = fit(tiny_gpt2(0), batch(enc[0], enc[1]), 120)
    retrained = fit(tiny_gpt2(0), batch(enc[1]), 120)
    return tok, raw, enc, collate, original, retrained


def test_qa_report_llm_metrics_against_references(qa_setup, tmp_path):
    from rouge_score import rouge_scorer

    from hf_iau.metrics import greedy_answers
    from hf_iau.qa import qa_to_lm_examples

    tok, raw, (forget, retain, test), collate, original, retrained = qa_setup
    unlearned = copy.deepcopy(original)
    with torch.no_grad():
        for p in unlearned.parameters():
            p.add_(0.02 * torch.randn_like(p))
    # one forget row whose answer was cut away entirely: no labelled token
    empty = Dataset.from_dict({"id": ["forget-empty"], "question": ["w1"], "answer": ["w2"],
                               "input_ids": [[1, 5, 1]], "attention_mask": [[1, 1, 1]], "labels": [[-100, -100, -100]]})
    from datasets import concatenate_datasets

    forget_plus = concatenate_datasets([forget, empty.cast(forget.features)])
    f_raw = raw[0]
    para = qa_to_lm_examples(f_raw, tok, answer_column="paraphrase")
    pert = [qa_to_lm_examples(f_raw, tok, answer_column=c) for c in ("wrong_0", "wrong_1")]
    nan_row = Dataset.from_dict({"id": ["forget-empty"], "input_ids": [[1, 5, 1]], "attention_mask": [[1, 1, 1]],
                                 "labels": [[-100, -100, -100]]}).cast(para.features)
    tr_data = {"forget": (concatenate_datasets([para, nan_row]), [concatenate_datasets([d, nan_row]) for d in pert])}
    report = evaluate_unlearning(unlearned, original, retrained, forget=forget_plus, retain=retain, test=test,
                                 data_collator=collate, batch_size=4, tokenizer=tok, rouge_max_new_tokens=8,
                                 truth_ratio_data=tr_data, output_dir=tmp_path)
    m, info = report.metrics, report.info
    assert info["skipped_rows"] == {"forget": 1, "retain": 0, "test": 0}
    assert info["min_k_fraction"] == 0.4 and info["token_convention"] == "open_unlearning"
    assert len(report.scores["unlearned"]["min_k"]["forget"]) == 8  # the empty row is not scored
    assert np.isfinite(report.scores["unlearned"]["loss"]["forget"]).all()

    # truth ratio by hand: exp(ℓ_para − mean ℓ_pert) per forget question, then mean min(R, 1/R)
    def ratios(model):
        lp = [hand_answer_loss(model, r) for r in para]
        lw = [[hand_answer_loss(model, r) for r in d] for d in pert]
        return np.array([math.exp(lp[i] - (lw[0][i] + lw[1][i]) / 2) for i in range(len(para))])

    tr = {name: ratios(mdl) for name, mdl in (("unlearned", unlearned), ("retrained", retrained))}
    assert m["unlearned/forget_truth_ratio"] == pytest.approx(np.mean(np.minimum(tr["unlearned"], 1 / tr["unlearned"])), rel=1e-6)
    assert info["forget_quality_statistic"] == "truth_ratio"
    assert m["unlearned/forget_quality"] == pytest.approx(ks_2samp(tr["unlearned"], tr["retrained"]).pvalue, rel=1e-6)
    assert m["retrained/forget_quality"] == 1.0

    # PrivLeak on the Min-K% AUC, MUSE's orientation (1 − AUC)
    assert info["privleak_attack"] == "min_k"
    a_u, a_r = 1 - m["unlearned/mia_min_k_auc"], 1 - m["retrained/mia_min_k_auc"]
    assert m["unlearned/privleak"] == pytest.approx(100 * (a_u - a_r) / a_r, rel=1e-9)
    assert m["retrained/privleak"] == 0.0

    # ROUGE-L recall of greedy answers (rouge-score) and the answer probability, by hand
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    gen = greedy_answers(original, tok, forget_plus["question"], max_new_tokens=8)
    want = np.mean([scorer.score(a, g)["rougeL"].recall for g, a in zip(gen, forget_plus["answer"])])
    assert m["original/forget_rouge_l_recall"] == want  # exactly
    assert m["original/forget_rouge_l_recall"] > m["retrained/forget_rouge_l_recall"]  # the original memorised
    prob = np.mean([math.exp(-hand_answer_loss(retrained, r)) for r in retain])
    assert m["retrained/retain_probability"] == pytest.approx(prob, rel=1e-6)
    assert info["utility_keys"] == ["retain_probability", "retain_rouge_l_recall"]
    assert info["model_utility"] == "reduced (2 parts: retain_probability, retain_rouge_l_recall)"
    assert "reduced (2 parts" in report.to_markdown() and "up to 8 new tokens" in info["conventions"]["ROUGE"]
    u = [m["retrained/retain_probability"], m["retrained/retain_rouge_l_recall"]]
    assert m["retrained/model_utility"] == pytest.approx(2 / (1 / u[0] + 1 / u[1]), rel=1e-12)
    assert 0 <= m["unlearned/forget_exact_memorisation"] <= 1 and 0 <= m["unlearned/forget_extraction_strength"] <= 1
    assert m["original/forget_exact_memorisation"] > m["retrained/forget_exact_memorisation"]

    md = report.to_markdown()
    assert "| forget quality (KS p-value) |" in md and "| PrivLeak (%) |" in md and "forget 1" in md
    # no question, answer, generated text or id of the forget set in any file
    secrets = [s for s in list(f_raw["answer"]) + list(f_raw["question"]) + list(f_raw["id"]) + gen if len(s.split()) >= 2]
    for p in tmp_path.iterdir():
        content = p.read_bytes()
        for s in secrets:
            assert s.encode() not in content


def test_qa_report_open_unlearning_convention_and_loss_forget_quality(qa_setup):
    from hf_iau.metrics import lm_example_stats

    tok, raw, (forget, retain, test), collate, original, retrained = qa_setup
    with pytest.warns(FutureWarning, match="token_convention"):  # the old option name works one more release
        report = evaluate_unlearning(original, None, retrained, forget=forget, retain=retain, test=test,
                                     data_collator=collate, batch_size=3, tokenizer=tok, rouge_max_new_tokens=0,
                                     mia_convention="open_unlearning")
    m, s = report.metrics, report.scores["unlearned"]
    ou = lm_example_stats(original, forget, tokenizer=tok, convention="open_unlearning")
    np.testing.assert_allclose(s["min_k"]["forget"], ou["min_k"], rtol=1e-6)
    np.testing.assert_allclose(s["min_k_plus_plus"]["forget"], ou["min_k_plus_plus"], rtol=1e-6)
    # ZLib in open-unlearning's convention: every labelled token (answer + EOS, special tokens dropped)
    zl = np.array([len(zlib.compress(a.encode())) for a in raw[0]["answer"]])
    np.testing.assert_allclose(s["zlib"]["forget"], s["loss"]["forget"] / zl, rtol=1e-9)
    assert report.info["skipped_metrics"] == {"rouge": "rouge_max_new_tokens=0"}
    # without truth ratios, forget quality is the KS p-value of the per-example answer losses
    assert report.info["forget_quality_statistic"] == "loss"
    loss_u = [hand_answer_loss(original, r) for r in forget]
    loss_r = [hand_answer_loss(retrained, r) for r in forget]
    assert m["unlearned/forget_quality"] == pytest.approx(ks_2samp(loss_u, loss_r).pvalue, rel=1e-6)
    assert m["unlearned/forget_quality"] < 0.05  # the original memorised the forget answers
    with pytest.raises(ValueError, match="token_convention"):
        evaluate_unlearning(original, forget=forget, retain=retain, test=test, data_collator=collate,
                            token_convention="tofu")
    with pytest.raises(ValueError, match="truth_ratio_data"):
        evaluate_unlearning(original, forget=forget, retain=retain, test=test, data_collator=collate,
                            truth_ratio_data={"forget": (forget.select([0]), [forget])})


def test_qa_report_nine_part_utility_rouge_from_tokens_verdict_and_summary(qa_setup, tmp_path):
    """TOFU's 9-part utility (retain, real authors, world facts × probability, ROUGE, truth ratio) by hand; ROUGE
    of rows without text columns comes from the prompt-masked tokens; the verdict and summary hold forget quality."""
    from scipy.stats import hmean

    from hf_iau.metrics import greedy_continuations, rouge_l_recall
    from hf_iau.qa import qa_to_lm_examples

    tok, raw, (forget, retain, test), collate, original, retrained = qa_setup
    forget_tokens = forget.remove_columns(["question", "answer"])  # as the CLI's QA recipe hands it over
    r_raw = raw[1]
    tr_data = {"retain": (qa_to_lm_examples(r_raw, tok, answer_column="paraphrase"),
                          [qa_to_lm_examples(r_raw, tok, answer_column=c) for c in ("wrong_0", "wrong_1")])}
    sets = {name: raw[2].select(range(lo, lo + 4)).map(lambda r: {"perturbed_answer": [r["wrong_0"], r["wrong_1"]]})
            for name, lo in (("real_authors", 0), ("world_facts", 4))}
    report = evaluate_unlearning(original, original, retrained, forget=forget_tokens, retain=retain, test=test,
                                 data_collator=collate, batch_size=4, tokenizer=tok, rouge_max_new_tokens=8,
                                 truth_ratio_data=tr_data, utility_data=sets, wall_times={"unlearned": 1.0, "retrained": 8.0},
                                 output_dir=tmp_path)
    m, info = report.metrics, report.info
    assert info["model_utility"] == "TOFU (9 parts)" and len(info["utility_keys"]) == 9
    assert m["retrained/model_utility"] == pytest.approx(hmean([m[f"retrained/{k}"] for k in info["utility_keys"]]), rel=1e-12)
    # real authors: option probability and truth ratio of the answer against the perturbed answers, same question
    ra = sets["real_authors"]
    lc = [hand_answer_loss(retrained, r) for r in qa_to_lm_examples(ra, tok)]
    lw = [[hand_answer_loss(retrained, r) for r in qa_to_lm_examples(ra, tok, answer_column=c)] for c in ("wrong_0", "wrong_1")]
    pc, pw = np.exp(-np.array(lc)), np.exp(-np.array(lw))
    assert m["retrained/real_authors_probability"] == pytest.approx(np.mean(pc / (pc + pw.sum(0))), rel=1e-6)
    ratio = np.exp(-np.array(lw).mean(0)) / pc
    assert m["retrained/real_authors_truth_ratio"] == pytest.approx(np.mean(np.maximum(0, 1 - ratio)), rel=1e-6)
    # ROUGE from tokens: the prompt is the unlabelled prefix, the reference the labelled answer decoded
    prompts = [r["input_ids"][: r["labels"].index(next(y for y in r["labels"] if y != -100))] for r in forget]
    refs = [tok.decode([y for y in r["labels"] if y != -100], skip_special_tokens=True) for r in forget]
    gen = greedy_continuations(original, tok, prompts, max_new_tokens=8)
    assert m["original/forget_rouge_l_recall"] == pytest.approx(np.mean(rouge_l_recall(gen, refs)), abs=1e-12)
    assert "prompt-masked tokens" in info["conventions"]["ROUGE"]
    # the verdict: forgetting (KS D, p, n), utility, privacy, cost; the summary holds forget quality
    v = info["verdict"]
    assert v.startswith("forgetting: distinguishable from the retrained model (KS D")
    assert f"n {len(forget)}" in v and "utility: " in v and "PrivLeak" in v and "cost: 12.5% of the retrain's time" in v
    s = report.summary()
    assert s["unlearned"]["forget_quality"] == m["unlearned/forget_quality"] < 0.05
    assert s["unlearned"]["forget_ks_distance"] == m["unlearned/forget_ks_distance"] > 0.5
    assert s["retrained"]["forget_ks_distance"] == 0.0 and s["verdict"] == v
    md = (tmp_path / "report.md").read_text()
    assert f"**Verdict:** {v}" in md and "**Conventions**" in md and "losss" not in md
    assert "forget quality: two-sample KS test of the forget set's per-example truth ratio" not in md  # by loss here
    assert "per-example loss values" in md and "PrivLeak: MUSE" in md and "| forget KS distance |" in md
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["info"]["conventions"]["tokens"].startswith("open_unlearning")


def test_plot_axes_say_which_side_is_member_and_mark_the_retrained_value(lm_setup, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    tok, collator, forget, retain, test, original, retrained = lm_setup
    report = evaluate_unlearning(original, None, retrained, forget=forget, retain=retain, test=test,
                                 data_collator=collator, batch_size=8, tokenizer=tok, mia=("loss", "min_k"))
    figs = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figs.append(self))
    report.plot(tmp_path / "r.png")
    axes = figs[0].axes
    hist = [ax for ax in axes if ax.get_xlabel()]
    assert len(hist) == 4 and all("higher → more likely member" in ax.get_xlabel() for ax in hist)
    assert all(ax.get_ylabel() == "examples" for ax in hist)
    assert "(retrained " in hist[0].get_title()
    legend = [t.get_text() for t in hist[0].get_legend().get_texts()]
    assert legend == ["forget (members)", "test (non-members)"]
    bars = axes[-1]
    assert "retrained (target)" in [t.get_text() for t in bars.get_legend().get_texts()]
    assert "target" in bars.get_ylabel()
