"""Forget/retain splits and keyed fingerprints of forget sets.

A fingerprint names a forget set in cards and ledgers without revealing a row:
``HMAC-SHA256(key, sorted ids)`` under a secret key created locally on first use
(``default_key_file()``: ``$HF_IAU_KEY_FILE`` or ``~/.cache/hf_iau/fingerprint.key``, mode 0600).
Without the key nobody can test a guess of ids against it; with the key its holder can prove which
ids a fingerprint names. The key is never written into a checkpoint folder, card, ledger or log.
``legacy_fingerprint_ids`` is the old unkeyed sha256, kept to read ledgers written before keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import secrets
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict

ForgetSpec = Sequence[Any] | Callable[[dict[str, Any]], bool] | float

FINGERPRINT_SCHEME = "hmac-sha256"
LEGACY_SCHEME = "sha256"
KEY_ENV = "HF_IAU_KEY_FILE"
_KEY_BYTES = 32


def default_key_file() -> Path:
    """``$HF_IAU_KEY_FILE`` when set, else ``~/.cache/hf_iau/fingerprint.key``."""
    env = os.environ.get(KEY_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hf_iau" / "fingerprint.key"


def load_key(path: str | os.PathLike | None = None, create: bool = True) -> bytes:
    """The fingerprint key in ``path`` (default ``default_key_file()``), created (0600, 32 random bytes as hex) if absent.

    Raises ``ValueError`` when the file is missing and ``create=False``, or holds no valid key.
    """
    path = Path(path).expanduser() if path else default_key_file()
    if not path.exists():
        if not create:
            raise ValueError(
                f"fingerprint key file {path} does not exist; pass the key file that made the fingerprints "
                f"(--key FILE, IAUConfig(fingerprint_key_file=...) or ${KEY_ENV})."
            )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # created by a concurrent process: read theirs
            return load_key(path, create=False)
        try:
            os.write(fd, (secrets.token_hex(_KEY_BYTES) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ValueError(
            f"fingerprint key file {path} does not hold a key (expected at least 32 hex digits); restore it from "
            f"your backup, or point IAUConfig(fingerprint_key_file=...) / ${KEY_ENV} at a new path to create a new key."
        )
    return key


def key_id(key: bytes) -> str:
    """A public name of a key (HMAC of a constant; reveals nothing about the key): 16 hex digits."""
    return hmac.new(key, b"hf-iau fingerprint key id", hashlib.sha256).hexdigest()[:16]


def _canonical_ids(ids: Iterable[Any]) -> bytes:
    keys = sorted(json.dumps(str(i)) for i in ids)
    return ("[" + ",".join(keys) + "]").encode()


def fingerprint_ids(ids: Iterable[Any], key: bytes | None = None) -> str:
    """HMAC-SHA256 (hex) of the sorted ids under ``key`` (default: ``load_key()``); order and int/str spelling do not matter."""
    key = load_key() if key is None else key
    return hmac.new(key, _canonical_ids(ids), hashlib.sha256).hexdigest()


def legacy_fingerprint_ids(ids: Iterable[Any]) -> str:
    """The unkeyed sha256 fingerprint of ledgers written before keys (reversible by enumeration: do not publish)."""
    return hashlib.sha256(_canonical_ids(ids)).hexdigest()


def row_digests(ids: Iterable[Any], key: bytes) -> list[str]:
    """Keyed per-row digests ``HMAC-SHA256(key, id)`` (hex), in the order of ``ids``: a deletion record without ids."""
    return [hmac.new(key, json.dumps(str(i)).encode(), hashlib.sha256).hexdigest() for i in ids]


def column_values(dataset: Dataset, column: str) -> list[Any]:
    """Column ``column`` of ``dataset`` as a Python list, converted in one batch (iterating ``dataset[column]``
    reads the rows one by one: 60× slower on 3,000 rows)."""
    return list(dataset.with_format(None, columns=[column])[:][column]) if len(dataset) else []


def fingerprint_dataset(dataset: Dataset, id_column: str | None = "id", key: bytes | None = None) -> str:
    """Keyed fingerprint of a dataset: of its id column when present, else of its rows' content hashes."""
    if id_column and id_column in dataset.column_names:
        return fingerprint_ids(column_values(dataset, id_column), key)
    return fingerprint_ids(_row_hashes(dataset), key)


def _row_hashes(dataset: Dataset) -> list[str]:
    """sha256 of each row's sorted JSON: the content fingerprint scheme ledgers store (do not change)."""
    return [
        hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()
        for row in dataset
    ]


