"""hf_iau/curvature.py: batched per-example gradients against the one-example loop, the training-time Fisher,
and the saved curvature bound to the weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny import image_dataset, lm_dataset, text_cls_dataset, tiny_bert, tiny_gpt2, tiny_vit  # noqa: E402

from hf_iau.curvature import FILE, Curvature, CurvatureCallback, CurvatureError, ExampleGradients  # noqa: E402
from hf_iau.losses import batch_losses, loss_kind  # noqa: E402


def _lora_gpt2() -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    return get_peft_model(tiny_gpt2(0), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"],
                                                   init_lora_weights=False))


def _batch(name: str, n: int) -> dict[str, torch.Tensor]:
    ds = {"bert": text_cls_dataset, "vit": image_dataset}.get(name, lm_dataset)(n, seed=3)
    cols = [c for c in ds.column_names if c not in ("id",)]
    batch = {c: torch.tensor(ds[c]) for c in cols}
    if "label" in batch:
        batch["labels"] = batch.pop("label")
    if name.startswith("gpt2"):
        batch["labels"][0, :5] = -100  # a prompt: examples with different token counts
        batch["attention_mask"][1, 12:] = 0
        batch["labels"][1, 12:] = -100
    if name == "bert":
        batch["attention_mask"][2, 10:] = 0
    return batch


MODELS = {"bert": tiny_bert, "gpt2": tiny_gpt2, "vit": tiny_vit, "gpt2_lora": _lora_gpt2}
UNCOVERED = {"vit": {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings"}}


@pytest.mark.parametrize("name", list(MODELS))
def test_batched_example_gradients_equal_the_one_example_loop(name: str) -> None:
    """Σ_i (∇ℓ_i)² from one batched backward = Σ over one-row backward passes of (∇ℓ_i)², to 1e-6 (float64);
    the parameters no supported layer owns are exactly the bare ones (ViT's class token and position table)."""
    model = MODELS[name]().double().eval()
    kind = loss_kind(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    batch = _batch(name, 5)
    loop = [torch.zeros_like(p) for p in params]
    for i in range(5):
        model.zero_grad()
        row = {k: v[i : i + 1] for k, v in batch.items()}
        batch_losses(model, row, kind).per_example.sum().backward()
        for acc, p in zip(loop, params):
            acc.add_(p.grad.pow(2))
    model.zero_grad()
    with ExampleGradients(model, params) as eg:
        eg.expect(5)
        batch_losses(model, batch, kind).per_example.sum().backward()
        eg.collect(1.0, [p.grad for p in params])
    assert {named[k][0].removeprefix("base_model.model.") for k in eg.uncovered} == UNCOVERED.get(name, set())
    for k, (pname, _) in enumerate(named):
        if k not in eg.uncovered:
            assert eg.squares[k] is not None, pname
            torch.testing.assert_close(eg.squares[k], loop[k], rtol=1e-6, atol=1e-12, msg=pname)
    assert max(float(s.abs().max()) for s in eg.squares if s is not None) > 0


def test_a_parameter_whose_example_gradients_miss_the_batch_gradient_is_uncovered() -> None:
    """A Linear weight also used outside the layer (here: an extra penalty on it) fails the sum check."""
    model = tiny_bert(0).double().eval()
    params = [p for p in model.parameters() if p.requires_grad]
    w = model.classifier.weight
    k = next(i for i, p in enumerate(params) if p is w)
    batch = _batch("bert", 4)
    with ExampleGradients(model, params) as eg:
        eg.expect(4)
        (batch_losses(model, batch).per_example.sum() + w.pow(2).sum()).backward()
        eg.collect(1.0, [p.grad for p in params])
    assert k in eg.uncovered and eg.squares[k] is None
    assert len(eg.uncovered) == 1


def _trained_curvature(tmp_path: Path, lr: float = 0.0) -> tuple[torch.nn.Module, Curvature, torch.utils.data.Dataset]:
    from transformers import Trainer, TrainingArguments, default_data_collator

    ds = text_cls_dataset(8, seed=0)
    model = tiny_bert(0)
    cb = CurvatureCallback()
    args = TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[], disable_tqdm=True,
                             save_strategy="no", num_train_epochs=2, per_device_train_batch_size=8, learning_rate=lr,
                             max_grad_norm=0.0, seed=0)
    Trainer(model, args=args, train_dataset=ds.remove_columns("id"), data_collator=default_data_collator,
            callbacks=[cb]).train()
    return model, cb.curvature(model), ds


def test_training_time_fisher_is_n_b_times_the_mean_squared_batch_gradient(tmp_path: Path) -> None:
    """learning rate 0 and one full batch per step: F̂ = n·B·ḡ² exactly, ḡ the full-data mean gradient."""
    model, curv, ds = _trained_curvature(tmp_path)
    model.eval()
    model.zero_grad()
    batch = {"input_ids": torch.tensor(ds["input_ids"]), "attention_mask": torch.tensor(ds["attention_mask"]),
             "labels": torch.tensor(ds["label"])}
    model(**batch).loss.backward()  # the mean loss the Trainer differentiates
    for name, p in model.named_parameters():
        torch.testing.assert_close(curv.fisher[name], 8 * 8 * p.grad.pow(2), rtol=1e-4, atol=1e-10, msg=name)
    assert curv.meta["steps"] == "1"  # the last epoch only


def test_per_example_training_fisher_is_the_sum_of_each_rows_squared_gradient(tmp_path: Path) -> None:
    """IAUConfig.train_curvature='per_example', learning rate 0, 3 epochs of 2 batches: F̂ = Σ_i (∇ℓ_i)² over the
    training rows of the last epoch only (one-example loop as the reference), the estimator requests use on rows."""
    from transformers import default_data_collator

    from hf_iau import IAUConfig, IAUTrainer

    ds = text_cls_dataset(8, seed=0)
    model = tiny_bert(0)  # dropout off
    args = IAUConfig(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[], disable_tqdm=True,
                     save_strategy="no", num_train_epochs=3, per_device_train_batch_size=4, learning_rate=0.0,
                     max_grad_norm=0.0, seed=0, train_curvature="per_example", unlearn_learning_rate=1e-3)
    trainer = IAUTrainer(model, args=args, train_dataset=ds.remove_columns("id"), data_collator=default_data_collator)
    trainer.train()
    curv = trainer.curvature
    assert curv.meta["estimator"] == "per_example" and curv.meta["rows"] == "8"  # the last epoch's 8 rows
    assert float(curv.meta["identity_curvature_fraction"]) == 0.0
    model.eval()
    ref = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(8):
        model.zero_grad()
        row = {"input_ids": torch.tensor(ds["input_ids"][i : i + 1]),
               "attention_mask": torch.tensor(ds["attention_mask"][i : i + 1]), "labels": torch.tensor(ds["label"][i : i + 1])}
        model(**row).loss.backward()
        for n, p in model.named_parameters():
            ref[n] += p.grad.pow(2)
    for name, f in curv.fisher.items():
        torch.testing.assert_close(f, ref[name], rtol=1e-4, atol=1e-9 * float(ref[name].abs().max()) + 1e-12, msg=name)
    batch = trainer.curvature_callback.curvature(model, estimator="batch")
    assert batch.meta.get("estimator") is None and batch.meta["steps"] == "2"  # the mini-batch one is still there


def test_saved_curvature_is_bound_to_the_weights(tmp_path: Path) -> None:
    model, curv, _ = _trained_curvature(tmp_path)
    assert Curvature.load(str(tmp_path), model) is None  # nothing saved: the caller recomputes
    curv.save(str(tmp_path))
    loaded = Curvature.load(str(tmp_path), model)
    assert loaded is not None and loaded.weights_sha256 == curv.weights_sha256
    diag = loaded.diagonal(model)
    assert [tuple(d.shape) for d in diag] == [tuple(p.shape) for p in model.parameters() if p.requires_grad]
    torch.testing.assert_close(diag[0], curv.fisher[next(iter(curv.fisher))])
    mean = sum(float(f.double().sum()) for f in diag) / sum(f.numel() for f in diag)
    torch.testing.assert_close(loaded.preconditioner(model)[0], 1.0 / (diag[0] + 0.1 * mean))  # P = (F̂ + δ·mean F̂)⁻¹
    with torch.no_grad():
        model.classifier.bias.add_(1e-3)  # an unlearning update changed the weights
    before = (tmp_path / FILE).read_bytes()
    with pytest.raises(CurvatureError, match=r"weights sha256 .*\(changed after it was saved\)"):
        Curvature.load(str(tmp_path), model)
    assert (tmp_path / FILE).read_bytes() == before  # refused, nothing touched
    curv.bind(model, "unlearning request 1").save(str(tmp_path))
    again = Curvature.load(str(tmp_path), model)
    assert again.meta["carried_from"] == curv.weights_sha256 and again.meta["carried_because"] == "unlearning request 1"


def test_curvature_refuses_parameters_it_does_not_cover(tmp_path: Path) -> None:
    model, curv, _ = _trained_curvature(tmp_path)
    del curv.fisher["classifier.weight"]
    with pytest.raises(CurvatureError, match="'classifier.weight'.*curvature=None"):
        curv.diagonal(model)
