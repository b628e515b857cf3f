"""The detector evaluation protocol: honest AUROC / AUPR / TPR at a fixed FPR, with intervals.

:func:`evaluate_detectors` takes a model, clean images, attacks and detectors and returns a
:class:`DetectionResult`. The rules, and why:

1. **Positives.** An attack runs on the images the model classifies correctly (or a
   precomputed adversarial set aligned with ``x`` is given); predictions are recomputed
   here. A positive is an adversarial example that is misclassified (prediction ≠ y) and
   was made from a correctly classified image — failed attacks and images the model
   already got wrong never count (Feinman et al.'s and Ma et al.'s rule; counting
   failures as positives rewards a detector for spotting perturbations that did nothing).
2. **Negatives.** The clean images (by default the correctly classified ones, the sources
   of the positives; ``clean="all"`` keeps every image). **Noise-matched negatives** are a
   control: for each positive, the source image plus Gaussian noise whose *applied* L2
   norm (after clipping to the bounds) equals the adversarial's applied L2 norm
   (:func:`matched_noise`). A detector that flags these is detecting "perturbed", not
   "adversarial".
3. **Disjoint splits by source image.** Every image goes to one of fit / calibrate / test
   (fractions ``splits``, stratified by label: :func:`source_splits`), and its clean row,
   its adversarials under every attack and its noise rows go with it. Everything fitted —
   scalers, kernel bandwidths, classifiers, reference sets — sees the fit split only; the
   threshold is set on the calibration split's clean rows at ``target_fpr``; every
   reported number comes from the test split. The reference code of KD / BU / LID /
   Mahalanobis fits scalers or classifiers on the rows it scores (reference study §5).
4. **Metrics** (adversarial = positive, on the test split): AUROC, AUPR (average
   precision), TPR at the calibrated threshold and the false-positive rate that threshold
   actually reaches on the test clean rows (it is set on other images, so it is not exactly
   ``target_fpr``). 95% intervals are percentile bootstrap intervals over the test *source
   images* (an image brings its clean row and its adversarial together), conditional on
   the fitted detector and threshold. Controls: AUROC of adversarial vs noise-matched rows
   and the fraction of noise rows flagged at the threshold.
5. **Seen and unseen attacks.** The table trains and tests each supervised detector on the
   same attack; the cross-attack matrix trains on attack A (fit split) and tests on attack B
   (test split), Zhao et al.'s Table 5 and the "attack-oblivious" question of Feinman et
   al.'s issue #6. Unsupervised detectors fit on clean rows only, so they have no matrix.

6. **Settings.** Every row has a ``setting``: ``"oblivious"`` (the attacks above, which ignore
   the detector), ``"cw_kappa=K"`` (high-confidence C&W with confidence κ = K, a
   detector-agnostic baseline: ``kappa_sweep``; supervised detectors are trained on that
   attack) and ``"adaptive"`` (``adaptive=True``: :class:`~fisherscope.attacks.DetectorAwarePGD`
   against the fitted detector and its threshold, with the ε and norm of the oblivious attack;
   see :mod:`fisherscope.evaluation.adaptive`). Every row has ``evasion_rate``: of the
   correctly classified test images, the fraction whose adversarial is misclassified **and**
   scored at most the threshold (undetected), judged by the real detector.

Features are computed once per (feature function, model, input rows) — clean rows once for
all attacks and detectors that share a feature — and a ``feature_cache`` dict can carry them
across calls (keys include a digest of the input tensor, so a changed attack never reuses
stale features). Feature arrays stay in memory; :meth:`DetectionResult.to_records` holds
only numbers fit for a results store.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import warnings
import zlib
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, cast

import numpy as np
import torch
from scipy import sparse
from sklearn.base import clone
from sklearn.metrics import roc_curve
from torch import Tensor, nn

from .._batching import check_batch_size, chunks, in_batches, per_sample, predict
from .._progress import stage, track
from .._random import randn
from .._validation import (
    BOOL,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    check_inputs,
    check_labels,
    check_logits,
    check_params,
    eval_mode,
    one_of,
    real,
)
from ..attacks.base import Attack

__all__ = [
    "DetectionMetrics",
    "DetectionResult",
    "DetectorSpec",
    "Feature",
    "detection_metrics",
    "evaluate_detectors",
    "matched_noise",
    "source_splits",
]

log = logging.getLogger(__name__)

SPLIT_NAMES = ("fit", "calibrate", "test")
_METRICS = ("auroc", "aupr", "tpr", "fpr")


# =============================================================================== splits


def source_splits(y: Any, fractions: Sequence[float] = (0.5, 0.25, 0.25), seed: int = 0) -> np.ndarray:
    """Assign each source image to fit (0), calibrate (1) or test (2), stratified by label.

    Within each class the images are permuted (seeded) and cut at the cumulative
    fractions, rounded; so every split holds about the same class proportions and an image
    is in exactly one split.

    Parameters
    ----------
    y : array or Tensor, shape (N,)
        Labels (int).
    fractions : (float, float, float)
        Fit, calibrate and test fractions, each > 0, summing to 1.
    seed : int
        Seed of the permutation.

    Returns
    -------
    ndarray (N,) int8
        0 = fit, 1 = calibrate, 2 = test.

    Examples
    --------
    >>> s = source_splits(np.repeat(np.arange(2), 8), (0.5, 0.25, 0.25))
    >>> np.bincount(s).tolist()
    [8, 4, 4]
    """
    f = _check_fractions(fractions)
    labels = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y)
    if labels.ndim != 1:
        raise ValueError(f"y must be 1-D (N,); got shape {labels.shape}.")
    rng = np.random.default_rng(seed)
    out = np.empty(labels.shape[0], dtype=np.int8)
    cuts = np.cumsum(f)[:2]
    for c in np.unique(labels):  # loop over classes
        idx = rng.permutation(np.flatnonzero(labels == c))
        a, b = (np.round(cuts * idx.size)).astype(int)
        out[idx[:a]], out[idx[a:b]], out[idx[b:]] = 0, 1, 2
    return out


def _check_fractions(fractions: Any) -> np.ndarray:
    try:
        f = np.asarray(fractions, dtype=np.float64)
    except (TypeError, ValueError):
        f = np.array([])
    if f.shape != (3,) or not np.all(np.isfinite(f)) or np.any(f <= 0) or abs(f.sum() - 1.0) > 1e-6:
        raise ValueError(
            "splits must be three fractions (fit, calibrate, test), each > 0, summing to 1, "
            f"e.g. (0.5, 0.25, 0.25); got {fractions!r}."
        )
    return f


# =============================================================================== noise


def matched_noise(
    x: Tensor,
    x_adv: Tensor,
    *,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    max_halvings: int = 64,
) -> Tensor:
    """Gaussian noise around ``x`` with, per sample, the L2 norm of ``x_adv − x``, after clipping.

    A Gaussian direction z (unit L2 norm) is drawn per sample and scaled by s ≥ 0 so that
    ``‖clip(x + s z) − x‖₂ = ‖x_adv − x‖₂``: the *applied* norms match, which matters on
    MNIST where clipping removes a large part of a nominal perturbation (most pixels sit at
    0 or 1). The applied norm is non-decreasing and 1-Lipschitz in s, so a per-sample
    bisection (batched, float64) finds s to round-off. Rows whose target norm cannot be
    reached even with the noise pushed to the bounds (extremely large perturbations) get
    the saturated noise and a warning.

    Parameters
    ----------
    x, x_adv : Tensor
        Clean and adversarial inputs of the same shape (N, ...), inside ``bounds``.
    generator : torch.Generator, optional
        Source of the Gaussian directions.
    bounds : (float, float)
        Admissible input range.
    max_halvings : int
        Bisection steps (64 reaches float64 round-off).

    Returns
    -------
    Tensor
        Noisy inputs shaped like ``x``, dtype of ``x``, inside ``bounds``.

    Shapes
    ------
    x, x_adv: (N, ...) -> (N, ...).

    References
    ----------
    Feinman et al. "Detecting Adversarial Samples from Artifacts." arXiv:1703.00410 (noisy
    negatives with the adversarial perturbation size); Zhao et al. AAAI 2019, §4 (clean and
    noisy samples among the negatives).

    Examples
    --------
    >>> x = torch.full((2, 1, 4, 4), 0.5)
    >>> x_adv = x.clone(); x_adv[0, 0, 0, 0] = 1.0
    >>> noisy = matched_noise(x, x_adv, generator=torch.Generator().manual_seed(0))
    >>> [round(float(v), 6) for v in (noisy - x).flatten(1).norm(dim=1)]
    [0.5, 0.0]
    """
    if not isinstance(x, Tensor) or not isinstance(x_adv, Tensor) or x.shape != x_adv.shape:
        raise ValueError(
            "x and x_adv must be tensors of the same shape (N, ...); got "
            f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(x_adv, 'shape', ()))}."
        )
    lo_b, hi_b = bounds
    x64 = x.detach().to(torch.float64)
    target = (x_adv.detach().to(torch.float64) - x64).flatten(1).norm(dim=1)
    z = randn(tuple(x.shape), generator=generator, like=x, dtype=torch.float64)
    z = z / per_sample(z.flatten(1).norm(dim=1).clamp_min(1e-300), x)

    def applied(s: Tensor) -> Tensor:
        return ((x64 + per_sample(s, x) * z).clamp(lo_b, hi_b) - x64).flatten(1).norm(dim=1)

    # applied(s) <= s (clipping onto a box around x is non-expansive): s = target is a lower end
    lo = target.clone()
    hi = target.clone()
    reach = applied(torch.full_like(target, 1e6 * (hi_b - lo_b) * math.sqrt(z[0].numel())))
    short = reach < target * (1 - 1e-12)
    hi = torch.where(short, torch.full_like(hi, 1e6 * (hi_b - lo_b) * math.sqrt(z[0].numel())), hi)
    for _ in range(200):  # grow the upper end until it reaches the target norm
        need = (applied(hi) < target) & ~short
        if not bool(need.any()):
            break
        hi = torch.where(need, hi * 2 + 1e-12, hi)
    for _ in range(max_halvings):
        mid = (lo + hi) / 2
        up = applied(mid) >= target
        hi = torch.where(up, mid, hi)
        lo = torch.where(up, lo, mid)
    if bool(short.any()):
        warnings.warn(
            f"{int(short.sum())} noise row(s) cannot reach the adversarial L2 norm inside the "
            "bounds; they get the largest norm the box allows.",
            UserWarning,
            stacklevel=2,
        )
    # bisection leaves applied(hi) >= target within one ulp-scale bracket; interpolate
    a_lo, a_hi = applied(lo), applied(hi)
    w = torch.where(a_hi > a_lo, (target - a_lo) / (a_hi - a_lo), torch.ones_like(a_hi)).clamp(0, 1)
    s = torch.where(short, hi, lo + w * (hi - lo))
    s = torch.where(target == 0, torch.zeros_like(s), s)
    out = (x64 + per_sample(s, x) * z).clamp(lo_b, hi_b)
    return out.to(x.dtype)


# =============================================================================== metrics


@dataclass(frozen=True)
class DetectionMetrics:
    """Point estimates and bootstrap intervals of one detector on one scored set.

    Attributes
    ----------
    auroc, aupr : float
        Area under the ROC curve; average precision (adversarial = positive), as
        ``sklearn.metrics.roc_auc_score`` / ``average_precision_score``.
    tpr, fpr : float
        Fraction of positives / negatives with a score strictly above ``threshold``.
    threshold : float
    ci : dict
        ``{metric: (low, high)}`` percentile bootstrap interval at ``confidence``
        (NaN without bootstrap).
    n_neg, n_pos : int
    n_bootstrap : int
    confidence : float
    """

    auroc: float
    aupr: float
    tpr: float
    fpr: float
    threshold: float
    ci: dict[str, tuple[float, float]]
    n_neg: int
    n_pos: int
    n_bootstrap: int
    confidence: float


def _level_weights(w: np.ndarray, idx: np.ndarray, n_levels: int) -> np.ndarray:
    """(B, n) row weights -> (B, L) weight per score level (sparse one-hot product)."""
    onehot = sparse.csr_matrix(
        (np.ones(idx.size), (np.arange(idx.size), idx)), shape=(idx.size, n_levels)
    )
    return np.asarray((onehot.T @ w.T).T)


def _weighted_metrics(neg: np.ndarray, pos: np.ndarray, threshold: float, wn: np.ndarray,
                      wp: np.ndarray) -> dict[str, np.ndarray]:
    """AUROC, AP, TPR, FPR for B weightings of the rows at once; each (B,)."""
    levels, inv = np.unique(np.concatenate([neg, pos]), return_inverse=True)
    inv = inv.ravel()
    nw = _level_weights(wn, inv[: neg.size], levels.size)
    pw = _level_weights(wp, inv[neg.size :], levels.size)
    n_tot, p_tot = nw.sum(1), pw.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        below = np.cumsum(nw, axis=1) - nw
        auroc = (pw * (below + 0.5 * nw)).sum(1) / (n_tot * p_tot)
        tp = np.cumsum(pw[:, ::-1], axis=1)[:, ::-1]  # positive weight at scores >= level
        fp = np.cumsum(nw[:, ::-1], axis=1)[:, ::-1]
        prec = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1.0), 0.0)
        aupr = (pw * prec).sum(1) / p_tot
        tpr = (wp * (pos > threshold)).sum(1) / p_tot
        fpr = (wn * (neg > threshold)).sum(1) / n_tot
    return {"auroc": auroc, "aupr": aupr, "tpr": tpr, "fpr": fpr}


def detection_metrics(
    neg_scores: Any,
    pos_scores: Any,
    threshold: float = math.inf,
    *,
    neg_groups: Any = None,
    pos_groups: Any = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> DetectionMetrics:
    """AUROC, AUPR, TPR and FPR at a threshold, with percentile bootstrap intervals.

    Adversarial (``pos_scores``) is the positive class; higher scores mean more
    adversarial. Ties count one half in the AUROC; AUPR is the average precision over the
    distinct score levels (both equal scikit-learn's ``roc_auc_score`` and
    ``average_precision_score``). TPR / FPR count scores strictly above ``threshold``
    (the :class:`~fisherscope.detectors.Detector` ``predict`` rule).

    The bootstrap resamples *groups* with replacement when ``neg_groups`` /
    ``pos_groups`` are given (ids of the source images: an image's clean row and its
    adversarial are drawn together, so the interval respects the pairing), otherwise the
    negatives and the positives separately (stratified). All replicates are computed at
    once as weighted metrics (no loop over replicates or samples).

    Parameters
    ----------
    neg_scores, pos_scores : array (n,), (m,)
        Finite detector scores of negatives and positives.
    threshold : float
        Decision threshold for TPR / FPR (default inf: both 0).
    neg_groups, pos_groups : array of int, optional
        Group (source image) of each row; both or neither.
    n_bootstrap : int
        Replicates (0: no intervals, NaN).
    confidence : float
        Coverage of the percentile interval.
    seed : int
        Seed of the resampling.

    Returns
    -------
    DetectionMetrics

    Examples
    --------
    >>> m = detection_metrics([0.1, 0.2, 0.3], [0.25, 0.9], threshold=0.25, n_bootstrap=0)
    >>> round(m.auroc, 4), m.tpr, round(m.fpr, 4)
    (0.8333, 0.5, 0.3333)
    """
    neg = np.asarray(neg_scores, dtype=np.float64).ravel()
    pos = np.asarray(pos_scores, dtype=np.float64).ravel()
    if not (np.all(np.isfinite(neg)) and np.all(np.isfinite(pos))):
        raise ValueError("detector scores contain NaN or inf; check the features and the detector.")
    check_params("detection_metrics", {"threshold": threshold, "n_bootstrap": n_bootstrap, "confidence": confidence}, {
        "threshold": real(finite=False),
        "n_bootstrap": NON_NEGATIVE_INT.but(expected="an integer >= 0 (0: no intervals)"),
        "confidence": real(gt=0, lt=1),
    })
    if (neg_groups is None) != (pos_groups is None):
        raise ValueError("pass both neg_groups and pos_groups, or neither.")
    nan2 = (math.nan, math.nan)
    if neg.size == 0 or pos.size == 0:
        nan = math.nan
        return DetectionMetrics(nan, nan, nan, nan, float(threshold), dict.fromkeys(_METRICS, nan2),
                                int(neg.size), int(pos.size), int(n_bootstrap), confidence)
    point = _weighted_metrics(neg, pos, threshold, np.ones((1, neg.size)), np.ones((1, pos.size)))
    ci = dict.fromkeys(_METRICS, nan2)
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        if neg_groups is None:
            wn = rng.multinomial(neg.size, np.full(neg.size, 1.0 / neg.size), size=n_bootstrap)
            wp = rng.multinomial(pos.size, np.full(pos.size, 1.0 / pos.size), size=n_bootstrap)
        else:
            gn = np.asarray(neg_groups).ravel()
            gp = np.asarray(pos_groups).ravel()
            if gn.shape != neg.shape or gp.shape != pos.shape:
                raise ValueError("neg_groups / pos_groups need one group id per score.")
            groups, inv = np.unique(np.concatenate([gn, gp]), return_inverse=True)
            counts = rng.multinomial(groups.size, np.full(groups.size, 1.0 / groups.size),
                                     size=n_bootstrap)
            wn, wp = counts[:, inv[: gn.size]], counts[:, inv[gn.size :]]
        reps = _weighted_metrics(neg, pos, threshold, wn.astype(np.float64), wp.astype(np.float64))
        q = 100 * np.array([(1 - confidence) / 2, (1 + confidence) / 2])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN replicate columns
            ci = {k: (float(lo), float(hi)) for k in _METRICS for lo, hi in [np.nanpercentile(reps[k], q)]}
    return DetectionMetrics(
        auroc=float(point["auroc"][0]), aupr=float(point["aupr"][0]), tpr=float(point["tpr"][0]),
        fpr=float(point["fpr"][0]), threshold=float(threshold), ci=ci, n_neg=int(neg.size),
        n_pos=int(pos.size), n_bootstrap=int(n_bootstrap), confidence=float(confidence),
    )


# =============================================================================== features


@dataclass(frozen=True, eq=False)
class Feature:
    """A feature builder: a :mod:`fisherscope.features` function (by name) or a callable.

    Called as ``fn(model, x, **kwargs)`` (or ``fn(x, **kwargs)`` for functions whose first
    parameter is ``x``, e.g. ``pixels``) and must return an array (N, n_features).
    Functions that take a ``generator`` get a fresh ``torch.Generator`` seeded with the
    protocol's seed (e.g. ``mc_dropout``), unless ``kwargs`` has one.

    Parameters
    ----------
    fn : str or callable
        Name of a function of :mod:`fisherscope.features` or a callable.
    model : nn.Module, optional
        The model to compute the feature with (default: the attacked model), e.g. the same
        weights built with dropout > 0 for MC dropout.
    kwargs : dict
        Keyword arguments of ``fn``.

    Examples
    --------
    >>> f = Feature("fisher_eigenvalues", kwargs={"k": 9})
    """

    fn: str | Callable[..., Any]
    model: nn.Module | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self) -> Callable[..., Any]:
        if callable(self.fn):
            return self.fn
        from .. import features as _features

        fn = getattr(_features, str(self.fn), None)
        if not callable(fn) or str(self.fn).startswith("_"):
            names = [n for n in _features.__all__ if callable(getattr(_features, n)) and n[0].islower()]
            raise ValueError(f"unknown feature {self.fn!r}; name one of fisherscope.features {names} "
                             "or pass a callable (model, x) -> array.")
        return fn

    def key(self, default_model: nn.Module) -> tuple[Any, ...]:
        kw = tuple(sorted((k, repr(v)) for k, v in self.kwargs.items()))
        return (self.fn, id(self.model or default_model), kw)

    def compute(self, default_model: nn.Module, x: Tensor, seed: int) -> np.ndarray:
        fn = self.resolve()
        kwargs = dict(self.kwargs)
        try:
            params: Mapping[str, inspect.Parameter] = inspect.signature(fn).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins
            params = {}
        if "generator" in params and "generator" not in kwargs:
            kwargs["generator"] = torch.Generator().manual_seed(int(seed))
        first = next(iter(params), None)
        out = fn(x, **kwargs) if first == "x" else fn(self.model or default_model, x, **kwargs)
        arr = np.asarray(out, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[0] != x.shape[0]:
            raise ValueError(f"feature {self.fn!r} returned shape {arr.shape} for {x.shape[0]} inputs; "
                             "it must return (N, n_features).")
        return arr


FeatureLike = str | Callable[..., Any] | Feature


@dataclass(frozen=True, eq=False)
class DetectorSpec:
    """An unfitted detector and how to make its features.

    Parameters
    ----------
    detector : Detector
        Unfitted; the protocol fits ``sklearn.base.clone`` copies of it.
    features : str, callable, Feature or sequence of them, optional
        The feature (default: the detector's ``feature`` name with default arguments, on
        the attacked model). A sequence concatenates the columns of each part, e.g.
        ``(Feature("penultimate"), Feature("mc_dropout", model=dropout_model))`` is the
        ``[predicted class, h..., bu]`` layout of KD+BU; each part is cached on its own.
    fit_noise : bool
        Add the fit split's noise-matched rows to the negatives the detector is fitted on
        (Zhao et al. §4: "the set of negative samples should contain both the normal
        samples and noisy samples"). Unsupervised detectors then treat them as clean.

    Examples
    --------
    >>> from fisherscope.detectors import FisherSpectrumDetector
    >>> spec = DetectorSpec(FisherSpectrumDetector(random_state=0),
    ...                     Feature("fisher_eigenvalues", kwargs={"k": 20}), fit_noise=True)
    """

    detector: Any
    features: FeatureLike | Sequence[FeatureLike] | None = None
    fit_noise: bool = False

    def parts(self) -> list[Feature]:
        f = self.features
        if f is None:
            name = getattr(self.detector, "feature", "")
            if not name:
                raise ValueError(f"{type(self.detector).__name__} names no feature; pass features=.")
            return [Feature(name)]
        items: list[FeatureLike] = list(f) if isinstance(f, list | tuple) else [cast(FeatureLike, f)]
        return [p if isinstance(p, Feature) else Feature(p) for p in items]


def _as_spec(name: str, value: Any) -> DetectorSpec:
    from ..detectors import Detector

    if isinstance(value, DetectorSpec):
        spec = value
    elif isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], Detector):
        spec = DetectorSpec(value[0], value[1])
    else:
        spec = DetectorSpec(value)
    if not isinstance(spec.detector, Detector):
        raise TypeError(
            f"detectors[{name!r}] must be an unfitted fisherscope Detector, a (Detector, features) "
            f"pair or a DetectorSpec; got {type(spec.detector).__name__}."
        )
    if spec.fit_noise and not spec.detector.supervised:
        raise ValueError(
            f"detectors[{name!r}]: fit_noise=True adds the noise rows of the attack a detector is "
            f"trained on, but {type(spec.detector).__name__} is unsupervised (fits on clean rows "
            "only); drop fit_noise."
        )
    return spec


def _digest(x: Tensor) -> str:
    arr = x.detach().cpu().contiguous().numpy()
    h = hashlib.sha1(arr.tobytes())
    h.update(repr((arr.shape, arr.dtype.str)).encode())
    return h.hexdigest()


class _Features:
    """Features of row sets, computed once per (feature, model, kwargs, rows digest)."""

    def __init__(self, model: nn.Module, seed: int, cache: MutableMapping[Any, np.ndarray] | None):
        self.model = model
        self.seed = seed
        self.cache: MutableMapping[Any, np.ndarray] = {} if cache is None else cache

    def get(self, parts: list[Feature], x: Tensor) -> np.ndarray:
        if x.shape[0] == 0:
            return np.zeros((0, 0))
        digest = _digest(x)
        cols = []
        for part in parts:
            key = (*part.key(self.model), digest)
            if key not in self.cache:
                with stage(f"features {getattr(part.fn, '__name__', part.fn)} ({x.shape[0]} images)"):
                    self.cache[key] = part.compute(self.model, x, self.seed)
            cols.append(self.cache[key])
        return np.concatenate(cols, axis=1)


# =============================================================================== result


@dataclass(frozen=True)
class DetectionResult:
    """What :func:`evaluate_detectors` measured.

    Attributes
    ----------
    rows : list of dict
        The seen-attack table, one dict per (detector, attack): ``auroc, aupr, tpr`` (at the
        calibrated threshold), ``fpr`` (reached on the test clean rows), each with
        ``_lo`` / ``_hi`` bootstrap bounds; ``threshold, target_fpr``; counts ``n_pos,
        n_neg`` (test), ``n_pos_fit, n_neg_fit, n_neg_cal``; controls ``auroc_noise``
        (adversarial vs noise-matched, test) and ``noise_flagged``; ``supervised`` and
        ``error`` (None, or why the cell has no numbers).
    cross : dict
        ``{detector: {train attack: {test attack: {"auroc", "aupr", "tpr", "fpr"}}}}`` for
        supervised detectors (the diagonal equals the table); empty with
        ``cross_attack=False``.
    attacks : dict
        Per attack: ``n_images, n_correct, n_success, success_rate`` (of the correctly
        classified), L2 statistics of the positives and of the noise rows, positives per
        split.
    roc : dict
        ``{(detector, attack): (fpr, tpr)}`` ROC curves on the test split.
    scores : dict
        ``{(detector, attack): {"neg", "pos", "noise"}}`` test-split scores (arrays).
    split : ndarray (N,)
        0 fit, 1 calibrate, 2 test, per source image.
    correct : ndarray (N,) bool
        Source images the model classifies correctly.
    positives : dict
        ``{attack: (N,) bool}``: the images whose adversarial is a positive.
    settings : dict
        The protocol's parameters (splits, target_fpr, n_bootstrap, confidence, seed, clean,
        noise_negatives, adaptive, kappa_sweep).
    extra_attacks : dict
        Statistics of the attacks of the other settings, ``{"setting|attack": stats}`` (the
        κ-sweep C&W attacks: as ``attacks``; the adaptive attacks: per detector, in the rows).

    Every row has ``setting`` (``"oblivious"``, ``"cw_kappa=K"`` or ``"adaptive"``) and
    ``evasion_rate``; :meth:`row` and :meth:`table` read the oblivious rows unless told
    otherwise.
    """

    rows: list[dict[str, Any]]
    cross: dict[str, dict[str, dict[str, dict[str, float]]]]
    attacks: dict[str, dict[str, Any]]
    roc: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]
    scores: dict[tuple[str, str], dict[str, np.ndarray]]
    split: np.ndarray
    correct: np.ndarray
    positives: dict[str, np.ndarray]
    settings: dict[str, Any]
    extra_attacks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def detectors(self) -> list[str]:
        return list(dict.fromkeys(r["detector"] for r in self.rows))

    @property
    def setting_names(self) -> list[str]:
        """The settings present, in row order (``"oblivious"`` first)."""
        return list(dict.fromkeys(r.get("setting", "oblivious") for r in self.rows))

    @property
    def attack_names(self) -> list[str]:
        return list(self.attacks)

    def row(self, detector: str, attack: str, setting: str = "oblivious") -> dict[str, Any]:
        """The table row of one (detector, attack, setting)."""
        for r in self.rows:
            if r["detector"] == detector and r["attack"] == attack and r.get("setting", "oblivious") == setting:
                return r
        raise KeyError(f"no row for detector {detector!r}, attack {attack!r} and setting {setting!r}; detectors "
                       f"{self.detectors}, attacks {self.attack_names}, settings {self.setting_names}.")

    def table(self, metric: str = "auroc", setting: str = "oblivious") -> dict[str, dict[str, float]]:
        """``{detector: {attack: value}}`` of one metric (``auroc``, ``aupr``, ``tpr``,
        ``evasion_rate``, ...) in one setting."""
        out: dict[str, dict[str, float]] = {}
        for r in self.rows:
            if r.get("setting", "oblivious") == setting:
                out.setdefault(r["detector"], {})[r["attack"]] = r.get(metric, math.nan)
        return out

    def cross_matrix(self, detector: str, metric: str = "auroc") -> np.ndarray:
        """(train attack × test attack) array of ``metric`` for a supervised detector."""
        if detector not in self.cross:
            raise KeyError(f"no cross-attack matrix for {detector!r} (unsupervised detectors have "
                           f"none); available: {sorted(self.cross)}.")
        names = self.attack_names
        m = self.cross[detector]
        return np.array([[m.get(a, {}).get(b, {}).get(metric, math.nan) for b in names] for a in names])

    def to_records(self) -> list[dict[str, Any]]:
        """JSON-ready numbers (no arrays): table rows, then cross entries, then attacks."""
        recs: list[dict[str, Any]] = [{"kind": "table", **_plain(r)} for r in self.rows]
        for det, m in self.cross.items():
            for a, row in m.items():
                for b, vals in row.items():
                    recs.append({"kind": "cross", "detector": det, "train": a, "test": b, **_plain(vals)})
        for a, stats in self.attacks.items():
            recs.append({"kind": "attack", "attack": a, "setting": "oblivious", **_plain(stats)})
        for key, stats in self.extra_attacks.items():
            setting, a = key.split("|", 1)
            recs.append({"kind": "attack", "attack": a, "setting": setting, **_plain(stats)})
        return recs

    def to_markdown(self, metric: str = "auroc", *, percent: bool = True, ci: bool = True,
                    cross: bool = True) -> str:
        """Markdown: the detector × attack table of ``metric`` (with intervals), TPR at the
        threshold with the FPR reached, counts, and the cross-attack matrices."""
        scale = 100.0 if percent else 1.0
        attacks = self.attack_names

        def fmt(r: dict[str, Any], m: str, with_ci: bool) -> str:
            if r.get("error"):
                return "error"
            v = r.get(m, math.nan)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return "–"
            s = f"{scale * v:.2f}" if percent else f"{v:.4f}"
            lo, hi = r.get(f"{m}_lo", math.nan), r.get(f"{m}_hi", math.nan)
            if with_ci and lo is not None and not math.isnan(lo):
                s += f" [{scale * lo:.1f}, {scale * hi:.1f}]" if percent else f" [{lo:.3f}, {hi:.3f}]"
            return s

        unit = " (%)" if percent else ""
        lines = [f"| {metric.upper()}{unit} | " + " | ".join(attacks) + " |", "|---" * (len(attacks) + 1) + "|"]
        for det in self.detectors:
            cells = [fmt(self.row(det, a), metric, ci) for a in attacks]
            lines.append(f"| {det} | " + " | ".join(cells) + " |")
        fpr = self.settings.get("target_fpr", 0.05)
        lines += ["", f"| TPR at {100 * fpr:g}% FPR{unit} (test FPR reached) | " + " | ".join(attacks) + " |",
                  "|---" * (len(attacks) + 1) + "|"]
        for det in self.detectors:
            cells = []
            for a in attacks:
                r = self.row(det, a)
                cells.append("error" if r.get("error") else f"{fmt(r, 'tpr', False)} ({fmt(r, 'fpr', False)})")
            lines.append(f"| {det} | " + " | ".join(cells) + " |")
        lines += ["", "| test counts | " + " | ".join(attacks) + " |", "|---" * (len(attacks) + 1) + "|"]
        first = self.detectors[0] if self.detectors else None
        if first is not None:
            lines.append("| positives / clean negatives | " + " | ".join(
                f"{self.row(first, a)['n_pos']} / {self.row(first, a)['n_neg']}" for a in attacks) + " |")
        if cross:
            for det in self.cross:
                mat = self.cross_matrix(det, metric)
                lines += ["", f"*{det}: trained on (rows) / tested on (columns), {metric.upper()}{unit}*", "",
                          "| trained on | " + " | ".join(attacks) + " |", "|---" * (len(attacks) + 1) + "|"]
                for a, row in zip(attacks, mat, strict=True):
                    lines.append(f"| {a} | " + " | ".join(
                        "–" if math.isnan(v) else (f"{scale * v:.2f}" if percent else f"{v:.4f}") for v in row) + " |")
        others = [st for st in self.setting_names if st != "oblivious"]
        if others:
            cols = [(a, "oblivious") for a in attacks if any(
                r["attack"] == a and r.get("setting") in others for r in self.rows)]
            cols += [(a, st) for st in others for a in dict.fromkeys(
                r["attack"] for r in self.rows if r.get("setting") == st)]
            lines += ["", f"*Evasion rate{unit} (of the correctly classified test images: misclassified and not "
                      f"flagged at the threshold) / TPR{unit}, by setting*", "",
                      "| detector | " + " | ".join(f"{a} ({st})" for a, st in cols) + " |",
                      "|---" * (len(cols) + 1) + "|"]
            for det in self.detectors:
                cells = []
                for a, st in cols:
                    try:
                        r = self.row(det, a, st)
                    except KeyError:
                        cells.append("–")
                        continue
                    cells.append("error" if r.get("error") else
                                 f"{fmt(r, 'evasion_rate', False)} / {fmt(r, 'tpr', False)}")
                lines.append(f"| {det} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and math.isnan(v):
            v = None  # JSON has no NaN
        if isinstance(v, np.ndarray):
            continue
        out[k] = v
    return out


# =============================================================================== protocol


def _attack_seed(seed: int, name: str) -> int:
    return int(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).generate_state(1)[0])


def _stored_features(store: Any, parts: list[Feature], t: Tensor) -> np.ndarray:
    return store.get(parts, t)


def _decide(detector: Any, X: np.ndarray) -> np.ndarray:
    return detector.decision_function(X) if X.shape[0] else np.zeros(0)


def _make_adversarials(name: str, attack: Any, model: nn.Module, x: Tensor, y: Tensor, correct: Tensor,
                       seed: int, batch_size: int, bounds: tuple[float, float]) -> Tensor:
    if isinstance(attack, Tensor):
        if attack.shape != x.shape:
            raise ValueError(
                f"attacks[{name!r}] is a tensor of shape {tuple(attack.shape)}; a precomputed "
                f"adversarial set must be aligned with x, shape {tuple(x.shape)} (row i made from "
                "x[i]; rows you did not attack can hold x[i] itself)."
            )
        check_inputs(attack, bounds=bounds, name=f"attacks[{name!r}]")
        return attack.detach().to(x.dtype)
    if not isinstance(attack, Attack):
        raise TypeError(f"attacks[{name!r}] must be a fisherscope Attack or a tensor aligned with x; "
                        f"got {type(attack).__name__}.")
    x_adv = x.clone()
    idx = torch.nonzero(correct).flatten()
    gen = torch.Generator().manual_seed(_attack_seed(seed, name))
    for sl in track(list(chunks(idx.numel(), batch_size)), f"attack {name}"):  # batches, not samples
        sel = idx[sl]
        x_adv[sel] = attack.run(model, x[sel], y[sel], generator=gen).x_adv.to(x.dtype)
    return x_adv


def evaluate_detectors(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    attacks: Mapping[str, Attack | Tensor],
    detectors: Mapping[str, Any],
    *,
    splits: Sequence[float] = (0.5, 0.25, 0.25),
    noise_negatives: bool = True,
    target_fpr: float = 0.05,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clean: Literal["correct", "all"] = "correct",
    cross_attack: bool = True,
    batch_size: int = 256,
    bounds: tuple[float, float] = (0.0, 1.0),
    feature_cache: MutableMapping[Any, np.ndarray] | None = None,
    adaptive: bool | Sequence[str] = False,
    adaptive_settings: Any = None,
    kappa_sweep: Sequence[float] = (),
) -> DetectionResult:
    """Evaluate detectors against attacks on one model with disjoint splits by source image.

    See the module docstring for the protocol. In short: positives are the successful
    adversarials of correctly classified images; negatives the clean images (and, as a
    control, noise with the adversarial L2 norms); every image, with everything made from
    it, is in exactly one of the fit / calibrate / test splits; detectors are fitted on
    the fit split, thresholded at ``target_fpr`` on the calibration split's clean rows and
    scored on the test split, with bootstrap intervals over test images.

    Parameters
    ----------
    model : nn.Module
        The attacked classifier (inputs in ``bounds`` to logits); run in eval mode.
    x : Tensor
        Clean images (N, C, H, W); never modified.
    y : Tensor
        True labels, int64 (N,).
    attacks : dict
        ``name -> Attack`` (run untargeted, ``targeted=False``, on the correctly classified
        images in batches of ``batch_size``, with a generator seeded from ``seed`` and the
        name) or ``name -> Tensor`` aligned with ``x`` (a precomputed adversarial set; its
        success is recomputed here).
    detectors : dict
        ``name -> Detector`` (features from the detector's ``feature`` name with default
        arguments), ``name -> (Detector, features)`` or ``name -> DetectorSpec``. Detectors
        are cloned; their ``target_fpr`` is set to ``target_fpr``.
    splits : (float, float, float)
        Fractions of the source images for fit, calibrate and test (stratified by label).
    noise_negatives : bool
        Make noise-matched rows (the control; needed for ``DetectorSpec.fit_noise``).
    target_fpr : float
        False-positive rate at which the threshold is set on the calibration split.
    n_bootstrap : int
        Bootstrap replicates for the intervals (0: none).
    confidence : float
        Coverage of the intervals.
    seed : int
        Seeds the splits, the attacks' randomness, the noise and the bootstrap.
    clean : {"correct", "all"}
        Which clean images are negatives: the correctly classified ones (the sources of
        the positives; default) or all of them.
    cross_attack : bool
        Also train each supervised detector on every attack and test on every other.
    batch_size : int
        Images per attack call.
    bounds : (float, float)
        Input range (for validation and the noise).
    feature_cache : dict, optional
        Reused and filled across calls; keys hold a digest of the input rows.
    adaptive : bool or sequence of str
        Add ``setting="adaptive"`` rows: every fitted detector attacked by
        :class:`~fisherscope.attacks.DetectorAwarePGD` with the ε and norm of each budgeted
        L∞ / L2 attack (``True``), or of the named attacks, on the correctly classified test
        images (:mod:`fisherscope.evaluation.adaptive`).
    adaptive_settings : AdaptiveSettings, optional
        Steps, modes, restarts and margins of the adaptive attack (default
        ``AdaptiveSettings()``; its ``attacks`` field is overridden by a sequence ``adaptive``).
    kappa_sweep : sequence of float
        Confidences κ of a high-confidence C&W baseline: the first
        :class:`~fisherscope.attacks.CarliniWagnerL2` of ``attacks`` (its label names the rows)
        with ``confidence=κ``, or the standard one labelled ``"C&W"``; rows with
        ``setting="cw_kappa=κ"``.

    Returns
    -------
    DetectionResult

    Raises
    ------
    ValueError
        Invalid inputs, splits, attacks or detectors. A detector that fails to fit or score
        on some attack does not stop the evaluation: its rows carry ``error`` (the message)
        and NaN numbers, and a ``UserWarning`` repeats the message.

    Shapes
    ------
    x: (N, C, H, W), y: (N,); precomputed adversarial sets (N, C, H, W).

    References
    ----------
    Feinman et al. arXiv:1703.00410; Ma et al. ICLR 2018; Zhao et al. AAAI 2019 (§4,
    Tables 4–5); Carlini & Wagner, "Adversarial examples are not easily detected",
    AISec 2017 (report FPR, use held-out data).

    Examples
    --------
    >>> from fisherscope.attacks import FGM
    >>> from fisherscope.detectors import SoftmaxDetector
    >>> res = evaluate_detectors(model, x, y, {"fgm": FGM(eps=1.0)},
    ...                          {"softmax": SoftmaxDetector()})
    >>> print(res.to_markdown())  # doctest: +ELLIPSIS
    | AUROC (%) | fgm |
    |---|---|
    | softmax | ... [..., ...] |
    ...
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    check_inputs(x, y, bounds=bounds)
    check_params("evaluate_detectors", {
        "clean": clean, "target_fpr": target_fpr, "n_bootstrap": n_bootstrap, "confidence": confidence,
        "noise_negatives": noise_negatives, "cross_attack": cross_attack, "batch_size": batch_size,
    }, {
        "clean": one_of("correct", "all"),
        "target_fpr": real(ge=0, lt=1),
        "n_bootstrap": NON_NEGATIVE_INT,
        "confidence": real(gt=0, lt=1),
        "noise_negatives": BOOL,
        "cross_attack": BOOL,
        "batch_size": POSITIVE_INT,
    })
    if not isinstance(attacks, Mapping) or not attacks:
        raise ValueError("attacks must be a non-empty dict name -> Attack (or adversarial tensor).")
    if not isinstance(detectors, Mapping) or not detectors:
        raise ValueError("detectors must be a non-empty dict name -> Detector (or DetectorSpec).")
    check_batch_size(batch_size, "evaluate_detectors")
    adaptive_cfg, adaptive_names = _check_adaptive(adaptive, adaptive_settings, attacks)
    kappa_attacks = _kappa_attacks(kappa_sweep, attacks)
    setting_of = {str(a): "oblivious" for a in attacks}
    label_of = {str(a): str(a) for a in attacks}
    for internal, (label, setting, _) in kappa_attacks.items():
        setting_of[internal], label_of[internal] = setting, label
    all_attacks: dict[str, Any] = {**{str(k): v for k, v in attacks.items()},
                                   **{k: v[2] for k, v in kappa_attacks.items()}}
    specs = {str(k): _as_spec(str(k), v) for k, v in detectors.items()}
    fit_noise_any = any(s.fit_noise for s in specs.values())
    if fit_noise_any and not noise_negatives:
        raise ValueError("a DetectorSpec has fit_noise=True but noise_negatives=False; enable the noise rows.")
    x = x.detach()
    n = x.shape[0]
    split = source_splits(y, splits, seed)

    with eval_mode(model):
        with torch.no_grad():
            logits = in_batches(lambda xb: check_logits(model(xb)), x, batch_size=batch_size)
        pred, num_classes = logits.argmax(1), int(logits.shape[1])
        check_labels(y, n, num_classes)
        correct_t = pred == y
        correct = correct_t.cpu().numpy()
        neg_mask = correct if clean == "correct" else np.ones(n, dtype=bool)

        adv: dict[str, Tensor] = {}
        positives: dict[str, np.ndarray] = {}
        noise: dict[str, Tensor] = {}
        attack_stats: dict[str, dict[str, Any]] = {}
        for name, attack in track(list(all_attacks.items()), "detection: attacks"):
            name = str(name)
            log.info("attack %s", name)
            x_adv = _make_adversarials(name, attack, model, x, y, correct_t, seed, batch_size, bounds)
            fooled = (predict(model, x_adv, batch_size, warn=False) != y).cpu().numpy()
            pos = correct & fooled
            adv[name], positives[name] = x_adv, pos
            l2 = (x_adv - x).flatten(1).to(torch.float64).norm(dim=1).cpu().numpy()
            linf = (x_adv - x).flatten(1).abs().amax(1).to(torch.float64).cpu().numpy()
            stats: dict[str, Any] = {
                "n_images": int(n), "n_correct": int(correct.sum()), "n_success": int(pos.sum()),
                "success_rate": float(pos.sum() / max(int(correct.sum()), 1)),
                "mean_l2": float(l2[pos].mean()) if pos.any() else math.nan,
                "median_l2": float(np.median(l2[pos])) if pos.any() else math.nan,
                "mean_linf": float(linf[pos].mean()) if pos.any() else math.nan,
                **{f"n_pos_{s}": int((pos & (split == i)).sum()) for i, s in enumerate(SPLIT_NAMES)},
            }
            if noise_negatives:
                g = torch.Generator().manual_seed(_attack_seed(seed, "noise/" + name))
                nz = matched_noise(x, x_adv, generator=g, bounds=bounds)
                noise[name] = nz
                nl2 = (nz - x).flatten(1).to(torch.float64).norm(dim=1).cpu().numpy()
                stats["noise_mean_l2"] = float(nl2[pos].mean()) if pos.any() else math.nan
                stats["noise_max_abs_l2_diff"] = float(np.abs(nl2 - l2)[pos].max()) if pos.any() else math.nan
            attack_stats[name] = stats

    names = list(adv)
    oblivious = [a for a in names if setting_of[a] == "oblivious"]
    n_correct_test = int((correct & (split == 2)).sum())
    test_src = np.flatnonzero(correct & (split == 2))
    store = _Features(model, seed, feature_cache)
    neg_rows = {i: np.flatnonzero(neg_mask & (split == i)) for i in range(3)}
    rows: list[dict[str, Any]] = []
    cross: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    roc: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    scores: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    for det_name, spec in track(list(specs.items()), "detection: features, fits, scores"):
        log.info("detector %s", det_name)
        parts = spec.parts()
        supervised = bool(spec.detector.supervised)

        def feats(t: Tensor, idx: np.ndarray, parts: list[Feature] = parts) -> np.ndarray:
            return store.get(parts, t[torch.as_tensor(idx, dtype=torch.long)])

        try:
            clean_f = {i: feats(x, neg_rows[i]) for i in range(3)}
            pos_idx = {a: {i: np.flatnonzero(positives[a] & (split == i)) for i in (0, 2)} for a in names}
            adv_f = {a: {i: feats(adv[a], pos_idx[a][i]) for i in (0, 2)} for a in names}
            noise_f = {a: {i: feats(noise[a], pos_idx[a][i]) for i in ((0, 2) if spec.fit_noise else (2,))}
                       for a in noise}
        except Exception as exc:  # noqa: BLE001 - reported per detector, see Raises
            msg = f"features failed: {type(exc).__name__}: {exc}"
            warnings.warn(f"detector {det_name!r}: {msg}", UserWarning, stacklevel=2)
            for a in names:
                rows.append(_error_row(det_name, label_of[a], supervised, target_fpr, msg, setting_of[a]))
            continue

        train_list: list[str | None] = list(names) if supervised else [None]
        for train in train_list:
            try:
                with stage(f"fit {det_name}" + (f" on {train}" if train else "")):
                    fitted, fit_rows = _fit_detector(spec, train, target_fpr, clean_f, adv_f, noise_f)
                s_neg = _decide(fitted, clean_f[2])
            except Exception as exc:  # noqa: BLE001 - reported per cell, see Raises
                msg = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"detector {det_name!r} (trained on {train or 'clean'}): {msg}",
                              UserWarning, stacklevel=2)
                targets = names if train is None else [train]
                rows.extend(_error_row(det_name, label_of[a], supervised, target_fpr, msg, setting_of[a])
                            for a in targets)
                continue
            if train is None:
                tests = names
            elif cross_attack and setting_of[train] == "oblivious":
                tests = oblivious
            else:
                tests = [train]
            for test in tests:
                try:
                    s_pos = _decide(fitted, adv_f[test][2])
                    s_noise = _decide(fitted, noise_f[test][2]) if test in noise_f else np.zeros(0)
                    seen = train is None or train == test
                    m = detection_metrics(
                        s_neg, s_pos, fitted.threshold_,
                        neg_groups=neg_rows[2], pos_groups=pos_idx[test][2],
                        n_bootstrap=n_bootstrap if seen else 0, confidence=confidence,
                        seed=_attack_seed(seed, f"{det_name}/{test}"),
                    )
                except Exception as exc:  # noqa: BLE001
                    if train is None or train == test:
                        msg = f"{type(exc).__name__}: {exc}"
                        warnings.warn(f"detector {det_name!r} on {test!r}: {msg}", UserWarning, stacklevel=2)
                        rows.append(_error_row(det_name, label_of[test], supervised, target_fpr, msg, setting_of[test]))
                    continue
                if supervised and cross_attack and setting_of[test] == "oblivious" and setting_of[str(train)] == "oblivious":
                    cross.setdefault(det_name, {}).setdefault(str(train), {})[test] = {
                        "auroc": m.auroc, "aupr": m.aupr, "tpr": m.tpr, "fpr": m.fpr}
                if not seen:
                    continue
                noise_m = (detection_metrics(s_noise, s_pos, fitted.threshold_, n_bootstrap=0)
                           if s_noise.size else None)
                row = {
                    "detector": det_name, "attack": label_of[test], "setting": setting_of[test],
                    "supervised": supervised,
                    "auroc": m.auroc, "aupr": m.aupr, "tpr": m.tpr, "fpr": m.fpr,
                    **{f"{k}_{e}": m.ci[k][j] for k in _METRICS for j, e in enumerate(("lo", "hi"))},
                    "threshold": m.threshold, "target_fpr": float(target_fpr),
                    "n_pos": m.n_pos, "n_neg": m.n_neg,
                    "n_pos_fit": int(len(adv_f[test][0])) if supervised else 0,
                    "n_neg_fit": int(len(clean_f[0]) + (len(noise_f[test][0]) if spec.fit_noise else 0)),
                    "n_neg_cal": int(len(clean_f[1])),
                    "auroc_noise": noise_m.auroc if noise_m else math.nan,
                    "noise_flagged": float((s_noise > fitted.threshold_).mean()) if s_noise.size else math.nan,
                    "n_noise": int(s_noise.size), "error": None,
                    "evasion_rate": float((s_pos <= fitted.threshold_).sum() / max(n_correct_test, 1)),
                    "n_correct_test": n_correct_test,
                }
                rows.append(row)
                scores[(det_name, test)] = {"neg": s_neg, "pos": s_pos, "noise": s_noise}
                if m.n_pos and m.n_neg:
                    fpr_c, tpr_c, _ = roc_curve(np.r_[np.zeros(m.n_neg), np.ones(m.n_pos)], np.r_[s_neg, s_pos])
                    roc[(det_name, test)] = (fpr_c, tpr_c)
                if test in adaptive_names and n_correct_test:
                    rows.append(_adaptive_row(
                        det_name, test, supervised, fitted, parts, all_attacks[test], model, x, adv[test], y, test_src,
                        partial(_stored_features, store, parts), fit_rows, clean_f, s_neg, neg_rows[2],
                        adaptive_cfg, seed, batch_size, target_fpr, n_bootstrap, confidence, scores, roc))

    order = {a: i for i, a in enumerate(dict.fromkeys(label_of[a] for a in names))}
    det_order = {d: i for i, d in enumerate(specs)}
    setting_rank = {st: i for i, st in enumerate(dict.fromkeys(
        ["oblivious", *(setting_of[a] for a in names), "adaptive"]))}
    rows.sort(key=lambda r: (det_order[r["detector"]], setting_rank[r["setting"]], order[r["attack"]]))
    settings = {"splits": [float(v) for v in _check_fractions(splits)], "target_fpr": float(target_fpr),
                "n_bootstrap": int(n_bootstrap), "confidence": float(confidence), "seed": int(seed),
                "clean": clean, "noise_negatives": bool(noise_negatives), "cross_attack": bool(cross_attack),
                "n_images": int(n), "n_per_split": [int((split == i).sum()) for i in range(3)],
                "adaptive": sorted(adaptive_names), "kappa_sweep": [float(k) for k in kappa_sweep],
                **({"adaptive_settings": _plain_settings(adaptive_cfg)} if adaptive_names else {})}
    extra = {f"{setting_of[a]}|{label_of[a]}": attack_stats.pop(a) for a in list(attack_stats)
             if setting_of[a] != "oblivious"}
    positives = {a: v for a, v in positives.items() if setting_of[a] == "oblivious"} | {
        f"{setting_of[a]}|{label_of[a]}": v for a, v in positives.items() if setting_of[a] != "oblivious"}
    return DetectionResult(rows=rows, cross=cross, attacks=attack_stats, roc=roc, scores=scores, split=split,
                           correct=correct, positives=positives, settings=settings, extra_attacks=extra)


