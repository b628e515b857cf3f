"""PCA-whitening, reconstruction, LID and Mahalanobis detectors and their features.

Oracles: whitening against its definition and scikit-learn's PCA, Mahalanobis distances
against scipy, LID against a brute-force numpy formula, features against direct
computations; synthetic separable problems. The scikit-learn checks and the fit / predict /
score / pickle contracts of every registered detector are in tests/contract/test_detectors.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from sklearn.decomposition import PCA
from torch import nn

from fisherscope.detectors.lid import LIDDetector, lid_mle, match_rows
from fisherscope.detectors.mahalanobis import MahalanobisDetector
from fisherscope.detectors.reconstruction import ReconstructionDetector
from fisherscope.detectors.whitening import PCAWhiteningDetector
from fisherscope.features.layers import layer_activations, layer_sizes
from fisherscope.features.pca import fit_pca_whitening, pca_coefficients, pixels
from fisherscope.features.reconstruction import reconstruction_error
from fisherscope.models import build_model

# ----------------------------------------------------------------- synthetic data


def _low_rank(n, d=30, r=18, seed=0):
    """n rows on an r-dimensional affine subspace of R^d, with unequal variances."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0][:, :r]
    z = rng.normal(size=(n, r)) * np.linspace(3.0, 0.2, r)
    return z @ basis.T + rng.normal(size=d), basis


