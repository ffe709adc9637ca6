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
    "unlearn_steps": 3, "unlearn_targets": "none", "unlearn_stop": "fixed", **COMMON,  # 2 epochs fit nothing to flip
}
TEXT_LORA = {
    "dataset_name": "lee_text", "dataset_kwargs": {"canaries": 2, "canary_repeats": 2, "seed": 0},
    "test_size": 0.1, "max_length": 32, "max_chunks_per_doc": 1, "forget": "column:is_canary",
    "tokenizer_vocab_size": 300, "task": "causal-lm",
    "model_config": {"model_type": "gpt2", "n_positions": 32, "n_embd": 16, "n_layer": 1, "n_head": 2},
    "use_peft": True, "lora_r": 2, "lora_alpha": 4, "lora_target_modules": ["c_attn"],
    "num_train_epochs": 1, "per_device_train_batch_size": 32, "learning_rate": 0.003, **COMMON,
    "allow_noop": True,  # one epoch: the canaries sit at their targets already, nothing to remove (recorded anyway)
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
    assert info["processes"] == 1 and info["global_steps"] == 8  # 2 epochs × ceil(60 / 16)
    out = capsys.readouterr().out
    # the summary's final loss is the last logged loss (step 5 of 8, logging_steps 5), not Trainer's mean
    assert info["final_train_loss"] != info["train_loss"]
    assert f"final train loss {info['final_train_loss']:.4f}" in out and f"mean over training {info['train_loss']:.4f}" in out
    assert main(["unlearn", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "hf-iau unlearn" in out and "fingerprint" in out
    # the request's cost against retraining the 55 retained rows for the recipe's 2 epochs
    assert "% of retraining's 110 (this recipe's schedule)" in out
    run = json.loads((root / "unlearned" / "hf_iau_run.json").read_text())
    assert run["forget_rows"] == 5 and len(run["forget_fingerprint"]) == 64
    assert main(["evaluate", "--config", cfg]) == 0  # retrains the gold model (missing)
    out = capsys.readouterr().out
    assert "[1/3]" in out and "[2/3] no retrained model" in out and "[3/3] evaluating" in out  # not silent
    assert "verdict" in out and "forgetting" in out and "utility" in out and "privacy" in out and "cost" in out
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


# --- help, errors, recipe names, launcher ---------------------------------------------------------
def _help(command: str, capsys, *extra: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help", *extra])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_help_is_grouped_per_command(capsys) -> None:
    unlearn = _help("unlearn", capsys)
    assert unlearn.index("unlearning (IAUConfig):") < unlearn.index("data:") < unlearn.index("Trainer options (most used):")
    assert "--unlearn_steps" in unlearn and "--method" in unlearn and "--per_device_eval_batch_size" in unlearn
    for training_only in ("--num_train_epochs", "--gr_alpha", "--warmup_steps", "--train_on", "--save_strategy"):
        assert training_only not in unlearn
    assert len(unlearn.splitlines()) < 320  # was 944 lines in one list
    train = _help("train", capsys)
    assert "--gr_alpha" in train and "--num_train_epochs" in train and "--unlearn_steps" not in train
    assert "--dataloader_prefetch_factor" not in train and "--help_all" in train
    assert "--dataloader_prefetch_factor" in _help("train", capsys, "--help_all")


def _exit_2(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip()


def test_misspelt_or_misplaced_flag_is_one_line(capsys) -> None:
    err = _exit_2(["unlearn", "--config", "mnist_vit", "--unlearn_step", "3"], capsys)
    assert err == "hf-iau unlearn: unknown option --unlearn_step; did you mean --unlearn_steps?"
    err = _exit_2(["unlearn", "--num_train_epochs", "3"], capsys)
    assert "--num_train_epochs does not act on `unlearn`" in err and "\n" not in err
    err = _exit_2(["train", "--gr_alpah", "0.1"], capsys)
    assert "did you mean --gr_alpha?" in err
    assert "did you mean" in _exit_2(["train", "--num_train_epoch", "1"], capsys)  # no silent abbreviation
    assert "unexpected argument" in _exit_2(["train", "stray"], capsys)


@pytest.mark.parametrize("command", ["train", "unlearn", "evaluate", "demo"])
def test_bundled_recipe_names_resolve_in_every_command(command: str) -> None:
    from hf_iau.cli import parse_args

    data, model, _, args = parse_args(command, ["--config", "fictitious_authors_llama"])
    assert data.dataset_name == "fictitious_authors" and args.gr_alpha == 0.005
    _, model, _, args = parse_args(command, ["--config", "fictitious_authors_llama", "--quick"])
    assert model.model_config["num_hidden_layers"] == 2 and args.num_train_epochs == 10  # the quick: section


def test_missing_recipe_lists_the_bundled_ones(capsys) -> None:
    from hf_iau.cli import parse_args

    with pytest.raises(SystemExit, match="Bundled recipes: .*fictitious_authors_llama.*mnist_vit"):
        parse_args("unlearn", ["--config", "fictitious_author_llama"])
    assert "bbc_minilm" in _exit_2(["train", "--config", "no/such/recipe.yaml"], capsys)


def test_quick_needs_a_quick_section(tmp_path: Path, capsys) -> None:
    cfg = _recipe(tmp_path, IMAGE, "noquick")
    assert "needs a `quick:` section" in _exit_2(["train", "--config", cfg, "--quick"], capsys)


def test_launched_without_gpu_is_detected(monkeypatch) -> None:
    """Under accelerate launch / torchrun on CPU, accelerate needs cpu=True, else each process is rank 0 of 1
    (tests/test_cli_launch.py runs the launcher itself; IAUConfig cannot be built here: it would join a group)."""
    import torch

    from hf_iau.cli.arguments import launched_without_accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if hasattr(torch, "accelerator"):
        monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_without_accelerator()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not launched_without_accelerator()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if hasattr(torch, "accelerator"):
        monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    assert not launched_without_accelerator()


def test_verdict_line() -> None:
    from hf_iau.cli.printing import verdict

    rows = {"original": {"forget_accuracy": 1.0, "test_accuracy": 0.9, "mia_loss_auc": 0.8},
            "unlearned": {"forget_accuracy": 0.2, "test_accuracy": 0.85, "mia_loss_auc": 0.55, "forget_quality": 0.3},
            "retrained": {"forget_accuracy": 0.0, "test_accuracy": 0.88, "mia_loss_auc": 0.5, "forget_quality": 1.0}}
    text = verdict(rows, {"unlearned": 2.0, "retrained": 40.0})
    assert "80% of the way from the original to the retrained model" in text
    assert "forget quality 0.300" in text and "indistinguishable" in text
    assert "-0.030 vs retrained" in text and "MIA AUC forget vs test 0.550" in text
    assert "5.00% of retraining" in text and "20× faster" in text


def test_train_tokenizer_is_public_and_deterministic() -> None:
    from hf_iau.cli import train_tokenizer as cli_helper
    from hf_iau.tokenization import train_tokenizer

    assert cli_helper is train_tokenizer
    texts = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"] * 5
    a, b = train_tokenizer(texts, 300), train_tokenizer(texts, 300)
    assert a.get_vocab() == b.get_vocab() and len(a) <= 300
    assert a.eos_token == a.pad_token == a.bos_token == "<|endoftext|>" and a.eos_token_id == 0
    ids = a("the cat sat on a log ünïcode")["input_ids"]
    assert a.decode(ids) == "the cat sat on a log ünïcode"  # byte-level: nothing is out of vocabulary
    assert len(a("the cat sat")["input_ids"]) < len("the cat sat")  # merges learned
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(texts, 0)
