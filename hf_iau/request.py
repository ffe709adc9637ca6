"""``DeletionRequest``: the id algebra of one deletion request, and the model's deletion record.

    forget  = the rows to delete now
    deleted = every row deleted so far for this model: earlier requests of the same trainer and
              those recorded in the folder the model was loaded from (``deleted_rows.json``)
    retain  = train − forget − deleted            (when ``retain_dataset`` is None)

Rows are named by their ``id_column`` value (else by a hash of their content). Ids never reach
disk: the record holds keyed per-row digests ``HMAC-SHA256(key, id)`` (``data.row_digests``)
under the local fingerprint key, which is never saved with the model. A record made with another
key cannot be matched; then ``retain_dataset=None`` is refused with the fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from datasets import Dataset

from .data import (FINGERPRINT_SCHEME, _row_hashes, check_disjoint, column_values, content_hashes, fingerprint_ids, key_id,
                   row_digests)
from .ledger import DELETION_RECORD_NAME, deletion_record_sha256, read_ledger
from .validation import validate_unlearning_data, validate_unlearning_ids

RECORD_VERSION = 1


@dataclass
class DeletionRecord:
    """Keyed digests of every row deleted so far, grouped by the key (``key_id``) that made them.

    ``legacy_requests``: requests in the parent's ledger that left no digests (hf-iau before keys).
    """

    parts: dict[str, set[str]] = field(default_factory=dict)
    source: str | None = None
    legacy_requests: int = 0
    requests: int = 0  # requests in the parent's ledger (the public request index continues from here)

    @property
    def count(self) -> int:
        """Number of deleted rows recorded (all keys)."""
        return sum(len(v) for v in self.parts.values())

    def sha256(self) -> str:
        """sha256 of the record's canonical JSON (written into each ledger entry; checked by ``ledger verify``)."""
        return deletion_record_sha256(self.parts)

    def readable_with(self, kid: str) -> bool:
        """True when every recorded row was digested with the key named ``kid`` (so rows can be matched)."""
        return all(k == kid for k, v in self.parts.items() if v) and not self.legacy_requests

    def deleted(self, kid: str) -> set[str]:
        """Digests made with key ``kid``."""
        return self.parts.get(kid, set())

    def add(self, kid: str, digests: Iterable[str]) -> None:
        """Record rows as deleted."""
        self.parts.setdefault(kid, set()).update(digests)

    def copy(self) -> "DeletionRecord":
        return DeletionRecord(
            {k: set(v) for k, v in self.parts.items()}, self.source, self.legacy_requests, self.requests
        )

    def save(self, folder: str | os.PathLike) -> Path | None:
        """Write ``deleted_rows.json`` (digests only, sorted) into ``folder``; nothing when the record is empty."""
        if not self.count:
            return None
        path = Path(folder) / DELETION_RECORD_NAME
        body = {
            "version": RECORD_VERSION,
            "scheme": FINGERPRINT_SCHEME,
            "parts": [{"key_id": k, "digests": sorted(v)} for k, v in sorted(self.parts.items()) if v],
            "sha256": self.sha256(),
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(body, indent=0) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike | None) -> "DeletionRecord":
        """The record saved in local ``folder`` (empty when there is none or ``folder`` is not a local folder);
        counts the ledger's requests, and those that left no record (``legacy_requests``)."""
        if folder and not Path(folder).is_dir():
            return cls(source=str(folder))
        if not folder:
            return cls(source=None)
        folder = Path(folder)
        path = folder / DELETION_RECORD_NAME
        parts: dict[str, set[str]] = {}
        if path.is_file():
            try:
                body = json.loads(path.read_text())
                for part in body["parts"]:
                    parts.setdefault(str(part["key_id"]), set()).update(str(d) for d in part["digests"])
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{path} is not a valid deletion record ({err.__class__.__name__}); restore it from the checkpoint "
                    "it came from, or pass `retain_dataset=` explicitly."
                ) from None
        record = cls(parts, str(folder.resolve()))
        entries = read_ledger(folder)
        record.legacy_requests = sum(1 for e in entries if not e.get("deleted_rows_sha256"))
        record.requests = len(entries)
        return record


