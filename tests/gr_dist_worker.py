"""GR training parity cases, run in one process (imported by tests) or on 2 processes (torchrun).

``torchrun --nproc_per_node 2 --standalone tests/gr_dist_worker.py OUT_DIR`` trains every case with
per_device_train_batch_size=2; rank 0 writes the trained weights to ``OUT_DIR/<case>.safetensors`` and rank 1
to ``OUT_DIR/<case>.rank1.safetensors``; tests compare them with ``run_case(case, world=1)`` (per-device batch 4:
the same global batches) and with each other. Every ``torch.distributed`` collective called directly from GR code
raises in the worker (:func:`forbid_collectives_from_gr`).
GPT-2 in float64 without dropout (resid/embd/attn 0), fixed-length rows (equal token counts on every process).

FSDP2 cases (``FSDP_CASES``): the model sharded with ``fully_shard`` per GPT2Block and root, one GR
training step (``IAUTrainer.training_step``, each process on half the rows); rank 0 writes the gathered
gradients, compared with ``fsdp_step(case, world=1)`` on all rows unsharded. (``Trainer.train`` itself does
not accept a user-sharded model on this CPU set-up: accelerate wraps it in DDP.)
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tiny  # noqa: E402

GLOBAL_BATCH = 4
CASES: dict[str, dict] = {
    "fd_ga2": {"gr_alpha": 0.05},
    "fd_ga2_per_tensor_reuse": {"gr_alpha": 0.05, "gr_norm": "per_tensor", "gr_every_n_steps": 2, "gr_reuse_penalty": True},
    # rows in order; the 2nd micro-batch of every step has no label (all -100) on every process: its gradient and
    # GR norm are 0, and it is the micro-batch whose backward must still run DDP's gradient sync
    "fd_ga2_unlabelled_micro_batch": {"gr_alpha": 0.05, "train_sampling_strategy": "sequential"},
}
UNLABELLED = {"fd_ga2_unlabelled_micro_batch"}
GR_MODULES = ("hf_iau.restriction", "hf_iau.hvp")  # must leave collectives to accelerate
CONTROL = {"gr_alpha": 0.0}  # one process only: GR must change the weights
FSDP_CASES: dict[str, list[str] | None] = {"fsdp_step_full": None, "fsdp_step_lora": ["c_attn", "c_proj"]}


def run_case(name: str, world: int, out_dir: str | None = None, overrides: dict | None = None) -> dict[str, torch.Tensor]:
    """Train 3 optimizer steps (gradient accumulation 2) and return the weights (CPU, fp32)."""
    from hf_iau import IAUConfig, IAUTrainer

    # float64: the finite difference's round-off (ε·‖g‖·α/r) is then far below the tolerance, even after
    # AdamW's first steps (≈ lr·sign(g), which turns float32 round-off in tiny gradient entries into 1e-3)
    model = tiny.tiny_gpt2(seed=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0).double()
    data = tiny.lm_dataset(n=24, seed=3)
    if name in UNLABELLED:  # rows 4-7, 12-15, 20-23: the 2nd micro-batch of each step (global batch 4, GA 2)
        data = data.map(lambda row, i: {"labels": [-100] * len(row["labels"]) if (i // GLOBAL_BATCH) % 2 else row["labels"]},
                        with_indices=True)
    args = IAUConfig(
        output_dir=out_dir or tempfile.mkdtemp(), use_cpu=True, ddp_find_unused_parameters=False, report_to="none",
        per_device_train_batch_size=GLOBAL_BATCH // world, gradient_accumulation_steps=2,
        learning_rate=1e-2, seed=0, disable_tqdm=True, save_strategy="no", logging_steps=1, **{"max_steps": 3, **CASES[name], **(overrides or {})},
    )
    trainer = IAUTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    return {n: p.detach().float().cpu().clone().contiguous() for n, p in trainer.model.named_parameters()}


def fsdp_step(name: str, world: int, rank: int = 0, alpha: float = 0.05) -> dict[str, torch.Tensor]:
    """One GR step on 4 rows (GA 1); with world > 1 FSDP2-sharded, this process on its 4/world rows.
    Returns the trainable parameters' full gradients."""
    from transformers import default_data_collator

    from hf_iau import IAUConfig, IAUTrainer

    model = tiny.tiny_gpt2(seed=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0).double()
    targets = FSDP_CASES[name]
    if targets:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(1)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for module in list(model.modules()):
            if type(module).__name__ == "GPT2Block":
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
    ds = tiny.lm_dataset(4, seed=5)
    batch = default_data_collator([ds[i] for i in range(4)])
    batch.pop("id")
    rows = slice(rank * 4 // world, (rank + 1) * 4 // world)
    args = IAUConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, report_to="none", gr_alpha=alpha, disable_tqdm=True,
                     save_strategy="no")
    trainer = IAUTrainer(model=model, args=args)
    trainer.current_gradient_accumulation_steps = 1
    trainer.training_step(trainer.model, {k: v[rows] for k, v in batch.items()})
    full = lambda g: g.full_tensor() if hasattr(g, "full_tensor") else g  # noqa: E731
    return {n: full(p.grad).detach().clone().contiguous() for n, p in trainer.model.named_parameters() if p.requires_grad}


def forbid_collectives_from_gr() -> None:
    """Make every ``torch.distributed`` collective raise when called directly from GR code (accelerate's own
    calls, and torch's, go through): GR must reduce through accelerate."""
    import torch.distributed as dist

    def guard(name: str, fn):
        def call(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith(GR_MODULES):
                raise RuntimeError(f"{caller} called torch.distributed.{name} directly; reduce through accelerate")
            return fn(*args, **kwargs)

        return call

    for name in ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "reduce"):
        setattr(dist, name, guard(name, getattr(dist, name)))


def main(out_dir: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    forbid_collectives_from_gr()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    for name in CASES:
        weights = run_case(name, world, out_dir)
        save_file(weights, os.path.join(out_dir, f"{name}.safetensors" if rank == 0 else f"{name}.rank{rank}.safetensors"))
    for name in FSDP_CASES:
        grads = fsdp_step(name, world, dist.get_rank())
        if dist.get_rank() == 0:
            save_file(grads, os.path.join(out_dir, f"{name}.safetensors"))
    if int(os.environ.get("RANK", "0")) == 0:
        with open(os.path.join(out_dir, "world_size.txt"), "w") as fh:
            fh.write(str(dist.get_world_size() if dist.is_initialized() else 1))
    tiny.leave_processes()


if __name__ == "__main__":
    main(sys.argv[1])
