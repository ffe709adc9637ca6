"""Unlearning parity cases, run in one process (imported by tests) or on N processes (torchrun).

``torchrun --nproc_per_node 2 tests/dist_worker.py OUT_DIR`` runs every case and rank 0 writes the
trainable weights after unlearning to ``OUT_DIR/<case>.safetensors``; tests compare them with
``run_case(case)`` in one process.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tiny  # noqa: E402

N_FORGET, N_RETAIN = 7, 41
# reference-parity settings, pinned (the library defaults may change); cases override some of them
REFERENCE = {
    "unlearn_optimizer": "adam", "unlearn_learning_rate": 1e-3, "unlearn_steps": 1, "unlearn_forget_weight": 1.0,
    "unlearn_retain_weight": 1.0, "unlearn_retain_sample_size": None, "unlearn_targets": "none", "unlearn_stop": "fixed",
}


def _lora(model: torch.nn.Module, targets: list[str]):
    from peft import LoraConfig

    torch.manual_seed(1)
    return LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)


# case -> (model factory, dataset factory, IAUConfig overrides, peft targets or None)
CASES: dict[str, tuple[Callable, Callable, dict, list[str] | None]] = {
    "bert_full": (tiny.tiny_bert, tiny.text_cls_dataset, {}, None),
    "gpt2_full": (tiny.tiny_gpt2, tiny.lm_dataset, {}, None),
    "gpt2_lora": (tiny.tiny_gpt2, tiny.lm_dataset, {}, ["c_attn", "c_proj"]),
    "vit_retain_sample": (tiny.tiny_vit, tiny.image_dataset, {"unlearn_retain_sample_size": 13, "unlearn_steps": 2}, None),
    "bert_lora_retain_sample": (
        tiny.tiny_bert, tiny.text_cls_dataset, {"unlearn_retain_sample_size": 11, "unlearn_steps": 2}, ["query", "value"],
    ),
    "gpt2_multistep_sgd": (
        tiny.tiny_gpt2, tiny.lm_dataset,
        {"unlearn_optimizer": "sgd", "unlearn_learning_rate": 0.5, "unlearn_steps": 3, "unlearn_forget_weight": 2.0}, None,
    ),
}

# Every baseline through the same engine: case -> (model factory, dataset factory, method, options).
# (`retrain` is Trainer.train under DDP, whose global batch grows with the number of processes: not a parity case.)
SGD2 = {"steps": 2, "batch_size": 5, "learning_rate": 0.1, "optimizer": "sgd"}
METHOD_CASES: dict[str, tuple[Callable, Callable, str, dict]] = {
    "finetune_bert": (tiny.tiny_bert, tiny.text_cls_dataset, "finetune", {"steps": 2, "batch_size": 5, "learning_rate": 0.1, "optimizer": "sgd"}),
    "gradient_ascent_gpt2": (tiny.tiny_gpt2, tiny.lm_dataset, "gradient_ascent", {"steps": 2, "batch_size": 5, "learning_rate": 0.1, "optimizer": "sgd"}),
    "gradient_difference_bert": (
        tiny.tiny_bert, tiny.text_cls_dataset, "gradient_difference", {"steps": 2, "batch_size": 5, "learning_rate": 0.1, "optimizer": "sgd"},
    ),
    "npo_gpt2": (tiny.tiny_gpt2, tiny.lm_dataset, "npo", {"steps": 2, "batch_size": 5, "learning_rate": 0.1, "optimizer": "sgd", "retain_weight": 1.0}),
    "influence_function_bert": (tiny.tiny_bert, tiny.text_cls_dataset, "influence_function", {"max_iterations": 3}),
    "fisher_bert": (tiny.tiny_bert, tiny.text_cls_dataset, "fisher", {"fisher_sample_size": 9}),
    "iau_method_gpt2": (tiny.tiny_gpt2, tiny.lm_dataset, "iau", {"unlearn_steps": 2}),
    "simnpo_gpt2": (tiny.tiny_gpt2, tiny.lm_dataset, "simnpo", {**SGD2, "retain_weight": 1.0}),
    "rmu_gpt2": (tiny.tiny_gpt2, tiny.lm_dataset, "rmu", {**SGD2, "param_pattern": "mlp"}),
    "salun_bert": (tiny.tiny_bert, tiny.text_cls_dataset, "salun", SGD2),
    "scrub_bert": (tiny.tiny_bert, tiny.text_cls_dataset, "scrub", SGD2),
}


def run_method_case(name: str, out_dir: str | None = None) -> dict[str, torch.Tensor]:
    """Run a registered baseline on forget rows 0..6 / retain rows 7..47 and return the trainable weights."""
    from hf_iau import IAUConfig, IAUTrainer
    from hf_iau.methods import run_method

    make_model, make_data, method, options = METHOD_CASES[name]
    model = make_model(seed=0)
    data = make_data(n=N_FORGET + N_RETAIN, seed=3)
    forget, retain = data.select(range(N_FORGET)), data.select(range(N_FORGET, N_FORGET + N_RETAIN))
    args = IAUConfig(
        output_dir=out_dir or tempfile.mkdtemp(), use_cpu=True, ddp_find_unused_parameters=False, report_to="none",
        per_device_eval_batch_size=3, seed=0, disable_tqdm=True, **REFERENCE,
    )
    trainer = IAUTrainer(model=model, args=args)
    run_method(method, trainer, forget, retain, **options)
    return {n: p.detach().float().cpu().clone().contiguous() for n, p in trainer.model.named_parameters() if p.requires_grad}


def run_case(name: str, out_dir: str | None = None) -> dict[str, torch.Tensor]:
    """Unlearn forget rows 0..6 with retain rows 7..47 and return the trainable weights (CPU, fp32)."""
    from hf_iau import IAUConfig, IAUTrainer

    make_model, make_data, overrides, targets = CASES[name]
    model = make_model(seed=0)
    data = make_data(n=N_FORGET + N_RETAIN, seed=3)
    forget, retain = data.select(range(N_FORGET)), data.select(range(N_FORGET, N_FORGET + N_RETAIN))
    kwargs = {**REFERENCE, **overrides}
    args = IAUConfig(
        output_dir=out_dir or tempfile.mkdtemp(), use_cpu=True, ddp_find_unused_parameters=False, report_to="none",
        per_device_eval_batch_size=3, seed=0, disable_tqdm=True, **kwargs,
    )
    peft_config = _lora(model, targets) if targets else None
    torch.manual_seed(1)
    trainer = IAUTrainer(model=model, args=args, peft_config=peft_config)
    trainer.unlearn(forget, retain_dataset=retain)
    return {n: p.detach().float().cpu().clone().contiguous() for n, p in trainer.model.named_parameters() if p.requires_grad}


def training_curvature(out_dir: str) -> dict[str, torch.Tensor]:
    """IAUConfig.train_curvature='per_example' at learning rate 0 (fixed weights): F̂ = Σ_i (∇ℓ_i)² over every row of
    the last epoch, whichever process saw it (2 processes: half the rows each, summed)."""
    from transformers import default_data_collator

    from hf_iau import IAUConfig, IAUTrainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = IAUConfig(
        output_dir=out_dir, use_cpu=True, ddp_find_unused_parameters=False, report_to="none", disable_tqdm=True,
        save_strategy="no", num_train_epochs=2, per_device_train_batch_size=4 // world, learning_rate=0.0,
        max_grad_norm=0.0, seed=0, train_curvature="per_example", unlearn_learning_rate=1e-3,
    )
    trainer = IAUTrainer(tiny.tiny_bert(0), args=args, train_dataset=tiny.text_cls_dataset(8, seed=0).remove_columns("id"),
                         data_collator=default_data_collator)
    trainer.train()
    assert trainer.curvature.meta["rows"] == "8"
    return {k: v.clone().contiguous() for k, v in trainer.curvature.fisher.items()}


def key_mismatch(out_dir: str) -> None:
    """Every process holds its own fingerprint key: each must refuse the request (none may wait in a collective)."""
    from hf_iau import IAUConfig, IAUTrainer

    rank = int(os.environ.get("RANK", "0"))
    data = tiny.lm_dataset(n=N_FORGET + N_RETAIN, seed=3)
    args = IAUConfig(
        output_dir=out_dir, use_cpu=True, ddp_find_unused_parameters=False, report_to="none", disable_tqdm=True,
        fingerprint_key_file=os.path.join(out_dir, f"key-{rank}"), **REFERENCE,
    )
    trainer = IAUTrainer(model=tiny.tiny_gpt2(seed=0), args=args)
    try:
        trainer.unlearn(data.select(range(N_FORGET)), data.select(range(N_FORGET, N_FORGET + N_RETAIN)))
    except ValueError as err:
        if "fingerprint key" in str(err):
            with open(os.path.join(out_dir, f"refused-{rank}.txt"), "w") as fh:
                fh.write(str(err))
    tiny.leave_processes()


def main(out_dir: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    for name, run in [*((n, run_case) for n in CASES), *((n, run_method_case) for n in METHOD_CASES)]:
        weights = run(name, out_dir)
        if int(os.environ.get("RANK", "0")) == 0:
            save_file(weights, os.path.join(out_dir, f"{name}.safetensors"))
    fisher = training_curvature(out_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        save_file(fisher, os.path.join(out_dir, "train_curvature.safetensors"))
    world = dist.get_world_size() if dist.is_initialized() else 1
    if int(os.environ.get("RANK", "0")) == 0:
        with open(os.path.join(out_dir, "world_size.txt"), "w") as fh:
            fh.write(str(world))
    tiny.leave_processes()


if __name__ == "__main__":
    if sys.argv[2:] == ["key_mismatch"]:
        key_mismatch(sys.argv[1])
    else:
        main(sys.argv[1])
