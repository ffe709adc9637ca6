"""One prepared GPU check (< 5 min on one H100): a ~1.1B Llama-style model from a config (random
weights, bf16 autocast, fp32 master weights, AdamW): plain SDPA step vs exact GR (eager) vs
finite-difference GR (SDPA) vs cheaper FD variants vs one IAU unlearning request; tokens/s and
peak memory (torch.cuda.max_memory_allocated, reset per config).

    python benchmarks/gpu.py            # CUDA
    python benchmarks/gpu.py --quick    # tiny model on CPU (what the tests and this session run)

Configs are timed in round-robin (median of the repeats), so the ratios come from one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt, write_results  # noqa: E402

VARIANTS = {  # name: (attn, gr fields, steps per block)
    "plain (SDPA)": ("sdpa", {}, 1),
    "FD GR (SDPA)": ("sdpa", {"gr_alpha": 0.005}, 1),
    "FD GR, sub-batch 1/4": ("sdpa", {"gr_alpha": 0.005, "gr_sub_batch_fraction": 0.25}, 1),
    "FD GR every 4, reuse penalty": ("sdpa", {"gr_alpha": 0.005, "gr_every_n_steps": 4, "gr_reuse_penalty": True}, 4),
    "exact GR (eager)": ("eager", {"gr_alpha": 0.005, "gr_mode": "exact"}, 1),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_iau import IAUConfig, IAUTrainer

    cuda = torch.cuda.is_available() and not a.quick
    dev = torch.device("cuda" if cuda else "cpu")
    if a.quick:
        torch.set_num_threads(1)
        shape = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2)
        batch, seq, repeats = 4, 32, 2
    else:  # TinyLlama-1.1B shape
        shape = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                     num_attention_heads=32, num_key_value_heads=4)
        batch, seq, repeats = 2, 2048, a.repeats
    t_start = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, shape["vocab_size"], (batch, seq), generator=g)
    inputs = {"input_ids": ids.to(dev), "attention_mask": torch.ones_like(ids).to(dev), "labels": ids.to(dev)}
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=seq, attn_implementation="sdpa")).to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda) if cuda else torch.optim.AdamW(model.parameters(), lr=1e-5)
    trainers = {}
    for name, (attn, gr, every) in VARIANTS.items():
        args = IAUConfig(output_dir=tempfile.mkdtemp(), use_cpu=not cuda, bf16=True, report_to=[], **gr)
        tr = IAUTrainer(model, args=args)
        tr.current_gradient_accumulation_steps = 1
        trainers[name] = (tr, attn, every)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def block(name):
        tr, attn, every = trainers[name]
        model.config._attn_implementation = attn
        for k in range(every):
            tr.state.global_step = k
            tr.training_step(model, dict(inputs))
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync()

    times = {n: [] for n in VARIANTS}
    peak = {}
    errors = {}
    for r in range(repeats + 1):
        for n in VARIANTS:
            if n in errors:
                continue
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            try:
                block(n)
            except torch.OutOfMemoryError as err:
                errors[n] = f"OOM: {str(err)[:120]}"
                opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                continue
            if r > 0:  # round 0 is warm-up
                times[n].append((time.perf_counter() - t) / trainers[n][2])
            if cuda:
                peak[n] = max(peak.get(n, 0), torch.cuda.max_memory_allocated() / 2**30)
    model.config._attn_implementation = "sdpa"
    med = {n: statistics.median(v) for n, v in times.items() if v}
    # one unlearning request: 8 forget + 32 retain sequences, one IAU step
    rows = ids.repeat(20, 1)[:40].tolist()
    ds = Dataset.from_dict({"id": list(range(40)), "input_ids": rows, "attention_mask": [[1] * seq] * 40, "labels": rows})
    tr = trainers["plain (SDPA)"][0]
    tr.args.unlearn_batch_size = batch
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    opt.state.clear()
    sync()
    res = tr.unlearn(ds.select(range(8)), ds.select(range(8, 40)), )
    sync()
    unlearn_tokens = res.metrics["example_gradient_passes"] * (seq - 1)
    unlearn_tps = unlearn_tokens / res.metrics["wall_time_s"]
    unlearn_peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    base = med["plain (SDPA)"]
    tok = batch * seq
    dev_name = torch.cuda.get_device_name(0) if cuda else "CPU (--quick: tiny model)"
    md = ["# GPU check: GR and unlearning on a ~1B Llama-style model" if not a.quick else "# GPU check (--quick, CPU, tiny model)", "",
          f"{dev_name}; Llama {nparams / 1e6:.2f}M parameters from config, random weights, bf16 autocast, AdamW; "
          f"{tok} tokens/step; median of {repeats} round-robin repeats. Total run {time.perf_counter() - t_start:.0f} s.", "",
          "| config | s/step | × plain | tokens/s | peak GiB | goal |", "|---|---:|---:|---:|---:|---|"]
    for n in VARIANTS:
        if n in errors:
            md.append(f"| {n} | {errors[n]} | | | | |")
            continue
        goal = "" if n.startswith("plain") else "≤ 2.0× time, ≤ 1.3× memory"
        md.append(f"| {n} | {med[n]:.3f} | {fmt(med[n] / base)} | {tok / med[n]:,.0f} | {fmt(peak.get(n, float('nan')))} | {goal} |")
    md.append(f"| IAU request (8 forget + 32 retain seqs, 1 step, end to end) | {res.metrics['wall_time_s']:.3f} (request) | | "
              f"{unlearn_tps:,.0f} | {fmt(unlearn_peak)} | tokens/s ≥ 0.9× plain |")
    if a.quick:
        md += ["", "**The H100 run is pending**: no GPU was lent in the session that wrote this; run "
               "`python benchmarks/gpu.py` on one H100 (< 5 min) to fill in `gpu.md`."]
    write_results("gpu", {"device": dev_name, "params": nparams, "tokens_per_step": tok, "seconds_per_step": med,
                          "peak_gib": peak, "errors": errors, "unlearn": {"tokens_per_s": unlearn_tps, "peak_gib": unlearn_peak,
                                                                          **res.metrics}}, md, a.quick)


if __name__ == "__main__":
    main()
