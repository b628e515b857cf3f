"""Detectors: Fisher spectrum / score (Zhao; Martin & Elster), KD / BU / KD+BU (Feinman), softmax.

The scikit-learn checks and the fit / predict / score / pickle contracts of every
registered detector are in tests/contract/test_detectors.py; these are the oracles.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KernelDensity

import fisherscope.features as features
from fisherscope.detectors import (
    DETECTORS,
    BayesianUncertaintyDetector,
    FisherScoreDetector,
    FisherSpectrumDetector,
    KDBUDetector,
    KernelDensityDetector,
    SoftmaxDetector,
    gaussian_kde_logpdf,
    join_kdbu,
    threshold_at_fpr,
)
from fisherscope.detectors.density import _CV_GRID

# --------------------------------------------------------------------------- synthetic data


def _class_data(rng, n_per_class=60, classes=3, dim=4, shift=0.0, scale=1.0):
    centers = np.arange(classes)[:, None] * 4.0 * np.ones((classes, dim))
    pred = np.repeat(np.arange(classes), n_per_class).astype(float)
    h = centers[pred.astype(int)] + scale * rng.normal(size=(pred.size, dim)) + shift
    return np.c_[pred, h]


def _problem(key, rng, n=120):
    """(X, y) with clean rows y = 0 and separable adversarial rows y = 1, per detector."""
    if key == "fisher_spectrum":
        clean = np.sort(rng.gamma(2.0, 1.0, (n, 9)), axis=1)[:, ::-1]
        adv = np.sort(rng.gamma(2.0, 6.0, (n, 9)), axis=1)[:, ::-1]
        clean, adv = np.c_[clean, np.zeros((n, 11))], np.c_[adv, np.zeros((n, 11))]
    elif key == "fisher_score":
        clean, adv = rng.lognormal(0.0, 1.0, (n, 3)), rng.lognormal(4.0, 1.0, (n, 3))
    elif key == "kd":
        clean = _class_data(rng, n // 3)
        adv = _class_data(rng, n // 3, shift=2.0)  # between the class clusters: low density
    elif key == "bu":
        clean, adv = rng.uniform(0, 0.01, (n, 1)), rng.uniform(0.008, 0.05, (n, 1))
    elif key == "kdbu":
        clean = join_kdbu(_class_data(rng, n // 3), rng.uniform(0, 0.01, n))
        adv = join_kdbu(_class_data(rng, n // 3, shift=2.0), rng.uniform(0.005, 0.03, n))
    else:  # softmax statistics of confident clean vs ~50% adversarial rows
        z_clean = rng.normal(size=(n, 10)) + 8.0 * np.eye(10)[rng.integers(0, 10, n)]
        z_adv = rng.normal(size=(n, 10)) * 0.3 + 1.0 * np.eye(10)[rng.integers(0, 10, n)]
        clean = features.softmax_stats_from_logits(torch.as_tensor(z_clean))
        adv = features.softmax_stats_from_logits(torch.as_tensor(z_adv))
    X = np.vstack([clean, adv])
    y = np.r_[np.zeros(len(clean)), np.ones(len(adv))].astype(int)
    return X, y


def _make(key):
    return DETECTORS[key](random_state=0) if key == "fisher_spectrum" else DETECTORS[key]()


def _fit(det, X, y):
    return det.fit(X, y) if det.supervised else det.fit(X[y == 0])


# --------------------------------------------------------------------------- KD oracles


def _brute_log_kde(query, support, h):
    """log (1/n) Σ_i N(q; s_i, h² I), float64, one Gaussian at a time."""
    f = support.shape[1]
    out = []
    for q in query:
        terms = [-0.5 * np.dot(q - s, q - s) / h**2 for s in support]
        out.append(logsumexp(terms) - math.log(len(support)) - 0.5 * f * math.log(2 * math.pi * h**2))
    return np.array(out)


def test_kde_logpdf_against_brute_force_and_sklearn():
    rng = np.random.default_rng(4)
    support, query = rng.normal(size=(40, 5)), rng.normal(size=(15, 5)) * 1.5
    for h in (0.2, 0.7, 2.0):
        np.testing.assert_allclose(gaussian_kde_logpdf(query, support, h),
                                   _brute_log_kde(query, support, h), rtol=1e-12)
    # scikit-learn agrees where its tree sums are accurate (moderate log-densities)
    np.testing.assert_allclose(gaussian_kde_logpdf(query, support, 2.0),
                               KernelDensity(bandwidth=2.0).fit(support).score_samples(query),
                               rtol=1e-9)
    # leave-one-out: drop the query's own kernel, normalise by n - 1
    loo = gaussian_kde_logpdf(support[:6], support, 0.7, exclude=np.arange(6))
    ref = [_brute_log_kde(support[i : i + 1], np.delete(support, i, 0), 0.7)[0] for i in range(6)]
    np.testing.assert_allclose(loo, ref, rtol=1e-12)


def test_kd_decision_is_minus_log_density_of_predicted_class():
    rng = np.random.default_rng(5)
    X = _class_data(rng, 30, classes=3, dim=3)
    adv = _class_data(rng, 5, classes=3, dim=3, shift=1.5)
    y = np.r_[np.zeros(len(X)), np.ones(len(adv))].astype(int)
    det = KernelDensityDetector(bandwidth=0.8).fit(np.vstack([X, adv]), y)  # adv rows ignored
    Q = _class_data(rng, 4, classes=3, dim=3, shift=0.7)
    Q[:, 0] = [2, 0, 1, 1, 0, 2, 0, 0, 1, 2, 2, 1]  # the predicted class decides the density
    ref = np.array([-_brute_log_kde(q[None, 1:], X[X[:, 0] == q[0], 1:], 0.8)[0] for q in Q])
    np.testing.assert_allclose(det.decision_function(Q), ref, rtol=1e-12)
    np.testing.assert_array_equal(det.kde_classes_, [0, 1, 2])
    # the threshold comes from leave-one-out scores of the clean fitting rows
    others = [(X[:, 0] == X[i, 0]) & (np.arange(len(X)) != i) for i in range(len(X))]
    loo = np.array([-_brute_log_kde(X[i : i + 1, 1:], X[m, 1:], 0.8)[0] for i, m in enumerate(others)])
    assert det.threshold_ == pytest.approx(threshold_at_fpr(loo, 0.05), rel=1e-12)
    assert det.threshold_ > threshold_at_fpr(det.decision_function(X), 0.05)  # in-sample is optimistic


def test_kd_bandwidth_rules():
    rng = np.random.default_rng(6)
    X = _class_data(rng, 25, classes=2, dim=3, scale=0.6)
    h = X[:, 1:]
    pred = X[:, 0]
    # cv: the grid value maximising the summed leave-one-out log-likelihood (brute force)
    dev = np.concatenate([h[pred == c] - h[pred == c].mean(0) for c in (0, 1)])
    sigma = math.sqrt((dev**2).sum() / (3 * (len(h) - 2)))

    def loo_loglik(b):
        total = 0.0
        for c in (0, 1):
            s = h[pred == c]
            total += sum(_brute_log_kde(s[i : i + 1], np.delete(s, i, 0), b)[0] for i in range(len(s)))
        return total

    grid = sigma * _CV_GRID
    lik = [loo_loglik(b) for b in grid[10:35]]  # the optimum is well inside this window
    det = KernelDensityDetector().fit(X)
    assert det.bandwidth_[0] == det.bandwidth_[1] == pytest.approx(grid[10 + int(np.argmax(lik))], rel=1e-12)
    # Scott and Silverman per class
    for rule, factor in (("scott", lambda n, f: n ** (-1 / (f + 4))),
                         ("silverman", lambda n, f: (n * (f + 2) / 4) ** (-1 / (f + 4)))):
        got = KernelDensityDetector(bandwidth=rule).fit(X).bandwidth_
        want = [math.sqrt(h[pred == c].var(0, ddof=1).mean()) * factor(25, 3) for c in (0, 1)]
        np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_array_equal(KernelDensityDetector(bandwidth=1.2).fit(X).bandwidth_, [1.2, 1.2])
    with pytest.raises(ValueError, match="bandwidth"):
        KernelDensityDetector(bandwidth=-1.0).fit(X)
    with pytest.raises(ValueError, match="bandwidth"):
        KernelDensityDetector(bandwidth="auto").fit(X)


def test_kd_class_column_errors():
    rng = np.random.default_rng(7)
    X = _class_data(rng, 10, classes=2, dim=2)
    with pytest.raises(ValueError, match="at least 2"):
        KernelDensityDetector().fit(np.r_[X, [[5.0, 0.0, 0.0]]])
    bad = X.copy()
    bad[3, 0] = 0.5
    with pytest.raises(ValueError, match="predicted class"):
        KernelDensityDetector().fit(bad)
    det = KernelDensityDetector().fit(X)
    with pytest.raises(ValueError, match="no clean fitting rows"):
        det.decision_function(np.r_[X[:2], [[7.0, 0.0, 0.0]]])
    with pytest.raises(ValueError, match="at least one feature"):
        KernelDensityDetector().fit(X[:, :1])


# --------------------------------------------------------------------------- BU, KD+BU


def test_bu_decision_is_column_zero_and_non_negative():
    rng = np.random.default_rng(8)
    X = np.c_[rng.uniform(0, 0.02, 50), rng.dirichlet(np.ones(4), 50)]  # mc_dropout(with_mean_probs)
    det = BayesianUncertaintyDetector(target_fpr=0.1).fit(X)
    np.testing.assert_array_equal(det.decision_function(X), X[:, 0])
    assert det.threshold_ == threshold_at_fpr(X[:, 0], 0.1)
    with pytest.raises(ValueError, match="Negative values"):
        det.decision_function(-X)


def test_kdbu_standardises_and_regresses_on_fitting_rows_only():
    rng = np.random.default_rng(9)
    X, y = _problem("kdbu", rng, n=60)
    det = KDBUDetector(bandwidth=0.9, C=0.5).fit(X, y)
    pred, h, bu = X[:, 0], X[:, 1:-1], X[:, -1]
    clean = y == 0
    kd = np.empty(len(X))
    for i in range(len(X)):
        same = clean & (pred == pred[i]) & (np.arange(len(X)) != i)  # leave the row itself out
        kd[i] = -_brute_log_kde(h[i : i + 1], h[same], 0.9)[0]
    z = np.c_[kd, bu]
    scaler = det.pipeline_[0]
    np.testing.assert_allclose(scaler.mean_, z.mean(0), rtol=1e-10)
    np.testing.assert_allclose(scaler.scale_, z.std(0), rtol=1e-10)
    lr = LogisticRegression(C=0.5).fit((z - z.mean(0)) / z.std(0), y)
    np.testing.assert_allclose(det.pipeline_[-1].coef_, lr.coef_, rtol=1e-6)
    # scoring new rows: KD from the clean fitting rows (nobody left out), then the same pipeline
    Q = _problem("kdbu", np.random.default_rng(10), n=30)[0]
    kd_q = np.array([-_brute_log_kde(q[None, 1:-1], h[clean & (pred == q[0])], 0.9)[0] for q in Q])
    want = lr.decision_function((np.c_[kd_q, Q[:, -1]] - z.mean(0)) / z.std(0))
    np.testing.assert_allclose(det.decision_function(Q), want, rtol=1e-5, atol=1e-8)
    assert det.threshold_ == pytest.approx(threshold_at_fpr(det.pipeline_.decision_function(z[clean]), 0.05))
    with pytest.raises(ValueError, match="at least 3 columns"):
        KDBUDetector().fit(X[:, :2], y)
    with pytest.raises(ValueError, match="C must be"):
        KDBUDetector(C=0).fit(X, y)


# --------------------------------------------------------------------------- Fisher detectors


def test_fisher_spectrum_matches_sklearn_classifiers_on_log_eigenvalues():
    X, y = _problem("fisher_spectrum", np.random.default_rng(11))
    det = FisherSpectrumDetector(n_estimators=30, max_depth=4, random_state=3).fit(X, y)
    offset = 1e-12 * np.median(X.max(1))
    assert det.offset_ == pytest.approx(offset, rel=1e-15)
    Z = np.log(X + offset)
    rf = RandomForestClassifier(n_estimators=30, max_depth=4, random_state=3).fit(Z, y)
    np.testing.assert_array_equal(det.decision_function(X), rf.predict_proba(Z)[:, 1])
    assert all(t.get_depth() <= 4 for t in det.estimator_.estimators_)
    # the threshold comes from out-of-bag probabilities of the clean rows, not in-sample ones
    oob = RandomForestClassifier(n_estimators=30, max_depth=4, random_state=3, oob_score=True).fit(Z, y)
    assert det.threshold_ == threshold_at_fpr(oob.oob_decision_function_[y == 0, 1], 0.05)
    nb = FisherSpectrumDetector(classifier="naive_bayes").fit(X, y)
    np.testing.assert_allclose(nb.decision_function(X), GaussianNB().fit(Z, y).predict_proba(Z)[:, 1])
    raw = FisherSpectrumDetector(classifier="naive_bayes", log_transform=False).fit(X, y)
    np.testing.assert_allclose(raw.decision_function(X), GaussianNB().fit(X, y).predict_proba(X)[:, 1])
    with pytest.raises(ValueError, match="Negative values"):
        det.decision_function(-X)
    with pytest.raises(ValueError, match="classifier must be"):
        FisherSpectrumDetector(classifier="svm").fit(X, y)
    with pytest.raises(ValueError, match="n_estimators"):
        FisherSpectrumDetector(n_estimators=0).fit(X, y)


def test_fisher_score_columns_and_log():
    rng = np.random.default_rng(12)
    X = rng.lognormal(0, 2, (80, 3))
    for j, name in enumerate(("trace", "form", "normalized")):
        det = FisherScoreDetector(statistic=name).fit(X)
        np.testing.assert_array_equal(det.decision_function(X), X[:, j])
        logged = FisherScoreDetector(statistic=name, log=True).fit(X)
        np.testing.assert_allclose(logged.decision_function(X), np.log(X[:, j]), rtol=1e-15)
        np.testing.assert_array_equal(logged.predict(X), det.predict(X))  # same ranking
    one = FisherScoreDetector(statistic="form").fit(X[:, 1:2])
    np.testing.assert_array_equal(one.decision_function(X[:, 1:2]), X[:, 1])
    wide = np.c_[X, X]
    np.testing.assert_array_equal(FisherScoreDetector(column=4).fit(wide).decision_function(wide), X[:, 1])
    with pytest.raises(ValueError, match="column="):
        FisherScoreDetector().fit(X[:, :2])
    with pytest.raises(ValueError, match="only 3 column"):
        FisherScoreDetector(column=3).fit(X)
    with pytest.raises(ValueError, match="statistic must be"):
        FisherScoreDetector(statistic="hessian").fit(X)
    with pytest.raises(ValueError, match="Negative values"):
        FisherScoreDetector().fit(-X)


# --------------------------------------------------------------------------- softmax


def test_softmax_detector_orientation():
    rng = np.random.default_rng(13)
    X = np.c_[rng.uniform(0.3, 1, 40), rng.uniform(0, 2.3, 40), rng.uniform(0, 2.3, 40)]
    for j, (name, sign) in enumerate((("max_prob", -1), ("kl_uniform", -1), ("entropy", 1))):
        det = SoftmaxDetector(statistic=name).fit(X)
        np.testing.assert_array_equal(det.decision_function(X), sign * X[:, j])
        one = SoftmaxDetector(statistic=name).fit(X[:, j : j + 1])
        np.testing.assert_array_equal(one.decision_function(X[:, j : j + 1]), sign * X[:, j])
    with pytest.raises(ValueError, match="statistic must be"):
        SoftmaxDetector(statistic="margin").fit(X)
    with pytest.raises(ValueError, match="column="):
        SoftmaxDetector().fit(X[:, :2])


# --------------------------------------------------------------------------- features -> detectors


def test_feature_functions_feed_their_detectors():
    """Layouts agree end to end on a small model with dropout (clean vs. noised inputs as labels)."""
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(16, 12), torch.nn.ELU(), torch.nn.Dropout(0.3),
        torch.nn.Linear(12, 3),
    ).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 2.0)
    clean = torch.rand(40, 1, 4, 4, generator=g, dtype=torch.float64)
    noisy = (clean + 0.3 * torch.randn(clean.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    x = torch.cat([clean, noisy])
    y = np.r_[np.zeros(40), np.ones(40)].astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k = 20 > K - 1 = 2
        made = {
            "fisher_spectrum": features.fisher_eigenvalues(net, x),
            "fisher_score": features.param_fisher_scores(net, x),
            "kd": features.penultimate(net, x),
            "bu": features.mc_dropout(net, x, n=10, generator=torch.Generator().manual_seed(1)),
            "kdbu": features.kdbu_features(net, x, n=10, generator=torch.Generator().manual_seed(1)),
            "softmax": features.softmax_stats(net, x),
        }
    assert set(made["kd"][40:, 0]) <= set(made["kd"][:40, 0])  # KD: every class has clean rows
    for key, X in made.items():
        assert getattr(features, DETECTORS[key].feature) is not None
        det = _fit(_make(key), X, y)
        scores = det.decision_function(X)
        assert scores.shape == (80,) and np.all(np.isfinite(scores)), key
        assert 0.0 <= det.score(X, y) <= 1.0
