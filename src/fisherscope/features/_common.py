"""Helpers shared by the feature functions: the model check and numpy output.

Batch-size checks and chunking live in :mod:`fisherscope._batching`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


def check_model(model: Any, what: str = "model") -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{what} must be a torch.nn.Module mapping x (N, C, H, W) to logits (N, K); got "
            f"{type(model).__name__}."
        )


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Detached float64 numpy copy of a tensor on any device."""
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()
