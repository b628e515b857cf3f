"""APGD, APGD-T and the Square attack: the attack contract, the Square schedule and windows, success on digits.

APGD and APGD-T are not in the ``ATTACKS`` registry yet, so the registry-driven contract
suite (tests/contract/test_attacks.py) does not cover them or Square: the same
properties are checked here.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import assert_leaves_state_untouched, tiny_cnn, tiny_cnn_batch  # noqa: E402
from fisherscope import ModelModeWarning  # noqa: E402
from fisherscope.attacks import APGD, APGDTargeted, Square, dlr_loss  # noqa: E402
from fisherscope.attacks.square import pseudo_gaussian_window, square_p_schedule  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NORM_ORD = {"l2": 2, "linf": math.inf}

CASES = {
    "apgd_linf_ce": lambda: APGD(eps=0.2, steps=6, norm="linf", loss="ce", restarts=2),
    "apgd_l2_dlr": lambda: APGD(eps=1.0, steps=6, norm="l2", loss="dlr"),
    "apgd_t": lambda: APGDTargeted(eps=0.2, steps=5, n_target_classes=3),
    "square_linf": lambda: Square(eps=0.2, n_queries=40, norm="linf", restarts=2),
    "square_l2": lambda: Square(eps=1.0, n_queries=40, norm="l2"),
    "square_ce": lambda: Square(eps=0.2, n_queries=30, loss="ce"),
}


@pytest.fixture(scope="module")
def setup():
    return tiny_cnn_batch()


def test_exported_from_attacks():
    import fisherscope.attacks as attacks

    for name in ("APGD", "APGDTargeted", "Square", "dlr_loss"):
        assert name in attacks.__all__ and hasattr(attacks, name)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bounds_budget_shape(setup, case):
    model, x, y = setup
    atk = CASES[case]()
    res = atk.run(model, x, y, generator=torch.Generator().manual_seed(0))
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    d = (res.x_adv - x).flatten(1).norm(p=NORM_ORD[atk.norm], dim=1)
    assert (d <= atk.eps + 1e-5).all(), d.max()
    assert (d > 0).all()  # every sample was actually perturbed
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred != y)


@pytest.mark.parametrize("case", sorted(CASES))
def test_inputs_untouched_mode_restored_param_grads_untouched(setup, case):
    model, x, y = setup
    assert_leaves_state_untouched(
        lambda m, xx, yy: CASES[case]()(m, xx, yy, generator=torch.Generator().manual_seed(0)), model, x, y)


@pytest.mark.parametrize("case", sorted(CASES))
def test_deterministic_with_generator_and_global_rng_untouched(setup, case):
    model, x, y = setup
    atk = CASES[case]()
    state = torch.get_rng_state()
    a = atk(model, x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must not be used when a generator is given"
    b = atk(model, x, y, generator=torch.Generator().manual_seed(3))
    c = atk(model, x, y, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the randomness does come from the generator


@pytest.mark.parametrize("case", sorted(CASES))
def test_eps_zero_returns_x(setup, case):
    model, x, y = setup
    atk = dataclasses.replace(CASES[case](), eps=0.0)
    assert torch.equal(atk(model, x, y, generator=torch.Generator().manual_seed(0)), x)


def test_square_targeted(setup):
    model, x, y = setup
    with torch.no_grad():
        target = model(x).argsort(1)[:, -2]  # the runner-up class: reachable for this random net
    res = Square(eps=0.5, n_queries=200).run(model, x, target, targeted=True, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == target)
    assert res.success.any()
    # the margin towards the target went down (or the target was reached)
    assert (res.extras["loss"][res.success] < 0).all()


def test_bad_hyperparameters_and_inputs_rejected(setup):
    model, x, y = setup
    for kwargs, match in [
        (dict(eps=0.1, n_queries=0), "Square: n_queries must be an integer >= 1"),
        (dict(eps=0.1, restarts=0), "Square: restarts must be an integer >= 1"),
        (dict(eps=0.1, p_init=0.0), r"Square: p_init must be a number in \(0, 1\]|Square: p_init must be"),
        (dict(eps=0.1, p_init=1.5), r"Square: p_init must be a number in \(0, 1\]|Square: p_init must be"),
        (dict(eps=0.1, norm="l1"), "Square: norm must be one of 'linf', 'l2'"),
        (dict(eps=0.1, loss="dlr"), "Square: loss must be one of 'margin', 'ce'"),
        (dict(eps=-1.0), "Square: eps must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            Square(**kwargs)
    flat = tiny_mlp_model()
    with pytest.raises(ValueError, match=r"Square needs images of shape \(N, C, H, W\)"):
        Square(eps=0.1, n_queries=5)(flat, torch.rand(3, 12), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="outside bounds"):
        Square(eps=0.1, n_queries=5)(model, x + 2, y)


def tiny_mlp_model() -> nn.Module:
    from _models import tiny_mlp

    return tiny_mlp(d=12, k=3, dtype=torch.float32)


# ------------------------------------------------------------------ the schedule and the windows
def test_p_schedule_halves_at_the_papers_iterations():
    halvings = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
    for k, it in enumerate(halvings):
        assert square_p_schedule(it, 10000, 0.8) == pytest.approx(0.8 / 2**k)
        assert square_p_schedule(it + 1, 10000, 0.8) == pytest.approx(0.8 / 2 ** (k + 1))
    assert square_p_schedule(0, 10000, 0.05) == 0.05
    assert square_p_schedule(9999, 10000, 0.8) == pytest.approx(0.8 / 512)
    # rescaled to the budget: iteration 5 of 5000 is iteration 10 of 10 000, iteration 6 is 12
    assert square_p_schedule(5, 5000, 0.8) == 0.8
    assert square_p_schedule(6, 5000, 0.8) == 0.4
    assert square_p_schedule(100, 1000, 0.8) == pytest.approx(0.8 / 16)  # 1000 of 10 000: still /16


def _naive_rectangle(h: int, w: int) -> torch.Tensor:
    """The paper's nested squares, summed one square at a time: the k-th square (k = 0, 1, ...)
    around the centre (h // 2, w // 2) has half-width k and adds 1 / (k + 1)², up to
    k = max(h // 2, w // 2)."""
    out = torch.zeros(h, w, dtype=torch.float64)
    for k in range(max(h // 2, w // 2) + 1):
        for i in range(h):
            for j in range(w):
                if abs(i - h // 2) <= k and abs(j - w // 2) <= k:
                    out[i, j] += 1.0 / (k + 1) ** 2
    return out / out.norm()


@pytest.mark.parametrize("s", [1, 2, 3, 5, 7, 8])
def test_pseudo_gaussian_window_matches_the_naive_construction(s):
    eta = pseudo_gaussian_window(s, torch.float64)
    top, bottom = s // 2, s - s // 2
    parts = ([_naive_rectangle(top, s)] if top else []) + [-_naive_rectangle(bottom, s)]
    ref = torch.cat(parts, 0)
    ref = ref / ref.norm()
    torch.testing.assert_close(eta, ref)
    assert eta.norm() == pytest.approx(1.0)
    assert (eta[:top] > 0).all() and (eta[top:] < 0).all()
    if s % 2:  # the L2 updates use odd sides: centred, symmetric left-right
        torch.testing.assert_close(eta, eta.flip(1))


class _Constant(nn.Module):
    """Logits that ignore the input: never fooled where y is the constant class."""

    def __init__(self, k: int = 4):
        super().__init__()
        self.bias = nn.Parameter(torch.arange(k, dtype=torch.float32))

    def forward(self, x):
        return self.bias.expand(x.shape[0], -1) + 0 * x.flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_stops_querying_fooled_samples(norm):
    model = _Constant(4).eval()
    x = torch.full((6, 1, 8, 8), 0.5)
    y = torch.tensor([3, 0, 3, 1, 3, 2])  # class 3 is always predicted: samples 1, 3, 5 start fooled
    res = Square(eps=0.1, n_queries=25, norm=norm, restarts=2).run(model, x, y, generator=torch.Generator().manual_seed(0))
    q = res.extras["queries"]
    assert torch.equal(res.success, y != 3)
    assert (q[y != 3] == 1).all()  # the start's query only
    assert (q[y == 3] == 2 * 26).all()  # two restarts of start + 25 queries each


def test_square_linf_start_is_vertical_stripes_and_updates_keep_pm_eps():
    x = torch.full((5, 3, 8, 8), 0.5)
    atk = Square(eps=0.1, n_queries=30)
    start = atk._start_linf(x, torch.full((5,), 0.1), torch.Generator().manual_seed(0))
    delta = start - x
    torch.testing.assert_close(delta.abs(), torch.full_like(delta, 0.1))
    assert torch.equal(delta, delta[:, :, :1, :].expand_as(delta))  # constant down each column
    model = tiny_cnn(c=3, side=8, k=5, dtype=torch.float32, batchnorm=False)
    out = atk(model, x, torch.zeros(5, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close((out - x).abs(), torch.full_like(x, 0.1))  # every pixel at ±eps (no clipping here)


def test_square_l2_keeps_the_norm_at_eps():
    # inside the box with room to spare, so no clipping: ‖δ‖₂ = ε at the start and after every accepted update
    model = tiny_cnn(c=1, side=8, k=5, dtype=torch.float32, batchnorm=False)
    x = torch.full((6, 1, 8, 8), 0.5)
    with torch.no_grad():
        y = model(x).argmax(1)
    atk = Square(eps=0.5, n_queries=60, norm="l2")
    start = atk._start_l2(x, torch.full((6,), 0.5), torch.Generator().manual_seed(0))
    torch.testing.assert_close((start - x).flatten(1).norm(dim=1), torch.full((6,), 0.5))
    res = atk.run(model, x, y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.norms["l2"], torch.full((6,), 0.5), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ a trained model
@pytest.fixture(scope="module")
def digits(digits_model):
    from fisherscope.data import load_dataset

    test = load_dataset("digits", "test")
    return digits_model.model.eval(), test.x[:48].clone(), test.y[:48].clone()


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.15), ("l2", 1.0)])
def test_square_fools_the_trained_digits_net(digits, norm, eps):
    model, x, y = digits
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelModeWarning)
        res = Square(eps=eps, norm=norm, n_queries=150).run(model, x, y, generator=torch.Generator().manual_seed(0))
    fooled = res.success & correct
    assert fooled.float().sum() >= 0.3 * correct.float().sum(), (int(fooled.sum()), int(correct.sum()))
    # the gradient-free attack is in the same league as APGD at this budget
    apgd = APGD(eps=eps, norm=norm, steps=20).run(model, x, y, generator=torch.Generator().manual_seed(0))
    assert fooled.sum() >= 0.5 * (apgd.success & correct).sum()
    d = (res.x_adv - x).flatten(1).norm(p=NORM_ORD[norm], dim=1)
    assert (d <= eps + 1e-5).all()


def test_dlr_loss_is_shift_and_scale_invariant():
    z = torch.randn(7, 10, generator=torch.Generator().manual_seed(0))
    y = torch.arange(7)
    t = (y + 2) % 10
    for loss in (dlr_loss(z, y), dlr_loss(z, y, t)):
        assert loss.shape == (7,)
    torch.testing.assert_close(dlr_loss(3 * z + 5, y), dlr_loss(z, y))
    torch.testing.assert_close(dlr_loss(3 * z + 5, y, t), dlr_loss(z, y, t))
