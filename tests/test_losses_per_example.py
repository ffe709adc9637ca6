"""Per-example losses for every head hf_iau supports (issue 16): regression, multi-label, seq2seq — each row its own
loss, averaging (count-weighted) to the model's own loss — and a clear refusal where only a batch loss exists."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
)

sys.path.insert(0, str(Path(__file__).parent))
from tiny import VOCAB, tiny_bert, tiny_gpt2  # noqa: E402

from hf_iau.losses import IGNORE_INDEX, batch_losses, loss_kind, true_count  # noqa: E402

B, T = 5, 8


def bert_head(problem_type: str | None, num_labels: int) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, num_labels=num_labels, problem_type=problem_type, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(cfg).eval()


def tiny_t5() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, dropout_rate=0.0,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(cfg).eval()


def tiny_bart() -> BartForConditionalGeneration:
    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
                     dropout=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    return BartForConditionalGeneration(cfg).eval()


def text(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(3, VOCAB, (B, T), generator=g), "attention_mask": torch.ones(B, T, dtype=torch.long)}


def regression_batch() -> dict[str, torch.Tensor]:
    return {**text(), "labels": torch.linspace(-2.0, 3.0, B)}


def multi_label_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {**text(), "labels": (torch.rand(B, 4, generator=g) < 0.5).float()}


def seq2seq_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(3, VOCAB, (B, 6), generator=g)
    labels[1, 4:] = IGNORE_INDEX  # rows of different target lengths
    labels[3, 2:] = IGNORE_INDEX
    return {**text(), "labels": labels}


HEADS = {
    "regression": (lambda: bert_head("regression", 1), regression_batch, "regression"),
    "regression_by_num_labels": (lambda: bert_head(None, 1), regression_batch, "regression"),
    "multi_label": (lambda: bert_head("multi_label_classification", 4), multi_label_batch, "multi_label"),
    "t5": (tiny_t5, seq2seq_batch, "seq2seq_lm"),
    "bart": (tiny_bart, seq2seq_batch, "seq2seq_lm"),
}


def test_loss_kind_names_every_head():
    assert {name: loss_kind(make()) for name, (make, _, _) in HEADS.items()} == {
        name: kind for name, (_, _, kind) in HEADS.items()
    }
    assert loss_kind(tiny_gpt2()) == "causal_lm" and loss_kind(tiny_bert()) == "classification"


@pytest.mark.parametrize("head", list(HEADS))
def test_per_example_losses_average_to_the_models_own_loss_and_differ(head):
    make, data, kind = HEADS[head]
    model, batch = make(), data()
    with torch.no_grad():
        bl = batch_losses(model, batch)
        own = model(**batch).loss
        alone = [model(**{k: v[i : i + 1] for k, v in batch.items()}).loss for i in range(B)]
    assert bl.loss_sum.shape == bl.count.shape == (B,)
    torch.testing.assert_close(bl.loss_sum.sum() / bl.count.sum(), own, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bl.per_example, torch.stack(alone), rtol=1e-4, atol=1e-5)  # each row is its own loss
    assert float(bl.per_example.std()) > 1e-3  # not one value copied to every row
    assert float(bl.count.sum()) == true_count(batch, kind)
    if kind == "seq2seq_lm":  # counted by labelled tokens, like a causal LM
        assert bl.count.tolist() == [6.0, 4.0, 6.0, 2.0, 6.0]
    else:
        assert bl.count.tolist() == [1.0] * B


@pytest.mark.parametrize("head", ["regression", "multi_label", "t5"])
def test_padding_rows_weigh_nothing(head):
    """The engine pads sharded batches with rows whose every label is -100: they count 0 and add no loss."""
    make, data, kind = HEADS[head]
    batch = data()
    batch["labels"][2] = IGNORE_INDEX
    with torch.no_grad():
        bl = batch_losses(make(), batch)
    assert float(bl.count[2]) == 0.0 and float(bl.loss_sum[2]) == 0.0
    assert float(bl.count.sum()) == true_count(batch, kind)


def test_per_example_losses_carry_gradients_of_each_row():
    model = bert_head("regression", 1)
    batch = regression_batch()
    bl = batch_losses(model, batch)
    bl.loss_sum[0].backward()
    mine = model.classifier.weight.grad.clone()
    model.zero_grad()
    model(**{k: v[:1] for k, v in batch.items()}).loss.backward()
    torch.testing.assert_close(mine, model.classifier.weight.grad, rtol=1e-4, atol=1e-6)


class MeanLossOnly(torch.nn.Module):
    """A model that only reports the mean loss of its batch."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)
        self.config = SimpleNamespace()

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=(self.linear(features).squeeze(-1) - labels).pow(2).mean())


def test_a_model_with_only_a_batch_loss_needs_one_row_batches():
    model = MeanLossOnly()
    x, y = torch.randn(4, 3), torch.randn(4)
    assert loss_kind(model) == "generic"
    with pytest.raises(ValueError, match=r"MeanLossOnly.*one loss per batch.*unlearn_batch_size=1"):
        batch_losses(model, {"features": x, "labels": y})
    one = batch_losses(model, {"features": x[:1], "labels": y[:1]})
    torch.testing.assert_close(one.loss_sum, model(x[:1], y[:1]).loss.view(1))


@pytest.mark.parametrize("head", ["regression", "multi_label"])
def test_baselines_measure_and_move_per_row_losses_of_regressors_and_multi_label_classifiers(tmp_path, head):
    """Through the trainer's collator and the engine: each row's loss is its own, and a baseline's before/after
    losses are the row means of those."""
    import numpy as np
    from datasets import Dataset
    from transformers import default_data_collator

    from hf_iau import IAUConfig, IAUTrainer
    from hf_iau.engine import Engine
    from hf_iau.methods import run_method

    make, data, _ = HEADS[head]
    rng = np.random.default_rng(0)
    n = 12
    labels = rng.normal(size=n) if head == "regression" else (rng.random((n, 4)) < 0.5).astype(float)
    ds = Dataset.from_dict({"id": list(range(n)), "input_ids": rng.integers(3, VOCAB, (n, T)).tolist(),
                            "attention_mask": [[1] * T] * n, "label": labels.astype(np.float32).tolist()})
    args = IAUConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_eval_batch_size=4, seed=0,
                     disable_tqdm=True, per_device_train_batch_size=4)
    trainer = IAUTrainer(model=make(), args=args, train_dataset=ds, data_collator=default_data_collator)
    forget, retain = ds.select(range(5)), ds.select(range(5, n))
    with torch.no_grad():
        rows = torch.stack([trainer.model(**{k: v for k, v in default_data_collator([forget[i]]).items() if k != "id"}).loss
                            for i in range(5)])
    got = Engine(trainer).per_example(trainer._model_columns(forget), range(5))["loss"]
    np.testing.assert_allclose(got, rows.double().numpy(), rtol=1e-5, atol=1e-7)
    m = run_method("gradient_ascent", trainer, forget, retain, steps=2, batch_size=5, learning_rate=0.05,
                   optimizer="sgd").metrics
    assert m["forget_loss_before"] == pytest.approx(float(rows.double().mean()), rel=1e-5)
    assert m["forget_loss_after"] > m["forget_loss_before"]


def test_a_baseline_on_a_seq2seq_model_weighs_rows_by_their_labelled_tokens(tmp_path):
    import numpy as np
    from datasets import Dataset
    from transformers import default_data_collator

    from hf_iau import IAUConfig, IAUTrainer
    from hf_iau.methods import run_method

    rng = np.random.default_rng(0)
    n = 10
    labels = rng.integers(3, VOCAB, (n, 6))
    for i, keep in enumerate(rng.integers(1, 7, n)):
        labels[i, keep:] = IGNORE_INDEX  # targets of 1..6 tokens
    ds = Dataset.from_dict({"id": list(range(n)), "input_ids": rng.integers(3, VOCAB, (n, T)).tolist(),
                            "attention_mask": [[1] * T] * n, "labels": labels.tolist()})
    args = IAUConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, per_device_eval_batch_size=2, seed=0,
                     disable_tqdm=True, per_device_train_batch_size=4)
    trainer = IAUTrainer(model=tiny_t5(), args=args, train_dataset=ds, data_collator=default_data_collator)
    forget = ds.select(range(5))
    with torch.no_grad():  # the model's own token mean over the whole forget set, in one batch
        whole = trainer.model(**{k: v for k, v in default_data_collator(list(forget)).items() if k != "id"}).loss
    m = run_method("gradient_ascent", trainer, forget, ds.select(range(5, n)), steps=1, batch_size=5,
                   learning_rate=0.05, optimizer="sgd").metrics
    assert m["forget_loss_before"] == pytest.approx(float(whole), rel=1e-5)
    assert m["forget_loss_after"] > m["forget_loss_before"]
