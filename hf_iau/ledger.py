"""Deletion ledger: an append-only, hash-chained JSONL record of unlearning requests.

One line per deletion request, in the folder of the checkpoint it produced
(``deletion_ledger.jsonl``). Each entry names the forget set only by its size and keyed
fingerprint (``fingerprint_scheme: "hmac-sha256"`` under the key named by ``fingerprint_key_id``;
entries without a scheme hold the old unkeyed sha256), the deletion record of every row deleted so
far by ``deleted_rows_sha256`` (the folder's ``deleted_rows.json``), the parent and child checkpoints by the sha256 of their ``*.safetensors`` files,
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
from typing import Any, Iterable, Mapping, Sequence

LEDGER_NAME = "deletion_ledger.jsonl"
DELETION_RECORD_NAME = "deleted_rows.json"
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


FILE_CURVATURE = "curvature.safetensors"
NOT_WEIGHTS = {FILE_CURVATURE}  # saved beside the weights (hf_iau.curvature), bound to their hash, not weights


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The ``*.safetensors`` weight files directly in ``folder`` (sorted by name)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(".safetensors") and p.name not in NOT_WEIGHTS)


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


def deletion_record_sha256(parts: Mapping[str, Iterable[str]]) -> str:
    """sha256 of a deletion record ``{key_id: row digests}`` (canonical: sorted keys, sorted digests)."""
    body = [[str(k), sorted(str(d) for d in v)] for k, v in sorted(parts.items()) if v]
    return hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).hexdigest()


def read_deletion_record(folder: str | os.PathLike) -> dict[str, list[str]] | None:
    """``{key_id: row digests}`` of the folder's ``deleted_rows.json``; None when absent. ``LedgerError`` if unreadable."""
    path = Path(folder) / DELETION_RECORD_NAME
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
        parts: dict[str, list[str]] = {}
        for part in body["parts"]:
            parts.setdefault(str(part["key_id"]), []).extend(str(d) for d in part["digests"])
        return parts
    except (ValueError, KeyError, TypeError) as err:
        raise LedgerError(f"{path} is not a valid deletion record ({err.__class__.__name__})") from None


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
    if entries:
        problems += check_deletion_record(path.parent, entries[-1])
        problems += check_card_head(path.parent, entries[-1])
    return problems


def check_card_head(folder: str | os.PathLike, entry: Mapping[str, Any]) -> list[str]:
    """Problems between the card's ``unlearning.ledger_head`` (README.md metadata, if any) and the last entry."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return []
    head = (card_metadata(readme).get("unlearning") or {}).get("ledger_head")
    if head and head != entry.get("entry_sha256"):
        return [f"README.md ledger_head {str(head)[:12]} is not the last entry's entry_sha256 (the ledger or the card was edited)"]
    return []


def card_metadata(readme: str | os.PathLike) -> dict[str, Any]:
    """The YAML metadata of a card (``README.md``); ``{}`` when there is no card, it has no metadata or its YAML does
    not parse (a card that is not ours: nothing in it to read)."""
    import yaml
    from huggingface_hub import metadata_load

    if not Path(readme).is_file():
        return {}
    try:
        meta = metadata_load(Path(readme))
    except (yaml.YAMLError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def check_deletion_record(folder: str | os.PathLike, entry: Mapping[str, Any]) -> list[str]:
    """Problems between the folder's ``deleted_rows.json`` and ``entry``'s ``deleted_rows_sha256`` (no key needed)."""
    expected = entry.get("deleted_rows_sha256")
    try:
        parts = read_deletion_record(folder)
    except LedgerError as err:
        return [str(err)]
    if expected is None:
        return []  # a ledger written before deletion records
    if parts is None:
        return [f"{DELETION_RECORD_NAME} is missing but the last entry records one (rows deleted earlier could come back)"]
    problems = []
    if deletion_record_sha256(parts) != expected:
        problems.append(f"{DELETION_RECORD_NAME} does not match the last entry's deleted_rows_sha256 (the record was edited)")
    count = sum(len(set(v)) for v in parts.values())
    if entry.get("deleted_rows") is not None and count != entry.get("deleted_rows"):
        problems.append(f"{DELETION_RECORD_NAME} holds {count} rows, the last entry {entry.get('deleted_rows')}")
    return problems


def prove_ids(entries: Sequence[Mapping[str, Any]], ids: Sequence[Any], key: bytes | None) -> dict[str, Any]:
    """Which entry's fingerprint names exactly ``ids``: keyed entries need ``key``; unkeyed (old) ones do not."""
    from .data import FINGERPRINT_SCHEME, fingerprint_ids, key_id, legacy_fingerprint_ids

    kid = key_id(key) if key is not None else None
    keyed = fingerprint_ids(ids, key) if key is not None else None
    legacy = legacy_fingerprint_ids(ids)
    for i, e in enumerate(entries):
        scheme = e.get("fingerprint_scheme") or "sha256"
        if scheme == FINGERPRINT_SCHEME and keyed is not None and e.get("forget_fingerprint") == keyed:
            return {"match": i, "request_id": e.get("request_id"), "scheme": scheme, "key_id": kid}
        if scheme == "sha256" and e.get("forget_fingerprint") == legacy:
            return {"match": i, "request_id": e.get("request_id"), "scheme": scheme, "key_id": None}
    return {"match": None, "scheme": None, "key_id": kid}


