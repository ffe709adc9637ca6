"""Unlearning on 2 CPU processes (torchrun, gloo) equals 1 process: IAU full, LoRA, retain sampling, and every
baseline through the same engine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dist_worker  # noqa: E402
from tiny import torchrun  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def two_process_weights(tmp_path_factory) -> Path:
    """Run every case of tests/dist_worker.py once on 2 processes (one launch: imports dominate)."""
    out = tmp_path_factory.mktemp("dist")
    torchrun([str(HERE / "dist_worker.py"), str(out)], out)
    return out


@pytest.mark.parametrize("case", list(dist_worker.CASES))
def test_two_processes_equal_one(case: str, two_process_weights: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from tiny import max_abs_diff

    multi = load_file(str(two_process_weights / f"{case}.safetensors"))
    single = dist_worker.run_case(case, str(tmp_path))
    assert set(multi) == set(single)
    make_model = dist_worker.CASES[case][0]
    assert max_abs_diff(single, multi) <= TOL
    # the update is not trivially zero (else parity would prove nothing)
    before = {n: p for n, p in make_model(seed=0).named_parameters()}
    moved = [n for n in single if n in before and not torch.allclose(single[n], before[n])]
    assert moved or dist_worker.CASES[case][3], f"{case}: unlearning changed no weight"


@pytest.mark.parametrize("case", list(dist_worker.METHOD_CASES))
def test_every_baseline_two_processes_equal_one(case: str, two_process_weights: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from tiny import max_abs_diff

    multi = load_file(str(two_process_weights / f"{case}.safetensors"))
    single = dist_worker.run_method_case(case, str(tmp_path))
    assert set(multi) == set(single)
    assert max_abs_diff(single, multi) <= TOL
    before = dict(dist_worker.METHOD_CASES[case][0](seed=0).named_parameters())
    assert any(not torch.allclose(single[n], before[n]) for n in single), f"{case}: changed no weight"


def test_per_example_training_curvature_on_two_processes_equals_one(two_process_weights: Path, tmp_path: Path) -> None:
    """train_curvature='per_example': each process hooks its own rows; the sums meet in one all-reduce."""
    import torch
    from safetensors.torch import load_file

    multi = load_file(str(two_process_weights / "train_curvature.safetensors"))
    single = dist_worker.training_curvature(str(tmp_path))
    assert set(multi) == set(single)
    for name, f in single.items():
        assert float(f.abs().max()) > 0 or name.endswith("bias"), name
        torch.testing.assert_close(multi[name], f, rtol=1e-5, atol=1e-6 * float(f.abs().max()) + 1e-12, msg=name)


def test_different_fingerprint_keys_on_two_processes_are_refused_on_both(tmp_path: Path) -> None:
    """Before: the process whose record could not be read raised while the other entered a collective (a hang).
    Now every process compares key ids first and refuses, naming the fix."""
    torchrun([str(HERE / "dist_worker.py"), str(tmp_path), "key_mismatch"], timeout=180)
    for rank in (0, 1):
        text = (tmp_path / f"refused-{rank}.txt").read_text()
        assert "different fingerprint keys" in text and "same key file" in text
