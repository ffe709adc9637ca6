"""Determinism on CPU: the same seed gives bit-identical weights after train (with GR) + unlearn (with
retain sampling, several steps and two requests) + save, whatever the global RNG state before the run,
in the same process or in a fresh interpreter with another PYTHONHASHSEED. A different seed does not.

Two-process runs: see tests/test_distributed.py (torchrun worker tests/dist_worker.py).
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from tiny import image_dataset, lm_dataset, tiny_gpt2, tiny_vit
from transformers import default_data_collator

from hf_iau import IAUConfig, IAUTrainer, forget_retain_split

TESTS = Path(__file__).resolve().parent


def run(
    out_dir: str, seed: int = 0, unlearn_seed: int | None = None, family: str = "gpt2", default_mode: bool = False,
    key_file: str | None = None,
) -> dict[str, str]:
    """Train 3 steps with GR, unlearn two requests (3 sampled-retain Adam steps each, or the library's default
    self-limiting mode with ``default_mode``), save.

    Returns the sha256 of every saved weight file and of the in-memory state dict.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identity holds for a fixed thread count; pin it for both runs
    try:
        make_model, make_data = (tiny_gpt2, lm_dataset) if family == "gpt2" else (tiny_vit, image_dataset)
        ds = make_data(24, seed=1)
        ds = ds.remove_columns("id").add_column("id", [f"row-{i}" for i in range(len(ds))])  # hashed ids
        unlearning = dict(
            unlearn_steps=3, unlearn_retain_sample_size=6, unlearn_learning_rate=1e-3, unlearn_targets="none",
            unlearn_stop="fixed",
        )
        args = IAUConfig(
            output_dir=out_dir, use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no", seed=seed,
            unlearn_seed=unlearn_seed, gr_alpha=0.005, gr_mode="finite_difference", max_steps=3,
            per_device_train_batch_size=4, learning_rate=1e-2, logging_strategy="no", fingerprint_key_file=key_file,
            **({} if default_mode else unlearning),
        )
        held_out = make_data(12, seed=7) if default_mode else None  # the default targets need held-out data
        trainer = IAUTrainer(make_model(seed=seed), args=args, train_dataset=ds, eval_dataset=held_out,
                             data_collator=default_data_collator)
        trainer.train()
        first = forget_retain_split(ds, forget=0.1, id_column="id", seed=seed)["forget"]
        trainer.unlearn(first, allow_noop=default_mode)
        trainer.train_dataset = ds.filter(lambda r: r["id"] not in set(first["id"]))
        trainer.unlearn(trainer.train_dataset.select([0, 1]), allow_noop=default_mode)
        trainer.save_model()
        state = hashlib.sha256()
        for key, t in sorted(trainer.model.state_dict().items()):
            state.update(key.encode() + t.detach().contiguous().numpy().tobytes())
        files = {f: hashlib.sha256((Path(out_dir) / f).read_bytes()).hexdigest() for f in os.listdir(out_dir)
                 if f.endswith(".safetensors")}
        assert files, "nothing saved"
        return {"state": state.hexdigest(), **files}
    finally:
        torch.set_num_threads(threads)


def _scramble_global_rngs(k: int) -> None:
    torch.manual_seed(1000 + k)
    np.random.seed(1000 + k)
    random.seed(1000 + k)
    torch.randn(10)  # advance it too


def test_same_seed_gives_bit_identical_weights_in_process(tmp_path):
    _scramble_global_rngs(1)
    a = run(str(tmp_path / "a"))
    _scramble_global_rngs(2)
    b = run(str(tmp_path / "b"))
    assert a == b and "model.safetensors" in a
    other_unlearn_seed = run(str(tmp_path / "c"), unlearn_seed=1)  # other retain samples, same training
    assert other_unlearn_seed["state"] != a["state"]
    other_seed = run(str(tmp_path / "d"), seed=1)
    assert other_seed["state"] != a["state"]


def test_same_seed_gives_bit_identical_weights_for_an_image_model(tmp_path):
    a = run(str(tmp_path / "a"), family="vit")
    _scramble_global_rngs(3)
    b = run(str(tmp_path / "b"), family="vit")
    assert a == b
    assert run(str(tmp_path / "c"), family="vit", unlearn_seed=5)["state"] != a["state"]


def test_same_seed_gives_bit_identical_weights_in_the_default_unlearning_mode(tmp_path):
    """The default mode (saturation targets, automatic stop, sampled retain data) is just as reproducible."""
    a = run(str(tmp_path / "a"), default_mode=True)
    _scramble_global_rngs(4)
    assert run(str(tmp_path / "b"), default_mode=True) == a
    assert run(str(tmp_path / "c"), default_mode=True, seed=1)["state"] != a["state"]


def test_the_secret_key_never_changes_the_weights(tmp_path):
    """Two fingerprint key files: the same weights bit for bit (the key names requests in the ledger; no random
    choice depends on it), in the default mode and with sampled retain data."""
    keys = [str(tmp_path / "k1"), str(tmp_path / "k2")]  # created on first use, 32 random bytes each
    for default_mode in (True, False):
        a = run(str(tmp_path / f"a{default_mode}"), default_mode=default_mode, key_file=keys[0])
        b = run(str(tmp_path / f"b{default_mode}"), default_mode=default_mode, key_file=keys[1])
        assert a == b
    assert Path(keys[0]).read_text() != Path(keys[1]).read_text()


def test_same_seed_gives_bit_identical_weights_across_processes(tmp_path):
    """A fresh interpreter (other PYTHONHASHSEED, other allocations) reproduces the in-process run bit for bit."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import test_determinism as t; "
        "print('RESULT' + json.dumps(t.run(sys.argv[2])))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", HF_HUB_OFFLINE="1")
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(TESTS), str(tmp_path / "child")], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    here = run(str(tmp_path / "here"))  # runs while the child imports
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-3000:]
    import json

    there = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[len("RESULT"):])
    assert there == here
