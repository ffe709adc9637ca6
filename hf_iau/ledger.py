"""Deletion ledger: an append-only, hash-chained JSONL record of unlearning requests.

One line per deletion request, in the folder of the checkpoint it produced
(``deletion_ledger.jsonl``). Each entry names the forget set only by its size and sha256
fingerprint, the parent and child checkpoints by the sha256 of their ``*.safetensors`` files,
and carries ``prev_entry_sha256`` (the previous entry's ``entry_sha256``; 64 zeros for the
first) and ``entry_sha256`` (sha256 of the entry's canonical JSON without that field).

Appends write one whole line with ``O_APPEND`` and fsync it; a last line without its newline
or not parseable as JSON is a torn write and is reported, never silently dropped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

LEDGER_NAME = "deletion_ledger.jsonl"
LEDGER_VERSION = 1
GENESIS_HASH = "0" * 64
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_CHUNK = 1 << 20


class LedgerError(ValueError):
    """The ledger file is unreadable: a torn or malformed line, or a broken chain on append."""


# --------------------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The ``*.safetensors`` files directly in ``folder`` (sorted by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(".safetensors"))


def weight_hashes(folder: str | os.PathLike) -> dict[str, str]:
    """``{file name: sha256}`` of the checkpoint's ``*.safetensors`` files."""
    return {p.name: sha256_file(p) for p in weight_files(folder)}


def checkpoint_digest(hashes: Mapping[str, str]) -> str | None:
    """One sha256 naming a checkpoint: over the sorted ``{name: sha256}`` map; None when empty."""
    if not hashes:
        return None
    return hashlib.sha256(canonical_json(dict(hashes)).encode()).hexdigest()


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys and no NaN/Infinity (non-finite floats become strings)."""
    return json.dumps(_finite(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of a configuration dict's canonical JSON."""
    return hashlib.sha256(canonical_json(dict(config)).encode()).hexdigest()


