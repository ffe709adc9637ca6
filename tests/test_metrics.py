"""Each metric against an independent reference (sklearn, scipy, numpy, hand loops), with numbers."""

from __future__ import annotations

import math
import os
import zlib

os.environ["HF_HUB_OFFLINE"] = "1"  # the local evaluate modules must load without the Hub

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import log_softmax, rel_entr, softmax
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score

from hf_iau.losses import evaluate_losses
from hf_iau.metrics import (
    EVALUATE_MODULES,
    accuracy,
    canary_exposure,
    canary_rank,
    causal_lm_mask,
    evaluate_module_path,
    gap_to_retrain,
    kl_js_divergence,
    loss_scores,
    mean_loss,
    min_k_plus_plus_scores,
    min_k_scores,
    model_canary_exposure,
    perplexity,
    reference_scores,
    roc_auc,
    sequence_nll,
    shadow_attack_scores,
    shadow_features,
    token_log_probs,
    zlib_length,
    zlib_scores,
)

from tiny import tiny_gpt2, word_tokenizer


def hand_auc(members, nonmembers) -> float:
    """P(score_member > score_nonmember) + ½P(tie), by counting pairs."""
    wins = 0.0
    for a in members:
        for b in nonmembers:
            wins += 1.0 if a > b else (0.5 if a == b else 0.0)
    return wins / (len(members) * len(nonmembers))


# ------------------------------------------------------------------ utility


def test_accuracy_matches_sklearn_and_token_weighting():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    assert accuracy(p == y) == pytest.approx(accuracy_score(y, p))
    w = rng.random(50)
    assert accuracy(p == y, w) == pytest.approx(accuracy_score(y, p, sample_weight=w))
    # token accuracy: (1·1 + 0.5·4 + 0·5) / 10
    assert accuracy([1.0, 0.5, 0.0], [1, 4, 5]) == pytest.approx(0.3)


def test_mean_loss_and_perplexity_are_token_weighted():
    assert mean_loss([1.0, 2.0], [1, 3]) == pytest.approx(1.75)
    assert perplexity([1.0, 2.0], [1, 3]) == pytest.approx(math.exp(1.75))
    # against a hand loop over every predicted token of a real LM, with padding
    model = tiny_gpt2().eval()
    rng = np.random.default_rng(1)
    ids = torch.tensor(rng.integers(1, 64, size=(3, 10)))
    labels = ids.clone()
    labels[0, 6:] = -100
    labels[2, 3:] = -100
    out = evaluate_losses(model, [{"input_ids": ids, "labels": labels}])
    with torch.no_grad():
        lp = log_softmax(model(input_ids=ids).logits.double().numpy(), axis=-1)
    nll = [-lp[b, t - 1, labels[b, t]] for b in range(3) for t in range(1, 10) if labels[b, t] != -100]
    assert len(nll) == 5 + 9 + 2
    assert mean_loss(out["loss"].numpy(), out["count"].numpy()) == pytest.approx(np.mean(nll), rel=1e-5)
    assert perplexity(out["loss"].numpy(), out["count"].numpy()) == pytest.approx(np.exp(np.mean(nll)), rel=1e-5)


# ------------------------------------------------------------------ membership inference


def test_roc_auc_matches_pair_counting():
    assert roc_auc([0.9, 0.4], [0.5, 0.1]) == pytest.approx(0.75)
    rng = np.random.default_rng(2)
    m, n = rng.normal(0.5, 1, 40).round(1), rng.normal(0, 1, 30).round(1)  # rounding creates ties
    assert roc_auc(m, n) == pytest.approx(hand_auc(m, n))
    assert math.isnan(roc_auc([], [1.0]))


def test_loss_zlib_and_reference_scores():
    np.testing.assert_allclose(loss_scores([0.5, 2.0]), [-0.5, -2.0])
    texts = ["w1 w1 w1 w1 w1 w1 w1 w1", "w1 w7 w3 w9 w22 w5 w40 w13"]
    lengths = [zlib_length(t) for t in texts]
    assert lengths == [len(zlib.compress(t.encode())) for t in texts]
    assert lengths[0] < lengths[1]  # repetitive text compresses better
    np.testing.assert_allclose(zlib_scores([2.0, 3.0], lengths), [-2.0 / lengths[0], -3.0 / lengths[1]])
    np.testing.assert_allclose(reference_scores([1.0, 3.0], [2.0, 2.5]), [1.0, -0.5])


def _random_lm_batch(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 12, 7, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, 7, (3, 12), generator=g)
    labels[0, 8:] = -100
    labels[1, :5] = -100
    return logits, labels


