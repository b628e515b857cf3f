"""Pieces several experiments share: loading data and (cached) models for a run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _batching, distributed
from .._batching import in_batches
from ..fisher import fisher_sensitivity
from ..saliency import gradient, guided_backprop, hendrycks_saliency
from .base import Context

__all__ = ["check_overrides", "correct_draw", "dataset_phrase", "in_batches", "inspect_maps", "load_split", "predict",
           "saliency_rows", "select_samples", "trained_model"]


def dataset_phrase(name: str) -> str:
    """How a report names a dataset: ```mnist``` (the name as code), or for a dataset the
    registry flags with a note (an approximation) its label first:
    ``CIFAR-10 (JPEG q75 copy) [`cifar10_jpeg`]``."""
    from ..data.registry import get_spec

    spec = get_spec(name) if isinstance(name, str) else None
    if spec is None or not spec.note:
        return f"`{name}`"
    return f"{spec.display_name} [`{spec.name}`]"


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
    train_images: int | None = None,
) -> Any:
    """Train ``arch`` on ``dataset`` with a named preset (or the arch's defaults), cached.

    ``train_images``: train on a draw of that many training images (:func:`select_samples`
    with the training seed, in split order) instead of the whole split.

    Returns the :class:`~fisherscope.models.TrainedModel`; a repeated call with the same
    request loads the checkpoint instead of training. Under torchrun the ranks asking for
    the same model take turns (:func:`fisherscope.distributed.exclusive`): the first
    trains and caches it, the others load it.
    """
    from ..training import resolve_preset, train_model

    kwargs = dict(resolve_preset(preset or arch, dataset))
    kwargs["seed"] = seed
    check_overrides(overrides or {}, where=f"{arch}@{dataset} overrides")
    kwargs.update(overrides or {})  # an override (its seed too) wins over the config's value
    with distributed.exclusive(_training_lock(arch, dataset, kwargs, train_images, ctx)):
        train = load_split(dataset, "train", ctx)
        if train_images is not None:
            train = train.subset(select_samples(len(train), train_images, int(kwargs["seed"])))
        test = load_split(dataset, "test", ctx)
        return train_model(
            arch, train, test_dataset=test, cache_dir=ctx.cache_dir, progress=ctx.progress,
            device=ctx.device, **kwargs,
        )


def _training_lock(arch: str, dataset: str, kwargs: Mapping[str, Any], train_images: int | None,
                   ctx: Context) -> Path:
    """The lock file of one training request in the model cache (``.locks/<arch>-<digest>.lock``)."""
    import hashlib
    import json

    from ..models import resolve_cache_dir

    request = json.dumps([arch, dataset, dict(kwargs), train_images], sort_keys=True,
                         default=lambda o: getattr(o, "key", type(o).__name__))  # init_from: its cache key
    digest = hashlib.sha256(request.encode()).hexdigest()[:16]
    return resolve_cache_dir(ctx.cache_dir) / ".locks" / f"{arch}-{digest}.lock"


#: train_model arguments a config's ``overrides`` may not set (the runner sets them).
_RUNNER_SET = frozenset({"arch", "dataset", "test_dataset", "cache", "cache_dir", "data_dir", "progress",
                         "device", "callback"})


def check_overrides(overrides: Mapping[str, Any], *, where: str = "overrides") -> None:
    """Reject ``overrides`` keys that :func:`~fisherscope.training.train_model` does not take,
    naming the valid ones (instead of a bare ``unexpected keyword argument`` later)."""
    import inspect

    from ..training import train_model

    valid = sorted(p for p in inspect.signature(train_model).parameters if p not in _RUNNER_SET)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        import difflib

        close = {k: difflib.get_close_matches(k, valid, n=1, cutoff=0.5) for k in unknown}
        hints = [f"{k!r} -> {m[0]!r}" for k, m in close.items() if m]
        fix = f" Did you mean {', '.join(hints)}?" if hints else " Use train_model's keyword names."
        raise ValueError(f"{where}: unknown training setting(s) {unknown}; valid keys: {valid}.{fix}")


def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Predicted classes as a numpy array, batched, in eval mode (the caller's mode restored)."""
    return _batching.predict(model, x, batch_size, check=False, warn=False).cpu().numpy()


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


def inspect_maps(model: torch.nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
                 fis_reduction: str = "two_class") -> dict[str, torch.Tensor]:
    """FIS and saliency maps of clean and adversarial images (each w.r.t. its own prediction)."""
    out: dict[str, torch.Tensor] = {}
    for tag, xs in (("clean", x), ("adv", x_adv)):
        out[f"fis/{tag}"] = fisher_sensitivity(model, xs, reduction=fis_reduction)  # type: ignore[arg-type]
        out[f"gradient/{tag}"] = gradient(model, xs)
        out[f"guided/{tag}"] = guided_backprop(model, xs)
        out[f"hendrycks/{tag}"] = hendrycks_saliency(model, xs)
    return out


def saliency_rows(x: np.ndarray, xa: np.ndarray, maps: dict[str, np.ndarray], titles_clean: list[str],
                   titles_adv: list[str]) -> tuple[list[np.ndarray], dict[str, list[np.ndarray]], list[str]]:
    """Rows of (image, its saliency maps) for the clean and adversarial version of each image."""
    images, titles = [], []
    cols: dict[str, list[np.ndarray]] = {"gradient": [], "guided backprop": [], "Hendrycks": [], "FIS": []}
    names = {"gradient": "gradient", "guided backprop": "guided", "Hendrycks": "hendrycks", "FIS": "fis"}
    for i in range(len(x)):
        for tag, img, title in (("clean", x[i], titles_clean[i]), ("adv", xa[i], titles_adv[i])):
            images.append(img)
            titles.append(title)
            for col, key in names.items():
                cols[col].append(maps[f"{key}/{tag}"][i])
    return images, cols, titles
