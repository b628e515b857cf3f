"""The Detector base class: thresholds at a target FPR, calibration, AUROC score, errors."""

from __future__ import annotations

import numpy as np
import pytest

from fisherscope.detectors import Detector, threshold_at_fpr
from fisherscope.exceptions import NotFittedError


class FirstColumn(Detector):
    supervised = False

    def _decision(self, X):
        return X[:, 0]


class Centroid(Detector):
    """Supervised toy: distance to the clean centroid."""

    def _fit(self, X, y):
        self.center_ = X[y == 0].mean(0)

    def _decision(self, X):
        return np.linalg.norm(X - self.center_, axis=1)


@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.1, 0.5])
def test_threshold_bounds_fpr_and_is_tight(fpr):
    rng = np.random.default_rng(0)
    s = rng.normal(size=1000)
    t = threshold_at_fpr(s, fpr)
    assert (s > t).mean() <= fpr + 1e-12
    # tight: the next lower clean score would exceed the budget
    below = np.sort(s)[np.sort(s) < t]
    if below.size:
        assert (s > below[-1]).mean() > fpr


def test_predict_uses_clean_threshold_and_calibrate_resets_it():
    rng = np.random.default_rng(1)
    clean = rng.normal(size=(400, 1))
    det = FirstColumn(target_fpr=0.05).fit(clean)
    assert det.predict(clean).mean() <= 0.05
    other = rng.normal(loc=3.0, size=(200, 1))
    det.calibrate(other)
    assert det.predict(other).mean() <= 0.05 and det.threshold_ > 2.0


def test_score_is_auroc_and_supervised_fit_needs_both_classes():
    rng = np.random.default_rng(2)
    X = np.vstack([rng.normal(size=(100, 3)), rng.normal(loc=4.0, size=(100, 3))])
    y = np.r_[np.zeros(100), np.ones(100)].astype(int)
    det = Centroid().fit(X, y)
    assert det.score(X, y) > 0.99
    with pytest.raises(ValueError, match="supervised"):
        Centroid().fit(X)
    with pytest.raises(ValueError, match="adversarial rows"):
        Centroid().fit(X[:100], y[:100])
    with pytest.raises(ValueError, match="binary"):
        Centroid().fit(X, y * 2)


def test_not_fitted_and_feature_count_checked():
    with pytest.raises(NotFittedError):
        FirstColumn().decision_function(np.zeros((2, 1)))
    det = FirstColumn().fit(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="features"):
        det.decision_function(np.zeros((5, 3)))
