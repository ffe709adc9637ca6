"""Which options each ``hf-iau`` command takes, in which groups, and its ``--help`` text.

Every command parses every field (a recipe YAML is shared by all commands), but the command line of a
command only accepts the options that act on it: ``unlearn`` takes no training option, ``train`` and
``evaluate`` no unlearning option. ``--help`` lists the groups of a command, its own options first,
and the most used Trainer options; ``--help_all`` adds every other ``TrainingArguments`` field.
"""

from __future__ import annotations

import difflib
import textwrap
from dataclasses import MISSING, Field, fields
from typing import Iterable

# TrainingArguments fields that only act on Trainer.train (epochs, schedule, optimiser, evaluation, checkpoints)
TRAINING_ONLY = frozenset({
    "num_train_epochs", "max_steps", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "optim", "optim_args",
    "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "optim_target_modules", "max_grad_norm",
    "label_smoothing_factor", "neftune_noise_alpha", "auto_find_batch_size", "eval_strategy", "eval_steps",
    "eval_delay", "eval_on_start", "save_strategy", "save_steps", "save_total_limit", "save_only_model",
    "save_on_each_node", "enable_jit_checkpoint", "load_best_model_at_end", "metric_for_best_model",
    "greater_is_better", "resume_from_checkpoint", "ignore_data_skip", "restore_callback_states_from_checkpoint",
    "train_sampling_strategy", "group_by_length", "do_train", "do_eval", "do_predict",
})
# Trainer options shown by --help (the rest with --help_all)
COMMON_TRAINER = (
    "output_dir", "seed", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "learning_rate", "num_train_epochs", "max_steps", "lr_scheduler_type", "warmup_steps", "weight_decay",
    "save_strategy", "eval_strategy", "logging_steps", "report_to", "run_name", "disable_tqdm", "use_cpu", "bf16",
    "fp16", "gradient_checkpointing", "push_to_hub", "hub_model_id", "ddp_find_unused_parameters",
)
RUN_FOR = {  # RunArguments fields by the command that reads them
    "train": {"original_model", "retrained_model", "train_on"},
    "unlearn": {"original_model", "unlearned_model", "method", "allow_noop", "fsdp2_shard"},
    "evaluate": {"original_model", "unlearned_model", "retrained_model", "report_dir", "retrain_if_missing", "eval_batch_size"},
}
TITLES = {
    "train": "train the original model (or --train_on retain: the gold model) -> <output_dir>/original",
    "unlearn": "make <output_dir>/original forget the `forget` rows -> <output_dir>/unlearned",
    "evaluate": "compare original / unlearned / retrained (retrains when missing) -> <output_dir>/report",
    "demo": "train -> unlearn -> retrain -> evaluate in one process (default recipe: mnist_resnet)",
}
RECIPE_OPTIONS = (
    ("--config RECIPE", "A recipe YAML file or a bundled recipe name (e.g. fictitious_authors_llama); its values "
                        "become defaults and flags override them."),
    ("--quick", "Apply the recipe's `quick:` section (sizes that run on 2 CPUs in a few minutes)."),
    ("--help_all", "This help plus every other TrainingArguments option."),
)


def _iau_kind(name: str) -> str:
    if name.startswith("gr_"):
        return "training"
    if name in ("id_column", "fingerprint_key_file", "model_init_kwargs", "trust_remote_code"):
        return "common"
    return "unlearning"


def groups(command: str, show_all: bool = False) -> list[tuple[str, list[Field]]]:
    """The option groups of ``command``, in help order: (title, fields)."""
    from transformers import TrainingArguments

    from ..config import IAUConfig
    from .fields import DataArguments, ModelArguments, RunArguments

    trainer_names = {f.name for f in fields(TrainingArguments)}
    iau = [f for f in fields(IAUConfig) if f.name not in trainer_names]
    by_name = {f.name: f for f in fields(IAUConfig) if f.name in trainer_names and f.init and f.name != "local_rank"}
    run = [f for f in fields(RunArguments) if command == "demo" or f.name in RUN_FOR[command]]
    unlearning = [f for f in iau if _iau_kind(f.name) == "unlearning"]
    gr = [f for f in iau if _iau_kind(f.name) == "training"]
    trains = command in ("train", "evaluate", "demo")
    common = [by_name[n] for n in COMMON_TRAINER if n in by_name and (trains or n not in TRAINING_ONLY)]
    common += [f for f in iau if _iau_kind(f.name) == "common"]
    out: list[tuple[str, list[Field]]] = []
    if command in ("unlearn", "demo"):
        out.append(("unlearning (IAUConfig)", unlearning))
    if trains:
        out.append(("gradient restriction during training (IAUConfig)", gr))
    out += [("data", list(fields(DataArguments))), ("model", list(fields(ModelArguments))), ("run", run),
            ("Trainer options (most used)", common)]
    rest = [f for n, f in by_name.items() if n not in COMMON_TRAINER and (trains or n not in TRAINING_ONLY)]
    out.append(("other Trainer options", rest if show_all else []))
    return out


def allowed(command: str) -> set[str]:
    """Names of every option ``command`` accepts on its command line."""
    return {f.name for _, fs in groups(command, show_all=True) for f in fs}


def _default(f: Field) -> str:
    if f.default is not MISSING:
        return repr(f.default) if isinstance(f.default, str) else str(f.default)
    return "–"


def _entry(flag: str, text: str, width: int = 100) -> list[str]:
    lines = [f"  {flag}"]
    lines += textwrap.wrap(" ".join(text.split()), width=width, initial_indent=" " * 8, subsequent_indent=" " * 8)
    return lines


def format_help(command: str, show_all: bool = False) -> str:
    """``hf-iau <command> --help``: recipe options, then the command's groups (its own options first)."""
    lines = [f"usage: hf-iau {command} [--config RECIPE] [--quick] [--option value ...]", "", TITLES[command], "", "recipe:"]
    for flag, text in RECIPE_OPTIONS:
        lines += _entry(flag, text)
    for title, fs in groups(command, show_all):
        if fs:
            lines += ["", f"{title}:"]
        for f in fs:
            lines += _entry(f"--{f.name} (default: {_default(f)})", str(f.metadata.get("help", "")))
    if not show_all:
        hidden = len(groups(command, show_all=True)[-1][1])
        lines += ["", f"{hidden} other Trainer options: `hf-iau {command} --help_all`."]
    return "\n".join(lines)


def unknown_option_message(command: str, flags: Iterable[str]) -> str:
    """One line per unusable flag: unknown (with the closest names) or not an option of ``command``."""
    mine = sorted(allowed(command))
    out = []
    for flag in flags:
        name = flag.lstrip("-").split("=", 1)[0]
        users = [c for c in ("train", "unlearn", "evaluate") if c != command and name in allowed(c)]
        if users:
            out.append(f"hf-iau {command}: --{name} does not act on `{command}` (it is an option of "
                       f"{' and '.join(users)}); set it in the recipe or on that command.")
            continue
        close = difflib.get_close_matches(name, sorted(allowed("demo")), n=1, cutoff=0.6)
        hint = f"; see `hf-iau {command} --help`."
        if close:
            where = "" if close[0] in mine else f" (an option of {', '.join(c for c in ('train', 'unlearn', 'evaluate') if close[0] in allowed(c))})"
            hint = f"; did you mean --{close[0]}{where}?"
        out.append(f"hf-iau {command}: unknown option {flag}{hint}")
    return "\n".join(out)
