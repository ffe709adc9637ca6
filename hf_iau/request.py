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
from typing import TYPE_CHECKING, Any, Iterable

from datasets import Dataset

from .data import FINGERPRINT_SCHEME, _row_hashes, check_disjoint, fingerprint_ids, key_id, load_key, row_digests
from .ledger import DELETION_RECORD_NAME, deletion_record_sha256, read_ledger
from .validation import validate_unlearning_data, validate_unlearning_ids

if TYPE_CHECKING:
    from .trainer import IAUTrainer

RECORD_VERSION = 1


@dataclass
class DeletionRecord:
    """Keyed digests of every row deleted so far, grouped by the key (``key_id``) that made them.

    ``legacy_requests``: requests in the parent's ledger that left no digests (hf-iau before keys).
    """

    parts: dict[str, set[str]] = field(default_factory=dict)
    source: str | None = None
    legacy_requests: int = 0

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
        return DeletionRecord({k: set(v) for k, v in self.parts.items()}, self.source, self.legacy_requests)

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
    def load(cls, folder: str | os.PathLike | None, hub: bool = False) -> "DeletionRecord":
        """The record saved in ``folder`` (empty when there is none); counts ledger requests without one.

        With ``hub=True`` a Hub repo id is looked up on the Hub (the ledger and record only: ``from_pretrained``
        does not fetch them); when the Hub cannot be reached a warning says that earlier deletions were not checked.
        """
        if folder and not Path(folder).is_dir():
            hub_folder = _hub_record_folder(str(folder)) if hub else None
            if hub_folder is None:
                return cls(source=str(folder))
            record = cls.load(hub_folder)
            record.source = str(folder)
            return record
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
        return record


def _hub_record_folder(repo_id: str) -> Path | None:
    """A local folder with the Hub repo's ledger and deletion record (None: not a Hub repo, none there, or unreachable)."""
    from .card import is_hub_id

    if not is_hub_id(repo_id):
        return None
    import tempfile
    import warnings

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    from .ledger import LEDGER_NAME

    folder = Path(tempfile.mkdtemp(prefix="hf_iau_record_"))
    found = False
    for name in (LEDGER_NAME, DELETION_RECORD_NAME):
        try:
            path = hf_hub_download(repo_id, name)
        except (EntryNotFoundError, RepositoryNotFoundError):
            continue
        except Exception as err:  # offline, network, auth: the record cannot be checked
            warnings.warn(
                f"Could not read the deletion ledger of Hub model {repo_id!r} ({err.__class__.__name__}); rows deleted "
                "by earlier requests on it are not excluded from retain_dataset=None. Load it from a local folder "
                "holding deleted_rows.json, or pass `retain_dataset=` explicitly.",
                stacklevel=4,
            )
            return None
        (folder / name).write_bytes(Path(path).read_bytes())
        found = True
    return folder if found else None


def trainer_key(trainer: "IAUTrainer") -> bytes:
    """The trainer's fingerprint key (``IAUConfig.fingerprint_key_file`` or the default key file)."""
    return load_key(getattr(trainer.args, "fingerprint_key_file", None))


def deletion_record(trainer: "IAUTrainer") -> DeletionRecord:
    """Rows deleted so far for the trainer's model: its parent folder's record plus this trainer's requests."""
    from .hub import parent_checkpoint

    source = parent_checkpoint(trainer)
    resolved = str(Path(source).resolve()) if source and Path(source).is_dir() else source
    record = trainer.__dict__.get("_deletion_record")
    if record is None or record.source != resolved:
        # a Hub id is looked up only when named explicitly or when the weights came from the Hub (_commit_hash)
        model = getattr(trainer, "model", None)
        config = getattr(getattr(model, "base_model", model), "config", None) or getattr(model, "config", None)
        hub = bool(getattr(trainer, "parent_checkpoint", None)) or bool(getattr(config, "_commit_hash", None))
        parent = DeletionRecord.load(source, hub=hub)
        own = trainer.__dict__.get("_deleted_digests") or {}
        for kid, digests in own.items():
            parent.add(kid, digests)
        record = parent
        trainer.__dict__["_deletion_record"] = record
    return record


