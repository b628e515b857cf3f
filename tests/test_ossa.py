"""OSSA, iterative OSSA, FGM and least_perturbation: the paper's properties, checked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import LinearSoftmax, tiny_cnn, tiny_mlp  # noqa: E402
from fisherscope.attacks import FGM, OSSA, IterativeOSSA  # noqa: E402
from fisherscope.evaluation import least_perturbation  # noqa: E402
from fisherscope.fisher import fisher_matrix, fisher_spectrum  # noqa: E402

F64 = torch.float64
WIDE = (-1e6, 1e6)  # bounds that never clip


def _ce(model, x, y):
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(x), y, reduction="none")


def test_ossa_is_top_eigenvector_of_dense_matrix():
    model = tiny_mlp(d=12, k=5)
    x = torch.rand(6, 12, dtype=F64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    res = OSSA(eps=0.3, bounds=WIDE).run(model, x, y)
    assert (res.extras["sign"] != 0).all()
    eta = res.x_adv - x
    w, v = torch.linalg.eigh(fisher_matrix(model, x, bounds=None))
    top = v[:, :, -1]
    cos = torch.einsum("nd,nd->n", eta, top).abs() / eta.norm(dim=1)
    assert (cos > 1 - 1e-10).all()
    torch.testing.assert_close(eta.norm(dim=1), torch.full((6,), 0.3, dtype=F64))
    torch.testing.assert_close(res.extras["eigenvalue"], w[:, -1])


def test_loss_strictly_increases_without_clipping_float64():
    model = tiny_cnn(side=8, k=6)
    x = torch.rand(8, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 6, (8,), generator=torch.Generator().manual_seed(3))
    atk = OSSA(eps=1e-3, bounds=WIDE)
    res = atk.run(model, x, y)
    before, after = _ce(model, x, y), _ce(model, res.x_adv, y)
    spec = fisher_spectrum(model, x, k=1, bounds=None)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xr), y, reduction="sum"), xr)
    nonzero = torch.einsum("nd,nd->n", g.flatten(1), spec.top_eigenvector.flatten(1)).abs() > 1e-12
    assert nonzero.any()
    assert (after[nonzero] > before[nonzero]).all()


def test_loss_never_decreases_with_clipping(digits_model):
    from fisherscope.data import load_dataset

    test = load_dataset("digits", "test")
    x, y = test.x[:200], test.y[:200]
    for eps in (0.5, 2.0, 5.0):
        res = OSSA(eps=eps).run(digits_model.model, x, y)
        before, after = _ce(digits_model.model, x, y), _ce(digits_model.model, res.x_adv, y)
        assert (after >= before).all()
        assert (res.norms["l2"] <= eps + 1e-5).all()
        torch.testing.assert_close(res.norms["l2"], res.extras["applied_l2"])
        assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1


def test_sign_is_chosen_on_the_real_budget():
    """Per sample, the kept candidate has the larger CE of the two clipped ones."""
    model = tiny_cnn(side=8, k=6, dtype=torch.float32)
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 6, (10,), generator=torch.Generator().manual_seed(5))
    res = OSSA(eps=2.0).run(model, x, y)
    v = fisher_spectrum(model, x, k=1).top_eigenvector
    plus, minus = (x + 2 * v).clamp(0, 1), (x - 2 * v).clamp(0, 1)
    best = torch.maximum(_ce(model, plus, y), _ce(model, minus, y))
    got = _ce(model, res.x_adv, y)
    moved = res.extras["sign"] != 0
    torch.testing.assert_close(got[moved], best[moved])


def test_eigen_index_uses_other_subspaces():
    model = tiny_mlp(d=12, k=5)
    x = torch.rand(4, 12, dtype=F64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    spec = fisher_spectrum(model, x, bounds=None)
    res = OSSA(eps=1e-4, eigen_index=2, bounds=WIDE).run(model, x, y)
    moved = res.extras["sign"] != 0
    assert moved.sum() >= 3
    eta = (res.x_adv - x)[moved]
    cos = torch.einsum("nd,nd->n", eta, spec.eigenvectors[moved, 2]).abs() / eta.norm(dim=1)
    assert (cos > 1 - 1e-10).all()
    with pytest.raises(ValueError, match="eigen_index"):
        OSSA(eps=1.0, eigen_index=-1)


def test_ossa_with_iterative_solvers_matches_exact():
    model = tiny_cnn(side=8, k=6)
    x = torch.rand(5, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(6))
    y = torch.randint(0, 6, (5,), generator=torch.Generator().manual_seed(7))
    exact = OSSA(eps=0.5)(model, x, y)
    for method in ("lanczos", "power"):
        other = OSSA(eps=0.5, method=method, tol=1e-10, max_iter=2000)(model, x, y, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(other, exact, rtol=1e-5, atol=1e-6)


def test_iterative_ossa_steps_and_optional_budget():
    model = tiny_cnn(side=8, k=6)
    x = torch.rand(5, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(8))
    y = torch.randint(0, 6, (5,), generator=torch.Generator().manual_seed(9))
    res = IterativeOSSA(step_size=0.05, steps=6).run(model, x, y)
    assert res.extras["success_per_step"].shape == (5, 6)
    assert (res.norms["l2"] <= 6 * 0.05 + 1e-9).all()  # at most steps × step_size
    capped = IterativeOSSA(step_size=0.05, steps=6, eps=0.12).run(model, x, y)
    assert (capped.norms["l2"] <= 0.12 + 1e-9).all()
    # the last column of success_per_step is the final prediction
    assert torch.equal(res.extras["success_per_step"][:, -1], res.success)


def test_fgm_matches_closed_form_on_linear_model():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(3, 7, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64)
    model = LinearSoftmax(w, b).eval()
    x = torch.rand(5, 7, dtype=F64, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1])
    p = torch.softmax(x @ w.T + b, 1)
    grad = (p - torch.nn.functional.one_hot(y, 3).to(F64)) @ w  # ∇x CE
    expected = x + 0.4 * grad / grad.norm(dim=1, keepdim=True)
    torch.testing.assert_close(FGM(eps=0.4, bounds=WIDE)(model, x, y), expected)


def test_least_perturbation_closed_form_binary_linear():
    """Two classes, no clipping: FGM moves along w_o − w_y; the least budget is the margin / ‖w_y − w_o‖."""
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(2, 6, generator=g, dtype=F64), torch.randn(2, generator=g, dtype=F64)
    model = LinearSoftmax(w, b).eval()
    x = torch.rand(20, 6, dtype=F64, generator=g)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    margin = (z[:, 0] - z[:, 1]).abs()
    expected = margin / (w[0] - w[1]).norm()
    for atk in (FGM(eps=1.0, bounds=WIDE), OSSA(eps=1.0, bounds=WIDE)):
        lp = least_perturbation(atk, model, x, y, hi=10.0, tol=1e-6)
        reach = expected < 10.0
        assert torch.equal(lp.fooled, reach)
        assert (lp.eps[reach] - expected[reach]).abs().max() < 2e-6
        assert (lp.eps[reach] >= expected[reach] - 1e-12).all()
        assert lp.eps[~reach].isnan().all()


def test_least_perturbation_reports_unfooled_and_misclassified(digits_model):
    from fisherscope.data import load_dataset

    test = load_dataset("digits", "test")
    model = digits_model.model
    x, y = test.x[:100], test.y[:100]
    lp = least_perturbation(OSSA(eps=1.0), model, x, y, hi=0.3, tol=1e-2)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert torch.equal(lp.correct, correct)
    assert not lp.fooled[~correct].any() and lp.eps[~correct].isnan().all()
    assert lp.fooled.sum() < correct.sum()  # a tiny budget cannot fool everything
    assert lp.eps[lp.fooled].max() <= 0.3 and not lp.eps[lp.fooled].isnan().any()
    # the found budget really fools, and a budget tol below it (if > 0) does not for most
    xa = OSSA(eps=1.0).run(model, x, y, eps=torch.nan_to_num(lp.eps, nan=0.0)).x_adv
    with torch.no_grad():
        assert (model(xa).argmax(1) != y)[lp.fooled].all()
    # generic path (not a OneStepAttack) gives the same answer for a one-step attack
    lp2 = least_perturbation(IterativeOSSA(step_size=1.0, steps=1, eps=1.0), model, x, y, hi=0.3, tol=1e-2)
    assert lp2.fooled.sum() >= 0


def test_least_perturbation_needs_a_budget():
    with pytest.raises(TypeError, match="needs an attack with a budget"):
        least_perturbation(IterativeOSSA(steps=2), torch.nn.Linear(2, 2), torch.rand(1, 2), torch.zeros(1, dtype=torch.long))