def _classes(n, k=3, d=6, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    c = rng.integers(0, k, n)
    centers = 4.0 * np.eye(k, d)
    a = rng.normal(size=(d, d)) * 0.3 + np.eye(d)
    f = centers[c] + rng.normal(size=(n, d)) @ a + shift
    return c, f


# ------------------------------------------------------------------- PCA whitening


def test_whitening_gives_identity_covariance_on_leading_rank():
    x, _ = _low_rank(400)
    w = fit_pca_whitening(x, eps=1e-11)
    assert w.rank == 18 and w.n_samples == 400
    c = pca_coefficients(x, w)
    np.testing.assert_allclose(np.cov(c[:, :18].T), np.eye(18), atol=1e-8)
    assert np.abs(c[:, 18:]).max() < 1e-6  # training data has no energy off its subspace
    # eigenvalues decreasing, eigenvectors orthonormal, mean centred
    assert np.all(np.diff(w.eigenvalues) <= 1e-12)
    np.testing.assert_allclose(w.components.T @ w.components, np.eye(30), atol=1e-12)
    np.testing.assert_allclose(c.mean(0), 0.0, atol=1e-9)


def test_whitening_matches_sklearn_pca_up_to_sign():
    x, _ = _low_rank(300, d=12, r=12, seed=1)
    ours = fit_pca_whitening(x, eps=0.0).transform(x)
    ref = PCA(whiten=True).fit(x).transform(x)
    np.testing.assert_allclose(np.abs(ours), np.abs(ref), rtol=1e-7, atol=1e-9)
    zca = fit_pca_whitening(x, eps=0.0).zca(x)
    np.testing.assert_allclose(np.cov(zca.T), np.eye(12), atol=1e-8)


def test_whitening_eps_zero_needs_full_rank_and_torch_input_works():
    x, _ = _low_rank(100)
    with pytest.raises(ValueError, match="rank-deficient"):
        fit_pca_whitening(x, eps=0.0)
    with pytest.raises(ValueError, match="eps must be"):
        fit_pca_whitening(x, eps=-1.0)
    imgs = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    w = fit_pca_whitening(imgs)
    np.testing.assert_allclose(w.transform(imgs), w.transform(imgs.numpy().reshape(50, -1)))
    assert pixels(imgs).shape == (50, 16) and pixels(imgs).dtype == np.float64
    with pytest.raises(ValueError, match="16 values per sample"):
        w.transform(torch.rand(2, 1, 3, 3))
    with pytest.raises(TypeError, match="PCAWhitening"):
        pca_coefficients(imgs, "not a whitening")


def test_score_is_variance_of_trailing_coefficients_and_scales_with_one_over_eps():
    x, basis = _low_rank(400)
    rng = np.random.default_rng(3)
    # an input with energy orthogonal to the training subspace
    off = rng.normal(size=30)
    off -= basis @ (basis.T @ off)
    probe = x[:3] + off
    det = PCAWhiteningDetector(start=18, eps=1e-8).fit(x)
    c = fit_pca_whitening(x, eps=1e-8).transform(probe)
    np.testing.assert_allclose(det.decision_function(probe), c[:, 18:].var(1), rtol=1e-10)
    # all trailing coefficients divide by sqrt(0 + eps): the score scales like 1/eps
    s6 = PCAWhiteningDetector(start=18, eps=1e-6).fit(x).decision_function(probe)
    np.testing.assert_allclose(det.decision_function(probe) / s6, 100.0, rtol=1e-4)
    # clean rows: round-off only
    assert det.decision_function(x[:3]).max() < 1e-6 < det.decision_function(probe).min()


def test_pca_start_resolution_and_prefitted_whitening():
    assert PCAWhiteningDetector().fit(np.random.default_rng(0).normal(size=(30, 784))).start_ == 700
    x, _ = _low_rank(200, d=40, r=30)
    assert PCAWhiteningDetector().fit(x).start_ == round(40 * 700 / 784)
    assert PCAWhiteningDetector(start=0.5).fit(x).start_ == 20
    w = fit_pca_whitening(x, eps=1e-9)
    a = PCAWhiteningDetector(eps=1e-9, whitening=w).fit(x[:20])  # whitening not refitted
    b = PCAWhiteningDetector(eps=1e-9).fit(x)
    np.testing.assert_allclose(a.decision_function(x), b.decision_function(x), rtol=1e-9)
    for bad in (39, -1, 1.5, "700"):
        with pytest.raises(ValueError, match="start"):
            PCAWhiteningDetector(start=bad).fit(x)
    with pytest.raises(ValueError, match="eps"):
        PCAWhiteningDetector(eps=1e-11, whitening=w).fit(x)
    with pytest.raises(ValueError, match="40 values per sample|fitted on 40"):
        PCAWhiteningDetector(eps=1e-9, whitening=w).fit(x[:, :39])


def test_pca_detector_fits_on_clean_rows_only():
    x, basis = _low_rank(300)
    off = np.random.default_rng(1).normal(size=(100, 30)) * 0.05
    X = np.vstack([x, x[:100] + off])
    y = np.r_[np.zeros(300), np.ones(100)].astype(int)
    a = PCAWhiteningDetector(start=18).fit(X, y)
    b = PCAWhiteningDetector(start=18).fit(x)
    np.testing.assert_allclose(a.decision_function(X), b.decision_function(X), rtol=1e-8)


# ------------------------------------------------------------------ reconstruction


def test_reconstruction_detector_columns():
    X2 = np.array([[0.1, 0.5], [-0.2, 0.1], [0.3, 0.0]])
    np.testing.assert_array_equal(ReconstructionDetector().fit(X2).decision_function(X2), X2[:, 0])
    sq = ReconstructionDetector(kind="squared").fit(X2)
    np.testing.assert_array_equal(sq.decision_function(X2), X2[:, 1])
    one = X2[:, 1:]
    np.testing.assert_array_equal(sq.fit(one).decision_function(one), one[:, 0])
    with pytest.raises(ValueError, match="kind must be one of"):
        ReconstructionDetector(kind="abs").fit(X2)


class _HalfDecoder(nn.Module):
    """A 'classifier-autoencoder' whose reconstruction is x / 2 (closed-form errors)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x.flatten(1))

    def reconstruct(self, x):
        return x / 2


def test_reconstruction_error_closed_form_and_errors():
    model = _HalfDecoder().eval()
    x = torch.rand(7, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    flat = x.double().flatten(1).numpy()
    both = reconstruction_error(model, x, kind="all", batch_size=3)
    np.testing.assert_allclose(both[:, 0], (flat / 2).mean(1), rtol=1e-6)
    np.testing.assert_allclose(both[:, 1], (flat / 2) ** 2 @ np.ones(4) / 4, rtol=1e-6)
    np.testing.assert_array_equal(reconstruction_error(model, x), both[:, :1])
    np.testing.assert_array_equal(reconstruction_error(model, x, kind="squared"), both[:, 1:])
    with pytest.raises(TypeError, match="reconstruct"):
        reconstruction_error(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), x)
    with pytest.raises(ValueError, match="kind"):
        reconstruction_error(model, x, kind="l1")
    with pytest.raises(ValueError, match="outside bounds"):
        reconstruction_error(model, x + 2)


# --------------------------------------------------------------------------- LID


def _brute_lid(query, ref, k, exclude=None):
    out = []
    for i, q in enumerate(query):
        d = np.sqrt(((ref - q) ** 2).sum(1))
        if exclude is not None and exclude[i] >= 0:
            d = np.delete(d, exclude[i])
        r = np.sort(d)[:k]
        out.append(-1.0 / np.mean(np.log(r / r[-1])))
    return np.array(out)


def test_lid_mle_matches_brute_force():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(120, 7)) * np.linspace(2, 0.1, 7)
    query = rng.normal(size=(40, 7))
    np.testing.assert_allclose(lid_mle(query, ref, k=10, batch_size=16), _brute_lid(query, ref, 10), rtol=1e-10)
    # leave-one-out on reference rows: the row itself is never a neighbour
    loo = lid_mle(ref[:30], ref, k=10, exclude=np.arange(30), batch_size=7)
    np.testing.assert_allclose(loo, _brute_lid(ref[:30], ref, 10, exclude=np.arange(30)), rtol=1e-10)
    assert np.all(loo > 0) and np.all(np.isfinite(loo))
    # without exclusion a reference row finds itself at distance 0: degenerate estimate 0
    assert np.all(lid_mle(ref[:5], ref, k=10) == 0.0)
    with pytest.raises(ValueError, match="k must be an integer"):
        lid_mle(query, ref, k=120, exclude=np.zeros(40, dtype=int))


def test_match_rows():
    ref = np.array([[0.0, 1.0], [2.0, 3.0], [2.0, 3.0], [4.0, 5.0]])
    q = np.array([[4.0, 5.0], [1.0, 1.0], [0.0, 1.0], [2.0, 3.0]])
    got = match_rows(q, ref)
    assert got[0] == 3 and got[1] == -1 and got[2] == 0 and got[3] in (1, 2)


def test_lid_detector_features_are_leave_one_out_against_clean_reference():
    rng = np.random.default_rng(1)
    clean = rng.normal(size=(80, 5))
    adv = clean[:20] + 0.5 * rng.normal(size=(20, 5))
    X = np.vstack([clean, adv])
    y = np.r_[np.zeros(80), np.ones(20)].astype(int)
    det = LIDDetector(k=8, layer_sizes=(2, 3)).fit(X, y)
    np.testing.assert_array_equal(det.reference_, clean)
    lids = det.lid_features(X)
    for j, s in enumerate([slice(0, 2), slice(2, 5)]):
        ex = np.r_[np.arange(80), -np.ones(20, dtype=int)]
        np.testing.assert_allclose(lids[:, j], _brute_lid(X[:, s], clean[:, s], 8, exclude=ex), rtol=1e-10)
    # the threshold was set on exactly these (leave-one-out) clean scores
    clean_scores = det.decision_function(clean)
    assert (clean_scores > det.threshold_).mean() <= 0.05
    # test rows never enter the reference: scoring a new batch changes nothing for others
    new = rng.normal(size=(10, 5))
    a = det.decision_function(np.vstack([new, adv]))[10:]
    np.testing.assert_allclose(a, det.decision_function(adv))


def test_lid_separates_off_manifold_points():
    rng = np.random.default_rng(2)

    def plane(n):
        return np.c_[rng.normal(size=(n, 2)), np.zeros((n, 8))]

    fit_clean, test_clean = plane(400), plane(200)
    fit_adv = fit_clean[:200] + 0.2 * rng.normal(size=(200, 10))
    test_adv = test_clean + 0.2 * rng.normal(size=(200, 10))
    det = LIDDetector(k=20).fit(np.vstack([fit_clean, fit_adv]), np.r_[np.zeros(400), np.ones(200)])
    auc = det.score(np.vstack([test_clean, test_adv]), np.r_[np.zeros(200), np.ones(200)])
    assert auc > 0.95


def test_lid_bad_inputs():
    X = np.random.default_rng(0).normal(size=(30, 4))
    y = np.r_[np.zeros(20), np.ones(10)].astype(int)
    with pytest.raises(ValueError, match="add up to"):
        LIDDetector(k=3, layer_sizes=(2, 3)).fit(X, y)
    with pytest.raises(ValueError, match=r"layer_sizes must be None or a non-empty sequence of ints >= 1.*got \(4, 0\)"):
        LIDDetector(k=3, layer_sizes=(4, 0)).fit(X, y)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, n_clean - 1\]"):
        LIDDetector(k=20).fit(X, y)
    with pytest.raises(ValueError, match="supervised"):
        LIDDetector(k=3).fit(X)
    det = LIDDetector(k=3).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        det.decision_function(X[:, :3])


# ------------------------------------------------------------------- Mahalanobis


def _tied_precision(c, f):
    """Pseudo-inverse of the pooled within-class covariance (divisor n), computed naively."""
    cov = np.zeros((f.shape[1], f.shape[1]))
    for k in np.unique(c):
        d = f[c == k] - f[c == k].mean(0)
        cov += d.T @ d
    return np.linalg.pinv(cov / len(f)), {k: f[c == k].mean(0) for k in np.unique(c)}


def test_mahalanobis_matches_scipy():
    c, f = _classes(300)
    det = MahalanobisDetector().fit(np.c_[c, f])
    assert not det.supervised
    vi, means = _tied_precision(c, f)
    cq, q = _classes(25, seed=5, shift=1.0)
    expected = [min(scipy_mahalanobis(u, m, vi) for m in means.values()) for u in q]
    np.testing.assert_allclose(det.decision_function(np.c_[cq, q]), expected, rtol=1e-9)
    # column 0 only assigns classes in fitting: scoring ignores it
    np.testing.assert_array_equal(det.decision_function(np.c_[cq, q]), det.decision_function(np.c_[0 * cq, q]))


def test_mahalanobis_several_layers_scipy_per_layer_and_logistic_regression():
    c, f = _classes(300, d=6)
    _, f_adv = _classes(100, d=6, seed=9, shift=2.5)
    X = np.vstack([np.c_[c, f], np.c_[c[:100], f_adv]])
    y = np.r_[np.zeros(300), np.ones(100)].astype(int)
    det = MahalanobisDetector(layer_sizes=(2, 4)).fit(X, y)
    assert det.supervised
    scores = det.layer_scores(X)
    for j, s in enumerate([slice(0, 2), slice(2, 6)]):
        vi, means = _tied_precision(c, f[:, s])
        expected = [min(scipy_mahalanobis(u, m, vi) for m in means.values()) for u in X[:, 1:][:, s]]
        np.testing.assert_allclose(scores[:, j], expected, rtol=1e-9)
    z = det.scaler_.transform(scores)
    np.testing.assert_allclose(det.decision_function(X), z @ det.classifier_.coef_[0] + det.classifier_.intercept_[0])
    with pytest.raises(ValueError, match="supervised"):
        MahalanobisDetector(layer_sizes=(2, 4)).fit(X[:300])


def test_mahalanobis_separates_shifted_points():
    c, f = _classes(600, seed=1)
    ct, ft = _classes(200, seed=2)
    _, fa = _classes(200, seed=3, shift=2.0)
    det = MahalanobisDetector().fit(np.c_[c, f])
    X = np.vstack([np.c_[ct, ft], np.c_[ct, fa]])
    assert det.score(X, np.r_[np.zeros(200), np.ones(200)]) > 0.95


def test_mahalanobis_bad_inputs():
    c, f = _classes(50)
    with pytest.raises(ValueError, match="column 0 of X must hold predicted classes"):
        MahalanobisDetector().fit(f)  # features without the prediction column
    with pytest.raises(ValueError, match="1 feature"):
        MahalanobisDetector().fit(c[:, None].astype(float))
    with pytest.raises(ValueError, match="add up to"):
        MahalanobisDetector(layer_sizes=(3, 4)).fit(np.c_[c, f], np.r_[np.zeros(40), np.ones(10)])
    with pytest.raises(ValueError, match="reg"):
        MahalanobisDetector(reg=-1.0).fit(np.c_[c, f])
    det = MahalanobisDetector().fit(np.c_[c, f])
    with pytest.raises(ValueError, match="features"):
        det.decision_function(np.c_[c, f][:, :4])


# --------------------------------------------------------------- layer activations


def _tiny_convnet():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 5), nn.Tanh(),
        nn.Linear(5, 4),
    ).eval()


def test_layer_activations_match_direct_computation():
    net = _tiny_convnet()
    x = torch.rand(9, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a1 = net[1](net[0](x))
        a4 = net[4](net[3](net[2](a1)))
        out = net[5](a4)
    assert layer_sizes(net, x) == {"1": 48, "4": 5, "output": 4}
    got = layer_activations(net, x, batch_size=4)
    want = torch.cat([a1.flatten(1), a4, out], 1).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    pooled = layer_activations(net, x, ["1", "output"], pool="mean", with_prediction=True)
    assert layer_sizes(net, x, ["1", "output"], pool="mean") == {"1": 3, "output": 4}
    np.testing.assert_array_equal(pooled[:, 0], out.argmax(1).double().numpy())
    np.testing.assert_allclose(pooled[:, 1:4], a1.mean((2, 3)).double().numpy(), rtol=1e-6)


def test_layer_activations_errors_and_mode_restored():
    net = _tiny_convnet()
    x = torch.rand(3, 1, 4, 4)
    with pytest.raises(ValueError, match="no submodule named 'fc'"):
        layer_activations(net, x, ["fc"])
    with pytest.raises(ValueError, match="pool"):
        layer_activations(net, x, pool="max")
    with pytest.raises(TypeError, match="nn.Module"):
        layer_activations(lambda t: t, x)
    with pytest.raises(ValueError, match="run more than once"):
        shared = nn.ReLU()
        layer_activations(nn.Sequential(nn.Flatten(), shared, nn.Linear(16, 3), shared), x)
    hg = build_model("hg_mlp", input_size=4, hidden=8)
    with pytest.raises(ValueError, match="did not run"):
        layer_activations(hg.eval(), x, ["decoder.bottleneck"])
    hg.train()
    with pytest.warns(Warning, match="training mode"):
        layer_activations(hg, x)
    assert hg.training and all(m.training for m in hg.modules())
    # hg_mlp: the decoder's activations are not in the default layers (it does not run)
    assert list(layer_sizes(hg.eval(), x)) == ["encoder.2", "encoder.5", "output"]
