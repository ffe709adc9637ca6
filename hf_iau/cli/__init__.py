"""``hf-iau``: train, unlearn, evaluate and demo from the command line (or a recipe YAML).

    hf-iau train    --config recipes/mnist_vit/config.yaml   # original model  -> <output_dir>/original
    hf-iau unlearn  --config recipes/mnist_vit/config.yaml   # IAU update      -> <output_dir>/unlearned
    hf-iau evaluate --config recipes/mnist_vit/config.yaml   # retrain (gold) if missing, then the report
    hf-iau demo                                              # all of the above on mnist_resnet, offline
    hf-iau ledger verify <model_dir>                         # check a deletion ledger (hf_iau.ledger)

``--config`` takes a recipe file or a bundled recipe name (``--config mnist_vit``); ``--quick`` applies
the recipe's ``quick:`` section. Modules: ``arguments`` (dataclasses, recipe YAML, bundled recipes),
``options`` (which options each command takes, grouped help), ``data`` (train / validation / test
splits, forget rows, preprocessing), ``models`` (build, load), ``commands`` (the steps and
sub-commands), ``printing`` (usage, summary table, verdict). Works under ``accelerate launch`` /
``torchrun``: every process runs the command, the work is split, the main process writes and prints.
"""

from __future__ import annotations

import sys
from typing import Sequence

from .arguments import (
    COMMANDS,
    DEMO_RECIPE,
    RECIPES_DIR,
    DataArguments,
    ModelArguments,
    RunArguments,
    load_recipe,
    make_parser,
    parse_args,
    recipe_path,
)
from .commands import cmd_demo, cmd_evaluate, cmd_ledger, cmd_train, cmd_unlearn, evaluate_models, setup
from ..tokenization import train_tokenizer
from .data import Prepared, check_splits, load_raw, prepare_data, resolve_forget_ids
from .printing import summary_table, usage


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hf-iau`` / ``python -m hf_iau``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"hf-iau: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if command == "ledger":
        return cmd_ledger(rest)
    data, model, run, args = parse_args(command, rest)
    setup(args)
    code = {"train": cmd_train, "unlearn": cmd_unlearn, "evaluate": cmd_evaluate, "demo": cmd_demo}[command](
        data, model, run, args
    )
    _end_processes(args)
    return code


def _end_processes(args) -> None:
    """Under a launcher: wait for every process, then close the process group (left to interpreter teardown, a gloo
    thread has aborted a finished run with "terminate called without an active exception")."""
    if args.world_size > 1:
        from accelerate import PartialState

        state = PartialState()
        state.wait_for_everyone()
        state.destroy_process_group()


__all__ = [
    "COMMANDS", "DEMO_RECIPE", "RECIPES_DIR", "DataArguments", "ModelArguments", "Prepared", "RunArguments",
    "check_splits", "evaluate_models", "load_raw", "load_recipe", "main", "make_parser", "parse_args",
    "prepare_data", "recipe_path", "resolve_forget_ids", "summary_table", "train_tokenizer",
]
