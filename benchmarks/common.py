"""Shared helpers for the cost benchmarks: machine info, side-by-side timing, peak RSS, a small
deletion scenario (mislabelled sklearn digits, a tiny ViT), gap to retrain, result files.

Every figure the scripts report is a RATIO of two measurements taken in the same run, interleaved
and repeated, medians taken: the CPU is shared and absolute times move between runs.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def cpu() -> str:
    """The CPU model and the vector ISA torch dispatches to (``AVX2``, ``AVX512``, ...): CPU kernels, and so trained
    weights, differ between ISAs, so a figure is reproducible bitwise only on a machine with the same pair."""
    name = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "machine": gpu or f"{os.cpu_count()} CPU cores (shared with other developers; {cpu()}), no GPU",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def command() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], Path(__file__).resolve().parents[1]), *sys.argv[1:]])


def write_results(name: str, payload: dict[str, Any], markdown: list[str], quick: bool) -> Path:
    """results/<name>.json and .md (``<name>.quick.*`` for --quick runs, which are not committed)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{name}.quick" if quick else name
    meta = {"command": command(), **machine()}
    payload = {"meta": meta, **payload}
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    head = [
        f"_Command: `{meta['command']}` · machine: {meta['machine']} · torch {meta['torch']} · {meta['date']}_",
        "",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(head + markdown) + "\n")
    print("\n".join(markdown))
    return RESULTS / f"{stem}.md"


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each fn, calls interleaved round-robin (order rotated every round)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            t = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t)
    return {n: statistics.median(v) for n, v in times.items()}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident set size above the value at entry, sampled every ``interval`` s by a thread."""

    def __init__(self, interval: float = 0.0005) -> None:
        self.interval, self.peak, self.base = interval, 0, 0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakRSS":
        self.base = self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def fmt(x: float, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


# --- a small deletion scenario ----------------------------------------------------------------
@dataclass
class Digits:
    train: Any
    forget: Any
    retain: Any
    test: Any


def digits_data(n_train: int = 1000, n_forget: int = 50, seed: int = 0) -> Digits:
    """sklearn digits (8×8, real): ``n_forget`` training rows get a wrong label (to be memorised and forgotten)."""
    from datasets import Dataset
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    x = (x[perm] / 16.0).astype("float32").reshape(-1, 1, 8, 8)
    y = y[perm].astype("int64")
    n_test = min(400, len(y) - n_train)
    labels = y[:n_train].copy()
    wrong = rng.integers(1, 10, size=n_forget)
    labels[:n_forget] = (labels[:n_forget] + wrong) % 10

    def ds(xs, ys, ids):
        return Dataset.from_dict({"id": list(ids), "pixel_values": xs.tolist(), "label": ys.tolist()})

    train = ds(x[:n_train], labels, range(n_train))
    test = ds(x[n_train:n_train + n_test], y[n_train:n_train + n_test], range(n_train, n_train + n_test))
    return Digits(train, train.select(range(n_forget)), train.select(range(n_forget, n_train)), test)


def tiny_vit(seed: int = 0, hidden: int = 64):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(
        image_size=8, patch_size=2, num_channels=1, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=2 * hidden, num_labels=10, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",
    )
    return ViTForImageClassification(cfg)


def iau_args(out: str, epochs: float, **kw: Any):
    from hf_iau import IAUConfig

    base = dict(
        output_dir=out, use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no", logging_strategy="no",
        num_train_epochs=epochs, learning_rate=3e-3, per_device_train_batch_size=32, per_device_eval_batch_size=128,
        seed=0, dataloader_num_workers=0,
    )
    base.update(kw)
    return IAUConfig(**base)


def train_digits(data: Digits, epochs: float, on: str = "train", seed: int = 0, **gr: Any):
    """An IAUTrainer on the tiny ViT trained on ``data.train`` (or ``data.retain``: the retrained gold)."""
    from transformers import default_data_collator

    from hf_iau import IAUTrainer

    out = tempfile.mkdtemp(prefix="hfiau-bench-")
    args = iau_args(out, epochs, seed=seed, **gr)
    trainer = IAUTrainer(tiny_vit(seed), args=args, train_dataset=getattr(data, on), data_collator=default_data_collator)
    t = time.perf_counter()
    trainer.train()
    trainer.train_seconds = time.perf_counter() - t
    trainer.train_passes = epochs * len(getattr(data, on)) * (2 if gr.get("gr_alpha", 0) else 1)
    return trainer


def gap_to_retrain(model, retrained, data: Digits) -> dict[str, float]:
    """``hf_iau.report.evaluate_unlearning`` without MIA: mean |Δ| of forget and test accuracy vs retrained."""
    from hf_iau.report import evaluate_unlearning

    rep = evaluate_unlearning(model, retrained=retrained, forget=data.forget, retain=data.retain, test=data.test, mia=())
    m = rep.metrics
    return {
        "gap_to_retrain": m["gap_to_retrain"],
        "forget_accuracy": m["unlearned/forget_accuracy"],
        "test_accuracy": m["unlearned/test_accuracy"],
        "retain_accuracy": m.get("unlearned/retain_accuracy", float("nan")),
    }


def snapshot(model) -> dict[str, torch.Tensor]:
    return copy.deepcopy(model.state_dict())


def restore(model, state) -> None:
    model.load_state_dict(state)


# --- the removal scenarios of benchmarks/scenarios.py (owned by removal.py's author: import only) ---
def scenario_gap(s, model, retrained) -> dict[str, float]:
    """Gap to ONE retrained model on a ``scenarios.Scenario``, with the metrics of ``benchmarks/removal.py``
    (which compares against the mean of several retrains): ``evaluate_unlearning`` with the loss-attack
    MIA, gap = mean |Δ| of forget accuracy, test accuracy and MIA AUC between ``model`` and ``retrained``."""
    from hf_iau.report import evaluate_unlearning

    rep = evaluate_unlearning(
        model, retrained=retrained, forget=s.forget, retain=s.retain, test=s.test, data_collator=s.data_collator,
        tokenizer=s.tokenizer, mia=("loss",), batch_size=64, seed=s.seed, max_examples=1000,
    )
    m = rep.metrics
    return {
        "gap_to_retrain": m["gap_to_retrain"],
        "forget_accuracy": m["unlearned/forget_accuracy"],
        "test_accuracy": m["unlearned/test_accuracy"],
        "mia_auc": m["unlearned/mia_loss_auc"],
        "retrained_forget_accuracy": m["retrained/forget_accuracy"],
        "retrained_test_accuracy": m["retrained/test_accuracy"],
    }
