"""The detector evaluation protocol (fisherscope.evaluation.evaluate_detectors).

Tiny float64 models; every test runs in well under a second or two.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from _models import LinearSoftmax, tiny_mlp
from fisherscope.attacks import FGM
from fisherscope.detectors import (
    Detector,
    FisherSpectrumDetector,
    ReconstructionDetector,
    SoftmaxDetector,
)
from fisherscope.detectors.lid import match_rows
from fisherscope.evaluation import (
    DetectorSpec,
    Feature,
    detection_metrics,
    evaluate_detectors,
    matched_noise,
    source_splits,
)
from fisherscope.evaluation.detection import _weighted_metrics

SEEN = 1e6


class Memoriser(Detector):
    """Scores +1e6 / −1e6 for rows it was fitted on as adversarial / clean, else pseudo-random.

    Any scoring row that also took part in fitting (as clean or adversarial) moves the
    AUROC towards 1; rows never seen get a value in [0, 1) that carries no label.
    """

    feature = "pixels"
    supervised = True

    def __init__(self, *, target_fpr: float = 0.05) -> None:
        super().__init__(target_fpr=target_fpr)

    def _fit(self, X, y):
        self.rows_, self.labels_ = X.copy(), y.copy()
        self.w_ = np.random.default_rng(0).normal(size=X.shape[1])

    def _decision(self, X):
        idx = match_rows(X, self.rows_)
        rnd = np.modf(np.abs(X @ self.w_) * 1e3)[0]
        seen = np.where(self.labels_[np.maximum(idx, 0)] == 1, SEEN, -SEEN)
        return np.where(idx >= 0, seen, rnd)


class CleanMemoriser(Memoriser):
    supervised = False


def _setup(n=240, k=3, seed=0):
    model = tiny_mlp(d=12, k=k, hidden=16, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 12, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


# ----------------------------------------------------------------------------- splits


def test_source_splits_partition_stratified_and_seeded():
    y = np.repeat(np.arange(4), [40, 40, 40, 80])
    s = source_splits(y, (0.5, 0.25, 0.25), seed=1)
    assert s.shape == y.shape and set(np.unique(s)) == {0, 1, 2}
    for c, n_c in zip(range(4), (40, 40, 40, 80), strict=True):  # every class in proportion
        assert np.bincount(s[y == c], minlength=3).tolist() == [n_c // 2, n_c // 4, n_c // 4]
    assert np.array_equal(s, source_splits(y, (0.5, 0.25, 0.25), seed=1))
    assert not np.array_equal(s, source_splits(y, (0.5, 0.25, 0.25), seed=2))
    for bad in [(0.5, 0.5), (0.6, 0.3, 0.3), (1.0, 0.0, 0.0), "abc"]:
        with pytest.raises(ValueError, match="three fractions"):
            source_splits(y, bad)


def test_rows_follow_their_source_image_split():
    model, x, y = _setup()
    res = evaluate_detectors(model, x, y, {"fgm": FGM(eps=1.0)}, {"soft": SoftmaxDetector()},
                             n_bootstrap=0)
    pos = res.positives["fgm"]
    row = res.row("soft", "fgm")
    assert row["n_pos"] == int((pos & (res.split == 2)).sum()) > 20
    assert row["n_neg"] == int((res.correct & (res.split == 2)).sum())
    assert row["n_neg_cal"] == int((res.correct & (res.split == 1)).sum())
    assert row["n_neg_fit"] == int((res.correct & (res.split == 0)).sum())
    # the scored positives are exactly the adversarials of the test-split images
    scores = res.scores[("soft", "fgm")]["pos"]
    assert scores.shape == (row["n_pos"],)


# -------------------------------------------------------------------- no leak into fits


@pytest.mark.parametrize("cls", [Memoriser, CleanMemoriser])
def test_memorising_detector_is_at_chance_on_the_test_split(cls):
    """No scoring row took part in any fit: a memoriser scores at chance, never 1.0."""
    model, x, y = _setup(n=400)
    attacks = {"fgm": FGM(eps=1.0), "fgm_small": FGM(eps=0.5)}
    spec = DetectorSpec(cls(), "pixels", fit_noise=cls.supervised)
    res = evaluate_detectors(model, x, y, attacks, {"mem": spec}, n_bootstrap=0, seed=3)
    for a in attacks:
        r = res.row("mem", a)
        assert r["error"] is None and r["n_pos"] > 40
        s = res.scores[("mem", a)]
        for part in ("neg", "pos", "noise"):
            assert np.all(np.abs(s[part]) < SEEN), f"a {part} test row of {a} was seen in fitting"
        assert abs(r["auroc"] - 0.5) < 0.15
    if cls.supervised:  # cross-attack: trained on one attack's fit split, tested on another's test split
        m = res.cross_matrix("mem")
        assert np.all(np.abs(m - 0.5) < 0.15)

    # the control: the same memoriser fitted on the scored rows is perfect, so the test can fail
    s = res.scores[("mem", "fgm")]
    test_idx = np.flatnonzero(res.split == 2)
    neg_x = x[test_idx[res.correct[test_idx]]].numpy()
    adv = FGM(eps=1.0).run(model, x[test_idx], y[test_idx], generator=torch.Generator()).x_adv.numpy()
    pos_x = adv[res.positives["fgm"][test_idx]]
    X = np.vstack([neg_x, pos_x])
    lab = np.r_[np.zeros(len(neg_x)), np.ones(len(pos_x))].astype(int)
    leaky = Memoriser().fit(X, lab)
    assert leaky.score(X, lab) == 1.0
    assert len(s["neg"]) == len(neg_x) and len(s["pos"]) == len(pos_x)


# --------------------------------------------------------------------------- positives


def test_positives_are_successful_adversarials_of_correct_inputs():
    model, x, y_pred = _setup(n=300)
    y = y_pred.clone()
    y[:60] = (y[:60] + 1) % 3  # 60 images the model now gets wrong
    x_adv = FGM(eps=1.0).run(model, x, y_pred).x_adv  # attack every image (also the wrong ones)
    x_adv[60:90] = x[60:90]  # 30 correct images whose attack did nothing
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).numpy()
        fooled = (model(x_adv).argmax(1) != y).numpy()
    res = evaluate_detectors(model, x, y, {"pre": x_adv}, {"soft": SoftmaxDetector()}, n_bootstrap=0)
    expected = correct & fooled
    assert np.array_equal(res.positives["pre"], expected)
    assert not res.positives["pre"][:90].any()  # misclassified sources and failed attacks
    st = res.attacks["pre"]
    assert st["n_correct"] == int(correct.sum()) and st["n_success"] == int(expected.sum())
    assert math.isclose(st["success_rate"], expected.sum() / correct.sum())
    # clean="all": misclassified images join the negatives, positives are unchanged
    res_all = evaluate_detectors(model, x, y, {"pre": x_adv}, {"soft": SoftmaxDetector()},
                                 n_bootstrap=0, clean="all")
    assert res_all.row("soft", "pre")["n_neg"] == int((res_all.split == 2).sum())
    assert res_all.row("soft", "pre")["n_pos"] == res.row("soft", "pre")["n_pos"]


# ------------------------------------------------------------------------------- noise


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matched_noise_has_the_adversarial_l2_norm_after_clipping(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(64, 1, 6, 6, generator=g) > 0.6).to(dtype)  # MNIST-like: pixels at 0 or 1
    delta = torch.randn(x.shape, generator=g, dtype=dtype)
    delta *= (torch.rand(64, generator=g, dtype=dtype) * 3).reshape(-1, 1, 1, 1) / delta.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    x_adv = (x + delta).clamp(0, 1)
    x_adv[0] = x[0]  # a zero perturbation
    noisy = matched_noise(x, x_adv, generator=torch.Generator().manual_seed(1))
    want = (x_adv - x).double().flatten(1).norm(dim=1)
    got = (noisy - x).double().flatten(1).norm(dim=1)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert torch.allclose(got, want, rtol=tol, atol=tol)
    assert noisy.dtype == dtype and noisy.min() >= 0 and noisy.max() <= 1
    assert torch.equal(noisy[0], x[0])
    # clipping matters here: a Gaussian step of the target norm, then clipped, falls short ...
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    naive = (x + want.reshape(-1, 1, 1, 1) * z / z.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)).clamp(0, 1)
    assert ((naive - x).flatten(1).norm(dim=1)[1:] / want[1:]).mean() < 0.8
    # ... and the noise is not the adversarial perturbation
    cos = torch.nn.functional.cosine_similarity((noisy - x).flatten(1)[1:], (x_adv - x).flatten(1)[1:])
    assert cos.abs().mean() < 0.5


def test_protocol_noise_rows_match_each_positive():
    model, x, y = _setup()
    res = evaluate_detectors(model, x, y, {"fgm": FGM(eps=1.0)}, {"soft": SoftmaxDetector()}, n_bootstrap=0)
    st = res.attacks["fgm"]
    assert st["noise_max_abs_l2_diff"] < 1e-8
    assert math.isclose(st["noise_mean_l2"], st["mean_l2"], rel_tol=1e-9)
    r = res.row("soft", "fgm")
    assert r["n_noise"] == r["n_pos"] and 0 <= r["noise_flagged"] <= 1


# ----------------------------------------------------------------------------- metrics


def test_metrics_equal_sklearn_with_ties():
    rng = np.random.default_rng(0)
    neg = np.round(rng.normal(0, 1, 300), 1)  # rounding makes ties
    pos = np.round(rng.normal(1, 1, 200), 1)
    m = detection_metrics(neg, pos, threshold=0.5, n_bootstrap=0)
    lab = np.r_[np.zeros(300), np.ones(200)]
    s = np.r_[neg, pos]
    assert m.auroc == pytest.approx(roc_auc_score(lab, s), abs=1e-12)
    assert m.aupr == pytest.approx(average_precision_score(lab, s), abs=1e-12)
    assert m.tpr == pytest.approx((pos > 0.5).mean()) and m.fpr == pytest.approx((neg > 0.5).mean())
    assert math.isnan(m.ci["auroc"][0])


def test_weighted_metrics_equal_repeated_rows():
    """The bootstrap's weights are the same as physically repeating rows."""
    rng = np.random.default_rng(1)
    neg, pos = np.round(rng.normal(0, 1, 40), 1), np.round(rng.normal(0.8, 1, 30), 1)
    wn, wp = rng.integers(0, 4, 40), rng.integers(0, 4, 30)
    out = _weighted_metrics(neg, pos, 0.3, wn[None].astype(float), wp[None].astype(float))
    rn, rp = np.repeat(neg, wn), np.repeat(pos, wp)
    lab, s = np.r_[np.zeros(rn.size), np.ones(rp.size)], np.r_[rn, rp]
    assert out["auroc"][0] == pytest.approx(roc_auc_score(lab, s), abs=1e-12)
    assert out["aupr"][0] == pytest.approx(average_precision_score(lab, s), abs=1e-12)
    assert out["tpr"][0] == pytest.approx((rp > 0.3).mean())


