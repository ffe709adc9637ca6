"""GR training parity cases, run in one process (imported by tests) or on 2 processes (torchrun).

``torchrun --nproc_per_node 2 --standalone tests/gr_dist_worker.py OUT_DIR`` trains every case with
per_device_train_batch_size=2 and rank 0 writes the trained weights to ``OUT_DIR/<case>.safetensors``;
tests compare them with ``run_case(case, world=1)`` (per-device batch 4: the same global batches).
GPT-2 in float64 without dropout (resid/embd/attn 0), fixed-length rows (equal token counts on every process).
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
}
CONTROL = {"gr_alpha": 0.0}  # one process only: GR must change the weights


def run_case(name: str, world: int, out_dir: str | None = None, overrides: dict | None = None) -> dict[str, torch.Tensor]:
    """Train 3 optimizer steps (gradient accumulation 2) and return the weights (CPU, fp32)."""
    from hf_iau import IAUConfig, IAUTrainer

    # float64: the finite difference's round-off (ε·‖g‖·α/r) is then far below the tolerance, even after
    # AdamW's first steps (≈ lr·sign(g), which turns float32 round-off in tiny gradient entries into 1e-3)
    model = tiny.tiny_gpt2(seed=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0).double()
    data = tiny.lm_dataset(n=24, seed=3)
    args = IAUConfig(
        output_dir=out_dir or tempfile.mkdtemp(), use_cpu=True, ddp_find_unused_parameters=False, report_to="none",
        per_device_train_batch_size=GLOBAL_BATCH // world, gradient_accumulation_steps=2,
        learning_rate=1e-2, seed=0, disable_tqdm=True, save_strategy="no", logging_steps=1, **{"max_steps": 3, **CASES[name], **(overrides or {})},
    )
    trainer = IAUTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    return {n: p.detach().float().cpu().clone().contiguous() for n, p in trainer.model.named_parameters()}


def main(out_dir: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for name in CASES:
        weights = run_case(name, world, out_dir)
        if int(os.environ.get("RANK", "0")) == 0:
            save_file(weights, os.path.join(out_dir, f"{name}.safetensors"))
    if int(os.environ.get("RANK", "0")) == 0:
        with open(os.path.join(out_dir, "world_size.txt"), "w") as fh:
            fh.write(str(dist.get_world_size() if dist.is_initialized() else 1))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
