"""Determinism on 2 processes: two torchrun launches (2 CPU processes each, gloo) of tests/dist_worker.py
write bit-identical weights for every case (full, LoRA, retain sampling, multi-step).

tests/test_distributed.py checks 2 processes against 1 process to a float tolerance; this file checks
that a 2-process run reproduces itself bit for bit. Both launches run at the same time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dist_worker  # noqa: E402


def test_two_process_runs_are_bit_identical(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    outs = [tmp_path / "run_a", tmp_path / "run_b"]
    procs = []
    for out in outs:
        out.mkdir()
        # --standalone: a free rendezvous port per launch ("--master_port 0" hangs here: ranks never meet)
        cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(HERE / "dist_worker.py"), str(out)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stdout[-3000:] + stderr[-6000:]
    for out in outs:
        assert (out / "world_size.txt").read_text() == "2"
    digests = [
        {case: hashlib.sha256((out / f"{case}.safetensors").read_bytes()).hexdigest() for case in dist_worker.CASES}
        for out in outs
    ]
    assert len(digests[0]) == len(dist_worker.CASES) >= 5
    assert digests[0] == digests[1]
