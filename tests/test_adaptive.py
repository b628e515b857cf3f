"""Adaptive attacks against detectors: DetectorAwarePGD and evaluate_detectors(adaptive=True).

On the demo's digits_cnn (trained once per session) and small batches; every test well
under 20 s on one thread.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fisherscope import features as F
from fisherscope.attacks import BIM, PGD, CarliniWagnerL2, DetectorAwarePGD
from fisherscope.attacks.adaptive import _without, classifier_margin
from fisherscope.detectors import (
    Detector,
    FisherSpectrumDetector,
    KernelDensityDetector,
    SoftmaxDetector,
    TorchScore,
)
from fisherscope.evaluation import AdaptiveSettings, DetectorSpec, Feature, evaluate_detectors
from fisherscope.features import TORCH_FEATURES

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def digits(digits_model):
    from fisherscope.data import load_dataset

    test = load_dataset("digits", "test")
    model = digits_model.model.eval()
    return model, test.x[:120], test.y[:120]


def _softmax_score(model, x_fit):
    det = SoftmaxDetector(statistic="max_prob").fit(F.softmax_stats(model, x_fit))
    return det, TorchScore(det, [lambda t: TORCH_FEATURES["softmax_stats"](model, t)])


# ------------------------------------------------------------------------- the attack


def test_projection_and_margin_helpers():
    g = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    r = _without(g, a)
    assert torch.allclose((r.flatten(1) * a.flatten(1)).sum(1), torch.zeros(5), atol=1e-5)
    assert torch.equal(_without(g, torch.zeros_like(a)), g)
    z = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 0])
    assert classifier_margin(z, y).tolist() == [-2.0, 2.0]
    assert classifier_margin(z, torch.tensor([1, 1]), targeted=True).tolist() == [-2.0, 1.0]


@pytest.mark.parametrize("norm, eps", [("linf", 0.2), ("l2", 2.0)])
@pytest.mark.parametrize("mode", ["penalty", "orthogonal"])
def test_contract_budget_bounds_input_mode_generator(digits, norm, eps, mode):
    model, x, y = digits
    _, score = _softmax_score(model, x[60:])
    xs, ys = x[:16].clone(), y[:16]
    before = xs.clone()
    atk = DetectorAwarePGD(eps=eps, norm=norm, mode=mode, score=score, threshold=score.threshold, steps=8)
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        res = atk.run(model, xs, ys, generator=torch.Generator().manual_seed(0))
    assert model.training  # restored
    model.eval()
    assert torch.equal(xs, before)
    delta = (res.x_adv - xs).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all() and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    again = atk(model, xs, ys, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, res.x_adv)
    # success = misclassified and undetected under the score
    fooled = model(res.x_adv).argmax(1) != ys
    assert torch.equal(res.success, fooled & (res.extras["score"] <= score.threshold))


def test_beats_the_oblivious_attack_on_the_softmax_detector(digits):
    """Max-softmax flags low confidence: PGD stopped near the boundary is caught, the adaptive
    attack pushes through to a confident wrong class inside the same L-inf ball."""
    model, x, y = digits
    det, score = _softmax_score(model, x[60:])
    xs, ys = x[:60], y[:60]
    g = torch.Generator().manual_seed(0)
    obl = PGD(eps=0.2, steps=20)(model, xs, ys, generator=g)
    ada = DetectorAwarePGD(eps=0.2, score=score, threshold=score.threshold, steps=20)(
        model, xs, ys, generator=torch.Generator().manual_seed(0))

    def evaded(xa):
        fooled = (model(xa).argmax(1) != ys).numpy()
        return float((fooled & (det.decision_function(F.softmax_stats(model, xa)) <= det.threshold_)).mean())

    assert evaded(ada) > evaded(obl) + 0.1
    assert (ada - xs).abs().amax() <= 0.2 + 1e-6


def test_eot_averages_a_random_score(digits):
    model, x, y = digits
    calls = []

    def noisy(t):
        calls.append(1)
        return t.flatten(1).mean(1) + 0.01 * torch.randn(t.shape[0])

    DetectorAwarePGD(eps=0.1, score=noisy, threshold=0.3, steps=3, eot_iter=4)(model, x[:4], y[:4])
    assert len(calls) == 4 * 4  # 4 draws at each of the 4 iterates (the start and 3 steps)


def test_step_transform_keeps_an_invariant_of_the_clean_image(digits):
    """With each step projected off a subspace (and no random start), x_adv − x has no
    component in it; without the transform it has. Images in [0.25, 0.75] and an L2 budget
    of 0.2 keep every pixel off the box's faces, so clipping cannot re-inject one."""
    model, x, y = digits
    xs, ys = 0.25 + 0.5 * x[:16], y[:16]
    basis, _ = torch.linalg.qr(torch.randn(xs[0].numel(), 8, generator=torch.Generator().manual_seed(1)))
    off = lambda v: v - ((v.flatten(1) @ basis) @ basis.T).reshape(v.shape)  # noqa: E731
    score = lambda t: t.flatten(1).mean(1)  # noqa: E731
    kw = {"eps": 0.2, "norm": "l2", "score": score, "threshold": 10.0, "steps": 5, "random_start": False}
    along = lambda xa: ((xa - xs).flatten(1) @ basis).norm(dim=1)  # noqa: E731
    with_t = DetectorAwarePGD(**kw, step_transform=off)(model, xs, ys)
    without = DetectorAwarePGD(**kw)(model, xs, ys)
    assert ((with_t - xs).flatten(1).norm(dim=1) > 0.1).sum() >= 4  # it moved (others were fooled at the start)
    assert along(with_t).max() < 1e-5
    assert along(without).max() > 1e-2
    with pytest.raises(ValueError, match="step_transform"):
        DetectorAwarePGD(**kw, step_transform=lambda v: v.flatten(1))(model, xs[:2], ys[:2])
    with pytest.raises((ValueError, TypeError), match="step_transform"):
        DetectorAwarePGD(**kw, step_transform=3)


