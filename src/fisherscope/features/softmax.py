"""Softmax statistics (Hendrycks & Gimpel 2017, §3.3): max probability, KL to uniform, entropy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._batching import check_batch_size, chunks
from .._validation import check_inputs, check_logits, eval_mode
from ._common import check_model, to_numpy

__all__ = ["SOFTMAX_STATS", "softmax_stats", "softmax_stats_from_logits"]

#: The statistics :func:`softmax_stats` knows, in its default column order.
SOFTMAX_STATS: tuple[str, ...] = ("max_prob", "kl_uniform", "entropy")


def _check_stats(stats: Any) -> tuple[str, ...]:
    if isinstance(stats, str):
        stats = (stats,)
    if not isinstance(stats, Sequence) or len(stats) == 0:
        raise ValueError(
            f"stats must be a non-empty sequence of names from {list(SOFTMAX_STATS)}; got {stats!r}."
        )
    names = tuple(stats)
    bad = [s for s in names if s not in SOFTMAX_STATS]
    if bad:
        raise ValueError(f"unknown statistic(s) {bad}; choose from {list(SOFTMAX_STATS)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"stats lists a name twice: {list(names)}.")
    return names


def softmax_stats_from_logits(
    logits: torch.Tensor, stats: Sequence[str] = SOFTMAX_STATS
) -> np.ndarray:
    """The statistics of :func:`softmax_stats` from logits (N, K) already computed.

    In float64 and log space, never taking the log of a probability that rounded to 0:
    with u_k = z_k − max_j z_j (≤ 0, exactly 0 at the arg max m) and s = Σ_{k≠m} e^{u_k},
    the log-partition is log1p(s) and

    - max probability: p_m = 1 / (1 + s);
    - entropy: H(p) = −Σ_k p_k log p_k = log1p(s) − Σ_k p_k u_k;
    - KL(p ‖ uniform) = Σ_k p_k (log p_k + log K) = log K − H(p), in nats,

    with log p_k = u_k − log1p(s). Writing H through log1p(s) keeps it to full relative
    precision for confident rows (logits (0, −200): H ≈ 2.8e-85, where
    −Σ p log p of ``log_softmax`` loses the p_m log p_m term).

    Shapes
    ------
    logits: (N, K) -> (N, len(stats)).

    Examples
    --------
    >>> import torch
    >>> softmax_stats_from_logits(torch.zeros(1, 4)).round(6).tolist()
    [[0.25, 0.0, 1.386294]]
    """
    names = _check_stats(stats)
    check_logits(logits, name="logits")
    z = logits.detach().to(torch.float64)
    top = z.argmax(1, keepdim=True)
    u = z - z.gather(1, top)  # ≤ 0, exactly 0 at the arg max
    log1p_s = torch.log1p(u.exp().scatter(1, top, 0.0).sum(1))  # log Σ_k e^{u_k}
    log_p = u - log1p_s[:, None]
    p = log_p.exp()
    k = logits.shape[1]
    cols = {
        "max_prob": torch.exp(-log1p_s),
        "kl_uniform": (p * (log_p + math.log(k))).sum(1),
        "entropy": log1p_s - (p * u).sum(1),
    }
    return np.stack([to_numpy(cols[s]) for s in names], axis=1)


def softmax_stats(
    model: nn.Module,
    x: torch.Tensor,
    stats: Sequence[str] = SOFTMAX_STATS,
    *,
    batch_size: int = 512,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> np.ndarray:
    """Softmax statistics per sample: max probability, KL(p ‖ uniform), entropy.

    Clean inputs tend to have a larger maximum probability and a larger KL divergence from
    the uniform distribution (a smaller entropy) than adversarial examples stopped near
    50% confidence (Hendrycks & Gimpel §3.3), which
    :class:`~fisherscope.detectors.SoftmaxDetector` turns into a score.

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K); run in eval mode (every module's mode is restored),
        without gradients.
    x : Tensor
        Inputs (N, C, H, W) or (N, D) within ``bounds``; never modified.
    stats : sequence of {"max_prob", "kl_uniform", "entropy"}
        Which statistics, in which column order (a single name gives one column).
    batch_size : int
        Samples per forward pass.
    bounds : (float, float) or None
        Admissible input range (``None`` skips the check).

    Returns
    -------
    ndarray
        (N, len(stats)) float64, computed from ``log_softmax`` in float64 (see
        :func:`softmax_stats_from_logits`); KL = log K − H in nats.

    Shapes
    ------
    x: (N, *S) -> (N, len(stats)).

    References
    ----------
    Hendrycks, D., Gimpel, K. "Early Methods for Detecting Adversarial Images." ICLR
    Workshop 2017 (arXiv:1608.00530), §3.3.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    >>> softmax_stats(net, torch.rand(5, 4)).shape
    (5, 3)
    """
    names = _check_stats(stats)
    check_model(model)
    check_inputs(x, bounds=bounds)
    check_batch_size(batch_size, "softmax_stats")
    with eval_mode(model), torch.no_grad():
        parts = [softmax_stats_from_logits(model(x[sl]), names)
                 for sl in chunks(x.shape[0], batch_size)]
    return np.concatenate(parts)
