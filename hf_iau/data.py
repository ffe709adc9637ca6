"""Forget/retain splits and fingerprints of forget sets.

A fingerprint is the sha256 of the sorted ids (as JSON strings): it names a forget set in
cards and ledgers without revealing a single row.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Callable, Iterable, Sequence

from datasets import Dataset, DatasetDict

ForgetSpec = Sequence[Any] | Callable[[dict[str, Any]], bool] | float


def fingerprint_ids(ids: Iterable[Any]) -> str:
    """sha256 (hex) over the sorted ids, independent of order and of int/str spelling."""
    keys = sorted(json.dumps(str(i)) for i in ids)
    return hashlib.sha256(("[" + ",".join(keys) + "]").encode()).hexdigest()


def fingerprint_dataset(dataset: Dataset, id_column: str | None = "id") -> str:
    """Fingerprint of a dataset: of its id column when present, else of its rows' content hashes."""
    if id_column and id_column in dataset.column_names:
        return fingerprint_ids(dataset[id_column])
    return fingerprint_ids(_row_hashes(dataset))


def _row_hashes(dataset: Dataset) -> list[str]:
    return [
        hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()
        for row in dataset
    ]


def forget_retain_split(
    dataset: Dataset,
    forget: ForgetSpec,
    id_column: str = "id",
    seed: int = 0,
) -> DatasetDict:
    """Split ``dataset`` into ``DatasetDict(forget=..., retain=...)``.

    ``forget`` is a list of ids (values of ``id_column``), a predicate on a row, or a fraction
    in (0, 1) drawn with ``seed``. Unknown ids raise ``ValueError`` (naming how many, not which).
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("forget_retain_split: `dataset` is empty; pass the training dataset.")
    if isinstance(forget, bool):
        raise ValueError("`forget` must be a list of ids, a predicate on a row, or a fraction in (0, 1).")
    if isinstance(forget, float) or (isinstance(forget, int) and not isinstance(forget, bool) and forget in (0, 1)):
        frac = float(forget)
        if not 0.0 < frac < 1.0:
            raise ValueError(f"`forget` as a fraction must lie in (0, 1), got {forget}.")
        k = max(1, round(frac * n))
        forget_idx = sorted(random.Random(seed).sample(range(n), k))
    elif callable(forget):
        forget_idx = [i for i, row in enumerate(dataset) if forget(row)]
    else:
        if id_column not in dataset.column_names:
            raise ValueError(
                f"`id_column`={id_column!r} is not a column of the dataset (columns: {dataset.column_names}); "
                "add an id column (e.g. dataset.add_column('id', range(len(dataset)))) or pass `id_column=`."
            )
        wanted = list(forget)
        ids = dataset[id_column]
        id_types = {type(i) for i in ids}
        bad_type = [w for w in wanted if type(w) not in id_types]
        if bad_type:
            raise ValueError(
                f"`forget`: {len(bad_type)} id(s) have type {type(bad_type[0]).__name__} but the "
                f"`{id_column}` column holds {', '.join(sorted(t.__name__ for t in id_types))}; convert the ids."
            )
        wanted_set = set(wanted)
        forget_idx = [i for i, v in enumerate(ids) if v in wanted_set]
        found = {ids[i] for i in forget_idx}
        missing = len(wanted_set - found)
        if missing:
            raise ValueError(
                f"`forget`: {missing} of {len(wanted_set)} id(s) are not in column `{id_column}` of the dataset; "
                "check the ids against the training data."
            )
    if not forget_idx:
        raise ValueError("`forget` selects no rows: the forget set would be empty.")
    if len(forget_idx) == n:
        raise ValueError("`forget` selects every row: the retain set would be empty.")
    chosen = set(forget_idx)
    retain_idx = [i for i in range(n) if i not in chosen]
    return DatasetDict(forget=dataset.select(forget_idx), retain=dataset.select(retain_idx))


def check_disjoint(forget: Dataset, retain: Dataset, id_column: str | None = "id") -> None:
    """Raise ``ValueError`` when a forget row is also in the retain set (by id, else by content)."""
    if id_column and id_column in forget.column_names and id_column in retain.column_names:
        overlap = set(forget[id_column]) & set(retain[id_column])
    else:
        overlap = set(_row_hashes(forget)) & set(_row_hashes(retain))
    if overlap:
        raise ValueError(
            f"forget and retain sets overlap in {len(overlap)} row(s); remove the forget rows from "
            "`retain_dataset` (see hf_iau.forget_retain_split)."
        )
