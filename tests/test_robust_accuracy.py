"""robust_accuracy / robust_accuracy_curve: the ensemble protocol and every gradient-masking flag.

Each flag is triggered by a small model built to have the defect (a temperature-saturated
softmax, an input-rounding layer, dropout at eval, a gate that returns memorised labels
far from the data, a one-step attack) and stays off on the plain trained digits net.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fisherscope.attacks import APGD, FGSM, PGD, APGDTargeted, DeepFool, Square
from fisherscope.evaluation import (
    MaskingFlag,
    RobustAccuracy,
    robust_accuracy,
    robust_accuracy_curve,
    standard_attacks,
)

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 0.1


@pytest.fixture(scope="module")
def digits(digits_model):
    from fisherscope.data import load_dataset

    test = load_dataset("digits", "test")
    return digits_model.model.eval(), test.x[:32].clone(), test.y[:32].clone()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _light(eps: float = EPS, norm: str = "linf") -> list:
    return [APGD(eps=eps, norm=norm, steps=20), Square(eps=eps, norm=norm, n_queries=200)]


# ------------------------------------------------------------------ defective models
class _Scaled(nn.Module):
    """Logits × 1e4: the softmax saturates and the CE gradient underflows to zero."""

    def __init__(self, inner: nn.Module, factor: float = 1e4):
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x):
        return self.inner(x) * self.factor


class _Rounded(nn.Module):
    """Input quantised to quarters by torch.round: zero input gradient everywhere."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)


