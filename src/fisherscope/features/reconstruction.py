"""Reconstruction error of a classifier-autoencoder (Hendrycks & Gimpel 2017, §3.4).

The model must expose ``reconstruct(x)`` returning a tensor shaped like ``x`` (the
registry's ``hg_mlp`` does: its decoder is fed the second hidden layer and the logits).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from .._batching import chunks
from .._validation import POSITIVE_INT, check_inputs, check_params, eval_mode, one_of

__all__ = ["RECONSTRUCTION_KINDS", "reconstruction_error"]

#: ``kind`` values of :func:`reconstruction_error`, and the column order of ``kind="all"``.
RECONSTRUCTION_KINDS = ("signed_mean", "squared")


def reconstruction_error(
    model: nn.Module,
    x: torch.Tensor,
    kind: Literal["signed_mean", "squared", "all"] = "signed_mean",
    *,
    batch_size: int = 512,
) -> np.ndarray:
    """Per-sample reconstruction error of ``model.reconstruct``.

    Parameters
    ----------
    model : nn.Module
        Has ``reconstruct(x) -> Tensor`` shaped like ``x`` (e.g. ``hg_mlp``). Run in eval
        mode (each module's mode is restored), without gradients.
    x : Tensor
        Inputs (N, C, H, W) in [0, 1].
    kind : {"signed_mean", "squared", "all"}
        ``"signed_mean"``: mean over the input's values of ``x − reconstruct(x)``
        (Hendrycks & Gimpel's detection score); ``"squared"``: mean of
        ``(x − reconstruct(x))²``; ``"all"``: both columns, in that order.
    batch_size : int
        Samples per forward pass.

    Returns
    -------
    ndarray
        Shape (N, 1) (or (N, 2) for ``kind="all"``), float64.

    Raises
    ------
    TypeError
        The model has no ``reconstruct`` method.
    ValueError
        Unknown ``kind``, bad ``batch_size``, invalid ``x``, or a reconstruction whose
        shape differs from the input's.

    Shapes
    ------
    x: (N, C, H, W) -> (N, 1) or (N, 2).

    References
    ----------
    .. [1] D. Hendrycks and K. Gimpel, "Early methods for detecting adversarial images",
       ICLR 2017 workshop; arXiv:1608.00530, section 3.4.

    Examples
    --------
    >>> from fisherscope.models import build_model
    >>> model = build_model("hg_mlp", input_size=8).eval()
    >>> reconstruction_error(model, torch.rand(4, 1, 8, 8), kind="all").shape
    (4, 2)
    """
    check_params("reconstruction_error", {"kind": kind, "batch_size": batch_size},
                 {"kind": one_of(*RECONSTRUCTION_KINDS, "all"), "batch_size": POSITIVE_INT})
    reconstruct = getattr(model, "reconstruct", None)
    if not isinstance(model, nn.Module) or not callable(reconstruct):
        raise TypeError(
            f"{type(model).__name__} has no reconstruct(x) method; reconstruction_error needs a "
            "classifier-autoencoder such as MODELS['hg_mlp'] (train_model('hg_mlp', 'mnist'))."
        )
    check_inputs(x)
    parts = []
    with eval_mode(model), torch.no_grad():
        for sl in chunks(x.shape[0], batch_size):
            xb = x[sl]
            rec = reconstruct(xb)
            if not isinstance(rec, torch.Tensor) or rec.shape != xb.shape:
                got = tuple(rec.shape) if isinstance(rec, torch.Tensor) else type(rec).__name__
                raise ValueError(
                    f"{type(model).__name__}.reconstruct returned {got} for inputs of shape "
                    f"{tuple(xb.shape)}; it must return a tensor shaped like its input."
                )
            diff = (xb.double() - rec.double()).flatten(1)
            parts.append(torch.stack([diff.mean(1), diff.square().mean(1)], dim=1))
    both = torch.cat(parts).cpu().numpy()
    if kind == "all":
        return both
    return both[:, [RECONSTRUCTION_KINDS.index(kind)]].copy()
