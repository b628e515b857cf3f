"""Fisher-information features: input-space eigenvalues (Zhao) and parameter-space scores (Martin & Elster).

Both are thin, batched wrappers around :mod:`fisherscope.fisher` that return float64
numpy arrays of shape (n_samples, n_features), the input of
:class:`~fisherscope.detectors.FisherSpectrumDetector` and
:class:`~fisherscope.detectors.FisherScoreDetector`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._batching import check_batch_size, chunks
from .._progress import track
from .._validation import POSITIVE_INT, check_inputs, check_logits, check_param, eval_mode
from ..fisher import fisher_spectrum, param_fisher_form, param_fisher_trace
from ._common import check_model, to_numpy

__all__ = ["PARAM_FISHER_SCORES", "fisher_eigenvalues", "param_fisher_scores"]

#: The scores :func:`param_fisher_scores` knows, in its default column order.
PARAM_FISHER_SCORES: tuple[str, ...] = ("trace", "form", "normalized")

_SPECTRUM_KWARGS = ("method", "class_samples", "tol", "max_iter", "generator")


def fisher_eigenvalues(
    model: nn.Module,
    x: torch.Tensor,
    k: int = 20,
    *,
    batch_size: int = 256,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    **spectrum_kwargs: Any,
) -> np.ndarray:
    """Top-k eigenvalues of the input-space Fisher matrix G_x per sample (Zhao et al. §4).

    The eigenvalues come from :func:`fisherscope.fisher.fisher_spectrum` (``method="exact"``
    by default: all K − 1 non-zero eigenvalues, no iteration), descending. G_x has rank at
    most K − 1 for K classes, so for ``k > K − 1`` the columns past K − 1 are exact zeros:
    with 10 classes, Zhao's "top 20 eigenvalues" hold at most 9 informative values. A
    ``UserWarning`` says so once per call (not once per batch chunk).

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K); run in eval mode (every module's mode is restored).
    x : Tensor
        Inputs (N, C, H, W) or (N, D) within ``bounds``; never modified.
    k : int
        Number of eigenvalues (columns); Zhao et al. use 20.
    batch_size : int
        Samples per call of ``fisher_spectrum``. Memory inside a call is bounded by the
        byte budgets of :mod:`fisherscope.fisher.input_space`, whatever ``batch_size`` is:
        the exact method chunks samples under ``EXACT_JACOBIAN_BYTES`` (its K − 1 Jacobian
        rows per sample; a sample over the budget, e.g. K = 1000 at 224 × 224, is refused
        with a message pointing at ``method="lanczos"``), the iterative methods under
        ``KRYLOV_CHUNK_BYTES`` (Krylov basis and graph per sample, nothing × K).
    bounds : (float, float) or None
        Admissible input range (``None`` skips the check).
    **spectrum_kwargs
        ``method``, ``class_samples``, ``tol``, ``max_iter``, ``generator`` of
        :func:`~fisherscope.fisher.fisher_spectrum` (e.g. ``method="lanczos"`` for
        ImageNet-size heads). A generator is consumed chunk after chunk, so results with
        random starts depend on ``batch_size``.

    Returns
    -------
    ndarray
        (N, k) float64, each row descending and ≥ 0. The values are those of
        ``fisher_spectrum`` (computed in float64, returned by it in ``x.dtype``).

    Shapes
    ------
    x: (N, *S) -> (N, k).

    References
    ----------
    Zhao, C. et al. "The Adversarial Attack and Detection under the Fisher Information
    Metric." AAAI 2019, §4 (top-20 eigenvalues as detector features).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     fisher_eigenvalues(net, torch.rand(5, 4), k=4).shape
    (5, 4)
    """
    check_model(model)
    check_inputs(x, bounds=bounds)
    check_batch_size(batch_size, "fisher_eigenvalues")
    check_param("fisher_eigenvalues", "k", k, POSITIVE_INT.but(expected="an integer >= 1 (the number of eigenvalues)"))
    unknown = sorted(set(spectrum_kwargs) - set(_SPECTRUM_KWARGS))
    if unknown:
        raise TypeError(
            f"fisher_eigenvalues got unexpected keyword(s) {unknown}; fisher_spectrum options are "
            f"{list(_SPECTRUM_KWARGS)} (k, bounds and batch_size are arguments of their own)."
        )
    with eval_mode(model):  # warns once; the inner calls then see an eval-mode model
        with torch.no_grad():
            num_classes = check_logits(model(x[:1].detach())).shape[1]
        r = min(k, num_classes - 1)
        parts = [
            fisher_spectrum(model, x[sl], r, bounds=bounds, **spectrum_kwargs).eigenvalues
            for sl in track(list(chunks(x.shape[0], batch_size)), "features fisher_eigenvalues")
        ]
    values = to_numpy(torch.cat(parts))
    if k > r:
        warnings.warn(
            f"G_x has rank at most K - 1 = {num_classes - 1} for K = {num_classes} classes; "
            f"columns {r}..{k - 1} of the {k} eigenvalues are exact zeros.",
            UserWarning,
            stacklevel=2,
        )
        values = np.concatenate([values, np.zeros((values.shape[0], k - r))], axis=1)
    return values


def _check_scores(scores: Any) -> tuple[str, ...]:
    if isinstance(scores, str):
        scores = (scores,)
    if not isinstance(scores, Sequence) or len(scores) == 0:
        raise ValueError(
            f"scores must be a non-empty sequence of names from {list(PARAM_FISHER_SCORES)}; "
            f"got {scores!r}."
        )
    names = tuple(scores)
    bad = [s for s in names if s not in PARAM_FISHER_SCORES]
    if bad:
        raise ValueError(
            f"unknown score name(s) {bad}; choose from {list(PARAM_FISHER_SCORES)}."
        )
    if len(set(names)) != len(names):
        raise ValueError(f"scores lists a name twice: {list(names)}.")
    return names


def param_fisher_scores(
    model: nn.Module,
    x: torch.Tensor,
    scores: Sequence[str] = PARAM_FISHER_SCORES,
    *,
    reduction: str = "full",
    method: str = "jvp",
    fd_eps: float = 1e-4,
    scale: float = 1.0,
    batch_size: int | None = None,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> np.ndarray:
    """Martin & Elster's parameter-space Fisher scores per sample, one column per score.

    - ``"trace"``: tr F_θ(x) = Σ_c p_c ‖∇θ log p_c‖² (eq. 4), from
      :func:`~fisherscope.fisher.param_fisher_trace`;
    - ``"form"``: vᵀ F_θ(x) v with v = λ ∇θ log p(ŷ|x) (eqs. 5, 6), from
      :func:`~fisherscope.fisher.param_fisher_form`;
    - ``"normalized"``: the same form along v / ‖v‖ (eq. 8).

    All three are exact by default (forward-mode directional derivatives, no finite
    difference) and non-negative; Martin & Elster find them larger on adversarial inputs
    (their Fig. 1).

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K); run in eval mode (every module's mode is restored).
    x : Tensor
        Inputs (N, C, H, W) or (N, D) within ``bounds``; never modified.
    scores : sequence of {"trace", "form", "normalized"}
        Which scores, in which column order (a single name gives one column).
    reduction : {"full", "two_class"}
        Sum over all K classes or the two-class reduction {ŷ, not ŷ} (eq. 7), for all
        scores.
    method : {"jvp", "finite_difference"}
        How the forms are computed (the trace is always exact); ``fd_eps`` is ε′ of the
        paper's finite difference (eq. 9).
    scale : float
        λ of the unnormalised direction (``"form"`` only).
    batch_size : int, optional
        Samples per vmapped chunk (``chunk_size`` of the underlying functions; default:
        as many as fit their memory budget, ``FACTORED_CHUNK_BYTES`` of
        :mod:`fisherscope.fisher.parameter_space`). The K − 1 cotangent rows of the full
        trace are vmapped in passes under ``fisherscope.fisher._factored.VMAP_ROWS_BYTES``
        or looped one at a time, so memory does not grow with K; time does: the full
        trace costs K − 1 backward passes per sample (999 for an ImageNet head, about
        70 min per sample for ResNet-50 at 224 × 224 on one CPU thread, see
        docs/BENCHMARKS.md), the two-class reduction and the forms one each.
    bounds : (float, float) or None
        Admissible input range (``None`` skips the check).

    Returns
    -------
    ndarray
        (N, len(scores)) float64. A normalised form is NaN (with a warning from
        ``param_fisher_form``) where ∇θ log p(ŷ|x) vanishes.

    Shapes
    ------
    x: (N, *S) -> (N, len(scores)).

    References
    ----------
    Martin, J., Elster, C. "Inspecting adversarial examples using the Fisher information."
    Neurocomputing 382 (2020), eqs. 3–9, Fig. 1.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    >>> param_fisher_scores(net, torch.rand(2, 4)).shape
    (2, 3)
    """
    names = _check_scores(scores)
    check_model(model)
    check_inputs(x, bounds=bounds)
    check_batch_size(batch_size, "param_fisher_scores", allow_none=True)
    columns = []
    with eval_mode(model):  # warns once; the inner calls then see an eval-mode model
        for name in names:
            if name == "trace":
                col = param_fisher_trace(
                    model, x, reduction, chunk_size=batch_size, bounds=bounds  # type: ignore[arg-type]
                )
            else:
                col = param_fisher_form(
                    model, x, normalized=name == "normalized", method=method,  # type: ignore[arg-type]
                    fd_eps=fd_eps, reduction=reduction, scale=scale,  # type: ignore[arg-type]
                    chunk_size=batch_size, bounds=bounds,
                )
            columns.append(to_numpy(col))
    return np.stack(columns, axis=1)
