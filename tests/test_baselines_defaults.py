"""Baseline options that must either do what they say or refuse before any weight changes (issue 16):
a run length of zero steps/epochs, and SalUn's saliency mask under dropout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

sys.path.insert(0, str(Path(__file__).parent))
from tiny import NUM_LABELS, VOCAB, lm_dataset, params_of, text_cls_dataset, tiny_bert, tiny_gpt2  # noqa: E402

from hf_iau import IAUConfig, IAUTrainer  # noqa: E402
from hf_iau.methods import run_method  # noqa: E402
from hf_iau.methods._request import Request  # noqa: E402
from hf_iau.methods.salun import saliency_mask  # noqa: E402


def make_args(tmp_path: Path, **kw) -> IAUConfig:
    base = dict(
        output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no", use_cpu=True, logging_strategy="no",
        disable_tqdm=True, per_device_train_batch_size=4, per_device_eval_batch_size=8, seed=0,
    )
    return IAUConfig(**{**base, **kw})


# --- a run of zero length is refused, naming the option and the fix ------------------------------------------
CASES = [
    ("gradient_ascent", tiny_gpt2, lm_dataset, {}),
    ("gradient_difference", tiny_bert, text_cls_dataset, {}),
    ("npo", tiny_gpt2, lm_dataset, {}),
    ("simnpo", tiny_gpt2, lm_dataset, {}),
    ("finetune", tiny_bert, text_cls_dataset, {}),
    ("salun", tiny_bert, text_cls_dataset, {}),
    ("rmu", tiny_gpt2, lm_dataset, {}),
    ("scrub", tiny_bert, text_cls_dataset, {}),
]


@pytest.mark.parametrize("method, make_model, make_data, options", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("length", [{"steps": 0}, {"steps": -3}, {"epochs": 0}, {"epochs": float("nan")}],
                         ids=["steps0", "steps-3", "epochs0", "epochs-nan"])
def test_zero_length_is_refused_before_any_weight_changes(tmp_path, method, make_model, make_data, options, length):
    ds = make_data(12)
    trainer = IAUTrainer(make_model(0), args=make_args(tmp_path), train_dataset=ds)
    state = params_of(trainer.model)
    (name, value), = length.items()
    fix = r">= 1, or leave it None" if name == "steps" else r"> 0, or leave it None"
    with pytest.raises(ValueError, match=rf"{name}={value!r} is invalid: use .*{fix}"):
        run_method(method, trainer, ds.select(range(4)), ds.select(range(4, 12)), **length, **options)
    assert all(torch.equal(state[k], v) for k, v in params_of(trainer.model).items())
    assert trainer.unlearning_history == []


def test_steps_must_be_a_whole_number(tmp_path):
    ds = lm_dataset(12)
    trainer = IAUTrainer(tiny_gpt2(0), args=make_args(tmp_path), train_dataset=ds)
    for bad in (1.5, True):
        with pytest.raises(ValueError, match=rf"steps={bad!r} is invalid"):
            run_method("gradient_ascent", trainer, ds.select(range(4)), ds.select(range(4, 12)), steps=bad)


def test_one_step_is_one_step(tmp_path):
    """steps=1, the smallest valid length, runs exactly one step of every kind of loop."""
    for method, make_model, make_data in [("gradient_ascent", tiny_gpt2, lm_dataset), ("rmu", tiny_gpt2, lm_dataset),
                                          ("scrub", tiny_bert, text_cls_dataset)]:
        ds = make_data(12)
        trainer = IAUTrainer(make_model(0), args=make_args(tmp_path), train_dataset=ds)
        res = run_method(method, trainer, ds.select(range(4)), ds.select(range(4, 12)), steps=1, batch_size=4)
        assert res.metrics["steps"] == 1 and len(res.history) == 1, method


# --- SalUn's saliency mask: eval mode, deterministic, mode restored -------------------------------------------
def dropout_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, num_labels=NUM_LABELS, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )
    return BertForSequenceClassification(cfg)


def test_salun_mask_is_computed_without_dropout(tmp_path):
    ds = text_cls_dataset(16)
    trainer = IAUTrainer(dropout_bert(), args=make_args(tmp_path), train_dataset=ds)
    trainer.model.train()
    req = Request("salun", trainer, ds.select(range(6)), ds.select(range(6, 16)))
    first = saliency_mask(req, 0.5)
    assert trainer.model.training  # the caller's mode comes back
    second = saliency_mask(req, 0.5)
    trainer.model.eval()
    in_eval = saliency_mask(req, 0.5)
    assert not trainer.model.training
    for a, b, c in zip(first, second, in_eval):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert 0.3 < float(sum(m.sum() for m in first) / sum(m.numel() for m in first)) <= 0.55


def test_salun_with_dropout_is_a_function_of_data_and_seed(tmp_path):
    ds = text_cls_dataset(16)
    results = []
    for torch_seed in (1, 2):  # the global torch RNG must not matter
        trainer = IAUTrainer(dropout_bert(), args=make_args(tmp_path), train_dataset=ds)
        trainer.model.train()
        torch.manual_seed(torch_seed)
        run_method("salun", trainer, ds.select(range(6)), ds.select(range(6, 16)), steps=2, learning_rate=1e-2)
        assert trainer.model.training
        results.append(params_of(trainer.model))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


@pytest.mark.parametrize("method, weights", [("gradient_ascent", {"forget_weight": 0.0}),
                                             ("gradient_difference", {"forget_weight": 0.0, "retain_weight": 0.0})])
def test_a_run_with_every_weight_zero_is_refused(tmp_path, method, weights):
    """Zero weights would record a deletion for steps that change nothing (and, under a budget, never stop)."""
    ds = lm_dataset(12)
    trainer = IAUTrainer(tiny_gpt2(0), args=make_args(tmp_path), train_dataset=ds)
    for budget in (None, 20):
        with pytest.raises(ValueError, match=rf"{method}: the forget and retain weights are both 0"):
            run_method(method, trainer, ds.select(range(4)), ds.select(range(4, 12)), budget=budget, **weights)
    assert trainer.unlearning_history == []
