"""Model card of an unlearned checkpoint: valid metadata, fingerprints only, no forgotten content anywhere."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from datasets import Dataset
from huggingface_hub import ModelCard, metadata_load
from tiny import SEQ, VOCAB, tiny_gpt2
from transformers import default_data_collator

from hf_iau import IAUConfig, IAUTrainer, fingerprint_dataset, forget_retain_split
from hf_iau.card import build_model_card, template_path
from hf_iau.report import evaluate_unlearning
from hf_iau.ledger import LEDGER_NAME, read_ledger, seal_entry

FAKE_TOKEN = "hf_FAKEcardTOKENmustNEVERbeWRITTEN987654"


def _entries(n: int = 2) -> list[dict]:
    out, prev = [], None
    for i in range(n):
        prev = seal_entry(
            {
                "request_id": f"{i:064x}",
                "time_utc": f"2025-01-0{i + 1}T00:00:00Z",
                "method": "iau",
                "forget_fingerprint": f"{i + 10:064x}",
                "forget_size": 4 + i,
                "retain_size": 40,
                "parent_checkpoint_sha256": None,
                "child_checkpoint_sha256": f"{i + 20:064x}",
                "config": {"gr_alpha": 0.005, "unlearn_optimizer": "adam", "unlearn_learning_rate": 1e-3,
                           "unlearn_steps": 1, "forget_weight": 1.0, "retain_weight": 1.0, "retain_sample_size": None},
                "config_sha256": "c" * 64,
                "metrics": {"forget_loss_before": 0.5, "forget_loss_after": 2.25, "retain_loss_before": 0.4,
                            "retain_loss_after": 0.45, "wall_time_s": 1.5, "example_gradient_passes": 44.0,
                            "example_forward_passes": 88.0},
            },
            prev,
        )
        out.append(prev)
    return out


def test_card_from_ledger_entries(tmp_path):
    entries = _entries(2)
    evaluation = {"original/forget_loss": 0.5, "unlearned/forget_loss": 2.25, "retrained/forget_loss": 2.0,
                  "gap_to_retrain": 0.125}
    card = build_model_card(entries, model_name="m", base_model="org/base", variant="adapter",
                            task_type="text-generation", evaluation=evaluation, hardware="CPU",
                            versions={"torch": "2.x"})
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    meta = metadata_load(tmp_path / "README.md")
    assert {"unlearning", "iau", "peft", "lora"} <= set(meta["tags"])
    assert meta["base_model"] == "org/base" and meta["library_name"] == "peft"
    assert meta["unlearning"]["forget_size"] == 5 and meta["unlearning"]["forget_sha256"] == f"{11:064x}"
    assert meta["unlearning"]["requests"] == 2 and meta["unlearning"]["total_forget_size"] == 9
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in loaded.data.eval_results}
    assert results == {("forget-set", "loss"): 2.25, ("retain-set", "loss"): 0.45, ("forget-set", "gap_to_retrain"): 0.125}
    text = loaded.text
    assert "Against the retrained model" in text and "| forget loss | 0.5000 | 2.2500 | 2.0000 |" in text
    assert "| forget loss | 0.5000 | 2.2500 |" in text  # before/after table
    assert "132 (44 gradient passes, 88 forward-only passes)" in text and "1.500 s" in text
    assert "arXiv 2507.23257" in text and "@article" in text
    assert all(e["forget_fingerprint"] in text for e in entries)  # the chain is listed
    assert template_path().name == "unlearned_model_card.md"
    # a local base model is recorded as the origin (the Hub's `base_model` takes model ids only) and named in the text
    card = build_model_card(entries[:1], model_name="m", base_model=str(tmp_path), variant="full")
    assert "base_model" not in card.data.to_dict() and f"local checkpoint `{tmp_path}`" in card.text
    assert card.data.unlearning["base_model_origin"] == str(tmp_path)
    assert "No evaluation against a model retrained" in card.text
    with pytest.raises(ValueError, match="variant"):
        build_model_card(entries, model_name="m", variant="zip")
    with pytest.raises(ValueError, match="empty"):
        build_model_card([], model_name="m")


def _secret_dataset(n: int = 12, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(n, SEQ)).tolist()
    return Dataset.from_dict({
        "id": [f"patient-7f3a9c-{seed}{i:03d}" for i in range(n)],
        "text": [f"SECRET diagnosis of row {i}: zanzibar-{i * 7919 + seed}" for i in range(n)],
        "input_ids": ids, "attention_mask": [[1] * SEQ] * n, "labels": ids,
    })


def test_saved_files_hold_fingerprints_never_forgotten_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    ds = _secret_dataset()
    out = tmp_path / "out"
    args = IAUConfig(output_dir=str(out), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
                     num_train_epochs=1, per_device_train_batch_size=4, logging_steps=1, hub_token=FAKE_TOKEN,
                     hub_model_id="tester/secret", unlearn_targets="none", unlearn_stop="fixed", unlearn_steps=3)
    trainer = IAUTrainer(model=tiny_gpt2(), args=args, train_dataset=ds, data_collator=default_data_collator)
    trainer.train()
    forget_ids = ["patient-7f3a9c-0002", "patient-7f3a9c-0005", "patient-7f3a9c-0011"]  # seed 0 rows
    split = forget_retain_split(ds, forget=forget_ids, id_column="id")
    original = copy.deepcopy(trainer.model)
    result = trainer.unlearn(split["forget"], retain_dataset=split["retain"])
    report = evaluate_unlearning(trainer.model, original, tiny_gpt2(seed=1), forget=split["forget"],
                                 retain=split["retain"], test=_secret_dataset(6, seed=1), mia=("loss",))
    trainer.unlearning_report = report  # the card shows it (same forget fingerprint)
    trainer.save_model()
    trainer.save_state()
    report.save(out)  # report.json/md/png next to the weights
    fingerprint = fingerprint_dataset(split["forget"], "id")

    card = ModelCard.load(out / "README.md")
    assert {"unlearning", "iau"} <= set(card.data.tags)
    assert card.data.unlearning["forget_size"] == 3 and card.data.unlearning["forget_hmac_sha256"] == fingerprint
    assert "forget_sha256" not in card.data.unlearning  # the keyed fingerprint is an HMAC: its name says so
    assert card.data.library_name == "transformers"
    forget_loss = [r.metric_value for r in card.data.eval_results if (r.dataset_type, r.metric_type) == ("forget-set", "loss")]
    assert forget_loss == [round(result.metrics["forget_loss_after"], 6)]
    assert f"3 examples, HMAC-SHA256 fingerprint `{fingerprint}`" in card.text
    assert "Against the retrained model" in card.text
    gap = [r.metric_value for r in card.data.eval_results if r.metric_type == "gap_to_retrain"]
    assert gap == [round(report.metrics["gap_to_retrain"], 6)]
    (entry,) = read_ledger(out)
    assert entry["forget_fingerprint"] == fingerprint and entry["forget_size"] == 3

    written = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"README.md", LEDGER_NAME, "trainer_state.json", "training_args.json", "model.safetensors",
            "report.json", "report.md", "report.png"} <= names
    assert json.loads((out / "trainer_state.json").read_text())["log_history"]  # logs were written
    secrets = [r["id"] for r in split["forget"]] + [r["text"] for r in split["forget"]]
    secrets += ["7f3a9c-0002", "zanzibar-15838", FAKE_TOKEN]
    for path in written:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} written to {path.name}"
    assert fingerprint.encode() in (out / "README.md").read_bytes() and fingerprint.encode() in (out / LEDGER_NAME).read_bytes()


def _trainer(out, model, gr_alpha: float = 0.0, train: bool = False, peft_config=None) -> IAUTrainer:
    args = IAUConfig(output_dir=str(out), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
                     num_train_epochs=1, per_device_train_batch_size=4, gr_alpha=gr_alpha, unlearn_targets="none")
    trainer = IAUTrainer(model=model, args=args, train_dataset=_secret_dataset(), data_collator=default_data_collator,
                         peft_config=peft_config)
    if train:
        trainer.train()
    return trainer


def _unlearn_and_save(trainer: IAUTrainer) -> ModelCard:
    split = forget_retain_split(trainer.train_dataset, forget=["patient-7f3a9c-0002", "patient-7f3a9c-0005"], id_column="id")
    trainer.unlearn(split["forget"], retain_dataset=split["retain"])
    trainer.save_model()
    return ModelCard.load(f"{trainer.args.output_dir}/README.md")


def test_gr_provenance_comes_from_the_checkpoints_own_training_record(tmp_path):
    """A checkpoint trained without GR, unlearned under IAUConfig(gr_alpha=0.005), does not claim GR; one trained
    with GR says so, also one request later (the record travels along the ledger, not training_args.json)."""
    plain = _trainer(tmp_path / "plain", tiny_gpt2(), train=True)
    plain.save_model()
    card = _unlearn_and_save(_trainer(tmp_path / "plain-unlearned", str(tmp_path / "plain"), gr_alpha=0.005))
    assert "**Training:** without gradient restriction (per `training_args.json` of `plain`)" in card.text
    assert "**Parent checkpoint:** local checkpoint `plain` (weights sha256" in card.text
    assert "0.005" not in card.text and "gradient restriction (ℓ + α" not in card.text
    assert read_ledger(tmp_path / "plain-unlearned")[-1]["training"]["gr_alpha"] == 0.0

    card = _unlearn_and_save(_trainer(tmp_path / "gr", tiny_gpt2(), gr_alpha=0.005, train=True))
    assert "with gradient restriction ℓ + α‖∇ℓ‖, α = 0.005, mode `finite_difference`" in card.text
    assert "per this run's `train()`" in card.text
    again = _trainer(tmp_path / "gr-again", str(tmp_path / "gr"), gr_alpha=0.0)  # its training_args.json: α 0.005
    split = forget_retain_split(again.train_dataset, forget=["patient-7f3a9c-0007"], id_column="id")
    again.unlearn(split["forget"])
    again.save_model()
    assert "α = 0.005" in ModelCard.load(tmp_path / "gr-again" / "README.md").text
    in_memory = _unlearn_and_save(_trainer(tmp_path / "mem", tiny_gpt2()))  # never trained here, no folder
    assert "**Training:** not recorded" in in_memory.text


def test_lora_card_names_its_base_model_and_dataset(tmp_path):
    """ModelCard.load of a LoRA card: base_model is the Hub id the local base checkpoint descends from, `datasets`
    the dataset's name; a base with no Hub origin is recorded as the local origin."""
    from peft import LoraConfig

    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True)
    base = tiny_gpt2()
    base.save_pretrained(tmp_path / "base")
    card = _unlearn_and_save(_trainer(tmp_path / "lora-local", str(tmp_path / "base"), peft_config=lora))
    assert card.data.library_name == "peft" and card.data.base_model is None and card.data.datasets is None
    assert card.data.unlearning["base_model_origin"] == str(tmp_path / "base")
    assert f"**Base model:** local checkpoint `{tmp_path / 'base'}`" in card.text

    ModelCard("---\nbase_model: org/tiny-gpt2\n---\n# fine-tuned from a Hub model\n").save(tmp_path / "base" / "README.md")
    trainer = _trainer(tmp_path / "lora", str(tmp_path / "base"), peft_config=lora)
    trainer.dataset_name = "org/patients"
    card = _unlearn_and_save(trainer)
    meta = metadata_load(tmp_path / "lora" / "README.md")
    assert meta["base_model"] == "org/tiny-gpt2" and meta["datasets"] == ["org/patients"]
    assert card.data.base_model == "org/tiny-gpt2" and "(https://huggingface.co/org/tiny-gpt2)" in card.text
    assert read_ledger(tmp_path / "lora")[-1]["base_model"] == "org/tiny-gpt2"


