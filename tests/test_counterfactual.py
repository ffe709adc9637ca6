"""Counterfactual targets (hf_iau/counterfactual.py) against exact leave-set-out retraining, and its pieces."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from tiny import tiny_gpt2  # noqa: E402

from hf_iau.counterfactual import (  # noqa: E402
    at_scale,
    calibrate,
    calibrated_targets,
    cross_entropy,
    scaled_cross_entropy,
    shifted_losses,
)
from hf_iau.losses import batch_losses  # noqa: E402

LAM = 1e-2


def data(n: int = 200, d: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64)[:d]
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(x @ w)).long()
    return x, y


def objective(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(1/n)·Σ keep_i·CE_i + (λ/2)‖θ‖² for a 2-class softmax regression; θ = [W (2×d), b (2)] flattened."""
    d = x.shape[1]
    logits = x @ theta[: 2 * d].view(2, d).T + theta[2 * d :]
    return (keep * F.cross_entropy(logits, y, reduction="none")).sum() / len(y) + 0.5 * LAM * theta.pow(2).sum()


def fit(x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The exact minimiser (Newton's method to machine precision)."""
    theta = torch.zeros(2 * x.shape[1] + 2, dtype=torch.float64)
    for _ in range(50):
        g = torch.autograd.functional.jacobian(lambda t: objective(t, x, y, keep), theta)
        h = torch.autograd.functional.hessian(lambda t: objective(t, x, y, keep), theta)
        theta = theta - torch.linalg.solve(h, g)
        if g.norm() < 1e-13:
            break
    return theta


def as_module(theta: torch.Tensor, d: int) -> torch.nn.Linear:
    m = torch.nn.Linear(d, 2).double()
    with torch.no_grad():
        m.weight.copy_(theta[: 2 * d].view(2, d))
        m.bias.copy_(theta[2 * d :])
    return m


def batches_of(x: torch.Tensor, y: torch.Tensor, idx: list[int], size: int) -> list[dict]:
    return [{"x": x[idx[i : i + size]], "y": y[idx[i : i + size]]} for i in range(0, len(idx), size)]


def group_gradient(params: list, batches: list[dict], per_example) -> tuple[list[torch.Tensor], list[float]]:
    """Σ_i ∇ℓ_i and the losses ℓ_i (the exact reference)."""
    loss = torch.cat([per_example(b) for b in batches])
    return list(torch.autograd.grad(loss.sum(), params)), loss.detach().tolist()


def test_influence_estimate_matches_exact_leave_set_out_retraining():
    """With the exact curvature, CE(z + J·(1/n)H⁻¹G_F) is the retrained model's loss to first order."""
    x, y = data()
    n, d = len(y), 3
    ones = torch.ones(n, dtype=torch.float64)
    theta = fit(x, y, ones)
    forget = [0, 1, 2, 3, 4, 5]
    keep = ones.clone()
    keep[forget] = 0
    theta_r = fit(x, y, keep)  # brute force: retrained without the forget set
    model = as_module(theta, d)
    params = list(model.parameters())
    per_example = lambda b: F.cross_entropy(model(b["x"]), b["y"], reduction="none")  # noqa: E731
    g_f, losses = group_gradient(params, batches_of(x, y, forget, 4), per_example)
    h = torch.autograd.functional.hessian(lambda t: objective(t, x, y, ones), theta)
    step = torch.linalg.solve(h, torch.cat([g.double().flatten() for g in g_f])) / n  # (1/n) H⁻¹ G_F
    direction = [step[: 2 * d].view(2, d), step[2 * d :]]
    est = shifted_losses(params, direction, batches_of(x, y, forget, 4), lambda b: (model(b["x"]), b["y"]), [0.0, 1.0], False)
    true = F.cross_entropy(as_module(theta_r, d)(x[forget]), y[forget], reduction="none").detach().numpy()
    assert np.allclose(est[:, 0], losses, atol=1e-9)  # scale 0 = the current loss
    change = true - est[:, 0]
    assert np.abs(change).max() > 0.02  # removal moves these losses measurably
    assert np.all(np.abs(est[:, 1] - true) <= 0.1 * np.abs(change) + 2e-4)
    assert np.allclose(model.weight.detach().numpy(), theta[: 2 * d].view(2, d).numpy())  # θ restored exactly


def test_damped_identity_estimate_orders_groups_like_retraining():
    """Default curvature (c·I): a coherent group (shared outlier feature, one label) is estimated to lose more
    than a random group, as exact retraining says."""
    x, y = data(n=200, d=3, seed=1)
    x = torch.cat([x, torch.zeros(len(y), 1, dtype=torch.float64)], 1)
    group = list(range(8))
    x[group, 3] = 3.0  # a 'trigger' feature only this group has
    y[group] = 1
    n, d = len(y), 4
    ones = torch.ones(n, dtype=torch.float64)
    model = as_module(fit(x, y, ones), d)
    params = list(model.parameters())
    per_example = lambda b: F.cross_entropy(model(b["x"]), b["y"], reduction="none")  # noqa: E731
    logits_of = lambda b: (model(b["x"]), b["y"])  # noqa: E731
    rand = list(range(100, 108))
    shifts, truths = {}, {}
    for name, idx in (("group", group), ("random", rand)):
        g, _ = group_gradient(params, batches_of(x, y, idx, 8), per_example)
        curve = shifted_losses(params, g, batches_of(x, y, idx, 8), logits_of, [0.0, 0.5], False)
        shifts[name] = float((curve[:, 1] - curve[:, 0]).mean())
        keep = ones.clone()
        keep[idx] = 0
        retrained = as_module(fit(x, y, keep), d)
        with torch.no_grad():
            truths[name] = float((F.cross_entropy(retrained(x[idx]), y[idx], reduction="none")
                                  - F.cross_entropy(model(x[idx]), y[idx], reduction="none")).mean())
    assert truths["group"] > truths["random"] and shifts["group"] > shifts["random"] > 0


def test_cross_entropy_matches_batch_losses_on_a_causal_lm():
    model = tiny_gpt2(0).eval()
    ids = torch.randint(1, 60, (3, 10), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :4] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        ref = batch_losses(model, batch, "causal_lm").per_example
        mine = cross_entropy(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, labels, True)
    assert torch.allclose(ref.double(), mine, atol=1e-5)


def test_calibration_interpolates_on_the_grid():
    scales = [0.0, 1.0, 2.0, 4.0]
    curves = np.array([[0.1, 0.2, 0.5, 1.0], [0.1, 0.2, 0.5, 1.0]])
    c = calibrate(curves, scales, 0.35)
    assert c == pytest.approx(math.sqrt(2.0))  # halfway between 1 and 2 in log scale
    assert at_scale(curves, scales, c).mean() == pytest.approx(0.35)
    assert calibrate(curves, scales, 0.05) == 0.0  # the sample is already at the held-out level
    assert calibrate(curves, scales, 5.0) == 4.0  # never reached: the largest scale
    assert calibrate(curves, scales, 0.15) == pytest.approx(0.5)  # between 0 and the first point: linear
    assert np.allclose(at_scale(curves, scales, 0.5), 0.15)


def test_calibrated_targets_map_the_sample_onto_held_out_losses_without_a_cap():
    sample = np.array([0.5, 1.0, 2.0, 3.0])
    held_out = np.array([1.0, 2.0, 3.0, 4.0])
    q = np.quantile(held_out, (np.arange(4) + 0.5) / 4)
    t, info = calibrated_targets(np.zeros(4), sample, sample, held_out)
    assert np.allclose(t, q)  # the sample itself lands on the held-out quantiles
    t, info = calibrated_targets([0.1, 0.1, 0.1, 0.95, 0.2], [1.5, 5.0, 0.0, 0.0, float("nan")], sample, held_out)
    assert t[0] == pytest.approx((q[1] + q[2]) / 2)  # between two sample estimates: interpolated, not a step
    assert t[1] == pytest.approx(q[3] + 2.0)  # above every sample estimate: slope 1 beyond, no ceiling
    assert t[2] == pytest.approx(q[0] - 0.5) and t[2] < held_out.min()  # the retained data still supports it
    assert t[3] == pytest.approx(0.95)  # never below the current loss
    assert t[4] == pytest.approx(0.2)  # no estimate: the current loss
    assert info["above_sample_fraction"] == pytest.approx(1 / 5) and info["below_sample_fraction"] == pytest.approx(2 / 5)


def _engine(tmp_path, model, **kw):
    from transformers import default_data_collator

    from hf_iau import IAUTrainer
    from hf_iau.engine import Engine
    from tiny import parity_args

    trainer = IAUTrainer(model=model, args=parity_args(tmp_path, **kw), data_collator=default_data_collator)
    engine = Engine(trainer)
    engine.model.eval()
    return engine


def test_estimate_targets_runs_in_batches_through_accelerator_backward(tmp_path, monkeypatch):
    """One backward per batch (never per example), none outside accelerator.backward; targets ≥ current losses."""
    from hf_iau.counterfactual import estimate_targets
    from tiny import lm_dataset

    ds = lm_dataset(40).remove_columns("id")
    engine = _engine(tmp_path, tiny_gpt2(0), per_device_eval_batch_size=4)
    calls = []
    original = engine.accelerator.backward
    monkeypatch.setattr(engine.accelerator, "backward", lambda loss, **kw: (calls.append(1), original(loss, **kw)))
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: (_ for _ in ()).throw(AssertionError("autograd.grad")))
    forget, retain = ds.select(range(6)), ds.select(range(6, 40))
    est = estimate_targets(engine, forget, retain, sample_rows=list(range(0, 34, 2)), held_out_losses=[4.0, 4.2, 4.5])
    # F̂ pass: S group by group (|F| = 6 rows: 6, 6, 5), each group's G kept from it, then F (6 rows); batches of 4
    assert len(calls) == (2 + 2 + 2) + 2
    assert est.gradient_passes == 17 + 6 and est.forward_passes == 3 * (17 + 6)
    assert est.targets.shape == (6,) and np.isfinite(est.targets).all()
    current = engine.per_example(forget, range(6))["loss"]
    assert np.all(est.targets >= current - 1e-5)  # (float32 forward passes)
    assert est.diagnostics["scale"] > 0 and est.diagnostics["identity_curvature_fraction"] == 0.0
    assert est.diagnostics["group_size"] == 6


def test_a_saved_curvature_replaces_the_per_example_pass(tmp_path):
    """Given the same F̂ as a saved Curvature, the targets are the same, for the same |F| + |S| gradient passes (plain
    instead of hooked: the measured path keeps each group's G from its F̂ pass); without the groups' gradients kept
    (over the memory limit) the measured path costs |S| more and gives the same targets."""
    from hf_iau.counterfactual import estimate_targets, fisher_from_rows
    from hf_iau.curvature import Curvature, weights_sha256
    from tiny import text_cls_dataset, tiny_bert

    ds = text_cls_dataset(30).remove_columns("id")
    engine = _engine(tmp_path, tiny_bert(0), per_device_eval_batch_size=8)
    forget, retain, sample = ds.select(range(5)), ds.select(range(5, 30)), list(range(0, 25, 3))
    held = [1.3, 1.1, 1.6, 0.9]
    fresh = estimate_targets(engine, forget, retain, sample, held)
    fisher = fisher_from_rows(engine, forget, list(range(5)), retain, sample).fisher
    names = [n for n, p in engine.model.named_parameters() if p.requires_grad]
    saved = Curvature(dict(zip(names, fisher)), weights_sha256(engine.model))
    reused = estimate_targets(engine, forget, retain, sample, held, curvature=saved)
    assert np.allclose(reused.targets, fresh.targets, rtol=1e-6, atol=1e-9)
    assert reused.gradient_passes == len(sample) + 5 == fresh.gradient_passes
    assert reused.diagnostics["saved_curvature"] == 1.0
    import hf_iau.counterfactual as cf

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cf, "KEPT_GRADIENT_BYTES", 0)
        twice = estimate_targets(engine, forget, retain, sample, held)
    assert twice.gradient_passes == 2 * len(sample) + 5
    assert np.allclose(twice.targets, fresh.targets, rtol=1e-6, atol=1e-9)
    assert twice.diagnostics["scale"] == pytest.approx(fresh.diagnostics["scale"], rel=1e-6)
    assert fresh.diagnostics["group_size"] == 5  # S removed in groups the size of F (not of a batch, 8)


