"""The Registry type behind every registry: lookups, errors, validation, descriptions."""

from __future__ import annotations

import pickle

import pytest

from fisherscope._registry import Registry, RegistryKeyError, first_doc_line
from fisherscope.exceptions import RegistryKeyError as ExportedKeyError


def _positive(key, value):
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key}: need a positive int; got {value!r}")


def test_unknown_key_names_registry_key_close_matches_and_all_valid_keys():
    reg = Registry("COLOURS", {"red": 1, "green": 2, "blue": 3})
    with pytest.raises(KeyError) as err:
        reg["gren"]
    e = err.value
    assert isinstance(e, RegistryKeyError) and ExportedKeyError is RegistryKeyError
    assert (e.registry, e.key, e.valid, e.close) == ("COLOURS", "gren", ["blue", "green", "red"], ["green"])
    assert str(e) == "COLOURS has no entry 'gren'. Did you mean 'green'? Valid keys: blue, green, red."
    with pytest.raises(RegistryKeyError, match=r"^COLOURS has no entry 'purple'\. Valid keys: blue, green, red\.$"):
        reg["purple"]
    with pytest.raises(RegistryKeyError, match=r"\(none registered\)"):
        Registry("EMPTY")["x"]
    # the dict API is otherwise unchanged
    assert reg.get("purple") is None and "purple" not in reg and reg.get("red") == 1
    assert isinstance(reg, dict) and dict(reg) == {"red": 1, "green": 2, "blue": 3}
    with pytest.raises(RegistryKeyError):
        del reg["purple"]
    with pytest.raises(RegistryKeyError):
        reg.pop("purple")
    assert reg.pop("purple", None) is None


def test_duplicate_registration_is_an_error_but_item_assignment_may_replace():
    reg = Registry("N", validate=_positive)
    assert reg.register("one", 1) == 1
    with pytest.raises(ValueError, match=r"N\['one'\] is already registered \(to 1\)"):
        reg.register("one", 11)
    reg["one"] = 11  # an explicit replacement (how monkeypatch.setitem swaps an entry)
    assert reg["one"] == 11


def test_every_insertion_is_validated():
    reg = Registry("N", validate=_positive)
    for bad in (lambda: reg.register("a", -1), lambda: reg.__setitem__("b", 0),
                lambda: reg.update({"c": "x"}), lambda: reg.setdefault("d", -2)):
        with pytest.raises(ValueError, match="need a positive int"):
            bad()
    with pytest.raises(ValueError, match="need a positive int"):
        reg |= {"e": -3}
    with pytest.raises(TypeError, match="non-empty strings"):
        reg[3] = 1
    with pytest.raises(ValueError, match="need a positive int"):
        Registry("N", {"f": -1}, validate=_positive)
    assert dict(reg) == {}


def test_monkeypatch_setitem_swaps_and_restores(monkeypatch):
    reg = Registry("N", {"a": 1}, validate=_positive)
    with monkeypatch.context() as m:
        m.setitem(reg, "a", 5)
        m.setitem(reg, "new", 7)
        assert dict(reg) == {"a": 5, "new": 7}
    assert dict(reg) == {"a": 1}


def test_descriptions_pickle_and_copy():
    class Thing:
        """A thing.

        More text.
        """

    class Described:
        description = "from the attribute"

    reg = Registry("THINGS", describe=None)
    reg.register("thing", Thing)
    reg.register("described", Described)
    reg.register("explicit", Thing, description="given at registration")
    assert list(reg.descriptions()) == [
        ("thing", "A thing."), ("described", "from the attribute"), ("explicit", "given at registration"),
    ]
    with pytest.raises(ValueError, match="one-line"):
        reg.register("two_lines", Thing, description="a\nb")
    assert first_doc_line(None) == ""
    custom = Registry("C", {"x": 2}, describe=lambda v: f"value {v}")
    assert custom.describe("x") == "value 2"
    again = pickle.loads(pickle.dumps(Registry("N", {"a": 1}, validate=_positive)))
    assert isinstance(again, Registry) and again.name == "N" and dict(again) == {"a": 1}
    with pytest.raises(ValueError):
        again["b"] = -1  # the validator survives
    dup = again.copy()
    assert isinstance(dup, Registry) and dup == again and dup is not again


def test_all_package_registries_are_registries_with_helpful_errors():
    from fisherscope.attacks import ATTACKS
    from fisherscope.data import DATASETS
    from fisherscope.detectors import DETECTORS
    from fisherscope.experiments import EXPERIMENTS
    from fisherscope.features import FEATURES
    from fisherscope.models import MODELS

    for name, reg, near in [("ATTACKS", ATTACKS, "pgdd"), ("DATASETS", DATASETS, "mnits"),
                            ("DETECTORS", DETECTORS, "lidd"), ("EXPERIMENTS", EXPERIMENTS, "dem"),
                            ("FEATURES", FEATURES, "pixel"), ("MODELS", MODELS, "lenet")]:
        assert isinstance(reg, Registry) and reg.name == name and len(reg) > 0
        with pytest.raises(RegistryKeyError, match=f"^{name} has no entry {near!r}. Did you mean") as err:
            reg[near]
        assert err.value.valid == sorted(reg)
        for key, desc in reg.descriptions():
            assert isinstance(desc, str) and desc and "\n" not in desc, (name, key)


def test_package_registries_validate_entries():
    from fisherscope.data import DATASETS
    from fisherscope.detectors import DETECTORS, Detector
    from fisherscope.features import FEATURES
    from fisherscope.models import MODELS

    with pytest.raises(TypeError, match="must be a callable"):
        MODELS.register("not_a_model", 3)
    with pytest.raises(ValueError, match="holds the spec of 'digits'"):
        DATASETS.register("digits2", DATASETS["digits"])

    class NoFeature(Detector):
        feature = "nothing_makes_this"

    with pytest.raises(ValueError, match=r"NoFeature.feature is 'nothing_makes_this', not a key of"):
        DETECTORS.register("no_feature", NoFeature)
    with pytest.raises(TypeError, match="must be a subclass of fisherscope.detectors.Detector"):
        DETECTORS.register("not_a_detector", dict)
    with pytest.raises(TypeError, match="takes the batch as 'x'"):
        FEATURES.register("bad", lambda model, batch: batch)
    assert "not_a_model" not in MODELS and "no_feature" not in DETECTORS and "bad" not in FEATURES
    for cls in DETECTORS.values():
        assert cls.feature in FEATURES
