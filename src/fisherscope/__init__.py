"""fisherscope — the Fisher information as a working instrument for adversarial robustness.

Attack with it, detect with it, defend with it and look through it, for any PyTorch
image classifier that maps inputs in [0, 1] to logits.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import exceptions
from ._validation import check_inputs, check_labels, check_logits, eval_mode
from .exceptions import (
    BudgetWarning,
    ConvergenceWarning,
    ModelModeWarning,
    ModelNotSavedError,
    NotFittedError,
)

__all__ = [
    "BudgetWarning",
    "ConvergenceWarning",
    "ModelModeWarning",
    "ModelNotSavedError",
    "NotFittedError",
    "__version__",
    "check_inputs",
    "check_labels",
    "check_logits",
    "eval_mode",
    "exceptions",
]
