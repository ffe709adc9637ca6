"""Keyed fingerprints: nobody can enumerate deleted ids from the public card and ledger; the key holder can prove them."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
from pathlib import Path

import pytest
from datasets import Dataset
from tiny import SEQ, VOCAB, tiny_gpt2
from transformers import default_data_collator

import numpy as np
from hf_iau import IAUConfig, IAUTrainer, forget_retain_split
from hf_iau.data import (
    default_key_file,
    fingerprint_ids,
    key_id,
    legacy_fingerprint_ids,
    load_key,
    row_digests,
)
from hf_iau.ledger import (
    DELETION_RECORD_NAME,
    LEDGER_NAME,
    append_entry,
    canonical_json,
    entry_hash,
    main_ledger,
    read_ledger,
    verify_ledger,
)

SPACE = 10_000  # integer ids 0..9999


def _ds(ids: list[int], seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    toks = rng.integers(1, VOCAB, size=(len(ids), SEQ)).tolist()
    return Dataset.from_dict({"id": ids, "input_ids": toks, "attention_mask": [[1] * SEQ] * len(ids), "labels": toks})


def _args(out: Path, key: Path) -> IAUConfig:
    return IAUConfig(output_dir=str(out), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
                     logging_steps=1, forget_saturation="none", fingerprint_key_file=str(key))


def test_key_file_is_created_private_and_reused(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "k.key"
    monkeypatch.setenv("HF_IAU_KEY_FILE", str(path))
    assert default_key_file() == path
    key = load_key()
    assert len(key) == 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key() == key and load_key(path, create=False) == key
    assert fingerprint_ids([3, 1, 2]) == fingerprint_ids([1, 2, 3], key) == fingerprint_ids(["1", "2", "3"], key)
    assert fingerprint_ids([1, 2], key) != fingerprint_ids([1, 2], load_key(tmp_path / "other.key"))
    assert fingerprint_ids([1, 2], key) != legacy_fingerprint_ids([1, 2])
    assert legacy_fingerprint_ids([2, 1]) == hashlib.sha256(b'["1","2"]').hexdigest()  # the old scheme, unchanged
    assert len(key_id(key)) == 16 and key.hex() not in key_id(key)
    with pytest.raises(ValueError, match="does not exist.*--key"):
        load_key(tmp_path / "missing.key", create=False)
    (tmp_path / "bad.key").write_text("not hex")
    with pytest.raises(ValueError, match="does not hold a key.*fingerprint_key_file"):
        load_key(tmp_path / "bad.key")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Two requests on integer ids from 0..9999 (one single id, one pair), saved like a public Hub folder."""
    root = tmp_path_factory.mktemp("pub")
    key_path = root / "secret" / "fingerprint.key"
    rng = np.random.default_rng(3)
    small = sorted(rng.choice(500, size=29, replace=False).tolist())
    ids = small + [7311]
    ds = _ds(ids)
    single, pair = [7311], [small[4], small[17]]
    out = root / "out"
    t1 = IAUTrainer(model=tiny_gpt2(), args=_args(out, key_path), train_dataset=ds, data_collator=default_data_collator)
    t1.unlearn(forget_retain_split(ds, forget=single)["forget"])
    t1.save_model()
    t2 = IAUTrainer(model=str(out), args=_args(root / "out2", key_path), train_dataset=ds,
                    data_collator=default_data_collator)
    t2.unlearn(forget_retain_split(ds, forget=pair)["forget"])
    t2.save_model()
    t2.save_state()
    return root, key_path, single, pair


def _public_hex(folder: Path) -> set[str]:
    """Every 64-hex string in the public files of a folder (card, ledger, deletion record)."""
    import re

    found: set[str] = set()
    for name in ("README.md", LEDGER_NAME, DELETION_RECORD_NAME):
        found |= set(re.findall(r"[0-9a-f]{64}", (folder / name).read_text()))
    return found