def test_leverage_preconditions_each_removed_set_by_the_curvature_of_the_rest(tmp_path):
    """unlearn_leverage: the forget direction is G_F / (F̂ − Σ_F g² + d), d from the full F̂; each calibration group
    likewise with its own squares (one-example loop as the reference); same passes as without it. With K-FAC, the
    factors less the set's own."""
    from hf_iau.counterfactual import SetCurvature, estimate_targets, fisher_from_rows, leave_out
    from hf_iau.curvature import damping_level
    from tiny import text_cls_dataset, tiny_bert

    f, o = [torch.tensor([4.0, 1.0]), torch.tensor([2.0])], [torch.tensor([3.0, 2.0]), None]
    out = leave_out(f, SetCurvature(o), f, 0.5)  # hand computation: (4 − 3 + 0.5)⁻¹, (max(1 − 2, 0) + 0.5)⁻¹, untouched (2 + 0.5)⁻¹
    assert torch.allclose(out[0], torch.tensor([1 / 1.5, 1 / 0.5])) and torch.allclose(out[1], torch.tensor([1 / 2.5]))

    ds = text_cls_dataset(30).remove_columns("id")
    engine = _engine(tmp_path, tiny_bert(0), per_device_eval_batch_size=8)
    forget, retain, sample = ds.select(range(5)), ds.select(range(5, 30)), list(range(0, 25, 3))
    held = [1.3, 1.1, 1.6, 0.9]
    plain = estimate_targets(engine, forget, retain, sample, held)
    lev = estimate_targets(engine, forget, retain, sample, held, leverage=True)
    rows = fisher_from_rows(engine, forget, list(range(5)), retain, sample)
    fisher, g_f = rows.fisher, rows.g_f
    own = [torch.zeros_like(p) for p in engine.params]
    for i in range(5):  # Σ_F g² by the one-example loop
        engine.model.zero_grad()
        row = forget[i]
        engine.model(input_ids=torch.tensor([row["input_ids"]]), attention_mask=torch.tensor([row["attention_mask"]]),
                     labels=torch.tensor([row["label"]])).loss.backward()
        for t, p in zip(own, engine.params):
            t += p.grad.pow(2)
    engine.model.zero_grad()
    d = damping_level(fisher)
    for got, g, fi, o in zip(lev.direction, g_f, fisher, own):
        torch.testing.assert_close(got, g / ((fi - o).clamp_min(0) + d), rtol=1e-4, atol=1e-6 * float(got.abs().max()) + 1e-12)
    assert lev.diagnostics["leverage"] == 1.0 and plain.diagnostics["leverage"] == 0.0
    # the leave-out takes each group's own squares in a hooked pass of its own: |S| more than the plain estimate
    assert lev.gradient_passes == plain.gradient_passes + len(sample) and lev.diagnostics["scale"] != plain.diagnostics["scale"]
    # the forget rows lose their own curvature, so they are estimated to move further
    assert sum(float((a.abs() - b.abs()).clamp_min(0).sum()) for a, b in zip(lev.direction, plain.direction)) > 0

    # K-FAC: the factors less the set's own (hand computation), then the same solvers
    from hf_iau.kfac import KroneckerFactors, without

    full, own_k = KroneckerFactors(), KroneckerFactors()
    full.kinds[0], full.a[0], full.s[0] = "linear", torch.eye(2) * 2, torch.eye(3)
    own_k.a[0], own_k.s[0] = torch.diag(torch.tensor([1.0, 0.0])), torch.eye(3) * 0.5
    rest = without(full, own_k)
    assert torch.equal(rest.a[0], torch.diag(torch.tensor([1.0, 2.0]))) and torch.equal(rest.s[0], torch.eye(3) * 0.5)
    kfac = estimate_targets(engine, forget, retain, sample, held, kind="kfac")
    kfac_lev = estimate_targets(engine, forget, retain, sample, held, kind="kfac", leverage=True)
    assert kfac_lev.diagnostics["leverage"] == 1.0 and kfac_lev.gradient_passes == kfac.gradient_passes + len(sample)
    assert kfac_lev.diagnostics["scale"] != kfac.diagnostics["scale"] and np.isfinite(kfac_lev.targets).all()


