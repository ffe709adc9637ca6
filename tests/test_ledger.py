"""Deletion ledger: hash chain, torn lines, sequential requests, verification against weight files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from tiny import lm_dataset, tiny_gpt2
from transformers import default_data_collator

from hf_iau import IAUConfig, IAUTrainer, fingerprint_dataset, forget_retain_split
from hf_iau.ledger import (
    GENESIS_HASH,
    LEDGER_NAME,
    LedgerError,
    append_entry,
    canonical_json,
    check_chain,
    entry_hash,
    main_ledger,
    read_ledger,
    verify_ledger,
)


def _entry(rid: str, **kw) -> dict:
    return {"request_id": rid, "time_utc": "2025-01-01T00:00:00Z", "forget_fingerprint": "f" * 64, "forget_size": 2, **kw}


def test_append_chain_and_torn_lines(tmp_path):
    path = tmp_path / LEDGER_NAME
    e0 = append_entry(path, _entry("a", metrics={"forget_loss_after": float("inf")}))
    e1 = append_entry(tmp_path, _entry("b"))  # a folder resolves to its ledger file
    assert (e0["index"], e1["index"]) == (0, 1)
    assert e0["prev_entry_sha256"] == GENESIS_HASH and e1["prev_entry_sha256"] == e0["entry_sha256"]
    assert e0["metrics"]["forget_loss_after"] == "inf"  # non-finite floats stay valid JSON
    assert read_ledger(path) == [e0, e1] and check_chain([e0, e1]) == []
    good = path.read_bytes()
    assert good.count(b"\n") == 2 and good.endswith(b"\n")

    # a crash in the middle of an append leaves a partial last line: detected, never extended
    path.write_bytes(good + b'{"request_id": "c", "ti')
    with pytest.raises(LedgerError, match="torn last line"):
        read_ledger(path)
    with pytest.raises(LedgerError):
        append_entry(path, _entry("c"))
    problems = verify_ledger(tmp_path, check_weight_files=False)
    assert len(problems) == 1 and "line 3: torn last line" in problems[0]
    # a complete JSON object without its newline is torn too (the fsync did not finish)
    path.write_bytes(good[:-1])
    with pytest.raises(LedgerError, match="no terminating newline"):
        read_ledger(path)
    # a garbled line in the middle
    lines = good.split(b"\n")
    path.write_bytes(lines[0][:40] + b"\n" + lines[1] + b"\n")
    assert any("line 1: malformed" in p for p in verify_ledger(tmp_path, check_weight_files=False))


def _args(out: Path) -> IAUConfig:
    # forget_saturation="none": the untrained tiny model fits nothing, so the default ("auto", flip without
    # held-out data) would rightly leave the weights unchanged; this test needs each request to change them.
    return IAUConfig(output_dir=str(out), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
                     forget_saturation="none")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """out1: one request on a trained model; out2: out1 loaded from disk, a second request."""
    root = tmp_path_factory.mktemp("chain")
    ds = lm_dataset(10)
    model = tiny_gpt2()
    model.config._name_or_path = "tiny-org/tiny-gpt2"
    t1 = IAUTrainer(model=model, args=_args(root / "out1"), train_dataset=ds, data_collator=default_data_collator)
    s1 = forget_retain_split(ds, forget=[0, 1, 2], id_column="id")
    t1.unlearn(s1["forget"], retain_dataset=s1["retain"])
    t1.save_model()
    first = (root / "out1" / LEDGER_NAME).read_bytes()
    t1.save_model()  # saving the same state again must not add or change an entry
    assert (root / "out1" / LEDGER_NAME).read_bytes() == first
    t2 = IAUTrainer(model=str(root / "out1"), args=_args(root / "out2"), train_dataset=ds,
                    data_collator=default_data_collator)
    s2 = forget_retain_split(ds, forget=[3, 4], id_column="id")
    with pytest.raises(ValueError, match="3 row\\(s\\) deleted by an earlier request"):
        t2.unlearn(s2["forget"], retain_dataset=s2["retain"])  # request 1's rows are back in this retain set
    res = t2.unlearn(s2["forget"])  # retain = train − {0..4}: the reloaded folder's deletion record
    assert res.retain_size == len(ds) - 5
    t2.save_model()
    fps = [fingerprint_dataset(s1["forget"], "id"), fingerprint_dataset(s2["forget"], "id")]
    return root, first, fps


def test_two_sequential_requests_make_a_verified_chain(chain, capsys):
    root, first, fps = chain
    out1, out2 = root / "out1", root / "out2"
    entries = read_ledger(out2)
    assert len(entries) == 2
    assert [e["forget_fingerprint"] for e in entries] == fps
    assert [e["forget_size"] for e in entries] == [3, 2]
    assert entries[0] == read_ledger(out1)[0]  # the parent's chain is carried over unchanged
    assert entries[1]["prev_entry_sha256"] == entries[0]["entry_sha256"] == entry_hash(entries[0])
    assert entries[1]["parent_checkpoint_sha256"] == entries[0]["child_checkpoint_sha256"]
    assert entries[1]["child_checkpoint_sha256"] != entries[0]["child_checkpoint_sha256"]
    assert verify_ledger(out1) == [] and verify_ledger(out2) == []
    # the parent's ledger was copied, not appended to in place
    assert (out1 / LEDGER_NAME).read_bytes() == first
    assert os.stat(out1 / LEDGER_NAME).st_ino != os.stat(out2 / LEDGER_NAME).st_ino
    assert main_ledger(["verify", str(out2)]) == 0
    assert "OK: 2 entries" in capsys.readouterr().out
    # the card lists the chain
    from huggingface_hub import ModelCard

    card = ModelCard.load(out2 / "README.md")
    assert card.data.unlearning["requests"] == 2 and card.data.unlearning["total_forget_size"] == 5
    assert card.data.base_model == "tiny-org/tiny-gpt2"
    assert all(fp in card.text for fp in fps)


def test_tampered_weights_or_ledger_fail_verification(chain, tmp_path, capsys):
    root, _, _ = chain
    bad_w = tmp_path / "bad_weights"
    shutil.copytree(root / "out2", bad_w)
    data = bytearray((bad_w / "model.safetensors").read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    (bad_w / "model.safetensors").write_bytes(bytes(data))
    problems = verify_ledger(bad_w)
    assert any("weight file model.safetensors: sha256" in p for p in problems)
    assert verify_ledger(bad_w, check_weight_files=False) == []
    assert main_ledger(["verify", str(bad_w)]) == 1
    assert "FAILED" in capsys.readouterr().out

    bad_l = tmp_path / "bad_ledger"
    shutil.copytree(root / "out2", bad_l)
    lines = (bad_l / LEDGER_NAME).read_text().splitlines()
    e0 = json.loads(lines[0])
    e0["forget_size"] = 1  # rewrite history: claim a smaller forget set
    (bad_l / LEDGER_NAME).write_text("\n".join([canonical_json(e0), lines[1]]) + "\n")
    assert any("entry 0: entry_sha256 does not match" in p for p in verify_ledger(bad_l))
    e0["entry_sha256"] = entry_hash(e0)  # re-sealing the edited line breaks the link from entry 1
    (bad_l / LEDGER_NAME).write_text("\n".join([canonical_json(e0), lines[1]]) + "\n")
    problems = verify_ledger(bad_l)
    assert problems == ["entry 1: prev_entry_sha256 does not match entry 0 (chain broken)"]

    with pytest.raises(FileNotFoundError):
        verify_ledger(tmp_path)
    assert main_ledger(["verify", str(tmp_path), "--json"]) == 2


def test_in_place_request_keeps_linked_ledgers_intact(chain, tmp_path):
    root, _, _ = chain
    folder = tmp_path / "inplace"
    shutil.copytree(root / "out2", folder)
    os.link(folder / LEDGER_NAME, tmp_path / "linked.jsonl")  # e.g. a previous folder sharing the inode
    ds = lm_dataset(10)
    t3 = IAUTrainer(model=str(folder), args=_args(folder), train_dataset=ds, data_collator=default_data_collator)
    s3 = forget_retain_split(ds, forget=[7], id_column="id")
    t3.unlearn(s3["forget"])  # retain = train − {0..4} − {7}
    t3.save_model()
    assert len(read_ledger(folder)) == 3 and verify_ledger(folder) == []
    assert len(read_ledger(tmp_path / "linked.jsonl")) == 2


def test_one_trainer_many_requests_appends_only(tmp_path):
    ds = lm_dataset(10)
    out = tmp_path / "out"
    trainer = IAUTrainer(model=tiny_gpt2(), args=_args(out), train_dataset=ds, data_collator=default_data_collator)
    for ids in ([0, 1], [2]):
        s = forget_retain_split(ds, forget=ids, id_column="id")
        trainer.unlearn(s["forget"])
        if ids == [0, 1]:
            trainer.save_model()
            first = (out / LEDGER_NAME).read_bytes()
    s = forget_retain_split(ds, forget=[3], id_column="id")
    trainer.unlearn(s["forget"])
    trainer.save_model()
    data = (out / LEDGER_NAME).read_bytes()
    assert data.startswith(first)  # the saved entry is kept byte for byte; new requests are appended
    e = read_ledger(out)
    assert [x["forget_size"] for x in e] == [2, 1, 1]
    assert e[0]["parent_checkpoint_sha256"] is None  # a model built in memory has no parent checkpoint
    assert e[1]["parent_checkpoint_sha256"] == e[0]["child_checkpoint_sha256"] is not None
    assert e[1]["child_checkpoint_sha256"] is None and e[1]["child_weight_files"] == {}  # never saved
    assert e[2]["child_checkpoint_sha256"] is not None
    assert verify_ledger(out) == []


def test_entry_records_the_whole_config_seed_and_request_index_and_an_auditor_reproduces_it(tmp_path, capsys):
    """The ledger holds every field that determines the update: rerunning the recorded config on the parent
    checkpoint with the same forget ids gives the recorded child weights, byte for byte."""
    from hf_iau.ledger import reproduction, weight_hashes

    ds = lm_dataset(12)
    IAUTrainer(model=tiny_gpt2(), args=_args(tmp_path / "parent"), train_dataset=ds).save_model()
    unlearn = dict(unlearn_learning_rate=0.01, unlearn_steps=2, unlearn_retain_sample_size=5, seed=3,
                   unlearn_optimizer="sgd")

    def run(out: Path, **config) -> IAUTrainer:
        args = IAUConfig(output_dir=str(out), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no", **config)
        trainer = IAUTrainer(model=str(tmp_path / "parent"), args=args, train_dataset=ds, data_collator=default_data_collator)
        trainer.unlearn(forget_retain_split(ds, forget=[1, 4, 7], id_column="id")["forget"])
        return trainer

    trainer = run(tmp_path / "child", unlearn_targets="none", **unlearn)
    trainer.unlearning_history[-1]["config"]["extra_option"] = {"nested": [1, 2]}  # whatever the method records
    trainer.save_model()
    (entry,) = read_ledger(tmp_path / "child")
    assert entry["config"] == trainer.unlearning_history[-1]["config"]  # whole, nested values kept
    assert entry["method"] == "iau" and entry["seed"] == 3 and entry["request_index"] == 0
    del entry["config"]["extra_option"]
    audit = run(tmp_path / "audit", **entry["config"])
    audit.save_model()
    assert weight_hashes(tmp_path / "audit") == entry["child_weight_files"]

    text = reproduction(entry)
    assert "--method iau" in text and "--unlearn_learning_rate 0.01" in text and "--seed 3" in text
    assert "--unlearn_targets none" in text and entry["child_checkpoint_sha256"] in text
    assert entry["parent_checkpoint_sha256"] in text and "request index 0" in text
    # bitwise equality holds on the same kind of hardware only: the entry names the CPU kernels' vector ISA
    import torch

    kernels = torch.backends.cpu.get_cpu_capability()
    assert f"{kernels} kernels" in entry["environment"]["hardware"] and f"{kernels} kernels" in text
    assert "bitwise only on the same kind of hardware" in text
    assert main_ledger(["show", str(tmp_path / "child")]) == 0
    assert "--unlearn_optimizer sgd" in capsys.readouterr().out
    assert main_ledger(["show", str(tmp_path / "parent")]) == 2


def test_an_entry_written_before_a_changed_default_reproduces_with_the_old_value():
    """unlearn_follow_held_out became the default after ledgers were first written: an IAU entry without the field
    ran without it, and the auditor's command says so; a recorded value is kept."""
    from hf_iau.ledger import reproduction

    old = {"index": 0, "method": "iau", "config": {"unlearn_steps": 20, "unlearn_targets": "counterfactual"}}
    assert "--unlearn_follow_held_out false" in reproduction(old)
    new = {**old, "config": {**old["config"], "unlearn_follow_held_out": True}}
    assert "--unlearn_follow_held_out true" in reproduction(new)
    other = {**old, "method": "npo", "config": {"learning_rate": 1e-4}}
    assert "unlearn_follow_held_out" not in reproduction(other)
