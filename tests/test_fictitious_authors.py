"""The fictitious-author benchmark data: seeded, TOFU-sized, nested author splits, sound perturbations."""

from __future__ import annotations

from difflib import SequenceMatcher

import pytest

from hf_iau.fictitious_authors import (
    author_profiles,
    fictitious_authors,
    forget_authors,
    forget_retain,
    load_fictitious_authors,
    world_facts,
)


@pytest.fixture(scope="module")
def authors():
    return fictitious_authors(n_authors=200, questions_per_author=10, perturbed=3, seed=0)


def test_size_columns_and_determinism(authors):
    assert len(authors) == 2000 and len(set(authors["author"])) == 200
    assert len(set(authors["id"])) == 2000
    assert authors.to_dict() == fictitious_authors(200, 10, 3, seed=0).to_dict()
    assert list(authors["answer"]) != list(fictitious_authors(200, 10, 3, seed=1)["answer"])


def test_every_row_has_a_paraphrase_and_distinct_wrong_answers(authors):
    names = [p["name"] for p in author_profiles(200, seed=0)]
    for row in authors:
        name = names[row["author"]]
        assert name in row["question"] and name in row["answer"] and name in row["paraphrased_answer"]
        assert row["paraphrased_answer"] != row["answer"]
        wrong = row["perturbed_answers"]
        assert len(wrong) == 3 and len(set(wrong)) == 3 and row["answer"] not in wrong
        assert all(name in w for w in wrong)  # same author, wrong fact
        # Perturbations reword the paraphrase (as TOFU), not the trained answer.
        para = row["paraphrased_answer"]
        assert all(SequenceMatcher(None, w, para).ratio() > SequenceMatcher(None, w, row["answer"]).ratio() for w in wrong)


def test_splits_are_by_author_nested_and_complete(authors):
    sets = {s: set(forget_authors(200, f, seed=0)) for s, f in (("01", 0.01), ("05", 0.05), ("10", 0.10))}
    assert [len(v) for v in sets.values()] == [2, 10, 20]
    assert sets["01"] <= sets["05"] <= sets["10"]
    split = forget_retain(authors, "forget10", seed=0)
    f, r = split["forget"], split["retain"]
    assert len(f) == 200 and len(r) == 1800
    assert set(f["author"]) == sets["10"] and not set(f["author"]) & set(r["author"])
    assert sorted(list(f["id"]) + list(r["id"])) == sorted(authors["id"])
    flagged = load_fictitious_authors("forget05", n_authors=200, seed=0)
    assert sum(flagged["is_forget"]) == 100
    with pytest.raises(ValueError, match="forget07"):
        forget_retain(authors, "forget07")


def test_world_facts_are_seeded_corpus_continuations():
    a, b = world_facts(50, seed=0), world_facts(50, seed=0)
    assert a.to_dict() == b.to_dict() and len(a) == 50
    assert all(len(q.split()) == 8 and len(ans.split()) == 8 for q, ans in zip(a["question"], a["answer"]))
    assert list(a["question"]) != list(world_facts(50, seed=1)["question"])
