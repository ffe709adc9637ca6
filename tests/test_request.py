"""DeletionRequest: rows deleted by earlier requests stay out of every later request's data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset
from huggingface_hub import ModelCard
from tiny import lm_dataset, tiny_gpt2
from transformers import default_data_collator

from hf_iau import IAUConfig, IAUTrainer, forget_retain_split
from hf_iau.data import fingerprint_ids, load_key
from hf_iau.ledger import DELETION_RECORD_NAME, LEDGER_NAME, main_ledger, read_ledger, seal_entry, verify_ledger
from hf_iau.methods import run_method
from hf_iau.request import DeletionRequest


class RecordingCollator:
    """``default_data_collator`` that records the id of every row it collates (rows are told apart by content)."""

    def __init__(self, ds: Dataset) -> None:
        self.id_of = {tuple(r["input_ids"]): r["id"] for r in ds}
        assert len(self.id_of) == len(ds)  # every row has distinct content
        self.seen: list = []

    def __call__(self, rows: list[dict]) -> dict:
        self.seen += [self.id_of.get(tuple(r["input_ids"])) for r in rows]
        return default_data_collator(rows)


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "keys" / "fingerprint.key"
    monkeypatch.setenv("HF_IAU_KEY_FILE", str(path))
    return path


def _args(out: Path, **kw) -> IAUConfig:
    # unlearn_targets="none": the untrained tiny model fits nothing; every request must move the weights
    return IAUConfig(output_dir=str(out), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
                     unlearn_targets="none", unlearn_batch_size=4, **kw)


def _forget(ds: Dataset, ids: list[int]) -> Dataset:
    return forget_retain_split(ds, forget=ids, id_column="id")["forget"]


def test_request_two_after_reload_never_touches_request_one_rows(tmp_path, key_file):
    ds = lm_dataset(16)
    first, second = [0, 3, 5], [7, 8]
    t1 = IAUTrainer(model=tiny_gpt2(), args=_args(tmp_path / "out1"), train_dataset=ds,
                    data_collator=RecordingCollator(ds))
    r1 = t1.unlearn(_forget(ds, first))
    assert r1.retain_size == 13
    t1.save_model()
    out1 = tmp_path / "out1"
    record = json.loads((out1 / DELETION_RECORD_NAME).read_text())
    assert sum(len(p["digests"]) for p in record["parts"]) == 3

    collator = RecordingCollator(ds)
    t2 = IAUTrainer(model=str(out1), args=_args(tmp_path / "out2"), train_dataset=ds, data_collator=collator)
    r2 = t2.unlearn(_forget(ds, second))  # retain_dataset=None
    assert r2.retain_size == 16 - 3 - 2
    seen = set(collator.seen)
    assert None not in seen  # only training rows went through the engine
    assert not seen & set(first), f"request-1 rows {sorted(seen & set(first))} were used by request 2"
    assert set(second) <= seen and seen - set(second)  # the forget rows and (some) retained rows were used
    t2.save_model()

    out2 = tmp_path / "out2"
    key = load_key(key_file, create=False)
    entries = read_ledger(out2)
    assert [e["forget_fingerprint"] for e in entries] == [fingerprint_ids(first, key), fingerprint_ids(second, key)]
    assert [e["forget_size"] for e in entries] == [3, 2] and [e["deleted_rows"] for e in entries] == [3, 5]
    assert all(e["fingerprint_scheme"] == "hmac-sha256" for e in entries)
    assert verify_ledger(out2) == []
    card = ModelCard.load(out2 / "README.md")
    assert card.data.unlearning["requests"] == 2 and card.data.unlearning["total_forget_size"] == 5
    assert all(e["forget_fingerprint"] in card.text for e in entries)

    # a third request on the reloaded out2: both earlier requests stay out
    collator3 = RecordingCollator(ds)
    t3 = IAUTrainer(model=str(out2), args=_args(tmp_path / "out3"), train_dataset=ds, data_collator=collator3)
    assert t3.unlearn(_forget(ds, [1])).retain_size == 16 - 6
    assert not set(collator3.seen) & set(first + second)
    collator3.seen.clear()
    assert t3.unlearn(_forget(ds, [0, 2])).retain_size == 16 - 7  # forgetting row 0 again is allowed
    assert not set(collator3.seen) & {1, 3, 5, 7, 8}


def test_same_trainer_and_every_baseline_exclude_earlier_rows(tmp_path, key_file):
    ds = lm_dataset(16)
    collator = RecordingCollator(ds)
    trainer = IAUTrainer(model=tiny_gpt2(), args=_args(tmp_path / "out"), train_dataset=ds, data_collator=collator)
    trainer.unlearn(_forget(ds, [2, 4]))
    collator.seen.clear()
    res = run_method("gradient_difference", trainer, _forget(ds, [6]))  # a baseline, retain_dataset=None
    assert res.retain_size == 13 and not set(collator.seen) & {2, 4} and 6 in collator.seen
    assert [h["deleted_rows"] for h in trainer.unlearning_history] == [2, 3]
    # an explicit retain set holding a deleted row is refused, naming the fix
    with pytest.raises(ValueError, match="retain_dataset` holds 1 row"):
        trainer.unlearn(_forget(ds, [9]), retain_dataset=ds.select([0, 1, 2]))
    from hf_iau.lifecycle import Request

    req = Request("iau", trainer, _forget(ds, [9])).deletion
    assert isinstance(req, DeletionRequest) and sorted(req.retain["id"]) == [i for i in range(16) if i not in (2, 4, 6, 9)]
    assert req.held_out is None and len(req.row_digests) == 1 and req.deleted_before == 3


def test_reload_without_the_key_needs_an_explicit_retain_set(tmp_path, key_file, monkeypatch):
    ds = lm_dataset(12)
    t1 = IAUTrainer(model=tiny_gpt2(), args=_args(tmp_path / "out1"), train_dataset=ds,
                    data_collator=default_data_collator)
    t1.unlearn(_forget(ds, [0, 1]))
    t1.save_model()
    other = tmp_path / "other.key"
    t2 = IAUTrainer(model=str(tmp_path / "out1"), args=_args(tmp_path / "out2", fingerprint_key_file=str(other)),
                    train_dataset=ds, data_collator=default_data_collator)
    with pytest.raises(ValueError, match="another fingerprint key.*fingerprint_key_file.*retain_dataset="):
        t2.unlearn(_forget(ds, [2]))
    retain = ds.select(range(3, 12))
    assert t2.unlearn(_forget(ds, [2]), retain_dataset=retain).retain_size == 9
    t2.save_model()
    # the new record keeps both keys' digests; the chain verifies without any key
    parts = json.loads((tmp_path / "out2" / DELETION_RECORD_NAME).read_text())["parts"]
    assert sorted(len(p["digests"]) for p in parts) == [1, 2] and verify_ledger(tmp_path / "out2") == []
    # with the original key named, retain=None still cannot match the other key's row: refused
    t3 = IAUTrainer(model=str(tmp_path / "out2"), args=_args(tmp_path / "out3", fingerprint_key_file=str(key_file)),
                    train_dataset=ds, data_collator=default_data_collator)
    with pytest.raises(ValueError, match="another fingerprint key"):
        t3.unlearn(_forget(ds, [5]))


def test_old_ledger_without_a_deletion_record_refuses_retain_none(tmp_path, key_file):
    ds = lm_dataset(12)
    t1 = IAUTrainer(model=tiny_gpt2(), args=_args(tmp_path / "old"), train_dataset=ds, data_collator=default_data_collator)
    t1.save_model()
    old = tmp_path / "old"
    entry = seal_entry({"request_id": "a" * 64, "time_utc": "2025-01-01T00:00:00Z", "forget_fingerprint": "f" * 64,
                        "forget_size": 2}, None)  # written by hf-iau before deletion records
    (old / LEDGER_NAME).write_text(json.dumps(entry) + "\n")
    t2 = IAUTrainer(model=str(old), args=_args(tmp_path / "new"), train_dataset=ds, data_collator=default_data_collator)
    with pytest.raises(ValueError, match="1 earlier request.*no deletion record.*retain_dataset="):
        t2.unlearn(_forget(ds, [3]))
    assert t2.unlearn(_forget(ds, [3]), retain_dataset=ds.select(range(4, 12))).retain_size == 8


def test_tampered_deletion_record_fails_verify(tmp_path, key_file, capsys):
    ds = lm_dataset(12)
    t1 = IAUTrainer(model=tiny_gpt2(), args=_args(tmp_path / "out"), train_dataset=ds, data_collator=default_data_collator)
    t1.unlearn(_forget(ds, [0, 1, 2]))
    t1.save_model()
    out = tmp_path / "out"
    assert main_ledger(["verify", str(out)]) == 0
    body = json.loads((out / DELETION_RECORD_NAME).read_text())
    body["parts"][0]["digests"].pop()  # quietly "un-delete" a row
    (out / DELETION_RECORD_NAME).write_text(json.dumps(body))
    problems = verify_ledger(out)
    assert any("deleted_rows_sha256" in p for p in problems) and any("holds 2 rows" in p for p in problems)
    (out / DELETION_RECORD_NAME).unlink()
    assert any("is missing" in p for p in verify_ledger(out))
    assert main_ledger(["verify", str(out)]) == 1


def test_a_model_from_the_hub_keeps_its_deletion_record(tmp_path, key_file, monkeypatch):
    ds = lm_dataset(12)
    t1 = IAUTrainer(model=tiny_gpt2(), args=_args(tmp_path / "pushed"), train_dataset=ds,
                    data_collator=default_data_collator)
    t1.unlearn(_forget(ds, [0, 1, 2]))
    t1.save_model()  # what push_to_hub uploads
    import shutil

    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError

    def fake_download(repo_id, filename, local_dir, **kw):  # the Hub serves the pushed folder
        assert repo_id == "me/model-unlearned"
        path = tmp_path / "pushed" / filename
        if not path.is_file():
            raise RemoteEntryNotFoundError(filename, response=None)
        return shutil.copy(path, local_dir)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    t2 = IAUTrainer(model=tiny_gpt2(), args=_args(tmp_path / "again"), train_dataset=ds, data_collator=default_data_collator)
    t2.parent_checkpoint = "me/model-unlearned"  # as after IAUTrainer(model="me/model-unlearned")
    assert t2.unlearn(_forget(ds, [5])).retain_size == 12 - 4
    # unreachable Hub: a warning, not a silent pass
    def offline(repo_id, filename, **kw):
        raise OSError("offline")


    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    t3 = IAUTrainer(model=tiny_gpt2(), args=_args(tmp_path / "third"), train_dataset=ds, data_collator=default_data_collator)
    t3.parent_checkpoint = "me/model-unlearned"
    with pytest.warns(UserWarning, match="Could not read the deletion ledger"):
        t3.unlearn(_forget(ds, [5]))


def test_content_hashes_compare_rows_by_value_whatever_the_storage():
    """The in-memory row digests of the held-out / same-row checks: equal content → equal digest across int widths,
    fixed or ragged layouts, ArrayXD features and selected (index-mapped) datasets; other nesting → other digest."""
    from datasets import Array2D, Dataset, Features, Sequence, Value

    from hf_iau.data import content_hashes

    a = Dataset.from_dict({"ids": [[1, 2, 3], [4, 5], [6, 7, 8]], "label": [0, 1, 2], "text": ["a", "b", "c"]})
    narrow = Dataset.from_dict({"ids": [[4, 5], [1, 2, 3]], "label": [1, 0], "text": ["b", "a"]}).cast(
        Features({"ids": Sequence(Value("int32")), "label": Value("int8"), "text": Value("string")}))
    fixed = Dataset.from_dict({"ids": [[1, 2, 3], [6, 7, 8]], "label": [0, 2], "text": ["a", "c"]})
    ha = content_hashes(a)
    assert content_hashes(narrow) == [ha[1], ha[0]]
    assert content_hashes(fixed) == [ha[0], ha[2]]
    assert content_hashes(a.select([2, 0])) == [ha[2], ha[0]]
    assert len(set(ha)) == 3
    nest = Dataset.from_dict({"x": [[[1, 2], [3]], [[1], [2, 3]]]})
    assert len(set(content_hashes(nest))) == 2
    grid = [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]]
    as_array = Dataset.from_dict({"x": grid}, features=Features({"x": Array2D((2, 2), "float32")}))
    assert content_hashes(as_array) == content_hashes(Dataset.from_dict({"x": grid}))


def test_column_values_equal_the_column_read_row_by_row():
    """data.column_values (one batched conversion) gives what iterating ``ds[col]`` gives: after select/shuffle
    (an indices mapping), for ints, strings and lists, and [] for an empty dataset."""
    from datasets import Dataset

    from hf_iau.data import column_values

    ds = Dataset.from_dict({"id": list(range(50)), "name": [f"r{i}" for i in range(50)], "v": [[i, i + 1] for i in range(50)]})
    picked = ds.shuffle(seed=3).select(range(7, 31))
    for col in ("id", "name", "v"):
        assert column_values(picked, col) == list(picked[col])
    assert column_values(picked.select([]), "id") == []


def test_content_hashes_are_kept_by_fingerprint_and_recomputed_for_other_data(monkeypatch):
    """A second hash of the same dataset (same fingerprint) reads the cache; a transformed dataset (new fingerprint:
    other rows, changed values) is hashed again, and a cached result cannot be changed through the returned list."""
    from datasets import Dataset

    import hf_iau.data as data

    calls = []
    real = data._content_hashes
    monkeypatch.setattr(data, "_content_hashes", lambda ds: (calls.append(len(ds)), real(ds))[1])
    ds = Dataset.from_dict({"x": list(range(20)), "y": [i % 3 for i in range(20)]})
    first = data.content_hashes(ds)
    first.clear()
    again = data.content_hashes(ds)
    assert len(calls) == 1 and len(again) == 20
    changed = ds.map(lambda r: {"x": r["x"] + 1})
    assert data.content_hashes(changed) != again and len(calls) == 2
    assert data.content_hashes(ds.select(range(5))) == again[:5] and len(calls) == 3
