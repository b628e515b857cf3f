"""Fisher-information detectors: Zhao's eigenvalue classifier and Martin & Elster's scores."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.naive_bayes import GaussianNB

from .._validation import (
    BOOL,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    any_of,
    check_param,
    check_params,
    one_of,
)
from ..exceptions import NoTorchMirrorError
from ..features.fisher import PARAM_FISHER_SCORES
from .base import Detector, as_torch

__all__ = ["FisherScoreDetector", "FisherSpectrumDetector"]

_TINY = np.finfo(np.float64).tiny


def _check_non_negative(X: np.ndarray, what: str, why: str = "") -> None:
    if np.any(X < 0):
        raise ValueError(
            f"Negative values in data passed to {what}: minimum {X.min():.4g}. These features "
            "(Fisher eigenvalues, traces and quadratic forms) are non-negative by construction"
            f"{why}; check the columns of X (a StandardScaler or any centring in front of the "
            "detector makes them negative)."
        )


_LOG_NEEDS_POSITIVE = (
    ", and the log transform log(λ + c) needs them so. Standardised features (a StandardScaler "
    "in front) work with log_transform='auto' or False: the forest is invariant to monotone "
    "maps, and naive Bayes then models the standardised values"
)


def _named_column(
    X: np.ndarray, name: str, names: tuple[str, ...], column: Any, owner: str, feature: str
) -> np.ndarray:
    """Column of X holding ``name``: ``column`` if given, the only one, or by ``names`` order."""
    if column is not None:
        check_param(owner, "column", column, NON_NEGATIVE_INT.or_none("by name"))
        if column >= X.shape[1]:
            raise ValueError(
                f"{owner}: column={column} but X has only {X.shape[1]} column(s); pass the "
                "index of the score column."
            )
        return X[:, column]
    if X.shape[1] == 1:
        return X[:, 0]
    if X.shape[1] == len(names):
        return X[:, names.index(name)]
    raise ValueError(
        f"{owner} expects X with 1 column (the {name} itself) or {len(names)} columns "
        f"{list(names)} (the default output of fisherscope.features.{feature}); got "
        f"{X.shape[1]} columns. Pass column=<index> to use one column of a wider matrix."
    )


class FisherSpectrumDetector(Detector):
    """Zhao et al.'s detector: a classifier on the top eigenvalues of the input-space Fisher.

    X holds, per sample, the top-k eigenvalues of G_x in descending order
    (:func:`fisherscope.features.fisher_eigenvalues`, Zhao use k = 20; with K classes only
    the first K − 1 columns can be non-zero). A random forest (depth ≤ 5, more than 20
    trees: Zhao §4 report that these settings work and the AUC hardly depends on them) or
    a Gaussian naive Bayes classifier is trained to separate negatives (y = 0) from
    adversarial examples (y = 1); the score is its probability of the adversarial class.

    ``threshold_`` is set on the forest's **out-of-bag** probabilities of the clean fitting
    rows (in-sample ones are optimistic: on held-out clean data the false-positive rate
    would exceed ``target_fpr``); naive Bayes uses its in-sample probabilities.

    Zhao et al. put **clean and noisy** samples among the negatives (networks are meant to
    be robust to random noise, so noisy inputs must not be flagged); building that
    training set is the job of the evaluation protocol, not of this class.

    Parameters
    ----------
    classifier : {"random_forest", "naive_bayes"}
        ``RandomForestClassifier(n_estimators, max_depth, random_state)`` or ``GaussianNB()``.
    n_estimators : int
        Trees of the random forest (> 20 in the paper).
    max_depth : int
        Depth limit of the trees (≤ 5 in the paper).
    log_transform : bool or "auto"
        Feed log(λ + c) instead of λ, with c = 1e-12 × the median over fitting rows of the
        largest eigenvalue (exact zeros past K − 1 then sit ~28 nats below the typical
        top eigenvalue instead of at −∞). Eigenvalues spread over many orders of magnitude
        (Zhao Fig. 3 plots them on a log axis), which matters for the Gaussian naive
        Bayes; trees are nearly invariant to this monotone map. ``True`` requires X ≥ 0;
        ``"auto"`` (default) takes the log when every fitting value is ≥ 0 (raw
        eigenvalues: the same as ``True``) and feeds X as it is otherwise (standardised
        features, e.g. a ``StandardScaler`` in front in a pipeline); ``False`` never logs.
        ``log_`` records the choice.
    random_state : int, RandomState or None
        Seed of the random forest.
    target_fpr : float
        False-positive rate on clean fitting rows at which ``threshold_`` is set.

    Attributes
    ----------
    estimator_ : RandomForestClassifier or GaussianNB
        The fitted classifier.
    log_ : bool
        Whether the log transform is applied (``log_transform``, or what ``"auto"`` chose).
    offset_ : float
        c of the log transform (0 without it).
    threshold_ : float
        Scores above it are flagged adversarial.

    References
    ----------
    Zhao, C. et al. "The Adversarial Attack and Detection under the Fisher Information
    Metric." AAAI 2019, §4 and Table 4.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.gamma(2.0, 1.0, (50, 9)), rng.gamma(2.0, 4.0, (50, 9))])
    >>> y = np.r_[np.zeros(50), np.ones(50)].astype(int)
    >>> det = FisherSpectrumDetector(random_state=0).fit(X, y)
    >>> det.score(X, y) > 0.9
    True
    """

    feature: ClassVar[str] = "fisher_eigenvalues"
    supervised: ClassVar[bool] = True

    def __init__(
        self,
        *,
        classifier: str = "random_forest",
        n_estimators: int = 50,
        max_depth: int = 5,
        log_transform: bool | str = "auto",
        random_state: Any = None,
        target_fpr: float = 0.05,
    ) -> None:
        self.classifier = classifier
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.log_transform = log_transform
        self.random_state = random_state
        super().__init__(target_fpr=target_fpr)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        # only an explicit log transform needs X >= 0 ("auto" feeds negative X as it is)
        tags.input_tags.positive_only = not isinstance(self.log_transform, str) and bool(self.log_transform)
        return tags

    def _make_classifier(self) -> Any:
        owner = type(self).__name__
        check_param(owner, "classifier", self.classifier, one_of("random_forest", "naive_bayes"))
        if self.classifier == "random_forest":
            check_params(owner, self, {"n_estimators": POSITIVE_INT, "max_depth": POSITIVE_INT})
            return RandomForestClassifier(
                n_estimators=self.n_estimators, max_depth=self.max_depth, oob_score=True,
                random_state=self.random_state,
            )
        return GaussianNB()

    def _transform(self, X: np.ndarray) -> np.ndarray:
        # detectors fitted before log_ existed took the log exactly when log_transform was set
        if not getattr(self, "log_", bool(self.log_transform)):
            return X
        why = (", and this detector was fitted on non-negative X, so log_transform='auto' chose the "
               "log transform log(λ + c), which needs them so; fit it on features scaled like these"
               if isinstance(self.log_transform, str) else _LOG_NEEDS_POSITIVE)
        _check_non_negative(X, type(self).__name__, why)
        return np.log(X + self.offset_)

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        owner = type(self).__name__
        check_param(owner, "log_transform", self.log_transform, any_of(BOOL, one_of("auto")))
        estimator = self._make_classifier()
        self.offset_ = 0.0
        if isinstance(self.log_transform, str):
            self.log_ = bool(np.all(X >= 0))
        else:
            self.log_ = bool(self.log_transform)
            if self.log_:
                _check_non_negative(X, owner, _LOG_NEEDS_POSITIVE)
        if self.log_:
            self.offset_ = 1e-12 * max(float(np.median(X.max(axis=1))), _TINY / 1e-12)
        self.estimator_ = estimator.fit(self._transform(X), y)

    def _clean_fit_scores(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        # a forest's in-sample probabilities are optimistic: use the out-of-bag ones (the
        # trees that did not see the row); rows no tree left out keep the in-sample value
        scores = self._decision(X[y == 0])
        if isinstance(self.estimator_, RandomForestClassifier):
            oob = self.estimator_.oob_decision_function_[y == 0, 1]
            scores = np.where(np.isfinite(oob), oob, scores)
        return scores

    def _decision(self, X: np.ndarray) -> np.ndarray:
        proba = self.estimator_.predict_proba(self._transform(X))
        return proba[:, list(self.estimator_.classes_).index(1)]

    # ------------------------------------------------------------ torch mirror
    def head_inputs(self, X: np.ndarray) -> np.ndarray:
        """The columns the fitted classifier sees: log(X + offset_) or X (numpy)."""
        return self._transform(np.asarray(X, dtype=np.float64))

    def head_inputs_torch(self, X: torch.Tensor) -> torch.Tensor:
        """:meth:`head_inputs` as a differentiable torch function (float64)."""
        return torch.log(X + self.offset_) if getattr(self, "log_", bool(self.log_transform)) else X

    def has_torch_mirror(self) -> bool:
        """True for the naive Bayes head (a closed form); a random forest is piecewise constant."""
        return self.classifier == "naive_bayes"

    def _decision_torch(self, X: torch.Tensor) -> torch.Tensor:
        est = getattr(self, "estimator_", None)
        if not isinstance(est, GaussianNB):
            raise NoTorchMirrorError(
                "FisherSpectrumDetector with classifier='random_forest' has no differentiable mirror: a forest's "
                "probability is piecewise constant in the eigenvalues (zero gradient almost everywhere). Fit a "
                "differentiable surrogate on the same features, fisherscope.detectors.LogisticSurrogate(detector)"
                ".fit(X_fit, y_fit).calibrate(X_clean), attack it and judge success with the forest; or use "
                "classifier='naive_bayes', whose head is mirrored exactly."
            )
        z = self.head_inputs_torch(X)
        theta, var = as_torch(est.theta_, z), as_torch(est.var_, z)
        jll = (torch.log(as_torch(est.class_prior_, z))
               - 0.5 * torch.log(2.0 * torch.pi * var).sum(1)
               - 0.5 * ((z[:, None, :] - theta[None]) ** 2 / var[None]).sum(2))  # (N, classes)
        log_proba = jll - torch.logsumexp(jll, dim=1, keepdim=True)
        return log_proba[:, list(est.classes_).index(1)].exp()


class FisherScoreDetector(Detector):
    """Martin & Elster's detector: one parameter-space Fisher score as the decision.

    The score — the trace tr F_θ(x), the quadratic form vᵀF_θv or its normalised version —
    is larger on adversarial inputs (Martin & Elster, Fig. 1), so the decision is the score
    itself (or its logarithm), higher = more adversarial. Nothing is learned but the
    threshold: the detector is unsupervised and fits on clean rows.

    X is either one column (the score) or the (N, 3) output of
    :func:`fisherscope.features.param_fisher_scores` with its default columns
    ``("trace", "form", "normalized")``, of which ``statistic`` picks one; ``column`` picks
    a column of any other matrix of scores by index. Every entry of X must be ≥ 0 (Fisher
    traces and forms are).

    Parameters
    ----------
    statistic : {"trace", "form", "normalized"}
        Which score (column of the default ``param_fisher_scores`` output). Not called
        ``score``: that name is the estimator's AUROC method.
    column : int, optional
        Index of the score column in X; overrides ``statistic``'s position.
    log : bool
        Decide on log(score) (zeros map to log of the smallest positive float, keeping
        their rank). The ranking — hence AUROC and ``predict`` — is the same either way;
        log only changes the scale of ``decision_function`` and ``threshold_``.
    target_fpr : float
        False-positive rate on clean fitting rows at which ``threshold_`` is set.

    References
    ----------
    Martin, J., Elster, C. "Inspecting adversarial examples using the Fisher information."
    Neurocomputing 382 (2020), eqs. 4–8, Fig. 1.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> clean, adv = rng.lognormal(0, 1, (100, 3)), rng.lognormal(3, 1, (100, 3))
    >>> det = FisherScoreDetector(statistic="form").fit(clean)
    >>> X = np.vstack([clean, adv]); y = np.r_[np.zeros(100), np.ones(100)].astype(int)
    >>> det.score(X, y) > 0.9
    True
    """

    feature: ClassVar[str] = "param_fisher_scores"
    supervised: ClassVar[bool] = False

    def __init__(
        self,
        *,
        statistic: str = "trace",
        column: int | None = None,
        log: bool = False,
        target_fpr: float = 0.05,
    ) -> None:
        self.statistic = statistic
        self.column = column
        self.log = log
        super().__init__(target_fpr=target_fpr)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        return tags

    def _values(self, X: np.ndarray) -> np.ndarray:
        check_param(type(self).__name__, "statistic", self.statistic, one_of(*PARAM_FISHER_SCORES))
        _check_non_negative(X, type(self).__name__)
        return _named_column(X, self.statistic, PARAM_FISHER_SCORES, self.column,
                             type(self).__name__, "param_fisher_scores")

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        check_param(type(self).__name__, "log", self.log, BOOL)
        self._values(X)

    def _decision(self, X: np.ndarray) -> np.ndarray:
        s = self._values(X)
        return np.log(np.maximum(s, _TINY)) if self.log else s

    def _decision_torch(self, X: torch.Tensor) -> torch.Tensor:
        col = self.column if self.column is not None else (
            0 if X.shape[1] == 1 else PARAM_FISHER_SCORES.index(self.statistic))
        s = X[:, col]
        return torch.log(s.clamp_min(_TINY)) if self.log else s
