"""Shen et al. reproductions, Zhao Table 3 and the demo's "defend" section: end to end on
digits with tiny settings, their records and reports (re-rendered from the store alone),
resume, and the resumable minimal examples the tables rest on. The library pieces
(MinimalBudget, FixedSeed, one_step_curve) are tested in test_minimal_budget_and_curves.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _rerender import assert_rerenders_from_the_store
from fisherscope.experiments import Context, load_config, run_experiment
from fisherscope.experiments.shen import paper_units

BASE = {"arch": "digits_cnn", "dataset": "digits", "seed": 0, "n_samples": 24, "batch_size": 24}
PEN = {"kind": "fisher", "mu": 0.02}  # the same request as test_defenses / the demo: one cached model
# Every Table 1 row kind (search over a one-step, an iterative and a random-start attack;
# minimisation attacks as they are), at tiny settings.
ATTACKS = [
    {"label": "FGSM", "attack": "fgsm", "distance": "linf", "search": True, "hi": 1.0, "tol": 0.02},
    {"label": "FGM", "attack": "fgm", "distance": "l2", "search": True, "hi": 5.0, "tol": 0.1},
    {"label": "BIM-L1", "attack": "bim", "params": {"norm": "l1", "steps": 3}, "distance": "l1", "search": True,
     "hi": 30.0, "tol": 1.0},
    {"label": "BIM-L2", "attack": "bim", "params": {"norm": "l2", "steps": 3}, "distance": "l2", "search": True,
     "hi": 5.0, "tol": 0.1},
    {"label": "BIM-Linf", "attack": "bim", "params": {"norm": "linf", "steps": 3}, "distance": "linf",
     "search": True, "hi": 1.0, "tol": 0.02},
    {"label": "DeepFool", "attack": "deepfool", "params": {"steps": 20}, "distance": "l2"},
    {"label": "CW", "attack": "cw", "params": {"binary_search_steps": 2, "steps": 20, "learning_rate": 0.05,
                                               "initial_const": 1.0}, "distance": "l2"},
    {"label": "JSMA", "attack": "jsma", "params": {"target": "most_likely"}, "distance": "l0"},
    {"label": "PGD-random", "attack": "pgd", "params": {"steps": 3}, "distance": "linf", "search": True,
     "hi": 1.0, "tol": 0.02},
]
# "smooth" is fine-tuned from "original" (the per-network ``finetune`` of the extra rows)
MODELS = [{"name": "original"}, {"name": "shen", "defense": PEN},
          {"name": "smooth", "defense": {"kind": "label_smoothing", "alpha": 0.1}, "finetune": {"epochs": 1, "lr": 1e-4}}]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _records(run) -> list[dict]:
    return [json.loads(line) for line in run.results_path.read_text().splitlines()]


def _name(key: str) -> str:
    """A stored cell key without the digest of its spec (``mu/0#3f2a...`` -> ``mu/0``)."""
    return key.split("#")[0]


def _named(run) -> dict[str, dict]:
    """``{cell name: values}`` of a run (each name once: the cells of one config differ in name)."""
    out = {}
    for key, values in run.results().items():
        assert _name(key) not in out, f"two cells named {_name(key)!r}"
        out[_name(key)] = values
    return out


def _run(kind: str, tmp_path: Path, **extra):
    cfg = load_config({"name": kind, "kind": kind, **BASE, **extra})
    run = run_experiment(cfg, tmp_path, context=Context(progress=False))
    assert all(r["config_hash"] == run.config_hash for r in _records(run))
    return cfg, run


def _cached_checkpoint(digits_model, key: str):
    """The checkpoint with this key, in the model cache ``digits_model`` was written to."""
    from fisherscope.models import load_checkpoint

    return load_checkpoint(next(Path(digits_model.checkpoint_path).parent.glob(f"*{key}.pt")))


def _resume_is_a_no_op(cfg, run, tmp_path: Path) -> None:
    before = run.results_path.read_text()
    again = run_experiment(cfg, tmp_path, resume=True, context=Context(progress=False))
    assert again.dir == run.dir and again.results_path.read_text() == before


def test_crafted_examples_resume_after_a_kill_and_match_an_unbroken_run(tmp_path, digits_model):
    """The stored minimal examples of Tables 1-2 go on from the last finished batch after a
    kill (generator state included): the result equals, bit for bit, a run never stopped."""
    from fisherscope.data import load_dataset
    from fisherscope.experiments import DemoConfig, Run
    from fisherscope.experiments.specs import AttackSpec, build_attack, crafted

    test = load_dataset("digits", "test")
    x, y = test.x[:24], test.y[:24]
    spec = AttackSpec("PGD-random", "pgd", {"steps": 3}, "linf", search=True, hi=1.0, tol=0.02)
    attack = build_attack(spec)
    cfg = DemoConfig(name="crafted")
    calls = []

    def craft(atk, run, seed=5):
        return crafted(run, spec, atk, digits_model, x, y, seed=seed, batch_size=10)

    unbroken = craft(attack, Run(cfg, tmp_path / "a"))
    killed = Run(cfg, tmp_path / "b")
    with pytest.raises(Killed):
        craft(_Counting(attack, calls, dies_on=2), killed)
    kept = _records(killed)  # one batch kept, nothing else
    assert [_name(r["cell"]) for r in kept] == [f"crafted/PGD-random/{digits_model.key[:12]}/0"]
    first_batch_seconds = kept[0]["values"]["seconds"]
    assert first_batch_seconds > 0
    calls.clear()
    resumed = craft(_Counting(attack, calls), Run(cfg, tmp_path / "b", resume=killed.dir))
    assert calls == [10, 4]  # only the two batches the kill left undone
    assert resumed.keys() == unbroken.keys() == {"x_adv", "success", "eps", "seconds"}
    tensors = ("x_adv", "success", "eps")
    for k in tensors:  # bit for bit (eps is NaN where no budget up to hi fools)
        torch.testing.assert_close(resumed[k], unbroken[k], rtol=0, atol=0, equal_nan=True)
    assert resumed["seconds"] > first_batch_seconds  # the killed run's batch counts too
    calls.clear()
    again = craft(_Counting(attack, calls), Run(cfg, tmp_path / "b", resume=killed.dir))
    for k in tensors:
        torch.testing.assert_close(again[k], unbroken[k], rtol=0, atol=0, equal_nan=True)
    assert calls == []  # complete: loaded, not recomputed
    assert again["seconds"] == resumed["seconds"]  # the attack's time, not the time to load it
    # another seed is another request: its own cells, computed, not answered by the stored ones
    other = craft(_Counting(attack, calls), Run(cfg, tmp_path / "b", resume=killed.dir), seed=6)
    assert calls == [10, 10, 4] and not torch.equal(other["x_adv"], unbroken["x_adv"])


class Killed(Exception):
    pass


class _Counting:
    """``attack``, recording each batch size in ``calls``; raises :class:`Killed` on call ``dies_on``."""

    def __init__(self, attack, calls, dies_on=None):
        self.attack, self.calls, self.dies_on = attack, calls, dies_on

    def run(self, model, xb, yb, *, generator):
        self.calls.append(len(yb))
        if len(self.calls) == self.dies_on:
            raise Killed
        return self.attack.run(model, xb, yb, generator=generator)


def test_paper_units_are_foolbox_distances():
    delta = torch.zeros(2, 1, 28, 28, dtype=torch.float64)
    delta[0, 0, 0, :4] = 0.5
    delta[1, 0, 3, 3] = -1.0
    from fisherscope.attacks import perturbation_norms

    norms = perturbation_norms(delta)
    assert torch.allclose(paper_units(norms, "l2", 784), torch.tensor([4 * 0.25 / 784, 1 / 784], dtype=torch.float64))
    assert torch.allclose(paper_units(norms, "l1", 784), torch.tensor([2.0 / 784, 1 / 784], dtype=torch.float64))
    assert paper_units(norms, "l0", 784).tolist() == [4.0, 1.0]
    assert paper_units(norms, "linf", 784).tolist() == [0.5, 1.0]


def test_table1_marks_ratios_whose_means_cover_different_images():
    from fisherscope.experiments.shen import _few_fooled

    def cell(fooled, correct=100):  # as _distances records them
        return {"n_fooled": fooled, "n_correct": correct, "fooling_ratio": fooled / correct}

    # PGD-7's JSMA case: the defended net keeps most images, so its mean covers only the easy ones.
    cells = {("original", "JSMA"): cell(95), ("pgd", "JSMA"): cell(31), ("smooth", "JSMA"): cell(98),
             ("original", "FGM"): cell(83), ("pgd", "FGM"): cell(100), ("smooth", "FGM"): cell(90),
             ("original", "CW"): cell(100), ("pgd", "CW"): cell(100), ("smooth", "CW"): cell(90, 100)}
    assert _few_fooled(cells, "original") == {("pgd", "JSMA"), ("pgd", "FGM"), ("smooth", "FGM")}


# ------------------------------------------------------------------ the experiment kinds


def test_shen_figure1(tmp_path, digits_model):
    cfg, run = _run("shen_figure1", tmp_path, eps=1.0, n_samples=40, batch_size=40)
    r = _named(run)["figure1"]
    assert 0 < r["n_fooled_original"] <= r["n_both_correct"] <= 40
    assert 0 <= r["n_survived"] <= r["n_fooled_original"]
    assert len(r["test_indices"]) == min(2, r["n_fooled_original"]) == len(r["p_original"])
    for i, label in enumerate(r["labels"]):
        p_orig, p_pen = torch.tensor(r["p_original"][i]), torch.tensor(r["p_penalised"][i])
        assert abs(float(p_orig.sum()) - 1) < 1e-5 and abs(float(p_pen.sum()) - 1) < 1e-5
        assert int(p_orig.argmax()) != label  # every example shown fools the original net
        if i < r["n_survived"]:  # ... and those that exist are survived by the penalised one
            assert int(p_pen.argmax()) == label
        assert 0 < r["applied_l2"][i] <= 1.0 + 1e-5
    html = (run.dir / "report.html").read_text()
    assert "Shen et al. Figure 1" in html and html.count("data:image/png;base64,") == 1
    _resume_is_a_no_op(cfg, run, tmp_path)


def test_shen_figure2_3_one_cell_per_mu_and_resume_per_mu(tmp_path, digits_model):
    cfg, run = _run("shen_figure2_3", tmp_path, mus=[0.0, 0.02], budgets=[0.0, 1.0, 2.0], n_samples=60,
                    batch_size=60)
    res = _named(run)
    assert {"mu/0", "mu/0.02"} <= set(res)
    plain, pen = res["mu/0"], res["mu/0.02"]
    assert plain["checkpoint_key"] == digits_model.key and plain["defense"] is None
    assert pen["defense"]["mu"] == 0.02 and pen["checkpoint_key"] != plain["checkpoint_key"]
    for r in (plain, pen):
        assert r["fooling_ratio"][0] == 0.0 and r["fooling_ratio"] == sorted(r["fooling_ratio"])  # monotone here
        assert r["budgets"] == [0.0, 1.0, 2.0] and r["test_accuracy"] >= 0.97
        assert r["mean_applied_l2"][1] <= 1.0 + 1e-5 and r["lambda_max_median"] > 0
    html = (run.dir / "report.html").read_text()
    assert "Figures 2 and 3" in html and html.count("data:image/png;base64,") == 2
    # a run killed after μ = 0 resumes with μ = 0.02 only: drop that cell and resume
    lines = run.results_path.read_text().splitlines()
    kept = [ln for ln in lines if _name(json.loads(ln)["cell"]) != "mu/0.02"]
    run.results_path.write_text("".join(ln + "\n" for ln in kept))
    again = run_experiment(cfg, tmp_path, resume=True, context=Context(progress=False))
    redone = _named(again)
    assert again.results_path.read_text().splitlines()[: len(kept)] == kept  # μ = 0 untouched, not redone
    assert redone["mu/0.02"]["fooling_ratio"] == pen["fooling_ratio"]  # deterministic: the same numbers
    assert sum(_name(json.loads(ln)["cell"]) == "mu/0" for ln in again.results_path.read_text().splitlines()) == \
        sum(_name(json.loads(ln)["cell"]) == "mu/0" for ln in lines)


def test_shen_figure2_3_finetune_starts_penalised_nets_from_the_plain_one(tmp_path, digits_model):
    cfg, run = _run("shen_figure2_3", tmp_path, mus=[0.0, 0.02], budgets=[0.0, 1.0], n_samples=30, batch_size=30,
                    finetune={"epochs": 1, "lr": 1e-4})
    res = _named(run)
    plain, tuned = res["mu/0"], res["mu/0.02"]
    assert plain["checkpoint_key"] == digits_model.key  # μ = 0 is the plain network itself
    ckpt = _cached_checkpoint(digits_model, tuned["checkpoint_key"])
    assert ckpt.config["init_from"] == digits_model.key and ckpt.config["epochs"] == 1
    # one short epoch from the trained weights keeps the accuracy (from scratch it would be ~chance)
    assert tuned["test_accuracy"] >= digits_model.metrics["test_accuracy"] - 0.03


def test_model_spec_finetune_must_say_what_to_change():
    from fisherscope.experiments.specs import ModelSpec

    with pytest.raises(ValueError, match=r"'smooth': finetune must be a non-empty mapping.*got \{\}"):
        ModelSpec(name="smooth", finetune={})
    with pytest.raises(ValueError, match="got 5"):
        ModelSpec(name="smooth", finetune=5)  # type: ignore[arg-type]


def test_shen_figure5(tmp_path, digits_model):
    cfg, run = _run("shen_figure5", tmp_path, budgets=[0.0, 1.0, 3.0], linf_budgets=[0.0, 0.1, 0.3])
    res = _named(run)
    for name in ("original", "mu=0.02"):
        assert res[f"model/{name}"]["test_accuracy"] >= 0.97
        for key in ("fgm", "otcm", "fgsm"):
            r = res[f"figure5/{name}/{key}"]
            assert r["fooling_ratio"][0] == 0.0 and all(0 <= v <= 1 for v in r["fooling_ratio"])
        fgsm = res[f"figure5/{name}/fgsm"]
        # one sign step: L∞ is the budget; the L2 it reaches is at most budget · sqrt(64)
        assert fgsm["mean_applied_linf"][1] == pytest.approx(0.1, abs=1e-6)
        assert 0 < fgsm["mean_applied_l2"][1] <= 0.1 * 8 + 1e-6
    assert "Figure 5" in (run.dir / "report.html").read_text()
    _resume_is_a_no_op(cfg, run, tmp_path)


def test_shen_tables_1_and_2_agree_and_resume(tmp_path, digits_model):
    t1cfg, t1 = _run("shen_table1", tmp_path, models=MODELS, attacks=ATTACKS,
                     paper={"FGSM": [0.107, 0.170], "JSMA": [28.26, 48.19]})
    res = _named(t1)
    assert {f"model/{m['name']}" for m in MODELS} <= set(res)
    assert res["model/smooth"]["defense"] == {"kind": "label_smoothing", "alpha": 0.1}
    assert res["model/original"]["checkpoint_key"] == digits_model.key
    smooth = _cached_checkpoint(digits_model, res["model/smooth"]["checkpoint_key"])
    assert smooth.config["init_from"] == digits_model.key and smooth.config["epochs"] == 1
    assert res["model/smooth"]["test_accuracy"] >= digits_model.metrics["test_accuracy"] - 0.03
    for m in MODELS:
        for a in ATTACKS:
            r = res[f"table1/{m['name']}/{a['label']}"]
            assert 0 < r["n_fooled"] <= r["n_correct"] <= 24 and len(r["per_sample"]) == r["n_fooled"]
            assert r["mean_" + a["distance"]] == pytest.approx(sum(r["per_sample"]) / r["n_fooled"])
        fgsm = res[f"table1/{m['name']}/FGSM"]
        # the minimal FGSM perturbation's L∞ is the least budget found (one sign step)
        assert fgsm["mean_linf"] == pytest.approx(fgsm["mean_least_eps"], abs=1e-6)
        fgm = res[f"table1/{m['name']}/FGM"]
        assert fgm["mean_paper_units"] == pytest.approx(
            sum(v * v for v in fgm["per_sample"]) / fgm["n_fooled"] / 64)
        assert res[f"table1/{m['name']}/JSMA"]["mean_paper_units"] == res[f"table1/{m['name']}/JSMA"]["mean_l0"]
    md = (t1.dir / "report.md").read_text()
    assert "Table 1" in md and "| smooth |" in md and "0.107" in md
    assert "fine-tuned with {'epochs': 1, 'lr': 0.0001} from the plain net" in md and "from scratch" in md
    _resume_is_a_no_op(t1cfg, t1, tmp_path)

    crafted1 = {r["cell"]: r["values"] for r in _records(t1) if r["cell"].startswith("crafted/")}
    assert len(crafted1) == len(MODELS) * len(ATTACKS)  # every (network, row) stored once (one batch of 24)

    pick = [a for a in ATTACKS if a["label"] in ("FGSM", "PGD-random", "CW")]
    t2cfg, t2 = _run("shen_table2", tmp_path, models=MODELS[:2],
                     attacks=[*pick, {"label": "OSSA", "attack": "ossa", "params": {"eps": 1.0}}])
    crafted2 = {r["cell"]: r["values"] for r in _records(t2) if r["cell"].startswith("crafted/")}
    shared = set(crafted1) & set(crafted2)
    # Table 2 makes Table 1's examples again (in its own run): the same cells, bit for bit the same arrays
    assert len(shared) == 2 * len(pick) and len(crafted2) == len(shared) + 2  # + OSSA on each of the two sources
    for key in shared:
        arrays = [k for k in ("x_adv", "success", "eps") if k in crafted1[key]]
        assert arrays[:2] == ["x_adv", "success"] and all(k in crafted2[key] for k in arrays)
        for k in arrays:
            assert crafted1[key][k]["sha256"] == crafted2[key][k]["sha256"]
    res2 = _named(t2)
    for a in [*pick, {"label": "OSSA"}]:
        for src in ("original", "shen"):
            r = res2[f"table2/{a['label']}/{src}"]
            assert r["count"] == "fooled_source" and r["sources"] == [src] and r["targets"] == ["original", "shen"]
            j = r["targets"].index(src)
            assert r["rates"][0][j] == 1.0  # crafted on src, fooling src: counted and fooled by construction
            if a["label"] != "OSSA":  # the same minimal examples as Table 1 (same seed and batches)
                assert r["n_counted"][0][j] == res[f"table1/{src}/{a['label']}"]["n_fooled"]
    md2 = (t2.dir / "report.md").read_text()
    assert "Table 2" in md2 and "original → shen acc %" in md2
    _resume_is_a_no_op(t2cfg, t2, tmp_path)


def test_zhao_table3_on_digits(tmp_path, digits_model):
    models = [
        {"name": "plain"},
        {"name": "plain-short", "overrides": {"epochs": 3}},
        {"name": "elu-adv", "model_kwargs": {"activation": "elu"}, "overrides": {"epochs": 3},
         "defense": {"kind": "adversarial", "attack": "fgm", "params": {"eps": 1.0}, "mix": 0.5}},
    ]
    cfg = load_config({"name": "z3", "kind": "zhao_table3", "arch": "digits_cnn", "dataset": "digits", "seed": 0,
                       "n_samples": 30, "batch_size": 30, "eps": 1.5, "models": models,
                       "paper": {"plain": {"plain": 100.0, "elu-adv": 88.49}}})
    run = run_experiment(cfg, tmp_path, context=Context(progress=False))
    res = _named(run)
    assert res["model/elu-adv"]["defense"]["attack"] == "fgm"
    names = [m["name"] for m in models]
    for src in names:
        r = res[f"transfer/{src}"]
        assert r["targets"] == names and r["count"] == "fooled_source"
        i = names.index(src)
        assert r["rates"][0][i] == 1.0 and 0 < r["n_counted"][0][i] <= r["n_correct_source"] <= 30
        assert all(c == r["n_counted"][0][i] for c in r["n_counted"][0])  # one counted set per source
    md = (run.dir / "report.md").read_text()
    assert "Zhao et al. Table 3" in md and "| plain | 100.0 (" in md and "88.5" in md
    _resume_is_a_no_op(cfg, run, tmp_path)


def test_demo_defend_section(tmp_path, digits_model):
    from fisherscope.data import load_dataset
    from fisherscope.experiments import DemoConfig, Run
    from fisherscope.experiments.demo_defend import defend_cells, defend_report
    from fisherscope.experiments.kit import DemoState

    cfg = DemoConfig()
    run = Run(cfg, tmp_path)
    state = DemoState(cfg, Context(progress=False), digits_model, load_dataset("digits", "test"))
    defend_cells(run, state)
    blocks = defend_report(cfg, run.view())
    r = run.results()["defend"]
    plain, pen = r["plain"], r["penalised"]
    assert plain["test_accuracy"] == digits_model.metrics["test_accuracy"] and pen["test_accuracy"] >= 0.97
    assert len(plain["lambda_max"]) == plain["n_correct"] and len(pen["lambda_max"]) == pen["n_correct"] >= 440
    i = r["budgets"].index(1.0)
    assert pen["fooling_ratio"][i] < plain["fooling_ratio"][i]  # Shen's claim, measured on all 450 digits
    assert any(getattr(b, "text", "").startswith("Defend") for b in blocks)
    assert (run.figures_dir / "defend.png").stat().st_size > 0
    # worst-case robust accuracy with its flags, and the verdict computed beside the OSSA numbers
    from fisherscope.experiments.demo_defend import ENSEMBLE, ROBUST_IMAGES, ROBUST_THREATS
    from fisherscope.experiments.robust_kit import masking_verdict

    (key,) = [k for k in run.results() if k.startswith("defend/robust")]
    w = run.results()[key]
    assert w["n"] == ROBUST_IMAGES and len(w["plain"]) == len(w["penalised"]) == len(ROBUST_THREATS)
    for c in w["plain"] + w["penalised"]:
        assert c["n"] == ROBUST_IMAGES and c["robust_accuracy"] <= c["clean_accuracy"]
        assert [a for a, _ in c["per_attack"]] == ["apgd-ce", "apgd-t", "square"]
    assert not ENSEMBLE.is_standard
    budgets = [e for _, e in ROBUST_THREATS]
    v = masking_verdict(
        f"the penalised network (μ = {r['mu']:g})", "the plain one", budgets,
        [plain["fooling_ratio"][r["budgets"].index(e)] for e in budgets],
        [pen["fooling_ratio"][r["budgets"].index(e)] for e in budgets],
        [c["fooling_ratio"] for c in w["plain"]], [c["fooling_ratio"] for c in w["penalised"]],
        (plain["n_correct"], pen["n_correct"]), (w["plain"][0]["n_correct"], w["penalised"][0]["n_correct"]),
        flags=sorted({f["code"] for c in w["penalised"] for f in c["flags"]}))
    assert any(getattr(b, "text", "") == f"**Robustness or gradient masking?** {v.sentence}" for b in blocks)
    before = run.results_path.read_text()
    defend_cells(Run(cfg, tmp_path, resume=run.dir), state)
    assert run.results_path.read_text() == before


@pytest.mark.parametrize("name", ["shen-figure1", "shen-figure2-3", "shen-figure5", "shen-table1", "shen-table2",
                                  "zhao-table3"])
def test_configs_parse(name):
    cfg = load_config(Path(__file__).parent.parent / "configs" / f"{name}.toml")
    assert cfg.dataset == "mnist"
    if name == "shen-figure2-3":
        assert cfg.mus == [0.0, 0.005, 0.01, 0.015, 0.02, 0.022, 0.024, 0.025] and max(cfg.budgets) == 6.0
    if name in ("shen-table1", "shen-table2"):
        from fisherscope.experiments.specs import build_attack

        for spec in cfg.attacks:
            build_attack(spec)  # every row builds
    if name == "zhao-table3":
        vgg = [m for m in cfg.models if m.arch == "vgg_small"]
        assert len(vgg) == 2 and all(m.preset == "vgg_small@mnist" for m in vgg)


# ------------------------------------------------------------------ reports from the store alone

_ZHAO3_MODELS = [{"name": "plain"}, {"name": "plain-short", "overrides": {"epochs": 3}}]
_TINY = {
    "shen_figure1": {"eps": 1.0, "n_samples": 40, "batch_size": 40},
    "shen_figure2_3": {"mus": [0.0, 0.02], "budgets": [0.0, 1.0], "baseline_seeds": [1], "n_samples": 30,
                       "batch_size": 30, "training": {"epochs": 2}},
    "shen_figure5": {"budgets": [0.0, 1.0], "linf_budgets": [0.0, 0.1], "n_samples": 30, "batch_size": 30},
    "shen_table1": {"models": MODELS[:2], "attacks": [ATTACKS[0], ATTACKS[7]], "n_samples": 20, "batch_size": 12,
                    "paper": {"FGSM": [0.107, 0.170]}},
    "shen_table2": {"models": MODELS[:2], "attacks": [ATTACKS[0], {"label": "OSSA", "attack": "ossa",
                                                                   "params": {"eps": 1.0}}], "n_samples": 20},
    "zhao_table3": {"models": _ZHAO3_MODELS, "eps": 1.5, "n_samples": 20, "batch_size": 20,
                    "paper": {"plain": {"plain": 100.0}}},
}


@pytest.mark.parametrize("kind", sorted(_TINY))
def test_report_renders_from_the_store_alone(kind, tmp_path, digits_model, monkeypatch):
    """Every kind's report is a pure function of the stored cells: with no model cache, no
    figures and every model call failing, ``render_stored`` writes the same report.md."""
    cfg, run = _run(kind, tmp_path / "runs", **_TINY[kind])
    n_figures = len(list(run.figures_dir.glob("*.png")))
    assert n_figures >= (kind not in ("shen_table2", "zhao_table3"))  # the tables have no figure
    assert_rerenders_from_the_store(run.dir, tmp_path, monkeypatch)