@pytest.mark.parametrize("paired", [False, True])
def test_bootstrap_intervals_contain_the_estimate_and_shrink(paired):
    rng = np.random.default_rng(2)
    widths = []
    for n in (80, 2000):
        neg, pos = rng.normal(0, 1, n), rng.normal(1, 1, n)
        groups = dict(neg_groups=np.arange(n), pos_groups=np.arange(n)) if paired else {}
        m = detection_metrics(neg, pos, threshold=1.0, n_bootstrap=400, seed=0, **groups)
        for k in ("auroc", "aupr", "tpr", "fpr"):
            lo, hi = m.ci[k]
            assert lo <= getattr(m, k) <= hi, (k, n)
        widths.append(m.ci["auroc"][1] - m.ci["auroc"][0])
    assert widths[1] < 0.35 * widths[0]  # ~ 1/sqrt(25) = 0.2 expected


def test_bootstrap_interval_coverage():
    """The 95% AUROC interval covers the true value Φ(1/√2) = 0.7602 in most of 60 draws."""
    rng = np.random.default_rng(3)
    hits = 0
    for i in range(60):
        neg, pos = rng.normal(0, 1, 150), rng.normal(1, 1, 150)
        m = detection_metrics(neg, pos, n_bootstrap=300, seed=i, neg_groups=np.arange(150),
                              pos_groups=np.arange(150))
        hits += m.ci["auroc"][0] <= 0.76025 <= m.ci["auroc"][1]
    assert 51 <= hits <= 60  # expected 57; 51 is about 3.5 standard deviations below


