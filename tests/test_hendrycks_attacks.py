"""Hendrycks & Gimpel's targeted attacks: float64 oracles written out sample by sample."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import tiny_cnn, tiny_mlp  # noqa: E402
from fisherscope.attacks import ATTACKS, HGFast, HGTargeted  # noqa: E402
from fisherscope.attacks.gradient import choose_targets  # noqa: E402

K = 5


@pytest.fixture(scope="module")
def setup():
    model = tiny_cnn(c=1, side=8, k=K, dtype=torch.float64, seed=5)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def objective_grad(model, xa, x0, t, lam):
    """∇x [CE(f(x), t) + λ‖x − x0‖²] for one sample, by autograd on the written-out objective."""
    xr = xa.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xr), t) + lam * ((xr - x0) ** 2).sum()
    (g,) = torch.autograd.grad(loss, xr)
    return g


def p_target(model, xa, t):
    with torch.no_grad():
        return torch.softmax(model(xa), 1)[0, t].item(), model(xa).argmax(1).item()


def reference(model, x, t, *, alpha, lam, thr, max_steps):
    """The paper's loop, one sample at a time: check p_t, stop if > thr, else one clipped step."""
    outs, steps = [], []
    for i in range(x.shape[0]):
        x0, xa, ti = x[i : i + 1], x[i : i + 1].clone(), t[i : i + 1]
        s = 0
        while s < max_steps:
            p, pred = p_target(model, xa, ti.item())
            if p > thr and pred == ti.item():
                break
            xa = (xa - alpha * objective_grad(model, xa, x0, ti, lam)).clamp(0, 1)
            s += 1
        outs.append(xa)
        steps.append(s)
    return torch.cat(outs), torch.tensor(steps)


def test_registered_and_defaults():
    assert ATTACKS["hg_targeted"] is HGTargeted and ATTACKS["hg_fast"] is HGFast
    a = HGTargeted()
    assert (a.step_size, a.l2_reg, a.threshold, a.max_steps, a.target) == (1 / 255, 1e-3, 0.5, 1000, "random")
    assert not a.budgeted and a.norm == "l2"
    f = HGFast()
    assert (f.eps, f.threshold, f.norm, f.budgeted) == (10 / 255, 0.5, "linf", True)


def test_two_steps_equal_hand_computed_objective_descent(setup):
    """Two raw-gradient steps with a large λ (the second step feels the L2 pull), clipped."""
    model, x, y = setup
    t = (y + 2) % K
    alpha, lam = 0.2, 0.7
    res = HGTargeted(step_size=alpha, l2_reg=lam, threshold=0.999999, max_steps=2).run(model, x, t, targeted=True)
    x1 = (x - alpha * torch.cat([objective_grad(model, x[i:i + 1], x[i:i + 1], t[i:i + 1], lam)
                                 for i in range(len(x))])).clamp(0, 1)
    x2 = (x1 - alpha * torch.cat([objective_grad(model, x1[i:i + 1], x[i:i + 1], t[i:i + 1], lam)
                                  for i in range(len(x))])).clamp(0, 1)
    assert bool((res.extras["steps"] == 2).all())
    torch.testing.assert_close(res.x_adv, x2, rtol=0, atol=1e-12)
    # the clip is exercised and the L2 pull matters at this λ
    assert bool(((x2 == 0) | (x2 == 1)).sum() > (((x == 0) | (x == 1)).sum()))
    no_reg = HGTargeted(step_size=alpha, l2_reg=0.0, threshold=0.999999, max_steps=2)(model, x, t, targeted=True)
    assert (no_reg - x2).abs().max() > 1e-3


