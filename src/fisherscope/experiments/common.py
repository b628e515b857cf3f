"""Pieces several experiments share: loading data and (cached) models for a run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .base import Context

__all__ = ["trained_model", "predict", "load_split"]


def load_split(name: str, split: str, ctx: Context) -> Any:
    from ..data import load_dataset

    return load_dataset(name, split, data_dir=ctx.data_dir)


def trained_model(
    arch: str,
    dataset: str,
    ctx: Context,
    *,
    seed: int,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """Train ``arch`` on ``dataset`` with a named preset (or the arch's defaults), cached.

    Returns the :class:`~fisherscope.models.TrainedModel`; a repeated call with the same
    request loads the checkpoint instead of training.
    """
    from ..training import resolve_preset, train_model

    kwargs = dict(resolve_preset(preset or arch, dataset))
    kwargs.update(overrides or {})
    kwargs["seed"] = seed
    train = load_split(dataset, "train", ctx)
    test = load_split(dataset, "test", ctx)
    return train_model(
        arch, train, test_dataset=test, cache_dir=ctx.cache_dir, progress=ctx.progress,
        device=ctx.device, **kwargs,
    )


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Predicted classes, batched, in eval mode (the caller's mode is restored)."""
    from .._validation import eval_mode

    device = next(model.parameters()).device
    out = []
    with eval_mode(model, warn=False):
        for i in range(0, x.shape[0], batch_size):
            out.append(model(x[i : i + batch_size].to(device)).argmax(1).cpu())
    return torch.cat(out).numpy()


def correct_draw(model: torch.nn.Module, split: Any, n: int | None, seed: int) -> tuple[torch.Tensor, int]:
    """(indices, count): ``n`` of the images of ``split`` the model classifies correctly,
    drawn at random with ``seed`` (all of them when ``n`` is None) and returned in split
    order, and how many are classified correctly in all."""
    correct = torch.nonzero(torch.as_tensor(predict(model, split.x)) == split.y).flatten()
    g = torch.Generator().manual_seed(seed)
    k = len(correct) if n is None else min(n, len(correct))
    return correct[torch.randperm(len(correct), generator=g)[:k]].sort().values, len(correct)


def select_samples(n_total: int, n: int | None, seed: int) -> torch.Tensor:
    """Indices of ``n`` samples drawn without replacement (all, in order, when n is None)."""
    if n is None or n >= n_total:
        return torch.arange(n_total)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n].sort().values


def in_batches(fn: Any, *tensors: torch.Tensor, batch_size: int = 256) -> Any:
    """Apply ``fn`` to aligned slices of ``tensors`` and concatenate what it returns.

    ``fn`` returns a tensor, or a dict / tuple of tensors with the batch as first dim.
    """
    n = tensors[0].shape[0]
    outs = [fn(*(t[i : i + batch_size] for t in tensors)) for i in range(0, n, batch_size)]
    first = outs[0]
    if isinstance(first, dict):
        return {k: torch.cat([o[k] for o in outs]) for k in first}
    if isinstance(first, tuple):
        return tuple(torch.cat([o[j] for o in outs]) for j in range(len(first)))
    return torch.cat(outs)