# --------------------------------------------------------------------- synthetic case


def test_synthetic_separable_case_gives_auroc_one():
    w = torch.zeros(2, 16, dtype=torch.float64)
    w[:, 0] = torch.tensor([-10.0, 10.0])  # class 1 iff x0 > 0.5; the other 15 inputs unused
    model = LinearSoftmax(w, torch.tensor([5.0, -5.0], dtype=torch.float64)).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 16, generator=g, dtype=torch.float64)
    x[:, 3] *= 0.5  # clean marker column in [0, 0.5]
    with torch.no_grad():
        y = model(x).argmax(1)
    x_adv = x.clone()
    x_adv[:, 0] = 1 - x[:, 0]  # flips the class
    x_adv[:, 3] = 1.0  # and leaves a mark
    det = DetectorSpec(FisherSpectrumDetector(random_state=0, log_transform=False), "pixels")
    res = evaluate_detectors(model, x, y, {"flip": x_adv}, {"rf": det}, n_bootstrap=200)
    r = res.row("rf", "flip")
    assert r["n_pos"] > 60 and r["auroc"] > 0.99 and r["tpr"] > 0.9 and r["fpr"] <= 0.15
    assert r["auroc_lo"] > 0.97
    assert ("rf", "flip") in res.roc


# -------------------------------------------------------------- cross, cache, reports


