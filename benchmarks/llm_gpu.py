"""The LLM unlearning benchmark (benchmarks/llm_unlearning.py) with a ~1B-parameter Llama from config, for a GPU.

    python benchmarks/llm_gpu.py                       # forget10, every method, probes; bf16 on one GPU
    python benchmarks/llm_gpu.py --splits forget01 forget05 forget10 --seeds 0 1 2
    python benchmarks/llm_gpu.py --dry-run             # print the size and the parameter count, train nothing

Same data, grading, tuning and probes as the CPU sizes; only the model and the budgets grow: a
Llama (20 layers, 2048 hidden, 32 heads, SwiGLU 5632, BPE vocab 16k trained on the bundled corpora:
≈1.0B parameters) first learns language on the Lee and Wikipedia corpora (``pretrain_steps``, cached
in ``--run-dir``, never downloaded), then the 400 authors; 5 retain seeds; TOFU's 200 new tokens.
Not run in this repository's sessions (no GPU was lent): the figures come when a device is.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llm_unlearning as bench  # noqa: E402

GPU_1B = dict(
    bench.SIZES["full"],
    vocab=16000, hidden=2048, layers=20, heads=32, inter=5632, block=256, pretrain_steps=3000, pretrain_lr=3e-4,
    finetune_epochs=5, finetune_lr=1e-5, batch=32, retain_seeds=5, gen_tokens=200, grid=(0.5, 1.0, 2.0, 4.0),
)


def parameter_count(size: dict) -> int:
    """Parameters of the Llama ``size`` describes (tied embeddings), without building it."""
    h, layers, inter, vocab = size["hidden"], size["layers"], size["inter"], size["vocab"]
    per_layer = 4 * h * h + 3 * h * inter + 2 * h
    return vocab * h + layers * per_layer + h


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--dry-run" in argv:
        print(f"gpu_1b: {parameter_count(GPU_1B) / 1e9:.2f}B parameters; size {GPU_1B}")
        return 0
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("llm_gpu.py needs a CUDA device; on a CPU run benchmarks/llm_unlearning.py --quick.")
    bench.SIZES["gpu_1b"] = GPU_1B
    defaults = ["--size", "gpu_1b", "--probes", "--threads", "8"]
    return bench.main(defaults + argv)


if __name__ == "__main__":
    sys.exit(main())
