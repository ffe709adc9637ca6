"""GR precision: relative error of the finite-difference H·u against the float32 exact H·u (double
backward), in float32 and under bf16 autocast, on tiny models built from configs (CPU).

    python benchmarks/gr_precision.py

u = ∇ℓ/‖∇ℓ‖ (global norm), H·u exact = ∇(∇ℓ·u) in float32, eval mode (no dropout), eager attention.
1. Radius sweep (forward (g(θ+ru) − g(θ))/r and central (g(θ+ru) − g(θ−ru))/2r) on every model.
2. The low-precision rule r = ρ·L, L = ‖g‖/‖H·u‖ (exact L here), for several ρ.
   ρ is TUNED on "llama s0" only; the other rows are HELD OUT (other seed and batch, GPT-2 without
   dropout, a wider 4-layer Llama).
3. What the library does: one IAUTrainer GR step with bf16=True (central difference, radius calibrated
   from the measured L, hf_iau.restriction.LOW_PRECISION_RHO), and the same step in float32
   (forward difference, gr_fd_radius=1e-3); the penalty gradient read back through gr_reuse_penalty.
4. Cost: one optimizer step (IAUTrainer.training_step + AdamW) on GPT-2 2L-128d (8×128 tokens, 1 thread),
   plain vs FD GR in float32 and under bf16 autocast, interleaved, median of 9, after 2 warm-up steps (the
   bf16 radius calibration happens in the warm-up); ratios within the same run.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from common import interleaved, write_results  # noqa: E402
from tiny import lm_dataset, tiny_gpt2, tiny_llama  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, default_data_collator  # noqa: E402

from hf_iau import IAUConfig, IAUTrainer  # noqa: E402
from hf_iau.restriction import LOW_PRECISION_RHO  # noqa: E402

RADII = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
RHOS = (0.02, 0.04, 0.08, 0.16, 0.32)


def wide_llama(seed: int = 3) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        attn_implementation="eager",
    ))


MODELS = {  # name -> (factory, batch seed, role)
    "llama s0": (lambda: tiny_llama(0, "eager"), 0, "tune"),
    "llama s1": (lambda: tiny_llama(1, "eager"), 1, "held out"),
    "gpt2 s2 (no dropout)": (lambda: tiny_gpt2(2, "eager", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0), 1, "held out"),
    "llama 4L-64d s3": (wide_llama, 2, "held out"),
}


def batch(seed: int) -> dict:
    ds = lm_dataset(4, seed=seed)
    b = default_data_collator([ds[i] for i in range(4)])
    b.pop("id")
    return b


def flat(xs) -> torch.Tensor:
    return torch.cat([x.flatten().float() for x in xs])


def exact_hu(model, b) -> tuple[torch.Tensor, float]:
    ps = [p for p in model.parameters() if p.requires_grad]
    g = torch.autograd.grad(model(**b).loss, ps, create_graph=True)
    n = flat(g).norm().detach()
    hu = torch.autograd.grad(sum((x * (x.detach() / n)).sum() for x in g), ps)
    return flat(hu), float(n)


def fd_hu(model, b, r: float, central: bool, bf16: bool) -> torch.Tensor:
    ps = [p for p in model.parameters() if p.requires_grad]

    def grad():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**b).loss
        return torch.autograd.grad(loss, ps)

    def move(u, c):
        with torch.no_grad():
            for p, v in zip(ps, u):
                p.add_(v, alpha=c)

    g = grad()
    u = [x / flat(g).norm() for x in g]
    move(u, r)
    gp = grad()
    if not central:
        move(u, -r)
        return (flat(gp) - flat(g)) / r
    move(u, -2 * r)
    gm = grad()
    move(u, r)
    return (flat(gp) - flat(gm)) / (2 * r)


def library_hu(make, b, bf16: bool) -> tuple[torch.Tensor, list[float]]:
    alpha = 1.0
    args = IAUConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, report_to=[], bf16=bf16, gr_alpha=alpha,
                     gr_every_n_steps=2, gr_reuse_penalty=True)
    trainer = IAUTrainer(make(), args=args)
    trainer.accelerator.prepare_model(trainer.model)  # autocast around forward when bf16, as in train()
    trainer.current_gradient_accumulation_steps = 1
    trainer.training_step(trainer.model, dict(b))
    gr = trainer.gradient_restriction
    return flat(gr.penalty_grads) / alpha, gr.radii


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def step_cost(repeats: int = 9) -> dict[str, float]:
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab, batch_size, seq = 4096, 8, 128
    ids = torch.randint(1, vocab, (batch_size, seq), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def step(bf16: bool, alpha: float):
        torch.manual_seed(0)
        cfg = GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=128, n_layer=2, n_head=2, bos_token_id=0,
                         eos_token_id=0, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        args = IAUConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, report_to=[], bf16=bf16, gr_alpha=alpha)
        trainer = IAUTrainer(GPT2LMHeadModel(cfg), args=args)
        trainer.accelerator.prepare_model(trainer.model)
        trainer.current_gradient_accumulation_steps = 1
        opt = torch.optim.AdamW(trainer.model.parameters(), lr=1e-4)

        def run():
            trainer.training_step(trainer.model, dict(inputs))
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    fns = {"plain fp32": step(False, 0.0), "FD GR fp32": step(False, 0.005),
           "plain bf16": step(True, 0.0), "FD GR bf16": step(True, 0.005)}
    return interleaved(fns, repeats=repeats, warmup=2)


def main() -> None:
    torch.set_num_threads(1)
    results: dict = {"models": {}}
    md = [
        "# GR precision: finite-difference H·u vs float32 exact (relative error ‖Ĥu − Hu‖/‖Hu‖)",
        "",
        f"ρ tuned on `llama s0` only; other models held out. Library rule: ρ = {LOW_PRECISION_RHO}.",
        "",
    ]
    sweep_rows, rho_rows, lib_rows = [], [], []
    for name, (make, bseed, role) in MODELS.items():
        b = batch(bseed)
        model = make().eval()
        ex, gnorm = exact_hu(model, b)
        length = gnorm / float(ex.norm())
        entry = {"role": role, "grad_norm": gnorm, "hu_norm": float(ex.norm()), "length": length, "sweep": {}, "rho": {}}
        for r in RADII:
            entry["sweep"][r] = {
                f"{'bf16' if bf else 'fp32'} {'central' if c else 'forward'}": rel(fd_hu(model, b, r, c, bf), ex)
                for bf in (False, True) for c in (False, True)
            }
            e = entry["sweep"][r]
            sweep_rows.append(f"| {name} | {r:g} | {e['fp32 forward']:.4f} | {e['fp32 central']:.4f} | "
                              f"{e['bf16 forward']:.4f} | {e['bf16 central']:.4f} |")
        for rho in RHOS:
            entry["rho"][rho] = rel(fd_hu(model, b, rho * length, True, True), ex)
        rho_rows.append(f"| {name} ({role}) | {length:.3f} | " + " | ".join(f"{entry['rho'][r]:.4f}" for r in RHOS) + " |")
        hu16, radii16 = library_hu(make, b, bf16=True)
        hu32, _ = library_hu(make, b, bf16=False)
        entry["library"] = {"bf16": rel(hu16, ex), "bf16 radii": radii16, "fp32": rel(hu32, ex)}
        lib_rows.append(f"| {name} ({role}) | {entry['library']['fp32']:.4f} | {entry['library']['bf16']:.4f} | "
                        + ", ".join(f"{r:.3g}" for r in radii16) + " |")
        results["models"][name] = entry
        print(name, "done", flush=True)
    md += ["## What the library computes (one IAUTrainer GR step)", "",
           "| model | fp32 (forward, r=1e-3) | bf16 autocast (central, calibrated r) | bf16 radii tried |",
           "|---|---|---|---|", *lib_rows, "",
           "## Rule r = ρ·‖g‖/‖H·u‖ under bf16 autocast (central difference)", "",
           "| model | L = ‖g‖/‖Hu‖ | " + " | ".join(f"ρ={r}" for r in RHOS) + " |",
           "|---|---|" + "---|" * len(RHOS), *rho_rows, "",
           "## Radius sweep (fixed absolute r)", "",
           "| model | r | fp32 forward | fp32 central | bf16 forward | bf16 central |",
           "|---|---|---|---|---|---|", *sweep_rows]
    t = step_cost()
    results["step_seconds"] = t
    md += ["", "## Cost of a GR step (GPT-2 2L-128d, 1024 tokens, CPU, 1 thread; interleaved, median of 9)", "",
           "| config | time × plain of the same precision |", "|---|---:|",
           f"| FD GR fp32 (forward difference, 2 passes) | {t['FD GR fp32'] / t['plain fp32']:.2f} |",
           f"| FD GR bf16 (central difference, 3 passes) | {t['FD GR bf16'] / t['plain bf16']:.2f} |",
           f"| (plain bf16 / plain fp32) | {t['plain bf16'] / t['plain fp32']:.2f} |"]
    write_results("gr_precision", results, md, quick=False)


if __name__ == "__main__":
    main()
