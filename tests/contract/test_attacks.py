"""The attack contract, for every entry of ATTACKS (DESIGN.md §5).

Attacks are built from their own standard setting (``cls.standard``), so a new attack
gets all of these by being registered; DETERMINISTIC only swaps random target / start
choices for deterministic ones where a test compares a batch with its samples one by one.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _models import assert_leaves_state_untouched, tiny_cnn_batch  # noqa: E402
from fisherscope import ModelModeWarning  # noqa: E402
from fisherscope.attacks import ATTACKS, Attack, OneStepAttack  # noqa: E402

#: random target / start choices are drawn in batch order, so batch != per-sample with them;
#: the random paths are covered in tests/test_gradient_attacks.py and the other tests here
DETERMINISTIC: dict[str, dict] = {
    "pgd": dict(random_start=False),
    "apgd": dict(random_start=False),
    "apgd_t": dict(random_start=False),
    "otcm": dict(target="least_likely"),
    "otcm_iterative": dict(target="least_likely"),
    "hg_targeted": dict(target="most_likely"),
    "hg_fast": dict(target="most_likely"),
    "jsma": dict(target="most_likely"),
}
#: attacks whose random draws (from the one generator) depend on the batch they run in, so a
#: sample attacked alone sees other draws than inside the batch; they are still deterministic
BATCH_DEPENDENT_DRAWS = {"square": "window positions and signs are drawn for the whole batch"}
#: where the standard setting is too weak to show that the attack works: HGFast's 10/255
#: sign step (the paper's) rarely reaches p_target > 0.5 on 8×8 digits
STRONGER: dict[str, dict] = {"hg_fast": dict(eps=0.3)}
NORM_ORD = {"l2": 2, "linf": float("inf"), "l1": 1}


def make(key: str, deterministic: bool = False, **over) -> Attack:
    """ATTACKS[key] at its standard setting, with ``over`` (and DETERMINISTIC) on top."""
    cls = ATTACKS[key]
    extra = DETERMINISTIC.get(key, {}) if deterministic else {}
    return cls(**{**cls.standard, **extra, **over})


@pytest.fixture(scope="module")
def setup():
    return tiny_cnn_batch()


KEYS = sorted(ATTACKS)


@pytest.mark.parametrize("key", KEYS)
def test_shape_dtype_bounds_budget(setup, key):
    model, x, y = setup
    atk = make(key)
    res = atk.run(model, x, y, generator=torch.Generator().manual_seed(0))
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype and res.x_adv.device == x.device
    lo, hi = atk.bounds
    assert res.x_adv.min() >= lo and res.x_adv.max() <= hi
    eps = getattr(atk, "eps", None)
    if atk.budgeted and eps is not None:
        d = (res.x_adv - x).flatten(1).norm(p=NORM_ORD[atk.norm], dim=1)
        assert (d <= eps + 1e-5).all(), d.max()
    assert res.success.shape == (x.shape[0],) and res.success.dtype == torch.bool
    for name in ("l0", "l1", "l2", "linf"):
        assert res.norms[name].shape == (x.shape[0],)


@pytest.mark.parametrize("key", KEYS)
def test_input_untouched_mode_restored_param_grads_untouched(setup, key):
    model, x, y = setup
    assert_leaves_state_untouched(
        lambda m, xx, yy: make(key)(m, xx, yy, generator=torch.Generator().manual_seed(0)), model, x, y)


@pytest.mark.parametrize("key", KEYS)
def test_eps_zero_returns_x_exactly(setup, key):
    model, x, y = setup
    atk = make(key)
    if not (atk.budgeted and "eps" in {f.name for f in dataclasses.fields(atk)}):
        pytest.skip("not a budgeted attack")
    out = dataclasses.replace(atk, eps=0.0)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


@pytest.mark.parametrize("key", KEYS)
def test_deterministic_and_batch_equals_per_sample(setup, key):
    """Same seed, same output; and each sample attacked alone gets what it got in the batch.

    Run in float64: in float32 a batched kernel and a single-image kernel round differently,
    and a sign step or an APGD step-size halving (a comparison of two losses) can turn on
    that rounding (seen on CI for APGD-T: 1e-3 apart). The per-sample *logic* is what is tested.
    """
    model, x, y = setup
    model, x = copy.deepcopy(model).double(), x.double()
    atk = make(key, deterministic=True)
    a = atk(model, x, y, generator=torch.Generator().manual_seed(3))
    b = atk(model, x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    if key in BATCH_DEPENDENT_DRAWS:
        return
    for i in range(x.shape[0]):
        one = atk(model, x[i : i + 1], y[i : i + 1], generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(one[0], a[i], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("key", KEYS)
def test_bad_inputs_rejected(setup, key):
    model, x, y = setup
    atk = make(key)
    with pytest.raises(ValueError, match="outside bounds"):
        atk(model, x + 1.5, y)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        atk(model, bad, y)
    with pytest.raises(ValueError, match="one-hot"):
        atk(model, x, torch.nn.functional.one_hot(y, 5))
    with pytest.raises(ValueError, match="but y has"):
        atk(model, x, y[:2])
    with pytest.raises(TypeError, match="floating-point"):
        atk(model, (x * 255).to(torch.uint8), y)
    prob_model = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    with pytest.raises(ValueError, match="looks like probabilities"):
        atk(prob_model, x, y)
    # labels are checked against the number of classes on the attack's own first forward
    for call in (atk, atk.run):
        with pytest.raises(ValueError, match=r"values in \[0, 5\)"):
            call(model, x, torch.full_like(y, 5))
        with pytest.raises(ValueError, match=r"values in \[0, 5\)"):
            call(model, x, torch.full_like(y, -1))
    assert not model._forward_hooks, "the validating hook must be removed, also after an error"


class _CountingModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.forwards = inner, 0

    def forward(self, x):
        self.forwards += 1
        return self.inner(x)


def test_one_step_call_costs_one_forward(setup):
    """attack(model, x, y) spends no forward on validation or on a success mask."""
    model, x, y = setup
    counting = _CountingModel(model)
    for key in ("fgsm", "fgm"):
        counting.forwards = 0
        make(key)(counting, x, y)
        assert counting.forwards == 1
    counting.forwards = 0
    make("pgd", steps=4)(counting, x, y)
    assert counting.forwards == 4
    counting.forwards = 0
    make("fgsm").run(counting, x, y)  # + the forward at x_adv for the success mask
    assert counting.forwards == 2


@pytest.mark.parametrize("key", KEYS)
def test_bad_hyperparameters_rejected(key):
    fields = {f.name for f in dataclasses.fields(ATTACKS[key])}
    if "eps" in fields:
        with pytest.raises(ValueError, match=r": eps must be a finite number >= 0; got -1"):
            make(key, eps=-1.0)
    if "steps" in fields:
        with pytest.raises(ValueError, match=r": steps must be an integer >= 1"):
            make(key, steps=0)


@pytest.mark.parametrize("key", KEYS)
def test_succeeds_on_a_trained_model(digits_model, key):
    from fisherscope.data import load_dataset

    test = load_dataset("digits", "test")
    x, y = test.x[:64], test.y[:64]
    model = digits_model.model
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelModeWarning)
        res = make(key, **STRONGER.get(key, {})).run(model, x, y, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean()
    robust = (~res.success).float().mean()
    assert robust < clean - 0.3, (clean, robust)


# ------------------------------------------------------------------ class-level metadata


@pytest.mark.parametrize("key", KEYS)
def test_metadata_is_declared_one_way_and_truthful(key):
    cls = ATTACKS[key]
    assert type(cls.budgeted) is bool and cls.budgeted == (cls.budget != "none")
    assert cls.budget in ("required", "optional", "none")
    assert isinstance(cls.norms, tuple) and cls.norms and cls.norm == cls.norms[0]
    assert isinstance(cls.standard_description, str) and cls.standard_description.strip()
    atk = cls(**cls.standard)
    assert atk.budgeted is cls.budgeted and atk.norm in cls.norms
    fields = {f.name for f in dataclasses.fields(cls)}
    if cls.budget == "none":
        assert "eps" not in fields
    else:
        assert "eps" in fields
        if cls.budget == "optional":  # eps=None: no projection, and still a bool on the instance
            kwargs = {**cls.standard, "eps": None}
            kwargs.setdefault("step_size", 0.05)
            assert cls(**kwargs).budgeted is True and cls(**kwargs).eps is None
        else:
            assert getattr(atk, "eps", None) is not None
    if "norm" in fields:  # the norm is a hyperparameter: every declared norm builds, others do not
        for n in cls.norms:
            assert cls(**{**cls.standard, "norm": n}).norm == n
        with pytest.raises(ValueError, match="norm must be one of"):
            cls(**{**cls.standard, "norm": next(n for n in ("l0", "l1", "l2", "linf") if n not in cls.norms)})
    else:
        assert len(cls.norms) == 1


@pytest.mark.parametrize("key", [k for k in KEYS if ATTACKS[k].budget == "optional"])
def test_optional_budget_unset_ignores_a_per_call_eps(setup, key):
    model, x, y = setup
    cls = ATTACKS[key]
    atk = cls(**{**cls.standard, "eps": None}, **({} if "step_size" in cls.standard else {"step_size": 0.05}))
    a = atk.run(model, x, y, generator=torch.Generator().manual_seed(0)).x_adv
    b = atk.run(model, x, y, generator=torch.Generator().manual_seed(0), eps=1e-3).x_adv
    assert torch.equal(a, b)
    from fisherscope.evaluation import least_perturbation

    with pytest.raises(TypeError, match="eps=None"):
        least_perturbation(atk, model, x, y, hi=1.0)


def _registry():
    from fisherscope._registry import Registry
    from fisherscope.attacks import _check_attack

    return Registry("ATTACKS", validate=_check_attack)


def test_registering_without_standard_setting_is_an_error():
    from fisherscope.attacks import BIM, FGSM

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class NewFGSM(FGSM):
        """An FGSM variant that forgot its standard setting."""

    with pytest.raises(TypeError, match=r"ATTACKS\['new'\]: NewFGSM declares no standard / standard_description"):
        _registry().register("new", NewFGSM)

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Unusable(BIM):
        """A BIM whose standard setting lacks the required eps (the old demo crash)."""

        standard = {"steps": 3}
        standard_description = "3 steps"

    with pytest.raises(TypeError, match=r"Unusable\(\*\*Unusable.standard\) fails"):
        _registry().register("unusable", Unusable)

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Typo(FGSM):
        """Standard names a field the attack does not have."""

        standard = {"epsilon": 0.1}
        standard_description = "L∞ ε = 0.1"

    with pytest.raises(TypeError, match=r"names \['epsilon'\]"):
        _registry().register("typo", Typo)


def test_registering_untruthful_norm_or_budget_metadata_is_an_error():
    from fisherscope.attacks import FGSM, DeepFool

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class PerInstance(FGSM):
        """budgeted as a property (what BIM used to do): not a bool on the class."""

        standard = {"eps": 0.1}
        standard_description = "L∞ ε = 0.1"

        @property
        def budgeted(self) -> bool:  # type: ignore[override]
            return True

    with pytest.raises(TypeError, match="budgeted must be the bool"):
        _registry().register("per_instance", PerInstance)

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class BadNorm(FGSM):
        """A norm that is not a norm."""

        norms = ("l3",)
        standard = {"eps": 0.1}
        standard_description = "ε = 0.1"

    with pytest.raises(TypeError, match="norms must be a non-empty tuple"):
        _registry().register("bad_norm", BadNorm)

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class BudgetWithoutEps(DeepFool):
        """Claims a budget but has no eps field."""

        budget = "required"
        standard = {}
        standard_description = "defaults"

    assert BudgetWithoutEps.budgeted is True  # derived from budget
    with pytest.raises(TypeError, match="no 'eps' field"):
        _registry().register("budget_without_eps", BudgetWithoutEps)


def test_registry_rejects_duplicates_and_names_valid_keys():
    from fisherscope.attacks import FGSM
    from fisherscope.exceptions import RegistryKeyError

    with pytest.raises(ValueError, match=r"ATTACKS\['fgsm'\] is already registered"):
        ATTACKS.register("fgsm", FGSM)
    with pytest.raises(RegistryKeyError, match=r"ATTACKS has no entry 'fgms'\. Did you mean 'fgm', 'fgsm' or 'mifgsm'\?") as err:
        ATTACKS["fgms"]
    assert isinstance(err.value, KeyError) and err.value.valid == sorted(ATTACKS)
    assert "ossa_iterative" in str(err.value)


# --------------------------------------------------------- OneStepAttack.prepare / step

ONE_STEP = [k for k in KEYS if issubclass(ATTACKS[k], OneStepAttack)]


@pytest.mark.parametrize("key", ONE_STEP)
def test_prepare_then_step_equals_run_at_that_budget(setup, key):
    model, x, y = setup
    atk = make(key, deterministic=True)
    eps = torch.linspace(0.0, 2 * atk.eps, x.shape[0])
    state = atk.prepare(model, x, y)
    out = atk.step(model, x, y, state, eps)
    ref = atk.run(model, x, y, eps=eps).x_adv
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # y=None in prepare: the model's predictions, as __call__ does (setup's y are the predictions)
    torch.testing.assert_close(atk.step(model, x, y, atk.prepare(model, x), eps), out, rtol=0, atol=0)


@pytest.mark.parametrize("key", ONE_STEP)
def test_prepare_validates_like_call(setup, key):
    model, x, y = setup
    atk = make(key)
    for bad_x, bad_y, exc, match in [
        (x + 1.5, y, ValueError, "outside bounds"),
        (torch.where(torch.arange(x.numel()).reshape(x.shape) == 0, float("nan"), x), y, ValueError, "non-finite"),
        (x, torch.nn.functional.one_hot(y, 5), ValueError, "one-hot"),
        (x, y[:2], ValueError, "but y has"),
        ((x * 255).to(torch.uint8), y, TypeError, "floating-point"),
        (x, torch.full_like(y, 5), ValueError, r"values in \[0, 5\)"),
    ]:
        with pytest.raises(exc, match=match):
            atk(model, bad_x, bad_y)
        with pytest.raises(exc, match=match):
            atk.prepare(model, bad_x, bad_y)
    prob_model = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    with pytest.raises(ValueError, match="looks like probabilities"):
        atk.prepare(prob_model, x, y)
    assert not model._forward_hooks
    model.train()
    try:
        with pytest.warns(ModelModeWarning):
            state = atk.prepare(model, x, y)
        assert model.training
        with pytest.warns(ModelModeWarning):
            atk.step(model, x, y, state, 0.5)
        assert all(m.training for m in model.modules())
    finally:
        model.eval()


@pytest.mark.parametrize("key", ONE_STEP)
def test_step_validates_like_call(setup, key):
    model, x, y = setup
    atk = make(key)
    state = atk.prepare(model, x, y)
    for bad_x, bad_y, exc, match in [
        (x + 1.5, y, ValueError, "outside bounds"),
        (torch.where(torch.arange(x.numel()).reshape(x.shape) == 0, float("nan"), x), y, ValueError, "non-finite"),
        (x, torch.nn.functional.one_hot(y, 5), ValueError, "one-hot"),
        (x, y[:2], ValueError, "but y has"),
        ((x * 255).to(torch.uint8), y, TypeError, "floating-point"),
        (x, None, ValueError, "step needs y"),
    ]:
        with pytest.raises(exc, match=match):
            atk.step(model, bad_x, bad_y, state, 0.5)
    for eps in (-0.1, float("nan"), torch.ones(2)):
        with pytest.raises(ValueError, match="eps must be a number >= 0"):
            atk.step(model, x, y, state, eps)
    assert not model._forward_hooks, "the validating hook must be removed, also after an error"
