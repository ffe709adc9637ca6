"""The fictitious-author benchmark data: seeded, TOFU-sized, nested author splits, sound perturbations."""

from __future__ import annotations

import ast
from difflib import SequenceMatcher
from pathlib import Path

import pytest

from hf_iau.fictitious_authors import (
    author_profiles,
    fictitious_authors,
    forget_authors,
    forget_retain,
    load_fictitious_authors,
)
from hf_iau.offline_data import world_facts


@pytest.fixture(scope="module")
def authors():
    return fictitious_authors(seed=0)  # the default size: 400 authors × 10 questions


def test_size_columns_and_determinism(authors):
    assert len(authors) == 4000 and len(set(authors["author"])) == 400
    assert len(set(authors["id"])) == 4000
    assert authors.to_dict() == fictitious_authors(400, 10, 3, seed=0).to_dict()
    assert list(fictitious_authors(20, 10, 3, seed=0)["answer"]) != list(fictitious_authors(20, 10, 3, seed=1)["answer"])


def test_every_row_has_a_paraphrase_and_distinct_wrong_answers(authors):
    names = [p["name"] for p in author_profiles(400, seed=0)]
    for row in authors.select(range(0, 4000, 7)):
        name = names[row["author"]]
        assert name in row["question"] and name in row["answer"] and name in row["paraphrased_answer"]
        assert row["paraphrased_answer"] != row["answer"]
        assert name in row["paraphrased_question"] and row["paraphrased_question"] != row["question"]
        wrong = row["perturbed_answers"]
        assert len(wrong) == 3 and len(set(wrong)) == 3 and row["answer"] not in wrong
        assert all(name in w for w in wrong)  # same author, wrong fact
        # Perturbations reword the paraphrase (as TOFU), not the trained answer.
        para = row["paraphrased_answer"]
        assert all(SequenceMatcher(None, w, para).ratio() > SequenceMatcher(None, w, row["answer"]).ratio() for w in wrong)


def test_splits_are_by_author_nested_complete_and_tofu_sized(authors):
    sets = {s: set(forget_authors(400, f, seed=0)) for s, f in (("01", 0.01), ("05", 0.05), ("10", 0.10))}
    assert [len(v) for v in sets.values()] == [4, 20, 40]
    assert sets["01"] <= sets["05"] <= sets["10"]
    split = forget_retain(authors, "forget10", seed=0)
    f, r = split["forget"], split["retain"]
    assert len(f) == 400 and len(r) == 3600  # TOFU's forget10: 400 rows; here from 40 authors
    assert set(f["author"]) == sets["10"] and not set(f["author"]) & set(r["author"])
    assert sorted(list(f["id"]) + list(r["id"])) == sorted(authors["id"])
    flagged = load_fictitious_authors("forget05", seed=0)
    assert sum(flagged["is_forget"]) == 200
    with pytest.raises(ValueError, match="forget07"):
        forget_retain(authors, "forget07")


def test_world_facts_are_seeded_continuations_with_options_under_the_same_question():
    a, b = world_facts(50, seed=0), world_facts(50, seed=0)
    assert a.to_dict() == b.to_dict() and len(a) == 50
    assert all(len(q.split()) == 8 and len(ans.split()) == 8 for q, ans in zip(a["question"], a["answer"]))
    for ans, wrong in zip(a["answer"], a["perturbed_answers"]):
        assert len(wrong) == 3 and ans not in wrong and all(len(w.split()) == 8 for w in wrong)
    assert list(a["question"]) != list(world_facts(50, seed=1)["question"])


def test_no_import_circle_between_the_data_modules():
    """fictitious_authors imports nothing of the package; offline_data may import it (one direction)."""
    src = Path(__file__).resolve().parents[1] / "hf_iau" / "fictitious_authors.py"
    tree = ast.parse(src.read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n.module for n in imports if n.level > 0 or (n.module or "").startswith("hf_iau")]


def test_tuning_authors_are_trained_on_but_never_forgotten():
    from hf_iau.fictitious_authors import tuning_authors

    tune = set(tuning_authors(400, 0.1, seed=2))
    assert len(tune) == 40 and not tune & set(forget_authors(400, 0.1, seed=2))
    assert len(tuning_authors(400, 0.01, seed=2)) == 4 and set(tuning_authors(400, 0.01, seed=2)) <= tune
    with pytest.raises(ValueError, match="0.1]"):
        tuning_authors(400, 0.2)
