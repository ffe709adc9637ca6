"""Default unlearning mode: multi-step, auto stop, seeded retain sample, per-example saturation."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset
from tiny import text_cls_dataset, tiny_bert
from transformers import default_data_collator

from hf_iau import IAUConfig, IAUTrainer, forget_retain_split


def make_args(tmp_path, **kw) -> IAUConfig:
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no")
    base.update(kw)
    return IAUConfig(**base)


def learnable(n: int, seed: int = 0, flip: list[int] | None = None) -> Dataset:
    """Class c draws its tokens from [1 + 21c, 21 + 21c): learnable, so held-out data is fit too."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    ids = rng.integers(1, 22, size=(n, 16)) + 21 * labels[:, None]
    labels = labels.tolist()
    for i in flip or []:
        labels[i] = (labels[i] + 1) % 3
    return Dataset.from_dict(
        {"id": list(range(n)), "input_ids": ids.tolist(), "attention_mask": [[1] * 16] * n, "label": labels}
    )


def trained(tmp_path, train: Dataset, held_out: Dataset | None, epochs: int = 40, **kw) -> IAUTrainer:
    args = make_args(tmp_path, num_train_epochs=epochs, learning_rate=5e-3, per_device_train_batch_size=16, **kw)
    trainer = IAUTrainer(tiny_bert(), args=args, train_dataset=train, eval_dataset=held_out,
                         data_collator=default_data_collator)
    trainer.train()
    return trainer


def test_defaults_are_the_multistep_self_limiting_mode():
    args = IAUConfig(output_dir="x", use_cpu=True)
    assert args.unlearn_targets == "counterfactual" and args.unlearn_stop == "targets"
    assert args.unlearn_steps > 1 and args.unlearn_retain_sample_size is not None
    assert args.unlearn_optimizer == "adam" and args.unlearn_forget_weight == 1.0 and args.unlearn_retain_weight == 4.0


def test_memorised_random_rows_whose_targets_are_their_losses_are_a_noop(tmp_path):
    """Random rows of a model that generalises: the estimate says the retrained model fits them as well (targets =
    their losses), so there is nothing to remove — refused as a no-op (nothing recorded, weights untouched), and
    recorded with zero steps when the user asks for it."""
    import torch

    from hf_iau import UnlearningError

    train = learnable(48, seed=0)
    held_out = learnable(24, seed=1)
    trainer = trained(tmp_path, train, held_out)
    split = forget_retain_split(train, forget=list(range(6)), id_column="id")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(UnlearningError, match="changed nothing"):
        trainer.unlearn(split["forget"], split["retain"])
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters())) and not trainer.unlearning_history
    m = trainer.unlearn(split["forget"], split["retain"], allow_noop=True).metrics
    assert "target_mean" in m and "held_out_loss" in m and "held_out_accuracy" in m
    assert m["stopped_targets_reached"] == 1.0 and m["steps"] == 0 and m["forget_active_fraction_final"] == 0.0
    assert m["example_forward_passes"] >= 24 + 6  # held-out pass + forget passes are counted
    # the estimate (|S| + |D_f|: F̂ measured on the rows, the calibration groups' G from the same passes; S = all 42
    # retained rows) and the step that stopped
    assert m["example_gradient_passes"] == (42 + 6) + (6 + trainer.args.unlearn_retain_sample_size)


def test_auto_pushes_mislabelled_rows_until_forgotten(tmp_path):
    """Mislabelled forget rows (the rest of the data contradicts them): counterfactual targets above their
    losses, the ascent runs until they are reached; the share still short of its target is measured on the final
    weights (before, a row pushed past its target that fell back below it still counted as forgotten)."""
    from hf_iau.engine import Engine

    flip = list(range(8))
    train = learnable(96, seed=0, flip=flip)
    held_out = learnable(24, seed=1)
    trainer = trained(tmp_path, train, held_out, epochs=4, unlearn_learning_rate=1e-2, unlearn_steps=40)
    split = forget_retain_split(train, forget=flip, id_column="id")
    targets, _, _ = _spy_targets(trainer, split)
    m = trainer.unlearning_history[-1]["metrics"]
    assert "target_mean" in m
    assert m["forget_accuracy_after"] < m["forget_accuracy_before"]
    assert m["forget_loss_after"] > m["forget_loss_before"]
    assert m["stopped_targets_reached"] == 1.0 and m["steps"] < 40
    losses = Engine(trainer).per_example(trainer._model_columns(split["forget"]), range(8))["loss"]
    assert m["forget_active_fraction_final"] == pytest.approx(float(np.mean(losses < targets * 0.99)))