_HASHES: "OrderedDict[str, list[bytes]]" = OrderedDict()  # dataset fingerprint -> content_hashes (in memory)
HASH_CACHE_ROWS = 2_000_000  # rows kept in that cache at most (≈ 60 bytes a row)


def content_hashes(dataset: Dataset) -> list[bytes]:
    """One digest per row of its content, for comparing rows in memory (never stored): numbers by value (integers
    as int64, floats as float64, so an int32 and an int64 copy of a row agree), column by column from numpy
    arrays instead of a JSON text per row (``_row_hashes``), which dominated a request on large train sets.
    Kept in memory by the dataset's fingerprint (datasets derives it from the data's origin and every transform), so
    sequential requests on one train set hash it once."""
    key = getattr(dataset, "_fingerprint", None)
    if key is not None and key in _HASHES:
        _HASHES.move_to_end(key)
        return list(_HASHES[key])
    out = _content_hashes(dataset)
    if key is not None and len(out) <= HASH_CACHE_ROWS:
        _HASHES[key] = out
        while sum(len(v) for v in _HASHES.values()) > HASH_CACHE_ROWS:
            _HASHES.popitem(last=False)
    return list(out)


def _content_hashes(dataset: Dataset) -> list[bytes]:
    digests = [hashlib.blake2b(digest_size=16) for _ in range(len(dataset))]
    for col in sorted(dataset.column_names):
        for h, b in zip(digests, _column_bytes(dataset, col)):
            h.update(b"%s\0%d\0" % (col.encode(), len(b)))
            h.update(b)
    return [h.digest() for h in digests]


def _column_bytes(dataset: Dataset, col: str) -> list[bytes]:
    """Each row's value of ``col`` as canonical bytes, from the Arrow column (no per-row Python objects for numbers)."""
    arr = dataset.with_format("arrow", columns=[col])[:].column(col).combine_chunks() if len(dataset) else None
    if arr is None:
        return []
    arr = arr.storage if isinstance(arr.type, pa.ExtensionType) else arr  # datasets' ArrayXD: the nested lists
    n = len(arr)
    owner, parts = np.arange(n), []  # per level: the top-level row of each element, and the bytes to hash
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        lengths = pc.fill_null(pc.list_value_length(arr), -1).to_numpy(zero_copy_only=False).astype(np.int64)
        parts.append((owner, b"L", lengths))
        owner = owner[pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)]
        arr = pc.list_flatten(arr)
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type) or pa.types.is_boolean(arr.type):
        leaf = arr.to_numpy(zero_copy_only=False)
        parts.append((owner, _tag(leaf.dtype, ()), _canonical(leaf)))
    else:  # strings, structs, …: per row, in full
        return [_value_bytes(v) for v in dataset.with_format(None, columns=[col])[:][col]]
    out = [bytearray() for _ in range(n)]
    for rows, tag, values in parts:  # elements are stored in row order: each row owns one contiguous slice
        bounds, size, buf = np.searchsorted(rows, np.arange(n + 1)), values.itemsize, values.tobytes()
        for i in range(n):
            out[i] += tag + buf[bounds[i] * size : bounds[i + 1] * size]
    return [bytes(b) for b in out]


def _tag(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The same for a value whether its column came as one array or as an array per row."""
    return ("b" if dtype.kind == "b" else "i" if dtype.kind in "iu" else "f").encode() + repr(tuple(shape)).encode()


def _canonical(a: np.ndarray) -> np.ndarray:
    """Booleans as int8 (their tag sets them apart), integers as int64, floats as float64, C order."""
    dtype = np.int8 if a.dtype.kind == "b" else np.int64 if a.dtype.kind in "iu" else np.float64
    return np.ascontiguousarray(a, dtype=dtype)


def _value_bytes(v: Any) -> bytes:
    if isinstance(v, np.ndarray) and v.dtype.kind in "iubf":
        return _tag(v.dtype, v.shape) + _canonical(v).tobytes()
    return json.dumps(_plain(v), sort_keys=True).encode()


def _plain(v: Any) -> Any:
    """JSON-ready nested lists, dicts and scalars (arrays in full, never a truncated repr)."""
    if isinstance(v, np.ndarray):
        return v.tolist() if v.dtype != object else [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v.item() if isinstance(v, np.generic) else v if isinstance(v, (str, int, float, bool, type(None))) else str(v)


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
        ids = column_values(dataset, id_column)
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
        overlap = set(column_values(forget, id_column)) & set(column_values(retain, id_column))
    else:
        overlap = set(content_hashes(forget)) & set(content_hashes(retain))
    if overlap:
        raise ValueError(
            f"forget and retain sets overlap in {len(overlap)} row(s); remove the forget rows from "
            "`retain_dataset` (see hf_iau.forget_retain_split)."
        )
