"""Which curvature predicts leave-group-out retraining? And what batching the per-example work saves.

Part 1 (accuracy). A tanh MLP (64-32-10) on real sklearn digits, n training rows of which 30 carry a wrong
label, trained to convergence (full-batch L-BFGS, float64, L2 λ). For groups G of 10 training rows — random,
mislabelled, and class clusters (a row and its 9 nearest neighbours of the same label) — the model is
retrained without G (warm start from θ*, L-BFGS to convergence: exact leave-group-out on this objective) and
each removed row's actual loss change ℓ_i(θ_{−G}) − ℓ_i(θ*) is compared with the first-order prediction
g_iᵀ·P·G_G (G_G = Σ_{j∈G} g_j; a common scale does not change a correlation). Curvatures P⁻¹:

* exact Hessian of the training objective (solve; and with |eigenvalues| damped like the others),
* diagonal empirical Fisher Σ_D g² (the library's, per-example gradients) and its training-time estimate
  n·B·mean_t ḡ_t² from mini-batch gradients (``hf_iau.curvature.CurvatureCallback``'s estimator, B = 32),
* K-FAC (A = E[a aᵀ], S = E[δ δᵀ] per layer) and EK-FAC (K-FAC's eigenbasis, eigenvalues refitted to
  E[(Q_Sᵀ g Q_A)²], George et al. 2018 — written here: kronfluence would upgrade torch, see the results),
* identity (the gradient itself);

damped by δ × the mean eigenvalue (diagonal) of each, δ ∈ DAMPINGS (the library uses 0.1).

Part 2 (cost, ratios measured side by side, GPT-2 2L/128d): Σ_i (∇ℓ_i)² from batched hooks vs one backward per
example; one ``estimate_targets`` by sample size |S|, F̂ from rows or saved at training time.

Part 3 (stability): the calibrated scale c and the mean target over sample seeds, by |S|, for poisoned and
random forget rows of a small ResNet on digits.

    python benchmarks/curvature.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, write_results  # noqa: E402

DAMPINGS = (0.01, 0.1, 1.0)
L2 = 1e-3
SIZES = [(64, 32), (32, 10)]


def digits(n: int, n_wrong: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))[:n]
    x, y = torch.tensor(x[idx] / 16.0), torch.tensor(y[idx])
    y[:n_wrong] = (y[:n_wrong] + torch.tensor(rng.integers(1, 10, n_wrong))) % 10
    return x, y


def unflat(theta: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out, k = [], 0
    for i, o in SIZES:
        w, b = theta[k : k + o * i].view(o, i), theta[k + o * i : k + o * i + o]
        out.append((w, b))
        k += o * i + o
    return out


def forward(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (w1, b1), (w2, b2) = unflat(theta)
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


def losses(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(forward(theta, x), y, reduction="none")


def objective(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return (keep * losses(theta, x, y)).sum() / len(y) + 0.5 * L2 * theta.pow(2).sum()


def fit(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor, iters: int) -> torch.Tensor:
    theta = theta.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=iters, tolerance_grad=1e-12, tolerance_change=1e-16,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective(theta, x, y, keep)
        loss.backward()
        return loss

    opt.step(closure)
    return theta.detach()


def example_grads(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[n, p] per-example loss gradients."""
    g = torch.func.vmap(torch.func.grad(lambda t, xi, yi: losses(t, xi[None], yi[None])[0]), (None, 0, 0))
    return g(theta, x, y)


def groups(x: torch.Tensor, y: torch.Tensor, n_random: int, n_cluster: int, seed: int = 0) -> list[tuple[str, list[int]]]:
    rng = np.random.default_rng(seed + 1)
    out = [("mislabelled", list(range(k, k + 10))) for k in (0, 10, 20)]
    out += [("random", sorted(rng.choice(np.arange(30, len(y)), 10, replace=False).tolist())) for _ in range(n_random)]
    for c in rng.choice(np.arange(30, len(y)), n_cluster, replace=False):
        same = torch.nonzero(y == y[c]).flatten()
        same = same[same >= 30]
        near = same[torch.argsort((x[same] - x[c]).pow(2).sum(1))[:10]]
        out.append(("cluster", sorted(near.tolist())))
    return out


