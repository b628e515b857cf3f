"""Reconstruction-error detector (Hendrycks & Gimpel 2017, §3.4)."""

from __future__ import annotations

import numpy as np
import torch

from .._validation import check_param, one_of
from ..features.reconstruction import RECONSTRUCTION_KINDS
from .base import Detector

__all__ = ["ReconstructionDetector"]


class ReconstructionDetector(Detector):
    """Score = a reconstruction error of a classifier-autoencoder; higher = more adversarial.

    The feature is :func:`fisherscope.features.reconstruction_error` of a model with a
    decoder (``hg_mlp``). ``kind="signed_mean"`` is Hendrycks & Gimpel's score, the mean
    of ``x − reconstruct(x)`` (signed: they report it larger for adversarial images);
    ``kind="squared"`` is the mean squared error, a variant that does not depend on the
    sign of the residual. Nothing is learned except the threshold (unsupervised).

    ``X`` is either the one column of ``reconstruction_error(model, x, kind=kind)`` (the
    score, whatever ``kind`` says: make the feature with the same ``kind``) or, with two
    or more columns, the layout of ``kind="all"`` (signed mean, squared, further columns
    ignored), from which the detector takes the column named by ``kind``: one cached
    feature serves both variants.

    Parameters
    ----------
    kind : {"signed_mean", "squared"}
        Which error is the score.
    target_fpr : float
        False-positive rate on clean rows at which ``predict`` thresholds.

    Shapes
    ------
    X: (n_samples, 1) or (n_samples, >= 2) -> decision_function: (n_samples,).

    References
    ----------
    .. [1] D. Hendrycks and K. Gimpel, "Early methods for detecting adversarial images",
       ICLR 2017 workshop; arXiv:1608.00530, section 3.4 (AUROC 96.2%, AUPR 96.6% on MNIST).

    Examples
    --------
    >>> X = np.array([[0.01, 0.02], [0.00, 0.01], [0.20, 0.10], [0.30, 0.05]])
    >>> det = ReconstructionDetector(kind="squared").fit(X[:2])
    >>> det.decision_function(X).tolist()
    [0.02, 0.01, 0.1, 0.05]
    """

    feature = "reconstruction_error"
    supervised = False

    def __init__(self, *, kind: str = "signed_mean", target_fpr: float = 0.05) -> None:
        self.kind = kind
        self.target_fpr = target_fpr

    def _column(self, n_features: int) -> int:
        check_param(type(self).__name__, "kind", self.kind, one_of(*RECONSTRUCTION_KINDS))
        return 0 if n_features == 1 else RECONSTRUCTION_KINDS.index(self.kind)

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self.column_ = self._column(X.shape[1])

    def _decision(self, X: np.ndarray) -> np.ndarray:
        return X[:, self.column_].copy()

    def _decision_torch(self, X: torch.Tensor) -> torch.Tensor:
        return X[:, self.column_]
