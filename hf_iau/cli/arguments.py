"""Argument parsing of ``hf-iau``: the argument dataclasses, recipe YAML files and where recipes live.

Arguments come from ``DataArguments``, ``ModelArguments``, ``RunArguments`` and ``IAUConfig``
(``HfArgumentParser``); values in ``--config`` YAML become defaults and the command line overrides
them (TRL's ``TrlParser`` pattern).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn, Sequence

COMMANDS = ("train", "unlearn", "evaluate", "demo", "ledger")
TASKS = ("auto", "image-classification", "sequence-classification", "causal-lm")
TRAIN_ON = ("full", "retain")
DEMO_RECIPE = "mnist_resnet"
RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"  # hf_iau/recipes: a symlink in the repo, files in a wheel


# --- argument dataclasses -------------------------------------------------------------------------
@dataclass
class DataArguments:
    """Which data, how it is split into train / validation / test, and which training rows are forgotten.

    The three splits are disjoint: train (the original model learns it; forget rows come from it),
    validation (held-out data for every decision: the unlearning reference level and stopping) and
    test (grading only: utility and the membership-inference non-members). Canary rows
    (``is_canary``) and the rows of a ``column:`` forget set are never drawn into validation or test.
    """

    dataset_name: str = field(
        default="mnist5k",
        metadata={"help": "An offline dataset (mnist5k, digits, bbc_news, lee_text, wiki_text: see hf_iau.offline_data) "
                  "or a Hub dataset id / local path for datasets.load_dataset."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments of the offline loader (JSON on the command line)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split holding the training data (Hub datasets)."})
    test_split: str | None = field(
        default=None, metadata={"help": "Held-out split; None carves a seeded `test_size` out of the training data."}
    )
    test_size: float = field(default=0.2, metadata={"help": "Held-out fraction (<1) or count (>=1) when test_split is None."})
    validation_split: str | None = field(
        default=None, metadata={"help": "Validation split (Hub datasets); None carves a seeded `validation_size` out of the training data."}
    )
    validation_size: float = field(
        default=0.1,
        metadata={"help": "Validation fraction (<1, of the rows left after the test split) or count (>=1) when validation_split is None."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows (after the seeded split)."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Keep the first N test rows."})
    max_validation_samples: int | None = field(default=None, metadata={"help": "Keep the first N validation rows."})
    text_column: str = field(default="text", metadata={"help": "Text column (text tasks)."})
    text_template: str | None = field(
        default=None, metadata={"help": "Python format string over a row that builds the text, e.g. 'Q: {question}\\nA: {answer}'."}
    )
    question_column: str | None = field(
        default=None,
        metadata={"help": "Causal LM on question–answer rows: the question column; rows become prompt-masked examples "
                  "(hf_iau.qa.qa_to_lm_examples: loss on the answer tokens only). Needs `answer_column`."},
    )
    answer_column: str = field(default="answer", metadata={"help": "Answer column, with `question_column`."})
    label_column: str = field(default="label", metadata={"help": "Label column (classification)."})
    image_column: str = field(default="pixel_values", metadata={"help": "Image column: PIL images or [C,H,W] arrays."})
    image_mean: list[float] | None = field(default=None, metadata={"help": "Per-channel mean for PIL images (default 0.5)."})
    image_std: list[float] | None = field(default=None, metadata={"help": "Per-channel std for PIL images (default 0.5)."})
    max_length: int = field(default=128, metadata={"help": "Tokens per row; longer causal-LM documents become several rows."})
    max_chunks_per_doc: int = field(default=8, metadata={"help": "Causal LM: at most this many rows per document."})
    id_source: str | None = field(default=None, metadata={"help": "Column to use as the row id (default: `id`, else the row index)."})
    forget: str = field(
        default="0.05",
        metadata={"help": "Forget set: a fraction '0.05', 'n:40' (seeded random rows), 'ids:1,2,3', 'range:3600:4000' "
                  "(row positions), 'column:is_canary' (rows where the column is true), 'file:ids.json', or "
                  "'config:forget10' (rows of that dataset config, matched on `forget_match_column`)."},
    )
    forget_match_column: str | None = field(default=None, metadata={"help": "Column matched for forget='config:...'."})
    forget_label_noise: bool = field(
        default=False,
        metadata={"help": "Memorisation scenario: give forget rows a seeded wrong label in the training data, so the "
                  "original model must memorise them (classification only)."},
    )


@dataclass
class ModelArguments:
    """A pretrained model, or a config dict for a model trained from scratch, plus optional LoRA."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or local folder of a pretrained model; 'offline:all-MiniLM-L6-v2' is the wheel copy."},
    )
    model_config: dict | str | None = field(
        default=None, metadata={"help": "Config of a from-scratch model, e.g. {\"model_type\": \"vit\", ...} (JSON on the CLI)."}
    )
    task: str = field(default="auto", metadata={"help": "Model head.", "choices": list(TASKS)})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Tokenizer (default: the model's)."})
    tokenizer_vocab_size: int | None = field(
        default=None, metadata={"help": "Train a byte-level BPE tokenizer of this size on the training text (from-scratch LMs)."}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "'sdpa', 'eager', ... (default: the model's)."})
    use_peft: bool = field(default=False, metadata={"help": "Train and unlearn a LoRA adapter only."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(default=None, metadata={"help": "LoRA target modules (default: all-linear)."})


@dataclass
class RunArguments:
    """Where each model of a run lives, and what `evaluate` does when the gold model is missing."""

    original_model: str | None = field(default=None, metadata={"help": "Trained model (default <output_dir>/original)."})
    unlearned_model: str | None = field(default=None, metadata={"help": "Unlearned model (default <output_dir>/unlearned)."})
    retrained_model: str | None = field(default=None, metadata={"help": "Gold model retrained on retain (default <output_dir>/retrained)."})
    report_dir: str | None = field(default=None, metadata={"help": "Report folder (default <output_dir>/report)."})
    train_on: str = field(
        default="full", metadata={"help": "`train`: 'full' (the original) or 'retain' (the gold model).", "choices": list(TRAIN_ON)}
    )
    method: str = field(default="iau", metadata={"help": "`unlearn`: 'iau' or a baseline of hf_iau.methods."})
    retrain_if_missing: bool = field(default=True, metadata={"help": "`evaluate`: retrain the gold model when it is missing."})
    eval_batch_size: int = field(default=256, metadata={"help": "Batch size of the report's forward passes."})
    fsdp2_shard: bool = field(
        default=False,
        metadata={"help": "`unlearn`: shard the loaded model with FSDP2 (`fully_shard` per transformer block and the root, "
                  "hf_iau.sharding.shard_per_block) before unlearning; run under torchrun / accelerate launch."},
    )


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