def test_kfac_influence_step_keeps_the_targets_and_takes_the_kfac_direction_and_scale(tmp_path):
    """step_kind='kfac': targets, their scale and the gradient passes are the diagonal estimate's; the returned
    direction and step_scale are those K-FAC gives on the same rows and groups (kind='kfac'), at 2|S| more forward
    passes. Not with leverage."""
    from hf_iau.counterfactual import estimate_targets
    from tiny import text_cls_dataset, tiny_bert

    ds = text_cls_dataset(30).remove_columns("id")
    engine = _engine(tmp_path, tiny_bert(0), per_device_eval_batch_size=8)
    forget, retain, sample = ds.select(range(5)), ds.select(range(5, 30)), list(range(0, 25, 3))
    held = [1.3, 1.1, 1.6, 0.9]
    plain = estimate_targets(engine, forget, retain, sample, held)
    kfac = estimate_targets(engine, forget, retain, sample, held, kind="kfac")
    step = estimate_targets(engine, forget, retain, sample, held, step_kind="kfac")
    np.testing.assert_allclose(step.targets, plain.targets, rtol=1e-9, atol=1e-12)
    assert step.diagnostics["scale"] == pytest.approx(plain.diagnostics["scale"], rel=1e-9)
    assert step.diagnostics["step_scale"] == pytest.approx(kfac.diagnostics["scale"], rel=1e-6)
    assert step.diagnostics["step_scale"] != step.diagnostics["scale"] and plain.diagnostics["step_scale"] == plain.diagnostics["scale"]
    for got, want, diag in zip(step.direction, kfac.direction, plain.direction):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7 * float(want.abs().max()) + 1e-12)
    assert any(not torch.allclose(a, b) for a, b in zip(step.direction, plain.direction))
    assert step.gradient_passes == plain.gradient_passes == kfac.gradient_passes
    assert step.forward_passes == plain.forward_passes + 2 * len(sample)
    assert (step.diagnostics["step_kfac"], plain.diagnostics["step_kfac"], kfac.diagnostics["step_kfac"]) == (1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="leverage"):
        estimate_targets(engine, forget, retain, sample, held, step_kind="kfac", leverage=True)


