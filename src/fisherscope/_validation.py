"""Input validation shared by every public entry point (the README's "Model contract").

Every message says what was expected, what arrived and how to fix it. Checks are
always on: each is one reduction over the tensor, cheap next to a forward pass.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from .exceptions import ModelModeWarning

__all__ = ["check_inputs", "check_labels", "check_logits", "eval_mode", "DEFAULT_BOUNDS"]

DEFAULT_BOUNDS: tuple[float, float] = (0.0, 1.0)
_BOUNDS_TOL = 1e-6


def _sample_list(mask: torch.Tensor, limit: int = 8) -> str:
    idx = torch.nonzero(mask, as_tuple=False).flatten().tolist()
    shown = ", ".join(str(i) for i in idx[:limit])
    return f"[{shown}{', ...' if len(idx) > limit else ''}]"


def check_inputs(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    bounds: tuple[float, float] | None = DEFAULT_BOUNDS,
    name: str = "x",
    image: bool = False,
) -> torch.Tensor:
    """Validate a batch of inputs; returns ``x`` unchanged.

    Parameters
    ----------
    x : Tensor
        Shape (N, C, H, W) or (N, D) (only (N, C, H, W) when ``image=True``).
    y : Tensor, optional
        Labels; if given, its length must match the batch size of ``x``.
    bounds : (float, float) or None
        Admissible value range (tolerance 1e-6); ``None`` skips the range check.

    Raises
    ------
    TypeError
        ``x`` is not a floating-point tensor.
    ValueError
        Wrong number of dimensions, empty batch, non-finite values, values outside
        ``bounds``, or a batch-size mismatch with ``y``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (N, C, H, W); got {type(x).__name__}. "
            f"Convert with torch.as_tensor({name}, dtype=torch.float32)."
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor with values in "
            f"{list(bounds) if bounds else 'the model range'}; got {x.dtype}. "
            f"Convert images with {name}.float() / 255."
        )
    allowed = (4,) if image else (2, 4)
    if x.ndim not in allowed:
        expected = "(N, C, H, W)" if image else "(N, C, H, W) or (N, D)"
        hint = (
            f" Add a batch dimension with {name}.unsqueeze(0)."
            if x.ndim in (1, 3)
            else ""
        )
        raise ValueError(
            f"{name} must have shape {expected}; got shape {tuple(x.shape)}.{hint}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); pass at least one sample.")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = ~finite.reshape(x.shape[0], -1).all(dim=1)
        n_bad = int((~finite).sum())
        raise ValueError(
            f"{name} contains {n_bad} non-finite values (NaN or inf) in samples "
            f"{_sample_list(bad)}; remove or repair those samples before calling."
        )
    if bounds is not None:
        lo, hi = float(bounds[0]), float(bounds[1])
        xmin, xmax = float(x.min()), float(x.max())
        if xmin < lo - _BOUNDS_TOL or xmax > hi + _BOUNDS_TOL:
            raise ValueError(
                f"{name} has values in [{xmin:.4g}, {xmax:.4g}], outside bounds ({lo}, {hi}). "
                "If your model expects normalized inputs, put the normalization inside the "
                f"model and pass raw images in [{lo}, {hi}]."
            )
    if y is not None:
        n_y = y.shape[0] if isinstance(y, torch.Tensor) and y.ndim > 0 else None
        if n_y is not None and n_y != x.shape[0]:
            raise ValueError(
                f"{name} has {x.shape[0]} samples but y has {n_y}; pass one label per sample."
            )
    return x


def check_labels(
    y: torch.Tensor, n: int | None = None, num_classes: int | None = None, *, name: str = "y"
) -> torch.Tensor:
    """Validate integer class labels of shape (N,); returns ``y`` unchanged.

    Raises
    ------
    TypeError
        ``y`` is not an int64 tensor.
    ValueError
        Wrong shape (one-hot labels get a hint), wrong length, or labels out of range.
    """
    expected = f"an int64 tensor of shape (N,){f' = ({n},)' if n is not None else ''}"
    if num_classes is not None:
        expected += f" with values in [0, {num_classes})"
    if not isinstance(y, torch.Tensor):
        raise TypeError(
            f"{name} must be {expected}; got {type(y).__name__}. "
            f"Convert with torch.as_tensor({name}, dtype=torch.int64)."
        )
    if y.ndim == 2 and (num_classes is None or y.shape[1] == num_classes) and y.shape[1] > 1:
        raise ValueError(
            f"{name} must be {expected}; got shape {tuple(y.shape)}, which looks one-hot. "
            f"Use {name}.argmax(1)."
        )
    if y.ndim != 1:
        raise ValueError(f"{name} must be {expected}; got shape {tuple(y.shape)}.")
    if y.dtype != torch.int64:
        raise TypeError(
            f"{name} must be {expected}; got dtype {y.dtype}. Convert with {name}.long()."
        )
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} must be {expected}; got {y.shape[0]} labels for {n} samples.")
    if num_classes is not None and y.numel() > 0:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name} must be {expected}; got values in [{lo}, {hi}]. "
                "Check that the labels belong to this model's classes."
            )
    return y


def check_logits(logits: torch.Tensor, *, name: str = "model output") -> torch.Tensor:
    """Validate model outputs: 2-D (N, K) finite logits that are not probabilities.

    Probabilities are detected as rows that are all in [0, 1] and sum to 1 within
    1e-4 for the whole batch (implausible for logits).

    Raises
    ------
    ValueError
        Not 2-D, fewer than two classes, non-finite values, or probabilities.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"{name} must be a tensor of logits with shape (N, K); got {type(logits).__name__}. "
            "Models must return a single tensor, not a tuple or dict."
        )
    if logits.ndim != 2:
        raise ValueError(
            f"{name} must be logits of shape (N, K); got shape {tuple(logits.shape)}. "
            "Flatten or squeeze the model's output to (N, K)."
        )
    if logits.shape[1] < 2:
        raise ValueError(
            f"{name} must have at least two classes (shape (N, K) with K >= 2); got "
            f"shape {tuple(logits.shape)}. For a binary model with one output z, return "
            "torch.cat([-z, z], 1) / 2 or torch.cat([zeros, z], 1)."
        )
    finite = torch.isfinite(logits)
    if not bool(finite.all()):
        bad = ~finite.all(dim=1)
        raise ValueError(
            f"{name} has non-finite logits for {int(bad.sum())} samples "
            f"{_sample_list(bad)}; check the inputs and the model."
        )
    with torch.no_grad():
        in_unit = bool(((logits >= 0) & (logits <= 1)).all())
        sums_to_one = bool(((logits.sum(dim=1) - 1).abs() <= 1e-4).all())
    if in_unit and sums_to_one:
        raise ValueError(
            f"{name} looks like probabilities (every row is in [0, 1] and sums to 1), but "
            "logits are expected. Remove the final softmax from the model, or wrap it with "
            "fisherscope.models.as_logits(model, output='probs')."
        )
    return logits


@contextlib.contextmanager
def eval_mode(model: nn.Module, *, warn: bool = True) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode and restore every module's own mode afterwards.

    Warns with :class:`ModelModeWarning` when any module was in training mode on entry
    (BatchNorm statistics and dropout change the result). The per-module state, not
    just the top-level flag, is restored, even if the body raises.
    """
    modes = [(m, m.training) for m in model.modules()]
    if warn and any(training for _, training in modes):
        warnings.warn(
            "model was in training mode; it is run in eval mode (BatchNorm running "
            "statistics, dropout off) and its previous mode is restored afterwards. "
            "Call model.eval() to silence this warning.",
            ModelModeWarning,
            stacklevel=3,
        )
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