def layer_blocks(v: torch.Tensor) -> list[torch.Tensor]:
    """A flat parameter vector (or [n, p] rows) as per-layer [.., out, in + 1] matrices [W | b]."""
    out, k = [], 0
    for i, o in SIZES:
        w = v[..., k : k + o * i].reshape(*v.shape[:-1], o, i)
        b = v[..., k + o * i : k + o * i + o].unsqueeze(-1)
        out.append(torch.cat([w, b], -1))
        k += o * i + o
    return out


def flat_blocks(blocks: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([torch.cat([m[:, :-1].flatten(), m[:, -1]]) for m in blocks])


def kron_solvers(theta: torch.Tensor, x: torch.Tensor, grads: torch.Tensor, delta: float) -> dict[str, callable]:
    """K-FAC and EK-FAC preconditioners v ↦ P·v (eigen-damped by δ × the mean eigenvalue per layer)."""
    (w1, b1), _ = unflat(theta)
    acts = [x, torch.tanh(x @ w1.T + b1)]
    per_layer = layer_blocks(grads)  # [n, out, in + 1]
    bases = []
    for a, g in zip(acts, per_layer):
        a1 = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
        d = g[:, :, -1]  # the bias gradient is the back-propagated output gradient δ
        la, qa = torch.linalg.eigh(a1.T @ a1 / len(a1))
        ls, qs = torch.linalg.eigh(d.T @ d / len(d))
        kfac = ls[:, None].clamp_min(0) * la[None, :].clamp_min(0)
        ekfac = (qs.T @ g @ qa).pow(2).mean(0)
        bases.append((qa, qs, kfac, ekfac))

    def solver(which: int) -> callable:
        def apply(v: torch.Tensor) -> torch.Tensor:
            out = []
            for (qa, qs, *lams), m in zip(bases, layer_blocks(v)):
                lam = lams[which]
                out.append(qs @ ((qs.T @ m @ qa) / (lam + delta * lam.mean())) @ qa.T)
            return flat_blocks(out)
        return apply

    return {"K-FAC": solver(0), "EK-FAC": solver(1)}


def accuracy_part(quick: bool) -> tuple[dict, list[str]]:
    n = 300 if quick else 600
    x, y = digits(n)
    torch.manual_seed(0)
    theta0 = 0.3 * torch.randn(sum(o * i + o for i, o in SIZES), dtype=torch.float64)
    ones = torch.ones(n, dtype=torch.float64)
    theta = fit(theta0, x, y, ones, 3000)
    grads = example_grads(theta, x, y)
    hess = torch.autograd.functional.hessian(lambda t: objective(t, x, y, ones), theta)
    eig, vec = torch.linalg.eigh(hess)
    rng = np.random.default_rng(0)
    perm = torch.tensor(rng.permutation(n))
    batch_means = torch.stack([grads[perm[k : k + 32]].mean(0) for k in range(0, n - 31, 32)])
    diag = {"diagonal Fisher (per-example)": grads.pow(2).sum(0),
            "diagonal Fisher (training-time, B=32)": n * 32 * batch_means.pow(2).mean(0)}
    solvers: dict[tuple[str, float], callable] = {("exact Hessian (solve)", 0.0): lambda v: torch.linalg.solve(hess, v),
                                                  ("identity", 0.0): lambda v: v}
    for delta in DAMPINGS:
        lam = eig.abs()
        solvers[("exact Hessian (|eig| damped)", delta)] = (
            lambda v, lam=lam, d=delta: vec @ ((vec.T @ v) / (lam + d * lam.mean())))
        for name, f in diag.items():
            solvers[(name, delta)] = lambda v, f=f, d=delta: v / (f + d * f.mean())
        for name, fn in kron_solvers(theta, x, grads, delta).items():
            solvers[(name, delta)] = fn
    base = losses(theta, x, y).detach()
    actual, predicted = [], {k: [] for k in solvers}
    kinds = []
    for kind, rows in groups(x, y, 4 if quick else 8, 2 if quick else 4):
        keep = ones.clone()
        keep[rows] = 0
        retrained = fit(theta, x, y, keep, 1000)
        actual += (losses(retrained, x[rows], y[rows]) - base[rows]).tolist()
        kinds += [kind] * len(rows)
        g_group = grads[rows].sum(0)
        for key, solve in solvers.items():
            predicted[key] += (grads[rows] @ solve(g_group) / n).tolist()
    return _table(np.array(actual), {k: np.array(v) for k, v in predicted.items()}, np.array(kinds), n,
                  float(eig.min() / eig.max()))


def _table(actual: np.ndarray, predicted: dict, kinds: np.ndarray, n: int, eig_ratio: float) -> tuple[dict, list[str]]:
    rows, out = [], {}
    subsets = {"all": np.ones(len(actual), bool), **{k: kinds == k for k in ("random", "mislabelled", "cluster")}}
    for (name, delta), p in predicted.items():
        stats = {s: (float(pearsonr(p[m], actual[m])[0]), float(spearmanr(p[m], actual[m])[0])) for s, m in subsets.items()}
        out[f"{name} δ={delta}"] = stats
        cells = " | ".join(f"{a:.3f} / {b:.3f}" for a, b in stats.values())
        rows.append(f"| {name} | {delta if delta else '—'} | {cells} |")
    md = [
        "# Curvature vs leave-group-out retraining (tanh MLP 64-32-10, sklearn digits)",
        "",
        f"n = {n} training rows (30 mislabelled), L2 λ = {L2}; {len(actual)} removed rows in groups of 10 "
        f"({', '.join(f'{k}: {int((kinds == k).sum())}' for k in ('random', 'mislabelled', 'cluster'))}); each group "
        "retrained exactly (warm-started L-BFGS to convergence). Entries: Pearson / Spearman correlation of the "
        "predicted g_iᵀ·P·G_G with the actual loss change of each removed row. Hessian eigenvalue ratio min/max: "
        f"{eig_ratio:.2e} (negative: not convex).",
        "",
        "| curvature | δ | all | random | mislabelled | cluster |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Actual loss change: mean {actual.mean():.3f}, by kind "
        + ", ".join(f"{k} {actual[kinds == k].mean():.3f}" for k in ("random", "mislabelled", "cluster")) + ".",
    ]
    return out, md


def cost_part(quick: bool) -> tuple[dict, list[str]]:
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_iau.curvature import ExampleGradients
    from hf_iau.losses import batch_losses

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=64, n_embd=128, n_layer=2, n_head=2,
                                       bos_token_id=0, eos_token_id=0)).eval()
    b, t = 16, 64
    ids = torch.randint(0, 512, (b, t))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    params = [p for p in model.parameters() if p.requires_grad]

    def batched() -> None:
        with ExampleGradients(model, params) as eg:
            eg.expect(b)
            model.zero_grad()
            batch_losses(model, batch, "causal_lm").per_example.sum().backward()
            eg.collect(1.0, [p.grad for p in params])

    def loop() -> None:
        sq = [torch.zeros_like(p) for p in params]
        for i in range(b):
            model.zero_grad()
            batch_losses(model, {k: v[i : i + 1] for k, v in batch.items()}, "causal_lm").per_example.sum().backward()
            for s, p in zip(sq, params):
                s.add_(p.grad.pow(2))

    times = interleaved({"hooks": batched, "loop": loop}, repeats=3 if quick else 7)
    md = [
        "", "## Cost of the per-example work (GPT-2 2L/128d, 16 rows × 64 tokens, CPU, ratios of medians side by side)",
        "",
        "| work | batched | loop | loop / batched |", "|---|---|---|---|",
        f"| Σ_i (∇ℓ_i)²: hooks in one backward vs one backward per row | 1 | {times['loop'] / times['hooks']:.2f} | "
        f"{times['loop'] / times['hooks']:.2f}× |",
    ]
    return {"loop_over_hooks": times["loop"] / times["hooks"]}, md


