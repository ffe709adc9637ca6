"""The `hf-iau` command line on tiny from-scratch configs (offline data from wheels)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_iau.cli import main

COMMON = {
    "save_strategy": "no", "report_to": "none", "seed": 0, "use_cpu": True, "disable_tqdm": True,
    "logging_steps": 5, "per_device_eval_batch_size": 16, "gr_alpha": 0.005,
}
IMAGE = {
    "dataset_name": "digits", "test_size": 30, "max_train_samples": 60, "forget": "n:5", "forget_label_noise": True,
    "model_config": {
        "model_type": "vit", "image_size": 8, "patch_size": 4, "num_channels": 1, "hidden_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
    },
    "num_train_epochs": 2, "per_device_train_batch_size": 16, "learning_rate": 0.003,
    "unlearn_steps": 3, "forget_saturation": "flip", "unlearn_stop": "auto", **COMMON,
}
TEXT_LORA = {
    "dataset_name": "lee_text", "dataset_kwargs": {"canaries": 2, "canary_repeats": 2, "seed": 0},
    "test_size": 0.1, "max_length": 32, "max_chunks_per_doc": 1, "forget": "column:is_canary",
    "tokenizer_vocab_size": 300, "task": "causal-lm",
    "model_config": {"model_type": "gpt2", "n_positions": 32, "n_embd": 16, "n_layer": 1, "n_head": 2},
    "use_peft": True, "lora_r": 2, "lora_alpha": 4, "lora_target_modules": ["c_attn"],
    "num_train_epochs": 1, "per_device_train_batch_size": 32, "learning_rate": 0.003, **COMMON,
}


def _recipe(tmp_path: Path, values: dict, name: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**values, "output_dir": str(tmp_path / name)}))
    return str(path)


def test_help_lists_commands(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("train", "unlearn", "evaluate", "demo", "ledger"):
        assert cmd in out
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    assert "--gr_alpha" in capsys.readouterr().out
    assert main(["nonsense"]) == 2


def test_module_entry_point() -> None:
    proc = subprocess.run([sys.executable, "-m", "hf_iau", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "unlearn" in proc.stdout


def test_train_unlearn_evaluate_image(tmp_path: Path, capsys) -> None:
    cfg = _recipe(tmp_path, IMAGE, "img")
    root = tmp_path / "img"
    assert main(["train", "--config", cfg]) == 0
    assert (root / "original" / "model.safetensors").exists()
    assert not list((root / "original").glob("*.bin"))  # safetensors + JSON only, nothing pickled
    info = json.loads((root / "original" / "hf_iau_run.json").read_text())
    assert info["train_rows"] == 60 and info["gr_alpha"] == 0.005
    assert main(["unlearn", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "hf-iau unlearn" in out and "fingerprint" in out
    run = json.loads((root / "unlearned" / "hf_iau_run.json").read_text())
    assert run["forget_rows"] == 5 and len(run["forget_fingerprint"]) == 64
    assert main(["evaluate", "--config", cfg]) == 0  # retrains the gold model (missing)
    out = capsys.readouterr().out
    assert (root / "retrained" / "model.safetensors").exists()
    for name in ("report.json", "report.md", "report.png"):
        assert (root / "report" / name).exists()
    assert "MIA AUC" in out and "% retrain" in out and "retrained" in out


def test_lora_language_model_with_canaries(tmp_path: Path, capsys) -> None:
    from hf_iau.offline_data import canary_secrets

    cfg = _recipe(tmp_path, TEXT_LORA, "lm")
    root = tmp_path / "lm"
    assert main(["train", "--config", cfg]) == 0
    assert (root / "original" / "adapter_config.json").exists()
    assert (root / "original" / "tokenizer.json").exists()
    assert main(["unlearn", "--config", cfg]) == 0
    assert main(["evaluate", "--config", cfg, "--retrain_if_missing", "true"]) == 0
    out = capsys.readouterr().out
    # never print or store forgotten content: the canary secrets appear nowhere
    texts = [out] + [p.read_text(errors="ignore") for p in root.rglob("*") if p.suffix in (".json", ".md") and p.is_file()
                     and p.name not in ("tokenizer.json", "vocab.json")]
    for secret in canary_secrets(2, seed=0):
        digits = secret.split("is", 1)[1].strip()
        assert all(digits not in t for t in texts)


def test_demo_command_on_a_tiny_config(tmp_path: Path, capsys) -> None:
    cfg = _recipe(tmp_path, {**IMAGE, "num_train_epochs": 1}, "demo")
    assert main(["demo", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "[4/4]" in out and "unlearned" in out and "original" in out
    assert (tmp_path / "demo" / "report" / "report.json").exists()
    assert (tmp_path / "demo" / "unlearned" / "model.safetensors").exists()


def test_forget_specs() -> None:
    from datasets import Dataset

    from hf_iau.cli import DataArguments, resolve_forget_ids

    ds = Dataset.from_dict({"id": list(range(10)), "flag": [i % 3 == 0 for i in range(10)]})
    assert resolve_forget_ids(ds, DataArguments(forget="ids:2,5"), 0) == [2, 5]
    assert resolve_forget_ids(ds, DataArguments(forget="range:7:10"), 0) == [7, 8, 9]
    assert resolve_forget_ids(ds, DataArguments(forget="column:flag"), 0) == [0, 3, 6, 9]
    assert len(resolve_forget_ids(ds, DataArguments(forget="0.2"), 0)) == 2
    assert resolve_forget_ids(ds, DataArguments(forget="n:3"), 0) == resolve_forget_ids(ds, DataArguments(forget="n:3"), 0)
    with pytest.raises(SystemExit):
        resolve_forget_ids(ds, DataArguments(forget="bogus:1"), 0)


def test_ledger_command_without_args_fails_cleanly(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["ledger"])
    assert exc.value.code != 0
