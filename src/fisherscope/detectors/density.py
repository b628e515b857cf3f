"""Feinman et al.'s baselines: kernel density (KD), Bayesian uncertainty (BU) and KD+BU.

Feature layouts (X columns):

- KD: ``[predicted class, h_1, ..., h_F]`` — :func:`fisherscope.features.penultimate`
  with ``with_prediction=True`` (column 0 is the model's prediction as a float holding an
  integer, the rest the last hidden layer).
- BU: ``[bu, ...]`` — :func:`fisherscope.features.mc_dropout`; column 0 is used, any
  further columns (the mean softmax) are ignored.
- KD+BU: ``[predicted class, h_1, ..., h_F, bu]`` —
  :func:`fisherscope.features.kdbu_features` (one model built with dropout: its eval-mode
  forward gives the features, its dropout passes BU), or :func:`join_kdbu` on the two
  arrays.

The Gaussian kernel density is computed here in numpy (float64, chunked, log-sum-exp):

    log f_c(h) = logsumexp_i ( −‖h − h_i‖² / (2 b²) ) − log n_c − (F/2) log(2π b²),

the sum running over the n_c clean fitting rows h_i of class c: the density of
scikit-learn's ``KernelDensity(kernel="gaussian", bandwidth=b)``, which Feinman et al.'s
code uses, but exact in the far tail where scikit-learn's tree summation is not
(scikit-learn issues #25799, #7492: with 20-d features and b = 0.3 we measured its
log-density 171 nats too high at a true value of −217; at b = 1 both agree to 1e-7), and
far-from-the-data points are exactly the adversarial ones. Scores of the fitting
rows themselves, for the threshold and for the logistic regression of KD+BU, leave the
row out of its own sum (its own kernel would make clean fitting rows look denser than
new clean inputs).

References
----------
Feinman, R., Curtin, R. R., Shintre, S., Gardner, A. B. "Detecting Adversarial Samples
from Artifacts." arXiv:1703.00410 (2017).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from .._batching import chunks
from .._validation import POSITIVE, any_of, check_param, one_of
from ..features.activations import join_kdbu
from .base import Detector, as_torch

__all__ = [
    "BayesianUncertaintyDetector",
    "KDBUDetector",
    "KernelDensityDetector",
    "gaussian_kde_logpdf",
    "join_kdbu",
    "linear_head_torch",
]

_BANDWIDTH_RULES = ("cv", "scott", "silverman")
_CHUNK = 1024  # query rows per distance block
#: candidate bandwidths of ``bandwidth="cv"``, relative to the pooled within-class std
_CV_GRID = np.logspace(-3.0, 1.0, 41)


def gaussian_kde_logpdf(
    query: np.ndarray, support: np.ndarray, bandwidth: float, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Log density of a Gaussian KDE on ``support`` at ``query`` rows, float64.

    Parameters
    ----------
    query : ndarray (M, F)
    support : ndarray (n, F)
    bandwidth : float
        Kernel standard deviation b > 0 (the same in every dimension).
    exclude : ndarray (M,) of int, optional
        Per query row, the index of a support row to leave out of its sum (−1: none);
        such rows are normalised by n − 1 (leave-one-out).

    Returns
    -------
    ndarray (M,)
        log( (1/n) Σ_i N(query; support_i, b² I) ).
    """
    query = np.asarray(query, dtype=np.float64)
    support = np.asarray(support, dtype=np.float64)
    n, f = support.shape
    norm = -0.5 * f * math.log(2.0 * math.pi * bandwidth**2)
    sq_support = np.einsum("ij,ij->i", support, support)
    out = np.empty(query.shape[0])
    for sl in chunks(query.shape[0], _CHUNK):
        q = query[sl]
        d2 = np.einsum("ij,ij->i", q, q)[:, None] + sq_support[None, :] - 2.0 * (q @ support.T)
        logk = -np.maximum(d2, 0.0) / (2.0 * bandwidth**2)
        count = np.full(q.shape[0], float(n))
        if exclude is not None:
            ex = np.asarray(exclude[sl])
            rows = np.nonzero(ex >= 0)[0]
            logk[rows, ex[rows]] = -np.inf
            count[rows] -= 1.0
        out[sl] = logsumexp(logk, axis=1) - np.log(count) + norm
    return out


