"""Security: safetensors only (pickle weights refused unless opted in), trust_remote_code never turned on
by hf-iau, and a Hub token never written to logs, cards, reports, ledgers or saved arguments."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import lm_dataset, params_of, text_cls_dataset, tiny_bert, tiny_gpt2
from tiny import parity_args as make_args
from transformers import default_data_collator

from hf_iau import IAUConfig, IAUTrainer

HF_IAU = Path(__file__).resolve().parent.parent / "hf_iau"


class _Payload:
    """Unpickling this creates a folder: proof that code ran."""

    def __init__(self, sentinel: str) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.mkdir, (self.sentinel,))


def _pickle_only_folder(tmp_path: Path, malicious: bool) -> Path:
    folder = tmp_path / "pickled"
    tiny_bert().save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    if malicious:
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(str(tmp_path / "PWNED"))))
    else:
        torch.save(weights, folder / "pytorch_model.bin")
    return folder


# --- safetensors only -------------------------------------------------------------------------------------------
def test_folder_with_only_pickle_weights_is_refused_before_unpickling(tmp_path, monkeypatch):
    folder = _pickle_only_folder(tmp_path, malicious=True)
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or pytest.fail("torch.load was called"))
    with pytest.raises(ValueError, match=r"model=.*pickled.* holds only pickle-based weights \(pytorch_model\.bin\)") as err:
        IAUTrainer(str(folder), args=make_args(tmp_path / "out"))
    assert "model_init_kwargs={'use_safetensors': False}" in str(err.value)  # the explicit opt-in
    assert not loads and not (tmp_path / "PWNED").exists() and not (tmp_path / "out").exists()


def test_pickle_weights_load_only_with_the_explicit_opt_in(tmp_path):
    folder = _pickle_only_folder(tmp_path, malicious=False)
    expected = torch.load(folder / "pytorch_model.bin", weights_only=True)
    trainer = IAUTrainer(str(folder), args=make_args(tmp_path / "out", model_init_kwargs={"use_safetensors": False}))
    got = params_of(trainer.model)
    assert all(torch.equal(got[k], v) for k, v in expected.items() if k in got) and len(expected) > 10


def test_saves_write_weights_as_safetensors_only(tmp_path):
    ds = text_cls_dataset(16)
    args = make_args(tmp_path / "out", max_steps=2, save_strategy="steps", save_steps=1, per_device_train_batch_size=8)
    trainer = IAUTrainer(tiny_bert(), args=args, train_dataset=ds, data_collator=default_data_collator)
    trainer.train()
    trainer.unlearn(ds.select([0, 1]))
    trainer.save_model()
    out = tmp_path / "out"
    top = set(os.listdir(out))
    assert "model.safetensors" in top and "training_args.json" in top
    checkpoints = sorted(p for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert [p.name for p in checkpoints] == ["checkpoint-1", "checkpoint-2"]
    for ckpt in checkpoints:
        names = set(os.listdir(ckpt))
        assert "model.safetensors" in names and "training_args.json" in names
        # Optimizer/scheduler/RNG state are torch.save files that Trainer reloads with weights_only=True;
        # no weights and no pickled arguments travel as pickle.
        assert {n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))} <= {
            "optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt"
        }
    pickled_top = [f for f in top if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    assert pickled_top == []
    # and the folder we wrote loads back with safetensors alone
    reloaded = IAUTrainer(str(out), args=make_args(tmp_path / "again"))
    assert all(torch.equal(a, b) for a, b in zip(reloaded.model.state_dict().values(), trainer.model.state_dict().values()))


# --- trust_remote_code --------------------------------------------------------------------------------------------
def test_remote_code_in_a_model_folder_never_runs(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    sentinel = tmp_path / "REMOTE_CODE_RAN"
    (folder / "evil.py").write_text(f"import os\nos.mkdir({str(sentinel)!r})\n")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil-net", "architectures": ["EvilForCausalLM"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"},
    }))
    with pytest.raises(ValueError, match="trust_remote_code"):
        IAUTrainer(str(folder), args=make_args(tmp_path / "out"))
    assert not sentinel.exists() and not (tmp_path / "out").exists()
    assert IAUConfig(output_dir=str(tmp_path / "x")).trust_remote_code is False


def test_library_never_hardcodes_trust_remote_code_true():
    hits = [
        f"{p.name}:{n}" for p in HF_IAU.rglob("*.py") for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"trust_remote_code\s*=\s*True|[\"']trust_remote_code[\"']\s*:\s*True", line)
    ]
    assert hits == []


# --- tokens --------------------------------------------------------------------------------------------------------
ENV_TOKEN = "hf_FAKEenvTOKENdoNotLeak0123456789abcdef"
ARG_TOKEN = "hf_FAKEargTOKENdoNotLeak9876543210fedcba"


def test_hub_token_never_written_to_logs_cards_reports_or_ledger(tmp_path, monkeypatch, capfd):
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.setenv(var, ENV_TOKEN)
    import transformers

    log_file = tmp_path / "run.log"
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(), logging.getLogger("transformers")]  # hf_iau propagates to the root
    old_levels = [lg.level for lg in loggers]
    old_verbosity = transformers.logging.get_verbosity()
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    transformers.logging.set_verbosity_debug()
    try:
        ds = lm_dataset(16)
        out = tmp_path / "out"
        args = make_args(
            out, hub_token=ARG_TOKEN, max_steps=2, save_strategy="steps", save_steps=1, logging_steps=1,
            per_device_train_batch_size=8, gr_alpha=0.005,
        )
        logging.getLogger("hf_iau").info("arguments: %s", args)
        trainer = IAUTrainer(tiny_gpt2(), args=args, train_dataset=ds, data_collator=default_data_collator)
        trainer.train()
        original = tiny_gpt2()
        trainer.unlearn(ds.select([0, 1, 2]))
        trainer.save_model()
        from hf_iau.report import evaluate_unlearning

        evaluate_unlearning(
            trainer.model, original, forget=ds.select([0, 1, 2]), retain=ds.select(range(3, 16)),
            test=lm_dataset(6, seed=9), output_dir=tmp_path / "report", mia=("loss",),
        )
    finally:
        for lg, level in zip(loggers, old_levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
        transformers.logging.set_verbosity(old_verbosity)
        handler.close()
    captured = capfd.readouterr()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    # the run did write every kind of artifact we promise to keep clean
    assert {"run.log", "README.md", "deletion_ledger.jsonl", "trainer_state.json", "training_args.json"} <= names
    assert any(n.startswith("report.") for n in names) and log_file.stat().st_size > 1000
    for token in (ENV_TOKEN, ARG_TOKEN, ENV_TOKEN[3:20], ARG_TOKEN[3:20]):
        leaks = [str(p.relative_to(tmp_path)) for p in written if token.encode() in p.read_bytes()]
        assert leaks == [], f"token found in {leaks}"
        assert token not in captured.out and token not in captured.err
    assert ARG_TOKEN not in str(args) and ARG_TOKEN not in args.to_json_string()


def test_config_repr_redacts_the_hub_token(tmp_path):
    args = make_args(tmp_path / "out", hub_token=ARG_TOKEN)
    assert ARG_TOKEN not in str(args)
    assert ARG_TOKEN not in repr(args)  # e.g. logger.info("%r", args) or an f"{args!r}" in a traceback
