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
    counterfactual_losses,
    cross_entropy,
    group_gradient,
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


def batches_of(x: torch.Tensor, y: torch.Tensor, idx: list[int], size: int):
    return lambda: [{"x": x[idx[i : i + size]], "y": y[idx[i : i + size]]} for i in range(0, len(idx), size)]


def test_group_gradient_is_the_sum_of_example_gradients_whatever_the_batching():
    x, y = data()
    model = as_module(fit(x, y, torch.ones(len(y), dtype=torch.float64)), 3)
    params = list(model.parameters())
    per_example = lambda b: F.cross_entropy(model(b["x"]), b["y"], reduction="none")  # noqa: E731
    idx = [3, 17, 40, 41, 99]
    g1, l1 = group_gradient(params, batches_of(x, y, idx, 2)(), per_example)
    g2, l2 = group_gradient(params, batches_of(x, y, idx, 5)(), per_example)
    exact = torch.autograd.grad(per_example({"x": x[idx], "y": y[idx]}).sum(), params)
    for a, b, e in zip(g1, g2, exact):
        assert torch.allclose(a.double(), e, atol=1e-6) and torch.allclose(b.double(), e, atol=1e-6)
    assert np.allclose(l1, l2) and len(l1) == 5


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
    g_f, losses = group_gradient(params, batches_of(x, y, forget, 4)(), per_example)
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
        g, _ = group_gradient(params, batches_of(x, y, idx, 8)(), per_example)
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


def test_targets_are_clipped_between_the_current_loss_and_the_ceiling():
    assert counterfactual_losses([0.1, 0.1, 3.0, 0.2], [0.05, 0.7, 9.0, float("nan")], ceiling=2.0) == [
        0.1, 0.7, 3.0, 0.2]
    assert counterfactual_losses([0.1], [9.0], ceiling=None) == [9.0]


WORKER = r'''
import json, sys
sys.path.insert(0, {tests!r})
import torch
from tiny import text_cls_dataset
from transformers import BertForSequenceClassification, default_data_collator
from hf_iau import IAUConfig, IAUTrainer, forget_retain_split
from hf_iau.unlearning import IAUUnlearner

seen = {{}}
original = IAUUnlearner._resolve_mode
def spy(self, local):
    out = original(self, local)
    seen["targets"] = [self.targets[i] for i in range(self.n_forget)]
    seen["scale"] = self.counterfactual["scale"]
    return out
IAUUnlearner._resolve_mode = spy
args = IAUConfig(output_dir=sys.argv[1], use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
                 unlearn_steps=1, retain_sample_size=9, ddp_find_unused_parameters=False, seed=0)
train = text_cls_dataset(40, seed=0)
model = BertForSequenceClassification.from_pretrained(sys.argv[2])
trainer = IAUTrainer(model, args=args, train_dataset=train, eval_dataset=text_cls_dataset(16, seed=1),
                     data_collator=default_data_collator)
split = forget_retain_split(train, forget=[0, 3, 5, 8, 13, 21, 30], id_column="id")
trainer.unlearn(split["forget"], split["retain"])
if trainer.args.process_index == 0:
    with open(sys.argv[1] + "/targets.json", "w") as fh:
        json.dump({{"world": trainer.args.world_size, "targets": seen["targets"], "scale": seen["scale"]}}, fh)
'''


def test_targets_are_the_same_on_two_processes(tmp_path):
    """The estimate shards the forget set and the sample and sums over processes: 2 processes = 1 process."""
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
    assert outs[2]["scale"] == pytest.approx(outs[1]["scale"], rel=1e-3)
    assert np.allclose(outs[1]["targets"], outs[2]["targets"], rtol=1e-3, atol=1e-5)