def linear_head_torch(z: torch.Tensor, scaler: Any, classifier: Any) -> torch.Tensor:
    """``classifier.decision_function(scaler.transform(z))`` of a fitted StandardScaler and a
    binary LogisticRegression, as a differentiable torch function (float64)."""
    zs = (z - as_torch(scaler.mean_, z)) / as_torch(scaler.scale_, z)
    return zs @ as_torch(classifier.coef_[0], z) + float(classifier.intercept_[0])


def _check_classes(col: np.ndarray, owner: str) -> np.ndarray:
    bad = col != np.round(col)
    if bad.any():
        rows = np.nonzero(bad)[0]
        raise ValueError(
            f"{owner}: column 0 of X must hold the model's predicted class (an integer stored "
            "as a float), as made by fisherscope.features.penultimate(model, x, "
            f"with_prediction=True); got {col[rows[0]]!r} in rows {rows[:8].tolist()}"
            f"{' ...' if rows.size > 8 else ''}."
        )
    return col.astype(np.int64)


class _ClassKDE:
    """Per-class Gaussian KDE on clean rows, with its bandwidth rule (shared by KD and KD+BU)."""

    def __init__(self, owner: str, bandwidth: Any) -> None:
        self.owner = owner
        self.bandwidth = bandwidth

    def fit(self, X: np.ndarray) -> _ClassKDE:
        if X.shape[1] < 2:
            raise ValueError(
                f"{self.owner} needs X with the predicted class in column 0 and at least one "
                f"feature column; got {X.shape[1]} column(s)."
            )
        b = check_param(self.owner, "bandwidth", self.bandwidth, any_of(POSITIVE, one_of(*_BANDWIDTH_RULES)),
                    fix="Feinman et al. used 1.20 on MNIST for their network.")
        pred = _check_classes(X[:, 0], self.owner)
        feats = X[:, 1:]
        self.classes = np.unique(pred)
        self.supports = [feats[pred == c] for c in self.classes]
        sizes = np.array([s.shape[0] for s in self.supports])
        if (sizes < 2).any():
            few = {int(c): int(s) for c, s in zip(self.classes, sizes, strict=True) if s < 2}
            raise ValueError(
                f"{self.owner}: every predicted class needs at least 2 clean fitting rows for its "
                f"kernel density; class: rows = {few} (1 sample per class is too few). Fit on "
                "more clean data, or drop the rows predicted as those classes."
            )
        if isinstance(b, str):
            self.bandwidths = self._rule(b)
        else:
            self.bandwidths = np.full(self.classes.size, float(b))
        return self

    def _class_std(self, support: np.ndarray) -> float:
        return float(np.sqrt(support.var(axis=0, ddof=1).mean()))

    def _rule(self, rule: str) -> np.ndarray:
        f = self.supports[0].shape[1]
        if rule == "cv":
            dev = np.concatenate([s - s.mean(0) for s in self.supports])
            n_total = sum(s.shape[0] for s in self.supports)
            sigma = float(np.sqrt((dev**2).sum(0).sum() / (f * (n_total - self.classes.size))))
            if not sigma > 0:
                raise ValueError(
                    f"{self.owner}: the features are constant within every class, so no kernel "
                    "bandwidth can be chosen; check the feature columns of X."
                )
            grid = sigma * _CV_GRID
            loglik = np.zeros(grid.size)
            for s in self.supports:
                sq = np.einsum("ij,ij->i", s, s)
                d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (s @ s.T), 0.0)
                np.fill_diagonal(d2, np.inf)  # leave one out
                n = s.shape[0]
                for j, h in enumerate(grid):
                    loglik[j] += (logsumexp(-d2 / (2 * h * h), axis=1).sum()
                                  - n * (math.log(n - 1) + 0.5 * f * math.log(2 * math.pi * h * h)))
            best = int(np.argmax(loglik))
            if best in (0, grid.size - 1):
                warnings.warn(
                    f"{self.owner}: the cross-validated bandwidth {grid[best]:.4g} is at the edge "
                    f"of the searched range [{grid[0]:.4g}, {grid[-1]:.4g}]; pass bandwidth= "
                    "explicitly if it looks wrong.",
                    UserWarning,
                    stacklevel=4,
                )
            return np.full(self.classes.size, grid[best])
        out = []
        for c, s in zip(self.classes, self.supports, strict=True):
            sigma, n = self._class_std(s), s.shape[0]
            if not sigma > 0:
                raise ValueError(
                    f"{self.owner}: the features of class {int(c)} are constant, so the "
                    f"{rule} bandwidth is 0; pass bandwidth= explicitly or use 'cv'."
                )
            factor = n ** (-1.0 / (f + 4)) if rule == "scott" else (n * (f + 2) / 4.0) ** (-1.0 / (f + 4))
            out.append(sigma * factor)
        return np.asarray(out)

    def neg_log_density(self, X: np.ndarray) -> np.ndarray:
        """−log f_ŷ(h) per row of X = [ŷ, h...]."""
        if X.shape[1] != self.supports[0].shape[1] + 1:
            raise ValueError(
                f"{self.owner}: X has {X.shape[1]} columns but the kernel density was fitted on "
                f"{self.supports[0].shape[1] + 1} ([predicted class, features...])."
            )
        pred = _check_classes(X[:, 0], self.owner)
        unknown = np.setdiff1d(np.unique(pred), self.classes)
        if unknown.size:
            raise ValueError(
                f"{self.owner}: predicted class(es) {unknown.tolist()} had no clean fitting rows "
                f"(fitted classes: {self.classes.tolist()}); fit on clean data covering every "
                "class the model predicts."
            )
        out = np.empty(X.shape[0])
        for i, c in enumerate(self.classes):
            rows = pred == c
            if rows.any():
                out[rows] = -gaussian_kde_logpdf(X[rows, 1:], self.supports[i], self.bandwidths[i])
        return out

    def neg_log_density_torch(self, X: torch.Tensor) -> torch.Tensor:
        """:meth:`neg_log_density` as a differentiable torch function of X = [ŷ, h...] (float64).

        The class of each row is its column 0 (a constant of the graph); the gradient flows
        through h into the kernel sum of that class.
        """
        pred = _check_classes(X[:, 0].detach().cpu().numpy(), self.owner)
        unknown = np.setdiff1d(np.unique(pred), self.classes)
        if unknown.size:
            raise ValueError(f"{self.owner}: predicted class(es) {unknown.tolist()} had no clean fitting rows "
                             f"(fitted classes: {self.classes.tolist()}).")
        h = X[:, 1:]
        out = X.new_zeros(X.shape[0])
        pred_t = torch.as_tensor(pred, device=X.device)
        for i, c in enumerate(self.classes):  # loop over classes, not samples
            rows = torch.nonzero(pred_t == int(c)).flatten()
            if rows.numel() == 0:
                continue
            s = as_torch(self.supports[i], X)
            b = float(self.bandwidths[i])
            q = h[rows]
            d2 = (q * q).sum(1, keepdim=True) + (s * s).sum(1)[None] - 2.0 * (q @ s.T)
            logk = -d2.clamp_min(0.0) / (2.0 * b * b)
            norm = -0.5 * s.shape[1] * math.log(2.0 * math.pi * b * b)
            val = torch.logsumexp(logk, dim=1) - math.log(s.shape[0]) + norm
            out = out.index_put((rows,), -val)
        return out

    def loo_neg_log_density(self, X: np.ndarray) -> np.ndarray:
        """−log f_ŷ of the rows the KDE was fitted on (same X, same order), leaving each out."""
        pred = X[:, 0].astype(np.int64)
        out = np.empty(X.shape[0])
        for i, c in enumerate(self.classes):
            rows = pred == c
            s = self.supports[i]
            out[rows] = -gaussian_kde_logpdf(s, s, self.bandwidths[i], exclude=np.arange(s.shape[0]))
        return out


