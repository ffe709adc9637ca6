"""Causal-LM collation keeps prompt-masked labels; the unlearning loss sees answer tokens only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from hf_iau import IAUTrainer
from hf_iau.collators import CausalLMCollator
from hf_iau.losses import batch_losses
from hf_iau.qa import qa_to_lm_examples

from tiny import parity_args, tiny_gpt2, tiny_llama, word_tokenizer

QA = {
    "id": ["a", "b", "c"],
    "question": ["w1 w2 w3 w4", "w5 w6", "w7 w8 w9"],
    "answer": ["w10 w11", "w12 w13 w14 w15 w16", "w17"],
}


def qa_rows(tok):
    ds = qa_to_lm_examples(Dataset.from_dict(QA), tok)
    return [{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in ds]


def test_default_collator_of_the_trainer_keeps_prompt_labels(tmp_path):
    tok = word_tokenizer()
    trainer = IAUTrainer(model=tiny_gpt2(), args=parity_args(tmp_path), processing_class=tok)
    assert isinstance(trainer.data_collator, CausalLMCollator)
    rows = qa_rows(tok)
    batch = trainer.data_collator(rows)
    length = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == batch["labels"].shape == (3, length)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        assert batch["labels"][i, :n].tolist() == r["labels"]  # prompt stays -100, answer + EOS stay
        assert batch["labels"][i, n:].eq(-100).all() and batch["attention_mask"][i, n:].eq(0).all()
        assert batch["input_ids"][i, n:].eq(tok.pad_token_id).all()
    # question (1 + words + 1 tokens for "Question: ... Answer:") masked; answer words + EOS labelled
    assert [int((b != -100).sum()) for b in batch["labels"]] == [3, 6, 2]


def test_eos_label_survives_when_pad_is_eos():
    tok = word_tokenizer()
    tok.pad_token = tok.eos_token  # the usual Llama set-up
    rows = qa_rows(tok)
    batch = CausalLMCollator(tok)(rows)
    eos = tok.eos_token_id
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        assert batch["labels"][i, n - 1] == eos  # last real token: EOS, still a target
        assert batch["input_ids"][i, n:].eq(eos).all() and batch["labels"][i, n:].eq(-100).all()


def test_rows_without_labels_get_input_ids_masked_by_attention():
    tok = word_tokenizer()
    tok.pad_token = tok.eos_token
    eos = tok.eos_token_id
    rows = [{"input_ids": [5, 6, eos]}, {"input_ids": [7, eos, 8, 9, eos], "attention_mask": [1, 1, 1, 1, 1]}]
    batch = CausalLMCollator(tok)(rows)
    assert batch["labels"].tolist() == [[5, 6, eos, -100, -100], [7, eos, 8, 9, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    # a row pre-padded by the user: its masked positions are no target either
    pre = CausalLMCollator(tok)([{"input_ids": [5, 6, 0], "attention_mask": [1, 1, 0], "labels": [5, 6, 0]}])
    assert pre["labels"].tolist() == [[5, 6, -100]]
    # left padding (generation set-ups) pads on the left, labels too; extras are stacked
    tok.padding_side = "left"
    left = CausalLMCollator(tok, pad_to_multiple_of=4)([{"input_ids": [5, 6], "labels": [-100, 6], "idx": 0},
                                                       {"input_ids": [7, 8, 9], "labels": [-100, 8, 9], "idx": 1}])
    assert left["labels"].tolist() == [[-100, -100, -100, 6], [-100, -100, 8, 9]]
    assert left["input_ids"].tolist() == [[eos, eos, 5, 6], [eos, 7, 8, 9]]
    assert left["idx"].tolist() == [0, 1]


def test_bad_rows_name_the_problem():
    tok = word_tokenizer()
    c = CausalLMCollator(tok)
    with pytest.raises(ValueError, match="some rows have `labels`"):
        c([{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [5]}])
    with pytest.raises(ValueError, match="lengths"):
        c([{"input_ids": [5, 6], "labels": [5]}])
    with pytest.raises(ValueError, match="input_ids"):
        c([{"text": "w1"}])


@pytest.mark.parametrize("make_model", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_unlearning_loss_depends_on_answer_tokens_only(make_model):
    tok = word_tokenizer()
    model = make_model().eval()
    rows = qa_rows(tok)
    batch = CausalLMCollator(tok)(rows)
    with torch.no_grad():
        bl = batch_losses(model, batch)
    # hand loop: CE of every answer token (and EOS) given its prefix, nothing else
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    lp = F.log_softmax(logits, -1)
    for i, r in enumerate(rows):
        p = r["labels"].count(-100)
        answer = r["input_ids"][p:]
        want = -sum(float(lp[i, p + j - 1, t]) for j, t in enumerate(answer))
        assert float(bl.loss_sum[i]) == pytest.approx(want, rel=1e-5)
        assert int(bl.count[i]) == len(answer)
    # the loss does not move when the predictions at question positions move: zero gradient there
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits.detach().requires_grad_(True)
    shift = logits[:, :-1].reshape(-1, logits.size(-1))
    loss = F.cross_entropy(shift, batch["labels"][:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
    loss.backward()
    g = logits.grad.abs().sum(-1)  # [B, T]: position t predicts token t + 1
    for i, r in enumerate(rows):
        p = r["labels"].count(-100)
        n = len(r["input_ids"])
        assert g[i, : p - 1].eq(0).all() and g[i, n - 1 :].eq(0).all()
        assert (g[i, p - 1 : n - 1] > 0).all()
    # perturbing one answer target changes that row's loss and no other
    changed = [dict(r) for r in rows]
    changed[1] = dict(changed[1], labels=changed[1]["labels"][:-2] + [4, changed[1]["labels"][-1]])
    with torch.no_grad():
        after = batch_losses(model, CausalLMCollator(tok)(changed)).loss_sum
    assert torch.equal(after[[0, 2]], bl.loss_sum[[0, 2]]) and not torch.equal(after[1], bl.loss_sum[1])


def test_trainer_unlearning_loss_covers_answers_only(tmp_path):
    """End to end: IAUTrainer(processing_class=tokenizer) on QA rows; its forget loss = answer-token CE."""
    tok = word_tokenizer()
    tok.pad_token = tok.eos_token
    model = tiny_gpt2()
    ds = qa_to_lm_examples(Dataset.from_dict(QA), tok)
    trainer = IAUTrainer(model=model, args=parity_args(tmp_path), train_dataset=ds, processing_class=tok)
    rows = qa_rows(tok)[:2]
    model.eval()  # no dropout in the hand loop
    with torch.no_grad():
        nll = []
        for r in rows:
            lp = F.log_softmax(model(input_ids=torch.tensor([r["input_ids"]])).logits.double(), -1)[0]
            p = r["labels"].count(-100)
            nll += [-float(lp[p + j - 1, t]) for j, t in enumerate(r["input_ids"][p:])]
    result = trainer.unlearn(ds.select([0, 1]))
    assert result.metrics["forget_loss_before"] == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    assert len(nll) == 3 + 6  # answer words + EOS of rows a and b, no question token
