"""Figures shared by reports and users.

Images are always drawn exactly as the model sees them: a fixed colour range equal to
the input bounds, no per-image rescaling or clipping (Hendrycks & Gimpel §2) — a
perturbation that changes pixels shows up as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["image_grid", "confusion_matrix_figure", "to_display"]


def to_display(img: torch.Tensor | np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) image -> an array for ``imshow`` and a colour map, values untouched."""
    a = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if a.ndim == 3 and a.shape[0] == 1:
        return a[0], "gray"
    if a.ndim == 3 and a.shape[0] == 3:
        return np.transpose(a, (1, 2, 0)), None
    if a.ndim == 2:
        return a, "gray"
    raise ValueError(f"expected an image of shape (C, H, W) with C in (1, 3); got {a.shape}.")


def image_grid(
    images: torch.Tensor | np.ndarray,
    titles: Sequence[str] | None = None,
    *,
    ncols: int = 8,
    bounds: tuple[float, float] = (0.0, 1.0),
    title_colors: Sequence[str] | None = None,
    suptitle: str | None = None,
    cell_size: float = 1.3,
) -> Any:
    """A grid of images drawn on the fixed range ``bounds`` (no rescaling).

    Values outside ``bounds`` raise instead of being clipped for display: a figure must
    not hide what the model saw.

    Shapes
    ------
    images: (N, C, H, W) with C in {1, 3}.
    """
    import matplotlib.pyplot as plt

    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W); got {arr.shape}.")
    lo, hi = bounds
    if arr.size and (arr.min() < lo - 1e-6 or arr.max() > hi + 1e-6):
        raise ValueError(
            f"images have values in [{arr.min():.4g}, {arr.max():.4g}], outside {bounds}; "
            "they would be clipped for display and hide the perturbation. Render the images "
            "the model actually received."
        )
    n = arr.shape[0]
    ncols = max(1, min(ncols, n))
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell_size * ncols, cell_size * nrows + 0.3), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        img, cmap = to_display(arr[i])
        ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        if titles is not None:
            color = title_colors[i] if title_colors is not None else "black"
            ax.set_title(titles[i], fontsize=8, color=color)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def confusion_matrix_figure(cm: np.ndarray, classes: Sequence[str], *, title: str = "") -> Any:
    """Confusion matrix (rows: true class, columns: predicted) with counts."""
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    k = cm.shape[0]
    fig, ax = plt.subplots(figsize=(0.45 * k + 1.8, 0.45 * k + 1.4))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), classes, fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    thresh = cm.max() / 2 if cm.size else 0
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > thresh else "black")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig
