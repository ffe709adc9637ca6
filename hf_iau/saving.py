"""Saving an ``IAUTrainer``'s model: atomically, gathered from FSDP2 shards, under the model's own class name.

``IAUTrainer.save_model`` / ``_save`` delegate here. Three cases:

- one process: the folder is written in a temporary sibling and swapped in (complete old or complete new);
- a model the user sharded with ``fully_shard`` (FSDP2): every process joins one gather into a full,
  CPU-offloaded state dict that only global rank 0 keeps (``get_model_state_dict(full_state_dict=True,
  cpu_offload=True)``: one parameter at a time on the device, never the whole model), rank 0 saves it
  atomically, the others wait;
- FSDP/DeepSpeed run by accelerate, or several processes: ``Trainer.save_model`` as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from .safe_io import atomic_directory
from .sharding import is_sharded


def save_model(trainer: Any, output_dir: str, internal: bool, base_save: Callable[[str, bool], None]) -> None:
    """``IAUTrainer.save_model``: weights, card and ledger; ``base_save`` is ``Trainer.save_model`` of that trainer."""
    args = trainer.args
    if not internal and not trainer.is_fsdp_enabled and is_sharded(trainer.model):
        save_sharded(trainer, output_dir)
        return
    if internal or trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        base_save(output_dir, internal)
        if args.should_save and not internal:
            trainer._write_unlearning_artifacts(output_dir)
        return
    if args.should_save:  # one writer; under DDP every process holds the same full weights
        with atomic_directory(output_dir) as tmp:
            base_save(str(tmp), True)  # internal: no push from the temporary folder
            trainer._write_unlearning_artifacts(str(tmp))
    trainer.accelerator.wait_for_everyone()  # the others return once the folder is complete
    if args.push_to_hub:
        trainer.push_to_hub(commit_message="Model save", revision=args.hub_revision)


def save_sharded(trainer: Any, output_dir: str) -> None:
    """A model sharded by the user (FSDP2): gather on rank 0 (CPU), save there atomically with card and ledger."""
    state = full_state_dict(trainer.model)  # a collective: every process takes part
    if state is not None and trainer.args.should_save:
        with atomic_directory(output_dir) as tmp:
            trainer._save(str(tmp), state_dict=state)
            keep_class_name(tmp / "config.json", trainer.model)
            trainer._write_unlearning_artifacts(str(tmp))
    trainer.accelerator.wait_for_everyone()


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) state dict of an FSDP2 model on the CPU of global rank 0; None on the other ranks.

    Names that share one tensor in the model (tied weights, e.g. ``lm_head.weight`` and ``wte.weight``) share
    one tensor in the result too, so that ``save_pretrained`` stores it once as it does for unsharded models.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    first: dict[int, str] = {}
    for name, value in model.state_dict(keep_vars=True).items():
        owner = first.setdefault(id(value), name)
        if owner != name and owner in full and name in full:
            full[name] = full[owner]
    return full


def unsharded_class_name(model: torch.nn.Module) -> str:
    """The model's class name without the ``FSDP`` subclass ``fully_shard`` puts in front (``FSDPGPT2LMHeadModel``)."""
    return next(c.__name__ for c in type(model).__mro__ if not c.__name__.startswith("FSDP"))


def keep_class_name(config_path: Path, model: torch.nn.Module) -> None:
    """Rewrite ``architectures`` in a saved ``config.json`` to the unsharded class name (no-op without the file)."""
    if not config_path.is_file():
        return
    data = json.loads(config_path.read_text())
    if data.get("architectures"):
        data["architectures"] = [unsharded_class_name(model)]
        config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def args_as_json(args: Any, output_dir: str) -> None:
    """Replace ``Trainer``'s pickled ``training_args.bin`` in ``output_dir`` with ``training_args.json``."""
    pickled = os.path.join(output_dir, "training_args.bin")
    if os.path.exists(pickled):
        os.remove(pickled)
    with open(os.path.join(output_dir, "training_args.json"), "w") as fh:
        fh.write(args.to_json_string())
