"""FSDP2 sharding of a model before it is handed to ``IAUTrainer`` (``torch.distributed.fsdp.fully_shard``).

``shard_per_block(model)`` applies ``fully_shard`` to every transformer block (the model's
``_no_split_modules`` classes, e.g. ``GPT2Block``, ``LlamaDecoderLayer``) and then to the root, on a
1-D device mesh of all processes. Parameters become ``DTensor`` shards; forward passes all-gather a
block's parameters, backward passes reduce-scatter its gradients. The unlearning engine
(:mod:`hf_iau.engine`) runs such a model as it is. Needs an initialised process group (``torchrun``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def block_classes(model: torch.nn.Module) -> set[str]:
    """Class names of the model's transformer blocks (``_no_split_modules`` of the transformers model)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether any parameter of ``model`` is a DTensor (FSDP2 / tensor parallel)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def mesh_device_type() -> str:
    """Device type the default process group communicates on: the accelerator (``cuda`` under NCCL, ``xpu``
    under XCCL) when the backend serves it, else ``cpu`` (gloo) — never the device the parameters happen to be on."""
    backend = str(dist.get_backend()).lower()
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    if accelerator is not None:
        served = dist.Backend.default_device_backend_map.get(accelerator.type)
        if served and served != "gloo" and served in backend:
            return accelerator.type
    return "cpu"


def shard_per_block(model: torch.nn.Module, mesh: Any = None, reshard_after_forward: bool = True) -> torch.nn.Module:
    """Apply FSDP2 ``fully_shard`` per transformer block and to the root; returns ``model`` (sharded in place).

    Apply a peft adapter before sharding. ``mesh`` defaults to all processes on the device type of the process
    group's backend (``mesh_device_type``); ``fully_shard`` moves the parameters there.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "shard_per_block needs an initialised process group: launch with `torchrun --nproc_per_node N` or "
            "`accelerate launch` (and call torch.distributed.init_process_group), or do not shard."
        )
    if is_sharded(model):
        raise ValueError("the model is already sharded (its parameters are DTensors); pass it as it is.")
    classes = block_classes(model)
    blocks = [m for m in model.modules() if type(m).__name__ in classes]
    if not blocks:
        raise ValueError(
            f"no transformer blocks found to shard in {type(model).__name__} (no `_no_split_modules`); "
            "shard it yourself with torch.distributed.fsdp.fully_shard and pass the sharded model."
        )
    if mesh is None:
        mesh = init_device_mesh(mesh_device_type(), (dist.get_world_size(),))
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model
