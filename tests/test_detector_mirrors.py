"""Differentiable mirrors of the detectors' scores (Detector.decision_torch / torch_score).

Oracle: on features of held-out rows, ``decision_torch`` equals ``decision_function`` in
float64; the composed image score has finite, non-zero input gradients; detectors whose head
has no gradient (random forest) refuse with the fix, and their LogisticSurrogate agrees with
them on most rows.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from fisherscope import features as F
from fisherscope.attacks import FGM
from fisherscope.detectors import (
    DETECTORS,
    BayesianUncertaintyDetector,
    FisherScoreDetector,
    FisherSpectrumDetector,
    KDBUDetector,
    KernelDensityDetector,
    LIDDetector,
    LogisticSurrogate,
    MahalanobisDetector,
    PCAWhiteningDetector,
    ReconstructionDetector,
    SoftmaxDetector,
    TorchScore,
)
from fisherscope.exceptions import NotFittedError, NoTorchMirrorError
from fisherscope.features import TORCH_FEATURES

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(digits_model):
    """The demo's trained digits_cnn in float64, 90 test digits and their FGM adversarials."""
    from fisherscope.data import load_dataset
    from fisherscope.experiments.detection_kit import dropout_model

    net = copy.deepcopy(digits_model.model).double().eval()
    test = load_dataset("digits", "test")
    x, y = test.x[:90].double(), test.y[:90]
    adv = FGM(eps=1.5)(net, x, y)
    drop = dropout_model(digits_model, 0.3).double().eval()
    return net, x, adv, drop


def _fit_predict(det, net, x, adv, name, kw, model=None):
    model = model or net
    fn = F.FEATURES[name]
    first = next(iter(__import__("inspect").signature(fn).parameters))

    def feat(t):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(t, **kw) if first == "x" else fn(model, t, **kw)

    X = np.vstack([feat(x[:60]), feat(adv[:60])])
    y = np.r_[np.zeros(60), np.ones(60)].astype(int)
    det = det.fit(X, y) if det.supervised else det.fit(X[:60])
    det.calibrate(feat(x[60:75]))
    return det, feat


def _check_mirror(det, net, x, adv, name, kw, model=None, rtol=1e-9):
    det, feat = _fit_predict(det, net, x, adv, name, kw, model)
    held = torch.cat([x[75:], adv[75:]])
    ref = det.decision_function(feat(held))
    tfn = TORCH_FEATURES[name]
    first = next(iter(__import__("inspect").signature(tfn).parameters))
    xr = held.clone().requires_grad_(True)
    tkw = dict(kw)
    part = (lambda t: tfn(t, **tkw)) if first == "x" else (lambda t: tfn(model or net, t, **tkw))
    if "generator" in kw:  # the same masks as the numpy feature: a fresh generator with the same seed
        seed = kw["generator"].initial_seed()
        def part(t, seed=seed):
            return tfn(model or net, t, **{**tkw, "generator": torch.Generator().manual_seed(seed)})

        ref = det.decision_function(F.FEATURES[name](model or net, held, **{**kw, "generator":
                                                                              torch.Generator().manual_seed(seed)}))
    # the head alone, on the very same feature values: exact
    xh = feat(held)
    np.testing.assert_allclose(det.decision_torch(torch.as_tensor(xh)).numpy(), det.decision_function(xh),
                               rtol=1e-10, atol=1e-12)
    score = TorchScore(det, [part])
    s = score(xr)
    assert s.shape == (held.shape[0],) and s.dtype == torch.float64
    np.testing.assert_allclose(s.detach().numpy(), ref, rtol=rtol, atol=rtol * max(1.0, np.abs(ref).max()))
    assert score.threshold == det.threshold_
    (g,) = torch.autograd.grad(s.sum(), xr)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    return det


def test_every_registered_detector_but_the_forest_has_a_mirror():
    for key, cls in DETECTORS.items():
        det = cls()
        assert det.has_torch_mirror() == (key != "fisher_spectrum"), key
    assert FisherSpectrumDetector(classifier="naive_bayes").has_torch_mirror()


def test_fisher_detectors_mirror(data):
    net, x, adv, drop = data
    # log-eigenvalues: the smallest eigenvalues (1e-9 of the largest) carry round-off of the two
    # exact formulas, relative 1e-7 after the log; the head itself is exact (checked inside)
    _check_mirror(FisherSpectrumDetector(classifier="naive_bayes"), net, x, adv, "fisher_eigenvalues", {"k": 9},
                  rtol=1e-6)
    for stat in ("trace", "form", "normalized"):
        _check_mirror(FisherScoreDetector(statistic=stat, log=stat == "form"), net, x, adv, "param_fisher_scores", {})


