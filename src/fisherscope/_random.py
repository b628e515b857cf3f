"""Random draws that follow the generator, not the tensors.

Every random choice in fisherscope takes an explicit ``torch.Generator``. A generator lives
on one device and ``torch.rand(..., generator=g, device=d)`` fails when ``d`` is another
one, so a CPU generator (the usual ``torch.Generator().manual_seed(0)``) could not drive an
attack on CUDA tensors. These helpers draw on the generator's device (the CPU when none is
given, from torch's default CPU generator) and move the numbers to the device of ``like``:
the same seed gives the same numbers whichever device the model runs on; a CUDA generator
draws on CUDA (no host transfer).

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> rand((2, 3), generator=g, like=torch.zeros(1, dtype=torch.float64)).dtype
torch.float64
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["generator_device", "rand", "randint", "randn", "randperm"]


def generator_device(generator: torch.Generator | None) -> torch.device:
    """Where ``generator`` draws: its device, or the CPU for torch's default generator."""
    return generator.device if generator is not None else torch.device("cpu")


def rand(shape: tuple[int, ...], *, generator: torch.Generator | None, like: Tensor,
         dtype: torch.dtype | None = None) -> Tensor:
    """Uniform [0, 1) of ``shape`` (dtype of ``like`` unless given), on ``like``'s device."""
    out = torch.rand(shape, generator=generator, dtype=dtype or like.dtype, device=generator_device(generator))
    return out.to(like.device)


def randn(shape: tuple[int, ...], *, generator: torch.Generator | None, like: Tensor,
          dtype: torch.dtype | None = None) -> Tensor:
    """Standard normal of ``shape`` (dtype of ``like`` unless given), on ``like``'s device."""
    out = torch.randn(shape, generator=generator, dtype=dtype or like.dtype, device=generator_device(generator))
    return out.to(like.device)


def randint(low: int, high: int, shape: tuple[int, ...], *, generator: torch.Generator | None,
            like: Tensor) -> Tensor:
    """int64 uniform in ``low`` … ``high - 1`` of ``shape``, on ``like``'s device."""
    out = torch.randint(low, high, shape, generator=generator, device=generator_device(generator))
    return out.to(like.device)


def randperm(n: int, *, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """A random permutation of 0 … n-1 (int64), on ``like``'s device."""
    return torch.randperm(n, generator=generator, device=generator_device(generator)).to(like.device)
