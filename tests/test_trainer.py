"""IAUTrainer: LoRA, models by path, config validation, splits, first bad inputs, saving."""

from __future__ import annotations

import math
import os

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from tiny import image_dataset, lm_dataset, max_abs_diff, params_of, text_cls_dataset, tiny_bert, tiny_gpt2, tiny_vit
from transformers import default_data_collator

from hf_iau import IAUConfig, IAUTrainer, fingerprint_ids, forget_retain_split


def make_args(tmp_path, **kw) -> IAUConfig:
    # untrained tiny models and no held-out data: push every forget row for the steps asked (targets are tested in
    # test_unlearn_defaults.py)
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
                unlearn_targets="none", unlearn_stop="fixed")
    base.update(kw)
    return IAUConfig(**base)


# --- LoRA ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make_model,make_data,targets",
    [(tiny_gpt2, lm_dataset, ["c_attn"]), (tiny_vit, image_dataset, ["q_proj", "v_proj"])],
    ids=["gpt2", "vit"],
)
def test_lora_unlearning_changes_only_adapter_weights(tmp_path, make_model, make_data, targets):
    ds = make_data(20)
    split = forget_retain_split(ds, forget=[0, 1, 2, 3], id_column="id")
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    args = make_args(tmp_path, unlearn_steps=3, unlearn_learning_rate=1e-2, unlearn_targets="none", unlearn_stop="fixed")
    trainer = IAUTrainer(make_model(), args=args, data_collator=default_data_collator, peft_config=peft_config)
    before = params_of(trainer.model)
    result = trainer.unlearn(split["forget"], split["retain"])
    after = params_of(trainer.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    base = [k for k in before if "lora_" not in k]
    assert base and all(torch.equal(before[k], after[k]) for k in base)  # bit-identical base weights
    assert result.metrics["forget_loss_after"] > result.metrics["forget_loss_before"]


def test_lora_trains_under_gradient_checkpointing_with_gr(tmp_path):
    ds = lm_dataset(16)
    args = make_args(
        tmp_path, gradient_checkpointing=True, gr_alpha=0.005, max_steps=2, per_device_train_batch_size=8,
        learning_rate=1e-2,
    )
    peft_config = LoraConfig(r=4, target_modules=["c_attn"])
    trainer = IAUTrainer(tiny_gpt2(), args=args, train_dataset=ds, data_collator=default_data_collator, peft_config=peft_config)
    before = params_of(trainer.model)
    trainer.train()
    after = params_of(trainer.model)
    lora_b = [k for k in before if "lora_B" in k]
    assert lora_b and all(not torch.equal(before[k], after[k]) for k in lora_b)


def test_the_adapter_init_follows_args_seed_not_the_rng_history(tmp_path):
    """LoRA's random A is drawn under args.seed: the same seed after different RNG histories gives the same adapter
    (before, whatever ran earlier — a probe, another method — changed it), another seed another one."""
    def adapter(seed: int, history: int):
        torch.manual_seed(history)
        torch.rand(history + 1)
        tr = IAUTrainer(tiny_gpt2(seed=0), args=make_args(tmp_path, seed=seed), peft_config=LoraConfig(r=2, target_modules=["c_attn"]))
        return {n: p.detach().clone() for n, p in tr.model.named_parameters() if "lora_A" in n}

    a, b, c = adapter(0, 1), adapter(0, 7), adapter(1, 1)
    assert a and all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_peft_model_plus_peft_config_is_rejected(tmp_path):
    model = get_peft_model(tiny_gpt2(), LoraConfig(r=2, target_modules=["c_attn"]))
    with pytest.raises(ValueError, match="peft_config"):
        IAUTrainer(model, args=make_args(tmp_path), peft_config=LoraConfig(r=2, target_modules=["c_attn"]))


def test_peft_config_with_missing_target_modules_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="target_modules"):
        IAUTrainer(tiny_gpt2(), args=make_args(tmp_path), peft_config=LoraConfig(r=2, target_modules=["nope"]))


# --- model by path, saving ------------------------------------------------------------------------
def test_model_given_as_local_path_and_safetensors_only_save(tmp_path):
    src = tmp_path / "src"
    tiny_bert().save_pretrained(src)
    ds = text_cls_dataset(12)
    trainer = IAUTrainer(str(src), args=make_args(tmp_path / "out"), train_dataset=ds, data_collator=default_data_collator)
    assert type(trainer.model).__name__ == "BertForSequenceClassification"
    trainer.unlearn(ds.select([0, 1]))
    trainer.save_model()
    files = os.listdir(tmp_path / "out")
    assert "model.safetensors" in files and "training_args.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]


def test_default_args_and_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = IAUTrainer(tiny_bert())
    assert isinstance(trainer.args, IAUConfig) and trainer.args.output_dir.endswith("-IAU")


# --- config validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field,value",
    [
        ("gr_alpha", -0.1),
        ("gr_alpha", math.nan),
        ("gr_mode", "second_order"),
        ("gr_norm", "l1"),
        ("gr_fd_radius", 0.0),
        ("unlearn_optimizer", "lion"),
        ("unlearn_learning_rate", 0.0),
        ("unlearn_learning_rate", -1e-3),
        ("unlearn_steps", 0),
        ("unlearn_forget_weight", -1.0),
        ("unlearn_retain_sample_size", 0),
        ("unlearn_targets", "sometimes"),
        ("unlearn_stop", "never"),
        ("unlearn_guard_shrink", 1.5),
    ],
)
def test_invalid_config_values_name_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"IAUConfig.{field}="):
        make_args(tmp_path, **{field: value})


