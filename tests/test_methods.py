"""Baselines under the method API (hf_iau.methods): registry, budgets, and what each must do."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).parent))
from tiny import lm_dataset, max_abs_diff, params_of, text_cls_dataset, tiny_bert, tiny_gpt2  # noqa: E402

from hf_iau import IAUConfig, IAUTrainer, UnlearningError  # noqa: E402
from hf_iau.engine import Engine  # noqa: E402
from hf_iau.losses import batch_losses  # noqa: E402
from hf_iau.methods import METHODS, get_method, register_method, run_method  # noqa: E402
from hf_iau.methods._request import BudgetError  # noqa: E402

ALL = {"iau", "retrain", "finetune", "gradient_ascent", "gradient_difference", "npo", "simnpo", "rmu",
       "influence_function", "fisher", "salun", "scrub"}


def make_args(tmp_path: Path, **kw) -> IAUConfig:
    base = dict(
        output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no", use_cpu=True, logging_strategy="no",
        disable_tqdm=True, per_device_train_batch_size=4, per_device_eval_batch_size=8, num_train_epochs=1, seed=0,
    )
    return IAUConfig(**{**base, **kw})


@pytest.fixture
def lm(tmp_path):
    ds = lm_dataset(16)
    trainer = IAUTrainer(model=tiny_gpt2(0), args=make_args(tmp_path), train_dataset=ds)
    return trainer, ds.select(range(4)), ds.select(range(4, 16))


# --- registry --------------------------------------------------------------------------------
def test_registry_lists_all_methods():
    assert set(METHODS) == ALL
    assert all(get_method(name) is METHODS[name] for name in ALL)


def test_unknown_method_names_the_known_ones(lm):
    trainer, forget, retain = lm
    with pytest.raises(ValueError, match="unknown unlearning method 'nope'.*gradient_ascent.*retrain"):
        run_method("nope", trainer, forget, retain)
    with pytest.raises(ValueError, match="already registered"):
        register_method("npo")(lambda *a, **k: None)


# --- mini-batch methods ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, options, budget, cost_per_step",
    [
        ("gradient_ascent", {}, 10, 4),
        ("gradient_difference", {}, 17, 8),
        ("npo", {"beta": 0.1, "retain_weight": 1.0}, 16, 8),
    ],
)
def test_ascent_methods_raise_forget_loss_within_budget(lm, name, options, budget, cost_per_step):
    trainer, forget, retain = lm
    res = run_method(name, trainer, forget, retain, budget=budget, learning_rate=1e-2, batch_size=4, **options)
    m = res.metrics
    assert m["forget_loss_after"] > m["forget_loss_before"] + 0.05
    assert m["example_gradient_passes"] <= budget
    assert m["example_gradient_passes"] == (budget // cost_per_step) * cost_per_step  # fills the budget
    assert m["steps"] == budget // cost_per_step
    assert m["example_forward_passes"] >= 2 * (len(forget) + len(retain))
    assert m["wall_time_s"] > 0 and len(res.forget_fingerprint) == 64
    entry = trainer.unlearning_history[-1]
    assert entry["method"] == name and entry["config"]["batch_size"] == 4 and entry["metrics"] == m


def test_finetune_lowers_retain_loss_and_never_touches_forget(lm):
    trainer, forget, retain = lm
    res = run_method("finetune", trainer, forget, retain, learning_rate=1e-2, epochs=2, batch_size=4)
    assert res.metrics["retain_loss_after"] < res.metrics["retain_loss_before"]
    assert res.metrics["example_gradient_passes"] == 2 * len(retain)
    assert res.metrics["steps"] == 6


def test_npo_first_step_is_ascent_on_summed_losses(lm):
    trainer, forget, retain = lm
    model, before = trainer.model, params_of(trainer.model)
    run_method("npo", trainer, forget, retain, steps=1, batch_size=4, learning_rate=1e-3, optimizer="sgd")
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    # At θ = θ_ref each forget example weighs (2/β)·σ(0)·β = 1: SGD on −mean_x (summed loss of x).
    model.load_state_dict(before)
    model.eval()
    model.zero_grad()
    batch = next(Engine(trainer).batches(trainer._model_columns(forget), list(range(4))))
    (-batch_losses(model, batch).loss_sum.mean()).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(after[n], p.detach() - 1e-3 * p.grad, rtol=1e-5, atol=1e-7)


def test_failure_restores_original_weights(lm):
    trainer, forget, retain = lm
    before = params_of(trainer.model)
    with pytest.raises(UnlearningError, match="non-finite"):
        run_method("gradient_ascent", trainer, forget, retain, learning_rate=1e30, optimizer="sgd", steps=3)
    assert max_abs_diff(before, params_of(trainer.model)) == 0.0
    assert trainer.unlearning_history == []


def test_budget_too_small_is_an_error(lm):
    trainer, forget, retain = lm
    before = params_of(trainer.model)
    cases = [("gradient_ascent", {"batch_size": 4}), ("iau", {}), ("influence_function", {}), ("retrain", {})]
    for name, opts in cases:
        with pytest.raises(BudgetError, match="budget=3"):
            run_method(name, trainer, forget, retain, budget=3, **opts)
    with pytest.raises(ValueError, match="budget"):
        run_method("fisher", trainer, forget, retain, budget=-1)
    assert max_abs_diff(before, params_of(trainer.model)) == 0.0


# --- iau -------------------------------------------------------------------------------------
def test_iau_is_trainer_unlearn_with_steps_capped_by_budget(lm):
    trainer, forget, retain = lm
    steps_before = trainer.args.unlearn_steps
    # fixed steps on the whole retain set, no saturation (the untrained tiny LM fits nothing, so the default
    # "auto" saturation would rightly stop at once)
    res = run_method("iau", trainer, forget, retain, budget=40, unlearn_steps=5, unlearn_learning_rate=1e-3,
                     forget_saturation="none", unlearn_stop="fixed", retain_sample_size=None)
    assert res.metrics["steps"] == 2 and res.metrics["example_gradient_passes"] == 32 <= 40
    assert trainer.args.unlearn_steps == steps_before  # overrides are temporary
    assert trainer.unlearning_history[-1]["method"] == "iau"
    assert trainer.unlearning_history[-1]["config"]["unlearn_steps"] == 2
    with pytest.raises(ValueError, match="unknown option"):
        run_method("iau", trainer, forget, retain, learning_rate=1.0)


# --- retrain ---------------------------------------------------------------------------------
def test_retrain_equals_training_from_scratch_on_retain(tmp_path):
    ds = lm_dataset(12)
    forget, retain = ds.select(range(4)), ds.select(range(4, 12))
    trainer = IAUTrainer(model=tiny_gpt2(0), args=make_args(tmp_path, seed=7), train_dataset=ds)
    res = run_method("retrain", trainer, forget, retain)
    gold = IAUTrainer(model=tiny_gpt2(7), args=make_args(tmp_path / "gold", seed=7), train_dataset=retain)
    gold.train()
    assert max_abs_diff(params_of(gold.model), params_of(trainer.model)) == 0.0  # bit-identical on CPU
    assert res.metrics["example_gradient_passes"] == len(retain)  # one epoch = |D_r|
    assert res.metrics["retrain_steps"] == 2
    assert trainer.unlearning_history[-1]["method"] == "retrain"

    capped = run_method("retrain", trainer, forget, retain, budget=5)  # one step of 4 fits, two do not
    assert capped.metrics["example_gradient_passes"] == 4 and capped.metrics["retrain_steps"] == 1


# --- influence function ----------------------------------------------------------------------
class LogReg(torch.nn.Module):
    """Logistic regression in float64 with only its own mean loss (loss kind "generic": one-row batches)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(d, 1, dtype=torch.float64)
        self.config = SimpleNamespace(num_labels=2)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> SimpleNamespace:
        z = self.linear(features.double()).squeeze(-1)
        loss = None if labels is None else F.binary_cross_entropy_with_logits(z, labels.double())
        return SimpleNamespace(loss=loss, logits=z)