def _digits(n_train: int, poison: int, seed: int = 0):
    """sklearn digits (8×8); ``poison`` non-zero training digits get a 2×2 corner trigger and label 0."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 1, 8, 8).astype("float32")
    xt, yt = x[:n_train].copy(), y[:n_train].copy()
    rows = [i for i in range(n_train) if yt[i] != 0][:poison]
    for i in rows:
        xt[i, 0, 6:8, 6:8] = 1.0
        yt[i] = 0

    def ds(a, b):
        return Dataset.from_dict({"id": list(range(len(b))), "pixel_values": a.tolist(), "label": [int(v) for v in b]})

    return ds(xt, yt), ds(x[1500:1650], y[1500:1650]), rows


def _small_cnn():
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    return ResNetForImageClassification(ResNetConfig(
        num_channels=1, embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=10,
        downsample_in_first_stage=False))


def _targets(tmp_path, train, held_out, forget_rows):
    """The default mode's per-example targets, diagnostics and held-out level on a small CNN trained on ``train``."""
    args = make_args(tmp_path, num_train_epochs=20, learning_rate=5e-3, per_device_train_batch_size=32, unlearn_steps=1)
    trainer = IAUTrainer(_small_cnn(), args=args, train_dataset=train, eval_dataset=held_out,
                         data_collator=default_data_collator)
    trainer.train()
    return _spy_targets(trainer, forget_retain_split(train, forget=forget_rows, id_column="id"))


def _spy_targets(trainer, split):
    """(targets, target diagnostics, held-out level) of one request."""
    from hf_iau.methods.iau import IAURun

    seen = {}
    original, original_held = IAURun.resolve_targets, IAURun.held_out_losses

    def spy(self):
        out = original(self)
        seen.update(targets=out.targets.copy(), info={k[len("target_"):]: v for k, v in self.info.items()})
        return out

    def spy_held(self):
        out = original_held(self)
        seen["reference"] = {"losses": list(out), "loss": self.info["held_out_loss"],
                             "accuracy": self.info.get("held_out_accuracy")}
        return out

    IAURun.resolve_targets, IAURun.held_out_losses = spy, spy_held
    try:
        trainer.unlearn(split["forget"], split["retain"], allow_noop=True)
    finally:
        IAURun.resolve_targets, IAURun.held_out_losses = original, original_held
    return seen["targets"], seen["info"], seen["reference"]


def test_default_targets_say_the_retrained_model_gets_poisoned_rows_wrong(tmp_path):
    """Trigger-patch rows relabelled 0 (the trigger appears nowhere else): targets above chance loss."""
    train, held_out, rows = _digits(300, 15)
    targets, info, ref = _targets(tmp_path, train, held_out, rows)
    assert info["forget_loss"] < 0.05  # the original model fits the poison
    assert info["estimate_rank"] > 0.9  # estimated to move more than (almost) any random retained row
    assert np.mean(targets > np.log(10)) >= 0.8  # mostly wrong under the retrained model: loss above chance
    assert targets.max() <= max(ref["losses"]) + 1e-9


def test_default_targets_for_random_rows_look_held_out(tmp_path):
    """Random rows: targets spread like held-out losses (most stay fitted), not pushed to chance."""
    train, held_out, _ = _digits(300, 0)
    rows = list(range(15))
    targets, info, ref = _targets(tmp_path, train, held_out, rows)
    held_wrong = 1.0 - ref["accuracy"]
    assert 0.1 < info["estimate_rank"] < 0.9
    assert np.median(targets) < 0.1 * np.log(10)
    assert np.mean(targets > np.log(10)) <= held_wrong + 0.15
    assert np.mean(targets) <= 4 * ref["loss"]


def test_default_mode_without_held_out_data_refuses_and_leaves_the_model(tmp_path):
    """The counterfactual targets need held-out data: without it the request is refused (it used to fall back to
    'flip' silently, which on a causal LM recorded deletions for updates that did nothing)."""
    import torch

    ds = text_cls_dataset(24)
    split = forget_retain_split(ds, forget=[0, 1, 2, 3], id_column="id")
    trainer = IAUTrainer(tiny_bert(), args=make_args(tmp_path), data_collator=default_data_collator)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(ValueError, match="needs held-out data"):
        trainer.unlearn(split["forget"], split["retain"])
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert not trainer.unlearning_history