def _row_keys(ds: Dataset, col: str | None) -> list[Any]:
    return list(ds[col]) if col and col in ds.column_names else _row_hashes(ds)


@dataclass
class DeletionRequest:
    """One validated request: forget rows, retain rows, held-out reference, keyed fingerprint and row digests."""

    forget: Dataset
    retain: Dataset
    reference: Dataset | None
    fingerprint: str
    row_digests: list[str]
    key_id: str
    deleted_before: int = 0

    scheme: str = FINGERPRINT_SCHEME

    @classmethod
    def build(
        cls,
        trainer: "IAUTrainer",
        forget: Dataset,
        retain: Dataset | None = None,
        reference: Dataset | None = None,
    ) -> "DeletionRequest":
        """Validate and complete a request for ``trainer`` (retain = train − forget − rows deleted earlier)."""
        args = trainer.args
        col = args.id_column
        if not isinstance(forget, Dataset):
            raise ValueError(f"`forget_dataset` must be a datasets.Dataset, got {type(forget).__name__}.")
        if len(forget) == 0:
            raise ValueError("`forget_dataset` is empty: pass at least one row to forget.")
        if retain is not None and not isinstance(retain, Dataset):
            raise ValueError(f"`retain_dataset` must be a datasets.Dataset or None, got {type(retain).__name__}.")
        if reference is not None and not isinstance(reference, Dataset):
            raise ValueError(f"`reference_dataset` must be a datasets.Dataset or None, got {type(reference).__name__}.")
        validate_unlearning_ids(forget, retain, trainer.train_dataset, col)
        key = trainer_key(trainer)
        kid = key_id(key)
        record = deletion_record(trainer)
        deleted = record.deleted(kid)
        digests = row_digests(_row_keys(forget, col), key)  # a row deleted before may be forgotten again
        if retain is None:
            retain = cls._retain_from_train(trainer, forget, record, key, kid)
        elif deleted:
            back = sum(1 for d in row_digests(_row_keys(retain, col), key) if d in deleted)
            if back:
                raise ValueError(
                    f"`retain_dataset` holds {back} row(s) deleted by an earlier request for this model; remove them "
                    "(or pass retain_dataset=None: retain = train − every row deleted so far)."
                )
        if len(retain) == 0 and args.retain_weight > 0:
            raise ValueError("`retain_dataset` is empty: pass retained rows, or set retain_weight=0 (pure ascent).")
        check_disjoint(forget, retain, col)
        for name, ds in (("forget_dataset", forget), ("retain_dataset", retain)):
            trainer._check_labels(name, ds)
        validate_unlearning_data(trainer.model, forget, retain)
        if reference is None and isinstance(trainer.eval_dataset, Dataset):
            reference = trainer.eval_dataset
        fingerprint = fingerprint_ids(_row_keys(forget, col), key)
        return cls(forget, retain, reference, fingerprint, digests, kid, record.count)

    @staticmethod
    def _retain_from_train(
        trainer: "IAUTrainer", forget: Dataset, record: DeletionRecord, key: bytes, kid: str
    ) -> Dataset:
        col = trainer.args.id_column
        train = trainer.train_dataset
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
        train_ids = train[col]
        forget_ids = set(forget[col])
        missing = len(forget_ids - set(train_ids))
        if missing:
            raise ValueError(
                f"`forget_dataset`: {missing} id(s) are not in the train dataset's `{col}` column; "
                "check the ids or pass `retain_dataset=` explicitly."
            )
        deleted = record.deleted(kid)
        train_digests = row_digests(train_ids, key) if deleted else [None] * len(train_ids)
        keep = [i for i, (v, d) in enumerate(zip(train_ids, train_digests)) if v not in forget_ids and d not in deleted]
        return train.select(keep)

    def commit(self, trainer: "IAUTrainer") -> DeletionRecord:
        """Mark the forget rows as deleted for ``trainer``'s model (after the update succeeded)."""
        own = trainer.__dict__.setdefault("_deleted_digests", {})
        own.setdefault(self.key_id, set()).update(self.row_digests)
        record = deletion_record(trainer)
        record.add(self.key_id, self.row_digests)
        return record


__all__ = ["DELETION_RECORD_NAME", "DeletionRecord", "DeletionRequest", "deletion_record", "trainer_key"]