def _row_keys(ds: Dataset, col: str | None) -> list[Any]:
    return column_values(ds, col) if col and col in ds.column_names else _row_hashes(ds)


@dataclass
class RequestContext:
    """What a request is checked against: the model's train data, its deletion record and the local key."""

    train: Dataset | None
    id_column: str
    key: bytes
    record: DeletionRecord
    retain_weight: float = 1.0  # a request with retain_weight > 0 needs retained rows
    check_labels: Callable[[str, Dataset], None] | None = None  # raises for rows without usable labels


@dataclass
class DeletionRequest:
    """One validated request: forget rows, retain rows, held-out data, keyed fingerprint and row digests."""

    forget: Dataset
    retain: Dataset
    held_out: Dataset | None
    fingerprint: str
    row_digests: list[str]
    key_id: str
    deleted_before: int = 0
    scheme: str = FINGERPRINT_SCHEME

    @classmethod
    def build(
        cls,
        model: Any,
        forget: Dataset,
        retain: Dataset | None,
        held_out: Dataset | None,
        ctx: RequestContext,
    ) -> "DeletionRequest":
        """Validate and complete a request (retain = train − forget − rows deleted earlier; held-out data checked)."""
        col = ctx.id_column
        for name, ds, optional in (("forget_dataset", forget, False), ("retain_dataset", retain, True),
                                   ("held_out_dataset", held_out, True)):
            if not isinstance(ds, Dataset) and not (optional and ds is None):
                kind = "a datasets.Dataset" + (" or None" if optional else "")
                raise ValueError(f"`{name}` must be {kind}, got {type(ds).__name__}.")
        if len(forget) == 0:
            raise ValueError("`forget_dataset` is empty: pass at least one row to forget.")
        validate_unlearning_ids(forget, retain, ctx.train, col)
        kid = key_id(ctx.key)
        deleted = ctx.record.deleted(kid)
        digests = row_digests(_row_keys(forget, col), ctx.key)  # a row deleted before may be forgotten again
        if retain is None:
            retain = _retain_from_train(ctx, forget, kid)
        elif deleted:
            back = sum(1 for d in row_digests(_row_keys(retain, col), ctx.key) if d in deleted)
            if back:
                raise ValueError(
                    f"`retain_dataset` holds {back} row(s) deleted by an earlier request for this model; remove them "
                    "(or pass retain_dataset=None: retain = train − every row deleted so far)."
                )
        if len(retain) == 0 and ctx.retain_weight > 0:
            raise ValueError("`retain_dataset` is empty: pass retained rows, or set retain_weight=0 (pure ascent).")
        check_disjoint(forget, retain, col)
        if held_out is not None:
            check_held_out(held_out, ctx.train, forget, col)
        for name, ds in (("forget_dataset", forget), ("retain_dataset", retain)):
            if ctx.check_labels is not None:
                ctx.check_labels(name, ds)
        validate_unlearning_data(model, forget, retain)
        fingerprint = fingerprint_ids(_row_keys(forget, col), ctx.key)
        return cls(forget, retain, held_out, fingerprint, digests, kid, ctx.record.count)

    def commit(self, record: DeletionRecord) -> DeletionRecord:
        """Mark the forget rows as deleted in ``record`` (after the update succeeded)."""
        record.add(self.key_id, self.row_digests)
        return record