def _check_adaptive(adaptive: Any, settings: Any, attacks: Mapping[str, Any]) -> tuple[Any, set[str]]:
    """(AdaptiveSettings, names of the attacks whose budget the adaptive attack reuses)."""
    from .adaptive import AdaptiveSettings, adaptable

    if settings is not None and not isinstance(settings, AdaptiveSettings):
        raise TypeError("adaptive_settings must be a fisherscope.evaluation.AdaptiveSettings or None; got "
                        f"{type(settings).__name__}.")
    cfg = settings or AdaptiveSettings()
    if adaptive is False or adaptive is None:
        return cfg, set()
    if adaptive is True:
        wanted = list(cfg.attacks) if cfg.attacks is not None else [str(a) for a, v in attacks.items() if adaptable(v)]
    elif isinstance(adaptive, Sequence) and not isinstance(adaptive, str):
        wanted = [str(a) for a in adaptive]
    else:
        raise TypeError(f"adaptive must be True, False or a sequence of attack names; got {adaptive!r}.")
    unknown = [a for a in wanted if a not in attacks]
    if unknown:
        raise ValueError(f"adaptive names attack(s) {unknown} that are not in attacks ({list(attacks)}).")
    bad = [a for a in wanted if not adaptable(attacks[a])]
    if bad:
        raise ValueError(
            f"adaptive: attack(s) {bad} have no L-inf or L2 budget to reuse (eps and norm); the adaptive attack runs "
            "in the oblivious attack's eps-ball, so name budgeted attacks such as PGD, BIM, FGM or OSSA.")
    if not wanted:
        raise ValueError("adaptive=True but no attack has an L-inf or L2 budget to reuse; add one (e.g. PGD) or "
                         "name attacks explicitly.")
    return cfg, set(wanted)


