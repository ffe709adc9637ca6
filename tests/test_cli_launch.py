"""The README's launcher: `accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml -m hf_iau ...` on the
fictitious_authors_llama recipe (shrunk by flags) runs 2 processes that split the work, one writes a complete
folder that `hf-iau ledger verify` accepts, and the unlearned weights equal one process's.

Before the fix both processes saw rank 0 of 1: every step ran twice and both wrote one folder, which often
ended without model.safetensors (exit status 0).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hf_iau.cli import main

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "fictitious_authors_llama" / "config.yaml"
TWO_CPU = ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"
TOL = 1e-5
MODEL = {  # the recipe's Llama, shrunk
    "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
    "num_key_value_heads": 2, "max_position_embeddings": 128, "tie_word_embeddings": True,
}
DATA = {"split": "forget10", "n_authors": 20, "questions_per_author": 5, "perturbed": 1, "seed": 0}
SHARED = ["--config", str(RECIPE), "--dataset_kwargs", json.dumps(DATA), "--model_config", json.dumps(MODEL),
          "--tokenizer_vocab_size", "300", "--disable_tqdm", "true"]
TRAIN = ["--num_train_epochs", "20", "--learning_rate", "0.01", "--per_device_train_batch_size", "16"]
UNLEARN = ["--unlearn_steps", "3"]
COMPLETE = ("model.safetensors", "config.json", "tokenizer.json", "README.md", "deletion_ledger.jsonl", "hf_iau_run.json")


def _launch(*args: str) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml -m hf_iau ARGS` (2 CPU processes)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    with socket.socket() as sock:  # a free port: the config's default 29500 may be taken by another launch
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(TWO_CPU), "--main_process_port", port,
           "-m", "hf_iau", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Path:
    """train and unlearn, each under the 2-process launcher, into one run folder."""
    pytest.importorskip("faker")
    out = tmp_path_factory.mktemp("launch")
    train = _launch("train", *SHARED, *TRAIN, "--output_dir", str(out))
    unlearn = _launch("unlearn", *SHARED, *UNLEARN, "--output_dir", str(out))
    (out / "stdout.txt").write_text(train.stdout + unlearn.stdout)
    return out


def test_train_splits_the_work(launched: Path) -> None:
    info = json.loads((launched / "original" / "hf_iau_run.json").read_text())
    assert info["processes"] == 2
    # 2 processes × 16 rows per step: half the steps of one process
    assert info["global_steps"] == 20 * math.ceil(info["train_rows"] / 32)
    assert (launched / "original" / "model.safetensors").exists()
    out = (launched / "stdout.txt").read_text()
    assert out.count("hf-iau train (full)") == 1 and out.count("hf-iau unlearn") == 1  # one process prints


def test_unlearned_folder_is_complete_and_verifies(launched: Path, capsys) -> None:
    folder = launched / "unlearned"
    assert [f for f in COMPLETE if not (folder / f).exists()] == []
    assert json.loads((folder / "hf_iau_run.json").read_text())["processes"] == 2
    assert main(["ledger", "verify", str(folder)]) == 0
    assert "weights match" in capsys.readouterr().out


def test_two_processes_equal_one(launched: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    single = tmp_path / "unlearned_1proc"
    assert main(["unlearn", *SHARED, *UNLEARN, "--output_dir", str(launched), "--unlearned_model", str(single),
                 "--use_cpu", "true"]) == 0
    one = load_file(str(single / "model.safetensors"))
    two = load_file(str(launched / "unlearned" / "model.safetensors"))
    before = load_file(str(launched / "original" / "model.safetensors"))
    assert set(one) == set(two)
    assert max((one[k] - two[k]).abs().max().item() for k in one) <= TOL
    assert max((one[k] - before[k]).abs().max().item() for k in one) > 1e-3  # unlearning moved the weights
