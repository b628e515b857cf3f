"""The detector contract: scikit-learn estimators on feature matrices.

A detector maps a feature matrix ``X`` (n_samples, n_features), made from a model and its
inputs by :mod:`fisherscope.features`, to a score per sample:

- :meth:`~Detector.decision_function` — higher means more adversarial;
- :meth:`~Detector.predict` — 1 (adversarial) where the score exceeds ``threshold_``, a
  threshold set so that at most ``target_fpr`` of the *clean* calibration samples are
  flagged (the clean rows of the fitting data, or a separate split given to
  :meth:`~Detector.calibrate`);
- :meth:`~Detector.score` — the area under the ROC curve (AUROC), not accuracy.

Labels are binary: 0 = clean (including noisy negatives), 1 = adversarial. Supervised
detectors (``supervised = True``) need both classes in ``fit``; unsupervised ones
(a score with no learned decision, e.g. the maximum softmax probability) fit only on the
clean rows and accept ``y=None`` (all rows clean).

Subclasses set ``feature`` (the :mod:`fisherscope.features` function that makes their
input), implement ``_fit(X, y)`` and ``_decision(X)``, and declare every hyperparameter
as an explicit keyword of ``__init__`` stored unchanged (scikit-learn's ``get_params`` /
``clone`` convention).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import roc_auc_score
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import validate_data

from .._validation import check_param, real
from ..exceptions import NotFittedError

__all__ = ["SKLEARN_EXPECTED_FAILED_CHECKS", "Detector", "threshold_at_fpr"]

_LABELS_01 = "labels must be 0 (clean) and 1 (adversarial); this check uses other labels"

#: scikit-learn estimator checks every :class:`Detector` fails by design, with the reason:
#: ``parametrize_with_checks(..., expected_failed_checks=lambda est: SKLEARN_EXPECTED_FAILED_CHECKS)``.
SKLEARN_EXPECTED_FAILED_CHECKS: dict[str, str] = {
    "check_classifiers_train": (
        "predict flags decision_function > threshold_ (set at target_fpr on clean rows), "
        "not decision_function > 0"
    ),
    "check_estimators_dtypes": f"{_LABELS_01} ({{1, 2}})",
    "check_classifier_data_not_an_array": f"{_LABELS_01} ({{1, 2}})",
    "check_classifiers_classes": f"{_LABELS_01} (strings, {{1, 2}})",
    "check_fit2d_1feature": f"{_LABELS_01} ({{0, 1, 2}})",
}


#: fix sentences appended to scikit-learn's validation messages that name none
_VALIDATION_FIXES = (
    (("contains NaN", "contains infinity"),
     "Remove or repair the rows with non-finite features (they usually come from a model whose "
     "outputs were not finite), e.g. X[np.isfinite(X).all(axis=1)]."),
    (("while dim <= 2 is required",),
     "Pass a 2-D feature matrix (n_samples, n_features), e.g. X.reshape(len(X), -1)."),
    (("features as input",),
     "Pass features made the same way as the ones the detector was fitted on (the same feature "
     "function and settings), or refit it."),
)


def _validate(estimator: Any, *args: Any, **kwargs: Any) -> Any:
    """scikit-learn's ``validate_data``, with a fix sentence where its message has none."""
    try:
        return validate_data(estimator, *args, **kwargs)
    except ValueError as exc:
        msg = str(exc)
        for needles, fix in _VALIDATION_FIXES:
            if any(n in msg for n in needles) and fix not in msg:
                raise ValueError(f"{msg} {fix}") from exc
        raise


def threshold_at_fpr(clean_scores: np.ndarray, target_fpr: float) -> float:
    """The smallest threshold t with mean(clean_scores > t) <= target_fpr.

    ``predict`` flags scores strictly above t, so on these clean scores the false-positive
    rate is at most ``target_fpr`` (exactly the empirical quantile rule, no interpolation).
    """
    s = np.sort(np.asarray(clean_scores, dtype=np.float64).ravel())
    if s.size == 0:
        raise ValueError("threshold_at_fpr needs at least one clean score; got none.")
    if not np.all(np.isfinite(s)):
        raise ValueError("clean scores contain NaN or inf; check the features fed to the detector.")
    check_param("threshold_at_fpr", "target_fpr", target_fpr, real(ge=0, lt=1))
    allowed = int(np.floor(target_fpr * s.size + 1e-9))  # clean samples allowed above t
    return float(s[s.size - 1 - allowed])


