"""The CLI's three data roles: train / validation (every decision) / test (grading only), and no silent fallbacks."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from hf_iau.cli import DataArguments, ModelArguments, check_splits, load_raw, main, prepare_data
from hf_iau.offline_data import canary_secrets

CANARY = DataArguments(
    dataset_name="lee_text", dataset_kwargs={"canaries": 3, "canary_repeats": 3, "seed": 0},
    test_size=0.2, validation_size=0.2, forget="column:is_canary",
)
TINY_IMAGE = {
    "dataset_name": "digits", "test_size": 30, "validation_size": 20, "max_train_samples": 40, "forget": "n:4",
    "forget_label_noise": True,
    "model_config": {"model_type": "vit", "image_size": 8, "patch_size": 4, "num_channels": 1, "hidden_size": 8,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16},
    "num_train_epochs": 1, "per_device_train_batch_size": 20, "learning_rate": 0.003, "unlearn_steps": 2,
    "forget_saturation": "loss", "unlearn_stop": "fixed", "save_strategy": "no", "report_to": "none", "seed": 0,
    "use_cpu": True, "disable_tqdm": True, "per_device_eval_batch_size": 32,
}


def _ids(ds) -> set:
    return set(ds["id"])


@pytest.mark.parametrize("forget", ["column:is_canary", "n:5"])
def test_canary_splits_are_disjoint_and_canaries_stay_in_train(forget: str) -> None:
    data = DataArguments(**{**CANARY.__dict__, "forget": forget})
    train, validation, test = load_raw(data, seed=0)
    assert len(validation) > 0 and len(test) > 0
    assert not (_ids(train) & _ids(validation)) and not (_ids(train) & _ids(test)) and not (_ids(validation) & _ids(test))
    secrets = set(canary_secrets(3, seed=0))
    assert sum(train["is_canary"]) == 9 and {t for t, c in zip(train["text"], train["is_canary"]) if c} == secrets
    for held_out in (validation, test):  # by flag and by content
        assert not any(held_out["is_canary"])
        assert not secrets & set(held_out["text"])
        assert not any(s.split("is", 1)[1] in t for s in secrets for t in held_out["text"])


def test_prepared_canary_roles() -> None:
    args = SimpleNamespace(seed=0, trust_remote_code=False, process_index=0)
    model = ModelArguments(task="causal-lm", tokenizer_vocab_size=300)
    data = DataArguments(**{**CANARY.__dict__, "max_length": 32, "max_chunks_per_doc": 1})
    prep = prepare_data(data, model, args)
    assert all(prep.forget["is_canary"]) and len(set(prep.forget["id"])) == 9
    assert not any(prep.retain["is_canary"]) and not any(prep.validation["is_canary"]) and not any(prep.test["is_canary"])
    assert _ids(prep.forget) | _ids(prep.retain) == _ids(prep.train)
    assert not (_ids(prep.train) & _ids(prep.validation)) and not (_ids(prep.validation) & _ids(prep.test))
    assert not (_ids(prep.train) & _ids(prep.test))


def test_named_forget_ids_are_never_held_out() -> None:
    # ids:0..99 of the 1797 digits: with a 50% test split, some would land in test if they were not pinned
    data = DataArguments(dataset_name="digits", test_size=0.5, validation_size=0.2, forget="ids:" + ",".join(map(str, range(100))))
    train, validation, test = load_raw(data, seed=0)
    assert set(range(100)) <= _ids(train)
    assert not set(range(100)) & (_ids(validation) | _ids(test))
    assert len(test) == math.ceil(0.5 * (1797 - 100)) and len(train) + len(validation) + len(test) == 1797


def test_check_splits_rejects_overlap_and_held_out_canaries() -> None:
    from datasets import Dataset

    def ds(ids, texts, canary):
        return Dataset.from_dict({"id": ids, "text": texts, "is_canary": canary})

    train = ds([0, 1], ["a", "secret"], [False, True])
    check_splits(train, ds([2], ["b"], [False]), ds([3], ["c"], [False]))
    with pytest.raises(ValueError, match="train and test splits share 1 id"):
        check_splits(train, ds([2], ["b"], [False]), ds([1], ["c"], [False]))
    with pytest.raises(ValueError, match="validation split holds canary rows"):
        check_splits(train, ds([2], ["secret"], [True]), ds([3], ["c"], [False]))
    with pytest.raises(ValueError, match="test split holds a copy of a training canary"):
        check_splits(train, ds([2], ["b"], [False]), ds([3], ["secret"], [False]))


def test_unlearn_uses_validation_as_reference_and_fsdp2_flag(tmp_path: Path, monkeypatch) -> None:
    """`hf-iau unlearn`: the reference data and the trainer's eval_dataset are the validation split (disjoint from
    test); --fsdp2_shard hands the loaded model to hf_iau.sharding.shard_per_block before the trainer is built."""
    import hf_iau.sharding
    from hf_iau.trainer import IAUTrainer

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_IMAGE, "output_dir": str(tmp_path / "run")}))
    assert main(["train", "--config", str(cfg)]) == 0

    seen: dict = {}
    real_unlearn = IAUTrainer.unlearn

    def spy_unlearn(self, forget, retain_dataset=None, held_out_dataset=None, **kw):
        seen.update(reference=held_out_dataset, eval=self.eval_dataset, forget=forget)
        return real_unlearn(self, forget, retain_dataset=retain_dataset, held_out_dataset=held_out_dataset, **kw)

    sharded = []
    monkeypatch.setattr(IAUTrainer, "unlearn", spy_unlearn)
    monkeypatch.setattr(hf_iau.sharding, "shard_per_block", lambda m: sharded.append(m) or m)
    assert main(["unlearn", "--config", str(cfg), "--fsdp2_shard", "true"]) == 0
    assert len(sharded) == 1 and type(sharded[0]).__name__ == "ViTForImageClassification"

    from hf_iau.cli.arguments import DataArguments as DA

    train, validation, test = load_raw(DA(**{k: v for k, v in TINY_IMAGE.items() if k in DA.__dataclass_fields__}), seed=0)
    assert len(validation) == 20 and len(test) == 30
    assert _ids(seen["reference"]) == _ids(validation) == _ids(seen["eval"])
    assert not _ids(seen["reference"]) & _ids(test) and not _ids(seen["reference"]) & _ids(train)
    assert _ids(seen["forget"]) <= _ids(train)


def test_fsdp2_flag_without_sharding_module_is_an_error(monkeypatch) -> None:
    from hf_iau.cli.commands import shard_for_unlearning

    monkeypatch.setitem(sys.modules, "hf_iau.sharding", None)
    with pytest.raises(SystemExit, match="fsdp2_shard needs hf_iau.sharding"):
        shard_for_unlearning(object())


def test_evaluate_models_has_no_fallback(monkeypatch) -> None:
    import hf_iau.report
    from hf_iau.cli import evaluate_models

    prep = SimpleNamespace(forget=None, retain=None, test=None, collator=None, tokenizer=None, task="image-classification")
    with pytest.raises(ValueError, match="no 'unlearned' model"):
        evaluate_models({"original": object()}, prep, 8)

    def broken(*a, **k):
        raise TypeError("evaluate_unlearning() got an unexpected keyword argument")

    monkeypatch.setattr(hf_iau.report, "evaluate_unlearning", broken)
    with pytest.raises(TypeError, match="unexpected keyword"):  # propagates; no reduced report instead
        evaluate_models({"unlearned": object()}, prep, 8)
    import hf_iau.cli.commands as commands

    assert not hasattr(commands, "MiniReport") and not hasattr(commands, "minimal_report")


def test_card_and_ledger_failure_is_not_skipped(tmp_path: Path, monkeypatch) -> None:
    from tiny import image_dataset, tiny_vit

    from hf_iau import IAUConfig, IAUTrainer

    trainer = IAUTrainer(model=tiny_vit(), args=IAUConfig(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none"),
                         train_dataset=image_dataset(8))
    monkeypatch.setitem(sys.modules, "hf_iau.hub", None)
    with pytest.raises(ImportError):
        trainer.save_model(str(tmp_path / "saved"))
    assert not (tmp_path / "saved").exists()  # atomic: nothing half-written


def test_missing_recipe_explains_where_recipes_live() -> None:
    from hf_iau.cli import recipe_path

    assert (recipe_path("mnist_resnet") / "config.yaml").exists()
    with pytest.raises(SystemExit, match="Bundled recipes: .*mnist_resnet.*--config"):
        recipe_path("no_such_recipe")


def test_local_dataset_folder_splits(tmp_path: Path) -> None:
    """The datasets.load_dataset path: validation is carved from train (kept in source order); a given test split is used as is."""
    import csv

    for name, rows in (("train", 40), ("test", 10)):
        with open(tmp_path / f"{name}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "label", "is_canary"])
            w.writerows([[f"{name} row {i}", i % 2, name == "train" and i < 3] for i in range(rows)])
    data = DataArguments(dataset_name=str(tmp_path), test_split="test", validation_size=8)
    train, validation, test = load_raw(data, seed=0)
    assert (len(train), len(validation), len(test)) == (32, 8, 10)
    assert train["id"] == sorted(train["id"]) and set(test["id"]) == set(range(40, 50))
    assert sum(train["is_canary"]) == 3 and not any(validation["is_canary"])
    carved = load_raw(DataArguments(dataset_name=str(tmp_path), test_size=10, validation_size=5), seed=0)
    assert [len(d) for d in carved] == [25, 5, 10] and sum(carved[0]["is_canary"]) == 3
    assert set(carved[0]["id"]) | set(carved[1]["id"]) | set(carved[2]["id"]) == set(range(40))


QA_RECIPE = {
    "dataset_name": "fictitious_authors", "dataset_kwargs": {"split": "forget10", "n_authors": 20,
                                                             "questions_per_author": 3, "perturbed": 3, "seed": 0},
    "test_size": 0.1, "validation_size": 0.1, "text_template": "Question: {question}\nAnswer: {answer}",
    "question_column": "question", "answer_column": "answer", "max_length": 48, "forget": "column:is_forget",
    "tokenizer_vocab_size": 300, "task": "causal-lm",
    "model_config": {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64},
    "num_train_epochs": 1, "per_device_train_batch_size": 16, "learning_rate": 0.003, "unlearn_steps": 2,
    "save_strategy": "no", "report_to": "none", "seed": 0, "use_cpu": True, "disable_tqdm": True,
    "per_device_eval_batch_size": 16,
    "allow_noop": True,  # one epoch of a 16-dim model: the answers sit at their targets, nothing to remove
}


def test_question_answer_recipe_is_prompt_masked_end_to_end(tmp_path: Path) -> None:
    """`question_column`: rows become prompt-masked examples (answer tokens labelled, the question -100), the
    forget authors' rows are exactly the forget set, and train → unlearn runs on them."""
    from hf_iau.collators import CausalLMCollator

    data = DataArguments(**{k: v for k, v in QA_RECIPE.items() if k in DataArguments.__dataclass_fields__})
    model = ModelArguments(**{k: v for k, v in QA_RECIPE.items() if k in ModelArguments.__dataclass_fields__})
    prep = prepare_data(data, model, SimpleNamespace(seed=0, trust_remote_code=False))
    assert isinstance(prep.collator, CausalLMCollator)
    assert len(prep.forget) == 2 * 3  # 10% of 20 authors × 3 questions, all kept in train
    for row in prep.forget.select(range(3)):
        labels = row["labels"]
        masked = [t == -100 for t in labels]
        assert masked[0] and not masked[-1] and masked == sorted(masked, reverse=True)  # prompt, then answer
        answer = prep.tokenizer.decode([t for t in labels if t != -100])
        assert "Question" not in answer and answer.strip()
    cfg = tmp_path / "qa.yaml"
    cfg.write_text(yaml.safe_dump({**QA_RECIPE, "output_dir": str(tmp_path / "run")}))
    assert main(["train", "--config", str(cfg)]) == 0
    assert main(["unlearn", "--config", str(cfg)]) == 0
    assert (tmp_path / "run" / "unlearned" / "deletion_ledger.jsonl").exists()
