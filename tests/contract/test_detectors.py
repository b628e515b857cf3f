"""The detector contract, for every entry of DETECTORS.

Every registered detector gets scikit-learn's estimator checks (with the failures every
:class:`~fisherscope.detectors.Detector` has by design, SKLEARN_EXPECTED_FAILED_CHECKS)
and the fit / decision_function / predict / score contracts on a separable problem made
for its feature layout. A new detector is covered by registering it and adding its
problem to CASES (the tests fail loudly until then).
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import parametrize_with_checks

import fisherscope.features as features
from fisherscope.detectors import DETECTORS, SKLEARN_EXPECTED_FAILED_CHECKS, Detector, join_kdbu
from fisherscope.exceptions import NotFittedError
from fisherscope.features import FEATURES

Problem = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]

# ------------------------------------------------------------------ problems per layout


def _class_data(rng, n_per_class=60, classes=3, dim=4, shift=0.0, scale=1.0):
    centers = np.arange(classes)[:, None] * 4.0 * np.ones((classes, dim))
    pred = np.repeat(np.arange(classes), n_per_class).astype(float)
    h = centers[pred.astype(int)] + scale * rng.normal(size=(pred.size, dim)) + shift
    return np.c_[pred, h]


def _stack(clean, adv):
    X = np.vstack([clean, adv])
    return X, np.r_[np.zeros(len(clean)), np.ones(len(adv))].astype(int)


def _fisher_spectrum(rng, n=120):
    clean = np.sort(rng.gamma(2.0, 1.0, (n, 9)), axis=1)[:, ::-1]
    adv = np.sort(rng.gamma(2.0, 6.0, (n, 9)), axis=1)[:, ::-1]
    return _stack(np.c_[clean, np.zeros((n, 11))], np.c_[adv, np.zeros((n, 11))])


def _softmax(rng, n=120):  # softmax statistics of confident clean vs ~50% adversarial rows
    z_clean = rng.normal(size=(n, 10)) + 8.0 * np.eye(10)[rng.integers(0, 10, n)]
    z_adv = rng.normal(size=(n, 10)) * 0.3 + 1.0 * np.eye(10)[rng.integers(0, 10, n)]
    return _stack(features.softmax_stats_from_logits(torch.as_tensor(z_clean)),
                  features.softmax_stats_from_logits(torch.as_tensor(z_adv)))


_BASIS = np.linalg.qr(np.random.default_rng(0).normal(size=(12, 12)))[0][:, :8]


def _pca(rng, n=200):  # clean rows on an 8-dimensional subspace of R^12, adversarial ones off it
    clean = (rng.normal(size=(n, 8)) * np.linspace(3.0, 0.5, 8)) @ _BASIS.T
    return _stack(clean, clean[: n // 2] + 0.05 * rng.normal(size=(n // 2, 12)))


def _lid(rng, n=300):  # a plane in R^10 vs points near it
    clean = np.c_[rng.normal(size=(n, 2)), np.zeros((n, 8))]
    return _stack(clean, clean[: n // 2] + 0.2 * rng.normal(size=(n // 2, 10)))


def _mahalanobis(rng, n=300):
    def classes(shift):
        c = rng.integers(0, 3, n)
        return np.c_[c, 4.0 * np.eye(3, 6)[c] + rng.normal(size=(n, 6)) + shift]

    return _stack(classes(0.0), classes(2.0))


@dataclass(frozen=True)
class Case:
    """How to exercise one detector: a separable problem in its layout and its constructors."""

    problem: Problem
    params: dict = field(default_factory=dict)
    #: constructor keywords of the instances given scikit-learn's checks
    sklearn: tuple[dict, ...] = ({},)
    #: scikit-learn checks this detector also fails by design (name -> reason)
    sklearn_failures: dict[str, str] = field(default_factory=dict)


_CLASS_COLUMN = (
    "column 0 of X is the predicted class: the check's random data leave a class with fewer "
    "than 2 clean rows (no kernel density), features constant within every class, or "
    "predicted classes that had no clean fitting rows"
)
_KD_CHECKS = (
    "check_estimators_overwrite_params", "check_estimators_fit_returns_self",
    "check_readonly_memmap_input", "check_n_features_in_after_fitting",
    "check_pipeline_consistency", "check_estimators_pickle", "check_f_contiguous_array_estimator",
    "check_methods_sample_order_invariance", "check_methods_subset_invariance",
    "check_dict_unchanged", "check_fit_idempotent", "check_fit_check_is_fitted",
    "check_n_features_in",
)  # fmt: skip
_KDBU_CHECKS = _KD_CHECKS + (
    "check_dont_overwrite_parameters", "check_positive_only_tag_during_fit",
    "check_fit2d_predict1d",
)  # fmt: skip

CASES: dict[str, Case] = {
    "fisher_spectrum": Case(_fisher_spectrum, dict(random_state=0),
                            sklearn=(dict(n_estimators=21, max_depth=3, random_state=0),
                                     dict(n_estimators=21, max_depth=3, random_state=0, log_transform=True))),
    "fisher_score": Case(lambda rng: _stack(rng.lognormal(0.0, 1.0, (120, 3)), rng.lognormal(4.0, 1.0, (120, 3))),
                         sklearn=(dict(column=0),)),
    "kd": Case(lambda rng: _stack(_class_data(rng, 40), _class_data(rng, 40, shift=2.0)),
               sklearn_failures=dict.fromkeys(_KD_CHECKS, _CLASS_COLUMN)),
    "bu": Case(lambda rng: _stack(rng.uniform(0, 0.01, (120, 1)), rng.uniform(0.008, 0.05, (120, 1)))),
    "kdbu": Case(lambda rng: _stack(join_kdbu(_class_data(rng, 40), rng.uniform(0, 0.01, 120)),
                                    join_kdbu(_class_data(rng, 40, shift=2.0), rng.uniform(0.005, 0.03, 120))),
                 sklearn_failures=dict.fromkeys(_KDBU_CHECKS, _CLASS_COLUMN)),
    "softmax": Case(_softmax, sklearn=(dict(column=0),)),
    "pca_whitening": Case(_pca, dict(start=8, eps=1e-6)),
    "reconstruction": Case(lambda rng: _stack(rng.normal(0.0, 0.1, (120, 2)), rng.normal(1.0, 0.1, (120, 2))),
                           sklearn=({}, dict(kind="squared"))),
    "lid": Case(_lid, dict(k=20), sklearn=(dict(k=3),)),
    # column 0 must be a class: with one feature there is none left, a ValueError anyway
    "mahalanobis": Case(_mahalanobis, sklearn_failures={"check_fit2d_1feature": None}),
}

KEYS = sorted(DETECTORS)


def _case(key: str) -> Case:
    if key not in CASES:
        pytest.fail(f"detector {key!r} is registered but tests/contract/test_detectors.py has no CASES entry for it")
    return CASES[key]


def make(key: str) -> Detector:
    return DETECTORS[key](**_case(key).params)


def _fit(det: Detector, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. a convergence warning of an inner classifier
        return det.fit(X, y) if det.supervised else det.fit(X[y == 0])


# ---------------------------------------------------------------------- sklearn checks

_KEY_OF: dict[type, str] = {cls: key for key, cls in DETECTORS.items()}


def _sklearn_instances() -> list[Detector]:
    return [DETECTORS[key](**kw) for key in KEYS for kw in CASES.get(key, Case(None)).sklearn]


def _expected_failures(est: Detector) -> dict[str, str]:
    out = dict(SKLEARN_EXPECTED_FAILED_CHECKS)
    if get_tags(est).input_tags.positive_only:
        # shifted to non-negative data, the check's labels happen to be {0, 1}: it passes
        out.pop("check_fit2d_1feature")
    key = _KEY_OF[type(est)]
    for name, reason in CASES.get(key, Case(None)).sklearn_failures.items():
        if reason is None:
            out.pop(name, None)  # fails for another reason here, or passes
        else:
            out[name] = reason
    return out


@parametrize_with_checks(_sklearn_instances(), expected_failed_checks=_expected_failures, xfail_strict=True)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_every_registered_detector_gets_the_sklearn_checks():
    checked = {type(est) for est in _sklearn_instances()}
    assert checked == set(DETECTORS.values())


# -------------------------------------------------------------------------- contracts


@pytest.mark.parametrize("key", KEYS)
def test_feature_is_a_registered_feature_function(key):
    cls = DETECTORS[key]
    assert cls.feature in FEATURES and FEATURES[cls.feature] is getattr(features, cls.feature)


@pytest.mark.parametrize("key", KEYS)
def test_fit_decision_function_predict_score(key):
    X, y = _case(key).problem(np.random.default_rng(0))
    X_test, y_test = _case(key).problem(np.random.default_rng(1))
    det = make(key)
    assert _fit(det, X, y) is det
    assert list(det.classes_) == [0, 1] and np.isfinite(det.threshold_) and det.n_features_in_ == X.shape[1]
    scores = det.decision_function(X_test)
    assert scores.shape == (len(X_test),) and scores.dtype == np.float64 and np.all(np.isfinite(scores))
    np.testing.assert_array_equal(det.decision_function(X_test), scores)
    pred = det.predict(X_test)
    assert pred.dtype == np.int64 and set(np.unique(pred)) <= {0, 1}
    np.testing.assert_array_equal(pred, (scores > det.threshold_).astype(np.int64))
    auc = det.score(X_test, y_test)
    assert auc == pytest.approx(roc_auc_score(y_test, scores)) and auc > 0.9, (key, auc)
    assert det.predict(X_test[y_test == 1]).mean() > 0.5
    # calibrate: the threshold at the target FPR on a separate clean split
    clean_test = X_test[y_test == 0]
    det.calibrate(clean_test)
    assert det.predict(clean_test).mean() <= det.target_fpr + 1e-12
    with pytest.raises(ValueError, match="both clean"):
        det.score(X_test[y_test == 0], y_test[y_test == 0])
    with pytest.raises(ValueError, match="binary"):
        det.score(X_test, 2 * y_test)


@pytest.mark.parametrize("key", KEYS)
def test_supervision_is_what_the_detector_says(key):
    X, y = _case(key).problem(np.random.default_rng(2))
    det = make(key)
    if det.supervised:
        with pytest.raises(ValueError, match="supervised"):
            det.fit(X[y == 0])
        with pytest.raises(ValueError, match="adversarial rows"):
            det.fit(X[y == 0], y[y == 0])
    else:  # the adversarial rows are ignored by an unsupervised fit
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a, b = make(key).fit(X, y), make(key).fit(X[y == 0])
        np.testing.assert_array_equal(a.decision_function(X), b.decision_function(X))
        assert a.threshold_ == b.threshold_
    with pytest.raises(ValueError, match="clean rows"):
        make(key).fit(X[y == 1], y[y == 1])


@pytest.mark.parametrize("key", KEYS)
def test_pickle_and_clone_round_trips(key):
    X, y = _case(key).problem(np.random.default_rng(3))
    det = _fit(make(key), X, y)
    again = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(again.decision_function(X), det.decision_function(X))
    assert again.threshold_ == det.threshold_
    twin = clone(det)
    assert twin.get_params() == det.get_params() and not hasattr(twin, "threshold_")
    np.testing.assert_allclose(_fit(twin, X, y).decision_function(X), det.decision_function(X))


@pytest.mark.parametrize("key", KEYS)
def test_bad_feature_shapes_rejected(key):
    X, y = _case(key).problem(np.random.default_rng(4))
    with pytest.raises(NotFittedError):
        make(key).decision_function(X)
    with pytest.raises(ValueError, match="dim 3"):
        make(key).fit(X[:, :, None], y)
    det = _fit(make(key), X, y)
    with pytest.raises(ValueError, match="features"):
        det.decision_function(np.c_[X, X[:, :1]])
    with pytest.raises(ValueError, match="2D array|Expected 2D"):
        det.decision_function(X[0])
    with pytest.raises(ValueError, match="NaN|nan|infinity"):
        det.decision_function(np.where(np.arange(X.shape[1]) == min(1, X.shape[1] - 1), np.nan, X))
