"""SimNPO: the loss equals a hand computation, relates to NPO as the paper states, runs full and LoRA."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).parent))
from tiny import SEQ, lm_dataset, params_of, tiny_llama  # noqa: E402

from hf_iau import IAUConfig, IAUTrainer  # noqa: E402
from hf_iau.losses import batch_losses  # noqa: E402
from hf_iau.methods import run_method  # noqa: E402
from hf_iau.methods.npo import npo_term  # noqa: E402
from hf_iau.methods.simnpo import simnpo_term  # noqa: E402


def args(tmp_path: Path) -> IAUConfig:
    return IAUConfig(
        output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no", use_cpu=True, logging_strategy="no",
        disable_tqdm=True, per_device_train_batch_size=4, per_device_eval_batch_size=8, seed=0,
    )


def qa_dataset(n: int = 12) -> Dataset:
    """Token rows whose first k_i positions are a masked prompt (labels -100), k_i varying by row."""
    ds = lm_dataset(n)
    labels = [[-100] * (3 + i % 5) + row[3 + i % 5 :] for i, row in enumerate(ds["input_ids"])]
    return ds.remove_columns("labels").add_column("labels", labels)


def hand_loss(model, rows: Dataset, beta: float, gamma: float) -> torch.Tensor:
    """mean_x −(2/β)·log σ(−(β/|y|)·log π(y|x) − γ), log π summed by a plain loop over positions."""
    total = 0.0
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        logp = model(input_ids=ids).logits[0].double().log_softmax(-1)
        ll, n = 0.0, 0
        for t in range(1, SEQ):
            if row["labels"][t] != -100:
                ll = ll + logp[t - 1, row["labels"][t]]
                n += 1
        total = total - (2 / beta) * F.logsigmoid(-(beta / n) * ll - gamma)
    return total / len(rows)


def test_one_sgd_step_equals_the_hand_computed_loss(tmp_path):
    ds = qa_dataset()
    forget, retain = ds.select(range(4)), ds.select(range(4, 12))
    trainer = IAUTrainer(model=tiny_llama(0), args=args(tmp_path), train_dataset=ds)
    model, before = trainer.model, params_of(trainer.model)
    beta, gamma, w_r, lr = 2.5, 0.3, 0.5, 1e-2
    res = run_method(
        "simnpo", trainer, forget, retain, beta=beta, gamma=gamma, retain_weight=w_r, steps=1, batch_size=4,
        retain_batch_size=8, learning_rate=lr, optimizer="sgd",
    )
    after = params_of(model)
    model.load_state_dict(before)
    model.eval()
    model.zero_grad()
    retain_batch = {k: torch.tensor(retain[k]) for k in ("input_ids", "attention_mask", "labels")}
    retain_nll = F.cross_entropy(
        model(input_ids=retain_batch["input_ids"]).logits[:, :-1].reshape(-1, 64).double(),
        retain_batch["labels"][:, 1:].reshape(-1), ignore_index=-100,
    )
    (hand_loss(model, forget, beta, gamma) + w_r * retain_nll).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(after[n].double(), (p.detach() - lr * p.grad).double(), rtol=1e-4, atol=1e-6)
    assert res.metrics["example_gradient_passes"] == 12
    assert trainer.unlearning_history[-1]["config"]["gamma"] == gamma


def test_without_margin_and_normalisation_it_is_npo_with_a_uniform_reference():
    ds = qa_dataset(6)
    model = tiny_llama(1)
    batch = {k: torch.tensor(ds[k]) for k in ("input_ids", "attention_mask", "labels")}
    bl = batch_losses(model, batch)
    ix = list(range(6))
    plain = simnpo_term(0.7, 0.0, normalize=False)(bl, ix)
    torch.testing.assert_close(plain, npo_term({i: 0.0 for i in ix}, 0.7)(bl, ix))
    # Length normalisation is what separates them: rows with different |y| get different weights.
    normalised = simnpo_term(0.7, 0.0, normalize=True)(bl, ix)
    assert not torch.allclose(normalised, plain)
    torch.testing.assert_close(normalised, (2 / 0.7) * F.softplus(-0.7 * bl.loss_sum / bl.count))
    # A margin γ shifts the argument: larger γ, larger loss.
    assert bool((simnpo_term(0.7, 1.0)(bl, ix) > normalised).all())


@pytest.mark.parametrize("lora", [False, True])
def test_full_and_lora_runs_raise_forget_loss_and_touch_only_trainable_weights(tmp_path, lora):
    from peft import LoraConfig

    ds = qa_dataset()
    peft = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0) if lora else None
    trainer = IAUTrainer(model=tiny_llama(0), args=args(tmp_path), train_dataset=ds, peft_config=peft)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert bool(frozen) == lora
    res = run_method("simnpo", trainer, ds.select(range(4)), ds.select(range(4, 12)), steps=4, batch_size=4,
                     retain_weight=0.0, learning_rate=5e-2 if lora else 1e-2)
    m = res.metrics
    assert m["forget_loss_after"] > m["forget_loss_before"] + 0.05
    assert m["example_gradient_passes"] == 4 * 4  # no retain term: forget batches only
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if not p.requires_grad)


def test_bad_beta_is_a_value_error_and_leaves_the_model(tmp_path):
    ds = qa_dataset()
    trainer = IAUTrainer(model=tiny_llama(0), args=args(tmp_path), train_dataset=ds)
    before = params_of(trainer.model)
    for bad in ({"beta": 0.0}, {"gamma": -1.0}):
        with pytest.raises(ValueError, match="beta|gamma"):
            run_method("simnpo", trainer, ds.select(range(4)), ds.select(range(4, 12)), **bad)
    assert all(torch.equal(v, params_of(trainer.model)[k]) for k, v in before.items())
