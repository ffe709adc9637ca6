"""Default unlearning mode: multi-step, auto stop, seeded retain sample, per-example saturation."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset
from tiny import text_cls_dataset, tiny_bert
from transformers import default_data_collator

from hf_iau import IAUConfig, IAUTrainer, forget_retain_split


def make_args(tmp_path, **kw) -> IAUConfig:
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no")
    base.update(kw)
    return IAUConfig(**base)


def learnable(n: int, seed: int = 0, flip: list[int] | None = None) -> Dataset:
    """Class c draws its tokens from [1 + 21c, 21 + 21c): learnable, so held-out data is fit too."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    ids = rng.integers(1, 22, size=(n, 16)) + 21 * labels[:, None]
    labels = labels.tolist()
    for i in flip or []:
        labels[i] = (labels[i] + 1) % 3
    return Dataset.from_dict(
        {"id": list(range(n)), "input_ids": ids.tolist(), "attention_mask": [[1] * 16] * n, "label": labels}
    )


def trained(tmp_path, train: Dataset, held_out: Dataset | None, epochs: int = 40, **kw) -> IAUTrainer:
    args = make_args(tmp_path, num_train_epochs=epochs, learning_rate=5e-3, per_device_train_batch_size=16, **kw)
    trainer = IAUTrainer(tiny_bert(), args=args, train_dataset=train, eval_dataset=held_out,
                         data_collator=default_data_collator)
    trainer.train()
    return trainer


def test_defaults_are_the_multistep_self_limiting_mode():
    args = IAUConfig(output_dir="x", use_cpu=True)
    assert args.forget_saturation == "auto" and args.unlearn_stop == "auto"
    assert args.unlearn_steps > 1 and args.retain_sample_size is not None
    assert args.unlearn_optimizer == "adam" and args.forget_weight == 1.0 and args.retain_weight == 1.0


def test_auto_uses_loss_quantiles_when_forget_set_is_memorised(tmp_path):
    """Random forget rows fit better than held-out rows: targets are held-out loss quantiles."""
    train = learnable(48, seed=0)
    held_out = learnable(24, seed=1)
    trainer = trained(tmp_path, train, held_out)
    split = forget_retain_split(train, forget=list(range(6)), id_column="id")
    m = trainer.unlearn(split["forget"], split["retain"]).metrics
    assert m["saturation_loss"] == 1.0 and m["saturation_flip"] == 0.0
    assert "reference_loss" in m and "reference_accuracy" in m
    assert m["stopped_early"] == 1.0 and m["steps"] < trainer.args.unlearn_steps  # every example reached its target
    assert m["example_forward_passes"] >= 24 + 6  # reference pass + forget pre-pass are counted
    assert m["example_gradient_passes"] <= m["steps"] * (6 + trainer.args.retain_sample_size) + 6 + trainer.args.retain_sample_size


def test_auto_switches_to_flip_when_forget_labels_disagree_with_the_data(tmp_path):
    """Mislabelled forget rows (fit worse than held-out data): ascend only while still predicted."""
    flip = list(range(8))
    train = learnable(96, seed=0, flip=flip)
    held_out = learnable(24, seed=1)
    trainer = trained(tmp_path, train, held_out, epochs=4, unlearn_learning_rate=1e-2, unlearn_steps=40)
    split = forget_retain_split(train, forget=flip, id_column="id")
    m = trainer.unlearn(split["forget"], split["retain"]).metrics
    assert m["saturation_flip"] == 1.0
    assert m["forget_accuracy_after"] < m["forget_accuracy_before"]
    assert m["stopped_early"] == 1.0 and m["forget_active_fraction_final"] <= trainer.args.unlearn_stop_tolerance


def test_default_mode_works_without_held_out_data(tmp_path):
    ds = text_cls_dataset(24)
    split = forget_retain_split(ds, forget=[0, 1, 2, 3], id_column="id")
    trainer = IAUTrainer(tiny_bert(), args=make_args(tmp_path), data_collator=default_data_collator)
    m = trainer.unlearn(split["forget"], split["retain"]).metrics
    assert "reference_loss" not in m
    assert m["saturation_flip"] == 1.0  # falls back to prediction flip
    assert m["steps"] <= trainer.args.unlearn_steps


def test_explicit_loss_saturation_targets_are_rank_matched(tmp_path):
    """The forget example with the lowest loss gets the lowest held-out quantile."""
    from hf_iau.unlearning import IAUUnlearner

    train = learnable(48, seed=0)
    held_out = learnable(24, seed=1)
    trainer = trained(tmp_path, train, held_out, forget_saturation="loss")
    split = forget_retain_split(train, forget=list(range(8)), id_column="id")
    forget = trainer._model_columns(split["forget"])
    retain = trainer._model_columns(split["retain"])
    reference, _ = trainer._reference_level(None, "ab" * 32)
    assert len(reference["losses"]) == 24
    un = IAUUnlearner(trainer.model, trainer.args, lambda i: trainer._batches(forget, i),
                      lambda i: trainer._batches(retain, i), len(forget), len(retain), "ab" * 32, reference)
    un._resolve_mode(list(range(8)))
    from hf_iau.losses import evaluate_losses

    losses = evaluate_losses(trainer.model.eval(), trainer._batches(forget, list(range(8))))["loss"].numpy()
    targets = np.array([un.targets[i] for i in range(8)])
    assert np.all(np.diff(targets[np.argsort(losses, kind="stable")]) >= 0)
    assert targets.min() >= min(reference["losses"]) and targets.max() <= max(reference["losses"])


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_stop_tolerance_is_validated(tmp_path, value):
    with pytest.raises(ValueError, match="unlearn_stop_tolerance"):
        make_args(tmp_path, unlearn_stop_tolerance=value)
