"""The one request lifecycle: every default does what it says or refuses (each case failed on the code before it),
and a request reports through the Trainer's machinery (logs, callbacks, progress bar)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from tiny import lm_dataset, max_abs_diff, params_of, parity_args, text_cls_dataset, tiny_bert, tiny_gpt2
from transformers import TrainerCallback, default_data_collator

from hf_iau import IAUTrainer, UnlearningError, forget_retain_split

ROOT = Path(__file__).resolve().parents[1]


def _lm_trainer(tmp_path, **kw):
    ds = lm_dataset(24)
    args = parity_args(tmp_path / "out", num_train_epochs=8, learning_rate=1e-2, per_device_train_batch_size=8, **kw)
    trainer = IAUTrainer(tiny_gpt2(), args=args, train_dataset=ds, data_collator=default_data_collator)
    return trainer, ds


def test_an_update_that_changes_nothing_records_no_deletion(tmp_path):
    """Causal LM with 'flip' targets on partly memorised rows: token accuracy ≤ 0.5, so no row is ever pushed —
    before, the request took 0 steps, changed nothing and was recorded as a deletion (card and ledger)."""
    trainer, ds = _lm_trainer(tmp_path, unlearn_targets="flip", unlearn_stop="targets", unlearn_steps=5)
    trainer.train()
    before = params_of(trainer.model)
    with pytest.raises(UnlearningError, match="changed nothing"):
        trainer.unlearn(ds.select([0, 1, 2]))
    assert max_abs_diff(params_of(trainer.model), before) == 0.0
    assert not trainer.unlearning_history and trainer.deletion_record.count == 0
    trainer.save_model()
    assert not (tmp_path / "out" / "deletion_ledger.jsonl").exists()
    result = trainer.unlearn(ds.select([0, 1, 2]), allow_noop=True)  # asked for explicitly: recorded
    assert result.metrics["update_norm"] == 0.0 and trainer.unlearning_history[-1]["allow_noop"] is True


def test_the_default_targets_without_held_out_data_refuse_on_a_causal_lm(tmp_path):
    """Before: 'auto' silently became 'flip' on a causal LM without eval_dataset (then the no-op above)."""
    trainer, ds = _lm_trainer(tmp_path, unlearn_targets="counterfactual", unlearn_stop="targets")
    with pytest.raises(ValueError, match="needs held-out data"):
        trainer.unlearn(ds.select([0, 1]))
    assert not trainer.unlearning_history


def test_forget_rows_must_be_the_training_rows_with_those_ids(tmp_path):
    trainer, ds = _lm_trainer(tmp_path)
    other = lm_dataset(24, seed=9)  # same ids 0..23, other token sequences
    before = params_of(trainer.model)
    with pytest.raises(ValueError, match="carry the id of a training row but different content"):
        trainer.unlearn(other.select([0, 1]))
    assert max_abs_diff(params_of(trainer.model), before) == 0.0


@pytest.mark.parametrize("which", ["forget", "train"])
def test_held_out_data_that_overlaps_train_or_forget_is_refused(tmp_path, which):
    """Before: an eval_dataset equal to the forget set (or part of train) was used as 'never seen' data."""
    ds = text_cls_dataset(24)
    split = forget_retain_split(ds, forget=[0, 1, 2], id_column="id")
    held_out = split["forget"] if which == "forget" else ds.select(range(10, 20))
    args = parity_args(tmp_path, unlearn_targets="counterfactual")
    trainer = IAUTrainer(tiny_bert(), args=args, train_dataset=ds, eval_dataset=held_out,
                         data_collator=default_data_collator)
    with pytest.raises(ValueError, match="held-out data .* shares"):
        trainer.unlearn(split["forget"])
    held_out = text_cls_dataset(12, seed=5)  # other rows (ids restart at 0: compared by content, not id)
    trainer.unlearn(split["forget"], held_out_dataset=held_out, allow_noop=True)


class Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def test_unlearning_reports_through_the_trainer(tmp_path, capsys):
    """Per-step logs at logging_steps reach every callback (so report_to: TensorBoard, W&B, JSON), the final
    metrics land in state.log_history, and a progress bar is shown unless disable_tqdm."""
    ds = text_cls_dataset(24)
    split = forget_retain_split(ds, forget=[0, 1, 2], id_column="id")
    args = parity_args(tmp_path, unlearn_steps=4, logging_steps=2, disable_tqdm=False, unlearn_learning_rate=1e-2)
    recorder = Recorder()
    trainer = IAUTrainer(tiny_bert(), args=args, data_collator=default_data_collator, callbacks=[recorder])
    trainer.unlearn(split["forget"], split["retain"])
    steps = [log["unlearn/step"] for log in recorder.logs if "unlearn/step" in log]
    assert steps == [0.0, 1.0, 3.0]  # the first step, then every logging_steps-th
    final = recorder.logs[-1]
    assert final["unlearn/steps"] == 4.0 and "unlearn/forget_loss_after" in final
    assert final.items() <= trainer.state.log_history[-1].items()
    assert "unlearn (iau)" in capsys.readouterr().err


def test_baselines_share_the_lifecycle_and_report_too(tmp_path):
    ds = text_cls_dataset(24)
    split = forget_retain_split(ds, forget=[0, 1, 2], id_column="id")
    recorder = Recorder()
    trainer = IAUTrainer(tiny_bert(), args=parity_args(tmp_path), data_collator=default_data_collator,
                         callbacks=[recorder])
    trainer.unlearn(split["forget"], split["retain"], method="gradient_difference", steps=2, learning_rate=1e-2)
    assert trainer.unlearning_history[-1]["method"] == "gradient_difference"
    assert recorder.logs[-1]["unlearn/steps"] == 2.0
    assert trainer.unlearning_history[-1]["request_index"] == 0


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            out.add((node.module or "").split(".")[0])
    return out


def test_the_lifecycle_imports_nothing_above_it():
    """request → method → engine → result → record flows downhill: the lower modules never import the trainer,
    the methods, the hub or the card (not even lazily)."""
    upper = {"trainer", "methods", "hub", "card", "report", "cli", "saving"}
    for name in ("lifecycle", "request", "engine", "result", "counterfactual", "validation", "data", "losses"):
        assert not _imports(ROOT / "hf_iau" / f"{name}.py") & upper, name


def test_options_never_write_the_trainer_args(tmp_path):
    ds = text_cls_dataset(24)
    split = forget_retain_split(ds, forget=[0, 1, 2], id_column="id")
    trainer = IAUTrainer(tiny_bert(), args=parity_args(tmp_path), data_collator=default_data_collator)
    before = trainer.args.to_dict()
    trainer.unlearn(split["forget"], split["retain"], unlearn_steps=2, unlearn_learning_rate=1e-2)
    assert trainer.args.to_dict() == before
    assert trainer.unlearning_history[-1]["config"]["unlearn_steps"] == 2
    with pytest.raises(ValueError, match="iau.unlearn_steps=0 is invalid"):
        trainer.unlearn(split["forget"], split["retain"], unlearn_steps=0)
    assert torch.is_tensor(next(trainer.model.parameters()))


def test_curvature_paid_at_training_time_is_saved_reused_and_refused_when_stale(tmp_path):
    """train() measures F̂ from its own gradients, save_model writes it bound to the weights' sha256, a trainer
    loaded from the folder uses it when asked (unlearn_curvature='training': the estimate then costs |S| + |F|
    passes, not 2|S| + |F|), the default measures F̂ on the request's rows instead and keeps that one, and a file
    made for other weights is refused with a warning, never used."""
    from hf_iau import IAUConfig
    from hf_iau.curvature import FILE, Curvature

    ds = text_cls_dataset(32)
    held_out = text_cls_dataset(12, seed=5)
    args = parity_args(tmp_path / "a", num_train_epochs=3, learning_rate=5e-3, per_device_train_batch_size=8)
    trainer = IAUTrainer(tiny_bert(), args=args, train_dataset=ds, data_collator=default_data_collator)
    assert trainer.curvature is None
    trainer.train()
    assert trainer.curvature is not None and trainer.curvature.meta["source"] == "training"
    trainer.save_model()
    assert (tmp_path / "a" / FILE).is_file()

    def request(folder, out, **kw):
        args = IAUConfig(output_dir=str(out), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
                         unlearn_steps=1, unlearn_stop="fixed", **kw)
        again = IAUTrainer(str(folder), args=args, train_dataset=ds, eval_dataset=held_out,
                           data_collator=default_data_collator)
        m = again.unlearn(ds.select([0, 1, 2]), allow_noop=True).metrics
        return again, m

    n_s = min(IAUConfig(output_dir=str(tmp_path)).unlearn_target_sample_size, 29)
    again, m = request(tmp_path / "a", tmp_path / "b", unlearn_curvature="training")
    assert again.curvature.meta["source"] == "training" and m["target_saved_curvature"] == 1.0
    assert m["example_gradient_passes"] == (n_s + 3) + (3 + 29)  # estimate with saved F̂, then one step
    default, m = request(tmp_path / "a", tmp_path / "e")  # the default: F̂ from the request's rows, kept for the next
    assert m["target_saved_curvature"] == 0.0 and m["example_gradient_passes"] == (n_s + 3) + (3 + 29)  # hooked
    assert default.curvature.meta["source"] == "rows"
    default.save_model()
    assert Curvature.load(str(tmp_path / "e"), default.model).meta["source"] == "rows"
    again.save_model()  # the curvature is carried to the new weights (bound to their hash)
    assert IAUTrainer(str(tmp_path / "b"), args=parity_args(tmp_path / "c")).curvature is not None

    import shutil

    shutil.copy(tmp_path / "a" / FILE, tmp_path / "b" / FILE)  # made for the parent's weights: stale here
    with pytest.warns(UserWarning, match="changed after it was saved"):
        stale = IAUTrainer(str(tmp_path / "b"), args=parity_args(tmp_path / "d"))
    assert stale.curvature is None


def test_a_process_that_does_not_save_writes_nothing(tmp_path, monkeypatch):
    """Under DDP only the main process writes (before, every process wrote training_args.json, and a process whose
    folder did not exist yet died with FileNotFoundError — the README's accelerate launch lost the model)."""
    from transformers import TrainingArguments

    trainer = IAUTrainer(tiny_bert(), args=parity_args(tmp_path / "out"), data_collator=default_data_collator)
    monkeypatch.setattr(TrainingArguments, "should_save", property(lambda self: False))
    trainer._save(str(tmp_path / "not-created"))
    trainer.save_model(str(tmp_path / "also-not"))
    assert not (tmp_path / "not-created").exists() and not (tmp_path / "also-not").exists()


@pytest.mark.parametrize("version", [1, 2])
def test_the_fsdp_refusal_names_the_fix_for_the_users_setting(tmp_path, monkeypatch, version):
    """Before: with `fsdp_version: 2` already set, the refusal told the user to set `fsdp_version: 2`."""
    from types import SimpleNamespace

    from hf_iau.engine import Engine

    trainer = IAUTrainer(tiny_bert(), args=parity_args(tmp_path), data_collator=default_data_collator)
    monkeypatch.setattr(trainer, "is_fsdp_enabled", True)
    monkeypatch.setattr(trainer.accelerator.state, "fsdp_plugin", SimpleNamespace(fsdp_version=version), raising=False)
    with pytest.raises(ValueError) as err:
        Engine(trainer)
    if version == 2:
        assert "not sharded yet" in str(err.value) and "set `fsdp_version: 2`" not in str(err.value)
    else:
        assert "set `fsdp_version: 2`" in str(err.value)


def test_a_model_that_never_learned_the_forget_set_is_warned_about(tmp_path):
    ds = text_cls_dataset(24)
    split = forget_retain_split(ds, forget=[0, 1, 2], id_column="id")
    trainer = IAUTrainer(tiny_bert(), args=parity_args(tmp_path, unlearn_targets="held_out_quantile"),
                         eval_dataset=text_cls_dataset(12, seed=5), data_collator=default_data_collator)
    with pytest.warns(UserWarning, match="no better than unseen data"):  # untrained: forget loss ≈ held-out loss
        trainer.unlearn(split["forget"], split["retain"], allow_noop=True)


def _fitted(out, ds) -> IAUTrainer:
    """A tiny BERT trained on ``ds`` until its rows fit better than held-out ones (so a request runs the estimate, not
    the shortcut for retained rows already at the held-out level), one fixed unlearning step per request."""
    args = parity_args(out, unlearn_targets="counterfactual", unlearn_steps=1, unlearn_stop="fixed", num_train_epochs=20,
                       learning_rate=5e-3, per_device_train_batch_size=8)
    trainer = IAUTrainer(tiny_bert(), args=args, train_dataset=ds, eval_dataset=text_cls_dataset(12, seed=5),
                         data_collator=default_data_collator)
    trainer.train()
    return trainer


def test_a_curvature_measured_by_one_request_is_reused_by_the_next(tmp_path):
    """Without a saved curvature the first request measures F̂ on its rows (|S| + |F| hooked passes, which also give
    the calibration groups' gradients); the trainer keeps it, bound to the new weights, so the next request's
    estimate takes as many plain passes, without the per-example squares."""
    ds = text_cls_dataset(40)
    trainer = _fitted(tmp_path, ds)
    first = trainer.unlearn(ds.select([0, 1]), allow_noop=True).metrics
    assert first["target_at_level"] == 0.0
    assert first["target_saved_curvature"] == 0.0 and trainer.curvature is not None
    second = trainer.unlearn(ds.select([2, 3]), allow_noop=True).metrics
    assert second["target_saved_curvature"] == 1.0
    # (|S| + |F|) + one step over F and the whole retain set (parity_args): 40 − 2 rows retained, then 40 − 4
    assert (first["example_gradient_passes"], second["example_gradient_passes"]) == ((38 + 2) + (2 + 38), (36 + 2) + (2 + 36))


def test_the_ledger_names_the_kept_curvature_a_request_used(tmp_path):
    """The second request's update depends on the curvature the first one measured: its ledger entry records that
    curvature's source and content hash (the first, which measured its own, records none), `hf-iau ledger show` tells
    the auditor to start from the folder that holds it, and the chain still verifies."""
    from hf_iau.ledger import read_ledger, reproduction, verify_ledger

    ds = text_cls_dataset(40)
    trainer = _fitted(tmp_path / "out", ds)
    trainer.unlearn(ds.select([0, 1]), allow_noop=True)
    kept = trainer.curvature.content_sha256()
    trainer.unlearn(ds.select([2, 3]), allow_noop=True)
    trainer.save_model()
    first, second = read_ledger(tmp_path / "out")
    assert "curvature" not in first and "own rows" in reproduction(first)
    assert second["curvature"] == {"source": "rows", "content_sha256": kept}
    assert f"content sha256 {kept[:16]}" in reproduction(second)
    assert trainer.curvature.content_sha256() == kept  # carried over to the new weights, same content
    assert verify_ledger(tmp_path / "out") == []


def test_a_request_reports_its_cost_against_retraining_and_warns_when_retraining_is_cheaper(tmp_path):
    """passes_vs_retrain = the request's example-gradient passes / (num_train_epochs × retained rows, or max_steps ×
    the global batch); above 1 a warning says retraining is cheaper; the card states the share."""
    import warnings

    ds = text_cls_dataset(24)
    for epochs, max_steps, warns in ((1, -1, True), (1, 500, False)):
        args = parity_args(tmp_path / f"{epochs}-{max_steps}", num_train_epochs=epochs, max_steps=max_steps,
                           per_device_train_batch_size=4, unlearn_steps=3, unlearn_stop="fixed")
        trainer = IAUTrainer(tiny_bert(), args=args, train_dataset=ds, data_collator=default_data_collator)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = trainer.unlearn(ds.select([0, 1]), allow_noop=True).metrics
        retrain = 500 * 4 if max_steps > 0 else 22
        assert m["retrain_passes_estimate"] == retrain
        assert m["passes_vs_retrain"] == pytest.approx(m["example_gradient_passes"] / retrain)
        assert (m["passes_vs_retrain"] > 1) is warns
        assert any("retraining without the forget rows is cheaper" in str(w.message) for w in caught) is warns
    trainer.save_model()
    card = (tmp_path / "1-500" / "README.md").read_text()
    assert card.count(f"Against retraining:** {100 * m['passes_vs_retrain']:.1f}% of retraining's 2,000 example-gradient passes") == 1
