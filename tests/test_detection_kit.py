"""The detection kit: detectors built from the DETECTORS registry, cells keyed by their settings."""

from __future__ import annotations

import dataclasses

import pytest

from fisherscope.detectors import DETECTORS
from fisherscope.experiments import Context
from fisherscope.experiments.detection_kit import (
    RECIPES,
    AttackSpec,
    DetectionConfig,
    detector_specs,
    evaluation_spec,
)
from fisherscope.experiments.runner import cell_key

CFG = DetectionConfig(name="k", kind="detection_unified", arch="digits_cnn", dataset="digits", seed=3,
                      mc_samples=3, eigenvalues=9, lid_k=5, whitening_images=100,
                      noise_in_fit=["fisher_spectrum", "lid"],
                      attacks=[AttackSpec("FGM", "fgm", {"eps": 1.0})])


def test_every_registered_detector_has_a_recipe_and_every_recipe_a_registered_class():
    assert {r.detector for r in RECIPES.values()} == set(DETECTORS)
    assert set(DETECTORS) <= set(RECIPES)


@pytest.fixture(scope="module")
def probe():
    from fisherscope.data import load_dataset

    return load_dataset("digits", "test").x[:4]


def test_detector_specs_follow_the_recipes(digits_model, probe):
    specs = detector_specs(list(RECIPES), digits_model, CFG, Context(progress=False), probe)
    assert list(specs) == list(RECIPES)
    for name, spec in specs.items():
        assert type(spec.detector) is DETECTORS[RECIPES[name].detector]
        assert spec.fit_noise == (name in CFG.noise_in_fit)
    assert [specs[k].detector.statistic for k in ("fisher_score", "fisher_form", "fisher_nform")] == [
        "trace", "form", "normalized"]
    fs = specs["fisher_spectrum"]
    assert (fs.detector.random_state, fs.parts()[0].fn, dict(fs.parts()[0].kwargs)) == (3, "fisher_eigenvalues", {"k": 9})
    assert specs["lid"].detector.k == 5 and len(specs["lid"].detector.layer_sizes) >= 2
    # BU and KD+BU read one MC-dropout feature of one dropout copy (computed once), KD+BU adds the
    # penultimate features KD reads; the copy is not the attacked model
    (bu,) = specs["bu"].parts()
    pen, mc = specs["kdbu"].parts()
    assert mc is bu and bu.model is not digits_model.model and dict(bu.kwargs) == {"n": 3}
    assert pen.key(digits_model.model) == specs["kd"].parts()[0].key(digits_model.model)
    # the class's own feature when the recipe names none
    assert [p.fn for p in specs["mahalanobis"].parts()] == [DETECTORS["mahalanobis"].feature]


@pytest.mark.parametrize("noise, message", [(["kd"], "unsupervised"), (["fisher_spectrun"], "unknown detector")])
def test_noise_in_fit_that_cannot_apply_is_refused(digits_model, probe, noise, message):
    cfg = dataclasses.replace(CFG, noise_in_fit=noise)
    with pytest.raises(ValueError, match=message):
        detector_specs(["kd", "softmax"], digits_model, cfg, Context(progress=False), probe)


def test_unknown_detector_key_names_the_valid_ones(digits_model, probe):
    with pytest.raises(ValueError, match="valid: .*fisher_spectrum"):
        detector_specs(["kde"], digits_model, CFG, Context(progress=False), probe)


@pytest.mark.parametrize("change", [
    {"mc_samples": 4}, {"seed": 1}, {"n_samples": 10}, {"noise_in_fit": []}, {"arch": "lenet5"},
    {"attacks": [AttackSpec("FGM", "fgm", {"eps": 2.0})]},
])
def test_evaluation_cells_differ_in_every_setting(change):
    def key(cfg):
        return cell_key("unified", evaluation_spec(cfg, attacks=cfg.attacks, detectors=cfg.detectors,
                                                   cross_attack=cfg.cross_attack))

    assert key(dataclasses.replace(CFG, **change)) != key(CFG)
    assert key(dataclasses.replace(CFG)) == key(CFG)
    # the report's copy of the paper numbers decides nothing
    assert key(dataclasses.replace(CFG, paper={"table4": {}})) == key(CFG)
