"""PCA whitening of images (Hendrycks & Gimpel 2017, §3.2): fit, coefficients, pixels.

The whitened coefficients of an input x are ``(x − mean) U / sqrt(λ + eps)``: U holds the
eigenvectors of the training covariance as columns, by decreasing eigenvalue λ, so the
first coefficient belongs to the top principal component and the last ones to the
directions in which the training images (almost) never vary.

The regulariser ``eps`` is explicit because it decides what the trailing coefficients
mean. MNIST's training covariance has rank about 712 of 784 (some pixels are 0 in every
training image), so λ is zero up to round-off for the last ~72 components, and the
corresponding coefficients are ``(x − mean)·u / sqrt(eps)``: with Hendrycks & Gimpel's
``eps = 1e-11`` (their code adds it to the eigenvalues) any energy an input puts on those
directions is amplified by about 3e5. Their score (the variance of the trailing
coefficients) then scales like 1/eps for such inputs. Inside the null space the
eigenvector basis is arbitrary (any rotation of it is a valid ``eigh`` output), which
changes individual coefficients but not their sum of squares.

All computations are in float64 on the CPU (numpy); inputs may be torch tensors or
numpy arrays of any shape (N, ...), flattened per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._batching import chunks
from .._validation import NON_NEGATIVE, POSITIVE_INT, check_inputs, check_params

__all__ = ["PCAWhitening", "TrailingVarianceScore", "fit_pca_whitening", "pca_coefficients", "pixels"]


def _as_rows(x: Any, name: str = "x") -> np.ndarray:
    """(N, ...) torch tensor or array -> (N, D) float64 array, validated."""
    if isinstance(x, torch.Tensor):
        if x.ndim < 2:
            raise ValueError(
                f"{name} must have a batch dimension, shape (N, C, H, W) or (N, D); got shape "
                f"{tuple(x.shape)}. Add one with {name}.unsqueeze(0)."
            )
        if x.ndim in (2, 4):
            check_inputs(x, bounds=None, name=name)
        elif not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got {x.dtype}.")
        arr = x.detach().cpu().to(torch.float64).reshape(x.shape[0], -1).numpy()
    else:
        arr = np.asarray(x)
        if arr.ndim < 2:
            raise ValueError(
                f"{name} must be 2-D or more, shape (N, D) or (N, C, H, W); got shape "
                f"{arr.shape}. Reshape a single sample with {name}[None]."
            )
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise TypeError(f"{name} must hold real numbers; got dtype {arr.dtype}.")
        arr = arr.reshape(arr.shape[0], -1).astype(np.float64, copy=False)
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {arr.shape}); pass at least one sample.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf; remove or repair those samples.")
    return arr


def pixels(x: Any) -> np.ndarray:
    """Flattened inputs as float64 rows: the feature matrix of the PCA-whitening detector.

    Parameters
    ----------
    x : Tensor or ndarray
        Images (N, C, H, W) or rows (N, D).

    Returns
    -------
    ndarray
        Shape (N, C·H·W), float64.

    Examples
    --------
    >>> pixels(torch.zeros(2, 1, 3, 3)).shape
    (2, 9)
    """
    return _as_rows(x).copy()


@dataclass(frozen=True, eq=False)
class PCAWhitening:
    """A fitted PCA whitening: ``transform(x) = (x − mean) @ components / sqrt(eigenvalues + eps)``.

    Attributes
    ----------
    mean : ndarray, shape (D,)
        Training mean.
    components : ndarray, shape (D, D)
        Eigenvectors of the training covariance as columns, by decreasing eigenvalue.
    eigenvalues : ndarray, shape (D,)
        Eigenvalues of the covariance (``ddof=1``), decreasing, round-off negatives set to 0.
    eps : float
        The regulariser added to every eigenvalue before the square root.
    rank : int
        Numerical rank of the covariance: eigenvalues above ``D · λ_max · 2.2e-16``.
    n_samples : int
        Number of training samples.
    """

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    eps: float
    rank: int
    n_samples: int

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    @property
    def scale(self) -> np.ndarray:
        """``1 / sqrt(eigenvalues + eps)``, shape (D,)."""
        return 1.0 / np.sqrt(self.eigenvalues + self.eps)

    def transform(self, x: Any) -> np.ndarray:
        """Whitened coefficients, shape (N, D), leading principal component first."""
        rows = self._rows(x)
        return ((rows - self.mean) @ self.components) * self.scale

    def trailing_variance_score(self, start: int) -> TrailingVarianceScore:
        """The variance of the trailing coefficients from ``start`` on, as a differentiable torch function.

        The PCA-whitening detector's score (``var(transform(x)[:, start:])``, ddof 0) for
        gradient-based attackers: see :class:`TrailingVarianceScore`.
        """
        return TrailingVarianceScore(self, start)

    def zca(self, x: Any) -> np.ndarray:
        """ZCA-whitened inputs ``U diag(1/sqrt(λ + eps)) Uᵀ (x − mean)``, shape (N, D).

        Hendrycks & Gimpel's Figure 2 shows these, reshaped to images.
        """
        return self.transform(x) @ self.components.T

    def _rows(self, x: Any) -> np.ndarray:
        rows = _as_rows(x)
        if rows.shape[1] != self.n_features:
            raise ValueError(
                f"this whitening was fitted on inputs with {self.n_features} values per sample; "
                f"got {rows.shape[1]} (shape {tuple(np.shape(x))}). Pass inputs of the training "
                "images' size."
            )
        return rows


class TrailingVarianceScore:
    """The PCA-whitening detector's score as a differentiable torch function of the images.

    ``score(x) = var(c[start:])`` with ``c = (x − mean) U / sqrt(λ + eps)`` the whitened
    coefficients of the flattened input (leading component first) and the population
    variance (ddof 0) — the same number as
    :class:`~fisherscope.detectors.PCAWhiteningDetector`'s ``decision_function``,
    computed in float64 from the fitted whitening; gradients flow back to ``x`` in its
    own dtype. Detector-aware attacks take it as their statistic
    (``fisherscope.attacks.detector_aware.ImageScore(score)``).

    Parameters
    ----------
    whitening : PCAWhitening
        From :func:`fit_pca_whitening` (clean training images).
    start : int
        First trailing coefficient (Hendrycks & Gimpel: 700 on MNIST). At least two
        coefficients must remain.

    Shapes
    ------
    x: (N, C, H, W) or (N, D) with C·H·W = D -> (N,) float64.

    Examples
    --------
    >>> w = fit_pca_whitening(torch.rand(200, 6, dtype=torch.float64))
    >>> w.trailing_variance_score(3)(torch.rand(5, 6)).shape
    torch.Size([5])
    """

    def __init__(self, whitening: PCAWhitening, start: int) -> None:
        if not isinstance(whitening, PCAWhitening):
            raise TypeError(
                "whitening must be a PCAWhitening from fisherscope.features.fit_pca_whitening; "
                f"got {type(whitening).__name__}."
            )
        d = whitening.n_features
        if isinstance(start, bool) or not isinstance(start, int | np.integer) or not 0 <= start <= d - 2:
            raise ValueError(
                f"start must be an integer index in [0, {d - 2}] (at least two trailing "
                f"coefficients of {d}); got {start!r}. Hendrycks & Gimpel use 700 on MNIST."
            )
        self.start = int(start)
        self.eps = whitening.eps
        self.n_features = d
        self._mean = torch.as_tensor(whitening.mean, dtype=torch.float64)
        self._window = torch.as_tensor(whitening.components[:, self.start :], dtype=torch.float64)
        self._proj = self._window * torch.as_tensor(whitening.scale[self.start :], dtype=torch.float64)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        if flat.shape[1] != self.n_features:
            raise ValueError(
                f"this score's whitening was fitted on inputs with {self.n_features} values per "
                f"sample; got x of shape {tuple(x.shape)}."
            )
        mean, proj = self._mean.to(x.device), self._proj.to(x.device)
        c = (flat.double() - mean) @ proj
        return c.var(dim=1, unbiased=False)

    def project_off_window(self, v: torch.Tensor) -> torch.Tensor:
        """``v`` minus its component along the window's principal directions (per sample).

        A step along the result leaves every trailing whitened coefficient, hence the
        score, unchanged (before clipping to the box). Pass it as
        ``BarrierHGTargeted(step_transform=...)``. Without it the barrier has to hold
        the window by itself: a change of size d along a null-space direction of the
        training covariance raises the score by about d² / (n_window · eps), so with
        eps = 1e-11 any fixed-size step that touches those directions leaves the band,
        and backtracking shrinks the step until the search barely moves.

        Shapes
        ------
        v: (N, C, H, W) or (N, D) -> same shape and dtype.
        """
        flat = v.flatten(1).double()
        u = self._window.to(v.device)
        return (flat - (flat @ u) @ u.T).to(v.dtype).reshape(v.shape)

    def __repr__(self) -> str:
        return f"TrailingVarianceScore(start={self.start}, eps={self.eps:g}, n_features={self.n_features})"


def fit_pca_whitening(x_train: Any, *, eps: float = 1e-11, batch_size: int = 8192) -> PCAWhitening:
    """Fit PCA whitening on training inputs (float64 covariance, ``ddof=1``, ``eigh``).

    Parameters
    ----------
    x_train : Tensor or ndarray
        Training inputs (N, C, H, W) or (N, D): clean images only.
    eps : float
        Added to every eigenvalue before the square root (Hendrycks & Gimpel: 1e-11).
        Must be > 0 where the covariance is rank-deficient (MNIST), or the trailing
        coefficients divide by zero; ``eps = 0`` is allowed only for full-rank data.
    batch_size : int
        Rows per chunk when accumulating the covariance.

    Returns
    -------
    PCAWhitening

    Raises
    ------
    ValueError
        Negative or non-finite ``eps``; ``eps = 0`` with a rank-deficient covariance.

    Shapes
    ------
    x_train: (N, D) or (N, C, H, W), D = C·H·W; covariance (D, D).

    References
    ----------
    .. [1] D. Hendrycks and K. Gimpel, "Early methods for detecting adversarial images",
       ICLR 2017 workshop; arXiv:1608.00530, section 3.2.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(500, 4)) * [3.0, 2.0, 1.0, 0.5]
    >>> w = fit_pca_whitening(x)
    >>> bool(np.allclose(np.cov(w.transform(x).T), np.eye(4)))
    True
    """
    check_params("fit_pca_whitening", {"eps": eps, "batch_size": batch_size},
                 {"eps": NON_NEGATIVE, "batch_size": POSITIVE_INT})
    rows = _as_rows(x_train, "x_train")
    n, d = rows.shape
    mean = rows.mean(axis=0)
    cov = np.zeros((d, d))
    for sl in chunks(n, batch_size):
        c = rows[sl] - mean
        cov += c.T @ c
    cov /= max(n - 1, 1)
    lam, vecs = np.linalg.eigh(cov)
    lam, vecs = lam[::-1].copy(), vecs[:, ::-1].copy()
    lam = np.maximum(lam, 0.0)
    tol = d * (lam[0] if lam.size else 0.0) * np.finfo(np.float64).eps
    rank = int((lam > tol).sum())
    if eps == 0 and rank < d:
        raise ValueError(
            f"eps=0 with a rank-deficient covariance (rank {rank} of {d}, from {n} samples) "
            "divides by zero in the trailing coefficients; pass eps > 0 (Hendrycks & Gimpel "
            "use 1e-11)."
        )
    return PCAWhitening(
        mean=mean, components=vecs, eigenvalues=lam, eps=float(eps), rank=rank, n_samples=n
    )


def pca_coefficients(x: Any, pca: PCAWhitening) -> np.ndarray:
    """PCA-whitened coefficients of ``x`` under a fitted whitening.

    Parameters
    ----------
    x : Tensor or ndarray
        Inputs (N, C, H, W) or (N, D) with D = ``pca.n_features``.
    pca : PCAWhitening
        From :func:`fit_pca_whitening`.

    Returns
    -------
    ndarray
        Shape (N, D), float64; column j is the coefficient of the j-th principal
        component (largest eigenvalue first), divided by ``sqrt(λ_j + eps)``.
    """
    if not isinstance(pca, PCAWhitening):
        raise TypeError(
            f"pca must be a PCAWhitening from fit_pca_whitening(x_train); got {type(pca).__name__}."
        )
    return pca.transform(x)
