"""benchmarks/removal.py bookkeeping on hand-made measurements (no model is trained)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import removal  # noqa: E402


def _m(forget: float, test: float, auc: float, margins: list[float]) -> dict:
    return {"forget_metric": forget, "test_metric": test, "mia_auc": auc,
            "margins": {"forget": margins[:1], "retain": margins[1:2], "test": margins[2:]}}


GOLDS = [
    {"seed": 0, "passes": 100.0, "wall_time_s": 10.0, "test": _m(0.0, 0.90, 0.10, [-1.0, 2.0, 1.0])},
    {"seed": 1, "passes": 100.0, "wall_time_s": 12.0, "test": _m(0.1, 0.90, 0.10, [-2.0, 2.2, 1.5])},
    {"seed": 2, "passes": 100.0, "wall_time_s": 14.0, "test": _m(0.2, 0.90, 0.10, [-3.0, 1.8, 2.0])},
]


def test_floor_is_the_mean_pairwise_retrain_gap():
    fl = removal.floor(GOLDS)
    # pairwise |Δforget| = 0.1, 0.2, 0.1 (test and AUC equal) → gaps 0.1/3, 0.2/3, 0.1/3
    assert fl["pairs"] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1 / 3])
    assert fl["gap"] == pytest.approx(0.4 / 9)
    assert fl["gap_max"] == pytest.approx(0.2 / 3)
    assert fl["wall_time_s"] == pytest.approx(12.0)
    # leave-one-out KLoM on the forget example: retrain 0 (-1) vs others (-2, -3): μ -2.5, σ² 0.5 + 0.5²
    loo0 = (-1 + 2.5) ** 2 / (2 * 0.75)
    loo1 = (-2 + 2.0) ** 2 / (2 * 2.25)
    assert fl["klom"]["forget_median"] == pytest.approx((loo0 + loo1 + loo0) / 3)


def test_grade_against_the_retrain_mean_in_floor_units():
    fl = removal.floor(GOLDS)
    runs = [{"passes": 10.0, "wall_time_s": 3.0, "steps": 4, "test": _m(0.4, 0.80, 0.10, [-2.0, 2.0, 1.5])},
            {"passes": 30.0, "wall_time_s": 5.0, "steps": 6, "test": _m(0.1, 0.90, 0.10, [-2.0, 2.0, 1.5])}]
    g = removal.grade(runs, GOLDS, fl)
    # retrain mean: forget 0.1, test 0.9, auc 0.1 → gaps (0.3 + 0.1)/3 and 0
    assert g["gaps"] == pytest.approx([0.4 / 3, 0.0])
    assert g["gap"] == pytest.approx(0.2 / 3)
    assert g["x_floor"] == pytest.approx((0.2 / 3) / (0.4 / 9))
    assert g["passes_pct_of_retrain"] == pytest.approx(20.0)
    assert g["wall_pct_of_retrain"] == pytest.approx(100 * 4.0 / 12.0)
    assert "wall_time_steps_s" not in g  # the breakdown is reported only when every run has it
    timed = [dict(r, wall_time_estimate_s=e, wall_time_steps_s=t) for r, e, t in zip(runs, (1.0, 2.0), (1.5, 2.5))]
    g2 = removal.grade(timed, GOLDS, fl)
    assert (g2["wall_time_estimate_s"], g2["wall_time_steps_s"]) == (1.5, 2.0)
    # forget margin -2 against each pair of retrains: {-2,-3}: 0.5²/(2·0.75); {-1,-3}: 0; {-1,-2}: 0.5²/(2·0.75)
    assert g["klom"]["forget_median"] == pytest.approx(2 * 0.25 / 1.5 / 3)
    assert np.isfinite(g["klom_seeds"]["rest_p95"])


def test_forget_loss_lands_in_units_of_the_retrains_spread():
    """Retrain forget losses 1, 2, 4: mean 7/3, pairwise spread (1 + 3 + 2)/3 = 2; a run at 3 is 1/3 of it away."""
    golds = [{**g, "test": {**g["test"], "forget_loss": x}} for g, x in zip(GOLDS, (1.0, 2.0, 4.0))]
    fl = removal.floor(golds)
    assert fl["forget_loss"] == pytest.approx(7 / 3) and fl["forget_loss_floor"] == pytest.approx(2.0)
    runs = [{"test": {**_m(0.1, 0.9, 0.1, [-2.0, 2.0, 1.5]), "forget_loss": x}} for x in (2.0, 4.0)]
    g = removal.grade(runs, golds, fl)
    assert g["forget_loss"] == pytest.approx(3.0) and g["forget_loss_x_floor"] == pytest.approx((3 - 7 / 3) / 2)
    assert removal._landing(g) == "3.000 (0.3×)"


def test_store_appends_and_skips_what_it_has(tmp_path):
    store = removal.Store(tmp_path / "runs.jsonl")
    calls = []
    key = dict(scenario="s", quick=True, data_seed=0, method="iau", seed=1, learning_rate=None)
    row = store.run(lambda: calls.append(1) or {"passes": 5.0, "wall_time_s": 1.0}, print, **key)
    again = removal.Store(tmp_path / "runs.jsonl").run(lambda: calls.append(1) or {}, print, **key)
    assert calls == [1] and again == row and again["passes"] == 5.0


def test_model_init_takes_its_seed_from_the_caller():
    """Issue 17: the scenarios' model_init used to call torch.manual_seed(<scenario seed>) itself, so the
    retrain's args.seed never reached the initial weights; now set_seed(args.seed) decides them."""
    import torch
    from transformers import set_seed

    import scenarios

    def weights(seed: int) -> torch.Tensor:
        set_seed(seed)
        return torch.cat([p.detach().flatten() for p in scenarios._cnn().parameters()])

    assert torch.equal(weights(1), weights(1))
    assert not torch.equal(weights(1), weights(2))


