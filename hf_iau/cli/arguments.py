"""Argument parsing of ``hf-iau``: recipe YAML files, where recipes live, and the parser (dataclasses in ``fields``).

Arguments come from ``DataArguments``, ``ModelArguments``, ``RunArguments`` and ``IAUConfig``
(``HfArgumentParser``); values in ``--config`` YAML become defaults and the command line overrides
them (TRL's ``TrlParser`` pattern).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn, Sequence

from .fields import DataArguments, ModelArguments, RunArguments

COMMANDS = ("train", "unlearn", "evaluate", "demo", "ledger")
DEMO_RECIPE = "mnist_resnet"
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"  # hf_iau/recipes: a symlink in the repo, files in a wheel


# --- parsing --------------------------------------------------------------------------------------
def _dataclass_types() -> tuple[type, ...]:
    from ..config import IAUConfig

    return (DataArguments, ModelArguments, RunArguments, IAUConfig)


def load_recipe(path: str | os.PathLike, quick: bool = False) -> dict[str, Any]:
    """The YAML mapping of a recipe file (keys are argument names); ``quick`` applies its ``quick:`` section."""
    import yaml

    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping of argument names to values")
    sizes = data.pop("quick", None)
    if quick and not isinstance(sizes, dict):
        raise ValueError(f"{path}: --quick needs a `quick:` section (a mapping of the values that shrink the run).")
    return {**data, **sizes} if quick else data


def resolve_config(value: str) -> Path:
    """A recipe file, or the ``config.yaml`` of the bundled recipe named ``value`` (e.g. ``mnist_vit``)."""
    path = Path(value)
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        _fail(f"hf-iau: no recipe file {value}; pass a recipe YAML or a bundled recipe name ({', '.join(bundled_recipes())}).")
    return recipe_path(value) / "config.yaml"


def make_parser(command: str = "train"):
    """``HfArgumentParser`` over the four argument dataclasses, with ``--config`` (no abbreviated flags)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(_dataclass_types(), prog=f"hf-iau {command}", allow_abbrev=False)
    parser.add_argument("--config", default=None, help="Recipe YAML or bundled recipe name; flags override its values.")
    parser.add_argument("--quick", action="store_true", help="Apply the recipe's `quick:` section.")
    return parser


def _fail(message: str) -> NoReturn:
    """A usage error: one line on stderr, exit status 2 (argparse's)."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def _check_flags(command: str, argv: Sequence[str]) -> None:
    from .options import allowed, unknown_option_message

    ok = allowed(command) | {"config", "quick"}
    bad = [a for a in argv if a.startswith("--") and a[2:].split("=", 1)[0] not in ok
           and not (a.startswith("--no_") and a[5:] in ok)]
    if bad:
        _fail(unknown_option_message(command, bad))


def launched_without_accelerator() -> bool:
    """A multi-process launch (``accelerate launch`` / ``torchrun``) on a machine without GPU/accelerator.

    There accelerate's state needs ``cpu=True`` (``TrainingArguments(use_cpu=True)``): without it every
    process sees a launcher's rank but decides it is alone (process 0 of 1), so each runs every step and
    all of them write the same folder.
    """
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    acc = getattr(torch, "accelerator", None)
    return not (acc.is_available() if acc is not None else torch.cuda.is_available())


def parse_args(command: str, argv: Sequence[str]) -> tuple[Any, Any, Any, Any]:
    """Parse ``argv`` (after the sub-command) into (data, model, run, IAUConfig).

    ``--help``/``--help_all`` print the command's grouped options and exit; an option that is unknown or
    does not act on ``command`` is a one-line error (exit status 2).
    """
    from .options import format_help

    argv = list(argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--quick", action="store_true")
    pre.add_argument("-h", "--help", action="store_true")
    pre.add_argument("--help_all", action="store_true")
    known, _ = pre.parse_known_args(argv)
    if known.help or known.help_all:
        print(format_help(command, show_all=known.help_all))
        raise SystemExit(0)
    _check_flags(command, argv)
    parser = make_parser(command)
    config = known.config or (DEMO_RECIPE if command == "demo" else None)
    if config:
        path = resolve_config(config)
        try:
            recipe = load_recipe(path, quick=known.quick)
        except ValueError as err:
            _fail(f"hf-iau: {err}")
        valid = {f.name for dc in _dataclass_types() for f in fields(dc)}
        unknown = sorted(set(recipe) - valid)
        if unknown:
            raise SystemExit(f"hf-iau: {path}: unknown argument(s) {unknown}; see `hf-iau {command} --help`.")
        parser.set_defaults(**recipe)
    elif known.quick:
        _fail(f"hf-iau {command}: --quick needs --config <recipe>.")
    if parser.get_default("output_dir") is None:
        parser.set_defaults(output_dir=f"runs/{command}")
    if launched_without_accelerator():
        parser.set_defaults(use_cpu=True)
    data, model, run, args, _, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if rest:
        _fail(f"hf-iau {command}: unexpected argument(s) {' '.join(rest)}; options take the form --name value.")
    if launched_without_accelerator() and not args.use_cpu:
        _fail(f"hf-iau {command}: use_cpu=false under a multi-process launch without a GPU runs every process alone; drop it.")
    for obj, name in ((data, "dataset_kwargs"), (model, "model_config")):
        value = getattr(obj, name)
        if isinstance(value, str):
            setattr(obj, name, json.loads(value))
    return data, model, run, args


def bundled_recipes() -> list[str]:
    """Names of the recipes shipped in ``hf_iau/recipes``."""
    return sorted(p.parent.name for p in RECIPES_DIR.glob("*/config.yaml")) if RECIPES_DIR.is_dir() else []


def recipe_path(name: str) -> Path:
    """Folder of the bundled recipe ``name``: ``hf_iau/recipes/<name>`` (packaged with the wheel)."""
    path = RECIPES_DIR / name
    if not (path / "config.yaml").exists():
        have = bundled_recipes()
        raise SystemExit(
            f"hf-iau: recipe {name!r} not found: no {path / 'config.yaml'}. Bundled recipes: {', '.join(have) or 'none'} "
            "(this installation ships none if the list is empty: reinstall hf-iau, or take recipes/ from the source "
            "repository). Or pass --config <recipe.yaml>."
        )
    return path


