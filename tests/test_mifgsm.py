"""MI-FGSM (Dong et al. 2018): contract and a naive per-sample reference implementation."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import assert_leaves_state_untouched, tiny_cnn  # noqa: E402
from fisherscope.attacks import ATTACKS, MIFGSM  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    model = tiny_cnn(c=1, side=8, k=5, dtype=torch.float64, seed=1)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def naive_mifgsm(model, x, y, eps, steps, decay, targeted=False):
    """Algorithm 1 of Dong et al., one sample at a time, written out."""
    out = []
    alpha = eps / steps
    for i in range(x.shape[0]):
        x0, xa, g = x[i : i + 1], x[i : i + 1].clone(), torch.zeros_like(x[i : i + 1])
        for _ in range(steps):
            xr = xa.clone().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(xr), y[i : i + 1])
            if targeted:
                loss = -loss
            (grad,) = torch.autograd.grad(loss, xr)
            g = decay * g + grad / grad.abs().sum()
            xa = xa + alpha * g.sign()
            xa = torch.min(torch.max(xa, x0 - eps), x0 + eps).clamp(0, 1)
        out.append(xa)
    return torch.cat(out)


def test_registered():
    assert ATTACKS["mifgsm"] is MIFGSM
    atk = MIFGSM(eps=0.1)
    assert (atk.steps, atk.decay, atk.step_size, atk.norm) == (10, 1.0, None, "linf")


@pytest.mark.parametrize(("decay", "targeted"), [(1.0, False), (0.5, True), (0.0, False)])
def test_matches_naive_reference(setup, decay, targeted):
    model, x, y = setup
    x, y = x[:4], y[:4]
    target = (y + 1) % 5 if targeted else y
    ours = MIFGSM(eps=0.1, steps=4, decay=decay)(model, x, target, targeted=targeted)
    torch.testing.assert_close(ours, naive_mifgsm(model, x, target, 0.1, 4, decay, targeted), rtol=0, atol=1e-12)


def test_one_step_is_fgsm(setup):
    model, x, y = setup
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xr), y, reduction="sum"), xr)
    fgsm = (x + 0.07 * g.sign()).clamp(0, 1)
    torch.testing.assert_close(MIFGSM(eps=0.07, steps=1)(model, x, y), fgsm, rtol=0, atol=1e-12)


def test_budget_bounds_and_step_size(setup):
    model, x, y = setup
    for atk in (MIFGSM(eps=0.05, steps=4), MIFGSM(eps=0.05, steps=4, step_size=0.03)):
        res = atk.run(model, x, y)
        d = (res.x_adv - x).abs().flatten(1).amax(1)
        assert bool((d <= 0.05 + 1e-12).all()) and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    # the default step is ε/T: T = 1 reaches the budget on every coordinate not stopped by the box
    res = MIFGSM(eps=0.08, steps=1).run(model, x, y)
    inside = (res.x_adv > 0) & (res.x_adv < 1)
    torch.testing.assert_close((res.x_adv - x)[inside].abs(), torch.full_like(x[inside], 0.08), rtol=0, atol=1e-12)


def test_eps_zero_returns_x_exactly(setup):
    model, x, y = setup
    assert torch.equal(MIFGSM(eps=0.0, steps=3)(model, x, y), x)
    per_sample = torch.tensor([0.0, 0.1, 0.0, 0.1, 0.0, 0.1], dtype=torch.float64)
    out = MIFGSM(eps=0.1, steps=3).run(model, x, y, eps=per_sample).x_adv
    assert torch.equal(out[per_sample == 0], x[per_sample == 0])


def test_deterministic_and_batch_equals_per_sample(setup):
    model, x, y = setup
    atk = MIFGSM(eps=0.1, steps=3)
    a, b = atk(model, x, y), atk(model, x, y)
    assert torch.equal(a, b)
    for i in range(3):
        torch.testing.assert_close(atk(model, x[i : i + 1], y[i : i + 1])[0], a[i], rtol=0, atol=1e-12)


def test_inputs_modes_and_param_grads_untouched(setup):
    model, x, y = setup
    assert_leaves_state_untouched(MIFGSM(eps=0.1, steps=2), model, x, y)


def test_attack_lowers_accuracy(setup):
    model, x, y = setup
    res = MIFGSM(eps=0.3, steps=10).run(model, x, y)
    assert res.success.float().mean() > 0.5


def test_bad_hyperparameters_rejected():
    with pytest.raises(ValueError, match="MIFGSM: decay must be"):
        MIFGSM(eps=0.1, decay=-1.0)
    with pytest.raises(ValueError, match=": steps must be"):
        MIFGSM(eps=0.1, steps=0)
    with pytest.raises(ValueError, match=": eps must be"):
        MIFGSM(eps=float("nan"))
    with pytest.raises(ValueError, match=": step_size must be"):
        MIFGSM(eps=0.1, step_size=-0.1)
    assert dataclasses.replace(MIFGSM(eps=0.1), decay=0.0).decay == 0.0
