"""push_to_hub against a local fake Hub (tests/fake_hub.py): full model, LoRA adapter, merged adapter."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
from fake_hub import OPTIONAL_GETS, FakeHub
from huggingface_hub import metadata_load
from tiny import lm_dataset, tiny_gpt2
from transformers import default_data_collator

from hf_iau import IAUConfig, IAUTrainer, forget_retain_split
from hf_iau.data import load_key
from hf_iau.ledger import DELETION_RECORD_NAME, LEDGER_NAME, verify_ledger

FAKE_TOKEN = "hf_FAKEtokenNEVERwrittenANYWHERE0123456789"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    """A fake Hub on 127.0.0.1; the client is pointed at it and every non-loopback connect fails."""
    real_connect = socket.socket.connect

    def loopback_only(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in LOOPBACK:
            raise AssertionError(f"test tried to reach {address!r}: only 127.0.0.1 is allowed")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    with FakeHub(lifetime_s=90) as server:
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
        monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(hf_constants, "AGENT_HARNESSES_PATH", str(tmp_path / "hf_home" / "agents.json"))
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield server
    assert server.unexpected == []


def _trainer(tmp_path: Path, name: str, peft: bool = False) -> IAUTrainer:
    ds = lm_dataset(16)
    args = IAUConfig(
        output_dir=str(tmp_path / name), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
        hub_model_id=f"tester/{name}", unlearn_targets="none", unlearn_stop="fixed", unlearn_steps=3,
    )
    peft_config = None
    if peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True)
    model = tiny_gpt2()
    model.config._name_or_path = "tiny-org/tiny-gpt2"
    trainer = IAUTrainer(model=model, args=args, train_dataset=ds, data_collator=default_data_collator,
                         peft_config=peft_config)
    split = forget_retain_split(ds, forget=[0, 5, 9], id_column="id")
    trainer.unlearn(split["forget"], retain_dataset=split["retain"])
    return trainer


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _no_token_written(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), f"token written to {path}"


def test_push_full_model(hub, tmp_path):
    trainer = _trainer(tmp_path, "full")
    info = trainer.push_to_hub()
    files = hub.repos["tester/full"]
    assert {"README.md", LEDGER_NAME, DELETION_RECORD_NAME, "model.safetensors", "config.json",
            "training_args.json"} <= set(files)
    assert not [p for p in files if p.endswith((".bin", ".pt", ".pth", ".pkl", ".key"))]
    key = load_key(trainer.args.fingerprint_key_file, create=False)  # the fingerprint key never travels
    assert not [p for p, data in files.items() if key.hex().encode() in data or key in data]
    assert info.oid == hub.commits[-1]["oid"]
    assert len(hub.commits) == 1
    # the client authenticated with the token from HF_TOKEN on every call
    api_calls = [(m, p, auth) for m, p, auth in hub.requests if p.split("?")[0] not in OPTIONAL_GETS]
    assert {auth for _, _, auth in api_calls} == {f"Bearer {FAKE_TOKEN}"}
    calls = {(m, p.split("?")[0]) for m, p, _ in api_calls}
    assert calls == {("POST", "/api/validate-yaml"), ("POST", "/api/repos/create"),
                     ("POST", "/api/models/tester/full/preupload/main"), ("POST", "/api/models/tester/full/commit/main")}
    # what arrived is what was saved locally, and its ledger matches the uploaded weights
    out = Path(trainer.args.output_dir)
    for name in ("README.md", LEDGER_NAME, "model.safetensors"):
        assert files[name] == (out / name).read_bytes()
    entry = json.loads(files[LEDGER_NAME].decode().splitlines()[-1])
    assert entry["child_weight_files"] == {"model.safetensors": _sha(files["model.safetensors"])}
    assert verify_ledger(out) == []
    meta = metadata_load(out / "README.md")
    assert {"unlearning", "iau"} <= set(meta["tags"]) and meta["library_name"] == "transformers"
    assert meta["unlearning"]["forget_size"] == 3
    _no_token_written(tmp_path)


def test_push_adapter_and_merged(hub, tmp_path):
    trainer = _trainer(tmp_path, "lora", peft=True)
    trainer.push_to_hub()
    files = hub.repos["tester/lora"]
    assert {"README.md", LEDGER_NAME, "adapter_model.safetensors", "adapter_config.json"} <= set(files)
    assert "model.safetensors" not in files
    entry = json.loads(files[LEDGER_NAME].decode().splitlines()[-1])
    assert entry["checkpoint_format"] == "adapter"
    assert entry["child_weight_files"] == {"adapter_model.safetensors": _sha(files["adapter_model.safetensors"])}
    card = files["README.md"].decode()
    assert "library_name: peft" in card and "base_model: tiny-org/tiny-gpt2" in card

    # merged on request, into another repo: full weights, no adapter files; the trainer keeps its adapter
    n_params = sum(p.numel() for p in trainer.model.parameters())
    trainer.push_to_hub(merge_adapter=True, repo_id="tester/lora-merged")
    merged = hub.repos["tester/lora-merged"]
    assert {"README.md", LEDGER_NAME, DELETION_RECORD_NAME, "model.safetensors", "config.json"} <= set(merged)
    assert not [p for p in merged if p.startswith("adapter_")]
    m_entry = json.loads(merged[LEDGER_NAME].decode().splitlines()[-1])
    assert m_entry["checkpoint_format"] == "merged"
    assert m_entry["child_weight_files"] == {"model.safetensors": _sha(merged["model.safetensors"])}
    assert m_entry["forget_fingerprint"] == entry["forget_fingerprint"]
    assert "library_name: transformers" in merged["README.md"].decode()
    assert sum(p.numel() for p in trainer.model.parameters()) == n_params
    assert type(trainer.model).__name__.startswith("Peft")
    # merged weights equal base + LoRA delta: loading them reproduces the adapter model's logits
    import torch
    from safetensors.torch import load
    from transformers import GPT2LMHeadModel

    ref = GPT2LMHeadModel(trainer.model.get_base_model().config)
    ref.load_state_dict(load(merged["model.safetensors"]), strict=False)
    ref.tie_weights()
    x = torch.tensor([[1, 2, 3, 4, 5]])
    trainer.model.eval()
    with torch.no_grad():
        diff = (ref.eval()(x).logits - trainer.model(input_ids=x).logits).abs().max().item()
    assert diff < 1e-4
    _no_token_written(tmp_path)


def test_fetch_record_folder_reads_the_hub_record_and_leaves_nothing_behind(hub, tmp_path, monkeypatch):
    """The ledger and deletion record of a pushed repo, in a folder that is gone after the block (also when the
    block raises); None for a repo without a record or an unknown repo; a warning when the Hub is unreachable."""
    import tempfile
    import warnings

    from hf_iau.hub import fetch_record_folder

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    _trainer(tmp_path, "full").push_to_hub()
    pushed = hub.repos["tester/full"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fetch_record_folder("tester/full") as folder:
            assert (folder / LEDGER_NAME).read_bytes() == pushed[LEDGER_NAME]
            assert (folder / DELETION_RECORD_NAME).read_bytes() == pushed[DELETION_RECORD_NAME]
        assert not folder.exists() and list(temp.iterdir()) == []
        with pytest.raises(KeyError), fetch_record_folder("tester/full") as folder:
            raise KeyError("the caller fails inside the block")
        assert list(temp.iterdir()) == []
        hub.repos["tester/plain"] = {"config.json": b"{}"}
        for repo_id in ("tester/plain", "tester/absent", str(tmp_path)):  # no record, no repo, a local path
            with fetch_record_folder(repo_id) as folder:
                assert folder is None
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.warns(UserWarning, match="Could not read the deletion ledger of Hub model 'tester/full'"):
        with fetch_record_folder("tester/full") as folder:
            assert folder is None
    assert list(temp.iterdir()) == []
