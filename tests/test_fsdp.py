"""FSDP2 on 2 CPU processes (gloo): a model sharded with ``fully_shard`` per block and handed to IAUTrainer
gives the unsharded 1-process weights — unlearning of full GPT-2 and GPT-2+LoRA in reference-parity mode, the
default mode (counterfactual targets) and with 'loss' targets, with uneven shards (7 forget / 41 retain rows), finite-difference GR training, and `hf-iau unlearn
--fsdp2_shard`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fsdp_worker  # noqa: E402
from tiny import torchrun  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def sharded_weights(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    torchrun([str(HERE / "fsdp_worker.py"), str(out)], out)
    return out


@pytest.mark.parametrize("case", list(fsdp_worker.CASES))
def test_fsdp2_sharded_unlearning_equals_one_process(case: str, sharded_weights: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from tiny import max_abs_diff, tiny_gpt2

    sharded = load_file(str(sharded_weights / f"{case}.safetensors"))
    single = fsdp_worker.run_case(case, shard=False, out_dir=str(tmp_path))
    assert set(sharded) == set(single)
    assert max_abs_diff(single, sharded) <= TOL
    if fsdp_worker.CASES[case][1] is None:  # full parameters: the update moved the weights
        before = dict(tiny_gpt2(seed=0).named_parameters())
        assert any(not torch.allclose(single[n], before[n]) for n in single)


@pytest.mark.parametrize("case", fsdp_worker.SAVED)
def test_fsdp2_save_gathers_on_rank_zero_and_equals_one_process_save(case: str, sharded_weights: Path, tmp_path: Path) -> None:
    """`save_model` of a sharded model writes the files of the unsharded save (tied weights stored once, the
    model's own class name, card and ledger) without any process calling `full_tensor()` on every parameter."""
    import json

    from safetensors.torch import load_file

    from tiny import max_abs_diff

    saved = sharded_weights / f"saved_{case}"
    fsdp_worker.run_case(case, shard=False, out_dir=str(tmp_path), save_to=str(tmp_path / "one"))
    name = "adapter_model.safetensors" if fsdp_worker.CASES[case][1] else "model.safetensors"
    two, one = load_file(str(saved / name)), load_file(str(tmp_path / "one" / name))
    assert set(two) == set(one) and max_abs_diff(one, two) <= TOL
    assert sorted(p.name for p in saved.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    if (saved / "config.json").exists():
        assert json.loads((saved / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    calls = [int((sharded_weights / f"saved_{case}.full_tensor_calls.{rank}").read_text()) for rank in (0, 1)]
    assert calls == [0, 0]


def test_fsdp2_sharded_gr_training_equals_one_process(sharded_weights: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from tiny import max_abs_diff, tiny_gpt2

    sharded = load_file(str(sharded_weights / "gr_training.safetensors"))
    single = fsdp_worker.run_training(shard=False, out_dir=str(tmp_path))
    assert set(sharded) == set(single)
    assert max_abs_diff(single, sharded) <= TOL
    assert max_abs_diff(single, {n: p.detach() for n, p in tiny_gpt2(seed=0).named_parameters()}) > 1e-3


LM_RECIPE = {
    "dataset_name": "lee_text", "test_size": 16, "validation_size": 16, "max_train_samples": 48, "max_length": 24,
    "max_chunks_per_doc": 1, "forget": "n:7", "tokenizer_vocab_size": 200, "task": "causal-lm",
    "model_config": {"model_type": "gpt2", "n_positions": 24, "n_embd": 16, "n_layer": 2, "n_head": 2},
    "num_train_epochs": 1, "per_device_train_batch_size": 16, "learning_rate": 0.003, "unlearn_steps": 2,
    "unlearn_optimizer": "sgd", "unlearn_learning_rate": 0.5, "forget_saturation": "none", "unlearn_stop": "fixed", "retain_sample_size": 13,
    "save_strategy": "no", "report_to": "none", "seed": 0, "use_cpu": True, "disable_tqdm": True,
    "per_device_eval_batch_size": 3,
}


def test_cli_unlearn_with_fsdp2_shard_on_two_processes_equals_one(tmp_path: Path) -> None:
    """`hf-iau unlearn --fsdp2_shard true` under torchrun (2 CPU processes) saves the weights of the unsharded
    1-process run, with a card and a ledger, under the model's own class name."""
    import json

    import yaml
    from safetensors.torch import load_file

    from hf_iau.cli import main
    from tiny import max_abs_diff

    cfg = tmp_path / "lm.yaml"
    cfg.write_text(yaml.safe_dump({**LM_RECIPE, "output_dir": str(tmp_path / "one")}))
    assert main(["train", "--config", str(cfg)]) == 0
    shutil.copytree(tmp_path / "one", tmp_path / "two")  # the same trained original model for both runs
    torchrun(["-m", "hf_iau", "unlearn", "--config", str(cfg), "--fsdp2_shard", "true", "--output_dir", str(tmp_path / "two")])
    assert main(["unlearn", "--config", str(cfg)]) == 0
    one, two = tmp_path / "one" / "unlearned", tmp_path / "two" / "unlearned"
    w1, w2 = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert set(w1) == set(w2) and max_abs_diff(w1, w2) <= TOL
    original = load_file(str(tmp_path / "one" / "original" / "model.safetensors"))
    assert max_abs_diff(w1, original) > 1e-4  # the request changed the weights
    assert json.loads((two / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    assert (two / "README.md").exists() and (two / "deletion_ledger.jsonl").exists()