def test_stops_exactly_at_first_step_above_threshold(setup):
    model, x, y = setup
    # targets: wrong classes, and the prediction itself for two samples it gives p > 0.5 (stop at
    # step 0) and for one it gives p < 0.5 (must step until p > 0.5). A targeted call refuses a
    # target equal to the prediction (a success without any perturbation), so these run as an
    # untargeted call on samples the model misclassifies: "true" labels other than the
    # prediction, and target="most_likely" picks the prediction as the target.
    with torch.no_grad():
        p_clean = torch.softmax(model(x), 1).amax(1)
    confident, unsure = torch.nonzero(p_clean > 0.5).flatten()[:2], torch.nonzero(p_clean < 0.5).flatten()[:1]
    assert len(confident) == 2 and len(unsure) == 1
    t = (y + 1) % K
    t[confident], t[unsure] = y[confident], y[unsure]
    y_true = y.clone()
    for i in (*confident.tolist(), *unsure.tolist()):
        y_true[i] = (y[i] + 1) % K
    kw = dict(alpha=0.005, lam=1e-3, thr=0.5, max_steps=8)
    atk = HGTargeted(step_size=0.005, l2_reg=1e-3, threshold=0.5, max_steps=8, target="most_likely")
    with pytest.raises(ValueError, match="clean prediction"):
        atk.run(model, x, t, targeted=True)
    res = atk.run(model, x, y_true)
    t = res.extras["target"]
    assert torch.equal(t[confident], y[confident]) and torch.equal(t[unsure], y[unsure])
    ref_x, ref_steps = reference(model, x, t, **kw)
    assert torch.equal(res.extras["steps"], ref_steps)
    torch.testing.assert_close(res.x_adv, ref_x, rtol=0, atol=1e-12)
    steps = res.extras["steps"]
    # stopped before any step, at several different steps, and at max_steps
    assert bool((steps[confident] == 0).all()) and bool((steps[unsure] > 0).all())
    assert len(set(steps.tolist())) >= 4 and bool((steps == 8).any()), steps
    # success is the keep rule, recomputed independently at x_adv
    with torch.no_grad():
        probs = torch.softmax(model(res.x_adv), 1)
    pt = probs.gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(res.extras["p_target"], pt, rtol=0, atol=1e-12)
    assert torch.equal(res.success, (pt > 0.5) & (probs.argmax(1) == t))
    assert bool(res.success[steps < 8].all())
    # the targeted path steps exactly as the reference too (wrong-class targets only)
    wrong = (y + 2) % K
    tres = HGTargeted(step_size=0.005, l2_reg=1e-3, threshold=0.5, max_steps=8).run(model, x, wrong, targeted=True)
    ref_x, ref_steps = reference(model, x, wrong, **kw)
    assert torch.equal(tres.extras["steps"], ref_steps)
    torch.testing.assert_close(tres.x_adv, ref_x, rtol=0, atol=1e-12)


def test_max_steps_reached_is_reported_and_not_success(setup):
    model, x, y = setup
    t = (y + 1) % K
    res = HGTargeted(step_size=1e-4, max_steps=3).run(model, x, t, targeted=True)
    ref_x, ref_steps = reference(model, x, t, alpha=1e-4, lam=1e-3, thr=0.5, max_steps=3)
    torch.testing.assert_close(res.x_adv, ref_x, rtol=0, atol=1e-12)
    assert torch.equal(res.extras["steps"], ref_steps) and bool((ref_steps == 3).all())
    assert not bool(res.success.any())


