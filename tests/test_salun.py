"""SalUn: only salient weights move, the forget set is relabelled away, budget and kind are checked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_unlearn_defaults import learnable, make_args  # noqa: E402
from tiny import lm_dataset, params_of, tiny_bert, tiny_gpt2  # noqa: E402
from transformers import default_data_collator  # noqa: E402

from hf_iau import IAUTrainer, forget_retain_split  # noqa: E402
from hf_iau.methods import METHODS, run_method  # noqa: E402
from hf_iau.methods._request import BudgetError  # noqa: E402


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("salun")
    train = learnable(64, seed=0, flip=list(range(8)))  # forget = 8 memorised wrong labels
    args = make_args(tmp, num_train_epochs=40, learning_rate=5e-3, per_device_train_batch_size=16, per_device_eval_batch_size=16)
    trainer = IAUTrainer(tiny_bert(), args=args, train_dataset=train, data_collator=default_data_collator)
    trainer.train()
    split = forget_retain_split(train, forget=list(range(8)), id_column="id")
    return trainer, split, params_of(trainer.model)


def fresh(fitted):
    trainer, split, state = fitted
    trainer.model.load_state_dict(state)
    trainer.unlearning_history.clear()
    return trainer, split


def test_salun_is_registered():
    assert "salun" in METHODS


def test_only_salient_weights_change_and_forget_accuracy_falls(fitted):
    trainer, split = fresh(fitted)
    before = params_of(trainer.model)
    m = run_method("salun", trainer, split["forget"], split["retain"], sparsity=0.9, epochs=20, learning_rate=3e-3).metrics
    after = params_of(trainer.model)
    changed = sum(int((after[k] != before[k]).sum()) for k in before)
    total = sum(v.numel() for v in before.values())
    assert 0 < changed <= 0.1 * total + len(before)  # at most the top 10% of |∇| (ties aside) moved
    assert m["forget_accuracy_before"] >= 0.75
    assert m["forget_accuracy_after"] < m["forget_accuracy_before"]
    assert m["retain_accuracy_after"] >= 0.7  # chance is 1/3


def test_salun_budget_counts_the_saliency_pass(fitted):
    trainer, split = fresh(fitted)
    m = run_method("salun", trainer, split["forget"], split["retain"], budget=8 + 2 * 16, batch_size=8).metrics
    assert m["example_gradient_passes"] == 8 + 2 * 16  # saliency (|D_f| = 8) + 2 steps of 8 forget + 8 retain
    trainer, split = fresh(fitted)
    state = params_of(trainer.model)
    with pytest.raises(BudgetError):
        run_method("salun", trainer, split["forget"], split["retain"], budget=4)
    assert all(torch.equal(state[k], v) for k, v in params_of(trainer.model).items())


def test_salun_refuses_a_causal_lm(tmp_path):
    ds = lm_dataset(12)
    trainer = IAUTrainer(tiny_gpt2(0), args=make_args(tmp_path), train_dataset=ds)
    with pytest.raises(ValueError, match="salun needs a single-label classifier"):
        run_method("salun", trainer, ds.select(range(3)), ds.select(range(3, 12)))
    with pytest.raises(ValueError, match="sparsity"):
        run_method("salun", trainer, ds.select(range(3)), ds.select(range(3, 12)), sparsity=1.0)
