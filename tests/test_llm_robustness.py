"""Robustness probes: weight quantisation against its formula, relearning, paraphrases, the probe runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_iau.collators import CausalLMCollator
from hf_iau.metrics import lm_example_stats, paraphrased, quantize_weights, relearn, relearn_split, robustness_probes
from hf_iau.qa import qa_to_lm_examples

from tiny import tiny_llama, word_tokenizer

ROWS = {
    "question": [f"w{i} w{i + 1}" for i in range(1, 13)],
    "answer": [f"w{i + 20} w{i + 21} w{i + 22}" for i in range(1, 13)],
    "paraphrased_question": [f"w{i + 1} w{i}" for i in range(1, 13)],
}


def hand_quantize(w: np.ndarray, bits: int) -> np.ndarray:
    """Symmetric round-to-nearest per output row, from the definition."""
    qmax = 2 ** (bits - 1) - 1
    out = np.empty_like(w)
    for r in range(w.shape[0]):
        s = np.abs(w[r]).max() / qmax
        s = s if s > 0 else 1.0
        out[r] = np.clip(np.round(w[r] / s), -qmax, qmax) * s
    return out


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_weights_matches_round_to_nearest(bits):
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_weights(model, bits)
    for name, module in q.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            orig = dict(model.named_modules())[name].weight.detach().double().numpy()
            np.testing.assert_allclose(module.weight.detach().double().numpy(), hand_quantize(orig, bits),
                                       rtol=1e-6, atol=1e-7)
            levels = max(len(np.unique(row)) for row in module.weight.detach().numpy())
            assert levels <= 2 ** bits - 1
    for k, v in model.state_dict().items():  # the model itself is untouched
        assert torch.equal(v, before[k])
    norms = [k for k in q.state_dict() if "norm" in k]
    assert norms and all(torch.equal(q.state_dict()[k], before[k]) for k in norms)
    with pytest.raises(ValueError, match="bits=1"):
        quantize_weights(model, 1)


def test_relearn_split_and_paraphrased():
    a, b = relearn_split(40, 0.1, seed=3)
    assert len(a) == 4 and len(b) == 36 and not set(a) & set(b) and sorted(a + b) == list(range(40))
    assert relearn_split(40, 0.1, seed=3) == (a, b) and relearn_split(40, 0.1, seed=4) != (a, b)
    with pytest.raises(ValueError, match="at least 2"):
        relearn_split(1)
    p = paraphrased(Dataset.from_dict(ROWS))
    assert p["question"] == ROWS["paraphrased_question"] and p["answer"] == ROWS["answer"]
    with pytest.raises(ValueError, match="paraphrased_question"):
        paraphrased(Dataset.from_dict({"question": ["a"], "answer": ["b"]}))


def test_relearn_lowers_the_loss_on_its_rows_and_is_seeded():
    tok = word_tokenizer()
    ex = qa_to_lm_examples(Dataset.from_dict(ROWS), tok, id_column=None).select_columns(["input_ids", "attention_mask", "labels"])
    model = tiny_llama()
    model.requires_grad_(False)  # what an unlearning method may leave behind (e.g. a merged adapter)
    before = lm_example_stats(model, ex)["loss"].mean()
    twin = relearn(model, ex, data_collator=CausalLMCollator(tok), steps=8, learning_rate=3e-3, batch_size=4)
    again = relearn(model, ex, data_collator=CausalLMCollator(tok), steps=8, learning_rate=3e-3, batch_size=4)
    assert lm_example_stats(twin, ex)["loss"].mean() < before - 0.5
    assert lm_example_stats(model, ex)["loss"].mean() == pytest.approx(before)  # original untouched
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), again.state_dict().values()))


def test_robustness_probes_runs_each_probe_on_the_right_rows():
    tok = word_tokenizer()
    rows = Dataset.from_dict(ROWS)
    model = tiny_llama()
    seen = []

    def measure(m, d):
        seen.append(len(d))
        ex = qa_to_lm_examples(d, tok, id_column=None)
        return {"loss": float(np.nanmean(lm_example_stats(m, ex)["loss"]))}

    out = robustness_probes(model, measure, rows, relearn_examples=lambda d: qa_to_lm_examples(d, tok, id_column=None),
                            data_collator=CausalLMCollator(tok), relearn_fraction=0.25, relearn_steps=6,
                            relearn_learning_rate=3e-3)
    assert list(out) == ["as_is", "int8", "int4", "relearn_baseline", "relearned", "paraphrased"]
    assert seen == [12, 12, 12, 9, 9, 12]  # relearning is measured on the 9 held-out rows
    assert out["as_is"]["loss"] == measure(model, rows)["loss"]
    assert abs(out["int8"]["loss"] - out["as_is"]["loss"]) < abs(out["int4"]["loss"] - out["as_is"]["loss"]) + 1e-6
    assert out["relearned"]["loss"] < out["relearn_baseline"]["loss"]
