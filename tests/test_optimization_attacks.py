"""C&W-L2, Opt, DeepFool and JSMA against closed forms and brute-force oracles (float64).

Linear models give exact answers: the minimal L2 perturbation that moves an affine
classifier's decision across the boundary between classes a and b is
r = −f(x)/‖w‖² · w with f = z_b − z_a, w = W_b − W_a (as long as the box does not clip).
"""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import LinearSoftmax, tiny_cnn, tiny_mlp  # noqa: E402
from fisherscope.attacks import JSMA, CarliniWagnerL2, DeepFool, DeepFoolLinf, Opt  # noqa: E402

F64 = torch.float64


def linear_model(d: int, k: int, seed: int, scale: float = 1.0) -> LinearSoftmax:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, d, generator=g, dtype=F64) * scale
    b = torch.randn(k, generator=g, dtype=F64) * 0.1
    return LinearSoftmax(w, b).eval()


def closest_boundary(model: LinearSoftmax, x: torch.Tensor, y: torch.Tensor, classes=None):
    """Per sample (loop, float64): DeepFool's linear step over the candidate classes."""
    w, b = model.weight.detach(), model.bias.detach()
    out = []
    for i in range(x.shape[0]):
        z = w @ x[i] + b
        best = None
        for c in classes[i] if classes is not None else range(w.shape[0]):
            if c == y[i]:
                continue
            wk, fk = w[c] - w[y[i]], z[c] - z[y[i]]
            dist = abs(fk) / wk.norm()
            if best is None or dist < best[0]:
                best = (dist, -fk / wk.norm() ** 2 * wk)
        out.append(best[1])
    return torch.stack(out)


# ----------------------------------------------------------------------------- DeepFool