def test_card_is_rewritten_with_the_evaluation_after_evaluate(tmp_path):
    """update_card(folder) after report.json was written: the comparison with the retrained model is in the card
    (text and eval_results); the ledger still verifies; a report about another forget set is refused."""
    from hf_iau.hub import update_card
    from hf_iau.ledger import verify_ledger

    trainer = _trainer(tmp_path / "out", tiny_gpt2(), train=True)
    original = copy.deepcopy(trainer.model)
    card = _unlearn_and_save(trainer)
    assert "No evaluation against a model retrained" in card.text and card.data.eval_results
    split = forget_retain_split(trainer.train_dataset, forget=["patient-7f3a9c-0002", "patient-7f3a9c-0005"], id_column="id")
    report = evaluate_unlearning(trainer.model, original, tiny_gpt2(seed=1), forget=split["forget"],
                                 retain=split["retain"], test=_secret_dataset(6, seed=1), mia=("loss",))
    report.save(tmp_path / "out")
    update_card(tmp_path / "out")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert "No evaluation against a model retrained" not in card.text and "Against the retrained model" in card.text
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("forget-set", "gap_to_retrain")] == round(report.metrics["gap_to_retrain"], 6)
    assert results[("test-set", "loss")] == round(report.metrics["unlearned/test_loss"], 6)
    assert verify_ledger(tmp_path / "out") == []
    other = forget_retain_split(trainer.train_dataset, forget=["patient-7f3a9c-0003"], id_column="id")
    wrong = evaluate_unlearning(trainer.model, original, tiny_gpt2(seed=1), forget=other["forget"],
                                retain=other["retain"], test=_secret_dataset(6, seed=1), mia=("loss",))
    with pytest.raises(ValueError, match="another|forgot"):
        update_card(tmp_path / "out", wrong)
    assert ModelCard.load(tmp_path / "out" / "README.md").text == card.text


def test_dataset_name_is_the_datas_own_never_its_loaders(tmp_path):
    from types import SimpleNamespace

    from datasets import load_dataset

    from hf_iau.hub import _dataset_name, _Parent

    (tmp_path / "rows.csv").write_text("id,x\n1,2\n")
    csv = load_dataset("csv", data_files=str(tmp_path / "rows.csv"), split="train", cache_dir=str(tmp_path / "cache"))
    assert _dataset_name(SimpleNamespace(train_dataset=csv), _Parent()) is None  # "csv" names the loader
    named = SimpleNamespace(train_dataset=csv, dataset_name="org/rows")
    assert _dataset_name(named, _Parent()) == "org/rows"
    assert _dataset_name(SimpleNamespace(train_dataset=None), _Parent(entries=[{"dataset": "org/rows"}])) == "org/rows"


def test_the_card_names_the_sampled_retain_term_and_the_targets(tmp_path):
    """The card read the pre-rename config keys: a sampled retain term was described as 'the whole retain set'."""
    trainer = _trainer(tmp_path / "card", tiny_gpt2())
    trainer.args.unlearn_retain_sample_size = 5
    split = forget_retain_split(trainer.train_dataset, forget=["patient-7f3a9c-0007"], id_column="id")
    trainer.unlearn(split["forget"])
    trainer.save_model()
    text = ModelCard.load(tmp_path / "card" / "README.md").text
    assert "a seeded sample of 5 per step" in text and "forget targets" in text
