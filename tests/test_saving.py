"""hf_iau.saving and the FSDP2 device mesh (the 2-process save itself is checked in test_fsdp.py)."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import tiny_gpt2


@pytest.mark.parametrize(
    ("backend", "accelerator", "expected"),
    [("nccl", "cuda", "cuda"), ("cpu:gloo,cuda:nccl", "cuda", "cuda"), ("gloo", "cuda", "cpu"), ("gloo", None, "cpu")],
)
def test_mesh_follows_the_process_group_backend_not_the_parameters(monkeypatch, backend, accelerator, expected):
    """A model still on the CPU, sharded under NCCL, gets a CUDA mesh (a CPU mesh cannot run NCCL collectives)."""
    import torch.distributed as dist
    import torch.distributed.device_mesh as device_mesh
    import torch.distributed.fsdp as fsdp

    from hf_iau.sharding import shard_per_block

    meshes, sharded = [], []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: accelerator is not None)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a: torch.device(accelerator) if accelerator else None)
    monkeypatch.setattr(device_mesh, "init_device_mesh", lambda device, shape: meshes.append((device, shape)) or "mesh")
    monkeypatch.setattr(fsdp, "fully_shard", lambda module, mesh, reshard_after_forward: sharded.append(mesh))
    model = tiny_gpt2()
    assert next(model.parameters()).device.type == "cpu"
    shard_per_block(model)
    assert meshes == [(expected, (2,))]
    assert sharded == ["mesh"] * (model.config.n_layer + 1)


def test_class_name_of_a_sharded_model_is_the_unsharded_one(tmp_path):
    from hf_iau.saving import keep_class_name, unsharded_class_name

    model = tiny_gpt2()
    fsdp_class = type("FSDPGPT2LMHeadModel", (type(model),), {})  # what fully_shard does to the class
    model.__class__ = fsdp_class
    assert unsharded_class_name(model) == "GPT2LMHeadModel"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"architectures": ["FSDPGPT2LMHeadModel"], "n_embd": 16}))
    keep_class_name(config, model)
    assert json.loads(config.read_text()) == {"architectures": ["GPT2LMHeadModel"], "n_embd": 16}
    keep_class_name(tmp_path / "absent.json", model)  # no config (a LoRA adapter folder): nothing written
    assert not (tmp_path / "absent.json").exists()


def test_full_state_dict_keeps_tied_weights_tied_in_one_process():
    """Without a process group the full state dict is the model's own, tied names sharing one tensor."""
    from hf_iau.saving import full_state_dict

    model = tiny_gpt2()
    full = full_state_dict(model)
    assert full is not None and set(full) == set(model.state_dict())
    assert full["lm_head.weight"].data_ptr() == full["transformer.wte.weight"].data_ptr()
    assert all(torch.equal(full[k], v) for k, v in model.state_dict().items())
