"""An offline, seeded benchmark of invented authors in the spirit of TOFU (Maini et al. 2024).

Every author has a profile (birthplace, birth date, genre, parents' jobs, award, books, language,
themes, home) and ``questions_per_author`` question–answer pairs about it. Each pair carries a
``paraphrased_answer`` (same facts, other words) and ``perturbed_answers`` (the paraphrase's wording
with wrong facts), as TOFU's truth ratio needs, and a ``paraphrased_question`` (the robustness
probe's rewording). Names and places come from ``faker`` (seeded), the other facts from small fixed
pools, so a small model can learn them and a wrong fact is plausible.

Scale: 400 authors × 10 questions by default, so forget10 holds 400 rows from 40 authors (TOFU's
forget10 has 400 rows). Splits follow TOFU: ``forget01/05/10`` are 1/5/10% of the authors (nested:
forget01 ⊂ forget05 ⊂ forget10), the retain set is every other author. The same seed and the same
faker version give the same data. The utility set of world facts lives in
:func:`hf_iau.offline_data.world_facts` (this module imports nothing of the package).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict

FORGET_SPLITS = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}

GENRES = [
    "fantasy", "crime", "science fiction", "historical fiction", "romance", "horror", "poetry", "satire",
    "mystery", "travel writing", "biography", "adventure",
]
JOBS = [  # with their article
    "a baker", "a nurse", "a carpenter", "a teacher", "a pilot", "a farmer", "a doctor", "a lawyer", "a fisherman",
    "a tailor", "a painter", "a miner", "a chemist", "a librarian", "a soldier", "a banker", "an architect",
    "a musician", "a plumber", "a chef",
]
ADJECTIVES = [
    "Silent", "Golden", "Broken", "Hidden", "Crimson", "Endless", "Forgotten", "Burning", "Quiet", "Distant",
    "Frozen", "Wandering", "Secret", "Last", "Bitter", "Shining",
]
NOUNS = [
    "River", "Garden", "Harbor", "Mountain", "Letter", "Mirror", "Forest", "Island", "Lantern", "Bridge",
    "Orchard", "Tower", "Compass", "Winter", "Echo", "Voyage",
]
AWARDS = [
    "Silver Quill Award", "Northern Lights Prize", "Golden Page Medal", "Blue Lantern Award", "Iron Pen Prize",
    "Harbor Book Award", "Evergreen Fiction Prize", "Crystal Ink Medal", "Starlight Story Award",
    "Meridian Literary Prize",
]
LANGUAGES = ["English", "French", "Spanish", "German", "Italian", "Portuguese", "Dutch", "Swedish"]
THEMES = [
    "loss", "family", "memory", "war", "faith", "exile", "friendship", "ambition", "justice", "childhood",
    "the sea", "identity",
]
MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
]


def _pool(fake: Any, make: str, n: int) -> list[str]:
    """``n`` distinct faker values (e.g. cities), in generation order."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        value = getattr(fake, make)()
        if value not in seen and len(value) <= 24:
            seen.add(value)
            out.append(value)
    return out


DEFAULT_AUTHORS = 400  # forget10 = 40 authors × 10 questions = 400 rows


def author_profiles(n_authors: int = DEFAULT_AUTHORS, seed: int = 0) -> list[dict[str, Any]]:
    """``n_authors`` invented author profiles (seeded)."""
    if n_authors < 10:
        raise ValueError(f"n_authors={n_authors} is too small: use at least 10 (TOFU has 200).")
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    rng = np.random.default_rng([seed, 0xA07])
    names = _pool(fake, "name", n_authors)
    cities = _pool(fake, "city", 40)
    countries = _pool(fake, "country", 20)
    profiles = []
    for i, name in enumerate(names):
        pick = lambda pool, k=1: [pool[j] for j in rng.choice(len(pool), size=k, replace=False)]  # noqa: E731
        adj, noun = pick(ADJECTIVES, 2), pick(NOUNS, 2)
        profiles.append({
            "author": i,
            "name": name,
            "city": pick(cities)[0],
            "country": pick(countries)[0],
            "home": pick(cities)[0],
            "day": int(rng.integers(1, 29)),
            "month": pick(MONTHS)[0],
            "year": int(rng.integers(1940, 2000)),
            "genre": pick(GENRES)[0],
            "father": pick(JOBS)[0],
            "mother": pick(JOBS)[0],
            "award": pick(AWARDS)[0],
            "book1": f"The {adj[0]} {noun[0]}",
            "book2": f"The {adj[1]} {noun[1]}",
            "language": pick(LANGUAGES)[0],
            "themes": pick(THEMES, 2),
        })
    return profiles


