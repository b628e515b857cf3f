"""Martin & Elster Figs. 1 and 2 run end to end (digits, tiny sizes) and re-render from their stored results."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from _rerender import assert_rerenders_from_the_store
from fisherscope.experiments import Context, load_config, run_experiment
from fisherscope.experiments import martin_elster as me
from fisherscope.experiments.runner import Results, cell_key

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = {"arch": "digits_cnn", "dataset": "digits", "preset": None, "seed": 0}
CONFIGS = {
    "martin_elster_fig1": {**BASE, "name": "me-fig1", "kind": "martin_elster_fig1", "n_attack": 60,
                           "attack_batch": 25, "n_roc": 20, "n_hist": 40, "score_batch": 15,
                           "paper": {"auc": {"trace": 0.94}, "accuracy": {"clean": 0.985}}},
    "martin_elster_fig2": {**BASE, "name": "me-fig2", "kind": "martin_elster_fig2", "n_rows": 3,
                           "n_failed_rows": 1, "n_stats": 20},
}
FIGURES = {
    "martin_elster_fig1": ["fig1_hist_nform.png", "fig1_hist_nform_fd.png", "fig1_roc.png"],
    "martin_elster_fig2": ["fig2_saliency.png", "fig2a_fis_same_scale.png", "fig2b_fis_own_scale.png"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_model):
    out = tmp_path_factory.mktemp("martin-elster")
    return {kind: run_experiment(load_config(d), out, context=Context(progress=False))
            for kind, d in CONFIGS.items()}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_report_re_renders_from_stored_results_alone(kind, runs, tmp_path, monkeypatch):
    run = runs[kind]
    assert sorted(p.name for p in run.figures_dir.iterdir()) == FIGURES[kind]
    assert_rerenders_from_the_store(run.dir, tmp_path, monkeypatch)


def test_fig1_cells_hold_the_attack_chunks_and_the_scores(runs):
    run = runs["martin_elster_fig1"]
    cfg, res = run.config, Results.open(run.dir)
    model = res.cell(*me.model_cell(cfg))
    assert model["n_test"] > cfg.n_attack
    chunks = me.attack_chunks(cfg, model["n_test"])
    assert chunks == [(0, 25), (25, 50), (50, 60)]
    attack = [res.cell(*me.attack_cell(cfg, a, b)) for a, b in chunks]
    assert [r["n"] for r in attack] == [25, 25, 10]
    assert all(0 <= r["adv_correct"] <= r["clean_correct"] <= r["n"] for r in attack)
    idx = res.cell(*me.subset_cell(cfg))["indices"]
    assert len(idx) == len(set(idx)) == cfg.n_hist
    scores = [res.cell(*me.scores_cell(cfg, s)) for s in range(0, cfg.n_hist, cfg.score_batch)]
    assert [len(r["y"]) for r in scores] == [15, 15, 10]
    linf = np.concatenate([r["linf"] for r in scores])
    assert np.all(linf <= cfg.eps + 1e-6)
    for k in me.SCORES:
        clean = np.concatenate([r[f"{k}/clean"] for r in scores])
        assert clean.shape == (cfg.n_hist,) and np.all(clean >= 0)
    md = (run.dir / "report.md").read_text()
    assert "| trace tr F | eq. 4 |" in md and "| 0.940 |" in md


def test_fig2_rows_are_fooled_then_failed_and_maps_are_artifacts(runs):
    run = runs["martin_elster_fig2"]
    cfg, res = run.config, Results.open(run.dir)
    rows = res.cell(*me.rows_cell(cfg))["indices"]
    maps = res.cell(*me.maps_cell(cfg))
    assert len(rows) == cfg.n_rows
    y, pc, pa = (np.asarray(maps[k]) for k in ("y", "pred_clean", "pred_adv"))
    assert np.all(pc == y)  # every row's clean image is classified correctly
    assert np.all(pa[: cfg.n_rows - cfg.n_failed_rows] != y[: cfg.n_rows - cfg.n_failed_rows])
    assert np.all(pa[cfg.n_rows - cfg.n_failed_rows :] == y[cfg.n_rows - cfg.n_failed_rows :])
    x = maps["x"]
    assert isinstance(x, np.ndarray) and x.shape[0] == cfg.n_rows
    for k in ("x_adv", "fis/clean", "fis/adv", "gradient/adv", "guided/clean", "hendrycks/adv", "fis_full/adv"):
        assert isinstance(maps[k], np.ndarray) and maps[k].shape == x.shape, k
    assert np.abs(maps["x_adv"] - x).max() <= cfg.eps + 1e-6
    st = res.cell(*me.stats_cell(cfg))
    succ, ok = np.asarray(st["success"]), np.asarray(st["clean_correct"])
    assert len(succ) == cfg.n_stats and not np.any(succ & ~ok)  # fooled implies correct before


CELLS = {"model": me.model_cell, "subset": me.subset_cell, "rows": me.rows_cell, "maps": me.maps_cell,
         "stats": me.stats_cell, "attack": lambda c: me.attack_cell(c, 0, 25),
         "scores": lambda c: me.scores_cell(c, 15)}


def test_cell_specs_follow_every_setting_that_decides_them():
    cfg = load_config(CONFIGS["martin_elster_fig1"])

    def changed(**kw):
        other = dataclasses.replace(cfg, **kw)
        return {n for n, fn in CELLS.items() if cell_key(*fn(other)) != cell_key(*fn(cfg))}

    assert changed(eps=0.2) == {"rows", "maps", "stats", "attack", "scores"}
    assert changed(seed=1) == set(CELLS)
    assert changed(preset="digits_cnn@paper") == {"model", "rows", "maps", "stats", "attack", "scores"}
    assert changed(fis_reduction="full") == {"maps", "stats"}
    assert changed(fd_eps=1e-3) == {"scores"}
    assert changed(n_rows=2) == {"rows", "maps"}
    assert changed(n_hist=50) == {"subset", "scores"}
    assert changed(description="other words") == set()