def test_density_detectors_mirror(data):
    net, x, adv, drop = data
    _check_mirror(KernelDensityDetector(), net, x, adv, "penultimate", {})
    _check_mirror(BayesianUncertaintyDetector(), drop, x, adv, "mc_dropout",
                  {"n": 8, "generator": torch.Generator().manual_seed(3)})
    _check_mirror(KDBUDetector(), drop, x, adv, "kdbu_features", {"n": 8, "generator": torch.Generator().manual_seed(4)})


def test_softmax_whitening_reconstruction_mirror(data):
    from fisherscope.models import build_model

    net, x, adv, drop = data
    for stat in ("max_prob", "kl_uniform", "entropy"):
        _check_mirror(SoftmaxDetector(statistic=stat), net, x, adv, "softmax_stats", {})
    _check_mirror(PCAWhiteningDetector(start=40, eps=1e-6), net, x, adv, "pixels", {}, rtol=1e-7)
    hg = build_model("hg_mlp", input_size=8).double().eval()
    _check_mirror(ReconstructionDetector(kind="squared"), hg, x, adv, "reconstruction_error", {"kind": "all"}, model=hg)


def test_neighbour_and_distance_detectors_mirror(data):
    net, x, adv, drop = data
    sizes = tuple(F.layer_sizes(net, x[:1]).values())
    _check_mirror(LIDDetector(k=10, layer_sizes=sizes), net, x, adv, "layer_activations", {})
    _check_mirror(MahalanobisDetector(), net, x, adv, "penultimate", {})
    msizes = tuple(F.layer_sizes(net, x[:1], pool="mean").values())
    _check_mirror(MahalanobisDetector(layer_sizes=msizes, reg=1e-3), net, x, adv, "layer_activations",
                  {"with_prediction": True, "pool": "mean"})


def test_random_forest_refuses_and_its_surrogate_agrees(data):
    net, x, adv, drop = data
    det, feat = _fit_predict(FisherSpectrumDetector(random_state=0), net, x, adv, "fisher_eigenvalues", {"k": 9})
    with pytest.raises(NoTorchMirrorError, match="LogisticSurrogate"):
        det.decision_torch(torch.as_tensor(feat(x[:3])))
    with pytest.raises(NoTorchMirrorError, match="surrogate"):
        det.torch_score(net, k=9)
    X = np.vstack([feat(x[:60]), feat(adv[:60])])
    y = np.r_[np.zeros(60), np.ones(60)].astype(int)
    sur = LogisticSurrogate(det).fit(X, y).calibrate(feat(x[60:75]))
    held = np.vstack([feat(x[75:]), feat(adv[75:])])
    assert sur.agreement(held) >= 0.7
    np.testing.assert_allclose(sur.decision_torch(torch.as_tensor(held)).numpy(), sur.decision_function(held),
                               rtol=1e-10)
    xr = adv[75:].clone().requires_grad_(True)
    s = TorchScore(sur, [lambda t: TORCH_FEATURES["fisher_eigenvalues"](net, t, k=9)])(xr)
    (g,) = torch.autograd.grad(s.sum(), xr)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_clear_errors_unfitted_no_threshold_no_model(data):
    net, x, _, _ = data
    with pytest.raises(NotFittedError, match="not fitted"):
        SoftmaxDetector().decision_torch(torch.zeros(2, 3))
    with pytest.raises(NotFittedError, match="not fitted"):
        SoftmaxDetector().torch_score(net)
    det = SoftmaxDetector().fit(F.softmax_stats(net, x))
    with pytest.raises(ValueError, match="needs the model"):
        det.torch_score()
    del det.threshold_
    with pytest.raises(NotFittedError, match="threshold"):
        TorchScore(det, [lambda t: TORCH_FEATURES["softmax_stats"](net, t)])
    with pytest.raises(NotFittedError, match="not fitted"):
        LogisticSurrogate(FisherSpectrumDetector()).fit(np.ones((4, 3)), np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="expecting 3 features"):
        SoftmaxDetector().fit(F.softmax_stats(net, x)).decision_torch(torch.zeros(2, 2))
    score = SoftmaxDetector().fit(F.softmax_stats(net, x)).torch_score(net)
    assert np.isfinite(score.threshold) and score(x[:4]).shape == (4,)
