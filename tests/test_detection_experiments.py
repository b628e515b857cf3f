"""The detection experiment kinds and the demo's "detect" section, end to end on digits (tiny sizes)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from _rerender import assert_rerenders_from_the_store
from fisherscope.experiments import Context, load_config, run_experiment

CONFIGS = Path(__file__).parent.parent / "configs"
BASE = {"arch": "digits_cnn", "dataset": "digits", "seed": 0, "n_samples": 120, "batch_size": 64,
        "n_bootstrap": 50, "mc_samples": 4, "eigenvalues": 9, "n_estimators": 25, "lid_k": 5}
ATTACKS = [{"name": "FGM", "key": "fgm", "params": {"eps": 1.5}},
           {"name": "OTCM", "key": "otcm", "params": {"eps": 1.5}}]


def _resume_is_a_no_op(cfg, run, tmp_path):
    before = run.results_path.read_text()
    run_experiment(cfg, tmp_path, resume=run.dir, context=Context(progress=False))
    assert run.results_path.read_text() == before


def _no_model(*args, **kwargs):
    raise AssertionError("a model was run while rendering a report")


def _rerenders_from_the_store(run, tmp_path, monkeypatch, figures):
    """The report re-rendered from the stored cells alone (no model, no cache) equals the original."""
    assert sorted(figures) == sorted(p.name for p in run.figures_dir.glob("*.png"))
    assert_rerenders_from_the_store(run.dir, tmp_path, monkeypatch)


def _by_name(run):
    """Stored values by cell name (the key without its spec digest)."""
    return {cell.split("#")[0]: v for cell, v in run.results().items()}


def test_zhao_table4_kind(tmp_path, digits_model, monkeypatch):
    cfg = load_config({"name": "t4", "kind": "zhao_table4", **BASE, "attacks": ATTACKS,
                       "sweep": [{"name": "FGM", "key": "fgm", "budgets": [0.5, 1.5]}],
                       "sweep_detectors": ["kd", "fisher_spectrum"],
                       "paper": {"table4": {"fisher_spectrum": {"FGM": 96.11}}}})
    run = run_experiment(cfg, tmp_path, context=Context(progress=False))
    recs = {cell: v["records"] for cell, v in _by_name(run).items() if "records" in v}
    table = [r for r in recs["table4"] if r["kind"] == "table"]
    assert {(r["detector"], r["attack"]) for r in table} == {(d, a) for d in ("kd", "bu", "kdbu", "fisher_spectrum")
                                                            for a in ("FGM", "OTCM")}
    for r in table:
        assert r["error"] is None and 0.0 <= r["auroc"] <= 1.0 and r["auroc_lo"] <= r["auroc"] <= r["auroc_hi"]
        assert r["n_pos"] > 0 and r["n_neg"] > 0
    cross = [r for r in recs["table4"] if r["kind"] == "cross"]
    assert {r["detector"] for r in cross} == {"kdbu", "fisher_spectrum"}  # the supervised ones
    assert len([r for r in cross if r["detector"] == "fisher_spectrum"]) == 4
    sweep = [r for r in recs["sweep"] if r["kind"] == "attack"]
    assert [r["attack"] for r in sweep] == ["FGM@0.5", "FGM@1.5"]
    assert sweep[0]["success_rate"] <= sweep[1]["success_rate"]
    md = (run.dir / "report.md").read_text()
    assert "Zhao et al. Table 4" in md and "(96.1)" in md and "Table 5" in md
    for name in ("zhao-table4-roc.png", "zhao-table4-sweep.png"):
        assert (run.figures_dir / name).stat().st_size > 0
    _resume_is_a_no_op(cfg, run, tmp_path)
    _rerenders_from_the_store(run, tmp_path, monkeypatch, ["zhao-table4-roc.png", "zhao-table4-sweep.png"])


def test_detection_unified_kind(tmp_path, digits_model, monkeypatch):
    cfg = load_config({"name": "uni", "kind": "detection_unified", **BASE, "attacks": ATTACKS,
                       "detectors": ["softmax", "mahalanobis", "lid", "pca_whitening", "reconstruction"],
                       "noise_in_fit": ["lid"], "cross_attack": False})
    run = run_experiment(cfg, tmp_path, context=Context(progress=False))
    recs = next(v["records"] for v in run.results().values() if "records" in v)
    table = {(r["detector"], r["attack"]): r for r in recs if r["kind"] == "table"}
    assert {d for d, _ in table} == {"softmax", "mahalanobis", "lid", "pca_whitening"}  # no decoder: n/a
    assert all(r["error"] is None for r in table.values())
    assert table[("lid", "FGM")]["n_neg_fit"] > table[("softmax", "FGM")]["n_neg_fit"]  # noise in LID's fit
    assert not [r for r in recs if r["kind"] == "cross"]
    md = (run.dir / "report.md").read_text()
    assert "Reconstruction: n/a" in md and "Noise control" in md
    assert (run.figures_dir / "unified-detection-auroc.png").stat().st_size > 0
    _rerenders_from_the_store(run, tmp_path, monkeypatch, ["unified-detection-auroc.png"])


def test_zhao_figure4b_kind(tmp_path, digits_model, monkeypatch):
    cfg = load_config({"name": "f4b", "kind": "zhao_figure4b", "arch": "digits_cnn", "dataset": "digits",
                       "seed": 0, "n_samples": 40, "n_examples": 4, "eps": 1.5, "budgets": [0.5, 1.0, 1.5, 2.0]})
    run = run_experiment(cfg, tmp_path, context=Context(progress=False))
    r = {k: x for v in run.results().values() for k, x in v.items()}
    assert r["t"] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert len(r["ossa_lambda"]) == 4 and all(len(v) == 5 for v in r["ossa_lambda"])
    # λ_max grows by orders of magnitude along the OSSA direction (Zhao Fig. 4(b)) -- up to the
    # decision boundary; past it the new class grows confident and λ_max falls again
    for o, rnd in zip(r["ossa_lambda"], r["random_lambda"], strict=True):
        assert max(o) > 10 * o[0] and max(o) > 10 * max(rnd)
    assert (run.figures_dir / "zhao-figure4b.png").stat().st_size > 0
    _rerenders_from_the_store(run, tmp_path, monkeypatch, ["zhao-figure4b.png"])


def test_demo_detect_section(tmp_path, digits_model, monkeypatch):
    from fisherscope.data import load_dataset
    from fisherscope.experiments import DemoConfig, Run
    from fisherscope.experiments.kit import DEMO_SECTIONS, DemoState

    (section,) = [s for s in DEMO_SECTIONS if s.name == "detect"]
    cfg = DemoConfig()
    run = Run(cfg, tmp_path)
    state = DemoState(cfg, Context(progress=False), digits_model, load_dataset("digits", "test"))
    section.cells(run, state)
    blocks = section.report(cfg, run.view())
    recs = _by_name(run)["detect"]["records"]
    table = [r for r in recs if r["kind"] == "table"]
    dets = {r["detector"] for r in table}
    assert "reconstruction" not in dets and {"fisher_spectrum", "kd", "lid", "mahalanobis"} <= dets
    assert all(r["error"] is None for r in table)
    assert {r["setting"] for r in table} == {"oblivious", "adaptive"}  # the adaptive attack beside FGM and OSSA
    assert {r["detector"] for r in table if r["setting"] == "adaptive"} == dets
    assert any(getattr(b, "text", "").startswith("Detect") for b in blocks)
    for a in ("fgm", "ossa"):
        assert (run.figures_dir / f"detect_roc_{a}.png").stat().st_size > 0
    before = run.results_path.read_text()
    section.cells(Run(cfg, tmp_path, resume=run.dir), state)
    assert run.results_path.read_text() == before
    text = " ".join(getattr(b, "text", "") for b in blocks)
    assert "best" not in text.lower()  # no ranking on oblivious numbers
    # the section's report is drawn from the stored cells alone
    shutil.rmtree(run.figures_dir)
    monkeypatch.setattr(torch.nn.Module, "__call__", _no_model)
    again = section.report(cfg, Run(cfg, tmp_path, resume=run.dir).view())
    assert [repr(b) for b in again] == [repr(b) for b in blocks]
    for a in ("fgm", "ossa"):
        assert (run.figures_dir / f"detect_roc_{a}.png").stat().st_size > 0


@pytest.mark.parametrize("name", ["zhao-table4", "zhao-figure4b", "unified-detection"])
def test_configs_parse_and_build(name):
    from fisherscope.experiments.detection_kit import build_attacks

    cfg = load_config(CONFIGS / f"{name}.toml")
    assert cfg.dataset == "mnist"
    if name != "zhao-figure4b":
        attacks = build_attacks(cfg.attacks)
        assert list(attacks) == [s.name for s in cfg.attacks]
    if name == "zhao-table4":
        assert [s.name for s in cfg.attacks] == ["FGM", "OTCM", "Opt", "BIM", "OSSA"]
        assert cfg.paper["table4"]["fisher_spectrum"]["OSSA"] == 93.13
        assert {s.name for s in cfg.sweep} == {"OSSA", "FGM"}