_BANDWIDTH_DOC = """bandwidth : float or {"cv", "scott", "silverman"}
        Kernel standard deviation. ``"cv"`` (default): one bandwidth shared by all classes
        (as Feinman et al. use), maximising the leave-one-out log-likelihood of the clean
        fitting rows summed over classes, over 41 values log-spaced from 1e-3 to 10 times
        the pooled within-class standard deviation (a warning if the best is at an end).
        ``"scott"`` / ``"silverman"``: per class, σ_c n_c^(−1/(F+4)) and
        σ_c (n_c (F + 2)/4)^(−1/(F+4)), σ_c the root mean per-feature variance of the
        class. A number sets it for every class: Feinman et al.'s 1.20 (MNIST), 0.26
        (CIFAR-10), 1.00 (SVHN) were tuned for their networks' last hidden layers and
        need not suit another model."""


class KernelDensityDetector(Detector):
    __doc__ = f"""Feinman et al.'s kernel density (KD) detector on last-hidden-layer features.

    One Gaussian kernel density per class is fitted on the features of the **clean**
    fitting rows predicted as that class; a sample is scored under the density of its
    predicted class, decision = −log f_ŷ(h) (higher = lower density = more adversarial).
    Unsupervised: adversarial rows passed to ``fit`` are ignored. The fitting rows' own
    scores (for ``threshold_``) leave each row out of its density.

    X = ``[predicted class, h_1, ..., h_F]`` (:func:`fisherscope.features.penultimate`).

    Parameters
    ----------
    {_BANDWIDTH_DOC}
    target_fpr : float
        False-positive rate on clean fitting rows at which ``threshold_`` is set.

    Attributes
    ----------
    kde_classes_ : ndarray
        The predicted classes with a density (every class in column 0 of the clean rows;
        each needs at least 2 rows).
    bandwidth_ : ndarray
        The bandwidth of each class, aligned with ``kde_classes_``.
    threshold_ : float

    References
    ----------
    Feinman et al. (2017), §4.1 (density estimates); bandwidths in their code
    (``rfeinman/detecting-adversarial-samples``).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> h = np.vstack([rng.normal(0, 1, (40, 3)), rng.normal(5, 1, (40, 3))])
    >>> X = np.c_[np.repeat([0.0, 1.0], 40), h]
    >>> det = KernelDensityDetector().fit(X)
    >>> det.decision_function(np.array([[0.0, 0, 0, 0], [0.0, 5, 5, 5]])).argmax().item()
    1
    """

    feature: ClassVar[str] = "penultimate"
    supervised: ClassVar[bool] = False

    def __init__(self, *, bandwidth: float | str = "cv", target_fpr: float = 0.05) -> None:
        self.bandwidth = bandwidth
        super().__init__(target_fpr=target_fpr)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.categorical = True  # column 0 is a class label
        return tags

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self.kde_ = _ClassKDE(type(self).__name__, self.bandwidth).fit(X[y == 0])
        self.kde_classes_ = self.kde_.classes
        self.bandwidth_ = self.kde_.bandwidths

    def _clean_fit_scores(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.kde_.loo_neg_log_density(X[y == 0])

    def _decision(self, X: np.ndarray) -> np.ndarray:
        return self.kde_.neg_log_density(X)

    def _decision_torch(self, X: torch.Tensor) -> torch.Tensor:
        return self.kde_.neg_log_density_torch(X)


class BayesianUncertaintyDetector(Detector):
    """Feinman et al.'s Bayesian uncertainty (BU) detector: the MC-dropout variance.

    The decision is column 0 of X, BU(x) = mean over classes of the variance over
    dropout passes of the softmax (:func:`fisherscope.features.mc_dropout`; further
    columns, the mean probabilities, are ignored; all must be ≥ 0); adversarial
    examples tend to have larger uncertainty (higher = more adversarial). Unsupervised:
    only the threshold is fitted, on clean rows.

    Parameters
    ----------
    target_fpr : float
        False-positive rate on clean fitting rows at which ``threshold_`` is set.

    References
    ----------
    Feinman et al. (2017), §4.2.

    Examples
    --------
    >>> import numpy as np
    >>> det = BayesianUncertaintyDetector().fit(np.linspace(0, 0.01, 100)[:, None])
    >>> det.predict(np.array([[0.001], [0.5]])).tolist()
    [0, 1]
    """

    feature: ClassVar[str] = "mc_dropout"
    supervised: ClassVar[bool] = False

    def __init__(self, *, target_fpr: float = 0.05) -> None:
        super().__init__(target_fpr=target_fpr)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        return tags

    def _bu(self, X: np.ndarray) -> np.ndarray:
        if np.any(X < 0):
            raise ValueError(
                "Negative values in data: X must be fisherscope.features.mc_dropout output (BU >= 0 "
                f"in column 0, then optionally mean probabilities); got minimum {X.min():.4g}."
            )
        return X[:, 0]

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self._bu(X)

    def _decision(self, X: np.ndarray) -> np.ndarray:
        return self._bu(X)

    def _decision_torch(self, X: torch.Tensor) -> torch.Tensor:
        return X[:, 0]


class KDBUDetector(Detector):
    __doc__ = f"""Feinman et al.'s combined detector: logistic regression on [KD, BU].

    A per-class kernel density (as :class:`KernelDensityDetector`) is fitted on the clean
    fitting rows; every fitting row gets its KD score −log f_ŷ(h) (clean rows leave
    themselves out) and its BU; ``Pipeline(StandardScaler(), LogisticRegression(C))`` is
    fitted on these two columns of the fitting rows only — unlike the authors' code,
    which z-scores over the whole test pool and scores the regression on its own training
    samples. The decision is the regression's log-odds of "adversarial".

    X = ``[predicted class, h_1, ..., h_F, bu]`` (:func:`fisherscope.features.kdbu_features`,
    or :func:`join_kdbu` of ``penultimate`` and ``mc_dropout`` arrays).

    Parameters
    ----------
    {_BANDWIDTH_DOC}
    C : float
        Inverse L2 regularisation strength of the logistic regression.
    target_fpr : float
        False-positive rate on clean fitting rows at which ``threshold_`` is set.

    Attributes
    ----------
    kde_classes_, bandwidth_ : ndarray
        As in :class:`KernelDensityDetector`.
    pipeline_ : Pipeline
        The fitted scaler and logistic regression on [KD, BU].
    threshold_ : float

    References
    ----------
    Feinman et al. (2017), §5 (combining density and uncertainty).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> h = rng.normal(0, 1, (80, 3)); cls = np.repeat([0.0, 1.0], 40)
    >>> clean = join_kdbu(np.c_[cls, h], rng.uniform(0, 0.01, 80))
    >>> adv = join_kdbu(np.c_[cls, h + 4], rng.uniform(0.02, 0.05, 80))
    >>> X, y = np.vstack([clean, adv]), np.r_[np.zeros(80), np.ones(80)].astype(int)
    >>> KDBUDetector().fit(X, y).score(X, y) > 0.95
    True
    """

    feature: ClassVar[str] = "kdbu_features"
    supervised: ClassVar[bool] = True

    def __init__(self, *, bandwidth: float | str = "cv", C: float = 1.0,
                 target_fpr: float = 0.05) -> None:
        self.bandwidth = bandwidth
        self.C = C
        super().__init__(target_fpr=target_fpr)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.categorical = True  # column 0 is a class label
        return tags

    def _split(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if X.shape[1] < 3:
            raise ValueError(
                f"{type(self).__name__} expects X = [predicted class, features..., bu] with at "
                f"least 3 columns (fisherscope.features.kdbu_features builds it); got {X.shape[1]}."
            )
        return X[:, :-1], X[:, -1]

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        check_param(type(self).__name__, "C", self.C, POSITIVE)
        kd_x, bu = self._split(X)
        clean = y == 0
        self.kde_ = _ClassKDE(type(self).__name__, self.bandwidth).fit(kd_x[clean])
        self.kde_classes_ = self.kde_.classes
        self.bandwidth_ = self.kde_.bandwidths
        kd = np.empty(X.shape[0])
        kd[clean] = self.kde_.loo_neg_log_density(kd_x[clean])
        kd[~clean] = self.kde_.neg_log_density(kd_x[~clean])
        z = np.c_[kd, bu]
        self.pipeline_: Pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=self.C))
        self.pipeline_.fit(z, y)
        self._clean_z = z[clean]  # out-of-sample KD of the clean rows, for the threshold

    def _clean_fit_scores(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        z = self.__dict__.pop("_clean_z")
        return self.pipeline_.decision_function(z)

    def _decision(self, X: np.ndarray) -> np.ndarray:
        kd_x, bu = self._split(X)
        return self.pipeline_.decision_function(np.c_[self.kde_.neg_log_density(kd_x), bu])

    def _decision_torch(self, X: torch.Tensor) -> torch.Tensor:
        z = torch.stack([self.kde_.neg_log_density_torch(X[:, :-1]), X[:, -1]], dim=1)
        scaler, lr = self.pipeline_[0], self.pipeline_[-1]
        return linear_head_torch(z, scaler, lr)