class Detector(ClassifierMixin, BaseEstimator):
    """Base class of every detector (see the module docstring for the contract)."""

    #: name of the :mod:`fisherscope.features` function that makes this detector's X
    feature: ClassVar[str] = ""
    #: whether fitting needs adversarial rows (y == 1) as well as clean ones
    supervised: ClassVar[bool] = True

    def __init__(self, *, target_fpr: float = 0.05) -> None:
        self.target_fpr = target_fpr

    # ----------------------------------------------------------------- sklearn API
    def fit(self, X: Any, y: Any = None) -> Detector:
        """Fit on features X with labels y (0 clean, 1 adversarial); set ``threshold_``."""
        if y is None:
            if self.supervised:
                raise ValueError(
                    f"{type(self).__name__} is supervised: fit(X, y) needs y with 0 for clean and "
                    "1 for adversarial rows (it requires y to be passed, but the target y is None)."
                )
            X = _validate(self, X, reset=True, dtype=np.float64, ensure_min_samples=1)
            y = np.zeros(X.shape[0], dtype=np.int64)
        else:
            X, y = _validate(self, X, y, reset=True, dtype=np.float64, ensure_min_samples=1)
            y = self._check_binary(y)
        self.classes_ = np.array([0, 1])
        clean = y == 0
        if not clean.any():
            raise ValueError(
                "fit needs clean rows (y == 0) to set the threshold; got none (y holds one class, "
                "1 = adversarial)."
            )
        if self.supervised and clean.all():
            raise ValueError(
                f"{type(self).__name__} is supervised and needs adversarial rows (y == 1) as well; "
                "got only clean rows (one class)."
            )
        self._fit(X, y)
        self.threshold_ = threshold_at_fpr(self._clean_fit_scores(X, y), self._target_fpr())
        return self

    def calibrate(self, X_clean: Any) -> Detector:
        """Re-set ``threshold_`` on a separate split of clean features (no refit)."""
        scores = self.decision_function(X_clean)
        self.threshold_ = threshold_at_fpr(scores, self._target_fpr())
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Score per sample, higher = more adversarial; shape (n_samples,)."""
        if not hasattr(self, "threshold_"):
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet: call fit(X, y) (or fit(X) for an "
                "unsupervised detector) before decision_function / predict / score."
            )
        X = _validate(self, X, reset=False, dtype=np.float64)
        return np.asarray(self._decision(X), dtype=np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """1 where ``decision_function`` exceeds ``threshold_`` (adversarial), else 0."""
        return (self.decision_function(X) > self.threshold_).astype(np.int64)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:  # noqa: ARG002
        """AUROC of ``decision_function`` against y (0 clean, 1 adversarial)."""
        y = self._check_binary(np.asarray(y))
        if np.unique(y).size < 2:
            raise ValueError("score (AUROC) needs both clean (0) and adversarial (1) rows in y.")
        return float(roc_auc_score(y, self.decision_function(X), sample_weight=sample_weight))

    # ------------------------------------------------------------------ internals
    def _target_fpr(self) -> float:
        return float(check_param(type(self).__name__, "target_fpr", self.target_fpr, real(ge=0, lt=1)))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # 0 = clean, 1 = adversarial
        tags.target_tags.required = self.supervised
        return tags

    @staticmethod
    def _check_binary(y: np.ndarray) -> np.ndarray:
        y = np.asarray(y)
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D (n_samples,); got shape {y.shape}.")
        values = set(np.unique(y).tolist())
        if not values <= {0, 1}:  # bools compare equal to 0 and 1
            kind = type_of_target(y, input_name="y")
            lead = {
                "continuous": "got continuous values, not labels: ",
                "multiclass": "Only binary classification is supported; ",
            }.get(kind, "")
            raise ValueError(
                f"detectors are binary: {lead}y must hold 0 (clean) and 1 (adversarial); got "
                f"labels {sorted(values)[:10]}. Map your labels to 0/1 first."
            )
        return y.astype(np.int64)

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        """Learn from X (float64, validated) and binary y; unsupervised detectors may ignore y."""

    def _clean_fit_scores(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Scores of the clean fitting rows (y == 0) that ``fit`` sets the threshold on.

        Default: ``_decision`` of those rows. Override where in-sample scores are
        optimistic (a kernel density evaluated at its own support points: leave one out).
        """
        return self._decision(X[y == 0])

    def _decision(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError
