"""Atomic saves under SIGKILL: a folder always holds the complete previous checkpoint or the complete new one.

A forked child unlearns and saves in a loop. Before each save it appends ``begin <i> <hash>`` to a side
file and after the save returns ``done <i> <hash>`` (hash = sha256 of the model's state dict). It is
killed with SIGKILL either at chosen points inside the save (by itself, deterministically) or by the
parent at random moments. The parent then loads the folder with ``from_pretrained``: its weights must
hash to the last completed version or the one being saved, and the marker file written inside the
same save must name the same version (weights, card and ledger move together).

Children are forked from the test process (no interpreter start-up, no imports): the whole file runs
in a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import time
import traceback
from pathlib import Path

import pytest
import torch
from tiny import text_cls_dataset, tiny_bert
from transformers import BertForSequenceClassification, default_data_collator

from hf_iau import IAUConfig, IAUTrainer
from hf_iau.safe_io import recover_directory

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

SAVE_TO_KILL = 2  # deterministic kills happen during the 2nd save: a complete 1st version exists


def state_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _MarkedTrainer(IAUTrainer):
    """Writes ``version.json`` inside the same atomic save as the weights, card and ledger."""

    version: dict = {}

    def _write_unlearning_artifacts(self, output_dir: str) -> None:
        super()._write_unlearning_artifacts(output_dir)
        _hook("artifacts")
        Path(output_dir, "version.json").write_text(json.dumps(self.version))


_KILL_AT: str | None = None
_SAVE_INDEX = 0


def _hook(point: str) -> None:
    if _KILL_AT == point and _SAVE_INDEX >= SAVE_TO_KILL:
        os.kill(os.getpid(), signal.SIGKILL)


def _install(kill_at: str | None) -> None:
    """Inside the child only: wrap the steps of a save so that the child kills itself at ``kill_at``."""
    global _KILL_AT
    _KILL_AT = kill_at
    import transformers.modeling_utils as mu

    import hf_iau.safe_io as sio

    real_save, real_exchange, real_rename, real_rmtree = mu.safe_save_file, sio._exchange, os.rename, sio.shutil.rmtree

    def save_file(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        if _KILL_AT == "weights_half_written" and _SAVE_INDEX >= SAVE_TO_KILL:
            size = os.path.getsize(filename)
            with open(filename, "r+b") as fh:
                fh.truncate(size // 2)
            _hook("weights_half_written")

    exchanged = []

    def exchange(a, b):
        _hook("before_exchange")
        if _KILL_AT == "two_rename_fallback":
            return False  # a platform without renameat2: target → backup, tmp → target
        done = real_exchange(a, b)
        exchanged.append(done)
        _hook("after_exchange")
        return done

    def rename(src, dst):
        real_rename(src, dst)
        if str(dst).endswith(".old"):
            _hook("two_rename_fallback")  # between the two renames: the target is missing

    def rmtree(path, *a, **kw):
        if exchanged and Path(path).name.startswith(".tmp-"):
            _hook("cleanup")  # the previous content, swapped out, is being deleted
        return real_rmtree(path, *a, **kw)

    mu.safe_save_file = save_file
    sio._exchange = exchange
    os.rename = rename
    sio.shutil.rmtree = rmtree


def _child(out: Path, log: Path, kill_at: str | None, max_saves: int) -> None:
    global _SAVE_INDEX
    torch.set_num_threads(1)  # forked from a process that used OpenMP: stay single-threaded
    _install(kill_at)
    ds = text_cls_dataset(12)
    args = IAUConfig(
        output_dir=str(out), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no",
        unlearn_optimizer="sgd", unlearn_learning_rate=0.05, logging_strategy="no", unlearn_steps=1,
        retain_sample_size=None, forget_saturation="none", unlearn_stop="fixed",
    )
    trainer = _MarkedTrainer(tiny_bert(), args=args, train_dataset=ds, data_collator=default_data_collator)
    with open(log, "a") as fh:
        for i in range(1, max_saves + 1):
            trainer.unlearn(ds.select([i % 12]))  # every request moves the weights
            digest = state_hash(trainer.model)
            trainer.version = {"i": i, "hash": digest}
            fh.write(f"begin {i} {digest}\n")
            fh.flush()
            os.fsync(fh.fileno())
            _SAVE_INDEX = i
            trainer.save_model()
            fh.write(f"done {i} {digest}\n")
            fh.flush()
            os.fsync(fh.fileno())


def _private_tqdm_lock() -> None:
    """tqdm's default write lock holds a multiprocessing semaphore, shared across fork, and every bar (a disabled
    one too) takes it: a child killed while holding it would block the parent's next bar (``from_pretrained``'s)
    forever. The child takes a lock of its own instead."""
    import threading

    import tqdm
    import tqdm.auto

    for cls in {tqdm.tqdm, tqdm.auto.tqdm}:
        cls.set_lock(threading.RLock())


def _fork(out: Path, log: Path, kill_at: str | None, max_saves: int) -> int:
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        _private_tqdm_lock()
        code = 0
        try:
            _child(out, log, kill_at, max_saves)
        except BaseException:  # noqa: BLE001
            Path(str(log) + ".err").write_text(traceback.format_exc())
            code = 3
        finally:
            os._exit(code)
    return pid


def _wait(pid: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("child did not finish")


def _versions(log: Path) -> tuple[tuple[int, str] | None, tuple[int, str] | None]:
    """(last completed version, version being saved when killed) from the side file."""
    done = pending = None
    for line in log.read_text().splitlines():
        kind, i, digest = line.split()
        if kind == "done":
            done, pending = (int(i), digest), None
        else:
            pending = (int(i), digest)
    return done, pending


def _check_folder(out: Path, log: Path) -> int | None:
    """Asserts the folder holds one complete saved version; returns its index (None: no folder yet)."""
    done, pending = _versions(log)
    recover_directory(out)  # no-op with renameat2; finishes an interrupted two-rename swap
    if not out.exists() or not os.listdir(out):  # Trainer.__init__ creates output_dir empty
        assert done is None, "a completed save disappeared"
        return None
    model = BertForSequenceClassification.from_pretrained(out, use_safetensors=True)
    digest = state_hash(model)
    allowed = {v for v in (done, pending) if v is not None}
    match = [i for i, d in allowed if d == digest]
    assert match, f"weights in {out.name} match neither version {done and done[0]} nor {pending and pending[0]}"
    marker = json.loads((out / "version.json").read_text())
    assert marker == {"i": match[0], "hash": digest}  # files of the same save travel together
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert not [f for f in os.listdir(out) if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    ledger = out / "deletion_ledger.jsonl"
    if ledger.exists():  # one entry per request of THIS version
        assert len([line for line in ledger.read_text().splitlines() if line.strip()]) == match[0]
    return match[0]


# point inside the 2nd save -> which version the folder must hold afterwards (1 = previous, 2 = new)
KILL_POINTS = {
    "weights_half_written": 1,
    "artifacts": 1,
    "before_exchange": 1,
    "after_exchange": 2,
    "cleanup": 2,
    "two_rename_fallback": 1,
}


def test_sigkill_inside_a_save_leaves_previous_or_new_checkpoint(tmp_path):
    for point, expected in KILL_POINTS.items():
        out, log = tmp_path / point / "out", tmp_path / point / "log.txt"
        out.parent.mkdir()
        status = _wait(_fork(out, log, point, max_saves=3))
        err = Path(str(log) + ".err")
        assert not err.exists(), err.read_text()
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{point}: kill point not reached"
        done, pending = _versions(log)
        assert done[0] == SAVE_TO_KILL - 1 and pending[0] == SAVE_TO_KILL  # killed inside save 2
        if point == "two_rename_fallback":
            assert not out.exists() and out.with_name(".out.old").exists()  # the window recovery closes
        assert _check_folder(out, log) == expected, point


def test_sigkill_inside_the_first_save_leaves_no_folder(tmp_path):
    global SAVE_TO_KILL
    out, log = tmp_path / "out", tmp_path / "log.txt"
    old, SAVE_TO_KILL = SAVE_TO_KILL, 1
    try:
        status = _wait(_fork(out, log, "before_exchange", max_saves=2))
    finally:
        SAVE_TO_KILL = old
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    done, pending = _versions(log)
    assert done is None and pending[0] == 1
    assert os.listdir(out) == []  # the folder Trainer.__init__ created, still empty: no half-written checkpoint
    assert _check_folder(out, log) is None


def test_a_child_killed_inside_a_progress_bar_does_not_block_the_parent():
    """A child killed while it holds tqdm's write lock (as a random SIGKILL can catch it) leaves the parent's lock
    free: the parent still gets it (with the shared default lock it would wait forever)."""
    import tqdm

    tqdm.tqdm.get_lock()  # made before the fork, as any earlier progress bar makes it
    pid = os.fork()
    if pid == 0:
        _private_tqdm_lock()
        tqdm.tqdm.get_lock().acquire()
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    lock = tqdm.tqdm.get_lock()
    got = [bool(one.acquire(timeout=5)) for one in lock.locks]
    for one, held in zip(lock.locks, got):
        if held:
            one.release()
    assert all(got)


def test_sigkill_at_random_moments_while_unlearning_and_saving(tmp_path):
    rng = random.Random(0)
    seen = []
    for k in range(5):
        out, log = tmp_path / f"run{k}" / "out", tmp_path / f"run{k}" / "log.txt"
        out.parent.mkdir()
        pid = _fork(out, log, None, max_saves=10_000)
        deadline = time.monotonic() + 30
        while not (log.exists() and "done 2 " in log.read_text()):  # two complete versions exist
            assert time.monotonic() < deadline and not os.waitpid(pid, os.WNOHANG)[0], "child stalled or died"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(pid, signal.SIGKILL)
        status = _wait(pid)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        version = _check_folder(out, log)
        assert version is not None and version >= 2
        seen.append(version)
    # After a crash the folder is usable: the next save on top of it works and loads.
    model = BertForSequenceClassification.from_pretrained(out)
    args = IAUConfig(output_dir=str(out), use_cpu=True, report_to=[], save_strategy="no")
    IAUTrainer(model, args=args).save_model()
    assert state_hash(BertForSequenceClassification.from_pretrained(out)) == state_hash(model)
    assert len(seen) == 5