def _kappa_attacks(kappa_sweep: Sequence[float], attacks: Mapping[str, Any]) -> dict[str, tuple[str, str, Any]]:
    """internal name -> (label, setting, attack) of the high-confidence C&W baseline."""
    import dataclasses

    from ..attacks import CarliniWagnerL2

    kappas = [float(k) for k in kappa_sweep]
    if any(not math.isfinite(k) or k < 0 for k in kappas) or len(set(kappas)) != len(kappas):
        raise ValueError(f"kappa_sweep must be distinct finite confidences >= 0 (logit margins); got {list(kappa_sweep)}.")
    base = next(((str(k), v) for k, v in attacks.items() if isinstance(v, CarliniWagnerL2)), None)
    label, cw = base if base is not None else ("C&W", CarliniWagnerL2(**CarliniWagnerL2.standard))
    out = {}
    for k in kappas:
        setting = f"cw_kappa={k:g}"
        out[f"{setting}|{label}"] = (label, setting, dataclasses.replace(cw, confidence=k))
    return out


def _plain_settings(cfg: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: (list(v) if isinstance(v, tuple) else v) for f in dataclasses.fields(cfg)
            if not isinstance(v := getattr(cfg, f.name), Mapping) or v}


def _adaptive_row(det_name: str, test: str, supervised: bool, fitted: Any, parts: list[Feature], attack: Any,
                  model: nn.Module, x: Tensor, x_obl: Tensor, y: Tensor, test_src: np.ndarray, real: Callable[[Tensor], np.ndarray],
                  fit_rows: tuple[np.ndarray, np.ndarray], clean_f: dict[int, np.ndarray], s_neg: np.ndarray,
                  neg_groups: np.ndarray, cfg: Any, seed: int, batch_size: int, target_fpr: float, n_bootstrap: int,
                  confidence: float, scores: dict[Any, Any], roc: dict[Any, Any]) -> dict[str, Any]:
    """The ``setting="adaptive"`` row of one fitted detector and one attack budget."""
    from .adaptive import adaptive_evaluation

    idx = torch.as_tensor(test_src, dtype=torch.long)
    try:
        res = adaptive_evaluation(
            model=model, fitted=fitted, parts=parts, attack=attack, x=x[idx], y=y[idx], real_features=real,
            fit_rows=fit_rows, calibration_clean=clean_f[1], settings=cfg,
            seed=_attack_seed(seed, f"adaptive/{det_name}/{test}"), batch_size=batch_size,
            x_oblivious=x_obl[idx])
        pos = res["score"][res["fooled"]]
        m = detection_metrics(s_neg, pos, fitted.threshold_, neg_groups=neg_groups,
                              pos_groups=test_src[res["fooled"]], n_bootstrap=n_bootstrap, confidence=confidence,
                              seed=_attack_seed(seed, f"adaptive/{det_name}/{test}/bootstrap"))
    except Exception as exc:  # noqa: BLE001 - reported per cell
        msg = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"detector {det_name!r}, adaptive attack in the budget of {test!r}: {msg}", UserWarning,
                      stacklevel=3)
        return _error_row(det_name, test, supervised, target_fpr, msg, "adaptive")
    n_src = len(test_src)
    delta = (res["x_adv"] - x[idx]).flatten(1).to(torch.float64)
    l2 = delta.norm(dim=1).cpu().numpy()
    key = f"{test}|adaptive"
    scores[(det_name, key)] = {"neg": s_neg, "pos": pos, "noise": np.zeros(0)}
    if m.n_pos and m.n_neg:
        fpr_c, tpr_c, _ = roc_curve(np.r_[np.zeros(m.n_neg), np.ones(m.n_pos)], np.r_[s_neg, pos])
        roc[(det_name, key)] = (fpr_c, tpr_c)
    nan = math.nan
    return {
        "detector": det_name, "attack": test, "setting": "adaptive", "supervised": supervised,
        "auroc": m.auroc, "aupr": m.aupr, "tpr": m.tpr, "fpr": m.fpr,
        **{f"{k}_{e}": m.ci[k][j] for k in _METRICS for j, e in enumerate(("lo", "hi"))},
        "threshold": m.threshold, "target_fpr": float(target_fpr), "n_pos": m.n_pos, "n_neg": m.n_neg,
        "n_pos_fit": 0, "n_neg_fit": 0, "n_neg_cal": int(len(clean_f[1])), "auroc_noise": nan, "noise_flagged": nan,
        "n_noise": 0, "error": None,
        "evasion_rate": float(res["evaded"].sum() / n_src), "n_correct_test": n_src,
        "success_rate": float(res["fooled"].mean()),
        **{f"evasion_{mode}": float(res[f"evaded_{mode}"].mean()) for mode in (*cfg.modes, "oblivious")},
        "mirror": res["mirror"], "mirror_agreement": res["mirror_agreement"],
        "surrogate_agreement": res["surrogate_agreement"],
        "eps": float(attack.eps), "norm": attack.norm, "adaptive_steps": int(cfg.steps),
        "mean_l2": float(l2[res["fooled"]].mean()) if res["fooled"].any() else nan,
    }


