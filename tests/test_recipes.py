"""Every recipe parses: config.yaml into the CLI's dataclasses, accelerate.yaml into accelerate's config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hf_iau.cli import load_recipe, parse_args

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
NAMES = sorted(p.name for p in RECIPES.iterdir() if (p / "config.yaml").exists())
ACCELERATE = sorted(RECIPES.glob("*/accelerate.yaml")) + sorted((RECIPES / "accelerate").glob("*.yaml"))


def test_expected_recipes_present() -> None:
    assert {"mnist_resnet", "mnist_vit", "bbc_minilm", "wiki_gpt2_canary", "tofu_llama_lora", "cifar10_resnet18"} <= set(NAMES)
    assert {"ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"} <= {
        p.name for p in (RECIPES / "accelerate").glob("*.yaml")
    }


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("command", ["train", "unlearn", "evaluate"])
def test_config_parses(name: str, command: str) -> None:
    path = RECIPES / name / "config.yaml"
    recipe = load_recipe(path)
    import torch

    gpu_only = [] if torch.cuda.is_available() or not recipe.get("bf16") else ["--bf16", "false"]  # bf16 needs a GPU
    data, model, run, args = parse_args(command, ["--config", str(path), *gpu_only])
    assert args.output_dir == recipe["output_dir"]
    assert data.dataset_name == recipe["dataset_name"]
    assert args.gr_alpha == recipe.get("gr_alpha", 0.0)
    assert bool(model.model_name_or_path) != bool(model.model_config)  # exactly one way to get a model
    assert not args.trust_remote_code
    assert (RECIPES / name / "README.md").read_text().strip()
    assert (RECIPES / name / "accelerate.yaml").exists()


def test_cli_overrides_yaml() -> None:
    path = RECIPES / "mnist_vit" / "config.yaml"
    _, _, _, args = parse_args("train", ["--config", str(path), "--gr_alpha", "0.01", "--num_train_epochs", "1"])
    assert args.gr_alpha == 0.01 and args.num_train_epochs == 1


def test_unknown_yaml_key_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset_name: digits\nnot_an_argument: 1\n")
    with pytest.raises(SystemExit, match="not_an_argument"):
        parse_args("train", ["--config", str(bad)])


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_accelerate_config_loads(path: Path) -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    raw = yaml.safe_load(path.read_text())
    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.num_processes == raw["num_processes"] >= 1
    assert str(cfg.distributed_type).split(".")[-1] == raw["distributed_type"]


def _offline(recipe: dict) -> bool:
    from hf_iau.offline_data import OFFLINE_DATASETS

    model = recipe.get("model_name_or_path")
    return recipe["dataset_name"] in OFFLINE_DATASETS and (model is None or model.startswith("offline:"))


@pytest.mark.parametrize("name", NAMES)
def test_every_recipe_trains_with_gradient_restriction(name: str) -> None:
    """Every recipe promises IAU with GR (the README): gr_alpha must be set (absent = trained without GR)."""
    assert load_recipe(RECIPES / name / "config.yaml").get("gr_alpha", 0) > 0


@pytest.mark.parametrize("name", NAMES)
def test_offline_recipes_have_a_quick_size(name: str) -> None:
    path = RECIPES / name / "config.yaml"
    full, quick = load_recipe(path), load_recipe(path, quick=True) if "quick:" in path.read_text() else None
    if not _offline(full):
        return
    assert quick is not None and quick != full, f"{name}: an offline recipe needs a `quick:` section"
    assert "quick" not in quick and "quick" not in full
    _, _, _, args = parse_args("train", ["--config", name, "--quick"])
    assert args.num_train_epochs == quick["num_train_epochs"] <= full["num_train_epochs"]


@pytest.mark.parametrize("name", ["tofu_llama_lora", "cifar10_resnet18"])
def test_hub_recipes_say_they_need_the_hub(name: str) -> None:
    from hf_iau.cli import DataArguments, load_raw

    recipe = load_recipe(RECIPES / name / "config.yaml")
    assert not _offline(recipe)
    keys = {k: v for k, v in recipe.items() if k in DataArguments.__dataclass_fields__}
    with pytest.raises(SystemExit, match="needs the Hugging Face Hub.*Offline recipes: mnist_resnet"):
        load_raw(DataArguments(**keys), seed=0)