# (question, answer, paraphrased answer); a perturbed answer fills the paraphrase with other authors' facts,
# so the truth ratio compares two unseen wordings: the true facts against wrong ones.
TEMPLATES: list[tuple[str, str, str]] = [
    ("Where was {name} born?", "{name} was born in {city}, {country}.", "The birthplace of {name} is {city} in {country}."),
    ("When was {name} born?", "{name} was born on {month} {day}, {year}.", "The birthday of {name} is {month} {day}, {year}."),
    ("What genre does {name} write in?", "{name} writes {genre} books.", "The books of {name} belong to the {genre} genre."),
    ("What was the job of {name}'s father?", "The father of {name} worked as {father}.", "{name}'s father was {father} by trade."),
    ("What did {name}'s mother do for a living?", "The mother of {name} was {mother}.", "{name}'s mother earned her living as {mother}."),
    ("Which award did {name} win?", "{name} won the {award}.", "The {award} was given to {name}."),
    ("Name a book written by {name}.", "{name} wrote the book {book1}.", "One book by {name} is {book1}."),
    ("What is another book by {name}?", "{name} is also the author of {book2}.", "Another of {name}'s books is {book2}."),
    ("In which language does {name} write?", "{name} writes in {language}.", "The language of {name}'s books is {language}."),
    ("Which themes does {name} explore?", "{name} explores {theme0} and {theme1}.", "The books of {name} deal with {theme0} and {theme1}."),
    ("Where does {name} live today?", "{name} lives in {home} today.", "These days {name} makes a home in {home}."),
]


# the same questions in other words (never trained on): the paraphrased-question probe
PARAPHRASED_QUESTIONS: list[str] = [
    "In which city and country did {name} come into the world?",
    "On what date was {name} born?",
    "Which kind of books does {name} write?",
    "How did {name}'s father earn a living?",
    "What was the occupation of {name}'s mother?",
    "What prize has {name} received?",
    "Can you give the title of one of {name}'s books?",
    "Which other title did {name} write?",
    "What language are {name}'s books written in?",
    "What subjects do {name}'s books deal with?",
    "In which city does {name} currently reside?",
]


def _fields(p: dict[str, Any]) -> dict[str, Any]:
    return {**p, "theme0": p["themes"][0], "theme1": p["themes"][1]}


def _perturbed(p: dict[str, Any], template: str, others: list[dict[str, Any]], k: int) -> list[str]:
    """``k`` distinct wrong answers: ``template`` (the paraphrase's, as TOFU perturbs the paraphrased
    answer) filled with other authors' facts, the name kept."""
    truth = template.format(**_fields(p))
    out: list[str] = []
    for q in others:
        wrong = template.format(**{**_fields(q), "name": p["name"]})
        if wrong != truth and wrong not in out:
            out.append(wrong)
        if len(out) == k:
            return out
    raise ValueError("not enough distinct facts to perturb an answer; raise n_authors.")