# --- splits and fingerprints ------------------------------------------------------------------------
def test_forget_retain_split_by_ids_predicate_fraction():
    ds = text_cls_dataset(20)
    by_ids = forget_retain_split(ds, forget=[3, 5, 7], id_column="id")
    assert by_ids["forget"]["id"] == [3, 5, 7] and len(by_ids["retain"]) == 17
    assert not set(by_ids["forget"]["id"]) & set(by_ids["retain"]["id"])
    by_pred = forget_retain_split(ds, forget=lambda row: row["label"] == 0, id_column="id")
    assert all(lab == 0 for lab in by_pred["forget"]["label"])
    assert len(by_pred["forget"]) == sum(1 for lab in ds["label"] if lab == 0)
    frac = forget_retain_split(ds, forget=0.25, id_column="id", seed=3)
    assert len(frac["forget"]) == 5
    assert frac["forget"]["id"] == forget_retain_split(ds, forget=0.25, id_column="id", seed=3)["forget"]["id"]
    assert frac["forget"]["id"] != forget_retain_split(ds, forget=0.25, id_column="id", seed=4)["forget"]["id"]


def test_fingerprint_is_order_independent_and_sha256():
    assert fingerprint_ids([3, 1, 2]) == fingerprint_ids([1, 2, 3])
    assert fingerprint_ids([1, 2]) != fingerprint_ids([1, 2, 3])
    assert len(fingerprint_ids([1])) == 64 and int(fingerprint_ids([1]), 16) >= 0


@pytest.mark.parametrize(
    "forget,match",
    [([], "empty"), ([3, 99], "not in column"), (["3"], "type str"), (1.5, r"\(0, 1\)")],
)
def test_split_bad_forget_specs(forget, match):
    with pytest.raises(ValueError, match=match):
        forget_retain_split(text_cls_dataset(10), forget=forget, id_column="id")


# --- first bad inputs of unlearn(): clear error, weights bit-identical ------------------------------------
def _trainer(tmp_path, **kw):
    ds = text_cls_dataset(16)
    trainer = IAUTrainer(tiny_bert(), args=make_args(tmp_path, **kw), train_dataset=ds, data_collator=default_data_collator)
    return trainer, ds


@pytest.mark.parametrize(
    "case,match",
    [
        ("empty_forget", "forget_dataset` is empty"),
        ("ids_not_found", "not in the train dataset"),
        ("overlap", "overlap"),
        ("no_labels", "no labels"),
        ("empty_retain", "retain_dataset` is empty"),
        ("label_out_of_range", "num_labels"),
    ],
)
def test_bad_unlearning_inputs_leave_weights_untouched(tmp_path, case, match):
    trainer, ds = _trainer(tmp_path)
    before = params_of(trainer.model)
    forget, retain = ds.select([0, 1]), ds.select(range(2, 16))
    if case == "empty_forget":
        forget = ds.select([])
    elif case == "ids_not_found":
        forget, retain = text_cls_dataset(3).map(lambda r: {"id": r["id"] + 100}), None
    elif case == "overlap":
        retain = ds.select(range(0, 16))
    elif case == "no_labels":
        forget = forget.remove_columns("label")
    elif case == "empty_retain":
        retain = ds.select([])
    elif case == "label_out_of_range":
        forget = forget.map(lambda r: {"label": 7})
    with pytest.raises(ValueError, match=match):
        trainer.unlearn(forget, retain)
    assert max_abs_diff(params_of(trainer.model), before) == 0.0
    assert not trainer.unlearning_history


def test_non_finite_loss_during_unlearning_restores_weights(tmp_path):
    # An enormous SGD step sends the weights to inf/nan; the next step's loss is non-finite.
    trainer, ds = _trainer(tmp_path, unlearn_optimizer="sgd", unlearn_learning_rate=1e30, unlearn_steps=3, unlearn_retain_weight=0.0,
                          unlearn_targets="none")
    before = params_of(trainer.model)
    with pytest.raises(ValueError, match="non-finite"):
        trainer.unlearn(ds.select([0, 1]), ds.select(range(2, 16)))
    assert max_abs_diff(params_of(trainer.model), before) == 0.0


def test_forget_dataset_must_be_a_dataset(tmp_path):
    trainer, _ = _trainer(tmp_path)
    with pytest.raises(ValueError, match="datasets.Dataset"):
        trainer.unlearn([{"input_ids": [1, 2], "label": 0}])


def test_retain_defaults_to_train_minus_forget_and_needs_id_column(tmp_path):
    trainer, ds = _trainer(tmp_path)
    result = trainer.unlearn(ds.select([0, 1, 2]))
    assert result.retain_size == 13
    trainer.train_dataset = ds.remove_columns("id")
    with pytest.raises(ValueError, match="id_column"):
        trainer.unlearn(ds.select([0, 1, 2]))
    assert isinstance(Dataset.from_dict({"a": [1]}), Dataset)