def test_cross_attack_diagonal_is_the_table_and_records_are_json():
    model, x, y = _setup(n=300)
    attacks = {"big": FGM(eps=1.2), "small": FGM(eps=0.5)}
    dets = {"rf": DetectorSpec(FisherSpectrumDetector(random_state=0), "pixels", fit_noise=True),
            "soft": SoftmaxDetector()}
    res = evaluate_detectors(model, x, y, attacks, dets, n_bootstrap=50)
    m = res.cross_matrix("rf")
    for i, a in enumerate(attacks):
        assert m[i, i] == res.row("rf", a)["auroc"]
        assert res.row("rf", a)["n_neg_fit"] > res.row("soft", a)["n_neg_fit"]  # noise rows in the fit
    assert "soft" not in res.cross  # unsupervised: no matrix
    with pytest.raises(KeyError, match="unsupervised"):
        res.cross_matrix("soft")
    json.dumps(res.to_records())
    md = res.to_markdown()
    assert "| rf |" in md and "trained on" in md and "TPR at 5% FPR" in md


def test_features_computed_once_per_row_set_and_cached_across_calls():
    model, x, y = _setup(n=200)
    calls = []

    def feat(m, xb):
        calls.append(xb.shape[0])
        return xb.numpy()

    dets = {"a": DetectorSpec(SoftmaxDetector(column=0), feat), "b": DetectorSpec(SoftmaxDetector(column=1), feat)}
    cache = {}
    evaluate_detectors(model, x, y, {"fgm": FGM(eps=1.0)}, dets, n_bootstrap=0, feature_cache=cache)
    first = len(calls)
    assert first == 6  # clean fit / calibrate / test, adversarial fit / test, noise test; shared by a and b
    evaluate_detectors(model, x, y, {"fgm": FGM(eps=1.0), "fgm2": FGM(eps=0.5)}, dets, n_bootstrap=0,
                       feature_cache=cache)
    assert len(calls) == first + 3  # only the new attack's adversarial and noise rows


def test_errors_are_reported_per_detector_and_bad_inputs_rejected():
    model, x, y = _setup(n=120)
    with pytest.warns(UserWarning, match="reconstruct"):
        res = evaluate_detectors(model, x, y, {"fgm": FGM(eps=1.0)},
                                 {"rec": ReconstructionDetector(), "soft": SoftmaxDetector()}, n_bootstrap=0)
    assert "reconstruct" in res.row("rec", "fgm")["error"] and res.row("soft", "fgm")["error"] is None
    assert "error" in res.to_markdown()
    with pytest.raises(ValueError, match="aligned with x"):
        evaluate_detectors(model, x, y, {"bad": x[:5]}, {"soft": SoftmaxDetector()})
    with pytest.raises(ValueError, match="unsupervised"):
        evaluate_detectors(model, x, y, {"fgm": FGM(eps=1.0)},
                           {"s": DetectorSpec(SoftmaxDetector(), fit_noise=True)})
    with pytest.raises(TypeError, match="Detector"):
        evaluate_detectors(model, x, y, {"fgm": FGM(eps=1.0)}, {"s": object()})
    with pytest.raises(ValueError, match="three fractions"):
        evaluate_detectors(model, x, y, {"fgm": FGM(eps=1.0)}, {"s": SoftmaxDetector()}, splits=(0.5, 0.5))
    with pytest.raises(ValueError, match="unknown feature"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Feature("no_such_feature").resolve()
