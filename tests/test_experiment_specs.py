"""The kit's network and attack specs (experiments/specs.py): one ModelSpec and one AttackSpec
for every experiment, both spellings of the attack fields, the attacks they build, and config
hashes that do not move when a field is added for another experiment."""

from __future__ import annotations

import pytest

from fisherscope.attacks import FGM, PGD, DeepFool
from fisherscope.evaluation import MinimalBudget
from fisherscope.experiments.config import config_from_dict, config_to_dict
from fisherscope.experiments.specs import AttackSpec, ModelSpec, attack_ident, build_attack


def test_attack_spec_takes_either_spelling():
    shen = AttackSpec("FGM", "fgm", {"eps": 2.0})
    detection = config_from_dict(AttackSpec, {"name": "FGM", "key": "fgm", "params": {"eps": 2.0}})
    assert (shen.title, shen.attack_key) == (detection.title, detection.attack_key) == ("FGM", "fgm")
    assert build_attack(shen) == build_attack(detection) == FGM(eps=2.0)
    assert attack_ident(shen) == attack_ident(detection)  # the row name is not part of what decides the examples


def test_attack_spec_says_what_is_missing_or_contradictory():
    with pytest.raises(ValueError, match="needs a row name: set 'label' \\(or 'name'\\)"):
        AttackSpec(attack="fgm")
    with pytest.raises(ValueError, match="needs an ATTACKS key: set 'attack' \\(or 'key'\\)"):
        AttackSpec(label="FGM")
    with pytest.raises(ValueError, match="'attack' = 'fgm' and 'key' = 'pgd' disagree"):
        AttackSpec(label="x", attack="fgm", key="pgd")


def test_build_attack_wraps_searched_rows_and_rejects_bad_ones():
    atk = build_attack(AttackSpec("PGD", "pgd", {"steps": 3, "norm": "l2"}, "l2", search=True, hi=4.0, tol=0.1))
    assert isinstance(atk, MinimalBudget) and atk.attack == PGD(eps=4.0, steps=3, norm="l2")
    assert (atk.hi, atk.tol) == (4.0, 0.1)
    assert build_attack(AttackSpec("DF", "deepfool", {"steps": 5})) == DeepFool(steps=5)
    assert build_attack(AttackSpec("B", "bim", {"eps": 0.1, "bounds": [0.0, 2.0]})).bounds == (0.0, 2.0)
    with pytest.raises(ValueError, match="unknown attack 'nope'; valid keys are"):
        build_attack(AttackSpec("X", "nope"))
    with pytest.raises(ValueError, match="drop 'eps' from params"):
        build_attack(AttackSpec("X", "fgm", {"eps": 1.0}, search=True))
    with pytest.raises(ValueError, match="has no budget to search; set search=false"):
        build_attack(AttackSpec("X", "deepfool", search=True))
    with pytest.raises(ValueError, match=r"attack row 'X' \(fgm\): bad parameters \{'stepz': 3\}"):
        build_attack(AttackSpec("X", "fgm", {"stepz": 3}))


def test_fields_of_other_experiments_leave_a_config_dict_unchanged():
    """The fields one experiment adds are omitted at their defaults: the Shen and Zhao configs
    hash as before the specs were merged (their resumable runs stay resumable)."""
    assert config_to_dict(AttackSpec("FGM", "fgm", {"steps": 3}, "l2", search=True, hi=2.0)) == {
        "label": "FGM", "attack": "fgm", "params": {"steps": 3}, "distance": "l2", "search": True, "hi": 2.0,
        "tol": 1e-3}
    assert config_to_dict(ModelSpec(name="pgd", defense={"kind": "adversarial"})) == {
        "name": "pgd", "defense": {"kind": "adversarial"}, "arch": None, "preset": None, "model_kwargs": None,
        "overrides": {}}
    spec = ModelSpec(name="ft", finetune={"epochs": 1}, label="fine-tuned", dataset="digits", min_test_accuracy=0.9)
    assert config_to_dict(spec)["finetune"] == {"epochs": 1} and config_to_dict(spec)["min_test_accuracy"] == 0.9


def test_model_spec_row_name_and_finetune():
    assert ModelSpec(arch="lenet5", dataset="mnist").row_name == "lenet5"
    assert ModelSpec(arch="lenet5", preset="lenet5@paper").row_name == "lenet5@paper"
    assert ModelSpec(name="original", arch="lenet5").row_name == "original"
    assert ModelSpec(name="original", label="the original").row_name == "the original"
    with pytest.raises(ValueError, match=r"'smooth': finetune must be a non-empty mapping.*got \{\}"):
        ModelSpec(name="smooth", finetune={})
