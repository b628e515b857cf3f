"""Batching helpers shared by the library: per-sample broadcasting, batch slices, batched
prediction and batched application of a function.

One copy each, next to :mod:`fisherscope._validation`; attacks, Fisher functions,
features, detectors and evaluation import them from here. Everything works on the batch
(first) dimension only; nothing here loops over samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ._progress import track
from ._validation import POSITIVE_INT, check_logits, check_param, eval_mode

__all__ = [
    "check_batch_size",
    "chunks",
    "even_chunks",
    "in_batches",
    "per_sample",
    "predict",
]


def per_sample(v: Tensor, like: Tensor) -> Tensor:
    """``v`` with one value per sample, shaped to broadcast against ``like``.

    Parameters
    ----------
    v : Tensor
        N values (any shape with N elements, usually (N,)): a per-sample eps, step,
        scale or mask.
    like : Tensor
        (N, *S).

    Returns
    -------
    Tensor
        A view of ``v`` of shape (N, 1, ..., 1) with ``like.ndim`` dimensions.

    Examples
    --------
    >>> per_sample(torch.tensor([1.0, 2.0]), torch.ones(2, 3, 4, 4)).shape
    torch.Size([2, 1, 1, 1])
    """
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def check_batch_size(batch_size: Any, owner: str = "fisherscope", *, allow_none: bool = False) -> None:
    """Raise unless ``batch_size`` is a positive int (or None, one batch, if allowed).

    The message follows the one template of :func:`~fisherscope._validation.check_param`.
    """
    check_param(owner, "batch_size", batch_size, POSITIVE_INT.or_none("one batch") if allow_none else POSITIVE_INT)


def chunks(n: int, batch_size: int | None) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` rows covering ``range(n)``.

    ``batch_size=None`` gives one slice of all ``n`` rows; ``n = 0`` gives none. The last
    slice holds the remainder. Slices index tensors and numpy arrays alike.

    Examples
    --------
    >>> list(chunks(5, 2))
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    step = n if batch_size is None else batch_size
    for start in range(0, n, max(step, 1)):
        yield slice(start, min(start + step, n))


def even_chunks(n: int, max_size: int) -> list[slice]:
    """Slices of at most ``max_size`` rows covering ``range(n)``, balanced.

    As many slices as :func:`chunks` gives, ``k = ceil(n / max_size)``, each of the
    smallest size that still needs no more, ``ceil(n / k)`` rows (the last holds the
    rest): 9 rows at most 8 go as 5 + 4, not 8 + 1, so vmapped kernels see similar
    batch sizes.

    Examples
    --------
    >>> even_chunks(5, 4)
    [slice(0, 3, None), slice(3, 5, None)]
    """
    if n == 0:
        return []
    size = math.ceil(n / math.ceil(n / max_size))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def in_batches(fn: Callable[..., Any], *tensors: Tensor, batch_size: int | None = 256,
               progress: str | None = None) -> Any:
    """Apply ``fn`` to aligned slices of ``tensors`` and concatenate what it returns.

    Parameters
    ----------
    fn : callable
        Called as ``fn(*(t[sl] for t in tensors))`` for consecutive slices ``sl`` of at
        most ``batch_size`` rows; returns a tensor, or a dict or tuple of tensors, each
        with the batch as its first dimension.
    *tensors : Tensor
        At least one, all with the same first dimension N >= 1.
    batch_size : int or None
        Rows per call; ``None``: one call with everything.
    progress : str, optional
        Name of the stage to report, one step per batch, while progress is shown
        (:func:`fisherscope.show_progress`); None: not reported.

    Returns
    -------
    Tensor, dict or tuple
        The per-batch results concatenated along dimension 0, in the structure ``fn``
        returns. No gradient mode or device handling is added: ``fn`` decides.

    Examples
    --------
    >>> in_batches(lambda a, b: a + b, torch.arange(5), torch.ones(5), batch_size=2)
    tensor([1., 2., 3., 4., 5.])
    """
    if not tensors:
        raise ValueError("in_batches needs at least one tensor to slice; got none.")
    n = tensors[0].shape[0]
    lengths = [t.shape[0] for t in tensors]
    if any(m != n for m in lengths):
        raise ValueError(
            f"in_batches slices its tensors along dimension 0, so they must have the same "
            f"length; got lengths {lengths}."
        )
    if n == 0:
        raise ValueError("in_batches got tensors with 0 rows; pass at least one row.")
    check_batch_size(batch_size, allow_none=True)
    slices = list(chunks(n, batch_size))
    outs = [fn(*(t[sl] for t in tensors)) for sl in (slices if progress is None else track(slices, progress))]
    first = outs[0]
    if isinstance(first, dict):
        return {k: torch.cat([o[k] for o in outs]) for k in first}
    if isinstance(first, tuple):
        return tuple(torch.cat([o[j] for o in outs]) for j in range(len(first)))
    return torch.cat(outs)


def _model_device(model: nn.Module, default: torch.device) -> torch.device:
    first: torch.Tensor | None = next(model.parameters(), None)
    if first is None:
        first = next(model.buffers(), None)
    return default if first is None else first.device


def predict(
    model: nn.Module,
    x: Tensor,
    batch_size: int | None = 512,
    *,
    check: bool = True,
    warn: bool = True,
) -> Tensor:
    """Predicted classes ``argmax_k model(x)_k``, batched, in eval mode, without gradients.

    Parameters
    ----------
    model : nn.Module
        Returns logits (N, K). Put in eval mode for the call; each module's own mode is
        put back afterwards.
    x : Tensor
        (N, *S), N >= 1. Each batch is moved to the device of the model's first
        parameter (or buffer); the predictions come back on ``x``'s device.
    batch_size : int or None
        Samples per forward pass; ``None``: one pass.
    check : bool
        Validate every batch's output with :func:`fisherscope.check_logits` (2-D,
        finite, not probabilities).
    warn : bool
        Warn (:class:`~fisherscope.ModelModeWarning`) when the model was in training mode.

    Returns
    -------
    Tensor
        (N,) int64. Only the predictions are kept, never all logits at once.

    Examples
    --------
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> predict(net.eval(), torch.rand(5, 1, 2, 2), batch_size=2).shape
    torch.Size([5])
    """
    check_batch_size(batch_size, allow_none=True)
    device = _model_device(model, x.device)

    def classes(xb: Tensor) -> Tensor:
        logits = model(xb.to(device))
        if check:
            check_logits(logits)
        return logits.argmax(1).to(x.device)

    with eval_mode(model, warn=warn), torch.no_grad():
        return in_batches(classes, x, batch_size=batch_size)