def _retain_from_train(ctx: RequestContext, forget: Dataset, kid: str) -> Dataset:
    """train − forget − every row deleted so far, by ``id_column``; the forget rows must be train rows."""
    col, train, record = ctx.id_column, ctx.train, ctx.record
    if not isinstance(train, Dataset):
        raise ValueError("`retain_dataset` is None and the trainer has no `train_dataset`: pass `retain_dataset=`.")
    if col not in forget.column_names or col not in train.column_names:
        raise ValueError(
            f"`retain_dataset` is None, so retain = train_dataset minus the forget rows by `id_column`={col!r}, "
            "but that column is missing; add an id column or pass `retain_dataset=`."
        )
    if record.legacy_requests:
        raise ValueError(
            f"`retain_dataset` is None, but {record.legacy_requests} earlier request(s) in the deletion ledger of "
            f"{record.source} left no deletion record (written before hf-iau kept one), so their rows cannot be "
            "excluded; pass `retain_dataset=` without every row deleted so far."
        )
    if not record.readable_with(kid):
        others = ", ".join(sorted(k for k, v in record.parts.items() if v and k != kid))
        raise ValueError(
            f"`retain_dataset` is None, but the deletion record of {record.source} was made with another "
            f"fingerprint key (key id {others}; yours is {kid}), so rows deleted earlier cannot be excluded; pass "
            "IAUConfig(fingerprint_key_file=...) (or $HF_IAU_KEY_FILE) naming the key file that made it, or pass "
            "`retain_dataset=` without every row deleted so far."
        )
    train_ids = column_values(train, col)
    forget_ids = set(column_values(forget, col))
    missing = len(forget_ids - set(train_ids))
    if missing:
        raise ValueError(
            f"`forget_dataset`: {missing} id(s) are not in the train dataset's `{col}` column; "
            "check the ids or pass `retain_dataset=` explicitly."
        )
    check_same_rows(forget, train.select([i for i, v in enumerate(train_ids) if v in forget_ids]), col)
    deleted = record.deleted(kid)
    train_digests = row_digests(train_ids, ctx.key) if deleted else [None] * len(train_ids)
    keep = [i for i, (v, d) in enumerate(zip(train_ids, train_digests)) if v not in forget_ids and d not in deleted]
    return train.select(keep)


def _content(ds: Dataset, columns: list[str]) -> list[bytes]:
    return content_hashes(ds.select_columns(columns)) if columns else []


def check_same_rows(forget: Dataset, train_rows: Dataset, id_column: str) -> None:
    """The forget rows must hold the content of the train rows with the same ids (on their common columns)."""
    cols = sorted(set(forget.column_names) & set(train_rows.column_names))
    by_id = dict(zip(column_values(train_rows, id_column), _content(train_rows, cols)))
    differ = sum(1 for i, h in zip(column_values(forget, id_column), _content(forget, cols)) if by_id.get(i) != h)
    if differ:
        raise ValueError(
            f"`forget_dataset`: {differ} row(s) carry the id of a training row but different content "
            f"(columns {cols}); pass the training rows themselves (e.g. train.filter on `{id_column}`)."
        )


HELD_OUT_OVERLAP = 0.10  # share of held-out rows found in train/forget from which held-out data is refused


def check_held_out(held_out: Dataset, train: Dataset | None, forget: Dataset, id_column: str) -> None:
    """Held-out ("never seen") data must not be training data: rows are compared by content on their common
    columns other than ``id_column`` (splits often number their ids independently). Refused when at least
    ``HELD_OUT_OVERLAP`` of the held-out rows (and at least 3) are train or forget rows; a few
    duplicates (common in real data) only warn."""
    import warnings

    for name, other in (("the forget set", forget), ("the train dataset", train)):
        if not isinstance(other, Dataset) or len(other) == 0 or len(held_out) == 0:
            continue
        cols = sorted((set(held_out.column_names) & set(other.column_names)) - {id_column})
        seen = set(_content(other, cols))
        shared = sum(1 for h in _content(held_out, cols) if h in seen)
        if shared >= max(3.0, HELD_OUT_OVERLAP * len(held_out)):
            raise ValueError(
                f"the held-out data (`eval_dataset` / `held_out_dataset`) shares {shared} of its {len(held_out)} rows "
                f"with {name}: it stands for never-seen data, so the targets and the stopping rule would be wrong. "
                "Pass a split the model was not trained on (e.g. a validation split), or none."
            )
        if shared:
            warnings.warn(f"{shared} held-out row(s) also occur in {name} (duplicates); they count as never seen.",
                          stacklevel=5)


__all__ = ["DELETION_RECORD_NAME", "DeletionRecord", "DeletionRequest", "RequestContext", "check_held_out",
           "check_same_rows"]