def test_explicit_loss_saturation_targets_are_rank_matched(tmp_path):
    """The forget example with the lowest loss gets the lowest held-out quantile."""
    from hf_iau.engine import Engine
    from hf_iau.losses import evaluate_losses

    train = learnable(48, seed=0)
    held_out = learnable(24, seed=1)
    trainer = trained(tmp_path, train, held_out, unlearn_targets="held_out_quantile", unlearn_steps=1)
    split = forget_retain_split(train, forget=list(range(8)), id_column="id")
    forget = trainer._model_columns(split["forget"])
    losses = evaluate_losses(trainer.model.eval(), Engine(trainer).batches(forget, list(range(8))))["loss"].numpy()
    targets, _, reference = _spy_targets(trainer, split)
    assert len(reference["losses"]) == 24
    assert np.all(np.diff(targets[np.argsort(losses, kind="stable")]) >= 0)
    assert targets.min() >= min(reference["losses"]) and targets.max() <= max(reference["losses"])


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_stop_tolerance_is_validated(tmp_path, value):
    with pytest.raises(ValueError, match="unlearn_stop_tolerance"):
        make_args(tmp_path, unlearn_stop_tolerance=value)


def _jump_only(trainer, split, lam, monkeypatch, **options):
    """(weight change, metrics) of a request whose steps are skipped: only the influence step moves the weights."""
    import torch

    from hf_iau.methods.iau import IAURun

    monkeypatch.setattr(IAURun, "loop", lambda self, targets, restore=None: ([], self.opts["unlearn_learning_rate"], 0, "max_steps"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    m = trainer.unlearn(split["forget"], split["retain"], unlearn_influence_step=lam, allow_noop=True,
                        unlearn_target_sample_size=10_000, **options).metrics  # S = every retained row: the same c each time
    delta = {n: (p.detach() - before[n]).clone() for n, p in trainer.model.named_parameters()}
    with torch.no_grad():
        for n, p in trainer.model.named_parameters():
            p.copy_(before[n])
    return delta, m


def test_influence_step_takes_lambda_of_the_estimated_removal_step(tmp_path, monkeypatch):
    """λ·c·P·G_F, linear in λ, raises the forget loss, costs no gradient pass; λ = 0 leaves the weights. The whole
    step (λ = 1) leaves the retained rows above the held-out loss here, so it is halved to exactly the λ = 0.5 step;
    with a held-out level no step can keep, no step is taken (weights restored exactly)."""
    import torch

    from hf_iau.methods.iau import IAURun

    flip = list(range(8))
    train = learnable(96, seed=0, flip=flip)
    trainer = trained(tmp_path, train, learnable(24, seed=1), epochs=4)
    split = forget_retain_split(train, forget=flip, id_column="id")
    zero, m0 = _jump_only(trainer, split, 0.0, monkeypatch)
    quarter, m25 = _jump_only(trainer, split, 0.25, monkeypatch)
    half, m5 = _jump_only(trainer, split, 0.5, monkeypatch)
    full, m1 = _jump_only(trainer, split, 1.0, monkeypatch)
    assert all(float(d.abs().max()) == 0.0 for d in zero.values()) and "influence_step_norm" not in m0
    assert sum(float(d.abs().sum()) for d in half.values()) > 0
    assert (m25["influence_step_lambda"], m5["influence_step_lambda"], m1["influence_step_lambda"]) == (0.25, 0.5, 0.5)
    for n in half:
        torch.testing.assert_close(half[n], 2 * quarter[n], rtol=1e-4, atol=1e-6)  # float32 p + c·d − p
        torch.testing.assert_close(full[n], half[n], rtol=0, atol=0)
    assert m5["influence_step_norm"] == pytest.approx(2 * m25["influence_step_norm"], rel=1e-5)
    assert m5["forget_loss_after"] > m5["forget_loss_before"] and m0["forget_loss_after"] == m0["forget_loss_before"]
    # the first request measured F̂ on its rows (kept by the trainer); the later ones reuse it, whatever their λ, in
    # as many plain passes
    assert m5["example_gradient_passes"] == m25["example_gradient_passes"] == m0["example_gradient_passes"]
    assert m5["retain_loss_after"] <= m5["held_out_loss"] < m5["retain_loss_after"] + 10  # the guard's condition

    original = IAURun.held_out_losses

    def unreachable_level(self):
        out = original(self)
        self.req.held_out_loss = -1.0  # no step keeps the retain loss below it
        return out

    monkeypatch.setattr(IAURun, "held_out_losses", unreachable_level)
    none, m = _jump_only(trainer, split, 0.5, monkeypatch)
    assert all(float(d.abs().max()) == 0.0 for d in none.values())
    assert m["influence_step_lambda"] == 0.0 and m["example_forward_passes"] > m0["example_forward_passes"]


def test_kfac_influence_step_moves_the_weights_by_lambda_times_its_own_scale_and_direction(tmp_path, monkeypatch):
    """unlearn_influence_curvature='kfac': the weights move by λ·c_K·P_K·G_F, the estimate's K-FAC direction and
    scale (not the targets' c); the targets are the default's. Refused with unlearn_leverage, naming the field."""
    import torch

    from hf_iau.methods import iau as iau_module

    flip = list(range(8))
    train = learnable(96, seed=0, flip=flip)
    trainer = trained(tmp_path, train, learnable(24, seed=1), epochs=4)
    split = forget_retain_split(train, forget=flip, id_column="id")
    seen = []
    real = iau_module.estimate_targets

    def spy(*a, **kw):
        est = real(*a, **kw)
        seen.append((kw.get("step_kind"), [d.clone() for d in est.direction], dict(est.diagnostics), est.targets.copy()))
        return est

    monkeypatch.setattr(iau_module, "estimate_targets", spy)
    delta, m = _jump_only(trainer, split, 0.25, monkeypatch, unlearn_influence_curvature="kfac")
    _, m_diag = _jump_only(trainer, split, 0.25, monkeypatch)
    (kind, direction, info, targets), (_, _, info_diag, targets_diag) = seen
    assert kind == "kfac" and info["step_kfac"] == 1.0 and m["influence_step_lambda"] == 0.25
    assert info["step_scale"] != info["scale"] == pytest.approx(info_diag["scale"])
    np.testing.assert_allclose(targets, targets_diag, rtol=1e-9)
    c = 0.25 * info["step_scale"]
    for (n, p), d in zip(trainer.model.named_parameters(), direction):
        torch.testing.assert_close(delta[n], c * d, rtol=1e-4, atol=1e-6)
    assert m["forget_loss_after"] > m["forget_loss_before"]
    with pytest.raises(ValueError, match="unlearn_influence_curvature"):
        make_args(tmp_path, unlearn_influence_curvature="kfac", unlearn_leverage=True)
    with pytest.raises(ValueError, match="unlearn_influence_curvature"):
        make_args(tmp_path, unlearn_influence_curvature="ekfac")


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_influence_step_is_validated(tmp_path, value):
    with pytest.raises(ValueError, match="unlearn_influence_step"):
        make_args(tmp_path, unlearn_influence_step=value)


def test_rows_at_their_target_leave_the_backward_pass_without_changing_the_update(tmp_path, monkeypatch):
    """Rows that reached their target are checked forward only: fewer gradient passes, the same steps and the same
    weights as pushing every row with the mask (the old path, forced here). SGD: a batch of other rows changes the
    forward by float rounding, which Adam's normalisation would amplify in near-zero gradient coordinates."""
    import torch

    from hf_iau.methods.iau import IAURun

    flip = list(range(8))
    train = learnable(96, seed=0, flip=flip)
    held_out = learnable(24, seed=1)
    kw = dict(epochs=4, unlearn_learning_rate=0.1, unlearn_optimizer="sgd", unlearn_steps=12, unlearn_stop="fixed")
    runs = {}
    for name in ("pruned", "every_row"):
        trainer = trained(tmp_path / name, train, held_out, **kw)
        split = forget_retain_split(train, forget=flip, id_column="id")
        if name == "every_row":
            monkeypatch.setattr(IAURun, "_rows_to_push",
                            lambda self, targets, pushed: (list(range(self.n_forget)), np.full(self.n_forget, np.nan)))
        m = trainer.unlearn(split["forget"], split["retain"]).metrics
        runs[name] = (m, [p.detach().clone() for p in trainer.model.parameters()])
    (mp, wp), (me, we) = runs["pruned"], runs["every_row"]
    assert mp["steps"] == me["steps"] == 12
    assert mp["forget_active_fraction_final"] < 1.0  # some rows reached their target, so some left the pass
    saved = me["example_gradient_passes"] - mp["example_gradient_passes"]
    assert saved > 0 and mp["example_forward_passes"] > me["example_forward_passes"]
    assert max(float((a - b).abs().max()) for a, b in zip(wp, we)) < 1e-5


def test_mean_target_stop_fires_at_the_first_step_the_set_reaches_its_mean_target(tmp_path, monkeypatch):
    """unlearn_stop='mean_target': the loop stops at the first step where the forget set's mean loss (every row: the
    pushed ones from the gradient pass, the rest from the forward check) is within 1% of the mean target; the losses
    it decides on are the final model's, and the per-row rule would have gone on (influence step off: the steps do the
    work)."""
    from hf_iau.engine import Engine
    from hf_iau.methods.iau import IAURun

    flip = list(range(8))
    train = learnable(96, seed=0, flip=flip)
    held_out = learnable(24, seed=1)
    seen = []
    stop = IAURun._stop

    def spy(self, targets, f, losses):
        out = stop(self, targets, f, losses)
        seen.append((losses.copy(), targets.targets.copy(), f.active, out))
        return out

    monkeypatch.setattr(IAURun, "_stop", spy)
    runs = {}
    for rule in ("mean_target", "targets"):
        seen.clear()
        trainer = trained(tmp_path / rule, train, held_out, epochs=4, unlearn_learning_rate=1e-2, unlearn_steps=40)
        split = forget_retain_split(train, forget=flip, id_column="id")
        m = trainer.unlearn(split["forget"], split["retain"], unlearn_stop=rule, unlearn_influence_step=0.0).metrics
        runs[rule] = (m, list(seen), trainer, split)
    m, seen_m, trainer, split = runs["mean_target"]
    assert m["stopped_mean_target_reached"] == 1.0 and m["stopped_targets_reached"] == 0.0
    means = [(loss.mean(), t.mean()) for loss, t, _, _ in seen_m]
    assert means[-1][0] >= 0.99 * means[-1][1]
    assert all(lo < 0.99 * t for lo, t in means[:-1])
    assert 0 < m["steps"] == len(seen_m) - 1 < runs["targets"][0]["steps"]
    final = Engine(trainer).per_example(trainer._model_columns(split["forget"]), range(8))["loss"]
    np.testing.assert_allclose(seen_m[-1][0], final, rtol=1e-4, atol=1e-5)


def test_retain_restore_descends_only_on_retained_rows_whose_loss_rose(tmp_path, monkeypatch):
    """unlearn_retain_restore: the retain term's mask is 1 exactly where a sampled row's loss is above its loss
    before the request (measured here independently, on the untouched model) by more than 1%, and the levels the loop
    gets are those losses for every row the steps sample."""
    from hf_iau.engine import Engine
    from hf_iau.methods.iau import IAURun

    flip = list(range(8))
    train = learnable(96, seed=0, flip=flip)
    held_out = learnable(24, seed=1)
    calls = []
    risen = IAURun._risen

    def spy(restore):
        inner = risen(restore)

        def mask(bl, ix):
            m = inner(bl, ix)
            calls.append((list(ix), bl.per_example.detach().double().numpy().copy(), m.detach().numpy().copy()))
            return m

        return mask

    monkeypatch.setattr(IAURun, "_risen", staticmethod(spy))
    levels = {}
    loop = IAURun.loop

    def loop_spy(self, targets, restore=None):
        levels.update(restore or {})
        return loop(self, targets, restore)

    monkeypatch.setattr(IAURun, "loop", loop_spy)
    runs = {}
    for restore in (False, True):
        trainer = trained(tmp_path / str(restore), train, held_out, epochs=4, unlearn_learning_rate=1e-2,
                          unlearn_steps=6, unlearn_stop="fixed", unlearn_retain_sample_size=16)
        split = forget_retain_split(train, forget=flip, id_column="id")
        retain = trainer._model_columns(split["retain"])
        before = Engine(trainer).per_example(retain, range(len(retain)))["loss"]
        runs[restore] = (trainer.unlearn(split["forget"], split["retain"], unlearn_retain_restore=restore).metrics, before)
    (m_off, _), (m_on, before) = runs[False], runs[True]
    assert len(calls) >= 6
    for ix, loss, m in calls:
        np.testing.assert_array_equal(m > 0.5, loss > before[ix] * 1.01)
    masks = np.concatenate([m for _, _, m in calls])
    assert 0 < masks.sum() < len(masks)  # some sampled rows rose, some did not
    sampled = {i for ix, _, _ in calls for i in ix}
    assert set(levels) == sampled
    np.testing.assert_allclose([levels[i] for i in sorted(sampled)], before[sorted(sampled)], rtol=1e-5, atol=1e-6)
    assert m_on["forget_loss_after"] != m_off["forget_loss_after"]


def test_target_group_column_draws_the_calibration_sample_as_whole_entities(tmp_path, monkeypatch):
    """unlearn_target_group_column: the rows calibrating the targets are whole entities (every row of each entity
    drawn, at least unlearn_target_sample_size of them), each entity removed as its own calibration group, the same for
    the same request on a second model; a missing column is refused naming the field, the weights left as they were."""
    import torch

    from hf_iau.methods import iau as iau_module

    train = learnable(96, seed=0, flip=list(range(8)))
    train = train.add_column("author", [i % 12 for i in range(96)])  # 12 entities of 8 rows
    held_out = learnable(24, seed=1)
    split = forget_retain_split(train, forget=list(range(8)), id_column="id")
    seen = []
    estimate = iau_module.estimate_targets

    def spy(engine, forget, retain, sample_rows, *a, **kw):
        seen.append((list(sample_rows), kw.get("groups")))
        return estimate(engine, forget, retain, sample_rows, *a, **kw)

    monkeypatch.setattr(iau_module, "estimate_targets", spy)
    opts = dict(unlearn_target_group_column="author", unlearn_target_sample_size=20, unlearn_steps=1,
                unlearn_stop="fixed", allow_noop=True)
    for run in range(2):
        trainer = trained(tmp_path / str(run), train, held_out, epochs=2)
        if run == 0:
            before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
            with pytest.raises(ValueError, match="unlearn_target_group_column='writer'"):
                trainer.unlearn(split["forget"], split["retain"], unlearn_target_group_column="writer")
            assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
        trainer.unlearn(split["forget"], split["retain"], **opts)
    assert len(seen) == 2 and seen[0] == seen[1]
    rows, groups = seen[0]
    authors = split["retain"]["author"]
    assert [i for g in groups for i in g] == rows and len(groups) >= 3
    for g in groups:  # one group per entity, with every retained row of that entity
        assert len({authors[i] for i in g}) == 1 and len(g) == authors.count(authors[g[0]])
    assert 20 <= len(rows) < 20 + 8 and len(groups) < len(set(authors))


def test_landing_mask_pushes_short_rows_and_pulls_back_rows_past_their_target():
    """Targets with ``land``: +1 (ascent) for a row short of its target by more than 1%, −1 (descent) for one past
    it by more than 1%, 0 within; without ``land`` a row past its target is left alone. ``off`` counts both."""
    import torch

    from hf_iau.losses import BatchLoss
    from hf_iau.methods.iau import Targets

    losses = torch.tensor([0.5, 2.01, 4.0, 0.995])
    bl = BatchLoss(losses.clone(), torch.ones(4))
    goal = np.array([1.0, 2.0, 3.0, 1.0])
    landing, plain = Targets("loss", goal, land=True), Targets("loss", goal)
    assert landing.mask(bl, [0, 1, 2, 3]).tolist() == [1.0, 0.0, -1.0, 0.0]
    assert plain.mask(bl, [0, 1, 2, 3]).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert landing.off(losses.numpy()).tolist() == [True, False, True, False]
    assert plain.off(losses.numpy()).tolist() == [True, False, False, False]
    assert landing.mask(bl, [3, 2, 1, 0]).tolist() == [1.0, 1.0, -1.0, 0.0]  # rows index the targets


def test_landing_ends_the_forget_rows_nearer_their_targets(tmp_path):
    """unlearn_land=True on mislabelled rows: fewer rows end past their target and the mean relative distance to the
    targets shrinks, against the same request without it (same targets: landing changes only the steps)."""
    flip = list(range(8))
    train = learnable(96, seed=0, flip=flip)
    held_out = learnable(24, seed=1)
    split = forget_retain_split(train, forget=flip, id_column="id")
    out = {}
    for land in (False, True):
        trainer = trained(tmp_path / str(land), train, held_out, epochs=30, unlearn_land=land, unlearn_neighbour_targets=False)
        targets, _, _ = _spy_targets(trainer, split)  # runs the request
        out[land] = (targets, _final_losses(trainer, split["forget"]))
    (t0, f0), (t1, f1) = out[False], out[True]
    assert np.allclose(t0, t1)
    dist = {k: float(np.mean(np.abs(f - t) / t)) for k, (t, f) in out.items()}
    assert dist[True] < 0.5 * dist[False]
    assert np.mean(f1 > t1 * 1.1) < np.mean(f0 > t0 * 1.1)


def _final_losses(trainer, forget) -> np.ndarray:
    """Per-row loss of ``forget`` under the trainer's current weights."""
    import torch

    from hf_iau.losses import batch_losses

    model = trainer.model.eval()
    batch = default_data_collator([{k: forget[i][k] for k in ("input_ids", "attention_mask", "label")} for i in range(len(forget))])
    with torch.no_grad():
        return batch_losses(model, batch).per_example.double().numpy()


@pytest.mark.parametrize("targets", ["none", "flip"])
def test_landing_without_loss_targets_is_refused_naming_the_field(tmp_path, targets):
    """unlearn_land needs per-row loss targets: with unlearn_targets 'none' or 'flip' the config and a per-call
    override are refused, naming unlearn_land, before anything changes."""
    import torch

    with pytest.raises(ValueError, match="unlearn_land"):
        IAUConfig(output_dir=str(tmp_path), use_cpu=True, unlearn_land=True, unlearn_targets=targets)
    ds = text_cls_dataset(24)
    split = forget_retain_split(ds, forget=[0, 1, 2, 3], id_column="id")
    trainer = IAUTrainer(tiny_bert(), args=make_args(tmp_path, unlearn_targets=targets), data_collator=default_data_collator)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(ValueError, match="unlearn_land"):
        trainer.unlearn(split["forget"], split["retain"], unlearn_land=True)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_flipped_and_neighbour_levels_share_one_pass_over_the_held_out_sample(tmp_path, monkeypatch):
    """With both classifier levels on, the held-out sample's log-probs are computed once (with the input features)
    and counted once: one class_log_probs call on the held-out data, one on the forget set."""
    from hf_iau import counterfactual
    from hf_iau.methods import iau as iau_module

    calls = []
    real = counterfactual.class_log_probs

    def counted(engine, dataset, rows, features=False):
        calls.append((len(list(rows)), features))
        return real(engine, dataset, rows, features=features)

    monkeypatch.setattr(iau_module, "class_log_probs", counted)
    flip = list(range(8))
    train = learnable(96, seed=0, flip=flip)
    trainer = trained(tmp_path, train, learnable(24, seed=1), epochs=30, unlearn_flipped_targets=True,
                      unlearn_neighbour_targets=True, unlearn_steps=1)
    split = forget_retain_split(train, forget=flip, id_column="id")
    trainer.unlearn(split["forget"], split["retain"], allow_noop=True)
    assert calls == [(24, True), (8, True)]


def test_following_the_held_out_losses_moves_every_target_by_their_change(tmp_path):
    """unlearn_follow_held_out: at every step 32 seeded held-out rows are measured again, and every target moves by the
    change of their mean loss since the request began (one shift for all rows, recorded per step). Here the ascent on
    the wrong labels lowers the held-out losses (as removing them does), so the targets fall; the request before the
    first shift is the same as without."""
    import torch

    from hf_iau.methods.iau import FOLLOW_ROWS, Targets

    t = Targets("loss", np.array([1.0, 2.0]))
    t.shift(0.5)
    t.shift(-0.25)  # from the targets at the start, not cumulative
    assert np.allclose(t.targets, [0.75, 1.75]) and np.allclose(t.base, [1.0, 2.0]) and t.by == -0.25
    t.shift(-1.5)
    assert np.allclose(t.targets, [0.0, 0.5])

    flip = list(range(8))
    train, held_out = learnable(96, seed=0, flip=flip), learnable(48, seed=1)
    split = forget_retain_split(train, forget=flip, id_column="id")
    trainer = trained(tmp_path, train, held_out, epochs=30, unlearn_stop="fixed", unlearn_steps=4)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    plain = trainer.unlearn(split["forget"], split["retain"], allow_noop=True, unlearn_follow_held_out=False)
    trainer.model.load_state_dict(before)
    follow = trainer.unlearn(split["forget"], split["retain"], allow_noop=True)  # the default

    shifts = [h["target_shift"] for h in follow.history if "target_shift" in h]
    assert len(shifts) == 4 and "target_shift" not in plain.history[0]
    assert shifts[-1] < -0.05 and follow.metrics["target_shift"] == pytest.approx(shifts[-1])
    # every target moved by the shift, clipped at 0 (a loss is never below it)
    assert plain.metrics["target_mean"] + shifts[-1] - 1e-9 <= follow.metrics["target_mean"] < plain.metrics["target_mean"]
    # each step re-measures the followed rows, forward only
    assert follow.metrics["example_forward_passes"] - plain.metrics["example_forward_passes"] == 4 * FOLLOW_ROWS
    assert follow.metrics["example_gradient_passes"] == plain.metrics["example_gradient_passes"]
    # the first step's masks were set before any shift: the same first update
    assert follow.history[0]["forget_loss_active_rows"] == pytest.approx(plain.history[0]["forget_loss_active_rows"])


@pytest.mark.parametrize("mode, follows", [("held_out_quantile", True), ("flip", False), ("none", False)])
def test_only_loss_targets_follow_the_held_out_losses(tmp_path, mode, follows):
    """unlearn_follow_held_out moves loss targets (counterfactual, held_out_quantile); 'flip' and 'none' have none to
    move, so no held-out row is re-measured."""
    flip = list(range(8))
    train, held_out = learnable(64, seed=0, flip=flip), learnable(32, seed=1)
    split = forget_retain_split(train, forget=flip, id_column="id")
    trainer = trained(tmp_path, train, held_out, epochs=10, unlearn_stop="fixed", unlearn_steps=2, unlearn_targets=mode)
    r = trainer.unlearn(split["forget"], split["retain"], allow_noop=True)
    assert all(("target_shift" in h) == follows for h in r.history)
    assert ("target_shift" in r.metrics) == follows


def _retain_rows(trainer, forget, retain, steps, **options):
    """The descent term's retained rows of ``steps`` for a request with ``options`` (no weight changes), and the
    request's uniform samples of the same steps."""
    from hf_iau.lifecycle import Request
    from hf_iau.methods.iau import IAURun, iau_options

    opts = iau_options(trainer.args, **options)
    req = Request("iau", trainer, forget, retain, retain_weight=opts["unlearn_retain_weight"])
    run = IAURun(req, opts)
    return [run.retain_rows(s) for s in steps], [req.retain_sample(opts["unlearn_retain_sample_size"], s) for s in steps]


def test_the_retain_label_share_samples_the_forget_rows_labels(tmp_path):
    """unlearn_retain_label_share: a share of each step's retain sample carries a forget row's label (the rest is
    uniform), the same rows on a second request with the same seed, other rows at another step; 0 is the uniform
    sample, and a request whose labels no retained row carries (a whole class) gets the uniform sample too."""
    train = learnable(96, seed=0)
    labels = np.asarray(train["label"])
    trainer = trained(tmp_path, train, None, epochs=1, unlearn_retain_sample_size=8)
    forget_rows = np.flatnonzero(labels == 0)[:6].tolist()
    split = forget_retain_split(train, forget=forget_rows, id_column="id")
    retain_labels = np.asarray(split["retain"]["label"])

    half, uniform = _retain_rows(trainer, split["forget"], split["retain"], [0, 1, 2], unlearn_retain_label_share=0.5)
    again, _ = _retain_rows(trainer, split["forget"], split["retain"], [0, 1, 2], unlearn_retain_label_share=0.5)
    assert half == again and half[0] != half[1]
    assert all(len(rows) == len(set(rows)) == 8 for rows in half)
    assert all((retain_labels[rows] == 0).sum() >= 4 for rows in half)  # 4 drawn among the label-0 rows + 4 uniform
    assert np.mean([(retain_labels[rows] == 0).mean() for rows in uniform]) < 0.5
    whole, _ = _retain_rows(trainer, split["forget"], split["retain"], [0, 1], unlearn_retain_label_share=1.0)
    assert all((retain_labels[rows] == 0).all() for rows in whole)
    off, uniform_off = _retain_rows(trainer, split["forget"], split["retain"], [0, 1, 2])
    assert off == uniform_off == uniform

    class0 = forget_retain_split(train, forget=np.flatnonzero(labels == 0).tolist(), id_column="id")
    rows, uniform0 = _retain_rows(trainer, class0["forget"], class0["retain"], [0, 1], unlearn_retain_label_share=0.5)
    assert rows == uniform0


def test_the_retain_label_share_changes_a_classifier_request_and_leaves_a_language_model_alone(tmp_path):
    """The option changes what a classifier's descent term sees, so its update; a causal LM's labels are tokens, so
    its request is bitwise today's. An out-of-range share is refused naming the field."""
    import torch
    from tiny import lm_dataset, tiny_gpt2

    flip = list(range(8))
    train, held_out = learnable(96, seed=0, flip=flip), learnable(32, seed=1)
    split = forget_retain_split(train, forget=flip, id_column="id")
    trainer = trained(tmp_path, train, held_out, epochs=10, unlearn_stop="fixed", unlearn_steps=2,
                      unlearn_retain_sample_size=8)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.unlearn(split["forget"], split["retain"], allow_noop=True)
    uniform = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.model.load_state_dict(before)
    trainer.unlearn(split["forget"], split["retain"], allow_noop=True, unlearn_retain_label_share=0.5)
    assert max((v - uniform[k]).abs().max().item() for k, v in trainer.model.state_dict().items()) > 1e-6

    lm = lm_dataset(24)
    lm_split = forget_retain_split(lm, forget=[0, 1, 2], id_column="id")
    args = make_args(tmp_path / "lm", unlearn_targets="none", unlearn_steps=2, unlearn_retain_sample_size=4)
    weights = []
    for share in (0.0, 0.5):
        tr = IAUTrainer(tiny_gpt2(), args=args, data_collator=default_data_collator)
        tr.unlearn(lm_split["forget"], lm_split["retain"], unlearn_retain_label_share=share)
        weights.append([p.detach().clone() for p in tr.model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))
    with pytest.raises(ValueError, match="unlearn_retain_label_share"):
        make_args(tmp_path, unlearn_retain_label_share=1.5)
