"""Differentiable surrogates of detectors whose fitted head has no gradient.

A random forest's probability is piecewise constant in its features, so an attacker who
differentiates it gets zero almost everywhere. The standard remedy (Carlini & Wagner 2017;
Tramèr et al. 2020, "make every component differentiable") is a differentiable model of the
same decision fitted on the same data: :class:`LogisticSurrogate` fits a standardised
logistic regression on the columns the real head sees (``detector.head_inputs``, e.g. the
log-eigenvalues of Zhao's detector), sets its own threshold at the same false-positive rate
on the same clean calibration rows, and exposes :meth:`~LogisticSurrogate.decision_torch`.
The attacker optimises against the surrogate; **success is always judged by the real
detector**, and :meth:`~LogisticSurrogate.agreement` reports how often the two flag the same
rows.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from .._validation import POSITIVE, check_param
from ..exceptions import NotFittedError
from .base import Detector
from .density import linear_head_torch

__all__ = ["LogisticSurrogate", "needs_surrogate"]


def needs_surrogate(detector: Any) -> bool:
    """True for a fitted-or-not :class:`Detector` whose head has no torch mirror."""
    return isinstance(detector, Detector) and not detector.has_torch_mirror()


class LogisticSurrogate(Detector):
    """A logistic regression on a detector's head inputs: a differentiable stand-in for its head.

    Parameters
    ----------
    detector : Detector
        The **fitted** real detector (its ``head_inputs`` / ``head_inputs_torch``, when it
        has them, map the features to the columns its head sees; otherwise the features
        are used as they are).
    C : float
        Inverse L2 regularisation of the logistic regression.
    target_fpr : float
        False-positive rate at which the surrogate's own threshold is set (use the real
        detector's).

    Attributes
    ----------
    scaler_ : StandardScaler
    classifier_ : LogisticRegression
    threshold_ : float
        Set on the clean fitting rows by ``fit``; re-set by ``calibrate`` on the real
        detector's calibration rows.

    Examples
    --------
    >>> import numpy as np
    >>> from fisherscope.detectors import FisherSpectrumDetector
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.gamma(2.0, 1.0, (80, 4)), rng.gamma(2.0, 5.0, (80, 4))])
    >>> y = np.r_[np.zeros(80), np.ones(80)].astype(int)
    >>> forest = FisherSpectrumDetector(random_state=0).fit(X, y)
    >>> sur = LogisticSurrogate(forest).fit(X, y)
    >>> sur.agreement(X) > 0.8
    True
    """

    feature: ClassVar[str] = ""
    supervised: ClassVar[bool] = True

    def __init__(self, detector: Any = None, *, C: float = 1.0, target_fpr: float = 0.05) -> None:
        self.detector = detector
        self.C = C
        super().__init__(target_fpr=target_fpr)

    def _real(self) -> Detector:
        det = self.detector
        if not isinstance(det, Detector):
            raise TypeError(f"LogisticSurrogate needs the real fitted Detector as detector=; got {type(det).__name__}.")
        if not hasattr(det, "threshold_"):
            raise NotFittedError(
                f"LogisticSurrogate: the real {type(det).__name__} is not fitted yet; fit it first, then fit the "
                "surrogate on the same features."
            )
        return det

    def _inputs(self, X: np.ndarray) -> np.ndarray:
        det = self._real()
        fn = getattr(det, "head_inputs", None)
        return fn(X) if callable(fn) else X

    def _inputs_torch(self, X: torch.Tensor) -> torch.Tensor:
        fn = getattr(self._real(), "head_inputs_torch", None)
        return fn(X) if callable(fn) else X

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        check_param(type(self).__name__, "C", self.C, POSITIVE)
        z = self._inputs(X)
        self.scaler_ = StandardScaler().fit(z)
        self.classifier_ = LogisticRegression(C=self.C, max_iter=2000).fit(self.scaler_.transform(z), y)

    def _decision(self, X: np.ndarray) -> np.ndarray:
        return self.classifier_.decision_function(self.scaler_.transform(self._inputs(X)))

    def _decision_torch(self, X: torch.Tensor) -> torch.Tensor:
        return linear_head_torch(self._inputs_torch(X), self.scaler_, self.classifier_)

    def agreement(self, X: Any) -> float:
        """Fraction of rows of X that the surrogate and the real detector flag alike (both
        at their own thresholds)."""
        X = np.asarray(X, dtype=np.float64)
        if X.shape[0] == 0:
            return float("nan")
        return float(np.mean(self.predict(X) == self._real().predict(X)))
