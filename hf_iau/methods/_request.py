"""The lifecycle every method runs on lives in :mod:`hf_iau.lifecycle`; this module keeps the names the methods
import (``from ._request import Request, BudgetError, Term, make_optimizer``)."""

from ..lifecycle import Mask, Request, Term, make_optimizer, retain_sample
from ..result import BudgetError, Stats, UnlearningError, UnlearningResult

__all__ = ["BudgetError", "Mask", "Request", "Stats", "Term", "UnlearningError", "UnlearningResult", "make_optimizer",
           "retain_sample"]
