"""The Hendrycks & Gimpel attack reproduction runs end to end (on digits, tiny sizes) and resumes."""

from __future__ import annotations

import json

import torch

from _rerender import assert_rerenders_from_the_store
from fisherscope.experiments import Context, load_config, run_experiment

CFG = {"name": "hg", "kind": "hg_attack", "arch": "digits_cnn", "dataset": "digits", "seed": 0,
       "n_samples": 30, "batch_size": 20, "step_size": 0.02, "max_steps": 150, "fast_eps": 0.3, "n_examples": 6}


def test_hg_attack_runs_reports_and_resumes(tmp_path, digits_model):
    cfg = load_config(CFG)
    run = run_experiment(cfg, tmp_path, context=Context(progress=False))
    records = [json.loads(line) for line in run.results_path.read_text().splitlines()]
    assert records and all(r["config_hash"] == run.config_hash for r in records)
    res = {cell.split("#")[0]: v for cell, v in run.results().items()}  # keys without the spec digest
    it, fast = res["attack/iterative"], res["attack/fast"]
    assert it["n"] == fast["n"] == 30
    # the keep rule implies misclassification (the target is never the true label), so success <= fooling
    assert 0.9 <= it["success_rate"] <= it["fooling_ratio"] <= 1
    assert 0 <= fast["success_rate"] <= fast["fooling_ratio"] <= 1
    # distances over the kept samples, from the per-sample values stored beside them
    kept = [d for d, s in zip(it["l2"], it["success"], strict=True) if s]
    assert abs(it["mean_l2_success"] - sum(kept) / len(kept)) < 1e-9
    assert it["mean_steps_success"] >= 1 and it["n_max_steps"] <= 30 - it["n_success"]
    assert abs(fast["mean_linf_all"] - 0.3) < 1e-6  # one sign step: every image moves by exactly eps in L∞
    html = (run.dir / "report.html").read_text()
    assert "Hendrycks" in html and html.count("data:image/png;base64,") == 3
    for name in ("hg_examples.png", "hg_perturbations.png", "hg_distances.png"):
        assert (run.figures_dir / name).stat().st_size > 0
    # resuming recomputes nothing: the stored records are unchanged
    before = run.results_path.read_text()
    again = run_experiment(cfg, tmp_path, resume=True, context=Context(progress=False))
    assert again.dir == run.dir and again.results_path.read_text() == before


def test_hg_attack_report_renders_from_the_stored_cells_alone(tmp_path, monkeypatch, digits_model):
    run = run_experiment(load_config(CFG), tmp_path, context=Context(progress=False))
    res = {cell.split("#")[0]: v for cell, v in run.results().items()}
    ex = res["figure/examples"]
    # the figure's images are the examples cell's own attack run: its stored L2 is theirs
    l2 = torch.as_tensor(ex["x_adv/iterative"] - ex["x"]).flatten(1).norm(dim=1)
    torch.testing.assert_close(l2, torch.tensor(ex["iterative"]["l2"]), rtol=0, atol=1e-6)
    assert res["model"]["n"] == 30 and len(res["model"]["classes"]) == 10
    assert_rerenders_from_the_store(run.dir, tmp_path, monkeypatch)
