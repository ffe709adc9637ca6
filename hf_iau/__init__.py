"""hf-iau: make trained HuggingFace models forget chosen training data (IAU, arXiv 2507.23257)."""

from .config import IAUConfig
from .data import fingerprint_dataset, fingerprint_ids, forget_retain_split
from .trainer import IAUTrainer
from .unlearning import UnlearningError, UnlearningResult

__version__ = "0.1.0"

__all__ = [
    "IAUConfig",
    "IAUTrainer",
    "UnlearningError",
    "UnlearningResult",
    "fingerprint_dataset",
    "fingerprint_ids",
    "forget_retain_split",
    "__version__",
]
