"""Adversarial-example detectors behind one scikit-learn interface.

Every detector is a :class:`Detector`: ``fit(X, y)`` on feature matrices made by
:mod:`fisherscope.features` (0 = clean, 1 = adversarial), ``decision_function`` (higher
means more adversarial), ``predict`` at a threshold set for a target false-positive rate
on clean data, and ``score`` = AUROC. ``DETECTORS`` (a
:class:`~fisherscope._registry.Registry`) maps registry keys to classes; registering a
detector checks that it is a :class:`Detector` whose ``feature`` names an entry of
:data:`fisherscope.features.FEATURES`.

Every registered detector has a differentiable torch mirror of its score
(:meth:`Detector.decision_torch`, :meth:`Detector.torch_score` -> :class:`TorchScore`) on the
feature mirrors of :data:`fisherscope.features.TORCH_FEATURES`, except the random-forest head
of :class:`FisherSpectrumDetector`, which is piecewise constant: :class:`LogisticSurrogate`
fits a differentiable stand-in on the same features (success is judged by the real head).
"""

from __future__ import annotations

from typing import Any

from .._registry import Registry
from ..features import FEATURES
from .base import SKLEARN_EXPECTED_FAILED_CHECKS, Detector, TorchScore, threshold_at_fpr
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
from .surrogate import LogisticSurrogate, needs_surrogate
from .whitening import PCAWhiteningDetector


def _check_detector(key: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise TypeError(f"DETECTORS[{key!r}] must be a subclass of fisherscope.detectors.Detector; got {cls!r}.")
    if cls.feature not in FEATURES:
        raise ValueError(
            f"DETECTORS[{key!r}]: {cls.__name__}.feature is {cls.feature!r}, not a key of "
            f"fisherscope.features.FEATURES ({', '.join(FEATURES)}); name the feature function that makes its X."
        )


DETECTORS: Registry[type[Detector]] = Registry(
    "DETECTORS",
    {
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
    },
    validate=_check_detector,
)
"""Registry key -> detector class."""

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
    "LogisticSurrogate",
    "MahalanobisDetector",
    "PCAWhiteningDetector",
    "ReconstructionDetector",
    "SoftmaxDetector",
    "TorchScore",
    "gaussian_kde_logpdf",
    "join_kdbu",
    "needs_surrogate",
    "threshold_at_fpr",
]
