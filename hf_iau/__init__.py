"""hf-iau: make trained HuggingFace models forget chosen training data (IAU, arXiv 2507.23257)."""

from .collators import CausalLMCollator
from .config import IAUConfig
from .data import fingerprint_dataset, fingerprint_ids, forget_retain_split
from .qa import qa_to_lm_examples
from .request import DeletionRequest
from .result import UnlearningError, UnlearningResult
from .tokenization import train_tokenizer
from .trainer import IAUTrainer

__version__ = "0.1.0"


def __getattr__(name: str):
    """Lazy access to the evaluation report (it imports matplotlib and sklearn)."""
    if name in ("evaluate_unlearning", "UnlearningReport"):
        from . import report

        return getattr(report, name)
    raise AttributeError(f"module 'hf_iau' has no attribute {name!r}")

__all__ = [
    "CausalLMCollator",
    "DeletionRequest",
    "IAUConfig",
    "IAUTrainer",
    "UnlearningError",
    "UnlearningReport",
    "UnlearningResult",
    "evaluate_unlearning",
    "fingerprint_dataset",
    "fingerprint_ids",
    "forget_retain_split",
    "qa_to_lm_examples",
    "train_tokenizer",
    "__version__",
]