def test_bad_parameters_are_clear_errors(digits):
    model, x, y = digits
    score = lambda t: t.flatten(1).mean(1)  # noqa: E731
    for kw, match in [({"threshold": math.nan}, "threshold"), ({"mode": "both"}, "mode"),
                      ({"score": 3.0}, "score"), ({"scale": 0.0}, "scale"), ({"eot_iter": 0}, "eot_iter"),
                      ({"restarts": 2, "random_start": False}, "restarts")]:
        with pytest.raises((ValueError, TypeError), match=match):
            DetectorAwarePGD(**{"eps": 0.1, "score": score, "threshold": 0.5, **kw})
    bad = DetectorAwarePGD(eps=0.1, score=lambda t: t.flatten(1), threshold=0.5, steps=2)
    with pytest.raises(ValueError, match="shape"):
        bad(model, x[:2], y[:2])


# ------------------------------------------------------------------------ evaluation


class NoMirror(Detector):
    """A detector without a torch mirror (scores = mean pixel)."""

    feature = "pixels"
    supervised = False

    def _decision(self, X):
        return X.mean(1)


def _evaluate(model, x, y, detectors, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_detectors(model, x, y, {"PGD": PGD(eps=0.15, steps=10), **kw.pop("attacks", {})}, detectors,
                                  splits=(0.4, 0.2, 0.4), n_bootstrap=20, cross_attack=False, **kw)


def test_adaptive_rows_next_to_the_oblivious_ones(digits):
    model, x, y = digits
    res = _evaluate(model, x, y, {"soft": SoftmaxDetector(), "kd": KernelDensityDetector(), "none": NoMirror()},
                    adaptive=True, adaptive_settings=AdaptiveSettings(steps=10, modes=("penalty",)))
    assert res.setting_names == ["oblivious", "adaptive"]
    for det in ("soft", "kd"):
        obl, ada = res.row(det, "PGD"), res.row(det, "PGD", "adaptive")
        assert obl["setting"] == "oblivious" and ada["error"] is None
        assert 0 <= obl["evasion_rate"] <= ada["evasion_rate"] <= 1  # the oblivious adversarial is a candidate
        assert ada["mirror"] == "exact" and ada["mirror_agreement"] == 1.0
        assert ada["n_correct_test"] == obl["n_correct_test"] and ada["eps"] == 0.15 and ada["norm"] == "linf"
        assert np.isfinite(ada["auroc"]) and 0 <= ada["tpr"] <= 1
    assert res.row("soft", "PGD", "adaptive")["evasion_rate"] > res.row("soft", "PGD")["evasion_rate"]
    assert "NoTorchMirrorError" in res.row("none", "PGD", "adaptive")["error"]  # a finding in the row, no crash
    md = res.to_markdown()
    assert "| AUROC (%) | PGD |" in md and "PGD (adaptive)" in md and "PGD (oblivious)" in md
    recs = res.to_records()
    assert {r.get("setting") for r in recs if r["kind"] == "table"} == {"oblivious", "adaptive"}
    assert res.table("evasion_rate", "adaptive")["soft"]["PGD"] == res.row("soft", "PGD", "adaptive")["evasion_rate"]


def test_kappa_sweep_rows_and_the_surrogate_of_a_forest(digits):
    model, x, y = digits
    spec = DetectorSpec(FisherSpectrumDetector(random_state=0, n_estimators=20), Feature("fisher_eigenvalues",
                                                                                           kwargs={"k": 9}))
    cw = CarliniWagnerL2(steps=20, binary_search_steps=1, initial_const=1.0, learning_rate=0.05)
    res = _evaluate(model, x, y, {"eig": spec, "soft": SoftmaxDetector()}, attacks={"C&W": cw},
                    adaptive=["PGD"], adaptive_settings=AdaptiveSettings(steps=6, modes=("penalty",)),
                    kappa_sweep=(5.0,))
    assert res.setting_names == ["oblivious", "cw_kappa=5", "adaptive"]
    k = res.row("soft", "C&W", "cw_kappa=5")
    assert k["error"] is None and 0 <= k["evasion_rate"] <= 1
    assert "cw_kappa=5|C&W" in res.extra_attacks and list(res.attacks) == ["PGD", "C&W"]
    ada = res.row("eig", "PGD", "adaptive")
    assert ada["error"] is None and ada["mirror"] == "surrogate" and 0 <= ada["surrogate_agreement"] <= 1
    # the confident C&W is less confident-looking to max softmax than the plain one
    assert k["tpr"] <= res.row("soft", "C&W")["tpr"]


def test_bad_adaptive_arguments(digits):
    model, x, y = digits
    with pytest.raises(ValueError, match="no L-inf or L2 budget"):
        _evaluate(model, x[:40], y[:40], {"soft": SoftmaxDetector()}, attacks={"CW": CarliniWagnerL2()},
                  adaptive=["CW"])
    with pytest.raises(ValueError, match="not in attacks"):
        _evaluate(model, x[:40], y[:40], {"soft": SoftmaxDetector()}, adaptive=["BIM"])
    with pytest.raises(ValueError, match="kappa_sweep"):
        _evaluate(model, x[:40], y[:40], {"soft": SoftmaxDetector()}, kappa_sweep=(-1.0,))
    with pytest.raises(TypeError, match="AdaptiveSettings"):
        _evaluate(model, x[:40], y[:40], {"soft": SoftmaxDetector()}, adaptive=True, adaptive_settings={"steps": 3})
    with pytest.raises(ValueError, match="modes"):
        AdaptiveSettings(modes=("penalty", "penalty"))
    assert BIM(eps=1.0, norm="l2").norm == "l2"


# ------------------------------------------------------------------------ the experiment


def test_adaptive_detection_kind_rerenders_from_the_store(tmp_path, digits_model, monkeypatch):
    from _rerender import assert_rerenders_from_the_store
    from fisherscope.experiments import Context, load_config, run_experiment

    shrink = ["n_samples=80", "batch_size=128", "n_bootstrap=20", "noise_in_fit=[]", "mc_samples=5", "lid_k=5",
              "detectors=['softmax', 'kd', 'bu', 'reconstruction']", "adaptive_attacks=['PGD']", "adaptive_steps=6",
              "adaptive_modes=['penalty']", "adaptive_eot=2", "kappa_sweep=[5.0]", "attacks.0.params={'eps': 0.15, "
              "'steps': 10}", "attacks.2.params={'steps': 10, 'binary_search_steps': 1, 'initial_const': 1.0}"]
    cfg = load_config(CONFIGS / "adaptive-detection-digits.toml", shrink)
    cfg = dataclasses.replace(cfg, attacks=[cfg.attacks[1], cfg.attacks[2]])  # PGD and C&W
    run = run_experiment(cfg, tmp_path, context=Context(progress=False))
    cells = {k: v for k, v in run.results().items() if "records" in v}
    assert len(cells) == 1 + 3  # the oblivious attacks and the kappa sweep; one cell per (budget, detector)
    recs = [r for v in cells.values() for r in v["records"]]
    settings = {(r["detector"], r.get("setting")) for r in recs if r["kind"] == "table"}
    assert {("softmax", "adaptive"), ("kd", "cw_kappa=5"), ("bu", "oblivious")} <= settings
    ada = [r for r in recs if r["kind"] == "table" and r.get("setting") == "adaptive"]
    assert all(r["error"] is None and 0 <= r["evasion_rate"] <= 1 for r in ada)
    assert next(r for r in ada if r["detector"] == "bu")["mirror"] == "eot"
    md = assert_rerenders_from_the_store(run.dir, tmp_path, monkeypatch)
    assert "PGD adaptive" in md and "C&W κ=5" in md and "Carlini & Wagner 2017" in md and "Reconstruction" not in md
    assert "best" not in md.lower() and "PARTIAL RUN" not in md

    # a run stopped before one adaptive cell still renders, and says what is missing
    from fisherscope.experiments.base import render_stored

    store = run.dir / "results.jsonl"
    lines = store.read_text().splitlines(keepends=True)
    kept = [line for line in lines if '"adaptive/adaptive/PGD/kd#' not in line]
    assert len(kept) == len(lines) - 1
    store.write_text("".join(kept))
    render_stored(run.dir)
    partial = (run.dir / "report.md").read_text()
    assert "PARTIAL RUN: no adaptive attack yet on KD in the PGD budget" in partial
    kd_row = next(line for line in partial.splitlines() if line.startswith("| KD |"))
    assert "n/a" in kd_row


def test_the_mnist_config_parses_and_builds():

    from fisherscope.evaluation.adaptive import adaptable
    from fisherscope.experiments import load_config
    from fisherscope.experiments.detection_kit import build_attacks

    cfg = load_config(CONFIGS / "adaptive-detection.toml")
    uni = load_config(CONFIGS / "unified-detection.toml")
    assert cfg.attacks == uni.attacks and cfg.arch == "lenet5" and cfg.dataset == "mnist"
    attacks = build_attacks(cfg.attacks)
    assert all(adaptable(attacks[a]) for a in cfg.adaptive_attacks)
    assert {p["detector"] for p in cfg.paper["published"]} >= {"KD (Feinman et al.)", "BU (Feinman et al.)"}
    # the two other Martin & Elster scores: the same protocol, field for field, but the detectors
    forms = load_config(CONFIGS / "adaptive-detection-fisher-forms.toml")
    assert forms.detectors == ["fisher_form", "fisher_nform"] and "fisher_score" in cfg.detectors
    same = {f.name for f in dataclasses.fields(cfg)} - {"name", "description", "detectors", "noise_in_fit", "paper"}
    assert {k: getattr(forms, k) for k in same} == {k: getattr(cfg, k) for k in same}


def test_a_success_is_kept_even_when_the_score_rose_on_the_way(digits):
    """The score here grows with the distance from the clean image and never reaches the
    threshold, so every misclassified iterate is a success; an earlier, lower-scored iterate
    that was not misclassified must not stop the first success from being kept (it did: the
    attack returned a clean-classified point and reported no success)."""
    model, x, y = digits
    xs, ys = x[:32], y[:32]
    x0 = xs.clone()
    rising = lambda t: (t - x0[: t.shape[0]]).flatten(1).square().sum(1)  # noqa: E731
    kw = {"eps": 0.3, "score": rising, "threshold": 1e6, "steps": 20, "random_start": False}
    pgd = PGD(eps=0.3, steps=20, random_start=False).run(model, xs, ys)
    for mode in ("penalty", "orthogonal"):
        res = DetectorAwarePGD(**kw, mode=mode).run(model, xs, ys)
        assert res.success.float().mean() >= pgd.success.float().mean() - 0.1, mode
        assert res.success.float().mean() > 0.5, mode
        with torch.no_grad():
            assert bool((model(res.x_adv).argmax(1) != ys)[res.success].all())
