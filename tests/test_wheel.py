"""A built wheel carries the recipes and model card, and `hf-iau demo` runs from it outside the repository.

Builds the wheel from a copy of the sources (offline: no build isolation, no index), installs it with
``pip install --no-deps --target`` (the dependencies come from the test environment), then runs the
installed ``hf-iau`` console script from an empty folder: ``demo --help`` and the bundled demo recipe
on a few rows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("hf_iau", "recipes", "model_cards", "setup.cfg", "pyproject.toml", "README.md")


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.timeout(300)
def test_wheel_ships_recipes_and_runs_the_demo(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"), str(src)], cwd=src)
    (wheel,) = (tmp_path / "dist").glob("hf_iau-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("hf_iau/cli/__init__.py", "hf_iau/recipes/mnist_resnet/config.yaml", "hf_iau/recipes/mnist_resnet/README.md",
                 "hf_iau/recipes/wiki_gpt2_canary/config.yaml", "hf_iau/recipes/accelerate/fsdp.yaml",
                 "hf_iau/model_cards/unlearned_model_card.md"):
        assert name in names, f"{name} missing from {wheel.name}"

    site = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    probe = "import importlib.util as u; print(u.find_spec('hf_iau').origin)"  # finds, does not import
    where = _run([sys.executable, "-c", probe], elsewhere, env).stdout.strip()
    assert where == str(site / "hf_iau" / "__init__.py"), where  # the wheel's copy, not the repository
    hf_iau = str(site / "bin" / "hf-iau")
    out = _run([hf_iau, "demo", "--help"], elsewhere, env).stdout
    assert "--validation_size" in out and "--fsdp2_shard" in out
    # a bundled recipe by name, its quick: section, then flags that override both
    demo = _run([hf_iau, "demo", "--config", "mnist_resnet", "--quick", "--output_dir", "out",
                 "--max_train_samples", "64", "--max_test_samples", "48",
                 "--validation_size", "48", "--num_train_epochs", "1", "--forget", "n:6", "--disable_tqdm", "true"],
                elsewhere, env).stdout
    assert "[4/4]" in demo and "validation 48 (reference, stopping), test 48 (grading only)" in demo
    for model in ("original", "unlearned", "retrained"):
        assert any(line.startswith(model) for line in demo.splitlines()), demo
    assert (elsewhere / "out" / "report" / "report.json").exists()
    assert (elsewhere / "out" / "unlearned" / "model.safetensors").exists()
