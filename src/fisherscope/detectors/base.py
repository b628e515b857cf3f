"""The detector contract: scikit-learn estimators on feature matrices.

A detector maps a feature matrix ``X`` (n_samples, n_features), made from a model and its
inputs by :mod:`fisherscope.features`, to a score per sample:

- :meth:`~Detector.decision_function` — higher means more adversarial;
- :meth:`~Detector.predict` — 1 (adversarial) where the score exceeds ``threshold_``, a
  threshold set so that at most ``target_fpr`` of the *clean* calibration samples are
  flagged (the clean rows of the fitting data, or a separate split given to
  :meth:`~Detector.calibrate`);
- :meth:`~Detector.score` — the area under the ROC curve (AUROC), not accuracy;
- :meth:`~Detector.decision_torch` — the same score as a differentiable torch function of a
  feature *tensor* (the columns of :data:`fisherscope.features.TORCH_FEATURES`), for
  attackers who know the detector; :meth:`~Detector.torch_score` composes it with the torch
  mirror of the detector's feature into a :class:`TorchScore` of the images. A detector
  whose fitted head is not differentiable (a random forest) raises
  :class:`~fisherscope.exceptions.NoTorchMirrorError` naming the fix, a differentiable
  surrogate (:class:`~fisherscope.detectors.LogisticSurrogate`).

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

import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import roc_auc_score
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import validate_data

from .._validation import check_param, real
from ..exceptions import NotFittedError, NoTorchMirrorError

__all__ = ["SKLEARN_EXPECTED_FAILED_CHECKS", "Detector", "TorchScore", "as_torch", "threshold_at_fpr"]

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

    def decision_torch(self, X: torch.Tensor) -> torch.Tensor:
        """:meth:`decision_function` as a differentiable torch function of a feature tensor.

        Parameters
        ----------
        X : Tensor (n_samples, n_features)
            The detector's feature columns as a float tensor (the output of the feature's
            mirror in :data:`fisherscope.features.TORCH_FEATURES`), possibly attached to an
            autograd graph.

        Returns
        -------
        Tensor (n_samples,)
            float64, the same numbers as ``decision_function(X.detach().numpy())`` (to
            round-off) and differentiable in ``X``.

        Raises
        ------
        NotFittedError
            The detector has not been fitted.
        NoTorchMirrorError
            The fitted head has no differentiable mirror (fit a surrogate instead).
        """
        self._check_fitted_for_torch()
        if not isinstance(X, torch.Tensor) or X.ndim != 2:
            raise ValueError(
                f"{type(self).__name__}.decision_torch takes a 2-D feature tensor (n_samples, n_features); got "
                f"{type(X).__name__}{'' if not isinstance(X, torch.Tensor) else f' of shape {tuple(X.shape)}'}."
            )
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is expecting {self.n_features_in_} "
                "features as input."
            )
        return self._decision_torch(X.to(torch.float64))

    def has_torch_mirror(self) -> bool:
        """Whether :meth:`decision_torch` exists for this detector (with its current settings)."""
        return type(self)._decision_torch is not Detector._decision_torch

    def torch_score(self, model: torch.nn.Module | None = None, **feature_kwargs: Any) -> TorchScore:
        """This fitted detector's score as a differentiable torch function of the images.

        The detector's own feature (``self.feature``) through its torch mirror, with
        ``feature_kwargs`` (e.g. ``k=20`` for the eigenvalues, ``n=50, generator=g`` for MC
        dropout), then :meth:`decision_torch`; the result's ``threshold`` is the fitted
        ``threshold_`` (the one ``predict`` uses). Features built from several parts (KD+BU
        on two models) are assembled by :func:`fisherscope.evaluation.detector_torch_score`.

        Raises
        ------
        NotFittedError
            Not fitted, or no threshold set.
        NoTorchMirrorError
            No differentiable mirror of the head (fit a surrogate).
        """
        from ..features import TORCH_FEATURES

        self._check_fitted_for_torch()
        if not self.has_torch_mirror():
            self._decision_torch(torch.zeros(0, self.n_features_in_, dtype=torch.float64))  # raises the fix
        fn = TORCH_FEATURES[self.feature]
        takes_model = next(iter(inspect.signature(fn).parameters)) != "x"
        if takes_model and model is None:
            raise ValueError(f"{type(self).__name__}.torch_score needs the model its feature {self.feature!r} is "
                             "computed with: torch_score(model, ...).")

        def part(x: torch.Tensor) -> torch.Tensor:
            return fn(model, x, **feature_kwargs) if takes_model else fn(x, **feature_kwargs)

        return TorchScore(self, [part])

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

    def _decision_torch(self, X: torch.Tensor) -> torch.Tensor:
        """The torch mirror of :meth:`_decision` (float64 X, fitted); default: none."""
        raise NoTorchMirrorError(
            f"{type(self).__name__} has no differentiable torch mirror of its score, so a gradient-based "
            "attacker cannot use it directly. Fit a differentiable surrogate on the same features, "
            "fisherscope.detectors.LogisticSurrogate(detector).fit(X_fit, y_fit).calibrate(X_clean), attack "
            "its torch score and judge success with the real detector."
        )

    def _check_fitted_for_torch(self) -> None:
        if not hasattr(self, "n_features_in_") or not hasattr(self, "classes_"):
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet: call fit(X, y) (or fit(X) for an unsupervised "
                "detector) before decision_torch / torch_score."
            )


def as_torch(a: Any, like: torch.Tensor) -> torch.Tensor:
    """A fitted numpy array as a float64 tensor on ``like``'s device (no copy on the CPU)."""
    return torch.as_tensor(np.asarray(a, dtype=np.float64), device=like.device)


