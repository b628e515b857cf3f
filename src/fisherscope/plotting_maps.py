"""Figures for per-pixel maps: FIS overlays (Martin & Elster Fig. 2), saliency grids, ROC.

Images are drawn exactly as the model saw them: grey values on the fixed range ``bounds``,
never rescaled or clipped for display (Hendrycks & Gimpel §2); values outside ``bounds``
raise instead of being hidden. Maps are drawn over their image with transparency, with
an explicit colour scale that is either shared by the adversarial and the clean map of a
row (Fig. 2a: magnitudes comparable) or separate (Fig. 2b: each map's own pattern).

References
----------
Martin, J., Elster, C. "Inspecting adversarial examples using the Fisher information."
Neurocomputing 382 (2020); arXiv:1909.05527, Fig. 2.
Hendrycks, D., Gimpel, K. arXiv:1608.00530 (2017), §2 and Fig. 5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .plotting import to_display

__all__ = ["fis_figure", "map_overlay", "roc_figure", "saliency_figure", "score_histogram", "show_image"]

ArrayLike = torch.Tensor | np.ndarray


def _np(a: ArrayLike) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _check_range(img: np.ndarray, bounds: tuple[float, float], what: str) -> None:
    lo, hi = bounds
    if img.size and (img.min() < lo - 1e-6 or img.max() > hi + 1e-6):
        raise ValueError(
            f"{what} has values in [{img.min():.4g}, {img.max():.4g}], outside {bounds}; it would be "
            "clipped for display and hide the perturbation. Render the image the model actually received."
        )


def _map2d(m: ArrayLike) -> np.ndarray:
    """(C, H, W) or (H, W) map -> (H, W): channels summed (|·| is taken by the caller)."""
    a = _np(m)
    if a.ndim == 3:
        return a.sum(0)
    if a.ndim == 2:
        return a
    raise ValueError(f"expected a map of shape (C, H, W) or (H, W); got {a.shape}.")


def show_image(ax: Any, image: ArrayLike, *, bounds: tuple[float, float] = (0.0, 1.0), title: str | None = None,
               title_color: str = "black") -> None:
    """Draw ``image`` (C, H, W) on the fixed range ``bounds`` (grey for one channel)."""
    img = _np(image)
    _check_range(img, bounds, "image")
    arr, cmap = to_display(img)
    ax.imshow(arr, cmap=cmap, vmin=bounds[0], vmax=bounds[1], interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8, color=title_color)


def map_overlay(
    ax: Any,
    image: ArrayLike,
    value_map: ArrayLike,
    *,
    vmax: float | None = None,
    absolute: bool = True,
    cmap: str = "jet",
    alpha: float = 0.55,
    bounds: tuple[float, float] = (0.0, 1.0),
    title: str | None = None,
) -> Any:
    """Draw ``value_map`` transparently over its ``image`` (Martin & Elster Fig. 2 style).

    Parameters
    ----------
    ax : matplotlib Axes
    image : (C, H, W)
        Drawn in grey on the fixed range ``bounds`` (never rescaled).
    value_map : (C, H, W) or (H, W)
        Channels are summed after taking |·| (``absolute=True``, as the paper plots |FIS|)
        or as they are (then the colour scale is symmetric, [−vmax, vmax]).
    vmax : float, optional
        Top of the colour scale; default the map's own maximum (a separate scale). Pass
        the same value for several maps to share a scale.
    cmap, alpha : str, float
        Colour map of the overlay and its opacity.

    Returns
    -------
    The ``AxesImage`` of the overlay (for a colour bar).
    """
    img = _np(image)
    m = _np(value_map)
    m = _map2d(np.abs(m) if absolute else m)
    show_image(ax, img, bounds=bounds, title=title)
    top = float(np.abs(m).max()) if vmax is None else float(vmax)
    top = top if top > 0 else 1.0
    lo = 0.0 if absolute else -top
    return ax.imshow(m, cmap=cmap, vmin=lo, vmax=top, alpha=alpha, interpolation="nearest")


def fis_figure(
    x_adv: ArrayLike,
    fis_adv: ArrayLike,
    x: ArrayLike,
    fis_clean: ArrayLike,
    *,
    shared_scale: bool,
    row_titles: Sequence[str] | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    cell_size: float = 1.6,
    suptitle: str | None = None,
) -> Any:
    """Martin & Elster's Fig. 2 grid, one row per image.

    Columns: the adversarial image; |FIS| of the adversarial image over it; |FIS| of the
    clean image over the clean image; the difference x_adv − x (symmetric diverging scale
    ±max|x_adv − x|, its range printed). ``shared_scale=True`` draws both FIS maps of a row
    on the adversarial map's scale (Fig. 2a); ``False`` gives each its own (Fig. 2b).

    Shapes
    ------
    x_adv, fis_adv, x, fis_clean: (N, C, H, W).
    """
    import matplotlib.pyplot as plt

    xa, fa, xc, fc = (_np(t) for t in (x_adv, fis_adv, x, fis_clean))
    n = xa.shape[0]
    fig, axes = plt.subplots(n, 4, figsize=(4 * cell_size + 1.2, n * cell_size + 0.5), squeeze=False)
    for i in range(n):
        ma, mc = _map2d(np.abs(fa[i])), _map2d(np.abs(fc[i]))
        top_a = float(ma.max())
        top_c = top_a if shared_scale else float(mc.max())
        show_image(axes[i, 0], xa[i], bounds=bounds, title=row_titles[i] if row_titles else None)
        im_a = map_overlay(axes[i, 1], xa[i], fa[i], vmax=top_a, bounds=bounds)
        im_c = map_overlay(axes[i, 2], xc[i], fc[i], vmax=top_c, bounds=bounds)
        for ax, im in ((axes[i, 1], im_a), (axes[i, 2], im_c)):
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            cb.ax.tick_params(labelsize=6)
            cb.formatter.set_powerlimits((-2, 2))  # type: ignore[attr-defined]  # a ScalarFormatter
            cb.ax.yaxis.get_offset_text().set_fontsize(6)
        diff = _map2d(xa[i] - xc[i])
        dm = float(np.abs(diff).max()) or 1.0
        im_d = axes[i, 3].imshow(diff, cmap="RdBu_r", vmin=-dm, vmax=dm, interpolation="nearest")
        axes[i, 3].set_axis_off()
        cb = fig.colorbar(im_d, ax=axes[i, 3], fraction=0.046, pad=0.03)
        cb.ax.tick_params(labelsize=6)
        if i == 0:
            axes[i, 0].set_title((row_titles[0] + "\n" if row_titles else "") + "adversarial", fontsize=8)
            axes[i, 1].set_title("|FIS| adversarial", fontsize=8)
            axes[i, 2].set_title("|FIS| clean" + (" (same scale)" if shared_scale else " (own scale)"), fontsize=8)
            axes[i, 3].set_title("x_adv − x", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def saliency_figure(
    images: Sequence[ArrayLike],
    maps: Mapping[str, Sequence[ArrayLike]],
    *,
    row_titles: Sequence[str] | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    cell_size: float = 1.4,
    suptitle: str | None = None,
) -> Any:
    """Rows of an image followed by signed maps (red +, blue −, each on its own symmetric scale).

    Parameters
    ----------
    images : sequence of (C, H, W)
        Drawn on the fixed range ``bounds``.
    maps : {column title: sequence of (C, H, W) maps, one per image}
    """
    import matplotlib.pyplot as plt

    n = len(images)
    cols = ["image", *maps]
    fig, axes = plt.subplots(n, len(cols), figsize=(len(cols) * cell_size, n * cell_size + 0.4), squeeze=False)
    for i in range(n):
        show_image(axes[i, 0], images[i], bounds=bounds, title=row_titles[i] if row_titles else None)
        for j, name in enumerate(maps, start=1):
            m = _map2d(_np(maps[name][i]))
            top = float(np.abs(m).max()) or 1.0
            axes[i, j].imshow(m, cmap="RdBu_r", vmin=-top, vmax=top, interpolation="nearest")
            axes[i, j].set_axis_off()
            if i == 0:
                axes[i, j].set_title(name, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def roc_figure(curves: Mapping[str, tuple[ArrayLike, ArrayLike, float]], *, title: str = "",
               styles: Mapping[str, str] | None = None) -> Any:
    """ROC curves ``{label: (fpr, tpr, auc)}`` with the chance diagonal."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for label, (fpr, tpr, auc) in curves.items():
        ax.plot(_np(fpr), _np(tpr), (styles or {}).get(label, "-"), label=f"{label} (AUC {auc:.3f})", lw=1.4)
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def score_histogram(clean: ArrayLike, adversarial: ArrayLike, *, xlabel: str, title: str = "",
                    bins: int = 40, log: bool = True) -> Any:
    """Histogram of a detection score on clean (green) and adversarial (red) inputs.

    With ``log=True`` the bins are on log10 of the score (non-positive values are
    counted in the caption's title, not plotted).
    """
    import matplotlib.pyplot as plt

    c, a = _np(clean).astype(float), _np(adversarial).astype(float)
    dropped = 0
    if log:
        dropped = int((c <= 0).sum() + (a <= 0).sum())
        c, a = np.log10(c[c > 0]), np.log10(a[a > 0])
    lo, hi = float(min(c.min(), a.min())), float(max(c.max(), a.max()))
    edges = np.linspace(lo, hi, bins + 1)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.hist(c, bins=list(edges), color="green", alpha=0.55, label=f"clean (n={len(c)})")
    ax.hist(a, bins=list(edges), color="red", alpha=0.55, label=f"adversarial (n={len(a)})")
    ax.set_xlabel(f"log10 {xlabel}" if log else xlabel)
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title or dropped:
        ax.set_title(title + (f" ({dropped} values <= 0 not shown)" if dropped else ""), fontsize=9)
    fig.tight_layout()
    return fig
