"""``robustness_defenses`` (issue 18) end to end on digits with tiny settings, its records and
report (re-rendered from the store alone, and rendered from a partial run), and the kit pieces it
rests on: the ensemble spec, one worst-case cell and the computed masking verdict."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from _rerender import assert_rerenders_from_the_store
from fisherscope.evaluation import standard_attacks
from fisherscope.experiments import EXPERIMENTS, Context, load_config, run_experiment
from fisherscope.experiments.robust_kit import (
    MASKING,
    NO_GAP,
    PARTLY,
    ROBUSTNESS,
    UNDECIDED,
    EnsembleSpec,
    masking_verdict,
    worst_case,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PEN = {"kind": "fisher", "mu": 0.02}  # the demo's / test_defenses' request: one cached model
TINY = {
    "name": "robustness-tiny", "kind": "robustness_defenses", "arch": "digits_cnn", "dataset": "digits", "seed": 0,
    "n_samples": 40, "robust_samples": 20, "batch_size": 24,
    "linf_eps": [0.05, 0.3], "l2_eps": [0.25, 0.5], "ossa_budgets": [0.25, 0.5, 1.0],
    "ensemble": {"apgd_steps": 5, "n_target_classes": 2, "square_queries": 20, "check_samples": 8},
    "models": [{"name": "plain"}, {"name": "shen", "defense": PEN},
               {"name": "smooth", "defense": {"kind": "label_smoothing", "alpha": 0.1},
                "finetune": {"epochs": 1, "lr": 1e-4}, "train_images": 200}],
}


def _records(run) -> list[dict]:
    return [json.loads(line) for line in run.results_path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, digits_model):
    cfg = load_config(TINY)
    out = tmp_path_factory.mktemp("robustness")
    run = run_experiment(cfg, out, context=Context(progress=False))
    return cfg, run


def test_the_run_records_every_cell_and_the_report_says_what_they_hold(tiny_run):
    cfg, run = tiny_run
    names = sorted(r["cell"].split("#")[0] for r in _records(run))
    threats = ["l2/0.25", "l2/0.5", "linf/0.05", "linf/0.3"]
    assert names == sorted(["sample", *[f"{kind}/{m}" for m in ("plain", "shen", "smooth") for kind in ("model", "ossa")],
                            *[f"robust/{m}/{t}" for m in ("plain", "shen", "smooth") for t in threats]])
    assert all(r["config_hash"] == run.config_hash for r in _records(run))
    values = {r["cell"].split("#")[0]: r["values"] for r in _records(run)}
    assert values["sample"]["n"] == 40 and values["sample"]["n_robust"] == 20
    for m in ("plain", "shen", "smooth"):
        for t in threats:
            r = values[f"robust/{m}/{t}"]
            assert r["n"] == 20 and [a for a, _ in r["per_attack"]] == ["apgd-ce", "apgd-t", "square"]
            accs = [acc for _, acc in r["per_attack"]]
            assert accs == sorted(accs, reverse=True) and accs[-1] == r["robust_accuracy"] <= r["clean_accuracy"]
            # the fooling ratio is of the correctly classified images: the robust ones are the rest
            assert r["n_correct"] == sum(r["clean_correct"])
            assert round(r["n_correct"] * (1 - r["fooling_ratio"])) == sum(r["robust"])
            assert r["gradient_fooling_ratio"] == r["per_attack_fooling"][1] <= r["fooling_ratio"]
        assert values[f"ossa/{m}"]["budgets"] == [0.25, 0.5, 1.0]
    # the budget decides: L∞ 0.3 on 8x8 digits leaves less robust than 0.05
    for m in ("plain", "shen", "smooth"):
        assert values[f"robust/{m}/linf/0.3"]["robust_accuracy"] <= values[f"robust/{m}/linf/0.05"]["robust_accuracy"]
    # the fine-tuned network trained on 200 images for one epoch, from the plain network
    assert values["model/smooth"]["epochs"] == 1
    report = (run.dir / "report.md").read_text()
    assert "a reduction of AutoAttack's standard ensemble" in report and "PARTIAL RUN" not in report
    assert "on 200 training images (seeded draw) from the plain net" in report


def test_the_verdict_in_the_report_is_computed_from_the_stored_numbers(tiny_run):
    cfg, run = tiny_run
    values = {r["cell"].split("#")[0]: r["values"] for r in _records(run)}
    report = (run.dir / "report.md").read_text()
    for m in ("shen", "smooth"):
        shared = [0.25, 0.5]
        at = [values["ossa/plain"]["budgets"].index(b) for b in shared]
        v = masking_verdict(
            f"`{m}`", "`plain`", shared, [values["ossa/plain"]["fooling_ratio"][j] for j in at],
            [values[f"ossa/{m}"]["fooling_ratio"][j] for j in at],
            [values[f"robust/plain/l2/{b:g}"]["fooling_ratio"] for b in shared],
            [values[f"robust/{m}/l2/{b:g}"]["fooling_ratio"] for b in shared],
            (values["ossa/plain"]["n_correct"], values[f"ossa/{m}"]["n_correct"]),
            (values["robust/plain/l2/0.25"]["n_correct"], values[f"robust/{m}/l2/0.25"]["n_correct"]),
            flags=sorted({f["code"] for b in shared for f in values[f"robust/{m}/l2/{b:g}"]["flags"]}))
        assert f"**{m}** — {v.sentence}" in report


def test_the_report_rerenders_from_the_store_alone(tiny_run, tmp_path, monkeypatch):
    _, run = tiny_run
    text = assert_rerenders_from_the_store(run.dir, tmp_path, monkeypatch)
    assert "Robustness or gradient masking?" in text


def test_a_partial_run_renders_what_it_has_and_says_what_is_missing(tiny_run):
    cfg, run = tiny_run
    more = load_config({**TINY, "models": [*TINY["models"], {"name": "later", "defense": {"kind": "fisher",
                                                                                            "mu": 0.05}}]})
    blocks = EXPERIMENTS["robustness_defenses"].report(more, run.view())
    text = "\n".join(getattr(b, "text", "") for b in blocks)
    assert "PARTIAL RUN: no results yet for `later`" in text
    assert "**smooth** —" in text and "**later**" not in text
    # only the reference measured: its tables, and no verdict yet
    ref_only = load_config({**TINY, "models": [TINY["models"][0], {"name": "never", "defense": {"kind": "fisher",
                                                                                                "mu": 0.05}}]})
    texts = [getattr(b, "text", "") for b in EXPERIMENTS["robustness_defenses"].report(ref_only, run.view())]
    assert "No verdict yet: only the reference `plain` has results." in texts
    assert not any(t.startswith("**") for t in texts)
    # nothing stored at all but the sample: the header and the notice, no tables
    only_ref = load_config({**TINY, "models": [{"name": "a"}, {"name": "b", "defense": PEN}], "seed": 0})
    blocks = EXPERIMENTS["robustness_defenses"].report(only_ref, run.view())
    assert any("PARTIAL RUN: no results yet for `a`, `b`" in getattr(b, "text", "") for b in blocks)


# ------------------------------------------------------------------ the kit


def test_the_default_ensemble_is_autoattacks_standard_one():
    for norm, eps, k in (("linf", 0.3, 10), ("l2", 1.0, 10), ("linf", 0.1, 3)):
        ours = [(n, repr(a)) for n, a in EnsembleSpec().attacks(norm, eps, k)]
        assert ours == [(n, repr(a)) for n, a in standard_attacks(norm, eps, k)]
    assert EnsembleSpec().is_standard and "AutoAttack's standard ensemble without FAB-T." in EnsembleSpec().describe()
    reduced = EnsembleSpec(apgd_steps=50, square_queries=500)
    assert not reduced.is_standard and "a reduction of AutoAttack's standard ensemble" in reduced.describe()
    assert [a.steps for _, a in reduced.attacks("linf", 0.3, 10)[:2]] == [50, 50]


@pytest.mark.parametrize("bad", [{"apgd_steps": 0}, {"square_queries": 1.5}, {"check_samples": True},
                                 {"checks": "all"}])
def test_bad_ensemble_settings_are_rejected_with_the_fix(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=rf"^ensemble: {key} must be .*; got .*\. "):
        EnsembleSpec(**bad)


def test_worst_case_of_an_unattackable_input_set(digits_model):
    """No image correct (labels the net never predicts): a clean, well-formed cell, fooling ratio NaN."""
    from fisherscope.data import load_dataset

    test = load_dataset("digits", "test")
    model, x = digits_model.model, test.x[:12]
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 10
    r = worst_case(model, x, wrong, norm="linf", eps=0.1, ensemble=EnsembleSpec(apgd_steps=3, square_queries=5,
                                                                                 check_samples=4),
                   seed=0, batch_size=8)
    assert r["n_correct"] == 0 and r["robust_accuracy"] == 0.0
    assert all(v != v for v in (r["fooling_ratio"], r["gradient_fooling_ratio"]))  # NaN
    json.dumps(r)


def _v(weak_def, strong_def, *, weak_ref=(0.6, 0.9), strong_ref=(1.0, 1.0), n=(1000, 1000), m=(100, 100), **kw):
    return masking_verdict("D", "P", [1.0, 2.0], list(weak_ref), list(weak_def), list(strong_ref), list(strong_def),
                           n, m, **kw)


def test_masking_verdict_labels_each_case_from_the_numbers():
    # OSSA fools the defense far less, the strong attacks fool both completely: masking
    v = _v((0.3, 0.5), (1.0, 1.0), flags=["saturated_softmax"])
    assert v.label == MASKING and v.sentence.startswith("Gradient masking, not robustness")
    assert "OSSA 30.0% against 60.0%" not in v.sentence and "OSSA 50.0% against 90.0%" in v.sentence  # largest gap
    assert "masking flags raised on D: saturated_softmax" in v.sentence
    assert [r[-1] for r in v.rows] == [MASKING, MASKING]
    # the strong attacks fool it less too, by at least half OSSA's gap: robustness
    v = _v((0.3, 0.5), (0.6, 0.7))
    assert v.label == ROBUSTNESS and "no masking flag raised on D" in v.sentence
    # less, but by under half of OSSA's gap: partly
    assert _v((0.1, 0.4), (0.85, 0.85)).label == PARTLY
    # OSSA's ratio is not lower beyond the margin: nothing to explain
    v = _v((0.58, 0.9), (1.0, 1.0))
    assert v.label == NO_GAP and "its largest drop, at 1: 58.0% against 60.0%" in v.sentence
    # the same gap on few images is within the noise
    assert _v((0.5, 0.8), (1.0, 1.0), n=(40, 40)).label == NO_GAP
    # the strong attacks' gap is within their noise of zero and of OSSA's gap: too few images to say
    v = _v((0.5, 0.8), (0.45, 0.85), strong_ref=(0.5, 0.9), m=(50, 50))
    assert [r[-1] for r in v.rows] == [UNDECIDED, UNDECIDED] and v.label == UNDECIDED
    assert v.sentence.startswith("Inconclusive") and "2 inconclusive" in v.sentence
    # ties between findings take the weaker claim
    v = _v((0.3, 0.5), (0.6, 1.0))
    assert [r[-1] for r in v.rows] == [ROBUSTNESS, MASKING] and v.label == MASKING
    numbers = re.findall(r"\d+\.\d%", _v((0.3, 0.5), (1.0, 1.0)).sentence)
    assert numbers == ["50.0%", "90.0%", "100.0%", "100.0%"]


def test_masking_verdict_rejects_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="one equal, non-zero length"):
        masking_verdict("D", "P", [1.0], [0.5, 0.6], [0.5], [1.0], [1.0], (10, 10), (10, 10))
    with pytest.raises(ValueError, match="pairs of counts >= 1"):
        masking_verdict("D", "P", [1.0], [0.5], [0.5], [1.0], [1.0], (10, 0), (10, 10))


# ------------------------------------------------------------------ the MNIST config


def test_the_mnist_config_names_the_six_defenses_and_its_reductions():
    cfg = load_config(CONFIGS / "robustness-defenses.toml")
    assert cfg.kind == "robustness_defenses" and cfg.arch == "convnet_bn" and cfg.dataset == "mnist"
    assert cfg.linf_eps == [0.1, 0.2, 0.3] and cfg.l2_eps == [1.0, 2.0, 3.0]
    defenses = {m.name: m.defense for m in cfg.models}
    assert list(defenses)[0] == "plain" and defenses["plain"] is None
    assert {d["kind"] for d in defenses.values() if d} == {"fisher", "adversarial", "label_smoothing"}
    assert sorted(d["mu"] for d in defenses.values() if d and d["kind"] == "fisher" and "penalty" not in d) == [0.02,
                                                                                                             0.024]
    assert any(d and d.get("penalty") == "input_trace" for d in defenses.values())
    pgd = next(m for m in cfg.models if m.defense and m.defense["kind"] == "adversarial")
    assert pgd.defense["params"] == {"eps": 0.3, "steps": 7} and pgd.finetune is not None
    assert not cfg.ensemble.is_standard  # reduced for one CPU thread, and the report says so
