"""GR training on 2 CPU processes (torchrun, gloo, DDP) equals 1 process with the same global batch (also when a
micro-batch has no label on any process: zero gradient, zero GR norm); the GR step on an FSDP2-sharded model
(fully_shard) gives the unsharded gradients; GR code calls no torch.distributed collective itself."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gr_dist_worker  # noqa: E402
from tiny import torchrun  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def two_process_weights(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gr_dist")
    torchrun([str(HERE / "gr_dist_worker.py"), str(out)], out)
    return out


@pytest.fixture(scope="module")
def one_process_weights(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gr_single")
    weights = {case: gr_dist_worker.run_case(case, world=1, out_dir=str(out)) for case in gr_dist_worker.CASES}
    weights["control"] = gr_dist_worker.run_case("fd_ga2", world=1, out_dir=str(out), overrides=gr_dist_worker.CONTROL)
    return weights


@pytest.mark.parametrize("case", list(gr_dist_worker.CASES))
def test_gr_two_processes_equal_one(case: str, two_process_weights: Path, one_process_weights: dict) -> None:
    from safetensors.torch import load_file

    from tiny import max_abs_diff

    multi = load_file(str(two_process_weights / f"{case}.safetensors"))
    other_rank = load_file(str(two_process_weights / f"{case}.rank1.safetensors"))
    single = one_process_weights[case]
    assert set(multi) == set(single) == set(other_rank)
    assert max_abs_diff(multi, other_rank) == 0.0  # replicas stay identical (DDP synced every step)
    assert max_abs_diff(single, multi) <= TOL
    assert max_abs_diff(single, one_process_weights["control"]) > 1e-4  # GR changed the training


@pytest.mark.parametrize("case", list(gr_dist_worker.FSDP_CASES))
def test_gr_step_on_fsdp2_shards_equals_unsharded(case: str, two_process_weights: Path) -> None:
    from safetensors.torch import load_file

    from tiny import max_abs_diff

    sharded = load_file(str(two_process_weights / f"{case}.safetensors"))
    single = gr_dist_worker.fsdp_step(case, world=1)
    plain = gr_dist_worker.fsdp_step(case, world=1, alpha=0.0)
    assert set(sharded) == set(single)
    assert max_abs_diff(single, sharded) <= 1e-10  # float64
    assert max_abs_diff(single, plain) > 1e-3  # the GR term is in there


def test_gr_code_calls_no_torch_distributed() -> None:
    """GR reduces through accelerate only: no ``torch.distributed`` import or call in its modules."""
    import ast

    root = HERE.parent / "hf_iau"
    for path in (root / "restriction.py", root / "hvp.py"):
        if not path.exists():
            continue
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [f"{n.value.id}.{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)]
        assert not [n for n in names if n.startswith(("torch.distributed", "dist."))], path