def test_min_k_and_min_k_plus_plus_match_hand_loop():
    """MUSE's original token set (every labelled target); open-unlearning's is checked in test_llm_metrics."""
    logits, labels = _random_lm_batch()
    stats = token_log_probs(logits, labels, convention="muse")
    k = 0.3
    lp_all = log_softmax(logits.numpy(), axis=-1)
    want_mk, want_mkpp = [], []
    for b in range(3):
        lps, zs = [], []
        for t in range(1, 12):
            y = int(labels[b, t])
            if y == -100:
                continue
            row = lp_all[b, t - 1]
            p = np.exp(row)
            mu = (p * row).sum()
            sigma = math.sqrt((p * (row - mu) ** 2).sum())
            lps.append(row[y])
            zs.append((row[y] - mu) / sigma)
        m = max(1, int(k * len(lps)))
        want_mk.append(np.mean(sorted(lps)[:m]))
        want_mkpp.append(np.mean(sorted(zs)[:m]))
    np.testing.assert_allclose(min_k_scores(stats, k), want_mk, rtol=1e-5)
    np.testing.assert_allclose(min_k_plus_plus_scores(stats, k), want_mkpp, rtol=1e-5)
    # k = 1: Min-K% is the mean token log-prob = minus the example's mean loss
    full = min_k_scores(stats, 1.0)
    mask = causal_lm_mask(labels).numpy()
    assert full[0] == pytest.approx(stats.logp[0].numpy()[mask[0]].mean())
    with pytest.raises(ValueError):
        min_k_scores(stats, 0.0)


def test_shadow_features_and_attack():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    labels = np.array([0, 2])
    feats = shadow_features(torch.tensor(logits), labels)
    probs = softmax(logits, axis=-1)
    np.testing.assert_allclose(feats[:, :3], -np.sort(-probs, axis=-1))
    np.testing.assert_allclose(feats[:, 3], -np.log(probs[[0, 1], labels]))
    # members: confident and right; non-members: flatter. Fit on one draw, score another.
    rng = np.random.default_rng(4)

    def draw(n, scale):
        lg = rng.normal(0, 1, (n, 3))
        y = rng.integers(0, 3, n)
        lg[np.arange(n), y] += scale
        return shadow_features(lg, y)

    mem_fit, non_fit, mem_eval, non_eval = draw(60, 5.0), draw(60, 0.5), draw(40, 5.0), draw(40, 0.5)
    s = shadow_attack_scores(mem_fit, non_fit, np.concatenate([mem_eval, non_eval]), seed=0)
    assert roc_auc(s[:40], s[40:]) > 0.9
    np.testing.assert_array_equal(s, shadow_attack_scores(mem_fit, non_fit, np.concatenate([mem_eval, non_eval]), seed=0))
    # same ranking as a plain sklearn logistic regression on standardised features
    x = np.concatenate([mem_fit, non_fit])
    mu, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1
    ref = LogisticRegression(class_weight="balanced", max_iter=1000).fit((x - mu) / sd, np.r_[np.ones(60), np.zeros(60)])
    ev = (np.concatenate([mem_eval, non_eval]) - mu) / sd
    np.testing.assert_allclose(s, ref.predict_proba(ev)[:, 1], atol=1e-6)


# ------------------------------------------------------------------ fidelity


def test_kl_js_match_scipy_for_classifiers():
    p = np.array([[0.5, 0.5], [0.2, 0.8]])
    q = np.array([[0.9, 0.1], [0.2, 0.8]])
    kl, js = kl_js_divergence(torch.tensor(np.log(p)), torch.tensor(np.log(q)))
    # KL([.5,.5] ‖ [.9,.1]) = .5 ln(.5/.9) + .5 ln(.5/.1) = 0.51083; second row identical → 0
    assert kl == pytest.approx((0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(5)) / 2, rel=1e-9)
    assert kl == pytest.approx(rel_entr(p, q).sum(-1).mean(), rel=1e-9)
    assert js == pytest.approx(np.mean([jensenshannon(a, b) ** 2 for a, b in zip(p, q)]), rel=1e-9)
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
    kl, js = kl_js_divergence(torch.tensor(a), torch.tensor(b))
    pa, pb = softmax(a, -1), softmax(b, -1)
    assert kl == pytest.approx(rel_entr(pa, pb).sum(-1).mean(), rel=1e-9)
    assert js == pytest.approx(np.mean([jensenshannon(x, y) ** 2 for x, y in zip(pa, pb)]), rel=1e-9)
    assert 0 < js <= math.log(2)


def test_kl_js_per_predicted_token_for_lms():
    p_logits, labels = _random_lm_batch(6)
    q_logits = p_logits + torch.randn_like(p_logits)
    mask = causal_lm_mask(labels)
    kl, js = kl_js_divergence(p_logits[:, :-1], q_logits[:, :-1], mask)
    pa, pb = softmax(p_logits.numpy(), -1), softmax(q_logits.numpy(), -1)
    kls, jss = [], []
    for bi in range(3):
        for t in range(1, 12):
            if labels[bi, t] != -100:
                kls.append(rel_entr(pa[bi, t - 1], pb[bi, t - 1]).sum())
                jss.append(jensenshannon(pa[bi, t - 1], pb[bi, t - 1]) ** 2)
    assert len(kls) == int(mask.sum()) == 7 + 7 + 11
    assert kl == pytest.approx(np.mean(kls), rel=1e-9)
    assert js == pytest.approx(np.mean(jss), rel=1e-9)