def _show(folder: str, index: int | None) -> int:
    try:
        entries = read_ledger(folder) if ledger_path(folder).is_file() else None
    except LedgerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not entries:
        print(f"error: no {LEDGER_NAME} in {folder}: not a checkpoint written after unlearning", file=sys.stderr)
        return 2
    if index is not None and not -len(entries) <= index < len(entries):
        print(f"error: --entry {index}: the ledger has entries 0..{len(entries) - 1}", file=sys.stderr)
        return 2
    print("\n\n".join(reproduction(e) for e in (entries if index is None else [entries[index]])))
    return 0


# IAU options whose default changed after ledgers were first written: an entry that lacks one ran with this value
BEFORE_RECORDED = {"unlearn_follow_held_out": False}


def reproduction(entry: Mapping[str, Any]) -> str:
    """How an auditor reproduces the update of a ledger entry: start, data, the ``hf-iau unlearn`` flags, and the
    hashes the result must match. Every recorded config field becomes a flag (an IAU entry written before an option
    of ``BEFORE_RECORDED`` existed gets that option's value then); fields recorded as None are listed."""
    config = dict(entry.get("config") or {})
    method, index = str(entry.get("method") or "iau"), entry.get("request_index")
    if method == "iau" and config:
        config = {**BEFORE_RECORDED, **config}
    flags = [f"--method {method}"] + [f"--{k} {_flag(v)}" for k, v in sorted(config.items()) if v is not None]
    unset = sorted(k for k, v in config.items() if v is None)
    fingerprint = str(entry.get("forget_fingerprint") or "")
    scheme = entry.get("fingerprint_scheme") or "sha256"
    deleted = entry.get("deleted_rows")
    lines = [
        f"entry {entry.get('index')}: request {str(entry.get('request_id', ''))[:16]} — method {method}, "
        f"seed {entry.get('seed', 'not recorded')}, request index {'not recorded' if index is None else index}",
        f"  1. start from the checkpoint whose weights sha256 is {entry.get('parent_checkpoint_sha256') or 'not recorded'}"
        + (f" ({entry['parent_checkpoint']})" if entry.get("parent_checkpoint") else ""),
        f"  2. forget the {entry.get('forget_size')} rows named by the {scheme} fingerprint {fingerprint[:16]}… (the key "
        "holder proves the ids with `hf-iau ledger verify DIR --key KEY --ids ids.json`)",
        "  3. retain: the training rows minus every row deleted so far"
        + (f" ({deleted} rows in {DELETION_RECORD_NAME})" if deleted is not None else ""),
        "  4. hf-iau unlearn --config RECIPE " + " ".join(flags),
    ]
    if unset:
        lines.append("     left unset (None): " + ", ".join(unset))
    used = entry.get("curvature")
    if used:
        lines.append(f"     the estimate used the curvature kept beside the starting checkpoint ({FILE_CURVATURE}, "
                     f"source {used.get('source')}, content sha256 {str(used.get('content_sha256'))[:16]}…): start "
                     "from the folder that holds it")
    elif method == "iau":
        lines.append("     the estimate measured its curvature on the request's own rows (no kept curvature used)")
    if index:
        lines.append(f"     random choices derive from (seed, request index {index}): replay requests 0..{index - 1} "
                     "of the same run first, in order")
    environment = entry.get("environment") or {}
    versions = environment.get("versions") or {}
    if versions:
        lines.append("     with " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    if environment.get("hardware"):
        lines.append(f"     on {environment['hardware']}: bitwise only on the same kind of hardware (the GPU model, or "
                     "the vector ISA of torch's CPU kernels, changes their rounding; ATEN_CPU_CAPABILITY selects the "
                     "CPU kernels)")
    lines.append(f"  5. the new weights must hash to {entry.get('child_checkpoint_sha256') or 'not recorded (not saved)'}; "
                 f"config sha256 {entry.get('config_sha256')}")
    return "\n".join(lines)


def _flag(value: Any) -> str:
    """A config value as ``hf-iau`` command-line text."""
    import shlex

    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return " ".join(_flag(v) for v in value)
    if isinstance(value, Mapping):
        return shlex.quote(json.dumps(value, sort_keys=True))
    return shlex.quote(str(value))


def main_ledger(argv: Sequence[str] | None = None) -> int:
    """``hf-iau ledger verify <dir> [--json] [--no-weights] [--key FILE] [--ids IDS.json]`` and
    ``hf-iau ledger show <dir> [--entry N]`` (how to reproduce each update, see ``reproduction``).

    Exit 0: valid (and, with ``--ids``, the ids match an entry); 1: problems or no match; 2: no ledger
    or unreadable key/ids. The chain, weights and deletion record are checked without a key.
    """
    parser = argparse.ArgumentParser(prog="hf-iau ledger", description="Inspect a deletion ledger.")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="check the hash chain, the deletion record and that the weight files match the last entry")
    v.add_argument("dir", help="checkpoint folder holding deletion_ledger.jsonl")
    v.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    v.add_argument("--no-weights", action="store_true", help="check the chain only, not the weight files")
    v.add_argument("--key", default=None, help="fingerprint key file (IAUConfig.fingerprint_key_file); lists the entries "
                   "it fingerprinted. Default with --ids: $HF_IAU_KEY_FILE or ~/.cache/hf_iau/fingerprint.key")
    v.add_argument("--ids", default=None, help="JSON file with a list of row ids: prove which entry deleted exactly "
                   "these ids (recomputes the keyed fingerprint; old unkeyed entries need no key)")
    show = sub.add_parser("show", help="print how an auditor reproduces each recorded update (flags, data, hashes)")
    show.add_argument("dir", help="checkpoint folder holding deletion_ledger.jsonl")
    show.add_argument("--entry", type=int, default=None, help="only this entry (0 = first; -1 = latest)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.command == "show":
        return _show(args.dir, args.entry)
    try:
        problems = verify_ledger(args.dir, check_weight_files=not args.no_weights)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = ledger_path(args.dir)
    entries, _ = _parse(path.read_bytes(), path)
    report: dict[str, Any] = {"ok": not problems, "entries": len(entries), "problems": problems}
    lines: list[str] = []
    if args.key or args.ids:
        from .data import key_id, load_key

        try:
            key = load_key(args.key, create=False) if (args.key or args.ids) else None
        except (ValueError, OSError) as err:
            if args.key or any(e.get("fingerprint_scheme") for e in entries):
                print(f"error: {err}", file=sys.stderr)
                return 2
            key = None  # only old unkeyed entries: --ids works without a key
        if key is not None:
            kid = key_id(key)
            mine = [i for i, e in enumerate(entries) if e.get("fingerprint_key_id") == kid]
            report["key"] = {"key_id": kid, "entries": mine}
            lines.append(f"key {kid}: fingerprinted entr{'y' if len(mine) == 1 else 'ies'} {mine or 'none'} of {len(entries)}")
        if args.ids:
            try:
                ids = json.loads(Path(args.ids).read_text())
                if not isinstance(ids, list) or not ids:
                    raise ValueError("not a non-empty JSON list")
            except (OSError, ValueError) as err:
                print(f"error: --ids {args.ids}: {err}; pass a JSON file holding a list of ids", file=sys.stderr)
                return 2
            proof = prove_ids(entries, ids, key)
            report["ids"] = {"count": len(ids), **proof}
            if proof["match"] is None:
                lines.append(f"ids: the {len(ids)} ids match no entry's fingerprint" + ("" if key is not None else " (no key given)"))
            else:
                lines.append(f"ids: the {len(ids)} ids are exactly the forget set of entry {proof['match']} "
                             f"(request {str(proof['request_id'])[:16]}, {proof['scheme']} fingerprint)")
    failed = bool(problems) or (args.ids is not None and report["ids"]["match"] is None)
    if args.json:
        print(json.dumps(report))
    else:
        if problems:
            print(f"FAILED: {len(problems)} problem(s) in {path}")
            for p in problems:
                print(f"  - {p}")
        else:
            head = entries[-1]["entry_sha256"][:16]
            print(f"OK: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, chain intact (head {head}), "
                  + ("weights match" if not args.no_weights else "weights not checked"))
        for line in lines:
            print(line)
    return 1 if failed else 0
