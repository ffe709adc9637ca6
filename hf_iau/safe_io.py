"""Atomic folder writes: a folder holds either its complete previous content or the complete new one.

New content is written into a hidden sibling folder, fsynced, then swapped with the target in
one ``renameat2(RENAME_EXCHANGE)`` call (Linux); elsewhere two renames, with a recovery step
that :func:`recover_directory` runs before any read.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the platform cannot."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def recover_directory(target: str | os.PathLike) -> None:
    """Finish an interrupted two-rename swap: if ``target`` is missing, its backup comes back."""
    target = Path(target)
    backup = target.with_name(f".{target.name}.old")
    if not target.exists() and backup.exists():
        os.rename(backup, target)


# Files a save regenerates: an old copy must never outlive the save that replaced it (stale shards).
_MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json", ".gguf")
_MODEL_FILE_NAMES = {
    "config.json", "generation_config.json", "adapter_config.json", "README.md", "deletion_ledger.jsonl",
    "training_args.json",
}


def _keep_extra_entries(old: Path, new: Path) -> None:
    """Entries of ``old`` that the new save did not write (training checkpoints, logs, reports) are
    hard-linked over — except model files (weights, configs, card, ledger), so nothing stale survives."""
    for entry in old.iterdir():
        dest = new / entry.name
        if dest.exists() or entry.name.startswith(".tmp-"):
            continue
        if entry.is_dir():
            shutil.copytree(entry, dest, copy_function=_link_or_copy)
        elif entry.name not in _MODEL_FILE_NAMES and not entry.name.endswith(_MODEL_FILE_SUFFIXES):
            _link_or_copy(entry, dest)


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def check_output_dir(output_dir: str | os.PathLike) -> None:
    """``output_dir`` must be a folder we can create and write (and rename inside its parent)."""
    path = Path(output_dir).absolute()
    name = f"output_dir={str(output_dir)!r}"
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} is a file, not a folder; choose a folder path for `output_dir`.")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{name} cannot be created: {str(probe)!r} is a file; choose another `output_dir`.")
    # Saves write a sibling temporary folder and rename it into place: the parent must be writable too.
    targets = [probe] if probe != path else [path, path.parent]
    for folder in targets:
        if not _writable(folder):
            raise ValueError(
                f"{name} is not writable (cannot write in {str(folder)!r}); choose a writable `output_dir` "
                "or fix the folder's permissions."
            )


def _writable(folder: Path) -> bool:
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:  # os.access trusts mode bits; root, ACLs and read-only mounts need a real try
        os.rmdir(tempfile.mkdtemp(prefix=".iau-write-check-", dir=folder))
    except OSError:
        return False
    return True


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``target`` atomically.

    On any exception the temporary folder is removed and ``target`` is untouched.
    """
    target = Path(target).absolute()
    recover_directory(target)
    check_output_dir(target)  # ValueError before anything is written
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            _keep_extra_entries(target, tmp)
        _fsync_tree(tmp)
        if target.exists():
            if _exchange(tmp, target):
                _fsync_dir(target.parent)
                shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous content
                return
            backup = target.with_name(f".{target.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.rename(target, backup)
            os.rename(tmp, target)
            _fsync_dir(target.parent)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.rename(tmp, target)
            _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