def _fit_detector(spec: DetectorSpec, train: str | None, target_fpr: float, clean_f: dict[int, np.ndarray],
                  adv_f: dict[str, dict[int, np.ndarray]], noise_f: dict[str, dict[int, np.ndarray]]
                  ) -> tuple[Any, tuple[np.ndarray, np.ndarray]]:
    """A fitted, calibrated clone: fit split (clean [+ noise] [+ ``train``'s positives]), then
    the threshold on the calibration split's clean rows; and the (X, y) it was fitted on."""
    det = clone(spec.detector)
    det.set_params(target_fpr=target_fpr)
    if not len(clean_f[0]) or not len(clean_f[1]):
        raise ValueError("the fit or the calibration split holds no clean image; use more images")
    if not det.supervised:
        det.fit(clean_f[0])
        X, lab = clean_f[0], np.zeros(len(clean_f[0]), dtype=np.int64)
    else:
        assert train is not None  # supervised detectors are fitted per attack
        negs = [clean_f[0]]
        if spec.fit_noise and len(noise_f[train][0]):
            negs.append(noise_f[train][0])
        if not len(adv_f[train][0]):
            raise ValueError(f"attack {train!r} has no positives in the fit split (nothing to train a "
                             "supervised detector on)")
        X = np.concatenate([*negs, adv_f[train][0]])
        lab = np.r_[np.zeros(sum(len(v) for v in negs), dtype=np.int64),
                    np.ones(len(adv_f[train][0]), dtype=np.int64)]
        det.fit(X, lab)
    det.calibrate(clean_f[1])
    return det, (X, lab)


def _error_row(det: str, attack: str, supervised: bool, target_fpr: float, msg: str,
               setting: str = "oblivious") -> dict[str, Any]:
    nan = math.nan
    return {"detector": det, "attack": attack, "setting": setting, "supervised": supervised, "evasion_rate": nan,
            **dict.fromkeys(_METRICS, nan), **{f"{k}_{e}": nan for k in _METRICS for e in ("lo", "hi")},
            "threshold": nan, "target_fpr": float(target_fpr), "n_pos": 0, "n_neg": 0, "n_pos_fit": 0,
            "n_neg_fit": 0, "n_neg_cal": 0, "auroc_noise": nan, "noise_flagged": nan, "n_noise": 0, "error": msg}