def test_the_cached_original_keeps_the_curvature_training_measured(tmp_path, capsys):
    """The scenario cache keeps IAUTrainer.train()'s curvature beside the weights; a cache without it is trained
    again once and the curvature kept only when the weights come out bitwise equal; trainer(saved_curvature=True)
    hands it to requests."""
    import torch
    from datasets import Dataset
    from safetensors.torch import save_model

    import scenarios
    from hf_iau.curvature import FILE, Curvature

    rng = np.random.default_rng(0)
    train = Dataset.from_dict({"pixel_values": rng.random((24, 1, 14, 14), dtype=np.float32).tolist(),
                               "label": rng.integers(0, 10, 24).tolist()})
    args = scenarios._args(str(tmp_path), 3, num_train_epochs=2, per_device_train_batch_size=8, learning_rate=1e-3)
    model, _, passes = scenarios._train(scenarios._cnn, args, train, None, None)
    assert passes == 48
    first = Curvature.load(str(tmp_path), model)  # bound to the cached weights, else CurvatureError
    assert first is not None and first.meta["source"] == "training" and first.meta["steps"] == "3"
    assert sum(float(f.sum()) for f in first.fisher.values()) > 0

    assert (tmp_path / scenarios.PER_EXAMPLE / FILE).exists()
    (tmp_path / FILE).unlink()  # a cache from before the curvature was kept: trained again, same weights
    again, _, _ = scenarios._train(scenarios._cnn, args, train, None, None)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    second = Curvature.load(str(tmp_path), again)
    assert all(torch.equal(first.fisher[k], second.fisher[k]) for k in first.fisher)

    s = scenarios.Scenario("toy", 3, True, again, args, train, train.select([0]), train.select(range(1, 24)),
                           train, train, scenarios._cnn)
    assert s.trainer(saved_curvature="batch").curvature is s.curvatures["batch"]
    assert s.trainer(saved_curvature="per_example").curvature.meta["estimator"] == "per_example"
    assert s.trainer().curvature is None
    final = s.trainer(saved_curvature="final").curvature  # eval mode, per example, over every training row
    assert final.meta == {"source": "final_eval", "rows": "24"} and (tmp_path / "final" / FILE).exists()
    again.eval()
    name, weight = next((n, p) for n, p in again.named_parameters() if p.dim() == 4)
    ref = torch.zeros_like(weight)
    for i in range(24):
        again.zero_grad()
        row = train[i]
        again(pixel_values=torch.tensor([row["pixel_values"]]), labels=torch.tensor([row["label"]])).loss.backward()
        ref += weight.grad.pow(2)
    torch.testing.assert_close(final.fisher[name], ref, rtol=1e-4, atol=1e-9 * float(ref.max()))

    (tmp_path / FILE).unlink()  # cached weights that training does not reproduce: no curvature is kept for them
    (tmp_path / scenarios.PER_EXAMPLE / FILE).unlink()
    with torch.no_grad():
        next(again.parameters()).add_(1.0)
    save_model(again, str(tmp_path / "original.safetensors"))
    kept, _, _ = scenarios._train(scenarios._cnn, args, train, None, None)
    assert torch.equal(next(kept.parameters()), next(again.parameters()))
    assert not (tmp_path / FILE).exists() and "did not reproduce" in capsys.readouterr().out
    assert not (tmp_path / scenarios.PER_EXAMPLE / FILE).exists()
    with pytest.raises(ValueError, match="saved_curvature"):
        scenarios.Scenario("toy", 3, True, kept, args, train, train.select([0]), train.select(range(1, 24)),
                           train, train, scenarios._cnn).trainer(saved_curvature="batch")