class TorchScore:
    """A fitted detector's score as a differentiable torch function of the images.

    ``score(x)`` concatenates the feature parts (each ``part(x) -> (N, f_i)`` tensor with
    the graph to ``x``) and applies ``decision.decision_torch``; ``threshold`` is the
    decision's fitted threshold: ``score(x) > threshold`` is the detector's flag (for a
    surrogate, the surrogate's own threshold at the same false-positive rate).

    Parameters
    ----------
    decision : Detector
        A fitted detector (or surrogate) with a torch mirror.
    parts : sequence of callables
        Feature parts, in column order.

    Attributes
    ----------
    threshold : float
        The fitted threshold (finite).
    scale : float
        A typical spread of clean scores (set by whoever builds the score, default 1): the
        unit an attacker's penalty measures "how far above the threshold" in.

    Raises
    ------
    NotFittedError
        The decision is not fitted or has no threshold set.
    """

    def __init__(self, decision: Detector, parts: Sequence[Callable[[torch.Tensor], torch.Tensor]], *,
                 scale: float = 1.0) -> None:
        if not isinstance(decision, Detector):
            raise TypeError(f"TorchScore needs a fitted fisherscope Detector; got {type(decision).__name__}.")
        decision._check_fitted_for_torch()
        thr = getattr(decision, "threshold_", None)
        if thr is None or not np.isfinite(thr):
            raise NotFittedError(
                f"{type(decision).__name__} has no finite threshold_ set (got {thr!r}): calibrate it on clean "
                "features first (detector.calibrate(X_clean)), so the attacker knows the operating point."
            )
        if not parts:
            raise ValueError("TorchScore needs at least one feature part.")
        self.decision = decision
        self.parts = list(parts)
        self.threshold = float(thr)
        self.scale = float(scale)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        cols = [p(x) for p in self.parts]
        return cols[0] if len(cols) == 1 else torch.cat(cols, dim=1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.decision.decision_torch(self.features(x))

    def __repr__(self) -> str:
        return f"TorchScore({type(self.decision).__name__}, threshold={self.threshold:.6g})"
