"""Per-example distance to the retrain distribution, against hand computations."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hf_iau.metrics.retrain_distribution import example_margins, klom_scores, label_margin, score_summary, z_scores

# Two toy retrain ensembles (3 retrains × 2 examples) with the same means μ = (1, -2):
TIGHT = np.array([[1.0, -2.0], [1.2, -2.2], [0.8, -1.8]])  # sample variance (ddof 1) 0.04 on both
WIDE = np.array([[0.0, -4.0], [1.0, -2.0], [2.0, 0.0]])  # sample variance 1 and 4
UNLEARNED = np.array([1.4, -2.0])
TINY = 1e-9  # floor small enough to leave the hand computations exact to ~1e-15


def test_one_unlearned_model_scores_z_squared_over_two_against_each_ensemble():
    # TIGHT: z = (1.4 - 1) / 0.2 = 2 → KLoM = 2²/2 = 2; the second example sits on the mean.
    assert klom_scores(UNLEARNED, TIGHT, min_std=TINY) == pytest.approx([2.0, 0.0], abs=1e-9)
    assert z_scores(UNLEARNED, TIGHT, min_std=TINY) == pytest.approx([2.0, 0.0], abs=1e-9)
    # WIDE: the same output is only z = 0.4 / 1 = 0.4 away → KLoM = 0.08.
    assert klom_scores(UNLEARNED, WIDE, min_std=TINY) == pytest.approx([0.08, 0.0], abs=1e-9)
    assert z_scores(UNLEARNED[None], WIDE, min_std=TINY) == pytest.approx([0.4, 0.0], abs=1e-9)


def test_several_unlearned_models_use_the_gaussian_kl():
    retrained = np.array([[1.0], [2.0], [3.0]])  # μ_r = 2, σ_r² = 1
    unlearned = np.array([[2.0], [4.0]])  # μ_u = 3, σ_u² = 2
    expected = 0.5 * math.log(2.0) + (1.0 + 1.0) / (2 * 2.0) - 0.5
    assert klom_scores(unlearned, retrained, min_std=TINY) == pytest.approx([expected], abs=1e-9)
    # identical distributions: 0
    assert klom_scores(retrained, retrained, min_std=TINY) == pytest.approx([0.0], abs=1e-12)


def test_floor_on_spread_when_every_retrain_agrees():
    retrained = np.zeros((3, 1))
    # σ_r² = 0 + 0.1² → KLoM = 0.3² / (2 · 0.01) = 4.5, z = 3
    assert klom_scores(np.array([0.3]), retrained, min_std=0.1) == pytest.approx([4.5])
    assert z_scores(np.array([0.3]), retrained, min_std=0.1) == pytest.approx([3.0])


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match="at least 2 retrained"):
        klom_scores(UNLEARNED, TIGHT[:1])
    with pytest.raises(ValueError, match="same examples"):
        klom_scores(UNLEARNED[:1], TIGHT)
    with pytest.raises(ValueError, match="min_std"):
        z_scores(UNLEARNED, TIGHT, min_std=0.0)
    with pytest.raises(ValueError, match="one flag per example"):
        score_summary(np.ones(3), np.ones(2, dtype=bool))


def test_score_summary_median_and_p95_per_group():
    scores = np.array([1.0, 10.0, 2.0, 3.0, 20.0, 4.0, 5.0])
    forget = np.array([True, False, True, True, False, True, True])
    out = score_summary(scores, forget)
    # forget 1..5: median 3, p95 = 1 + 0.95·4 = 4.8 (linear interpolation); rest {10, 20}: 15, 19.5
    assert out == pytest.approx({"forget_median": 3.0, "forget_p95": 4.8, "rest_median": 15.0, "rest_p95": 19.5})


def test_label_margin_by_hand():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    got = label_margin(logits, torch.tensor([0, 2]))
    assert got.tolist() == pytest.approx([2 - math.log(1 + math.e), 0 - math.log(math.exp(3) + 1)])
    assert label_margin(logits, torch.tensor([0, -100]))[1].item() == 0.0


class ToyForSequenceClassification(torch.nn.Module):
    """Logits = a fixed table row per input id (so the margins are known by hand)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table)
        self.config = SimpleNamespace(problem_type=None, num_labels=table.shape[-1])

    def forward(self, input_ids: torch.Tensor, **_: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])


class ToyForCausalLM(ToyForSequenceClassification):
    pass


def test_example_margins_classifier_and_causal_lm():
    table = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]])
    clf = ToyForSequenceClassification(table)
    batches = [{"input_ids": torch.tensor([0, 1]), "labels": torch.tensor([0, 1])}, {"input_ids": torch.tensor([2]), "labels": torch.tensor([2])}]
    m = example_margins(clf, batches)
    assert m.tolist() == pytest.approx([2 - math.log(1 + math.e), 3 - math.log(2), 1 - math.log(2 * math.e)])

    lm = ToyForCausalLM(table)
    # row 0: tokens 0 → 1 → 2, both targets scored; row 1: 1 → 1 → 0 with the last target masked
    batch = {"input_ids": torch.tensor([[0, 1, 2], [1, 1, 0]]), "labels": torch.tensor([[0, 1, 2], [1, 1, -100]])}
    m = example_margins(lm, [batch])
    tok01 = 0 - math.log(math.exp(2) + math.exp(1))  # logits of token 0, target 1
    tok12 = 0 - math.log(1 + math.exp(3))  # logits of token 1, target 2
    tok11 = 3 - math.log(2)  # logits of token 1, target 1
    assert m.tolist() == pytest.approx([(tok01 + tok12) / 2, tok11])
    assert lm.training  # mode restored
