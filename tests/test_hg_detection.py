"""Hendrycks & Gimpel §3: the log-barrier attacks (float64 oracles) and the detection / adaptive
experiment kinds (on digits, tiny settings)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import tiny_mlp  # noqa: E402
from _rerender import assert_rerenders_from_the_store  # noqa: E402
from fisherscope.attacks import ATTACKS, HGTargeted  # noqa: E402
from fisherscope.attacks.detector_aware import (  # noqa: E402
    BarrierHGTargeted,
    ImageScore,
    SoftmaxKL,
    band_around,
)
from fisherscope.detectors import PCAWhiteningDetector  # noqa: E402
from fisherscope.evaluation import detection_metrics  # noqa: E402
from fisherscope.exceptions import NotFittedError  # noqa: E402
from fisherscope.experiments import Context, load_config, run_experiment  # noqa: E402
from fisherscope.experiments.base import render_stored  # noqa: E402
from fisherscope.experiments.hendrycks_gimpel_detection import paired_detection_metrics  # noqa: E402
from fisherscope.features import TrailingVarianceScore, fit_pca_whitening, softmax_stats  # noqa: E402

K, D = 5, 12


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def setup():
    model = tiny_mlp(d=D, k=K, seed=3)
    x = torch.rand(16, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def kl_of(model, x):
    with torch.no_grad():
        return SoftmaxKL()(x, model(x))


# ----------------------------------------------------------------------------- statistics


def test_whitened_variance_equals_the_detector_score_and_has_exact_gradient():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(6, D))
    train = rng.normal(size=(300, 6)) @ basis  # rank 6 of 12: trailing coefficients divide by sqrt(eps)
    w = fit_pca_whitening(train, eps=1e-6)
    det = PCAWhiteningDetector(start=8, eps=1e-6, whitening=w).fit(train)
    score = det.torch_score()
    assert isinstance(score, TrailingVarianceScore) and score.start == 8
    x = torch.tensor(train[:20] + 0.01 * rng.normal(size=(20, D)))
    np.testing.assert_allclose(score(x).numpy(), det.decision_function(x.numpy()), rtol=1e-10)
    torch.testing.assert_close(w.trailing_variance_score(8)(x), score(x), rtol=0, atol=0)
    stat = ImageScore(score)  # the attack's statistic: the same numbers, the logits ignored
    assert not stat.needs_logits and torch.equal(stat(x, None), score(x))
    xr = x[:3].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: score(z), (xr,))
    with pytest.raises(ValueError, match="start must be"):
        w.trailing_variance_score(11)
    with pytest.raises(TypeError, match="PCAWhitening"):
        TrailingVarianceScore(det, 8)
    with pytest.raises(ValueError, match="values per sample"):
        score(x[:, :5])
    with pytest.raises(NotFittedError, match="not fitted"):
        PCAWhiteningDetector().torch_score()
    with pytest.raises(TypeError, match="score must be callable"):
        ImageScore(w)


def test_projection_off_the_window_leaves_the_statistic_unchanged():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(400, 7)) @ rng.normal(size=(7, D))  # rank 7 of 12
    w = fit_pca_whitening(train, eps=1e-9)
    stat = w.trailing_variance_score(6)
    x = torch.tensor(train[:10])
    v = torch.tensor(rng.normal(size=(10, D)))
    pv = stat.project_off_window(v)
    # orthogonal to the 6 window directions, idempotent, and a step along it keeps every window coefficient
    u = torch.tensor(w.components[:, 6:])
    assert float((pv @ u).abs().max()) < 1e-12
    torch.testing.assert_close(stat.project_off_window(pv), pv, rtol=0, atol=1e-12)
    before = stat(x)
    torch.testing.assert_close(stat(x + 0.3 * pv), before, rtol=1e-9, atol=0)
    assert float((stat(x + 0.3 * v) / before).max()) > 1e6  # an unprojected step explodes the statistic


def test_softmax_kl_matches_the_feature_and_band_is_mean_pm_r_std(setup):
    model, x, _ = setup
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_allclose(SoftmaxKL()(x, logits).numpy(), softmax_stats(model, x, ["kl_uniform"])[:, 0],
                               rtol=1e-12, atol=1e-14)
    v = np.array([1.0, 2.0, 4.0, 9.0])
    lo, hi = band_around(torch.tensor(v), 0.5)
    assert (lo, hi) == pytest.approx((v.mean() - 0.5 * v.std(), v.mean() + 0.5 * v.std()))
    assert band_around(v, math.inf) == (-math.inf, math.inf)
    with pytest.raises(ValueError, match="radius"):
        band_around(v, 0)


# ----------------------------------------------------------------------------- attack


def barrier_objective_grad(model, xa, x0, t, lam, low, high, w):
    """∇x of the written-out objective for one sample (float64 autograd)."""
    xr = xa.clone().requires_grad_(True)
    logits = model(xr)
    s = SoftmaxKL()(xr, logits)
    loss = F.cross_entropy(logits, t) + lam * ((xr - x0) ** 2).sum() - w * (torch.log(high - s) + torch.log(s - low))
    (g,) = torch.autograd.grad(loss.sum(), xr)
    return g


MASK = (torch.arange(D) % 3 != 0).double()


@pytest.mark.parametrize("alpha,transform", [(0.01, None), (3.0, None), (3.0, lambda g: g * MASK)])
def test_one_step_is_the_backtracked_barrier_descent(setup, alpha, transform):
    """Oracle, one sample at a time: halve α until the clipped step is inside the band (or give up)."""
    model, x, y = setup
    t = (y + 1) % K
    s0 = kl_of(model, x)
    low, high = float(s0.min()) - 0.3, float(s0.max()) + 0.3
    lam, w, nb = 0.3, 0.7, 6
    atk = BarrierHGTargeted(statistic=SoftmaxKL(), low=low, high=high, barrier_weight=w, step_size=alpha,
                            l2_reg=lam, threshold=0.999999, max_steps=1, max_backtracks=nb, step_transform=transform)
    res = atk.run(model, x, t, targeted=True)
    halvings = []
    for i in range(len(x)):
        xi, ti = x[i : i + 1], t[i : i + 1]
        g = barrier_objective_grad(model, xi, xi, ti, lam, low, high, w)
        g = g if transform is None else transform(g)
        expect, used = xi, None
        for k in range(nb + 1):
            prop = (xi - alpha / 2**k * g).clamp(0, 1)
            s = kl_of(model, prop)
            if low < s.item() < high:
                expect, used = prop, k
                break
        halvings.append(used)
        torch.testing.assert_close(res.x_adv[i : i + 1], expect, rtol=0, atol=1e-12)
    assert bool(res.extras["started_inside"].all()) and bool((res.extras["steps"] == 1).all())
    if alpha < 1:
        assert all(k == 0 for k in halvings), halvings  # small steps: the plain step is accepted
    else:
        assert any(k is not None and k > 0 for k in halvings), halvings  # big steps: backtracking is exercised


class Spy(BarrierHGTargeted):
    """Records the statistic of every iterate the descent produces."""

    def descend(self, model, x, grad):
        new = super().descend(model, x, grad)
        with torch.no_grad():
            self.seen.append(self.statistic(new, model(new)))
        return new


def test_barrier_keeps_the_statistic_inside_its_band_at_every_step(setup):
    model, x, y = setup
    t = (y + 1) % K
    s0 = kl_of(model, x)
    # a band around the clean values that the unconstrained search leaves
    low, high = float(s0.median()) - 0.15, float(s0.max()) + 0.5
    kw = dict(step_size=0.5, l2_reg=0.0, max_steps=60)
    free = HGTargeted(**kw).run(model, x, t, targeted=True)
    s_free = kl_of(model, free.x_adv)
    assert bool(((s_free <= low) | (s_free >= high)).any())  # the constraint binds
    spy = Spy(statistic=SoftmaxKL(), low=low, high=high, **kw)
    object.__setattr__(spy, "seen", [])
    res = spy.run(model, x, t, targeted=True)
    started = res.extras["started_inside"]
    assert 0 < int(started.sum()) < len(x)  # some start outside: skipped, counted, unchanged
    assert torch.equal(res.x_adv[~started], x[~started]) and bool((res.extras["steps"][~started] == 0).all())
    assert not bool(res.success[~started].any())
    seen = torch.cat(spy.seen)
    assert seen.numel() >= 20
    assert bool(((seen > low) & (seen < high)).all())
    s_adv = kl_of(model, res.x_adv)
    assert bool(((s_adv[started] > low) & (s_adv[started] < high)).all())
    torch.testing.assert_close(res.extras["statistic"], s_adv, rtol=0, atol=1e-12)
    # it moved, and success is recomputed: p_target > 0.5, argmax = target, inside the band
    assert bool((res.x_adv[started] != x[started]).any())
    with torch.no_grad():
        probs = torch.softmax(model(res.x_adv), 1)
    pt = probs.gather(1, t[:, None]).squeeze(1)
    inside = (s_adv > low) & (s_adv < high)
    assert torch.equal(res.success, (pt > 0.5) & (probs.argmax(1) == t) & inside)
    assert torch.equal(res.extras["in_band"], inside)


def test_success_needs_the_band_and_the_threshold(setup):
    """Targets = the clean predictions (p_t > 0.5 at step 0): success only where the clean image is in band.

    A targeted call refuses targets equal to the clean prediction (a success without any
    perturbation), so this runs untargeted with "true" labels other than the prediction and
    target="most_likely", which then picks the prediction itself."""
    model, x, y = setup
    with pytest.raises(ValueError, match="clean prediction"):
        BarrierHGTargeted(statistic=SoftmaxKL(), max_steps=5).run(model, x, y, targeted=True)
    y_true = (y + 1) % int(model(x[:1]).shape[1])
    with torch.no_grad():
        p = torch.softmax(model(x), 1).amax(1)
    conf = p > 0.5
    assert bool(conf.any())
    s0 = kl_of(model, x)
    cut = float(s0[conf].median())
    res = BarrierHGTargeted(statistic=SoftmaxKL(), low=-1.0, high=cut, max_steps=5,
                            target="most_likely").run(model, x, y_true)
    assert torch.equal(res.extras["target"], y)
    in_band = s0 < cut
    assert torch.equal(res.extras["started_inside"], in_band)
    assert torch.equal(res.x_adv, x)  # nothing moves: in-band samples stop at step 0, others never start
    assert bool((res.extras["p_target"][conf] > 0.5).all())
    assert torch.equal(res.success, conf & in_band)
    assert bool((conf & ~in_band).any()) and bool((conf & in_band).any())


def test_infinite_band_is_plain_hg_targeted_and_validation(setup):
    model, x, y = setup
    kw = dict(step_size=0.2, max_steps=30)
    g = torch.Generator
    a = HGTargeted(**kw).run(model, x, y, generator=g().manual_seed(0))
    b = BarrierHGTargeted(statistic=SoftmaxKL(), **kw).run(model, x, y, generator=g().manual_seed(0))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    assert torch.equal(a.extras["target"], b.extras["target"]) and torch.equal(a.extras["steps"], b.extras["steps"])
    s = SoftmaxKL()
    for bad, match in [(dict(low=1.0, high=1.0), "low < high"), (dict(barrier_weight=0.0), "barrier_weight"),
                       (dict(max_backtracks=-1), "max_backtracks"), (dict(low=math.nan), "BarrierHGTargeted: low must be")]:
        with pytest.raises(ValueError, match=match):
            BarrierHGTargeted(statistic=s, **bad)
    with pytest.raises(TypeError, match="callable"):
        BarrierHGTargeted(statistic=3.0)
    # needs detector statistics at construction: deliberately not in the registry
    assert BarrierHGTargeted not in ATTACKS.values()


def test_paired_metrics_against_pair_counting():
    rng = np.random.default_rng(0)
    clean, adv = rng.normal(size=40), rng.normal(0.8, 1.0, size=40)
    adv[:3] = clean[:3]  # ties
    m = paired_detection_metrics(clean, adv, threshold=0.5, n_bootstrap=50, seed=1)
    wins = (adv[:, None] > clean[None, :]).mean() + 0.5 * (adv[:, None] == clean[None, :]).mean()
    assert m["auroc"] == pytest.approx(wins, abs=1e-12)
    assert m["tpr"] == pytest.approx((adv > 0.5).mean()) and m["fpr"] == pytest.approx((clean > 0.5).mean())
    assert m["auroc_lo"] <= m["auroc"] <= m["auroc_hi"]
    # AUPR = average precision: mean over positives of the precision at their rank (no ties among positives here)
    order = np.argsort(-np.r_[clean, adv], kind="stable")
    lab = np.r_[np.zeros(40), np.ones(40)][order]
    prec = np.cumsum(lab) / np.arange(1, 81)
    assert m["aupr"] == pytest.approx(prec[lab == 1].mean(), abs=0.02)
    assert math.isnan(paired_detection_metrics(np.array([]), np.array([]))["auroc"])
    # the numbers are the library's, the interval its paired bootstrap (each (clean_i, adv_i) one group)
    pairs = np.arange(40)
    lib = detection_metrics(clean, adv, 0.5, neg_groups=pairs, pos_groups=pairs, n_bootstrap=50, seed=1)
    assert (m["auroc"], m["aupr"], m["tpr"], m["fpr"]) == (lib.auroc, lib.aupr, lib.tpr, lib.fpr)
    assert (m["auroc_lo"], m["auroc_hi"]) == lib.ci["auroc"]
    one = paired_detection_metrics(np.array([0.1]), np.array([0.2]), threshold=0.15, n_bootstrap=50)
    assert (one["auroc"], one["tpr"], one["fpr"]) == (1.0, 1.0, 0.0) and math.isnan(one["auroc_lo"])


# ----------------------------------------------------------------------------- experiments

DET = {"name": "hgd", "kind": "hg_detection", "arch": "hg_mlp", "dataset": "digits", "seed": 0, "epochs": 6, "n_samples": 30,
       "n_fit": 300, "batch_size": 30, "step_size": 0.05, "max_steps": 100, "fast_eps": 0.3,
       "whitening_eps": [1e-11, 1e-2], "n_bootstrap": 200, "n_examples": 3, "n_protocol": 80}
ADA = {"name": "hga", "kind": "hg_adaptive", "arch": "hg_mlp", "dataset": "digits", "seed": 0, "epochs": 6, "n_samples": 12,
       "n_fit": 300, "batch_size": 12, "step_size": 0.05, "max_steps": 40, "max_backtracks": 8,
       "whitening_eps": [1e-11, 1e-2], "kl_radii": [1.0, 64.0], "n_trace": 3, "trace_steps": 20}


@pytest.fixture(scope="module")
def finished(one_thread, tmp_path_factory):
    """The tiny detection and adaptive configs, each run once for the module: {kind: (out dir, run)}."""
    out = {}
    for raw in (DET, ADA):
        where = tmp_path_factory.mktemp(raw["kind"])
        out[raw["kind"]] = where, run_experiment(load_config(raw), where, context=Context(progress=False))
    return out


def by_name(run):
    """The stored cells keyed by their names (without the spec digest)."""
    return {cell.split("#")[0]: v for cell, v in run.results().items()}


def test_hg_detection_runs_reports_and_resumes(finished):
    cfg = load_config(DET)
    out, run = finished["hg_detection"]
    records = [json.loads(line) for line in run.results_path.read_text().splitlines()]
    assert records and all(r["config_hash"] == run.config_hash for r in records)
    res = by_name(run)
    info, clean, m = res["setup"], res["clean"], res["metrics"]
    assert info["start"] == round(64 * 700 / 784) and info["rank"] <= 64
    for a in ("fast", "iterative", "iterative_recon"):
        r = res[f"attack/{a}"]
        kept = np.asarray(r["success"], dtype=bool)
        assert len(kept) == 30 and len(r["score/max_prob"]) == 30
        for d in ("whitening@1e-11", "max_prob", "kl_uniform", "recon_signed", "recon_squared"):
            # the stored metric is the paired AUROC of the stored scores over the kept pairs
            c, v = np.asarray(clean[d])[kept], np.asarray(r[f"score/{d}"])[kept]
            if kept.sum():
                wins = (v[:, None] > c[None, :]).mean() + 0.5 * (v[:, None] == c[None, :]).mean()
                assert m[f"{a}/{d}"]["auroc"] == pytest.approx(wins, abs=1e-12)
                thr = info[f"fit/{d}"]["threshold"]
                assert m[f"{a}/{d}"]["tpr"] == pytest.approx((v > thr).mean())
            assert m[f"{a}/{d}"]["n"] == int(kept.sum())
    it = res["attack/iterative"]
    assert np.mean(it["success"]) > 0.8
    # the unconstrained iterative images sit far from clean ones in confidence: the softmax scores separate them
    assert m["iterative/kl_uniform"]["auroc"] > 0.8
    s = m["sigmas/fast/whitening@1e-11/train"]
    v = np.asarray(res["attack/fast"]["score/whitening@1e-11"])
    assert s["beyond10_all"] == pytest.approx(((v - s["mu"]) / s["sd"] > 10).mean())
    assert s["mu"] == pytest.approx(info["fit/whitening@1e-11"]["mean"])
    # the same detectors through evaluate_detectors: every (detector, attack) row present and scored
    recs = res["protocol"]["records"]
    rows = [r for r in recs if r["kind"] == "table"]
    assert len(rows) == 6 * 3 and not any(r["error"] for r in rows)
    it_rows = [r for r in rows if r["attack"] == "iterative"]
    assert all(0 <= r["auroc"] <= 1 and r["n_pos"] > 0 for r in it_rows)
    att = {r["attack"]: r for r in recs if r["kind"] == "attack"}
    # positives = kept adversarials only (unkept images are passed unchanged): never more than the fooled ones
    assert att["iterative"]["success_rate"] > 0.8 and att["fast"]["n_success"] <= att["iterative"]["n_success"]
    html = (run.dir / "report.html").read_text()
    assert "Hendrycks" in html and "evaluate_detectors" in html and html.count("data:image/png;base64,") == 5
    before = run.results_path.read_text()
    again = run_experiment(cfg, out, resume=True, context=Context(progress=False))
    assert again.dir == run.dir and again.results_path.read_text() == before


def test_hg_adaptive_runs_and_keeps_its_bands(finished):
    _, run = finished["hg_adaptive"]
    res = by_name(run)
    un = res["attack/unconstrained"]
    assert np.mean(un["success"]) > 0.8
    keys = [k for k in res if k.startswith("attack/") and k != "attack/unconstrained"]
    assert len(keys) == 2 * 2 * 2 + 2  # eps x band x (plain, projected) + KL radii
    for k in keys:
        r = res[k]
        started, succ = np.asarray(r["started_inside"], bool), np.asarray(r["success"], bool)
        stat, lo, hi = np.asarray(r["statistic"]), r["low"], r["high"]
        assert ((stat[started] > lo) & (stat[started] < hi)).all(), k  # every returned iterate is in its band
        assert (succ <= (started & np.asarray(r["reached"], bool) & np.asarray(r["in_band"], bool))).all()
        assert (np.asarray(r["steps"])[~started] == 0).all()
        assert r["target"] == un["target"]  # the same random targets as the unconstrained search
    # a very wide KL band does not bind: the search succeeds as often as the unconstrained one
    assert np.mean(res["attack/kl/64"]["success"]) == pytest.approx(np.mean(un["success"]), abs=0.1)
    tr = res["trace"]
    assert np.asarray(tr["kl"]).shape == (21, 3) and np.asarray(tr["p_target"]).shape == (21, 3)
    html = (run.dir / "report.html").read_text()
    assert "log-barrier" in html and html.count("data:image/png;base64,") == 1


@pytest.mark.parametrize("kind", ["hg_detection", "hg_adaptive"])
def test_report_renders_from_the_stored_cells_alone(finished, kind, tmp_path, monkeypatch):
    run_dir = shutil.copytree(finished[kind][1].dir, tmp_path / "run")
    assert_rerenders_from_the_store(run_dir, tmp_path, monkeypatch)


def test_report_marks_protocol_metrics_left_undefined(finished, tmp_path):
    """With no kept adversarial in the protocol's test split (the full MNIST config's fast attack),
    evaluate_detectors stores None for the AUROC, TPR, ...: the table says so instead of failing."""
    run_dir = shutil.copytree(finished["hg_detection"][1].dir, tmp_path / "run")
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if rec["cell"].split("#")[0] == "protocol":
            for r in rec["values"]["records"]:
                if r["kind"] == "table" and r["attack"] == "fast" and r["detector"] == "max_prob":
                    r.update(dict.fromkeys(("auroc", "auroc_lo", "auroc_hi", "tpr", "fpr"), None), n_pos=0)
            lines[i] = json.dumps(rec, sort_keys=True)
    (run_dir / "results.jsonl").write_text("\n".join(lines) + "\n")
    render_stored(run_dir)
    row = next(line for line in (run_dir / "report.md").read_text().splitlines()
               if line.startswith("| softmax: −max probability") and "TPR" in line)
    assert "– [–, –]; TPR – (FPR –); 0/" in row