def _flat_loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(x @ theta[:-1] + theta[-1], y)


def _fit(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    theta = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [theta], lr=1, max_iter=200, tolerance_grad=1e-13, tolerance_change=0, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = _flat_loss(theta, x, y)
        loss.backward()
        return loss

    opt.step(closure)
    return theta.detach()


def test_influence_function_is_the_exact_newton_correction(tmp_path):
    rng = np.random.default_rng(0)
    n, d, k = 80, 3, 8
    x = rng.normal(size=(n, d)).astype(np.float32).astype(np.float64)  # the collator makes float32 features
    y = (rng.random(n) < 1 / (1 + np.exp(-x @ np.array([1.5, -1.0, 0.5])))).astype(np.int64)
    ds = Dataset.from_dict({"id": list(range(n)), "features": x.tolist(), "labels": y.tolist()})
    X, Y = torch.tensor(x), torch.tensor(y, dtype=torch.float64)
    theta_star = _fit(X, Y)
    model = LogReg(d)
    with torch.no_grad():
        model.linear.weight.copy_(theta_star[:-1]), model.linear.bias.copy_(theta_star[-1:])
    trainer = IAUTrainer(model=model, args=make_args(tmp_path, unlearn_batch_size=1), train_dataset=ds)
    forget, retain = ds.select(range(k)), ds.select(range(k, n))
    damping = 1e-3
    res = run_method("influence_function", trainer, forget, retain, damping=damping, tol=1e-12)
    got = torch.cat([model.linear.weight.detach().view(-1), model.linear.bias.detach()]) - theta_star

    # Exact: Δθ = (1/N_r)·(H + λI)⁻¹·Σ_{D_f}∇ℓ, H the explicit Hessian of the mean retain loss.
    H = torch.autograd.functional.hessian(lambda t: _flat_loss(t, X[k:], Y[k:]), theta_star)
    g_sum = torch.autograd.functional.jacobian(lambda t: _flat_loss(t, X[:k], Y[:k]), theta_star) * k
    expected = torch.linalg.solve(H + damping * torch.eye(d + 1, dtype=torch.float64), g_sum) / (n - k)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert res.metrics["cg_iterations"] <= d + 1 and res.metrics["cg_negative_curvature"] == 0
    assert res.metrics["example_gradient_passes"] == k + 2 * (n - k) * res.metrics["cg_iterations"]

    # Sign and scale: without damping the step goes most of the way to the model retrained on D_r
    # (one Newton step on a non-quadratic loss: the rest is second order).
    with torch.no_grad():
        model.linear.weight.copy_(theta_star[:-1]), model.linear.bias.copy_(theta_star[-1:])
    run_method("influence_function", trainer, forget, retain, damping=0.0, tol=1e-12)
    theta_if = torch.cat([model.linear.weight.detach().view(-1), model.linear.bias.detach()])
    theta_r = _fit(X[k:], Y[k:])
    step, target = theta_if - theta_star, theta_r - theta_star
    assert float(F.cosine_similarity(step, target, dim=0)) > 0.95
    assert (theta_if - theta_r).norm() < 0.25 * target.norm()


def test_influence_function_on_a_transformer_respects_the_budget(lm):
    trainer, forget, retain = lm
    res = run_method("influence_function", trainer, forget, retain, budget=4 + 2 * 12 * 2 + 5, damping=10.0)
    assert res.metrics["cg_iterations"] == 2
    assert res.metrics["example_gradient_passes"] == 4 + 2 * 12 * 2
    assert res.metrics["update_norm"] > 0


# --- fisher ----------------------------------------------------------------------------------
def test_fisher_noise_has_the_stated_scale(tmp_path):
    ds = text_cls_dataset(12)
    trainer = IAUTrainer(model=tiny_bert(0), args=make_args(tmp_path), train_dataset=ds)
    forget, retain = ds.select(range(3)), ds.select(range(3, 12))
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # The diagonal Fisher by hand: mean over retain examples of squared per-example gradients.
    cols = trainer._model_columns(retain)
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    model.eval()
    for i in range(len(retain)):
        model.zero_grad()
        batch_losses(model, next(Engine(trainer).batches(cols, [i]))).loss_sum.sum().backward()
        for n, p in model.named_parameters():
            fisher[n] += p.grad.pow(2) / len(retain)
    model.zero_grad(set_to_none=True)
    alpha, vmax = 1e-6, 1e3
    res = run_method("fisher", trainer, forget, retain, budget=100, alpha=alpha, max_variance=vmax)
    z = torch.cat([
        ((p.detach() - before[n]) / (alpha * (1 / (fisher[n] + 1e-8)).clamp(max=vmax)).sqrt()).view(-1)
        for n, p in model.named_parameters()
    ])
    assert z.numel() > 10_000
    assert abs(float(z.mean())) < 0.03 and abs(float(z.std()) - 1.0) < 0.03  # ξ ~ N(0, 1)
    assert res.metrics["example_gradient_passes"] == len(retain) <= 100
    assert res.metrics["fisher_examples"] == len(retain)
    assert math.isfinite(res.metrics["forget_loss_after"])


# --- LoRA ------------------------------------------------------------------------------------
def test_lora_npo_with_adapter_disabled_reference_changes_only_the_adapter(tmp_path):
    from peft import LoraConfig

    ds = lm_dataset(12)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True, lora_dropout=0.0)
    trainer = IAUTrainer(model=tiny_gpt2(0), args=make_args(tmp_path), train_dataset=ds, peft_config=lora)
    forget, retain = ds.select(range(4)), ds.select(range(4, 12))
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    res = run_method("npo", trainer, forget, retain, reference="base", steps=3, batch_size=4, learning_rate=1e-2)
    assert res.metrics["forget_loss_after"] > res.metrics["forget_loss_before"]
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if not p.requires_grad)
    with pytest.raises(ValueError, match="model_init"):
        run_method("retrain", trainer, forget, retain)
    res = run_method("retrain", trainer, forget, retain, model_init=lambda: tiny_gpt2(0))
    assert res.metrics["retrain_steps"] == 2
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if not p.requires_grad)
