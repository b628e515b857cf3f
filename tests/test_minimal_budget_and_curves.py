"""The budget protocols of the library: :class:`~fisherscope.evaluation.MinimalBudget` (the
smallest-budget example, closed-form oracle on a linear model), :class:`~fisherscope.attacks.FixedSeed`
and :func:`~fisherscope.evaluation.one_step_curve` (fooling ratio against the budget, closed-form
oracle on a linear model; λ_max against G_x = Wᵀ(diag p − ppᵀ)W)."""

from __future__ import annotations

import math

import pytest
import torch

from _models import LinearSoftmax, tiny_mlp
from fisherscope.attacks import BIM, FGM, OSSA, OTCM, PGD, DeepFool, FixedSeed
from fisherscope.evaluation import FoolingCurve, MinimalBudget, one_step_curve

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

BOUNDS = (-1e3, 1e3)  # no clipping: FGM moves along a straight line


def _linear(d: int = 10, k: int = 4, n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = LinearSoftmax(torch.randn(k, d, generator=g, dtype=torch.float64),
                          torch.randn(k, generator=g, dtype=torch.float64)).eval()
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample starts correct
    return model, x, y


def _least_fgm_budget(model: LinearSoftmax, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """FGM on z = Wx + b moves along a fixed unit vector u: the least budget that changes the
    argmax is min_j over the positive roots of ((w_j − w_y)·(x + t u) + b_j − b_y = 0)."""
    n, k = len(y), model.weight.shape[0]
    p = model(x).softmax(1).detach()
    u = (p - torch.nn.functional.one_hot(y, k)) @ model.weight.detach()  # ∇x CE, per sample
    u = u / u.norm(dim=1, keepdim=True)
    w, b = model.weight.detach(), model.bias.detach()
    wd = w.unsqueeze(0) - w[y].unsqueeze(1)  # (n, k, d): w_j − w_y
    num = -((wd * x.unsqueeze(1)).sum(-1) + b.unsqueeze(0) - b[y].unsqueeze(1))
    den = (wd * u.unsqueeze(1)).sum(-1)
    t = torch.where(den > 0, num / den, torch.full_like(num, math.inf))
    t[torch.arange(n), y] = math.inf
    return t.min(1).values


def test_minimal_budget_matches_the_closed_form_on_a_linear_model():
    """The searched least budget equals the closed form (:func:`_least_fgm_budget`)."""
    g = torch.Generator().manual_seed(0)
    d, k, n = 10, 4, 64
    model = LinearSoftmax(torch.randn(k, d, generator=g, dtype=torch.float64),
                          torch.randn(k, generator=g, dtype=torch.float64)).eval()
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample starts correct
    bounds = (-1e3, 1e3)  # no clipping: the line is straight
    tol = 1e-6
    atk = MinimalBudget(attack=FGM(eps=1.0, bounds=bounds), hi=8.0, tol=tol, bounds=bounds)
    res = atk.run(model, x, y)
    expected = _least_fgm_budget(model, x, y)
    found = res.extras["eps"]
    inside = expected < 8.0
    assert inside.sum() > n // 2 and torch.isnan(found[~inside]).all()
    assert (found[inside] >= expected[inside]).all() and (found[inside] - expected[inside] <= tol).all()
    # the returned example is the attack's at that budget: it fools, and its norm is the budget
    assert res.success[inside].all() and not res.success[~inside].any()
    assert torch.allclose(res.norms["l2"][inside], found[inside], atol=1e-12)
    assert torch.equal(res.x_adv[~inside], x[~inside])


def test_minimal_budget_random_start_is_reproducible_and_fools(digits_model):
    from fisherscope.data import load_dataset

    test = load_dataset("digits", "test")
    x, y = test.x[:24], test.y[:24]
    atk = MinimalBudget(attack=PGD(eps=1.0, steps=3), hi=1.0, tol=0.01)
    a = atk.run(digits_model.model, x, y, generator=torch.Generator().manual_seed(3))
    b = atk.run(digits_model.model, x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.x_adv, b.x_adv)
    eps = a.extras["eps"]
    found = ~torch.isnan(eps)
    assert found.sum() >= 20
    # the search and the returned example agree: every sample with a budget is fooled within it
    assert a.success[found].all()
    assert (a.norms["linf"][found] <= eps[found] + 1e-6).all()


def test_minimal_budget_rejects_what_it_cannot_search():
    with pytest.raises(ValueError, match="budgeted attack instance with an eps"):
        MinimalBudget(attack=DeepFool(), hi=1.0)
    with pytest.raises(ValueError, match=r"hi > 0 and tol > 0; got hi=0.0"):
        MinimalBudget(attack=FGM(eps=1.0), hi=0.0)
    atk = MinimalBudget(attack=BIM(eps=1.0, norm="linf", steps=2), hi=1.0)
    assert atk.norm == "linf" and not atk.budgeted


# ------------------------------------------------------------------ FixedSeed


def test_fixed_seed_makes_the_same_draws_whatever_the_callers_generator():
    model = tiny_mlp(d=12, k=5)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (16,), generator=g)
    pgd = PGD(eps=0.3, steps=2, random_start=True)
    fixed = FixedSeed(attack=pgd, seed=7, bounds=pgd.bounds)
    a = fixed.run(model, x, y, generator=torch.Generator().manual_seed(0))
    b = fixed.run(model, x, y, generator=torch.Generator().manual_seed(99))
    ref = pgd.run(model, x, y, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.x_adv, ref.x_adv)
    other = pgd.run(model, x, y, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a.x_adv, other.x_adv)  # the seed matters: the start is random
    # the budget comes through: at a smaller eps the same start is projected into the smaller ball
    small = fixed.run(model, x, y, eps=0.1)
    assert (small.norms["linf"] <= 0.1 + 1e-12).all()
    assert (fixed.norm, fixed.eps, fixed.budgeted, fixed.supports_targeted) == ("linf", 0.3, True, True)


def test_fixed_seed_rejects_what_is_not_an_attack():
    with pytest.raises(TypeError, match="wraps an Attack instance"):
        FixedSeed(attack="pgd", seed=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed must be an integer; got 0.5"):
        FixedSeed(attack=PGD(eps=0.3), seed=0.5)  # type: ignore[arg-type]


# ------------------------------------------------------------------ one_step_curve


def test_one_step_curve_matches_the_closed_form_on_a_linear_model():
    model, x, y = _linear(n=80)
    least = _least_fgm_budget(model, x, y)
    wrong = torch.arange(len(y)) % 5 == 0  # mislabel every fifth sample: left out of the ratio
    y_given = torch.where(wrong, (y + 1) % 4, y)
    budgets = [0.0, 0.25, 0.5, 1.0, 1.5]
    curve = one_step_curve(FGM(eps=1.0, bounds=BOUNDS), model, x, y_given, budgets, seed=0, batch_size=7)
    assert isinstance(curve, FoolingCurve)
    assert curve.n == 80 and curve.n_correct == int((~wrong).sum())
    t = least[~wrong]
    expected = [float((t < b).double().mean()) for b in budgets]
    assert 0 < expected[2] < expected[-1] < 1  # the budgets cut through the least budgets
    assert curve.fooling_ratio.tolist() == expected
    assert curve.budgets == tuple(budgets)
    assert torch.allclose(curve.mean_applied_l2, torch.tensor(budgets, dtype=torch.float64), atol=1e-9)
    assert (curve.mean_applied_linf <= curve.mean_applied_l2 + 1e-12).all()
    assert curve.lambda_max is None and math.isnan(curve.lambda_max_median)
    # batching only splits the work (FGM's direction is per sample)
    whole = one_step_curve(FGM(eps=1.0, bounds=BOUNDS), model, x, y_given, budgets, seed=0, batch_size=512)
    assert whole.fooling_ratio.tolist() == expected
    assert set(curve.as_dict()) == {"budgets", "fooling_ratio", "mean_applied_l2", "mean_applied_linf",
                                    "n_correct", "n"}


def test_one_step_curve_gives_lambda_max_of_the_ossa_spectrum():
    model, x, y = _linear(n=20)
    curve = one_step_curve(OSSA(eps=1.0, bounds=BOUNDS), model, x, y, [0.0, 1.0], seed=0, batch_size=8)
    p = model(x).softmax(1).detach()
    w = model.weight.detach()
    g_x = w.T @ (torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)) @ w  # (n, d, d)
    top = torch.linalg.eigvalsh(g_x)[:, -1]
    assert curve.lambda_max is not None and torch.allclose(curve.lambda_max, top, rtol=1e-8, atol=1e-12)
    assert curve.lambda_max_mean == pytest.approx(float(top.mean()), rel=1e-8)
    assert curve.lambda_max_median == pytest.approx(float(top.median()), rel=1e-8)
    d = curve.as_dict()
    assert d["lambda_max"] == curve.lambda_max.tolist() and d["lambda_max_median"] == curve.lambda_max_median


def test_one_step_curve_is_reproducible_with_a_seeded_random_attack():
    model, x, y = _linear(n=40)
    run = [one_step_curve(OTCM(eps=1.0, bounds=BOUNDS), model, x, y, [0.5, 1.0, 3.0], seed=3, batch_size=16)
           for _ in range(2)]
    assert run[0].fooling_ratio.tolist() == run[1].fooling_ratio.tolist()
    assert run[0].mean_applied_l2.tolist() == run[1].mean_applied_l2.tolist()


def test_one_step_curve_says_what_it_cannot_do():
    model, x, y = _linear(n=10)
    with pytest.raises(TypeError, match="needs a OneStepAttack.*got PGD"):
        one_step_curve(PGD(eps=0.3, bounds=BOUNDS), model, x, y, [0.1], seed=0, batch_size=4)
    with pytest.raises(ValueError, match="budgets is empty"):
        one_step_curve(FGM(eps=1.0, bounds=BOUNDS), model, x, y, [], seed=0, batch_size=4)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1; got 0"):
        one_step_curve(FGM(eps=1.0, bounds=BOUNDS), model, x, y, [1.0], seed=0, batch_size=0)
    with pytest.raises(ValueError, match="none of the given images correctly"):
        one_step_curve(FGM(eps=1.0, bounds=BOUNDS), model, x, (y + 1) % 4, [1.0], seed=0, batch_size=4)
