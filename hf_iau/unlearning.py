"""Deprecated module (kept one release): IAU is now one method on the common request lifecycle.

``UnlearningResult``/``UnlearningError`` live in :mod:`hf_iau.result`, the lifecycle in :mod:`hf_iau.lifecycle`,
the IAU update in :mod:`hf_iau.methods.iau`.
"""

from .lifecycle import retain_sample
from .result import UnlearningError, UnlearningResult

__all__ = ["UnlearningError", "UnlearningResult", "retain_sample"]
