"""K-FAC curvature (hf_iau/kfac.py): factors from the hooks equal a hand computation, the preconditioner equals
the explicit (κ·S ⊗ A + d)⁻¹, and the estimate runs with it."""

from __future__ import annotations

import pytest
import torch
from tiny import lm_dataset, tiny_gpt2

from hf_iau.curvature import ExampleGradients
from hf_iau.curvature import damping_level
from hf_iau.kfac import KroneckerFactors, kronecker_solvers


def _factors(model, x, y):
    """(hooked ExampleGradients, factors) of one batch through ``model`` with per-example squared-error losses."""
    params = [p for p in model.parameters()]
    factors = KroneckerFactors()
    with ExampleGradients(model, params, factors) as eg:
        eg.expect(x.shape[0])
        model.zero_grad()
        loss = ((model(x) - y) ** 2).flatten(1).sum(1)
        loss.sum().backward()
        eg.collect(1.0, [p.grad for p in params])
    return eg, factors


def test_linear_factors_are_the_sums_of_input_and_output_gradient_outer_products():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2).double()
    x, y = torch.randn(5, 4, 3, dtype=torch.float64), torch.randn(5, 4, 2, dtype=torch.float64)
    eg, factors = _factors(lin, x, y)
    a = x.reshape(-1, 3)
    delta = 2 * (lin(x) - y).detach().reshape(-1, 2)
    torch.testing.assert_close(factors.a[0], a.T @ a)
    torch.testing.assert_close(factors.s[0], delta.T @ delta)
    assert 1 not in factors.a  # the bias keeps the diagonal


def test_conv2d_factors_use_the_unfolded_patches():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1).double()
    x, y = torch.randn(4, 2, 5, 5, dtype=torch.float64), torch.randn(4, 3, 5, 5, dtype=torch.float64)
    _, factors = _factors(conv, x, y)
    u = torch.nn.functional.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 18)
    delta = 2 * (conv(x) - y).detach().reshape(4, 3, -1).transpose(1, 2).reshape(-1, 3)
    torch.testing.assert_close(factors.a[0], u.T @ u)
    torch.testing.assert_close(factors.s[0], delta.T @ delta)


@pytest.mark.parametrize("transposed", [False, True])
def test_preconditioner_is_the_explicit_damped_kronecker_inverse(transposed):
    """P·G = (κ·S ⊗ A + d·I)⁻¹ vec(G), κ matching the layer's diagonal trace; GPT-2's Conv1D stores Wᵀ."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(1)
    out_f, in_f = 3, 4
    layer = Conv1D(out_f, in_f) if transposed else torch.nn.Linear(in_f, out_f)
    layer = layer.double()
    w = layer.weight
    a, s = torch.randn(in_f, 6, dtype=torch.float64), torch.randn(out_f, 5, dtype=torch.float64)
    factors = KroneckerFactors()
    factors.kinds[0], factors.a[0], factors.s[0] = ("conv1d" if transposed else "linear"), a @ a.T, s @ s.T
    diag = torch.rand(w.shape, dtype=torch.float64) + 0.5
    damping = 0.1
    d = damping * float(diag.mean())
    assert damping_level([diag], damping) == pytest.approx(d, rel=1e-12)
    apply = kronecker_solvers([w], [diag], factors, d)[0]
    g = torch.randn(w.shape, dtype=torch.float64)
    kappa = float(diag.sum()) / float(torch.trace(factors.s[0]) * torch.trace(factors.a[0]))
    big = kappa * torch.kron(factors.s[0], factors.a[0]) + d * torch.eye(out_f * in_f, dtype=torch.float64)
    gm = g.T if transposed else g  # [out, in], row-major vec matches kron(S, A)
    want = torch.linalg.solve(big, gm.reshape(-1)).reshape(out_f, in_f)
    torch.testing.assert_close(apply(g), want.T if transposed else want)
    # a parameter without factors gets no solver (it keeps the diagonal's 1 / (F̂ + d))
    assert set(kronecker_solvers([w, layer.bias], [diag, torch.ones(out_f, dtype=torch.float64)], factors, d)) == {0}


def test_estimate_with_kfac_runs_on_gpt2_and_keeps_the_held_out_calibration(tmp_path):
    """The K-FAC estimate calibrates like the diagonal one: the removed sample lands on the held-out mean."""
    from hf_iau import IAUConfig, IAUTrainer
    from hf_iau.counterfactual import estimate_targets
    from hf_iau.engine import Engine

    data = lm_dataset(n=64, seed=3).remove_columns("id")
    args = IAUConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_eval_batch_size=4,
                     disable_tqdm=True, save_strategy="no")
    engine = Engine(IAUTrainer(model=tiny_gpt2(seed=0), args=args))
    engine.model.eval()
    held = engine.per_example(data.select(range(48, 64)), range(16))["loss"]
    est = {kind: estimate_targets(engine, data.select(range(7)), data.select(range(7, 48)), list(range(0, 41, 2)), held,
                                  kind=kind) for kind in ("diagonal", "kfac")}
    for e in est.values():
        assert e.diagnostics["sample_estimate"] == pytest.approx(held.mean(), rel=1e-3)
    assert est["kfac"].diagnostics["scale"] != est["diagonal"].diagnostics["scale"]  # another preconditioner
    assert est["kfac"].gradient_passes == est["diagonal"].gradient_passes  # factors come from the same passes
