"""RMU: forget activations turn toward the steering vector, retain activations stay, only the chosen
parameters change; full parameters and LoRA."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from tiny import lm_dataset, params_of, tiny_llama  # noqa: E402

from hf_iau import IAUConfig, IAUTrainer  # noqa: E402
from hf_iau.losses import base_model_of  # noqa: E402
from hf_iau.methods import run_method  # noqa: E402
from hf_iau.methods.rmu import decoder_layers  # noqa: E402


def args(tmp_path: Path) -> IAUConfig:
    return IAUConfig(
        output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no", use_cpu=True, logging_strategy="no",
        disable_tqdm=True, per_device_train_batch_size=4, per_device_eval_batch_size=8, seed=0,
    )


def activations(model, rows, layer: int) -> torch.Tensor:
    """Output of block ``layer`` for every token of ``rows`` [N, T, d], read by an independent hook."""
    store = {}
    block = base_model_of(model).model.layers[layer]
    hook = block.register_forward_hook(lambda m, i, o: store.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(input_ids=torch.tensor(rows["input_ids"]))
    hook.remove()
    return store["h"].detach().clone()


def split_vocab(n: int = 16, k: int = 4):
    """Forget rows over tokens 1-31, retain rows over tokens 32-63 (two distinguishable sources)."""
    ds = lm_dataset(n)
    ids = [[t % 31 + 1 if i < k else 32 + t % 32 for t in row] for i, row in enumerate(ds["input_ids"])]
    ds = ds.remove_columns(["input_ids", "labels"]).add_column("input_ids", ids).add_column("labels", ids)
    return ds.select(range(k)), ds.select(range(k, n)), ds


def mean_cos(h: torch.Tensor, direction: torch.Tensor) -> float:
    return float(F.cosine_similarity(h.reshape(-1, h.shape[-1]), direction.expand(h.shape[-1]).unsqueeze(0)).mean())


@pytest.mark.parametrize("lora", [False, True])
def test_forget_activations_turn_to_the_steering_vector_and_retain_ones_stay(tmp_path, lora):
    from peft import LoraConfig

    forget, retain, ds = split_vocab()
    peft = LoraConfig(r=4, lora_alpha=8, target_modules=["down_proj", "up_proj"], lora_dropout=0.0) if lora else None
    trainer = IAUTrainer(model=tiny_llama(0), args=args(tmp_path), train_dataset=ds, peft_config=peft)
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    f0, r0 = activations(model, forget, 1), activations(model, retain, 1)
    res = run_method(
        "rmu", trainer, forget, retain, layer=1, steering_coeff=8.0, alpha=10.0, update_layers=[0, 1],
        steps=12, batch_size=4, retain_batch_size=4, learning_rate=5e-2 if lora else 1e-2, optimizer="adam",
    )
    f1, r1 = activations(model, forget, 1), activations(model, retain, 1)
    # The steering direction is the mean displacement of the forget activations.
    u = (f1 - f0).reshape(-1, f0.shape[-1]).mean(0)
    u = u / u.norm()
    assert mean_cos(f1, u) > mean_cos(f0, u) + 0.3
    # ‖h − c·u‖² (per unit) falls, and the mean forget activation's norm approaches c = 8.
    steer = [h["steering_mse"] for h in res.history]
    assert steer[-1] < 0.5 * steer[0]
    assert float(f1.mean((0, 1)).norm()) > 2 * float(f0.mean((0, 1)).norm())
    # Retain activations move far less than the forget ones.
    assert float(((r1 - r0) ** 2).mean()) < 0.2 * float(((f1 - f0) ** 2).mean())
    # Only trainable `mlp` parameters of blocks 0-1 changed.
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".mlp." in n and (".layers.0." in n or ".layers.1." in n) for n in changed)
    assert all(("lora_" in n) == lora or not lora for n in changed)
    if lora:
        assert all("lora_" in n for n in changed)
    m = res.metrics
    assert m["example_gradient_passes"] == 12 * 8
    assert m["example_forward_passes"] >= len(retain)  # frozen reference activations, computed once
    assert m["retain_activation_mse"] >= 0 and m["steering_mse"] > 0


def test_update_layers_and_pattern_restrict_the_change(tmp_path):
    ds = lm_dataset(12)
    trainer = IAUTrainer(model=tiny_llama(0), args=args(tmp_path), train_dataset=ds)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    run_method("rmu", trainer, ds.select(range(4)), ds.select(range(4, 12)), layer=1, update_layers=[1],
               param_pattern=r"down_proj", steps=3, batch_size=4, learning_rate=1e-2)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"model.layers.1.mlp.down_proj.weight"}


def test_lora_reference_base_disables_the_adapter(tmp_path):
    from peft import LoraConfig

    ds = lm_dataset(12)
    peft = LoraConfig(r=2, lora_alpha=4, target_modules=["down_proj"], lora_dropout=0.0)
    trainer = IAUTrainer(model=tiny_llama(0), args=args(tmp_path), train_dataset=ds, peft_config=peft)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    res = run_method("rmu", trainer, ds.select(range(4)), ds.select(range(4, 12)), layer=1, reference="base",
                     steps=3, batch_size=4, learning_rate=1e-2)
    assert res.metrics["steps"] == 3
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if not p.requires_grad)


def test_budget_caps_the_steps(tmp_path):
    ds = lm_dataset(12)
    trainer = IAUTrainer(model=tiny_llama(0), args=args(tmp_path), train_dataset=ds)
    res = run_method("rmu", trainer, ds.select(range(4)), ds.select(range(4, 12)), budget=20, batch_size=4,
                     learning_rate=1e-3)
    assert res.metrics["steps"] == 2 and res.metrics["example_gradient_passes"] == 16


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"layer": 5}, "layer=5 is out of range"),
        ({"param_pattern": "nothing_like_this"}, "param_pattern"),
        ({"steering_coeff": 0.0}, "steering_coeff"),
        ({"update_layers": [7]}, "update_layers"),
        ({"reference": "base"}, "peft model"),
    ],
)
def test_bad_options_are_value_errors_and_leave_the_model(tmp_path, bad, match):
    ds = lm_dataset(12)
    trainer = IAUTrainer(model=tiny_llama(0), args=args(tmp_path), train_dataset=ds)
    before = params_of(trainer.model)
    with pytest.raises(ValueError, match=match):
        run_method("rmu", trainer, ds.select(range(4)), ds.select(range(4, 12)), steps=1, **bad)
    after = params_of(trainer.model)
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert len(decoder_layers(trainer.model)) == 2
