"""Adversarial-example detectors behind one scikit-learn interface.

Every detector is a :class:`Detector`: ``fit(X, y)`` on feature matrices made by
:mod:`fisherscope.features` (0 = clean, 1 = adversarial), ``decision_function`` (higher
means more adversarial), ``predict`` at a threshold set for a target false-positive rate
on clean data, and ``score`` = AUROC. ``DETECTORS`` maps registry keys to classes.
"""

from __future__ import annotations

from .base import SKLEARN_EXPECTED_FAILED_CHECKS, Detector, threshold_at_fpr
from .density import (
    BayesianUncertaintyDetector,
    KDBUDetector,
    KernelDensityDetector,
    gaussian_kde_logpdf,
    join_kdbu,
)
from .fisher import FisherScoreDetector, FisherSpectrumDetector
from .lid import LIDDetector
from .mahalanobis import MahalanobisDetector
from .reconstruction import ReconstructionDetector
from .softmax import SoftmaxDetector
from .whitening import PCAWhiteningDetector

DETECTORS: dict[str, type[Detector]] = {
    "fisher_spectrum": FisherSpectrumDetector,
    "fisher_score": FisherScoreDetector,
    "kd": KernelDensityDetector,
    "bu": BayesianUncertaintyDetector,
    "kdbu": KDBUDetector,
    "softmax": SoftmaxDetector,
    "pca_whitening": PCAWhiteningDetector,
    "reconstruction": ReconstructionDetector,
    "lid": LIDDetector,
    "mahalanobis": MahalanobisDetector,
}

__all__ = [
    "DETECTORS",
    "SKLEARN_EXPECTED_FAILED_CHECKS",
    "BayesianUncertaintyDetector",
    "Detector",
    "FisherScoreDetector",
    "FisherSpectrumDetector",
    "KDBUDetector",
    "KernelDensityDetector",
    "LIDDetector",
    "MahalanobisDetector",
    "PCAWhiteningDetector",
    "ReconstructionDetector",
    "SoftmaxDetector",
    "gaussian_kde_logpdf",
    "join_kdbu",
    "threshold_at_fpr",
]
