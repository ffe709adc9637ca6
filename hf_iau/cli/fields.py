"""The argument dataclasses of ``hf-iau`` (``DataArguments``, ``ModelArguments``, ``RunArguments``): what the
command line and the recipe YAML files can set besides ``IAUConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field

TASKS = ("auto", "image-classification", "sequence-classification", "causal-lm")
TRAIN_ON = ("full", "retain")


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
    allow_noop: bool = field(
        default=False,
        metadata={"help": "`unlearn`: record the deletion even when the update changes nothing (by default such a "
                  "request is an error and nothing is recorded)."},
    )
    retrain_if_missing: bool = field(default=True, metadata={"help": "`evaluate`: retrain the gold model when it is missing."})
    eval_batch_size: int = field(default=256, metadata={"help": "Batch size of the report's forward passes."})
    fsdp2_shard: bool = field(
        default=False,
        metadata={"help": "`unlearn`: shard the loaded model with FSDP2 (`fully_shard` per transformer block and the root, "
                  "hf_iau.sharding.shard_per_block) before unlearning; run under torchrun / accelerate launch."},
    )


def resolve_model_path(name: str | None) -> str | None:
    """``offline:all-MiniLM-L6-v2`` -> the wheel's local folder; any other name unchanged."""
    if name and name.startswith("offline:"):
        from ..offline_data import minilm_path

        if name.split(":", 1)[1].lower() not in ("all-minilm-l6-v2", "minilm"):
            raise SystemExit(f"hf-iau: unknown offline model {name!r}; available: offline:all-MiniLM-L6-v2")
        return minilm_path()
    return name