def test_target_quality_grades_targets_against_each_rows_retrained_losses():
    """target_quality.grade: mean target and retrains' mean, Spearman ρ against the row means, MAE, and the shares of
    rows below every retrain / above every retrain — by hand on 4 rows and 2 retrains."""
    import target_quality

    retrained = np.array([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 5.0, 6.0]])  # row means 2, 2, 4, 5
    targets = np.array([0.5, 2.0, 6.0, 5.0])
    g = target_quality.grade(targets, retrained)
    assert g["target_mean"] == pytest.approx(3.375) and g["retrain_mean"] == pytest.approx(3.25)
    assert g["mae"] == pytest.approx((1.5 + 0.0 + 2.0 + 0.0) / 4)
    assert g["under"] == pytest.approx(0.25) and g["over"] == pytest.approx(0.25)  # row 0 below both; row 2 above both
    from scipy.stats import spearmanr

    assert g["spearman"] == pytest.approx(spearmanr(targets, retrained.mean(0)).statistic)
    assert target_quality.options("nbr=1:flipt=0") == {"unlearn_neighbour_targets": True, "unlearn_flipped_targets": False}
    assert target_quality.options("default") == {}


def test_oracle_targets_replace_the_estimate_inside_the_block_only(tmp_path):
    """oracle_targets: inside the block a request's loss targets are the given per-row values (the stop and the
    reported target mean follow them); outside it the estimate is back."""
    from transformers import default_data_collator

    import oracle_targets
    from hf_iau import IAUConfig, IAUTrainer
    from hf_iau.data import forget_retain_split
    from hf_iau.methods import iau
    from tiny import text_cls_dataset, tiny_bert

    train, held = text_cls_dataset(24), text_cls_dataset(12, seed=1)
    split = forget_retain_split(train, forget=[0, 1, 2, 3], id_column="id")
    args = IAUConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], unlearn_steps=2, seed=0)
    resolve = iau.IAURun.resolve_targets

    def request(**kw):
        trainer = IAUTrainer(tiny_bert(), args=args, train_dataset=train, eval_dataset=held, data_collator=default_data_collator)
        return trainer.unlearn(split["forget"], split["retain"], allow_noop=True, **kw).metrics

    oracle = np.array([3.0, 3.5, 4.0, 4.5])
    with oracle_targets.oracle_targets(oracle):
        inside = request(unlearn_follow_held_out=False)
        landing = request(unlearn_land=True, unlearn_follow_held_out=False)
    assert iau.IAURun.resolve_targets is resolve
    outside = request(unlearn_follow_held_out=False)
    assert inside["target_mean"] == pytest.approx(3.75) and landing["target_mean"] == pytest.approx(3.75)
    assert outside["target_mean"] != pytest.approx(3.75)
    assert inside["target_target_mean"] == pytest.approx(outside["target_target_mean"])  # the estimate itself still ran


def test_oracle_variants_name_the_method_and_whether_the_targets_are_the_oracle():
    import oracle_targets

    assert oracle_targets.variant("default") == ("iau", False)
    assert oracle_targets.variant("oracle+land") == ("iau@land=1:follow=0", True)
    assert oracle_targets.variant("oracle@jump=0:land=1") == ("iau@jump=0:land=1:follow=0", True)
    assert oracle_targets.variant("iau@jump=0") == ("iau@jump=0", False)
    with pytest.raises(SystemExit, match="oracle@key=value"):
        oracle_targets.variant("orcale")
