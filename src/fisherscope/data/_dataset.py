"""The in-memory image dataset every loader returns."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["ImageDataset", "resolve_data_dir", "DATA_ENV_VAR"]

DATA_ENV_VAR = "FISHERSCOPE_DATA"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where datasets live: the argument, then ``$FISHERSCOPE_DATA``, then
    ``~/.cache/fisherscope/data``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fisherscope" / "data"


@dataclass(frozen=True, eq=False)
class ImageDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """One split of an image classification dataset, held in memory.

    Attributes
    ----------
    name, split : str
        Dataset name (``"digits"``, ``"mnist"``, ...) and ``"train"`` or ``"test"``.
    x : Tensor
        float32 images in [0, 1], shape (N, C, H, W).
    y : Tensor
        int64 labels, shape (N,).
    classes : tuple of str
        Class names; ``len(classes)`` is the number of classes K.
    source : str
        Where the data came from (file path, package, URLs).
    checksum : str
        sha256 identifying the dataset's content (both splits); the model cache keys on it.
    meta : dict
        Anything else the loader knows (file sha256, provenance, split seed, ...).

    Shapes
    ------
    ``x``: (N, C, H, W); ``y``: (N,). Indexing returns ``(x[i], y[i])``.
    """

    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]
    source: str
    checksum: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.x.shape[2]), int(self.x.shape[3])

    def subset(self, indices: torch.Tensor | slice | list[int]) -> ImageDataset:
        """A new dataset holding the selected samples (same metadata)."""
        return ImageDataset(
            name=self.name,
            split=self.split,
            x=self.x[indices],
            y=self.y[indices],
            classes=self.classes,
            source=self.source,
            checksum=self.checksum,
            meta=dict(self.meta, subset=True),
        )

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"shape={tuple(self.x.shape[1:])}, classes={self.num_classes})"
        )
