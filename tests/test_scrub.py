"""SCRUB: the student moves away from the teacher on the forget set and stays with it on retained data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_salun import fitted, fresh  # noqa: E402,F401
from test_unlearn_defaults import make_args  # noqa: E402
from tiny import lm_dataset, params_of, tiny_gpt2  # noqa: E402

from hf_iau import IAUTrainer  # noqa: E402
from hf_iau.methods import METHODS, run_method  # noqa: E402


def test_scrub_is_registered():
    assert "scrub" in METHODS


@pytest.fixture(scope="module")
def mislabelled(tmp_path_factory):
    """A tiny BERT that memorised 8 wrong labels (the rest of the data contradicts them)."""
    from transformers import default_data_collator

    from hf_iau import forget_retain_split
    from test_unlearn_defaults import learnable

    train = learnable(64, seed=0, flip=list(range(8)))
    args = make_args(tmp_path_factory.mktemp("scrub"), num_train_epochs=40, learning_rate=5e-3,
                     per_device_train_batch_size=16, per_device_eval_batch_size=16)
    from tiny import tiny_bert

    trainer = IAUTrainer(tiny_bert(), args=args, train_dataset=train, data_collator=default_data_collator)
    trainer.train()
    return trainer, forget_retain_split(train, forget=list(range(8)), id_column="id")


def test_scrub_forgets_contradicted_rows_and_keeps_retained_predictions(mislabelled):
    trainer, split = mislabelled
    m = run_method("scrub", trainer, split["forget"], split["retain"], steps=30, max_fraction=0.5,
                   batch_size=8, learning_rate=3e-3).metrics
    assert m["steps"] == 30
    assert m["forget_accuracy_before"] >= 0.75  # the wrong labels were memorised
    assert m["forget_accuracy_after"] < m["forget_accuracy_before"]
    assert m["forget_loss_after"] > m["forget_loss_before"]
    assert m["retain_accuracy_after"] >= 0.9
    assert m["example_gradient_passes"] == 15 * 8 + 30 * 8  # max-steps only in the first half
    assert m["example_forward_passes"] >= 8  # teacher outputs on the forget set, computed once


def test_scrub_budget_sets_the_length(fitted):  # noqa: F811
    trainer, split = fresh(fitted)
    m = run_method("scrub", trainer, split["forget"], split["retain"], budget=100, batch_size=8).metrics
    assert m["example_gradient_passes"] <= 100
    assert m["example_gradient_passes"] > 100 - 16


def test_scrub_refuses_a_causal_lm_and_keeps_the_weights(tmp_path):
    ds = lm_dataset(12)
    trainer = IAUTrainer(tiny_gpt2(0), args=make_args(tmp_path), train_dataset=ds)
    state = params_of(trainer.model)
    with pytest.raises(ValueError, match="scrub needs a single-label classifier"):
        run_method("scrub", trainer, ds.select(range(3)), ds.select(range(3, 12)))
    assert all(torch.equal(state[k], v) for k, v in params_of(trainer.model).items())


def test_scrub_default_length_is_one_epoch_of_max_steps(fitted):  # noqa: F811
    """One epoch over the forget set means every forget row gets a max-step (it was ceil(8/8) = 1 step in all,
    of which round(0.5) = 0 max-steps: the forget set was never used)."""
    trainer, split = fresh(fitted)
    res = run_method("scrub", trainer, split["forget"], split["retain"], batch_size=8)
    assert trainer.unlearning_history[-1]["config"]["max_steps"] == 1 and res.metrics["steps"] == 2
    assert res.metrics["example_gradient_passes"] == 8 + 2 * 8
    assert sum("forget_loss" in h for h in res.history) == 1
    trainer, split = fresh(fitted)
    res = run_method("scrub", trainer, split["forget"], split["retain"], batch_size=4, epochs=2, max_fraction=0.25)
    assert trainer.unlearning_history[-1]["config"]["max_steps"] == 4 and res.metrics["steps"] == 16