class _DropoutAtEval(nn.Module):
    """Input dropout that stays on in eval mode: a randomised model."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(F.dropout(x, 0.2, training=True))


class _Gated(nn.Module):
    """Returns confident memorised labels for inputs farther than ``tau`` (L∞) from every reference input.

    Small budgets stay inside the gate, where the trained net is attacked as usual; larger
    ones start outside it, where the output is constant and its gradient zero: robust
    accuracy *rises* with the budget, and an unbounded attack fails.
    """

    def __init__(self, inner: nn.Module, x_ref: torch.Tensor, y_ref: torch.Tensor, tau: float):
        super().__init__()
        self.inner, self.tau = inner, tau
        self.register_buffer("x_ref", x_ref.flatten(1).clone())
        self.register_buffer("y_ref", y_ref.clone())

    def forward(self, x):
        z = self.inner(x)
        dist = (x.flatten(1)[:, None] - self.x_ref[None]).abs().amax(2)
        dmin, j = dist.min(1)
        fixed = 20.0 * F.one_hot(self.y_ref[j], z.shape[1]).to(z.dtype)
        return torch.where((dmin > self.tau)[:, None], fixed, z)


def _codes(res) -> list[str]:
    return [f.code for f in res.flags]


def _assert_well_formed(flag: MaskingFlag) -> None:
    assert flag.message.endswith(".") and flag.message.count(". ") == 0, flag.message  # one sentence
    assert flag.values and all(isinstance(v, int | float) for v in flag.values.values())
    json.dumps(flag.to_dict())


# ------------------------------------------------------------------ the protocol
def test_plain_model_full_checks_no_flags_and_consistent_result(digits):
    model, x, y = digits
    x0, y0 = x.clone(), y.clone()
    res = robust_accuracy(model, x, y, norm="linf", eps=EPS, attacks=_light(), generator=_gen(), checks="full")
    assert isinstance(res, RobustAccuracy)
    assert res.flags == [], [f.message for f in res.flags]
    assert torch.equal(x, x0) and torch.equal(y, y0)
    with torch.no_grad():
        clean_pred = model(x).argmax(1)
        adv_pred = model(res.x_adv).argmax(1)
    assert torch.equal(res.clean_correct, clean_pred == y)
    assert res.clean_accuracy == pytest.approx(float((clean_pred == y).float().mean()))
    assert res.robust_accuracy == pytest.approx(float(res.robust.float().mean()))
    assert not (res.robust & ~res.clean_correct).any()
    # per_attack: names in order, cumulative and non-increasing, the last one is the result
    assert [name for name, _ in res.per_attack] == ["apgd", "square"]
    accs = [a for _, a in res.per_attack]
    assert accs == sorted(accs, reverse=True) and accs[-1] == res.robust_accuracy <= res.clean_accuracy
    assert res.robust_accuracy < res.clean_accuracy  # the attacks do fool this net at 0.1
    # x_adv: fooled samples carry a misclassified example inside the budget, the others are x
    fooled = res.clean_correct & ~res.robust
    assert (adv_pred[fooled] != y[fooled]).all()
    assert ((res.x_adv - x).abs().flatten(1).amax(1) <= EPS + 1e-6).all()
    assert torch.equal(res.x_adv[~fooled], x[~fooled])
    assert torch.equal(res.fooled_by >= 0, fooled)
    d = res.to_dict()
    json.dumps(d)
    assert d["robust_accuracy"] == res.robust_accuracy and d["n"] == 32 and len(d["robust"]) == 32
    assert d["attacks"][0][0] == "apgd" and "eps=0.1" in d["attacks"][0][1]


def test_deterministic_given_generator_and_batch_size_independent_of_the_call(digits):
    model, x, y = digits
    kw = dict(norm="linf", eps=EPS, attacks=_light(), checks=None, batch_size=12)
    a = robust_accuracy(model, x, y, generator=_gen(5), **kw)
    b = robust_accuracy(model, x, y, generator=_gen(5), **kw)
    assert torch.equal(a.robust, b.robust) and torch.equal(a.x_adv, b.x_adv) and a.per_attack == b.per_attack


def test_standard_ensemble(digits):
    model, x, y = digits
    x, y = x[:8], y[:8]
    res = robust_accuracy(model, x, y, norm="linf", eps=EPS, generator=_gen(), checks=None)
    assert [name for name, _ in res.per_attack] == ["apgd-ce", "apgd-t", "square"]
    assert "n_target_classes=9" in res.attacks[1][1] and "n_queries=5000" in res.attacks[2][1]
    assert res.robust_accuracy < res.clean_accuracy


def test_ensemble_is_at_most_each_single_attack(digits):
    model, x, y = digits
    attacks = [("apgd-ce", APGD(eps=EPS, steps=10)), ("apgd-t", APGDTargeted(eps=EPS, steps=10, n_target_classes=3)),
               ("square", Square(eps=EPS, n_queries=300)), ("fgsm", FGSM(eps=EPS))]
    res = robust_accuracy(model, x, y, norm="linf", eps=EPS, attacks=attacks, generator=_gen(), checks=None)
    for name, atk in attacks:
        single = robust_accuracy(model, x, y, norm="linf", eps=EPS, attacks=[(name, atk)], generator=_gen(1),
                                 checks=None)
        assert res.robust_accuracy <= single.robust_accuracy, (name, res.robust_accuracy, single.robust_accuracy)
    assert res.robust_accuracy <= min(a for _, a in res.per_attack)


def test_standard_attacks_follow_the_number_of_classes():
    three = dict(standard_attacks("l2", 0.5, 3))
    assert three["apgd-t"].n_target_classes == 2 and three["apgd-t"].loss == "ce"  # targeted DLR needs 4 classes
    ten = dict(standard_attacks("l2", 0.5, 10))
    assert ten["apgd-t"].n_target_classes == 9 and ten["apgd-t"].loss == "dlr" and ten["apgd-t"].norm == "l2"
    assert ten["apgd-ce"].loss == "ce" and ten["apgd-ce"].steps == 100 and ten["apgd-ce"].restarts == 1
    assert ten["square"].n_queries == 5000 and ten["square"].norm == "l2"


def test_every_attack_runs_with_the_evaluation_budget(digits):
    model, x, y = digits
    # an attack built with a different eps is run with the evaluation's eps
    res = robust_accuracy(model, x, y, norm="linf", eps=0.05, attacks=[PGD(eps=0.5, steps=10)], generator=_gen(),
                          checks=None)
    assert ((res.x_adv - x).abs().flatten(1).amax(1) <= 0.05 + 1e-6).all()
    assert "eps=0.05" in res.attacks[0][1]


def test_bad_arguments_rejected(digits):
    model, x, y = digits
    with pytest.raises(ValueError, match="norm 'l2', but robust_accuracy was called with norm='linf'"):
        robust_accuracy(model, x, y, norm="linf", eps=EPS, attacks=[APGD(eps=1.0, norm="l2")])
    with pytest.raises(ValueError, match="has no budget"):
        robust_accuracy(model, x, y, norm="l2", eps=EPS, attacks=[DeepFool()])
    with pytest.raises(ValueError, match="checks must be 'standard', 'full' or None"):
        robust_accuracy(model, x, y, norm="linf", eps=EPS, checks="all")
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        robust_accuracy(model, x, y, norm="linf", eps=0.0)
    with pytest.raises(ValueError, match="norm must be 'linf' or 'l2'"):
        robust_accuracy(model, x, y, norm="l1", eps=EPS)
    with pytest.raises(ValueError, match="attacks must be 'standard'"):
        robust_accuracy(model, x, y, norm="linf", eps=EPS, attacks="autoattack")
    with pytest.raises(TypeError, match="attacks must hold Attack instances"):
        robust_accuracy(model, x, y, norm="linf", eps=EPS, attacks=["apgd"])
    with pytest.raises(ValueError, match="outside bounds"):
        robust_accuracy(model, x + 2, y, norm="linf", eps=EPS)
    with pytest.raises(ValueError, match="eps_list must be a list of at least two budgets"):
        robust_accuracy_curve(model, x, y, "linf", [0.1])


# ------------------------------------------------------------------ the flags
def test_saturated_softmax(digits):
    model, x, y = digits
    res = robust_accuracy(_Scaled(model).eval(), x, y, norm="linf", eps=EPS, attacks=_light(), generator=_gen(),
                          checks=None)
    assert "saturated_softmax" in _codes(res) and "zero_gradients" not in _codes(res)
    flag = next(f for f in res.flags if f.code == "saturated_softmax")
    _assert_well_formed(flag)
    assert flag.values["fraction"] > 0.5 and "DLR" in flag.message
    # and indeed: CE-based APGD fools nothing, the gradient-free attack does
    assert res.per_attack[0][1] == res.clean_accuracy and res.per_attack[1][1] < res.clean_accuracy
    assert "gradient_free_stronger" in _codes(res)


def test_zero_gradients_and_gradient_free_stronger_and_unbounded_fails(digits):
    model, x, y = digits
    res = robust_accuracy(_Rounded(model).eval(), x, y, norm="linf", eps=EPS, attacks=_light(), generator=_gen(),
                          checks="standard")
    codes = _codes(res)
    for code in ("zero_gradients", "gradient_free_stronger", "unbounded_fails"):
        assert code in codes, codes
        _assert_well_formed(next(f for f in res.flags if f.code == code))
    assert "saturated_softmax" not in codes and "randomised_model" not in codes
    zero = next(f for f in res.flags if f.code == "zero_gradients")
    assert zero.values["n_zero"] == zero.values["n"] == 32
    gf = next(f for f in res.flags if f.code == "gradient_free_stronger")
    assert gf.values["n_fooled"] == int((res.fooled_by == 1).sum()) > 0


def test_randomised_model(digits):
    model, x, y = digits
    res = robust_accuracy(_DropoutAtEval(model).eval(), x, y, norm="linf", eps=EPS, attacks=_light(),
                          generator=_gen(), checks=None)
    assert "randomised_model" in _codes(res)
    flag = next(f for f in res.flags if f.code == "randomised_model")
    _assert_well_formed(flag)
    assert "eot_iter" in flag.message and flag.values["max_normalised_logit_diff"] > 1e-4


def test_no_convergence_with_a_one_step_attack(digits):
    model, x, y = digits
    res = robust_accuracy(model, x, y, norm="linf", eps=EPS, attacks=[FGSM(eps=EPS)], generator=_gen(),
                          checks="standard")
    assert "no_convergence" in _codes(res)
    flag = next(f for f in res.flags if f.code == "no_convergence")
    _assert_well_formed(flag)
    assert flag.values["n_fooled"] > 0 and flag.values["steps"] == 200 and flag.values["restarts"] == 2


def test_no_convergence_uses_the_ensembles_apgd(digits):
    model, x, y = digits
    # a 2-step APGD is re-run with 4 steps and 2 restarts (after a PGD that is not an APGD)
    res = robust_accuracy(model, x, y, norm="linf", eps=EPS, attacks=[FGSM(eps=EPS), APGD(eps=EPS, steps=2)],
                          generator=_gen(), checks="standard")
    flag = next(f for f in res.flags if f.code == "no_convergence")
    assert flag.values["steps"] == 4 and flag.values["restarts"] == 2 and flag.values["n_fooled"] > 0


def test_not_monotone_in_eps(digits):
    model, x, y = digits
    gated = _Gated(model, x, y, tau=0.15).eval()
    curve = robust_accuracy_curve(gated, x, y, "linf", [0.2, 0.05, 0.1, 0.4], attacks=[APGD(eps=0.1, steps=20)],
                                  generator=_gen())
    assert curve.eps == [0.05, 0.1, 0.2, 0.4]
    assert curve.robust_accuracy[2] > curve.robust_accuracy[1]
    assert [f.code for f in curve.flags] == ["not_monotone_in_eps"]
    flag = curve.flags[0]
    _assert_well_formed(flag)
    assert flag.values["eps_high"] > flag.values["eps_low"] and flag.values["n_witnesses"] > 0
    json.dumps(curve.to_dict())
    # the plain net: monotone
    plain = robust_accuracy_curve(model, x, y, "linf", [0.05, 0.1, 0.2, 0.4], attacks=[APGD(eps=0.1, steps=20)],
                                  generator=_gen())
    assert plain.flags == [] and plain.robust_accuracy == sorted(plain.robust_accuracy, reverse=True)
    # robust_accuracy runs the curve with checks="full" only
    full = robust_accuracy(gated, x, y, norm="linf", eps=0.2, attacks=_light(0.2), generator=_gen(), checks="full")
    assert {"not_monotone_in_eps", "unbounded_fails"} <= set(_codes(full))
    std = robust_accuracy(gated, x, y, norm="linf", eps=0.2, attacks=_light(0.2), generator=_gen(), checks="standard")
    assert "not_monotone_in_eps" not in _codes(std) and "unbounded_fails" in _codes(std)


def test_cheap_checks_stay_off_for_plain_models_l2(digits):
    model, x, y = digits
    res = robust_accuracy(model, x, y, norm="l2", eps=0.5, attacks=_light(0.5, "l2"), generator=_gen(),
                          checks="standard")
    assert res.flags == [], [f.message for f in res.flags]
    assert res.robust_accuracy < res.clean_accuracy


def test_targeted_apgd_in_a_custom_list_is_named_and_counted(digits):
    model, x, y = digits
    res = robust_accuracy(model, x, y, norm="linf", eps=EPS,
                          attacks=[("ce", APGD(eps=EPS, steps=10)), APGDTargeted(eps=EPS, steps=10, n_target_classes=3),
                                   APGD(eps=EPS, steps=10, loss="dlr")],
                          generator=_gen(), checks=None)
    assert [n for n, _ in res.per_attack] == ["ce", "apgdtargeted", "apgd"]


@pytest.mark.parametrize("checks", [None, "standard", "full"])
def test_no_correctly_classified_image_gives_a_clean_result(digits, checks):
    """Labels the model never predicts: nothing to attack, so no attack runs (an empty batch
    used to reach the attacks and raise), and the result says 0% with every field well formed."""
    model, x, y = digits
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 10
    calls = []

    class _Counting(APGD):
        def _run(self, *args, **kwargs):
            calls.append(1)
            return super()._run(*args, **kwargs)

    res = robust_accuracy(model, x, wrong, norm="linf", eps=EPS,
                          attacks=[_Counting(eps=EPS, steps=5), Square(eps=EPS, n_queries=20)],
                          generator=_gen(), checks=checks)
    assert calls == []
    assert res.robust_accuracy == 0.0 and res.clean_accuracy == 0.0
    assert [acc for _, acc in res.per_attack] == [0.0, 0.0]
    assert not res.robust.any() and not res.clean_correct.any()
    assert torch.equal(res.fooled_by, torch.full_like(res.fooled_by, -1))
    assert torch.equal(res.x_adv, x)
    assert "gradient_free_stronger" not in res.flag_codes and "no_convergence" not in res.flag_codes
    json.dumps(res.to_dict())
    curve = robust_accuracy_curve(model, x, wrong, "linf", [0.05, EPS], attacks=[APGD(eps=EPS, steps=5)],
                                  generator=_gen())
    assert curve.robust_accuracy == [0.0, 0.0] and curve.flags == []
