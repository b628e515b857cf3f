"""The Zhao et al. reproduction configs run end to end (on digits, tiny sizes)."""

from __future__ import annotations

import json

import pytest

from _rerender import assert_rerenders_from_the_store
from fisherscope.experiments import Context, load_config, run_experiment

BASE = {"arch": "digits_cnn", "dataset": "digits", "seed": 0, "n_samples": 40, "batch_size": 25}


@pytest.mark.parametrize(
    "kind,extra",
    [
        ("zhao_table2", {"hi": 3.0, "tol": 0.05}),
        ("zhao_figure1", {"n_examples": 8, "eps": 1.5}),
        ("zhao_figure2", {"budgets": [0.0, 1.0, 2.0], "steps": 4, "step_size": 0.3, "attacks": ["fgm", "ossa", "otcm"]}),
        ("zhao_figure3", {"hi": 3.0, "tol": 0.05}),
        ("zhao_figure4a", {"eps": 1.0}),
    ],
)
def test_zhao_kind_runs_and_reports(tmp_path, digits_model, monkeypatch, kind, extra):
    cfg = load_config({"name": kind, "kind": kind, **BASE, **extra})
    run = run_experiment(cfg, tmp_path, context=Context(progress=False))
    records = [json.loads(line) for line in run.results_path.read_text().splitlines()]
    assert records and all(r["config_hash"] == run.config_hash for r in records)
    html = (run.dir / "report.html").read_text()
    assert "Zhao" in html
    if kind != "zhao_table2":
        assert "data:image/png;base64," in html
    by_metric = {k: x for v in run.results().values() for k, x in v.items()}
    by_name = {cell.split("#")[0]: v for cell, v in run.results().items()}  # keys without the spec digest
    if kind == "zhao_table2":
        assert 0 < by_metric["fooling_rate"] <= 1
    if kind == "zhao_figure2":
        rates = by_name["figure2a/ossa"]["fooling_rate"]
        assert rates[0] == 0.0 and rates[-1] >= rates[0]
        cells = {r["cell"].split("#")[0] for r in records}
        assert {"figure2b/ossa_iterative", "figure2b/fgm_iterative", "figure2b/otcm_iterative"} <= cells
        for cell in ("figure2b/fgm_iterative", "figure2b/otcm_iterative"):
            it = by_name[cell]["fooling_rate"]
            assert len(it) == 4 and all(0.0 <= v <= 1.0 for v in it)

    # the report re-rendered from the stored cells alone (no model, no cache) is the same
    assert_rerenders_from_the_store(run.dir, tmp_path, monkeypatch)
