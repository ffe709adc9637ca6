"""Unlearning tokens/s vs the Trainer's training tokens/s on the same causal LM.

    python benchmarks/throughput.py [--quick]

Model: GPT-2 2L/128d (tiny with --quick), random token sequences, float32, 1 thread.
Training: `IAUTrainer.train()` without GR, timed from the 2nd step's start to the end (a callback),
tokens = predicted tokens of those steps. Unlearning: `IAUTrainer.unlearn` (one IAU step, the
forget set plus a retain sample), two figures: end to end (tokens in gradient passes / the
request's wall time, which also holds the count pass and the after-request forward evaluation)
and the gradient phase alone (the same tokens / the time of the step's passes, measured with
unlearn_steps=2 minus unlearn_steps=1, with a fixed step count and no saturation). Train and unlearn
runs are interleaved, 3 repeats, medians.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback, default_data_collator

    from hf_iau import IAUConfig, IAUTrainer

    q = a.quick
    layers, hidden, vocab, seq, bs = (2, 32, 256, 32, 8) if q else (2, 128, 4096, 128, 8)
    n_train, n_forget, sample, steps = (96, 16, 32, 10) if q else (512, 64, 64, 30)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (n_train, seq), generator=g).tolist()
    ds = Dataset.from_dict({"id": list(range(n_train)), "input_ids": ids, "attention_mask": [[1] * seq] * n_train, "labels": ids})
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=hidden, n_layer=layers, n_head=2, bos_token_id=0,
                     eos_token_id=0, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 1:
                self.t0 = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            self.t1 = time.perf_counter()

    args = IAUConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
                     logging_strategy="no", max_steps=steps, per_device_train_batch_size=bs, unlearn_batch_size=bs,
                     unlearn_retain_sample_size=sample, learning_rate=1e-4, dataloader_num_workers=0,
                     # fixed step count: the self-limiting default may stop early, and the gradient phase
                     # is measured as the time of step 2 (steps=2 minus steps=1)
                     unlearn_targets="none", unlearn_stop="fixed")
    clock = Clock()
    trainer = IAUTrainer(model, args=args, train_dataset=ds, data_collator=default_data_collator, callbacks=[clock])
    forget, retain = ds.select(range(n_forget)), ds.select(range(n_forget, n_train))
    tok_per_seq = seq - 1
    train_tps, e2e_tps, grad_tps = [], [], []
    for _ in range(3):
        trainer.train()
        train_tps.append((steps - 1) * bs * tok_per_seq / (clock.t1 - clock.t0))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        walls = {}
        for n_steps in (1, 2):
            trainer.args.unlearn_steps = n_steps
            res = trainer.unlearn(forget, retain)
            walls[n_steps] = res.metrics["wall_time_s"]
            model.load_state_dict(state)
        tokens = (n_forget + sample) * tok_per_seq
        e2e_tps.append(tokens / walls[1])
        grad_tps.append(tokens / max(walls[2] - walls[1], 1e-9))
    tr, e2e, gp = (statistics.median(x) for x in (train_tps, e2e_tps, grad_tps))
    nparams = sum(p.numel() for p in model.parameters())
    md = ["# Unlearning throughput vs training throughput", "",
          f"GPT-2 {layers}L/{hidden}d ({nparams / 1e6:.2f}M parameters), batch {bs} × {seq} tokens, float32, 1 thread; "
          f"request = {n_forget} forget + {sample} retain sequences; medians of 3 interleaved repeats.", "",
          "| | tokens/s | × training | goal |", "|---|---:|---:|---:|",
          f"| Trainer training (no GR) | {tr:,.0f} | 1.00 | – |",
          f"| unlearning, gradient phase | {gp:,.0f} | {fmt(gp / tr)} | ≥ 0.90 |",
          f"| unlearning, end to end (count + step + after-evaluation) | {e2e:,.0f} | {fmt(e2e / tr)} | – |", "",
          "The unlearning step runs forward+backward without an optimizer step per batch (one Adam step per request) "
          "and batches forget and retain separately."]
    write_results("throughput", {"train_tokens_per_s": train_tps, "unlearn_end_to_end_tokens_per_s": e2e_tps,
                                 "unlearn_gradient_phase_tokens_per_s": grad_tps, "ratio_gradient_phase": gp / tr,
                                 "ratio_end_to_end": e2e / tr, "params": nparams}, md, q)


if __name__ == "__main__":
    main()