def entry_hash(entry: Mapping[str, Any]) -> str:
    """sha256 of an entry's canonical JSON, without its own ``entry_sha256`` field."""
    body = {k: v for k, v in entry.items() if k != "entry_sha256"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# --------------------------------------------------------------------------- reading / writing


def ledger_path(folder: str | os.PathLike) -> Path:
    """Path of the ledger file in a checkpoint folder."""
    return Path(folder) / LEDGER_NAME


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    return ledger_path(path) if path.is_dir() else path


def _parse(data: bytes, source: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Entries and problems (torn/malformed lines) of a ledger's bytes."""
    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    if not data:
        return entries, problems
    lines = data.split(b"\n")
    torn_tail = lines[-1] != b""  # the last line has no terminating newline
    if not torn_tail:
        lines = lines[:-1]
    for no, raw in enumerate(lines, start=1):
        last = no == len(lines)
        try:
            obj = json.loads(raw.decode("utf-8"))
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            kind = "torn last line (incomplete write)" if last else f"malformed line ({err.__class__.__name__})"
            problems.append(f"{source.name} line {no}: {kind}")
            continue
        if last and torn_tail:
            problems.append(f"{source.name} line {no}: torn last line (no terminating newline)")
            continue
        entries.append(obj)
    return entries, problems


def read_ledger(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Entries of a ledger file (or of ``<folder>/deletion_ledger.jsonl``); ``[]`` when absent.

    Raises ``LedgerError`` on a torn last line or a malformed line.
    """
    path = _resolve(path)
    if not path.exists():
        return []
    entries, problems = _parse(path.read_bytes(), path)
    if problems:
        raise LedgerError("; ".join(problems) + "; restore the ledger from the previous checkpoint folder or the Hub.")
    return entries


def seal_entry(entry: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """``entry`` with ``version``, ``index``, ``prev_entry_sha256`` and ``entry_sha256`` filled in."""
    sealed = {k: v for k, v in entry.items() if k not in ("entry_sha256",)}
    sealed["version"] = LEDGER_VERSION
    sealed["index"] = 0 if previous is None else int(previous["index"]) + 1
    sealed["prev_entry_sha256"] = GENESIS_HASH if previous is None else previous["entry_sha256"]
    sealed = _finite(sealed)
    sealed["entry_sha256"] = entry_hash(sealed)
    return sealed


def append_entry(path: str | os.PathLike, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Seal ``entry`` onto the chain and append it as one fsynced line; returns the sealed entry.

    ``path`` is the ledger file or its folder. Refuses (``LedgerError``) to extend a torn ledger.
    The file is opened with ``O_APPEND``: copy a ledger to a new file before extending it when the
    old one may be hard-linked from another checkpoint folder.
    """
    path = _resolve(path)
    entries = read_ledger(path)
    sealed = seal_entry(entry, entries[-1] if entries else None)
    line = (canonical_json(sealed) + "\n").encode()
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return sealed


def write_ledger(path: str | os.PathLike, entries: Sequence[Mapping[str, Any]]) -> Path:
    """Write sealed ``entries`` as a NEW ledger file at ``path`` (temp file, fsync, rename); returns its path.

    Use it to carry a parent's chain into a new checkpoint folder: the result is a fresh inode, so
    a ledger hard-linked from the previous folder is never modified.
    """
    path = _resolve(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(b"".join((canonical_json(e) + "\n").encode() for e in entries))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


# --------------------------------------------------------------------------- verification


def check_chain(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """Problems in a chain: entry hashes, ``prev_entry_sha256`` links, indices, parent/child continuity."""
    problems: list[str] = []
    prev: Mapping[str, Any] | None = None
    for i, e in enumerate(entries):
        where = f"entry {i}"
        if e.get("index") != i:
            problems.append(f"{where}: index is {e.get('index')!r}, expected {i}")
        if e.get("entry_sha256") != entry_hash(e):
            problems.append(f"{where}: entry_sha256 does not match its content (the line was edited)")
        expected_prev = GENESIS_HASH if prev is None else prev.get("entry_sha256")
        if e.get("prev_entry_sha256") != expected_prev:
            problems.append(f"{where}: prev_entry_sha256 does not match entry {i - 1} (chain broken)")
        if prev is not None:
            parent, before = e.get("parent_checkpoint_sha256"), prev.get("child_checkpoint_sha256")
            if parent and before and parent != before:
                problems.append(f"{where}: parent checkpoint {parent[:12]} is not entry {i - 1}'s child {before[:12]}")
        for key in ("request_id", "forget_fingerprint", "time_utc"):
            if not e.get(key):
                problems.append(f"{where}: missing {key}")
        prev = e
    return problems


def check_weights(folder: str | os.PathLike, entry: Mapping[str, Any]) -> list[str]:
    """Problems between the folder's ``*.safetensors`` files and ``entry``'s child checkpoint."""
    folder = Path(folder)
    problems: list[str] = []
    actual = weight_hashes(folder)
    expected = entry.get("child_weight_files") or {}
    if not actual:
        problems.append(f"no *.safetensors weight files in {folder}")
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            problems.append(f"weight file {name} is listed in the last entry but missing")
        elif name not in expected:
            problems.append(f"weight file {name} is not in the last entry")
        elif actual[name] != expected[name]:
            problems.append(f"weight file {name}: sha256 {actual[name][:12]} != last entry's {expected[name][:12]}")
    digest = checkpoint_digest(actual)
    if actual and entry.get("child_checkpoint_sha256") != digest:
        problems.append("checkpoint sha256 of the weight files does not match the last entry's child_checkpoint_sha256")
    pickled = [p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES)]
    if pickled:
        problems.append(f"non-safetensors weight/pickle files present: {', '.join(sorted(pickled))}")
    return problems


def verify_ledger(folder: str | os.PathLike, check_weight_files: bool = True) -> list[str]:
    """Check a checkpoint folder's ledger; returns the problems found (``[]`` = valid).

    Checks: every line parses (a torn last line is a problem), each ``entry_sha256`` matches,
    each ``prev_entry_sha256`` links to the previous entry, parent/child checkpoint hashes
    chain, and (``check_weight_files``) the folder's ``*.safetensors`` files match the last
    entry. Raises ``FileNotFoundError`` when the folder has no ledger.
    """
    folder = Path(folder)
    path = _resolve(folder)
    if not path.exists():
        raise FileNotFoundError(f"no {LEDGER_NAME} in {folder}: not a checkpoint written after unlearning")
    entries, problems = _parse(path.read_bytes(), path)
    if not entries and not problems:
        problems.append(f"{path.name} is empty")
    problems += check_chain(entries)
    if check_weight_files and entries:
        problems += check_weights(path.parent, entries[-1])
    return problems


def main_ledger(argv: Sequence[str] | None = None) -> int:
    """``hf-iau ledger verify <dir> [--json] [--no-weights]``: exit 0 valid, 1 problems, 2 no ledger."""
    parser = argparse.ArgumentParser(prog="hf-iau ledger", description="Inspect a deletion ledger.")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check the hash chain and that the weight files match the last entry")
    v.add_argument("dir", help="checkpoint folder holding deletion_ledger.jsonl")
    v.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    v.add_argument("--no-weights", action="store_true", help="check the chain only, not the weight files")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        problems = verify_ledger(args.dir, check_weight_files=not args.no_weights)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = ledger_path(args.dir)
    entries, _ = _parse(path.read_bytes(), path)
    if args.json:
        print(json.dumps({"ok": not problems, "entries": len(entries), "problems": problems}))
    elif problems:
        print(f"FAILED: {len(problems)} problem(s) in {path}")
        for p in problems:
            print(f"  - {p}")
    else:
        head = entries[-1]["entry_sha256"][:16]
        print(f"OK: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, chain intact (head {head}), weights match")
    return 1 if problems else 0