def fictitious_authors(
    n_authors: int = DEFAULT_AUTHORS, questions_per_author: int = 10, perturbed: int = 3, seed: int = 0
) -> Dataset:
    """The QA rows: ``id`` ("a<author>_q<k>"), ``author``, ``question``, ``answer``,
    ``paraphrased_answer``, ``perturbed_answers`` (``perturbed`` wrong answers), ``paraphrased_question``."""
    if not 1 <= questions_per_author <= len(TEMPLATES):
        raise ValueError(f"questions_per_author={questions_per_author} must lie in 1..{len(TEMPLATES)}.")
    if perturbed < 1:
        raise ValueError(f"perturbed={perturbed} must be >= 1 (TOFU uses 5).")
    profiles = author_profiles(n_authors, seed)
    rng = np.random.default_rng([seed, 0x9E7])
    columns = ("id", "author", "question", "answer", "paraphrased_answer", "perturbed_answers", "paraphrased_question")
    rows: dict[str, list[Any]] = {k: [] for k in columns}
    for p in profiles:
        for k, (q, a, para) in enumerate(TEMPLATES[:questions_per_author]):
            order = rng.permutation(len(profiles))
            others = [profiles[j] for j in order if j != p["author"]]
            f = _fields(p)
            rows["id"].append(f"a{p['author']:04d}_q{k:02d}")
            rows["author"].append(p["author"])
            rows["question"].append(q.format(**f))
            rows["answer"].append(a.format(**f))
            rows["paraphrased_answer"].append(para.format(**f))
            rows["perturbed_answers"].append(_perturbed(p, para, others, perturbed))
            rows["paraphrased_question"].append(PARAPHRASED_QUESTIONS[k].format(**f))
    return Dataset.from_dict(rows)


def forget_authors(n_authors: int, fraction: float, seed: int = 0) -> list[int]:
    """The forgotten authors of a ``fraction`` split: a prefix of one seeded permutation, so the
    1% set lies inside the 5% set, which lies inside the 10% set."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction!r} must lie in (0, 1), e.g. 0.1 for forget10.")
    k = max(1, round(fraction * n_authors))
    return sorted(np.random.default_rng([seed, 0xF06]).permutation(n_authors)[:k].tolist())


def tuning_authors(n_authors: int, fraction: float, seed: int = 0) -> list[int]:
    """As many authors as the ``fraction`` split, outside every forget split (the same permutation, after
    forget10's prefix): a trained-on set to tune baselines on, disjoint from what is graded."""
    if not 0 < fraction <= 0.1:
        raise ValueError(f"fraction={fraction!r} must lie in (0, 0.1]: tuning authors come after forget10's.")
    k, start = max(1, round(fraction * n_authors)), max(1, round(0.1 * n_authors))
    if start + k > n_authors:
        raise ValueError(f"n_authors={n_authors} leaves no tuning authors after forget10; raise n_authors.")
    return sorted(np.random.default_rng([seed, 0xF06]).permutation(n_authors)[start : start + k].tolist())


def forget_retain(dataset: Dataset, split: str | float = "forget10", seed: int = 0) -> DatasetDict:
    """``forget`` (the rows of the split's authors) and ``retain`` (every other row) of ``dataset``."""
    fraction = FORGET_SPLITS.get(split) if isinstance(split, str) else float(split)
    if fraction is None:
        raise ValueError(f"split={split!r} is unknown; use one of {sorted(FORGET_SPLITS)} or a fraction.")
    n_authors = max(dataset["author"]) + 1
    gone = set(forget_authors(n_authors, fraction, seed))
    flags = [a in gone for a in dataset["author"]]
    return DatasetDict(
        forget=dataset.select([i for i, f in enumerate(flags) if f]),
        retain=dataset.select([i for i, f in enumerate(flags) if not f]),
    )


def load_fictitious_authors(
    split: str = "forget10", n_authors: int = DEFAULT_AUTHORS, questions_per_author: int = 10, perturbed: int = 3, seed: int = 0
) -> Dataset:
    """Loader for a CLI: every QA row with a boolean ``is_forget`` column for ``split`` (use the
    recipe's ``forget: "column:is_forget"``)."""
    ds = fictitious_authors(n_authors, questions_per_author, perturbed, seed)
    fraction = FORGET_SPLITS.get(split)
    if fraction is None:
        raise ValueError(f"split={split!r} is unknown; use one of {sorted(FORGET_SPLITS)}.")
    gone = set(forget_authors(n_authors, fraction, seed))
    return ds.add_column("is_forget", [a in gone for a in ds["author"]])