def test_retained_rows_already_at_the_held_out_level_skip_the_forget_gradients_and_the_grid(tmp_path, monkeypatch):
    """When S's mean loss already reaches the held-out level (calibrated scale 0), the targets come from the current
    losses alone: equal to the full path's, for |S| gradient passes (S, which found it) and |S| + |F| forward passes,
    with no direction (no influence step) and no curvature kept."""
    import hf_iau.counterfactual as cf
    from tiny import text_cls_dataset, tiny_bert

    ds = text_cls_dataset(30).remove_columns("id")
    engine = _engine(tmp_path, tiny_bert(0), per_device_eval_batch_size=8)
    forget, retain, sample = ds.select(range(5)), ds.select(range(5, 30)), list(range(0, 25, 3))
    held = [0.02, 0.05, 0.01]  # below any loss of an untrained 3-class model
    short = cf.estimate_targets(engine, forget, retain, sample, held)
    monkeypatch.setattr(cf, "_at_current_losses", lambda *a, **k: None)
    full = cf.estimate_targets(engine, forget, retain, sample, held)
    assert full.diagnostics["scale"] == 0.0 and full.diagnostics["at_level"] == 0.0
    assert short.diagnostics["at_level"] == 1.0 and short.diagnostics["scale"] == short.diagnostics["step_scale"] == 0.0
    np.testing.assert_allclose(short.targets, full.targets, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(short.losses, full.losses, rtol=1e-6)
    assert np.array_equal(short.predicted, full.predicted) and np.array_equal(short.labels, full.labels)
    assert short.gradient_passes == len(sample) < full.gradient_passes == len(sample) + 5
    assert short.forward_passes == len(sample) + 5
    assert short.direction is None and short.curvature is None and full.curvature is not None


def test_bad_inputs_are_refused_naming_the_field(tmp_path):
    from hf_iau.counterfactual import estimate_targets
    from tiny import text_cls_dataset, tiny_bert

    ds = text_cls_dataset(10).remove_columns("id")
    engine = _engine(tmp_path, tiny_bert(0))
    with pytest.raises(ValueError, match="sample_rows"):
        estimate_targets(engine, ds.select(range(3)), ds.select(range(3, 10)), [0, 7], [1.0])
    with pytest.raises(ValueError, match="held_out_losses"):
        estimate_targets(engine, ds.select(range(3)), ds.select(range(3, 10)), [0, 1], [])
    for bad in ([[0], [2]], [[1], [0]], [[0, 1], []]):  # not a split of sample_rows in order
        with pytest.raises(ValueError, match="groups must split sample_rows"):
            estimate_targets(engine, ds.select(range(3)), ds.select(range(3, 10)), [0, 1], [1.0], groups=bad)


WORKER = r'''
import json, sys
sys.path.insert(0, {tests!r})
import numpy as np
import torch
from tiny import text_cls_dataset
from transformers import BertForSequenceClassification, default_data_collator
from hf_iau import IAUConfig, IAUTrainer
from hf_iau.counterfactual import estimate_targets
from hf_iau.engine import Engine

args = IAUConfig(output_dir=sys.argv[1], use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
                 per_device_eval_batch_size=4, ddp_find_unused_parameters=False, seed=0)
train = text_cls_dataset(40, seed=0).remove_columns("id")
trainer = IAUTrainer(BertForSequenceClassification.from_pretrained(sys.argv[2]), args=args,
                     data_collator=default_data_collator)
engine = Engine(trainer)
engine.model.eval()
held = engine.per_example(text_cls_dataset(16, seed=1).remove_columns("id"), range(16))["loss"]
forget, retain = train.select([0, 3, 5, 8, 13, 21, 30]), train.select([i for i in range(40) if i not in (0, 3, 5, 8, 13, 21, 30)])
est = estimate_targets(engine, forget, retain, list(range(0, 33, 3)), held)
kfac = estimate_targets(engine, forget, retain, list(range(0, 33, 3)), held, kind="kfac")
lev = estimate_targets(engine, forget, retain, list(range(0, 33, 3)), held, leverage=True)
step = estimate_targets(engine, forget, retain, list(range(0, 33, 3)), held, step_kind="kfac")
level = estimate_targets(engine, forget, retain, list(range(0, 33, 3)), [0.0])  # retained rows already at the level
from hf_iau.counterfactual import class_log_probs, neighbour_label_losses
held_lp, held_x = class_log_probs(engine, text_cls_dataset(16, seed=1).remove_columns("id"), range(16), features=True)
_, forget_x = class_log_probs(engine, forget, range(7), features=True)
nbr = neighbour_label_losses(forget_x, np.array(forget["label"]), held_x, held_lp, k=5)
if trainer.args.process_index == 0:
    with open(sys.argv[1] + "/targets.json", "w") as fh:
        json.dump({{"world": trainer.args.world_size, "targets": est.targets.tolist(), "scale": est.diagnostics["scale"],
                   "passes": est.gradient_passes, "kfac_targets": kfac.targets.tolist(),
                   "kfac_scale": kfac.diagnostics["scale"], "lev_targets": lev.targets.tolist(),
                   "lev_scale": lev.diagnostics["scale"], "step_targets": step.targets.tolist(),
                   "step_scale": step.diagnostics["step_scale"], "level_targets": level.targets.tolist(),
                   "level_at": level.diagnostics["at_level"], "level_passes": level.gradient_passes,
                   "held_x": held_x.tolist(), "forget_x": forget_x.tolist(), "held_lp": held_lp.tolist(),
                   "nbr": nbr.tolist()}}, fh)
import tiny
tiny.leave_processes()
'''


def test_targets_are_the_same_on_two_processes(tmp_path):
    """Every set is sharded and every sum taken over processes: 2 processes give the 1-process targets (1e-5), with the
    diagonal, with K-FAC curvature, with the leave-out (leverage) curvature, with a K-FAC influence step, on the
    shortcut for retained rows already at the held-out level, and the neighbour levels' features and log-probs."""
    import json
    import os
    import shutil
    import subprocess

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    from transformers import default_data_collator

    from hf_iau import IAUConfig, IAUTrainer
    from tiny import text_cls_dataset, tiny_bert

    # one trained model for both launches (random labels: memorised, so held-out loss ≫ train loss)
    args = IAUConfig(output_dir=str(tmp_path / "train"), use_cpu=True, report_to=[], disable_tqdm=True,
                     save_strategy="no", num_train_epochs=30, learning_rate=5e-3, per_device_train_batch_size=8, seed=0)
    trainer = IAUTrainer(tiny_bert(), args=args, train_dataset=text_cls_dataset(40, seed=0),
                         data_collator=default_data_collator)
    trainer.train()
    trainer.model.save_pretrained(tmp_path / "model")
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"n{n}"
        out.mkdir()
        cmd = [torchrun, "--standalone", "--nproc_per_node", str(n), str(script), str(out), str(tmp_path / "model")]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        outs[n] = json.loads((out / "targets.json").read_text())
    assert outs[2]["world"] == 2 and outs[1]["world"] == 1
    assert outs[1]["scale"] > 0  # the influence path ran (not just the current losses)
    assert outs[2]["scale"] == pytest.approx(outs[1]["scale"], rel=1e-5)
    assert np.allclose(outs[1]["targets"], outs[2]["targets"], rtol=1e-5, atol=1e-5)
    # K-FAC factors are summed over processes like the squares (``kind="kfac"``); the damped Kronecker inverse mixes
    # elements, so float32 forward differences between batchings show more: one process at eval batch 4 vs 3 moves
    # these targets by 3.7e-5 relative (the diagonal's by 2.0e-5), two processes by up to 1.8e-4 (with or without
    # the zero-gradient position filter: not the factors' bookkeeping)
    assert outs[2]["kfac_scale"] == pytest.approx(outs[1]["kfac_scale"], rel=1e-5)
    assert np.allclose(outs[1]["kfac_targets"], outs[2]["kfac_targets"], rtol=5e-4, atol=1e-5)
    assert outs[1]["passes"] == outs[2]["passes"] == 11 + 7  # each group's G kept from the F̂ pass
    # leverage: each set's own squares are summed over processes before they leave the curvature. F̂ − Σ_set g²
    # cancels where the set is most of F̂, so the summation order of two processes shows more (up to 2.8e-4
    # relative on one row here, the rest within 1e-6), as with K-FAC
    assert outs[1]["lev_scale"] != outs[1]["scale"]
    assert outs[2]["lev_scale"] == pytest.approx(outs[1]["lev_scale"], rel=1e-5)
    assert np.allclose(outs[1]["lev_targets"], outs[2]["lev_targets"], rtol=5e-4, atol=1e-5)
    # a K-FAC influence step keeps the diagonal targets and takes its own scale, summed like kind="kfac"
    assert np.allclose(outs[2]["step_targets"], outs[2]["targets"], rtol=1e-9)
    assert outs[2]["step_scale"] == pytest.approx(outs[1]["step_scale"], rel=1e-5) and outs[1]["step_scale"] == pytest.approx(outs[1]["kfac_scale"], rel=1e-6)
    # the shortcut for retained rows already at the held-out level: decided on the loss summed over processes
    assert outs[1]["level_at"] == outs[2]["level_at"] == 1.0 and outs[1]["level_passes"] == outs[2]["level_passes"] == 11
    assert np.allclose(outs[1]["level_targets"], outs[2]["level_targets"], rtol=1e-5, atol=1e-6)
    # neighbour levels: each process's rows' input features and log-probs, assembled on every process
    for key in ("held_x", "forget_x", "held_lp"):
        assert np.asarray(outs[2][key]).shape == np.asarray(outs[1][key]).shape
        assert np.allclose(outs[1][key], outs[2][key], rtol=1e-5, atol=1e-6)
    assert np.allclose(outs[1]["nbr"], outs[2]["nbr"], rtol=1e-5, atol=1e-6, equal_nan=True)


FSDP_WORKER = r'''
import json, os, sys
sys.path.insert(0, {tests!r})
import torch, tiny
from peft import LoraConfig, get_peft_model
from hf_iau import IAUConfig, IAUTrainer
from hf_iau.counterfactual import estimate_targets
from hf_iau.engine import Engine
from hf_iau.sharding import shard_per_block

out, shard = sys.argv[1], sys.argv[2] == "1"
if shard:
    torch.distributed.init_process_group("gloo")
res = {{}}
for case in ("full", "lora"):
    model = tiny.tiny_gpt2(seed=0)
    if case == "lora":
        torch.manual_seed(1)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"],
                                                 init_lora_weights=False))
    model = shard_per_block(model) if shard else model
    data = tiny.lm_dataset(n=64, seed=3).remove_columns("id")
    args = IAUConfig(output_dir=out, use_cpu=True, report_to="none", per_device_eval_batch_size=3, seed=0,
                     disable_tqdm=True, save_strategy="no")
    engine = Engine(IAUTrainer(model=model, args=args))
    engine.model.eval()
    held = engine.per_example(data.select(range(48, 64)), range(16))["loss"]
    est = estimate_targets(engine, data.select(range(7)), data.select(range(7, 48)), list(range(0, 41, 3)), held)
    res[case] = {{"targets": est.targets.tolist(), "scale": est.diagnostics["scale"]}}
if int(os.environ.get("RANK", "0")) == 0:
    with open(out + "/targets.json", "w") as fh:
        json.dump(res, fh)
tiny.leave_processes()
'''


def test_targets_of_an_fsdp2_sharded_model_on_two_processes_equal_one_process(tmp_path):
    """FSDP2 (fully_shard per block, uneven shards: 7 forget rows, batch 3): the hooked per-example squares are
    summed over processes and re-sharded like each parameter; targets equal the unsharded 1-process ones (1e-5)."""
    import json
    import os
    import subprocess

    from tiny import torchrun

    script = tmp_path / "worker.py"
    script.write_text(FSDP_WORKER.format(tests=str(Path(__file__).parent)))
    (tmp_path / "one").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "0"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (tmp_path / "two").mkdir()
    torchrun([str(script), str(tmp_path / "two"), "1"])
    one = json.loads((tmp_path / "one" / "targets.json").read_text())
    two = json.loads((tmp_path / "two" / "targets.json").read_text())
    for case in ("full", "lora"):
        assert one[case]["scale"] > 0
        assert two[case]["scale"] == pytest.approx(one[case]["scale"], rel=1e-5)
        assert np.allclose(one[case]["targets"], two[case]["targets"], rtol=1e-5, atol=1e-5)


def test_flipped_label_losses_read_the_label_on_held_out_rows_of_the_estimated_class():
    """Hand computation: three held-out rows (two predicted class 1, one class 0); a row estimated to move to class 1
    with label 0 gets the median of −log p(0) over the two class-1 rows; unflipped or unmatched rows get NaN."""
    from hf_iau.counterfactual import flipped_label_losses

    lp = np.log(np.array([[0.1, 0.9, 0.0 + 1e-12], [0.3, 0.6, 0.1], [0.8, 0.1, 0.1]]))
    out = flipped_label_losses(predicted=np.array([1, 0, 2, 1]), labels=np.array([0, 0, 1, 2]), held_out_log_probs=lp)
    assert out[0] == pytest.approx(np.median([-np.log(0.1), -np.log(0.3)]))
    assert np.isnan(out[1])  # the estimate keeps the label: no flipped level
    assert np.isnan(out[2])  # no held-out row is predicted as class 2
    assert out[3] == pytest.approx(np.median([-np.log(1e-12), -np.log(0.1)]))


def test_class_log_probs_and_the_estimated_class_of_a_classifier(tmp_path):
    """class_log_probs equals the model's log-softmax; with classes=True the estimate reports each forget row's class
    at the calibrated scale (argmax of the shifted logits, unshifted when the scale is 0) and its label."""
    from hf_iau.counterfactual import class_log_probs, estimate_targets
    from tiny import text_cls_dataset, tiny_bert

    ds = text_cls_dataset(30).remove_columns("id")
    engine = _engine(tmp_path, tiny_bert(0), per_device_eval_batch_size=8)
    lp = class_log_probs(engine, ds, [3, 1, 7])
    with torch.no_grad():
        batch = engine.collate(ds, [3, 1, 7])
        ref = torch.log_softmax(engine.model(**{k: v for k, v in batch.items() if k != "labels"}).logits.double(), -1)
    assert np.allclose(lp, ref.numpy(), atol=1e-6)
    forget, retain = ds.select(range(5)), ds.select(range(5, 30))
    est = estimate_targets(engine, forget, retain, list(range(0, 25, 3)), [1.3, 1.1, 1.6, 0.9])
    assert est.labels.tolist() == forget["label"]
    assert est.predicted.shape == (5,) and set(est.predicted.tolist()) <= set(range(engine.model.config.num_labels))


def test_shifted_losses_report_the_class_of_the_shifted_logits():
    """A linear classifier (logits = W·x, so J·d = d·x exactly): the extra columns are argmax((W + s·D)·x) at the
    last scale and the label."""
    w = torch.nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=torch.float64))
    d = torch.tensor([[-2.0, 0.0], [0.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    x = torch.tensor([[1.0, 0.2], [0.1, 1.0], [0.3, 0.3]], dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    out = shifted_losses([w], [d], [{"x": x, "labels": y}], lambda b: (b["x"] @ w.T, b["labels"]), [0.0, 1.0], False,
                         classes=True)
    assert out.shape == (3, 4)
    assert out[:, 2].tolist() == ((w + d) @ x.T).T.argmax(-1).double().tolist() == [2.0, 2.0, 2.0]
    assert out[:, 3].tolist() == [0.0, 1.0, 2.0]
    assert np.allclose(out[:, 1], F.cross_entropy(x @ (w + d).T, y, reduction="none").detach().numpy())


def test_flipped_targets_are_an_option_that_raises_mislabelled_targets(tmp_path):
    """unlearn_flipped_targets=True: targets ≥ the default's, higher where a row's estimated class is not its label,
    and reported; off by default (no level, no extra forward pass)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_unlearn_defaults import _spy_targets, learnable, trained

    from hf_iau import forget_retain_split

    flip = list(range(8))
    train = learnable(96, seed=0, flip=flip)
    trainer = trained(tmp_path, train, learnable(24, seed=1), epochs=30)
    split = forget_retain_split(train, forget=flip, id_column="id")
    base, info, _ = _spy_targets(trainer, split)
    assert "flipped_fraction" not in info
    trainer = trained(tmp_path / "b", train, learnable(24, seed=1), epochs=30, unlearn_flipped_targets=True)
    raised, info2, _ = _spy_targets(trainer, split)
    assert info2["flipped_fraction"] > 0 and np.all(raised >= base - 1e-9) and raised.mean() > base.mean()


@pytest.mark.parametrize("causal", [True, False])
def test_scaled_cross_entropy_equals_the_cross_entropy_of_every_shifted_logit(causal):
    """The label-position computation equals ``cross_entropy(z + s·dz)`` scale by scale (1e-10 in float64; 1e-6
    + 1e-5 relative in the float32 default), with ignored labels and a row without any label; with ``stop_above`` the scales after the first whose batch sum reaches it are +inf."""
    g = torch.Generator().manual_seed(0)
    shape = (4, 7, 11) if causal else (6, 11)
    z, dz = torch.randn(*shape, generator=g, dtype=torch.float64), torch.randn(*shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 11, shape[:-1], generator=g)
    if causal:
        y[0, :3], y[2] = -100, -100  # a masked prompt; a row with no label at all
    else:
        y[1] = -100
    scales = [0.0, 1e-3, 0.5, 2.0, 30.0, 100.0]
    ref = torch.stack([cross_entropy(z + s * dz, y, causal) for s in scales], -1)
    got = scaled_cross_entropy(z, dz, y, causal, scales, dtype=torch.float64)
    assert got.shape == (shape[0], len(scales))
    assert torch.allclose(got, ref, atol=1e-10, rtol=0)
    assert torch.allclose(scaled_cross_entropy(z, dz, y, causal, scales), ref, atol=1e-6, rtol=1e-5)  # float32 default
    level = float(ref[:, 3].sum()) - 1e-9  # first reached at scale index 3 (the sums grow with s here)
    assert float(ref[:, 2].sum()) < level
    cut = scaled_cross_entropy(z, dz, y, causal, scales, stop_above=level, dtype=torch.float64)
    assert torch.allclose(cut[:, :4], ref[:, :4], atol=1e-10, rtol=0) and torch.isinf(cut[:, 4:]).all()
    # no shift (dz=None): the unshifted loss at every scale, bitwise what a zero shift gives
    unshifted = scaled_cross_entropy(z, None, y, causal, scales[:2])
    assert torch.equal(unshifted, scaled_cross_entropy(z, torch.zeros_like(dz), y, causal, scales[:2]))
    assert torch.allclose(unshifted[:, 0], ref[:, 0], atol=1e-6, rtol=1e-5) and torch.equal(unshifted[:, 0], unshifted[:, 1])


def test_the_early_stop_of_the_scale_grid_leaves_the_targets_unchanged(tmp_path, monkeypatch):
    """estimate_targets with the grid cut where a batch proves the sample's mean reached the held-out level gives the
    same scale and targets as the full grid, and the cut fires (a tiny GPT-2, batches of 4)."""
    from hf_iau import counterfactual
    from hf_iau.counterfactual import SCALES, estimate_targets
    from tiny import lm_dataset

    ds = lm_dataset(40).remove_columns("id")
    engine = _engine(tmp_path, tiny_gpt2(0), per_device_eval_batch_size=4)
    forget, retain, sample, held = ds.select(range(6)), ds.select(range(6, 40)), list(range(0, 34, 2)), [4.6, 4.3, 4.9]
    full, computed, asked = counterfactual.scaled_cross_entropy, [], []

    def spy(*a, **kw):
        out = full(*a, **kw)
        computed.append(int(torch.isfinite(out[0]).sum()))
        asked.append(len(a[4]))
        return out

    monkeypatch.setattr(counterfactual, "scaled_cross_entropy", spy)
    cut = estimate_targets(engine, forget, retain, sample, held)
    assert min(computed) < len(SCALES)  # some batch skipped the larger scales
    assert asked[0] == len(SCALES) and min(asked) < len(SCALES)  # later groups only up to the proven crossing
    monkeypatch.setattr(counterfactual, "scaled_cross_entropy", lambda *a, **kw: full(*a[:5], stop_above=None))
    ref = estimate_targets(engine, forget, retain, sample, held)
    assert 0 < ref.diagnostics["scale"] < SCALES[-1]  # the level is reached inside the grid
    assert cut.diagnostics["scale"] == pytest.approx(ref.diagnostics["scale"], rel=1e-12)
    assert np.allclose(cut.targets, ref.targets, rtol=1e-10, atol=1e-12)
    monkeypatch.setattr(counterfactual, "scaled_cross_entropy", lambda *a, **kw: full(*a[:5], dtype=torch.float64))
    exact = estimate_targets(engine, forget, retain, sample, held)  # the float32 logsumexp against float64
    assert cut.diagnostics["scale"] == pytest.approx(exact.diagnostics["scale"], rel=1e-5)
    assert np.allclose(cut.targets, exact.targets, rtol=1e-5, atol=1e-6)


def test_neighbour_label_losses_match_a_hand_computation():
    """A forget row whose k nearest held-out rows (cosine similarity: direction, not length) are mostly predicted as
    a class c other than its label y gets the median of −log p(y | x_j) over those neighbours predicted c; NaN when the
    neighbours are mostly predicted y, or split with no majority."""
    from hf_iau.counterfactual import neighbour_label_losses

    held_x = np.array([[1.0, 0.0], [0.9, 0.1], [0.95, 0.05], [0.0, 1.0], [0.1, 0.9], [0.05, 0.95]])
    p = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5],  # near [1, 0]: predicted 0, 0, 2
                  [0.1, 0.8, 0.1], [0.45, 0.5, 0.05], [0.5, 0.4, 0.1]])  # near [0, 1]: predicted 1, 1, 0
    forget_x = np.array([[5.0, 0.2], [0.0, 0.3], [0.0, 0.3], [5.0, 0.2]])
    out = neighbour_label_losses(forget_x, np.array([1, 0, 1, 0]), held_x, np.log(p), k=3)
    assert out[0] == pytest.approx(np.median([-np.log(0.2), -np.log(0.3)]))  # 2 of 3 predicted 0 ≠ 1: rows 0, 1
    assert out[1] == pytest.approx(np.median([-np.log(0.1), -np.log(0.45)]))  # 2 of 3 predicted 1 ≠ 0: rows 3, 4
    assert np.isnan(out[2])  # the majority class is the label itself
    assert np.isnan(out[3])
    split = neighbour_label_losses(np.array([[1.0, 1.0]]), np.array([2]), held_x, np.log(p), k=6)
    assert np.isnan(split)  # 3 rows predicted 0, 2 predicted 1, 1 predicted 2 of 6: no majority


def test_input_features_average_a_feature_map_over_space_and_tokens_over_the_attended_ones(tmp_path):
    """input_features: [B, C, H, W] → flattened; [B, T, D] → mean over the tokens the mask keeps; and
    class_log_probs(features=True) returns the model's first hidden state so pooled, beside unchanged log-probs."""
    from hf_iau.counterfactual import class_log_probs, input_features
    from tiny import text_cls_dataset, tiny_bert

    fmap = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2)
    assert torch.equal(input_features(fmap), fmap.reshape(2, 12))
    tokens = torch.randn(2, 4, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    got = input_features(tokens, mask)
    assert torch.allclose(got[0], tokens[0, :2].mean(0)) and torch.allclose(got[1], tokens[1].mean(0))
    ds = text_cls_dataset(12).remove_columns("id")
    engine = _engine(tmp_path, tiny_bert(0), per_device_eval_batch_size=5)
    lp, feats = class_log_probs(engine, ds, [3, 1, 7], features=True)
    assert np.allclose(lp, class_log_probs(engine, ds, [3, 1, 7]), atol=1e-12)
    with torch.no_grad():
        batch = engine.collate(ds, [3, 1, 7])
        out = engine.model(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True)
    assert np.allclose(feats, input_features(out.hidden_states[0], batch["attention_mask"]).numpy(), atol=1e-6)


def test_neighbour_targets_are_an_option_that_raises_mislabelled_targets(tmp_path):
    """unlearn_neighbour_targets: targets ≥ those without, higher for rows given a wrong label (their look-alike
    held-out rows carry the true class), and the level is reported."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_unlearn_defaults import _spy_targets, learnable, trained

    from hf_iau import forget_retain_split

    flip = list(range(8))
    train = learnable(96, seed=0, flip=flip)
    held = learnable(48, seed=1)
    split = forget_retain_split(train, forget=flip, id_column="id")
    base, info, _ = _spy_targets(trained(tmp_path, train, held, epochs=30, unlearn_neighbour_targets=False), split)
    assert "neighbour_level" not in info
    raised, info2, _ = _spy_targets(trained(tmp_path / "b", train, held, epochs=30, unlearn_neighbour_targets=True), split)
    assert info2["neighbour_level"] > base.mean() and np.all(raised >= base - 1e-9) and raised.mean() > base.mean()
