"""Tiny models (0.01–1M parameters) built from configs, and seeded toy datasets, for tests."""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    BertConfig,
    PreTrainedTokenizerFast,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    ViTConfig,
    ViTForImageClassification,
)

VOCAB = 64
WORDS = [f"w{i}" for i in range(60)]
SEQ = 16
NUM_LABELS = 3


def tiny_gpt2(seed: int = 0, attn: str = "sdpa", **kw) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0,
        pad_token_id=0, attn_implementation=attn, **kw,
    )
    return GPT2LMHeadModel(cfg)


def tiny_llama(seed: int = 0, attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(cfg)


def tiny_bert(seed: int = 0, attn: str = "sdpa") -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, num_labels=NUM_LABELS, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation=attn,
    )
    return BertForSequenceClassification(cfg)


def tiny_vit(seed: int = 0, attn: str = "sdpa") -> ViTForImageClassification:
    torch.manual_seed(seed)
    cfg = ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=NUM_LABELS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation=attn,
    )
    return ViTForImageClassification(cfg)


def lm_dataset(n: int = 24, seed: int = 0) -> Dataset:
    """Random token sequences with `labels` = `input_ids` (no padding) and an `id` column."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(n, SEQ)).tolist()
    return Dataset.from_dict(
        {"id": list(range(n)), "input_ids": ids, "attention_mask": [[1] * SEQ] * n, "labels": ids}
    )


def text_cls_dataset(n: int = 24, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(n, SEQ)).tolist()
    return Dataset.from_dict(
        {"id": list(range(n)), "input_ids": ids, "attention_mask": [[1] * SEQ] * n,
         "label": rng.integers(0, NUM_LABELS, size=n).tolist()}
    )


def image_dataset(n: int = 24, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset.from_dict(
        {"id": list(range(n)), "pixel_values": rng.normal(size=(n, 1, 8, 8)).astype("float32").tolist(),
         "label": rng.integers(0, NUM_LABELS, size=n).tolist()}
    )


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``WORDS`` (ids 0–3: pad, unk, bos, eos), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3} | {w: i + 4 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]")


# The reference-parity update (one fresh Adam step on whole sets), not the self-limiting default mode.
PARITY = dict(
    unlearn_steps=1, unlearn_learning_rate=1e-3, unlearn_retain_weight=1.0, unlearn_retain_sample_size=None, unlearn_targets="none",
    unlearn_stop="fixed",
)


def parity_args(out, **kw):
    """IAUConfig for CPU tests in reference-parity mode; ``kw`` overrides."""
    from hf_iau import IAUConfig

    base = dict(output_dir=str(out), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no", **PARITY)
    base.update(kw)
    return IAUConfig(**base)


def torchrun(args: list[str], out: "str | None" = None, timeout: int = 300):
    """Run ``torchrun --nproc_per_node 2 --standalone ARGS`` on CPU (one thread, offline); assert it succeeded
    and, with ``out``, that the worker wrote ``world_size.txt`` = 2. Skips the test when torchrun is missing."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if exe is None:
        pytest.skip("torchrun not found")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([exe, "--nproc_per_node", "2", "--standalone", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    if out is not None:
        assert (Path(out) / "world_size.txt").read_text() == "2"
    return proc


def leave_processes() -> None:
    """End a torchrun worker whose results are on disk: wait for every process, then exit without interpreter
    teardown (under load a gloo background thread has aborted finished workers at exit with "terminate called
    without an active exception")."""
    import os
    import sys

    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