def test_random_targets_never_the_true_label_and_uniform():
    model = tiny_mlp(d=12, k=K, seed=3)
    x = torch.rand(3000, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randint(0, K, (3000,), generator=torch.Generator().manual_seed(1))
    atk = HGTargeted(max_steps=1)
    t1 = atk.run(model, x, y, generator=torch.Generator().manual_seed(5)).extras["target"]
    t2 = atk.run(model, x, y, generator=torch.Generator().manual_seed(5)).extras["target"]
    t3 = atk.run(model, x, y, generator=torch.Generator().manual_seed(6)).extras["target"]
    assert torch.equal(t1, t2) and not torch.equal(t1, t3)
    assert not bool((t1 == y).any())
    # uniform over the K - 1 wrong classes: each offset (t - y) mod K in 1..K-1 about 1/4 of the time
    counts = torch.bincount((t1 - y) % K, minlength=K).double()
    assert counts[0] == 0
    assert bool(((counts[1:] / 3000 - 0.25).abs() < 0.04).all()), counts
    # the fast variant draws the same way and never targets y either
    tf = HGFast().run(model, x, y, generator=torch.Generator().manual_seed(5)).extras["target"]
    assert torch.equal(tf, t1)
    # without y the predictions are avoided
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert not bool((atk.run(model, x, generator=torch.Generator().manual_seed(0)).extras["target"] == pred).any())


def test_deterministic_targets(setup):
    model, x, y = setup
    with torch.no_grad():
        logits = model(x)
    y_true = (y + 3) % K  # labels that differ from the predictions, to see that y (not the prediction) is avoided
    order = logits.argsort(1)
    for sel in ("least_likely", "most_likely"):
        t = choose_targets(logits, y_true, sel)
        for i in range(len(x)):
            ranked = [c for c in order[i].tolist() if c != y_true[i].item()]
            assert t[i].item() == (ranked[0] if sel == "least_likely" else ranked[-1])


@pytest.mark.parametrize("cls,kw", [(HGTargeted, dict(step_size=0.05, max_steps=80)), (HGFast, dict(eps=0.2))])
def test_batch_equals_per_sample(setup, cls, kw):
    model, x, y = setup
    atk = cls(**kw)
    t = (y + 1) % K
    batch = atk.run(model, x, t, targeted=True)
    for i in range(len(x)):
        one = atk.run(model, x[i:i + 1], t[i:i + 1], targeted=True)
        torch.testing.assert_close(one.x_adv[0], batch.x_adv[i], rtol=0, atol=1e-12)
        assert one.success[0] == batch.success[i]
        for key, v in one.extras.items():
            assert v[0] == batch.extras[key][i] or torch.isclose(v[0], batch.extras[key][i], rtol=0, atol=1e-12)
    det = cls(**kw, target="least_likely")
    b = det.run(model, x, y)
    for i in range(len(x)):
        torch.testing.assert_close(det(model, x[i:i + 1], y[i:i + 1])[0], b.x_adv[i], rtol=0, atol=1e-12)


def test_fast_is_one_targeted_sign_step(setup):
    model, x, y = setup
    t = (y + 1) % K
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(xr), t, reduction="sum"), xr)
    expect = (x - 0.15 * g.sign()).clamp(0, 1)
    res = HGFast(eps=0.15).run(model, x, t, targeted=True)
    torch.testing.assert_close(res.x_adv, expect, rtol=0, atol=1e-12)
    assert torch.equal(res.extras["target"], t)
    with torch.no_grad():
        probs = torch.softmax(model(expect), 1)
    pt = probs.gather(1, t[:, None]).squeeze(1)
    assert torch.equal(res.success, (pt > 0.5) & (probs.argmax(1) == t))


def test_fast_keep_rule_differs_from_misclassification(setup):
    """A step that misclassifies without reaching p_target > threshold is not a success."""
    model, x, y = setup
    res = HGFast(eps=0.3, threshold=0.9).run(model, x, y, generator=torch.Generator().manual_seed(0))
    mis = res.logits_adv.argmax(1) != y
    assert bool((res.success <= mis).all())  # success implies misclassification (target != y)
    assert bool((mis & ~res.success).any())


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(threshold=1.0), "HGTargeted: threshold must be a probability"),
        (dict(threshold=0.0), "threshold must be"),
        (dict(max_steps=0), "HGTargeted: max_steps must be an integer >= 1; got 0"),
        (dict(max_steps=2.5), "max_steps must be an integer >= 1; got 2.5"),
        (dict(step_size=0.0), "HGTargeted: step_size must be a finite number > 0; got 0.0. The paper uses 1/255"),
        (dict(l2_reg=-1.0), "HGTargeted: l2_reg must be a finite number >= 0"),
        (dict(target="next"), "HGTargeted: target must be one of"),
    ],
)
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        HGTargeted(**kw)


def test_fast_bad_hyperparameters():
    with pytest.raises(ValueError, match="HGFast: threshold must be"):
        HGFast(threshold=1.5)
    with pytest.raises(ValueError, match="HGFast: eps must be"):
        HGFast(eps=-0.1)


@pytest.mark.peer
def test_fast_matches_torchattacks_targeted_fgsm():
    torchattacks = pytest.importorskip("torchattacks")
    model = tiny_cnn(c=1, side=8, k=K, dtype=torch.float32, seed=4)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        t = (model(x).argmax(1) + 1) % K
    peer = torchattacks.FGSM(model, eps=0.1)
    peer.set_mode_targeted_by_label(quiet=True)
    theirs = peer(x, t)
    ours = HGFast(eps=0.1)(model, x, t, targeted=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(model(ours).argmax(1), model(theirs).argmax(1))