def estimate_cost_part(quick: bool) -> tuple[dict, list[str]]:
    """Wall time of estimate_targets by sample size |S|, with the curvature from rows or saved, in units of one
    batched gradient pass over the forget set (interleaved, medians)."""
    import tempfile

    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_iau import IAUConfig, IAUTrainer
    from hf_iau.counterfactual import estimate_targets, fisher_from_rows, group_gradient
    from hf_iau.curvature import Curvature
    from hf_iau.engine import Engine

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=512, n_positions=64, n_embd=128, n_layer=2, n_head=2,
                                       bos_token_id=0, eos_token_id=0)).eval()
    rng = np.random.default_rng(0)

    def rows(n: int) -> Dataset:
        ids = rng.integers(1, 512, (n, 64)).tolist()
        return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * 64] * n, "labels": ids})

    forget, retain, held = rows(64), rows(1000), rows(64)
    args = IAUConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, report_to=[], disable_tqdm=True,
                     save_strategy="no", per_device_eval_batch_size=16)
    engine = Engine(IAUTrainer(model, args=args))
    held_losses = engine.per_example(held, range(64))["loss"]
    sizes = (32, 64, 256) if quick else (32, 64, 128, 256)
    samples = {n: sorted(rng.choice(1000, n, replace=False).tolist()) for n in sizes}
    fisher = fisher_from_rows(engine, forget, list(range(64)), retain, samples[sizes[-1]]).fisher
    saved = Curvature(dict(zip([n for n, p in model.named_parameters() if p.requires_grad], fisher)), "-")
    fns = {"G_F": lambda: group_gradient(engine, forget, range(64))}
    for n in sizes:
        fns[f"rows {n}"] = lambda n=n: estimate_targets(engine, forget, retain, samples[n], held_losses)
        fns[f"saved {n}"] = lambda n=n: estimate_targets(engine, forget, retain, samples[n], held_losses, saved)
    times = interleaved(fns, repeats=2 if quick else 3, warmup=0)
    unit = times.pop("G_F")
    md = ["", "## Cost of one estimate (GPT-2 2L/128d, |F| = 64 rows × 64 tokens, batch 16, CPU)", "",
          "Median wall time in units of one batched gradient pass over the forget set (interleaved runs).", "",
          "| sample rows | F̂ from rows | F̂ saved at training |", "|---|---|---|",
          *[f"| {n} | {times[f'rows {n}'] / unit:.1f} | {times[f'saved {n}'] / unit:.1f} |" for n in sizes]]
    return {k: v / unit for k, v in times.items()}, md


