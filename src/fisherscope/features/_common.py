"""Helpers shared by the feature functions: model / batch-size checks, chunking, numpy out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import POSITIVE_INT, check_param


def check_model(model: Any, what: str = "model") -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{what} must be a torch.nn.Module mapping x (N, C, H, W) to logits (N, K); got "
            f"{type(model).__name__}."
        )


def check_batch_size(batch_size: Any, owner: str, *, allow_none: bool = False) -> None:
    check_param(owner, "batch_size", batch_size, POSITIVE_INT.or_none("one batch") if allow_none else POSITIVE_INT)


def chunks(n: int, batch_size: int | None) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` rows covering range(n)."""
    step = n if batch_size is None else batch_size
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Detached float64 numpy copy of a tensor on any device."""
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()