def test_enumeration_cannot_find_deleted_ids_but_the_key_proves_them(published, tmp_path, capsys):
    root, key_path, single, pair = published
    out = root / "out2"
    public = _public_hex(out)
    entries = read_ledger(out)
    assert [e["forget_size"] for e in entries] == [1, 2]
    # The attack: hash every single id of 0..9999 and every pair of 0..499 the way an unkeyed scheme would
    # (sha256 of the sorted ids; also per-row sha256 and HMAC under an empty key) and look it up in the public files.
    singles = [legacy_fingerprint_ids([i]) for i in range(SPACE)]
    singles += [hashlib.sha256(json.dumps(str(i)).encode()).hexdigest() for i in range(SPACE)]
    singles += row_digests(range(SPACE), b"")
    pairs = (legacy_fingerprint_ids(p) for p in itertools.combinations(range(500), 2))
    assert not public & set(singles)
    assert not any(h in public for h in pairs)
    # ...which DID break the old scheme: the same requests fingerprinted the old way are found at once
    old = {legacy_fingerprint_ids(single), legacy_fingerprint_ids(pair)}
    assert old <= set(singles[:SPACE]) | {legacy_fingerprint_ids(p) for p in itertools.combinations(range(500), 2)}

    # with the key, `ledger verify --key --ids` proves which entry deleted which ids
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps(pair))
    assert main_ledger(["verify", str(out), "--key", str(key_path), "--ids", str(ids_file), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] and rep["ids"]["match"] == 1 and rep["ids"]["scheme"] == "hmac-sha256"
    assert rep["key"]["entries"] == [0, 1] and rep["key"]["key_id"] == key_id(load_key(key_path, create=False))
    ids_file.write_text(json.dumps(single))
    assert main_ledger(["verify", str(out), "--key", str(key_path), "--ids", str(ids_file)]) == 0
    assert "exactly the forget set of entry 0" in capsys.readouterr().out
    ids_file.write_text(json.dumps([pair[0], pair[1] + 1]))  # a wrong guess
    assert main_ledger(["verify", str(out), "--key", str(key_path), "--ids", str(ids_file)]) == 1
    assert "match no entry" in capsys.readouterr().out
    ids_file.write_text(json.dumps(pair))
    assert main_ledger(["verify", str(out), "--key", str(tmp_path / "wrong.key"), "--ids", str(ids_file)]) == 2
    load_key(tmp_path / "other.key")
    assert main_ledger(["verify", str(out), "--key", str(tmp_path / "other.key"), "--ids", str(ids_file)]) == 1
    # without a key the chain, the weights and the deletion record still verify
    assert main_ledger(["verify", str(out)]) == 0
    assert "OK: 2 entries" in capsys.readouterr().out

    # tampering still fails: swap in the fingerprint of other ids and re-seal the line
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in out.iterdir():
        if p.is_file():
            (bad / p.name).write_bytes(p.read_bytes())
    lines = (bad / LEDGER_NAME).read_text().splitlines()
    e1 = json.loads(lines[1])
    e1["forget_fingerprint"] = fingerprint_ids([1, 2], load_key(key_path, create=False))
    (bad / LEDGER_NAME).write_text("\n".join([lines[0], canonical_json(e1)]) + "\n")
    assert any("entry 1: entry_sha256 does not match" in p for p in verify_ledger(bad))
    e1["entry_sha256"] = entry_hash(e1)
    (bad / LEDGER_NAME).write_text("\n".join([lines[0], canonical_json(e1)]) + "\n")
    assert any("ledger_head" in p for p in verify_ledger(bad))  # a re-sealed last line no longer matches the card
    (bad / "README.md").unlink()
    assert verify_ledger(bad, check_weight_files=False) == []  # without the card the chain holds...
    assert main_ledger(["verify", str(bad), "--key", str(key_path), "--ids", str(ids_file)]) == 1  # ...but no longer proves


def test_key_never_written_anywhere(published):
    root, key_path, _, _ = published
    key = load_key(key_path, create=False)
    secrets = {key_path.read_bytes().strip(), key, key.hex().encode(), key.hex().upper().encode()}
    written = [p for p in root.rglob("*") if p.is_file() and p != key_path]
    assert {p.name for p in written} >= {"README.md", LEDGER_NAME, DELETION_RECORD_NAME, "trainer_state.json",
                                          "training_args.json", "model.safetensors"}
    for path in written:
        assert path.name != key_path.name and not path.samefile(key_path)
        data = path.read_bytes()
        for s in secrets:
            assert s not in data, f"the fingerprint key is in {path}"


def test_old_unkeyed_ledger_still_verifies_and_proves_ids(tmp_path, capsys):
    folder = tmp_path / "old"
    folder.mkdir()
    ids = [12, 40]
    for i, fp in enumerate([legacy_fingerprint_ids([5]), legacy_fingerprint_ids(ids)]):
        append_entry(folder, {"request_id": f"{i:064x}", "time_utc": "2025-01-01T00:00:00Z", "forget_fingerprint": fp,
                              "forget_size": 1 + i})
    assert verify_ledger(folder, check_weight_files=False) == []
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    args = ["verify", str(folder), "--no-weights", "--ids", str(tmp_path / "ids.json"), "--key", str(tmp_path / "none.key")]
    assert main_ledger(args) == 2  # a named key file that does not exist is an error
    os.environ["HF_IAU_KEY_FILE"] = str(tmp_path / "absent.key")
    try:
        assert main_ledger(args[:-2]) == 0  # no key needed for unkeyed entries
    finally:
        del os.environ["HF_IAU_KEY_FILE"]
    assert "exactly the forget set of entry 1 (request" in capsys.readouterr().out and not (tmp_path / "absent.key").exists()
