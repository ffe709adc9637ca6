"""Models of ``hf-iau``: build from a config or a pretrained id, load saved folders (safetensors only), LoRA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .arguments import ModelArguments
from .data import Prepared
from .fields import resolve_model_path


def auto_class(task: str):
    """The ``AutoModelFor...`` class of a task."""
    from transformers import AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForSequenceClassification

    return {
        "image-classification": AutoModelForImageClassification,
        "sequence-classification": AutoModelForSequenceClassification,
        "causal-lm": AutoModelForCausalLM,
    }[task]


def build_model(model: ModelArguments, args, prep: Prepared):
    """A fresh model: from ``model_config`` (seeded init) or from pretrained ``model_name_or_path``."""
    import torch
    from transformers import AutoConfig

    auto = auto_class(prep.task)
    extra: dict[str, Any] = {}
    if prep.num_labels:
        extra["num_labels"] = prep.num_labels
        if prep.label_names:
            extra["id2label"] = dict(enumerate(prep.label_names))
            extra["label2id"] = {n: i for i, n in enumerate(prep.label_names)}
    if model.attn_implementation:
        extra["attn_implementation"] = model.attn_implementation
    torch.manual_seed(args.seed)
    if model.model_config:
        cfg = dict(model.model_config)
        if prep.task == "causal-lm" and prep.tokenizer is not None:
            tok = prep.tokenizer
            cfg.setdefault("vocab_size", len(tok))
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                cfg.setdefault(key, tok.eos_token_id)
        config = AutoConfig.for_model(**{**cfg, **extra})
        return auto.from_config(config)
    if not model.model_name_or_path:
        raise SystemExit("hf-iau: set model_name_or_path or model_config.")
    kwargs = {"use_safetensors": True, "trust_remote_code": args.trust_remote_code, **extra}
    if isinstance(args.model_init_kwargs, dict):
        kwargs.update(args.model_init_kwargs)
    return auto.from_pretrained(resolve_model_path(model.model_name_or_path), **kwargs)


def peft_config_of(model: ModelArguments, task: str):
    """``LoraConfig`` from the LoRA arguments, or None when ``use_peft`` is off."""
    if not model.use_peft:
        return None
    from peft import LoraConfig, TaskType

    task_type = {"causal-lm": TaskType.CAUSAL_LM, "sequence-classification": TaskType.SEQ_CLS}.get(task)
    return LoraConfig(
        r=model.lora_r, lora_alpha=model.lora_alpha, lora_dropout=model.lora_dropout,
        target_modules=model.lora_target_modules or "all-linear", task_type=task_type,
    )


def load_trained(path: str, model: ModelArguments, prep: Prepared, args, trainable: bool = True):
    """A saved model or LoRA adapter folder (safetensors only).

    A from-scratch base (``model_config``) under an adapter is rebuilt from its seeded initialisation.
    """
    task = prep.task
    auto = auto_class(task)
    kw = {"use_safetensors": True, "trust_remote_code": args.trust_remote_code}
    if model.attn_implementation:
        kw["attn_implementation"] = model.attn_implementation
    if (Path(path) / "adapter_config.json").exists():
        from peft import PeftConfig, PeftModel

        if model.model_config:
            base = build_model(model, args, prep)
        else:
            base_id = PeftConfig.from_pretrained(path).base_model_name_or_path or model.model_name_or_path
            base = auto.from_pretrained(resolve_model_path(base_id), **kw)
        return PeftModel.from_pretrained(base, path, is_trainable=trainable)
    if not Path(path).exists():
        raise SystemExit(f"hf-iau: no model at {path}; run `hf-iau train` first (or pass the path).")
    return auto.from_pretrained(path, **kw)


def load_tokenizer(path: str, args):
    """The tokenizer saved with a model (errors propagate), or None when the folder holds none."""
    from transformers import AutoTokenizer

    if not any((Path(path) / name).exists() for name in ("tokenizer_config.json", "tokenizer.json")):
        return None
    return AutoTokenizer.from_pretrained(path, trust_remote_code=args.trust_remote_code)