def test_deepfool_binary_linear_is_exact_in_one_step():
    model = linear_model(10, 2, seed=0)
    x = torch.rand(8, 10, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.4 + 0.3
    with torch.no_grad():
        y = model(x).argmax(1)
    w = model.weight.detach()[1] - model.weight.detach()[0]
    f = (x @ w + model.bias.detach()[1] - model.bias.detach()[0]) * torch.where(y == 0, 1.0, -1.0).to(F64)
    wy = w[None] * torch.where(y == 0, 1.0, -1.0).to(F64)[:, None]
    r = -f[:, None] / w.norm() ** 2 * wy  # closed form, towards the other class
    big = (-50.0, 50.0)  # no clipping
    res = DeepFool(steps=1, overshoot=0.0, step_margin=0.0, bounds=big).run(model, x, y)
    torch.testing.assert_close(res.x_adv - x, r, rtol=1e-12, atol=1e-12)
    # on the boundary: the two logits agree
    torch.testing.assert_close(res.logits_adv[:, 0], res.logits_adv[:, 1], rtol=0, atol=1e-12)
    # the defaults: one step, 1.02 · (r + 1e-4 along r) and adversarial
    res = DeepFool(bounds=big).run(model, x, y)
    assert res.success.all() and (res.extras["iterations"] == 1).all()
    expected = 1.02 * (r + 1e-4 * r / r.norm(dim=1, keepdim=True))
    torch.testing.assert_close(res.x_adv - x, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("candidates", [None, 3])
def test_deepfool_multiclass_linear_first_step_matches_loop(candidates):
    model = linear_model(12, 6, seed=2)
    x = torch.rand(10, 12, generator=torch.Generator().manual_seed(3), dtype=F64)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    classes = logits.argsort(1, descending=True)[:, :candidates].tolist() if candidates else None
    r = closest_boundary(model, x, y, classes)
    res = DeepFool(steps=1, overshoot=0.0, step_margin=0.0, candidates=candidates, bounds=(-50.0, 50.0)).run(model, x, y)
    torch.testing.assert_close(res.x_adv - x, r, rtol=1e-10, atol=1e-12)


def test_deepfool_linf_linear_step():
    model = linear_model(10, 2, seed=4)
    x = torch.rand(6, 10, generator=torch.Generator().manual_seed(5), dtype=F64)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    s = torch.where(y == 0, 1.0, -1.0).to(F64)
    w = (model.weight.detach()[1] - model.weight.detach()[0])[None] * s[:, None]  # ∇(z_other − z_y)
    f = (z[:, 1] - z[:, 0]) * s
    expected = (f.abs() / w.abs().sum(1))[:, None] * w.sign()  # min L∞ step onto the hyperplane
    res = DeepFoolLinf(steps=1, overshoot=0.0, step_margin=0.0, bounds=(-50.0, 50.0)).run(model, x, y)
    torch.testing.assert_close(res.x_adv - x, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(res.logits_adv[:, 0], res.logits_adv[:, 1], rtol=0, atol=1e-12)


def naive_deepfool(model, x, y, steps, overshoot, margin, candidates, bounds):
    """Algorithm 2 of Moosavi-Dezfooli et al., one sample and one class at a time, written out."""
    out, iters = [], []
    for i in range(x.shape[0]):
        x0 = x[i : i + 1]
        with torch.no_grad():
            z0 = model(x0)[0]
        order = [c for c in z0.argsort(descending=True).tolist() if c != y[i]][: candidates - 1]
        xi, r_tot, n = x0.clone(), torch.zeros_like(x0), 0
        for _ in range(steps):
            xr = xi.clone().requires_grad_(True)
            z = model(xr)[0]
            if z.argmax() != y[i]:
                break
            best = None
            for c in order:
                fk = z[c] - z[y[i]]
                (wk,) = torch.autograd.grad(fk, xr, retain_graph=True)
                dist = fk.abs() / wk.norm()
                if best is None or dist < best[0]:
                    best = (dist, wk)
            dist, wk = best
            r_tot = r_tot + (dist.detach() + margin) * wk / wk.norm()
            xi = (x0 + (1 + overshoot) * r_tot).clamp(*bounds)
            n += 1
        out.append(xi[0])
        iters.append(n)
    return torch.stack(out), torch.tensor(iters)


@pytest.mark.parametrize(("overshoot", "margin", "candidates"), [(0.02, 1e-4, 3), (0.1, 1e-3, 5)])
def test_deepfool_matches_a_naive_per_sample_loop(overshoot, margin, candidates):
    model = tiny_cnn(c=1, side=8, k=5, seed=1)
    x = saturated_batch(6, seed=7)  # clipping matters here
    with torch.no_grad():
        y = model(x).argmax(1)
    ref, iters = naive_deepfool(model, x, y, 30, overshoot, margin, candidates, (0.0, 1.0))
    res = DeepFool(steps=30, overshoot=overshoot, step_margin=margin, candidates=candidates).run(model, x, y)
    torch.testing.assert_close(res.x_adv, ref, rtol=1e-9, atol=1e-10)
    assert torch.equal(res.extras["iterations"], iters)
    assert (iters > 1).any()


def test_deepfool_stops_per_sample_and_leaves_misclassified_alone():
    model = tiny_mlp(d=12, k=5, seed=0)
    x = torch.rand(8, 12, generator=torch.Generator().manual_seed(0), dtype=F64)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = pred.clone()
    y[0] = (pred[0] + 1) % 5  # already misclassified
    res = DeepFool(bounds=(-5.0, 5.0)).run(model, x, y)
    assert res.extras["iterations"][0] == 0 and torch.equal(res.x_adv[0], x[0])
    assert res.success.all()
    # a sample that stops early is unchanged by running longer
    longer = DeepFool(bounds=(-5.0, 5.0), steps=200).run(model, x, y)
    torch.testing.assert_close(longer.x_adv, res.x_adv, rtol=0, atol=0)


# ------------------------------------------------------------------------------- C&W


def test_cw_matches_the_closed_form_minimum_on_a_linear_model():
    model = linear_model(10, 2, seed=0, scale=3.0)
    x = torch.rand(6, 10, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.4 + 0.3
    with torch.no_grad():
        y = model(x).argmax(1)
    r = closest_boundary(model, x, y)
    assert ((x + r) > 0).all() and ((x + r) < 1).all()  # the box does not bind
    optimum = r.norm(dim=1)
    cw = CarliniWagnerL2(steps=200, binary_search_steps=6, initial_const=1.0, learning_rate=0.01).run(model, x, y)
    df = DeepFool().run(model, x, y)
    assert cw.success.all() and df.success.all()
    l2 = cw.norms["l2"]
    assert (l2 >= optimum * (1 - 1e-9)).all()  # nothing beats the minimum
    assert (l2 <= df.norms["l2"] * 1.01).all(), (l2, df.norms["l2"])
    assert (l2 <= optimum * 1.02).all(), l2 / optimum


def saturated_batch(n: int = 6, seed: int = 0) -> torch.Tensor:
    """8x8 images of exact 0s and 1s with a few grey pixels (like MNIST)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 1, 8, 8, generator=g, dtype=F64)
    return torch.where(u < 0.5, 0.0, torch.where(u > 0.8, 1.0, u)).to(F64)


def test_cw_on_saturated_pixels_finite_in_bounds_and_failures_return_x():
    model = tiny_cnn(c=1, side=8, k=5, seed=0)
    x = saturated_batch()
    with torch.no_grad():
        y = model(x).argmax(1)
    res = CarliniWagnerL2(steps=60, binary_search_steps=3, initial_const=1.0, learning_rate=0.05).run(model, x, y)
    assert torch.isfinite(res.x_adv).all() and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.success.any()
    # a hopeless setting: every sample fails and comes back bit-for-bit (not shrunk, not zeros)
    weak = CarliniWagnerL2(steps=3, binary_search_steps=1, initial_const=1e-9, learning_rate=1e-4).run(model, x, y)
    assert not weak.success.any()
    assert torch.equal(weak.x_adv, x)
    assert torch.isnan(weak.extras["const"]).all()
    # inputs may sit up to 1e-6 outside the bounds (check_inputs' tolerance): still finite
    nudged = torch.where(x == 1, x + 9e-7, torch.where(x == 0, x - 9e-7, x))
    atk = CarliniWagnerL2(steps=20, binary_search_steps=1, initial_const=1.0, learning_rate=0.05)
    res, ref = atk.run(model, nudged, y), atk.run(model, x, y)
    assert torch.isfinite(res.x_adv).all() and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert ref.success.any() and torch.equal(res.success, ref.success)
    torch.testing.assert_close(res.x_adv, ref.x_adv, rtol=0, atol=1e-4)


def test_cw_already_misclassified_returns_x_exactly_at_distance_zero():
    """The tanh shrink's reconstruction error is no perturbation: x0 itself is the start."""
    model = tiny_cnn(c=1, side=8, k=5, seed=0)
    x = saturated_batch(4, seed=1)
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 5
    res = CarliniWagnerL2(steps=5, binary_search_steps=2).run(model, x, wrong)
    assert res.success.all() and torch.equal(res.x_adv, x) and (res.norms["l2"] == 0).all()


def test_cw_targeted_with_confidence_reaches_the_margin():
    model = tiny_mlp(d=12, k=5, seed=1)
    x = torch.rand(6, 12, generator=torch.Generator().manual_seed(2), dtype=F64)
    with torch.no_grad():
        target = (model(x).argmax(1) + 2) % 5
    kappa = 0.5
    res = CarliniWagnerL2(steps=100, binary_search_steps=4, initial_const=1.0, learning_rate=0.05,
                          confidence=kappa).run(model, x, target, targeted=True)  # fmt: skip
    assert res.success.all()
    z = res.logits_adv
    others = z.masked_fill(torch.nn.functional.one_hot(target, 5).bool(), -math.inf).amax(1)
    assert (z.gather(1, target[:, None]).squeeze(1) - others >= kappa - 1e-9).all()


def test_cw100_one_binary_search_step_runs():
    model = tiny_cnn(c=1, side=8, k=5, seed=0)
    x = saturated_batch(4, seed=2)
    res = CarliniWagnerL2(steps=100, binary_search_steps=1).run(model, x)
    assert res.x_adv.shape == x.shape and torch.isfinite(res.x_adv).all()


# ------------------------------------------------------------------------------- Opt


def test_opt_objective_decreases_and_starts_at_the_oracle_value():
    model = tiny_mlp(d=12, k=5, seed=0)
    x = torch.rand(6, 12, generator=torch.Generator().manual_seed(0), dtype=F64)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    atk = Opt(distance_weight=0.05, steps=150, learning_rate=0.02, bounds=(-3.0, 3.0))
    res = atk.run(model, x, y)
    hist = res.extras["objective"]
    p_y = torch.softmax(z, 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(hist[:, 0], -torch.log1p(-p_y), rtol=1e-10, atol=1e-12)  # −log(1 − p_y) at x0
    last = torch.stack([h[~h.isnan()][-1] for h in hist])
    assert (last < 0.5 * hist[:, 0]).all(), (hist[:, 0], last)
    assert res.success.all()
    # the returned point's objective is the public formula
    obj = atk.objective(res.logits_adv, res.x_adv, x, y)
    assert torch.isfinite(obj).all()


def test_opt_targeted_and_box():
    model = tiny_cnn(c=1, side=8, k=5, seed=0)
    x = saturated_batch(5, seed=3)
    with torch.no_grad():
        target = model(x).argsort(1, descending=True)[:, 1]  # the runner-up (class 1 is out of reach here)
    res = Opt(distance_weight=0.01, steps=100, learning_rate=0.05).run(model, x, target, targeted=True)
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.success.float().mean() >= 0.8
    hist = res.extras["objective"]
    torch.testing.assert_close(
        hist[:, 0], torch.nn.functional.cross_entropy(model(x).detach(), target, reduction="none"), rtol=1e-10, atol=1e-12
    )


# ------------------------------------------------------------------------------ JSMA


def brute_force_pair(model, x, t, theta, bounds=(0.0, 1.0)):
    """One JSMA selection by looping over every pair (float64 Jacobian of the logits)."""
    jac = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x).reshape(-1, x.numel())
    alpha = jac[t]
    beta = jac.sum(0) - alpha
    flat = x.flatten()
    best, arg = -math.inf, None
    for p, q in itertools.combinations(range(flat.numel()), 2):
        if theta > 0 and not (flat[p] < bounds[1] and flat[q] < bounds[1]):
            continue
        if theta < 0 and not (flat[p] > bounds[0] and flat[q] > bounds[0]):
            continue
        a, b = float(alpha[p] + alpha[q]), float(beta[p] + beta[q])
        ok = (a > 0 and b < 0) if theta > 0 else (a < 0 and b > 0)
        if ok and abs(a) * abs(b) > best:
            best, arg = abs(a) * abs(b), {p, q}
    return arg


@pytest.mark.parametrize("theta", [1.0, -1.0])
def test_jsma_first_pair_matches_brute_force(theta):
    model = tiny_mlp(d=12, k=4, seed=3)
    x = torch.rand(5, 12, generator=torch.Generator().manual_seed(4), dtype=F64)
    x[:, :3] = 0.0
    x[:, 3:5] = 1.0
    with torch.no_grad():
        target = (model(x).argmax(1) + 1) % 4
    res = JSMA(theta=theta, gamma=2 / 12).run(model, x, target, targeted=True)  # one pair
    for i in range(5):
        changed = set(torch.nonzero(res.x_adv[i] != x[i]).flatten().tolist())
        expected = brute_force_pair(model, x[i], int(target[i]), theta)
        if res.extras["iterations"][i] == 0:
            assert expected is None or bool(res.success[i])
        else:
            assert changed == expected
            assert ((res.x_adv[i] - x[i]) * theta >= 0).all()


@pytest.mark.parametrize("theta", [1.0, -0.5])
def test_jsma_budget_direction_and_success(theta):
    model = tiny_cnn(c=1, side=8, k=5, seed=0)
    x = saturated_batch(8, seed=4)
    with torch.no_grad():
        target = model(x).argsort(1, descending=True)[:, 1]
    gamma = 0.3
    res = JSMA(theta=theta, gamma=gamma).run(model, x, target, targeted=True)
    delta = (res.x_adv - x).flatten(1)
    assert ((delta != 0).sum(1) <= math.floor(gamma * 64)).all()
    assert (delta * theta >= 0).all()
    assert torch.equal(res.extras["target"], target)
    if theta > 0:
        assert res.success.float().mean() >= 0.75, res.success
    else:  # decreasing pixels of images half made of zeros is harder: ask for progress

        def gap(z):
            return z.gather(1, target[:, None]).squeeze(1) - z.masked_fill(torch.nn.functional.one_hot(target, 5).bool(), -math.inf).amax(1)

        with torch.no_grad():
            assert (gap(res.logits_adv) > gap(model(x))).all()
        assert res.success.any()


def test_jsma_untargeted_targets():
    model = tiny_cnn(c=1, side=8, k=5, seed=0)
    x = saturated_batch(8, seed=5)
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    second = JSMA(gamma=0.3, target="most_likely").run(model, x, y)
    is_y = torch.nn.functional.one_hot(y, 5).bool()
    assert torch.equal(second.extras["target"], z.masked_fill(is_y, -math.inf).argmax(1))
    least = JSMA(gamma=0.3, target="least_likely").run(model, x, y)
    assert torch.equal(least.extras["target"], z.argmin(1))
    rnd = JSMA(gamma=0.3).run(model, x, y, generator=torch.Generator().manual_seed(0))
    again = JSMA(gamma=0.3).run(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rnd.x_adv, again.x_adv)
    assert (rnd.extras["target"] != y).all()
    assert second.success.float().mean() >= 0.75


# ------------------------------------------------------------------- batch and validation


ATTACKS_SMALL = [
    DeepFool(bounds=(-3.0, 3.0)),
    DeepFoolLinf(bounds=(-3.0, 3.0)),
    CarliniWagnerL2(steps=30, binary_search_steps=3, initial_const=1.0, learning_rate=0.05),
    Opt(steps=40, learning_rate=0.05),
    JSMA(gamma=0.5, target="most_likely"),
]


@pytest.mark.parametrize("attack", ATTACKS_SMALL, ids=lambda a: type(a).__name__)
def test_batch_equals_per_sample(attack):
    model = tiny_mlp(d=12, k=5, seed=2)
    x = torch.rand(5, 12, generator=torch.Generator().manual_seed(6), dtype=F64)
    with torch.no_grad():
        y = model(x).argmax(1)
    batch = attack.run(model, x, y)
    for i in range(5):
        one = attack.run(model, x[i : i + 1], y[i : i + 1])
        torch.testing.assert_close(one.x_adv[0], batch.x_adv[i], rtol=1e-10, atol=1e-12)
        for k, v in batch.extras.items():
            torch.testing.assert_close(one.extras[k][0], v[i], rtol=1e-10, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize(
    ("cls", "kw", "match"),
    [
        (CarliniWagnerL2, dict(binary_search_steps=0), "binary_search_steps"),
        (CarliniWagnerL2, dict(learning_rate=0.0), "learning_rate"),
        (CarliniWagnerL2, dict(confidence=-1.0), "confidence"),
        (CarliniWagnerL2, dict(initial_const=float("nan")), "initial_const"),
        (CarliniWagnerL2, dict(abort_early=1), "abort_early"),
        (Opt, dict(distance_weight=0), "distance_weight"),
        (DeepFool, dict(candidates=1), "candidates"),
        (DeepFool, dict(overshoot=-0.1), "overshoot"),
        (DeepFoolLinf, dict(step_margin=-1), "step_margin"),
        (JSMA, dict(theta=0.0), "theta"),
        (JSMA, dict(gamma=1.5), "gamma"),
        (JSMA, dict(target="second"), "target"),
    ],
)
def test_bad_hyperparameters(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(**kw)


def test_deepfool_is_untargeted_only():
    model = tiny_mlp(d=12, k=5)
    x = torch.rand(2, 12, dtype=F64)
    with pytest.raises(ValueError, match="untargeted only"):
        DeepFool()(model, x, torch.tensor([0, 1]), targeted=True)
