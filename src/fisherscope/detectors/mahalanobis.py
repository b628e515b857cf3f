"""Mahalanobis-distance detector (Lee et al. 2018) with class means and a tied covariance."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.linalg import pinvh
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from .._validation import NON_NEGATIVE, check_param
from .base import Detector, as_torch
from .lid import check_layer_sizes

__all__ = ["MahalanobisDetector", "check_class_column"]


def check_class_column(X: np.ndarray, owner: str) -> np.ndarray:
    """Column 0 of X as int64 class labels; a clear error if it does not hold classes."""
    if X.shape[1] < 2:
        raise ValueError(
            f"{owner} takes X whose column 0 is the model's predicted class and the other "
            f"columns the layer features; got X with {X.shape[1]} feature(s). Make X with "
            "fisherscope.features.penultimate(model, x, with_prediction=True)."
        )
    c = X[:, 0]
    if np.any(c < 0) or np.any(c != np.round(c)):
        bad = c[(c < 0) | (c != np.round(c))][:5]
        raise ValueError(
            f"{owner}: column 0 of X must hold predicted classes (integers >= 0, as floats); got "
            f"values such as {bad.tolist()}. Make X with with_prediction=True, whose first "
            "column is the prediction."
        )
    return c.astype(np.int64)


class MahalanobisDetector(Detector):
    """Minimum Mahalanobis distance to the class means; higher = more adversarial.

    Lee et al. (2018) fit, per layer, the class means μ_c of the features and one tied
    covariance Σ = (1/n) Σ_i (f_i − μ_{c_i})(f_i − μ_{c_i})ᵀ on clean data, and score a
    feature f by ``min_c (f − μ_c)ᵀ Σ⁺ (f − μ_c)``. Here the classes c_i of the clean
    fitting rows are the model's *predicted* classes, read from column 0 of X (the
    convention of the class-conditional detectors); at scoring time column 0 is not
    used: the minimum runs over every class seen in fitting. The score is the distance
    (the square root), Σ⁺ is the pseudo-inverse (``scipy.linalg.pinvh``) of
    ``Σ + reg · I``.

    With one layer the score is the detector's output (unsupervised: only clean rows
    are used, ``supervised`` is False). With several layers (``layer_sizes``), the
    per-layer scores are z-scored on the fitting rows and combined by a logistic
    regression trained on clean (0) and adversarial (1) fitting rows (``supervised`` is
    True). The per-layer scores of the clean fitting rows are in-sample (they also fit
    the means and covariance); use many more rows than feature dimensions. Lee et al.'s
    input pre-processing (a small step against the score's gradient) acts on inputs,
    not features, and is not part of this class.

    Parameters
    ----------
    layer_sizes : sequence of int, optional
        Widths of the layer blocks in columns 1: of X
        (``tuple(fisherscope.features.layer_sizes(model, x, layers, pool="mean").values())``);
        ``None``: one layer (e.g. the penultimate features).
    reg : float
        Added to the diagonal of each covariance before the pseudo-inverse (0: Lee et al.).
    C : float
        Inverse L2 regularisation of the logistic regression (several layers only).
    target_fpr : float
        False-positive rate on clean rows at which ``predict`` thresholds.

    Attributes
    ----------
    classes_seen_ : ndarray
        Predicted classes present among the clean fitting rows.
    means_ : list of ndarray, each (n_classes_seen, d_l)
    precisions_ : list of ndarray, each (d_l, d_l)
    scaler_, classifier_ : StandardScaler, LogisticRegression
        Only with several layers.

    Shapes
    ------
    X: (n_samples, 1 + Σ layer_sizes), column 0 = predicted class
    (:func:`fisherscope.features.penultimate` or
    :func:`fisherscope.features.layer_activations` with ``with_prediction=True``) ->
    decision_function: (n_samples,).

    References
    ----------
    .. [1] K. Lee, K. Lee, H. Lee and J. Shin, "A simple unified framework for detecting
       out-of-distribution samples and adversarial attacks", NeurIPS 2018.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> cls = rng.integers(0, 3, 300)
    >>> feats = rng.normal(size=(300, 4)) + 5.0 * np.eye(3, 4)[cls]
    >>> X = np.c_[cls, feats]
    >>> det = MahalanobisDetector().fit(X)
    >>> far = np.c_[cls[:5], feats[:5] + 8.0]
    >>> bool((det.decision_function(far) > det.decision_function(X[:5])).all())
    True
    """

    feature = "penultimate"

    def __init__(
        self,
        *,
        layer_sizes: Sequence[int] | None = None,
        reg: float = 0.0,
        C: float = 1.0,
        target_fpr: float = 0.05,
    ) -> None:
        self.layer_sizes = layer_sizes
        self.reg = reg
        self.C = C
        self.target_fpr = target_fpr

    @property
    def supervised(self) -> bool:  # type: ignore[override]
        """True with several layers (a logistic regression needs adversarial rows)."""
        ls = self.layer_sizes
        return ls is not None and not isinstance(ls, numbers.Integral) and len(ls) > 1

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.categorical = True  # column 0 holds class labels
        return tags

    def layer_scores(self, X: np.ndarray) -> np.ndarray:
        """Per-layer minimum Mahalanobis distances, shape (n_samples, n_layers)."""
        X = np.asarray(X, dtype=np.float64)
        out = np.empty((X.shape[0], len(self.layers_)))
        for j, (s, mu, prec) in enumerate(zip(self.layers_, self.means_, self.precisions_, strict=True)):
            f = X[:, 1:][:, s]
            best = np.full(X.shape[0], np.inf)
            for m in mu:  # loop over classes
                diff = f - m
                best = np.minimum(best, np.einsum("nd,de,ne->n", diff, prec, diff))
            out[:, j] = np.sqrt(np.maximum(best, 0.0))
        return out

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        check_param(type(self).__name__, "reg", self.reg, NON_NEGATIVE)
        classes = check_class_column(X, "MahalanobisDetector")
        self.layers_ = check_layer_sizes(self.layer_sizes, X.shape[1] - 1, "MahalanobisDetector")
        clean = y == 0
        f_all, c = X[clean, 1:], classes[clean]
        self.classes_seen_ = np.unique(c)
        self.means_, self.precisions_ = [], []
        for s in self.layers_:
            f = f_all[:, s]
            mu = np.stack([f[c == k].mean(axis=0) for k in self.classes_seen_])
            centered = f - mu[np.searchsorted(self.classes_seen_, c)]
            cov = centered.T @ centered / f.shape[0]
            cov[np.diag_indices_from(cov)] += float(self.reg)
            self.means_.append(mu)
            self.precisions_.append(pinvh(cov))
        if self.supervised:
            scores = self.layer_scores(X)
            self.scaler_ = StandardScaler().fit(scores)
            self.classifier_ = LogisticRegression(C=self.C, max_iter=1000)
            self.classifier_.fit(self.scaler_.transform(scores), y)

    def layer_scores_torch(self, X: torch.Tensor) -> torch.Tensor:
        """:meth:`layer_scores` as a differentiable torch function (float64)."""
        cols = []
        for s, mu, prec in zip(self.layers_, self.means_, self.precisions_, strict=True):
            f = X[:, 1:][:, s]
            p = as_torch(prec, X)
            diff = f[:, None, :] - as_torch(mu, X)[None]  # (N, classes, d)
            m = torch.einsum("ncd,de,nce->nc", diff, p, diff).amin(1)
            cols.append(m.clamp_min(1e-300).sqrt())
        return torch.stack(cols, dim=1)

    def _decision_torch(self, X: torch.Tensor) -> torch.Tensor:
        scores = self.layer_scores_torch(X)
        if self.supervised:
            from .density import linear_head_torch

            return linear_head_torch(scores, self.scaler_, self.classifier_)
        return scores[:, 0]

    def _decision(self, X: np.ndarray) -> np.ndarray:
        scores = self.layer_scores(X)
        if self.supervised:
            return self.classifier_.decision_function(self.scaler_.transform(scores))
        return scores[:, 0]
