"""fisherscope — the Fisher information as a working instrument for adversarial robustness.

Attack with it, detect with it, defend with it and look through it, for any PyTorch
image classifier that maps inputs in [0, 1] to logits.

The top-level names are imported on first use (PEP 562), so ``import fisherscope`` — and
``fisherscope --help`` — does not pay for torch and scikit-learn until they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> submodule that defines it
_LAZY = {
    "audit": ".experiments.audit",
    "check_inputs": "._validation",
    "check_labels": "._validation",
    "check_logits": "._validation",
    "eval_mode": "._validation",
    "show_progress": "._progress",
    "BudgetWarning": ".exceptions",
    "ConvergenceWarning": ".exceptions",
    "ModelModeWarning": ".exceptions",
    "ModelNotSavedError": ".exceptions",
    "NotFittedError": ".exceptions",
}

__all__ = [
    "BudgetWarning",
    "ConvergenceWarning",
    "ModelModeWarning",
    "ModelNotSavedError",
    "NotFittedError",
    "__version__",
    "audit",
    "check_inputs",
    "check_labels",
    "check_logits",
    "eval_mode",
    "exceptions",
    "show_progress",
]

if TYPE_CHECKING:
    from . import exceptions
    from ._progress import show_progress
    from ._validation import check_inputs, check_labels, check_logits, eval_mode
    from .exceptions import (
        BudgetWarning,
        ConvergenceWarning,
        ModelModeWarning,
        ModelNotSavedError,
        NotFittedError,
    )
    from .experiments.audit import audit


def __getattr__(name: str) -> Any:
    if name == "exceptions":
        return importlib.import_module(".exceptions", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fisherscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