def stability_part(quick: bool) -> tuple[dict, list[str]]:
    """Scale c and mean target over sample seeds, by sample size: a small ResNet on sklearn digits with 15 trigger
    rows relabelled 0 (poisoned) or 15 random rows as the forget set."""
    import tempfile

    from datasets import Dataset
    from sklearn.datasets import load_digits
    from transformers import ResNetConfig, ResNetForImageClassification, Trainer, TrainingArguments, default_data_collator

    from hf_iau import IAUConfig, IAUTrainer
    from hf_iau.counterfactual import estimate_targets
    from hf_iau.engine import Engine

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 1, 8, 8).astype("float32")
    xt, yt = x[:400].copy(), y[:400].copy()
    poison = [i for i in range(400) if yt[i] != 0][:15]
    xt[poison, 0, 6:8, 6:8], yt[poison] = 1.0, 0

    def ds(a: np.ndarray, b: np.ndarray) -> Dataset:
        return Dataset.from_dict({"pixel_values": a.tolist(), "labels": [int(v) for v in b]})

    out = tempfile.mkdtemp()

    def trained(rows: list[int]) -> torch.nn.Module:
        torch.manual_seed(0)
        model = ResNetForImageClassification(ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[16, 32],
                                                          depths=[1, 1], layer_type="basic", num_labels=10,
                                                          downsample_in_first_stage=False))
        args = TrainingArguments(output_dir=out, use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
                                 num_train_epochs=20, learning_rate=5e-3, per_device_train_batch_size=32, seed=0,
                                 dataloader_drop_last=True)
        Trainer(model, args=args, train_dataset=ds(xt[rows], yt[rows]), data_collator=default_data_collator).train()
        return model.eval()

    model = trained(list(range(400)))
    engine = Engine(IAUTrainer(model, args=IAUConfig(output_dir=out, use_cpu=True, report_to=[], disable_tqdm=True,
                                                     save_strategy="no", per_device_eval_batch_size=64),
                               data_collator=default_data_collator))
    engine.model.eval()
    held = engine.per_example(ds(x[1500:1700], y[1500:1700]), range(200))["loss"]
    train = ds(xt, yt)
    rows_md, res = [], {}
    for kind, forget_rows in (("poisoned", poison), ("random", [i for i in range(15, 400) if i not in poison][:15])):
        retain_rows = [i for i in range(400) if i not in forget_rows]
        forget, retain = train.select(forget_rows), train.select(retain_rows)
        retrained = trained(retain_rows)  # the truth: the same recipe without the forget rows
        with torch.no_grad():
            logits = retrained(pixel_values=torch.tensor(xt[forget_rows])).logits
            truth = float(F.cross_entropy(logits, torch.tensor(yt[forget_rows])).mean())
        for n in (32, 64, 256):
            runs = [estimate_targets(engine, forget, retain, sorted(np.random.default_rng(seed).choice(
                len(retain_rows), n, replace=False).tolist()), held) for seed in range(2 if quick else 4)]
            c = np.array([r.diagnostics["scale"] for r in runs])
            t = np.array([r.targets.mean() for r in runs])
            above = np.array([r.diagnostics["above_sample_fraction"] for r in runs])
            res[f"{kind} {n}"] = {"scale": c.tolist(), "target_mean": t.tolist(), "above": above.tolist(),
                                  "retrained": truth}
            rows_md.append(f"| {kind} | {n} | {c.mean():.2e} ± {c.std():.1e} | {t.mean():.2f} ± {t.std():.2f} | "
                           f"{truth:.2f} | {above.mean():.2f} |")
    md = ["", f"## Stability over sample seeds (small ResNet, sklearn digits, 15 forget rows; held-out mean loss "
          f"{held.mean():.2f}, max {held.max():.2f})", "",
          "Mean ± std over sample seeds; 'retrained' = the forget rows' mean loss under the same recipe retrained "
          "without them (one run); 'above' = share of forget rows estimated above every removed sample row "
          "(their targets are extrapolated, not capped).", "",
          "| forget set | sample rows | scale c | mean target | retrained | above |", "|---|---|---|---|---|---|",
          *rows_md]
    return res, md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    acc, md = accuracy_part(args.quick)
    cost, md_cost = cost_part(args.quick)
    est, md_est = estimate_cost_part(args.quick)
    stable, md_stable = stability_part(args.quick)
    notes = [
        "", "kronfluence (EK-FAC) was not installed: `pip install --dry-run kronfluence` in the project venv would "
        "replace torch 2.13.0+cpu with torch 2.14.1 and ~2.5 GB of CUDA wheels; EK-FAC is written here instead "
        "(`kron_solvers`, ~20 lines).",
    ]
    write_results("curvature", {"correlation": acc, "cost": cost, "estimate_cost": est, "stability": stable},
                  md + md_cost + md_est + md_stable + notes, args.quick)


if __name__ == "__main__":
    main()
