"""GR overhead: step time and peak memory of plain vs exact vs finite-difference GR and cheaper
variants, on small GPT-2 LMs on CPU; plus what each variant does to removal fidelity.

    python benchmarks/gr_overhead.py [--quick]

Time: one optimizer step (IAUTrainer.training_step + AdamW step + zero_grad) on a fixed batch,
configs interleaved round-robin, median of the repeats; variants that skip the penalty on some
steps are timed over blocks of `every` consecutive steps (amortised). Every time is a ratio to the
plain SDPA step of the same run.
Memory: each config runs in a FRESH subprocess; peak resident set size (RSS, sampled every 0.5 ms)
above the RSS just before the first step, over 3 steps: gradients + AdamW state + activations +
GR buffers. glibc may keep freed memory mapped, which can only raise a figure.
Fidelity: the tiny-ViT mislabelled-digits scenario (benchmarks/common.py) trained with each
variant, one IAU request (Adam lr 3e-3, one step), gap to the model retrained with the same variant.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakRSS, digits_data, fmt, gap_to_retrain, interleaved, ratio, train_digits, write_results  # noqa: E402

SIZES = {  # name: (layers, hidden, vocab, batch, seq)
    "gpt2-2L-128d": (2, 128, 4096, 8, 128),
    "gpt2-4L-384d": (4, 384, 8192, 8, 128),
    "tiny": (2, 32, 256, 4, 32),
}
VARIANTS = {  # name: (attn, gr fields, steps per timed block)
    "plain (SDPA)": ("sdpa", {}, 1),
    "exact GR (eager)": ("eager", {"gr_alpha": 0.005, "gr_mode": "exact"}, 1),
    "FD GR (SDPA)": ("sdpa", {"gr_alpha": 0.005}, 1),
    "FD GR, sub-batch 1/4": ("sdpa", {"gr_alpha": 0.005, "gr_sub_batch_fraction": 0.25}, 1),
    "FD GR every 4 steps": ("sdpa", {"gr_alpha": 0.005, "gr_every_n_steps": 4}, 4),
    "FD GR every 4, reuse penalty": ("sdpa", {"gr_alpha": 0.005, "gr_every_n_steps": 4, "gr_reuse_penalty": True}, 4),
    "FD GR every 2, sub-batch 1/2": ("sdpa", {"gr_alpha": 0.005, "gr_every_n_steps": 2, "gr_sub_batch_fraction": 0.5}, 2),
}


def build(size: str, attn: str, gr: dict):
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_iau import IAUConfig, IAUTrainer

    layers, hidden, vocab, batch, seq = SIZES[size]
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=hidden, n_layer=layers, n_head=max(2, hidden // 64),
                     bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation=attn,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    args = IAUConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, report_to=[], **gr)
    trainer = IAUTrainer(model, args=args)
    trainer.current_gradient_accumulation_steps = 1
    ids = torch.randint(1, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def block(n: int):
        def run():
            for k in range(n):
                trainer.state.global_step = k
                trainer.training_step(model, dict(inputs))
                opt.step()
                opt.zero_grad(set_to_none=True)
        return run

    return model, block, batch * seq, sum(p.numel() for p in model.parameters())


def child(size: str, variant: str) -> None:
    attn, gr, every = VARIANTS[variant]
    model, block, _, _ = build(size, attn, gr)
    run = block(max(every, 3))
    with PeakRSS() as mem:
        run()
    print(json.dumps({"peak_mib": mem.delta_mib}))


def peak_memory(size: str, variant: str, repeats: int) -> float:
    vals = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--child", size, variant], capture_output=True, text=True, check=True)
        vals.append(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])
    return sorted(vals)[len(vals) // 2]


def fidelity(quick: bool) -> list[dict]:
    n_train, n_forget, epochs = (200, 10, 3) if quick else (600, 30, 12)
    data = digits_data(n_train, n_forget)
    variants = {
        "no GR": {},
        "FD GR": {"gr_alpha": 0.005},
        "exact GR": {"gr_alpha": 0.005, "gr_mode": "exact"},
        "FD GR, sub-batch 1/4": {"gr_alpha": 0.005, "gr_sub_batch_fraction": 0.25},
        "FD GR every 4 steps": {"gr_alpha": 0.005, "gr_every_n_steps": 4},
        "FD GR every 4, reuse penalty": {"gr_alpha": 0.005, "gr_every_n_steps": 4, "gr_reuse_penalty": True},
        "FD GR every 2, sub-batch 1/2": {"gr_alpha": 0.005, "gr_every_n_steps": 2, "gr_sub_batch_fraction": 0.5},
    }
    if quick:
        variants = {k: variants[k] for k in ("no GR", "FD GR", "FD GR every 4, reuse penalty")}
    rows = []
    for name, gr in variants.items():
        trainer = train_digits(data, epochs, **gr)
        gold = train_digits(data, epochs, on="retain", **gr)
        before = gap_to_retrain(trainer.model, gold.model, data)
        trainer.args.unlearn_learning_rate = 3e-3
        res = trainer.unlearn(data.forget, data.retain)
        after = gap_to_retrain(trainer.model, gold.model, data)
        rows.append({"variant": name, "train_seconds": trainer.train_seconds, "gap_before": before["gap_to_retrain"],
                     "gap_after": after["gap_to_retrain"], "test_accuracy_after": after["test_accuracy"],
                     "forget_accuracy_after": after["forget_accuracy"], "unlearn_seconds": res.metrics["wall_time_s"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=2)
    ap.add_argument("--repeats", type=int, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.child:
        return child(*a.child)
    sizes = ["tiny"] if a.quick else ["gpt2-2L-128d", "gpt2-4L-384d"]
    repeats = a.repeats or (3 if a.quick else 5)
    results, md = {"timing": {}, "memory": {}}, []
    md += ["# GR overhead", "", "Step time and peak memory as a ratio to the plain SDPA step of the same run "
           f"(median of {repeats} interleaved repeats; memory: one fresh subprocess per config, "
           "peak RSS above the pre-step RSS). Goal: GR ≤ 2.0× time and ≤ 1.3× memory of a plain SDPA step.", ""]
    for size in sizes:
        t0 = time.perf_counter()
        blocks, tokens, nparams = {}, 0, 0
        for name, (attn, gr, every) in VARIANTS.items():
            _, block, tokens, nparams = build(size, attn, gr)
            blocks[name] = (block(every), every)
        med = interleaved({n: b for n, (b, _) in blocks.items()}, repeats)
        per_step = {n: med[n] / blocks[n][1] for n in med}
        mem = {n: peak_memory(size, n, 1) for n in VARIANTS}
        base_t, base_m = per_step["plain (SDPA)"], mem["plain (SDPA)"]
        results["timing"][size] = {"params": nparams, "tokens_per_step": tokens, "seconds_per_step": per_step,
                                   "time_ratio": {n: ratio(v, base_t) for n, v in per_step.items()}}
        results["memory"][size] = {"peak_mib": mem, "memory_ratio": {n: ratio(v, base_m) for n, v in mem.items()}}
        md += [f"## {size} ({nparams / 1e6:.2f}M parameters, {tokens} tokens/step, float32, 1 thread)", "",
               "| config | time × plain | goal | peak memory × plain | goal | plain-step tokens/s |", "|---|---:|---:|---:|---:|---:|"]
        for n in VARIANTS:
            goal_t = "–" if n.startswith("plain") else "≤ 2.0"
            goal_m = "–" if n.startswith("plain") else "≤ 1.3"
            tps = f"{tokens / base_t:,.0f}" if n.startswith("plain") else ""
            md.append(f"| {n} | {fmt(ratio(per_step[n], base_t))} | {goal_t} | {fmt(ratio(mem[n], base_m))} | {goal_m} | {tps} |")
        md += ["", f"Plain step peak memory: {base_m:.0f} MiB above the loaded model; section took {time.perf_counter() - t0:.0f} s.", ""]
    rows = fidelity(a.quick)
    results["fidelity"] = rows
    md += ["## Removal fidelity of each GR variant (tiny ViT, mislabelled digits)", "",
           "Gap to retrain = mean |Δ| of forget and test accuracy vs the model retrained (same variant) on the retain "
           "set, before and after one IAU request (Adam lr 3e-3); lower is better. Train time × no-GR run.", "",
           "| training | train time × no GR | gap before | gap after IAU | test acc after |", "|---|---:|---:|---:|---:|"]
    base = rows[0]["train_seconds"]
    for r in rows:
        md.append(f"| {r['variant']} | {fmt(ratio(r['train_seconds'], base))} | {fmt(r['gap_before'], 3)} | "
                  f"{fmt(r['gap_after'], 3)} | {fmt(r['test_accuracy_after'], 3)} |")
    md += ["", "Train-time ratios here are single sequential runs (not interleaved): indicative only."]
    write_results("gr_overhead", results, md, a.quick)


if __name__ == "__main__":
    main()