def test_gap_to_retrain():
    u = {"forget_accuracy": 0.9, "test_accuracy": 0.5, "mia_loss_auc": 0.7}
    r = {"forget_accuracy": 0.6, "test_accuracy": 0.5, "mia_loss_auc": 0.5}
    assert gap_to_retrain(u, r) == pytest.approx((0.3 + 0.0 + 0.2) / 3)
    assert gap_to_retrain(u, u) == 0.0
    assert gap_to_retrain(u, r, keys=("forget_accuracy", "missing")) == pytest.approx(0.3)
    assert math.isnan(gap_to_retrain(u, r, keys=("missing",)))


# ------------------------------------------------------------------ canaries


def test_canary_exposure_numbers():
    losses = np.arange(16, dtype=float)  # secret at index 0 has the lowest loss: rank 1
    assert canary_rank(losses, 0) == 1
    assert canary_exposure(losses, 0) == pytest.approx(4.0)
    assert canary_exposure(losses, 3) == pytest.approx(math.log2(16) - math.log2(4))
    assert canary_exposure(losses, 15) == pytest.approx(0.0)
    rng = np.random.default_rng(7)
    x = rng.random(100)
    for i in (0, 17, 99):
        hand_rank = 1 + sum(1 for j in range(100) if x[j] < x[i])
        assert canary_exposure(x, i) == pytest.approx(math.log2(100) - math.log2(hand_rank))


def test_sequence_nll_and_model_canary_exposure():
    tok = word_tokenizer()
    model = tiny_gpt2(8)
    secret = "w5 w17 w33 w2 w40 w11"
    candidates = [f"w5 w17 w33 w2 w40 w{i}" for i in range(12, 44)]  # 32 candidates, the secret among them
    assert secret not in candidates
    nll = sequence_nll(model, tok, [secret, "w1 w2"])
    ids = torch.tensor([tok(secret)["input_ids"]])
    assert model.training  # sequence_nll restores the mode it found
    with torch.no_grad():
        lp = log_softmax(model.eval()(input_ids=ids).logits.double().numpy()[0], -1)
    assert nll[0] == pytest.approx(-sum(lp[t - 1, ids[0, t]] for t in range(1, ids.shape[1])), rel=1e-5)
    # memorise the secret: it becomes the most likely candidate (exposure = log2 33)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model_canary_exposure(model, tok, secret, candidates) == pytest.approx(math.log2(33))


# ------------------------------------------------------------------ local evaluate modules


def test_evaluate_modules_load_by_path_offline():
    import evaluate

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    loaded = {name: evaluate.load(evaluate_module_path(name)) for name in EVALUATE_MODULES}
    rng = np.random.default_rng(9)

    y, p = rng.integers(0, 3, 30), rng.integers(0, 3, 30)
    y[:5] = -100
    out = loaded["accuracy"].compute(predictions=p.tolist(), references=y.tolist())
    assert out["accuracy"] == pytest.approx(accuracy_score(y[5:], p[5:]))

    s, m = rng.normal(size=40), (np.arange(40) < 15).astype(int)
    out = loaded["mia_auc"].compute(predictions=s.tolist(), references=m.tolist())
    assert out["mia_auc"] == pytest.approx(hand_auc(s[m == 1], s[m == 0]))

    a, b = rng.normal(size=(10, 4)), rng.normal(size=(10, 4))
    out = loaded["kl_js_divergence"].compute(predictions=a.tolist(), references=b.tolist(), from_logits=True)
    kl, js = kl_js_divergence(torch.tensor(b), torch.tensor(a))  # KL(references ‖ predictions)
    assert out["kl_divergence"] == pytest.approx(kl, rel=1e-9)
    assert out["js_divergence"] == pytest.approx(js, rel=1e-9)
    probs = softmax(a, -1)
    out = loaded["kl_js_divergence"].compute(predictions=probs.tolist(), references=probs.tolist())
    assert out == pytest.approx({"kl_divergence": 0.0, "js_divergence": 0.0}, abs=1e-12)

    losses = rng.random(20)
    secret = np.zeros(20, dtype=int)
    secret[[4, 11]] = 1
    out = loaded["canary_exposure"].compute(predictions=losses.tolist(), references=secret.tolist())
    others = np.delete(losses, [4, 11])
    want = [canary_exposure(np.r_[losses[i], others], 0) for i in (4, 11)]
    assert out["exposures"] == pytest.approx(want)
    assert out["exposure"] == pytest.approx(np.mean(want))

    with pytest.raises(ValueError):
        evaluate_module_path("rouge")
