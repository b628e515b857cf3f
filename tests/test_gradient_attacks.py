"""FGSM, OTCM, BIM, PGD (and the exact L1 projection): float64 oracles on tiny models.

References are written out by hand (per sample, step by step) or are independent
algorithms (bisection for the L1 projection, Kolmogorov–Smirnov / chi-square tests for
the random draws), so a wrong implementation fails.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import LinearSoftmax, tiny_cnn, tiny_mlp  # noqa: E402
from fisherscope.attacks import (  # noqa: E402
    ATTACKS,
    BIM,
    FGM,
    FGSM,
    MIFGSM,
    OTCM,
    PGD,
    IterativeOTCM,
    OneStepAttack,
)
from fisherscope.attacks.base import project, project_l1_ball  # noqa: E402
from fisherscope.attacks.iterative import sparse_l1_direction  # noqa: E402
from fisherscope.evaluation import least_perturbation  # noqa: E402

stats = pytest.importorskip("scipy.stats")

K = 5


@pytest.fixture(scope="module")
def setup():
    model = tiny_cnn(c=1, side=8, k=K, dtype=torch.float64, seed=5)  # predicts 4 of the 5 classes on x
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def grad_ce(model, x, y, targeted=False):
    """∇x of the summed CE (minus it when targeted), by hand."""
    xr = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xr), y, reduction="sum")
    (g,) = torch.autograd.grad(-loss if targeted else loss, xr)
    return g


def ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def l1_projection_bisection(v: torch.Tensor, eps: float) -> torch.Tensor:
    """Projection onto {‖w‖₁ ≤ eps} of one vector: soft-threshold at θ found by bisection."""
    if v.abs().sum() <= eps:
        return v.clone()
    lo, hi = 0.0, float(v.abs().max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if float((v.abs() - mid).clamp_min(0).sum()) > eps:
            lo = mid
        else:
            hi = mid
    return v.sign() * (v.abs() - (lo + hi) / 2).clamp_min(0)


# ----------------------------------------------------------------------------- registry


def test_registered_and_kinds():
    assert (ATTACKS["fgsm"], ATTACKS["otcm"], ATTACKS["bim"], ATTACKS["pgd"]) == (FGSM, OTCM, BIM, PGD)
    assert ATTACKS["otcm_iterative"] is IterativeOTCM
    assert issubclass(FGSM, OneStepAttack) and issubclass(OTCM, OneStepAttack)
    assert FGSM(eps=0.1).norm == "linf" and OTCM(eps=1.0).norm == "l2" and OTCM(eps=1.0, norm="linf").norm == "linf"
    assert [BIM(eps=1.0, norm=n).norm for n in ("linf", "l2", "l1")] == ["linf", "l2", "l1"]
    assert PGD(eps=0.3).norm == "linf" and PGD(eps=1.0, norm="l2").norm == "l2"
    # the budget kind is class-level: BIM's eps is optional (eps=None: no projection)
    assert BIM.budgeted is True and BIM.budget == "optional" and BIM.norms == ("linf", "l2", "l1")
    assert BIM(eps=None, step_size=0.05).eps is None and BIM(eps=0.1).budgeted is True


# ----------------------------------------------------------------------------- FGSM


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_equals_hand_computation(setup, targeted):
    model, x, y = setup
    t = (y + 2) % K if targeted else y
    expected = (x + 0.07 * grad_ce(model, x, t, targeted).sign()).clamp(0, 1)
    torch.testing.assert_close(FGSM(eps=0.07)(model, x, t, targeted=targeted), expected, rtol=0, atol=1e-15)


def test_fgsm_zero_gradient_coordinates_and_samples_stay():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(K, 12, generator=g, dtype=torch.float64)
    w[:, :4] = 0  # the logits ignore the first four features
    model = LinearSoftmax(w, torch.randn(K, generator=g, dtype=torch.float64)).eval()
    x = torch.rand(6, 12, generator=g, dtype=torch.float64) * 0.5 + 0.25
    out = FGSM(eps=0.1)(model, x)
    assert torch.equal(out[:, :4], x[:, :4])
    assert bool(((out[:, 4:] - x[:, 4:]).abs() > 0.0999).all())
    flat = LinearSoftmax(torch.zeros(K, 12, dtype=torch.float64), torch.arange(K, dtype=torch.float64)).eval()
    assert torch.equal(FGSM(eps=0.1)(flat, x), x)


# ----------------------------------------------------------------------------- BIM


def naive_bim(model, x, y, eps, alpha, steps, norm, targeted=False):
    """Kurakin's BIM, one sample at a time, written out (L∞ sign / L2 normalised steps)."""
    out = []
    for i in range(x.shape[0]):
        x0, xa = x[i : i + 1], x[i : i + 1].clone()
        for _ in range(steps):
            g = grad_ce(model, xa, y[i : i + 1], targeted)
            if norm == "linf":
                xa = xa + alpha * g.sign()
                xa = torch.min(torch.max(xa, x0 - eps), x0 + eps)
            else:
                xa = xa + alpha * g / g.norm()
                d = xa - x0
                if eps is not None and d.norm() > eps:
                    xa = x0 + d * (eps / d.norm())
            xa = xa.clamp(0, 1)
        out.append(xa)
    return torch.cat(out)


@pytest.mark.parametrize(("norm", "eps", "targeted"), [("linf", 0.05, False), ("linf", 0.05, True),
                                                       ("l2", 0.6, False), ("l2", None, True)])
def test_bim_matches_naive_reference(setup, norm, eps, targeted):
    model, x, y = setup
    t = (y + 1) % K if targeted else y
    alpha = 0.02 if norm == "linf" else 0.25
    ours = BIM(eps=eps, step_size=alpha, steps=4, norm=norm)(model, x, t, targeted=targeted)
    torch.testing.assert_close(ours, naive_bim(model, x, t, eps, alpha, 4, norm, targeted), rtol=0, atol=1e-12)


def test_bim_one_step_is_fgsm_and_fgm(setup):
    model, x, y = setup
    fgsm = FGSM(eps=0.06)(model, x, y)
    torch.testing.assert_close(BIM(eps=0.06, steps=1, step_size=0.06)(model, x, y), fgsm, rtol=0, atol=1e-15)
    # default step 1.25·eps overshoots and is projected back: still FGSM
    torch.testing.assert_close(BIM(eps=0.06, steps=1)(model, x, y), fgsm, rtol=0, atol=1e-15)
    fgm = FGM(eps=0.8)(model, x, y)
    torch.testing.assert_close(BIM(eps=0.8, steps=1, step_size=0.8, norm="l2")(model, x, y), fgm, rtol=0, atol=1e-14)


def test_bim_default_step_size_is_kurakin_overshoot(setup):
    model, x, y = setup
    a = BIM(eps=0.08, steps=4)(model, x, y)
    b = BIM(eps=0.08, steps=4, step_size=1.25 * 0.08 / 4)(model, x, y)
    assert torch.equal(a, b)


def test_bim_unbudgeted_l2_is_repeated_fgm(setup):
    """Zhao Fig. 2(b)'s iterative FGM: repeated one-step FGM of 0.05, clipped to the box."""
    model, x, y = setup
    res = BIM(norm="l2", step_size=0.05, steps=5, eps=None).run(model, x, y, eps=0.01)  # per-call eps ignored
    cur = x
    hits = []
    for _ in range(5):
        cur = FGM(eps=0.05)(model, cur, y)
        with torch.no_grad():
            hits.append(model(cur).argmax(1) != y)
    torch.testing.assert_close(res.x_adv, cur, rtol=0, atol=1e-13)
    assert torch.equal(res.extras["success_per_step"], torch.stack(hits, 1))
    assert res.norms["l2"].max() > 0.2  # more than the ignored per-call eps


def test_bim_success_per_step_is_prefix_of_longer_runs(setup):
    model, x, y = setup
    long = BIM(eps=0.1, steps=6, step_size=0.02).run(model, x, y)
    assert torch.equal(long.extras["success_per_step"][:, -1], long.success)
    for t in (1, 3):
        short = BIM(eps=0.1, steps=t, step_size=0.02).run(model, x, y)
        assert torch.equal(long.extras["success_per_step"][:, t - 1], short.success)


# ----------------------------------------------------------------------------- L1


def test_l1_projection_matches_bisection_and_optimality():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(40, 17, generator=g, dtype=torch.float64) * torch.rand(40, 1, generator=g, dtype=torch.float64) * 3
    v[3, :5] = 1.5  # ties
    v[4] = 0.0
    eps = torch.rand(40, generator=g, dtype=torch.float64) * 6
    eps[5] = 0.0
    eps[6] = 1e3  # far inside: unchanged
    w = project_l1_ball(v, eps)
    ref = torch.stack([l1_projection_bisection(v[i], float(eps[i])) for i in range(40)])
    torch.testing.assert_close(w, ref, rtol=0, atol=1e-12)
    assert torch.equal(w[6], v[6]) and torch.equal(w[5], torch.zeros_like(w[5]))
    assert bool((w.abs().sum(1) <= eps + 1e-12).all())
    # variational inequality <v − w, z − w> ≤ 0 for every z in the ball ⇔ for every vertex ±eps·e_i
    r = v - w
    assert bool((eps * r.abs().amax(1) <= (r * w).sum(1) + 1e-10).all())
    # radial rescaling (the old behaviour) is admissible but not the nearest point
    n = v.abs().sum(1, keepdim=True)
    scaled = torch.where(n > eps[:, None], v * eps[:, None] / n, v)
    assert (scaled - ref).abs().max() > 1e-2


def test_project_l1_around_x_and_eps_zero():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 1, 4, 4, generator=g, dtype=torch.float64)
    xa = x + torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.tensor([0.0, 0.5, 1.0, 2.0, 100.0], dtype=torch.float64)
    out = project(x, xa, eps, "l1")
    assert torch.equal(out[0], x[0]) and torch.equal(out[4], xa[4])
    for i in (1, 2, 3):
        ref = l1_projection_bisection((xa[i] - x[i]).flatten(), float(eps[i])).reshape(x[i].shape)
        torch.testing.assert_close(out[i] - x[i], ref, rtol=0, atol=1e-12)


def test_sparse_l1_direction():
    grad = torch.tensor([[0.1, -3.0, 2.0, 0.5, -2.5, 0.0, 0.2, 0.3, 0.0, 0.0]], dtype=torch.float64)
    x_t = torch.full_like(grad, 0.5)
    d = sparse_l1_direction(grad, x_t, (0.0, 1.0), sparsity=0.7)  # top 3 of 10
    assert torch.equal(d, torch.tensor([[0, -1, 1, 0, -1, 0, 0, 0, 0, 0]], dtype=torch.float64) / 3)
    x_t[0, 1] = 0.0  # −3.0 would push below the box: skipped, the next largest enters
    d = sparse_l1_direction(grad, x_t, (0.0, 1.0), sparsity=0.7)
    assert torch.equal(d, torch.tensor([[0, 0, 1, 1, -1, 0, 0, 0, 0, 0]], dtype=torch.float64) / 3)
    assert sparse_l1_direction(torch.zeros_like(grad), x_t, (0.0, 1.0), 0.7).abs().sum() == 0
    d = sparse_l1_direction(grad, torch.full_like(grad, 0.5), (0.0, 1.0), sparsity=0.99)  # at least one coordinate
    assert torch.equal(d, F.one_hot(torch.tensor([1]), 10).to(grad.dtype) * -1)


def naive_bim_l1(model, x, y, eps, alpha, steps, k):
    out = []
    for i in range(x.shape[0]):
        x0, xa = x[i : i + 1], x[i : i + 1].clone()
        for _ in range(steps):
            g = grad_ce(model, xa, y[i : i + 1]).flatten()
            blocked = ((xa.flatten() >= 1) & (g > 0)) | ((xa.flatten() <= 0) & (g < 0))
            g = torch.where(blocked, torch.zeros_like(g), g)
            order = torch.argsort(g.abs(), descending=True, stable=True)[:k]
            step = torch.zeros_like(g)
            step[order] = g[order].sign()
            step = step / max(int((step != 0).sum()), 1)
            d = (xa.flatten() + alpha * step) - x0.flatten()
            xa = (x0.flatten() + l1_projection_bisection(d, eps)).reshape(x0.shape).clamp(0, 1)
        out.append(xa)
    return torch.cat(out)


def test_bim_l1_matches_naive_reference(setup):
    model, x, y = setup
    ours = BIM(eps=2.0, steps=5, step_size=0.8, norm="l1", l1_sparsity=0.9)(model, x, y)  # k = 64 − 57 = 7
    ref = naive_bim_l1(model, x, y, 2.0, 0.8, 5, 7)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    assert bool(((ours - x).flatten(1).abs().sum(1) <= 2.0 + 1e-10).all())
    assert (ours - x).flatten(1).abs().sum(1).max() > 1.9  # the budget is used


# ----------------------------------------------------------------------------- PGD


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_ball_and_bounds(setup, norm):
    model, x, y = setup
    eps = torch.tensor([0.0, 0.05, 0.1, 0.3, 0.0, 0.2, 0.5, 1.0], dtype=torch.float64)
    if norm == "l2":
        eps = eps * 6
    res = PGD(eps=1.0, steps=7, norm=norm, restarts=3).run(model, x, y, eps=eps,
                                                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(res.x_adv[eps == 0], x[eps == 0])
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert bool((res.norms[norm] <= eps + 1e-12).all())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_random_start_is_uniform_in_the_ball(norm):
    """step_size=0 returns the start itself; wide bounds so that nothing is clipped."""
    d, n, eps = 6, 4000, 0.5
    model = tiny_mlp(d=d, k=K)
    x = torch.zeros(n, d, dtype=torch.float64)
    out = PGD(eps=eps, steps=1, step_size=0.0, norm=norm, bounds=(-10.0, 10.0))(
        model, x, generator=torch.Generator().manual_seed(0))
    if norm == "linf":
        assert stats.kstest(out.flatten().numpy(), stats.uniform(loc=-eps, scale=2 * eps).cdf).pvalue > 1e-3
    else:
        r = out.norm(dim=1) / eps  # uniform in the ball: P(r ≤ s) = s^d
        assert stats.kstest((r**d).numpy(), "uniform").pvalue > 1e-3
        u = out / out.norm(dim=1, keepdim=True)  # uniform direction: E[u] = 0, E[u uᵀ] = I/d
        assert u.mean(0).abs().max() < 4 / math.sqrt(n)
        torch.testing.assert_close(u.T @ u / n, torch.eye(d, dtype=torch.float64) / d, rtol=0, atol=0.02)


def test_pgd_without_random_start_is_bim_and_deterministic(setup):
    model, x, y = setup
    a = PGD(eps=0.1, steps=5, step_size=0.03, random_start=False)(model, x, y)
    torch.testing.assert_close(a, BIM(eps=0.1, steps=5, step_size=0.03)(model, x, y), rtol=0, atol=0)
    b = PGD(eps=0.1, steps=5, random_start=True)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(b(model, x, y, generator=g1), b(model, x, y, generator=g2))
    assert not torch.equal(b(model, x, y, generator=torch.Generator().manual_seed(6)),
                           b(model, x, y, generator=torch.Generator().manual_seed(5)))


def test_pgd_more_steps_raise_the_loss(setup):
    model, x, y = setup
    losses = [ce(model, PGD(eps=0.1, steps=s, step_size=0.01, random_start=False)(model, x, y), y).mean()
              for s in (2, 5, 15)]
    assert losses[0] <= losses[1] + 1e-3 and losses[1] <= losses[2] + 1e-3
    assert losses[2] > losses[0] + 0.1


@pytest.mark.parametrize(("targeted", "norm", "eps"), [(False, "linf", 0.08), (True, "linf", 0.08), (False, "l2", 0.4)])
def test_pgd_restarts_keep_first_success_else_highest_loss(setup, targeted, norm, eps):
    model = setup[0]
    x = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    t = (y + 1) % K if targeted else y
    kw = dict(eps=eps, steps=2, step_size=eps / 8, norm=norm)  # short runs: the start matters
    res = PGD(restarts=4, **kw).run(model, x, t, targeted=targeted, generator=torch.Generator().manual_seed(9))
    # reference: the four restarts run separately on the whole batch, same generator stream
    g = torch.Generator().manual_seed(9)
    runs = [PGD(restarts=1, **kw).run(model, x, t, targeted=targeted, generator=g) for _ in range(4)]
    succ = torch.stack([r.success for r in runs])  # (R, N)
    loss = torch.stack([F.cross_entropy(r.logits_adv, t, reduction="none") for r in runs])
    loss = -loss if targeted else loss
    first = torch.where(succ.any(0), succ.float().argmax(0), loss.argmax(0))
    assert 0 < int(succ[0].sum()) < len(y) and bool((first > 0).any()) and not bool(succ.any(0).all())
    assert torch.equal(res.extras["restart"], first)
    expected = torch.stack([runs[int(r)].x_adv[i] for i, r in enumerate(first)])
    torch.testing.assert_close(res.x_adv, expected, rtol=0, atol=1e-12)
    assert torch.equal(res.success, succ.any(0))


# ----------------------------------------------------------------------------- OTCM


def test_otcm_targets_never_true_label_and_uniform():
    n = 6000
    model = tiny_mlp(d=12, k=K)
    x = torch.rand(n, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(n) % K  # true labels need not be the predictions
    t = OTCM(eps=0.5).run(model, x, y, generator=torch.Generator().manual_seed(1)).extras["target"]
    assert not bool((t == y).any())
    counts = torch.zeros(K, K, dtype=torch.long)
    counts.index_put_((y, t), torch.ones_like(y), accumulate=True)
    chi2 = 0.0
    for c in range(K):
        obs = torch.cat([counts[c, :c], counts[c, c + 1 :]]).double()
        chi2 += float(((obs - obs.mean()) ** 2 / obs.mean()).sum())
    assert stats.chi2(K * (K - 2)).sf(chi2) > 1e-3, chi2
    t2 = OTCM(eps=0.5).run(model, x[:50], y[:50], generator=torch.Generator().manual_seed(2)).extras["target"]
    assert not torch.equal(t2, t[:50])


def test_otcm_least_likely_is_argmin_of_logits(setup):
    model, x, y = setup
    res = OTCM(eps=1.0, target="least_likely").run(model, x, y)
    with torch.no_grad():
        assert torch.equal(res.extras["target"], model(x).argmin(1))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_otcm_step_equals_hand_computation(setup, norm):
    model, x, y = setup
    eps = 0.9 if norm == "l2" else 0.05
    res = OTCM(eps=eps, norm=norm).run(model, x, y, generator=torch.Generator().manual_seed(0))
    t = res.extras["target"]
    g = grad_ce(model, x, t)  # ∇x CE(t)
    d = g / g.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) if norm == "l2" else g.sign()
    torch.testing.assert_close(res.x_adv, (x - eps * d).clamp(0, 1), rtol=0, atol=1e-14)
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)  # fooling rate, not target hit
    # the same step as a targeted call with y = t; success then means "classified as t"
    tgt = OTCM(eps=eps, norm=norm).run(model, x, t, targeted=True)
    assert torch.equal(tgt.x_adv, res.x_adv) and torch.equal(tgt.extras["target"], t)
    assert torch.equal(tgt.success, tgt.logits_adv.argmax(1) == t)
    # the L2 step is FGM towards t
    if norm == "l2":
        torch.testing.assert_close(res.x_adv, FGM(eps=eps)(model, x, t, targeted=True), rtol=0, atol=1e-15)


def test_otcm_batch_equals_per_sample_and_budget_search(setup):
    model, x, y = setup
    atk = OTCM(eps=1.2, target="least_likely")
    full = atk(model, x, y)
    for i in range(3):
        torch.testing.assert_close(atk(model, x[i : i + 1], y[i : i + 1])[0], full[i], rtol=0, atol=1e-14)
    eps = torch.tensor([0.0, 1.2, 0.0, 0.3, 2.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    out = OTCM(eps=1.0).run(model, x, y, eps=eps, generator=torch.Generator().manual_seed(0)).x_adv
    assert torch.equal(out[eps == 0], x[eps == 0])
    lp = least_perturbation(atk, model, x, y, hi=6.0, tol=1e-4)
    assert bool(lp.fooled.any())
    res = atk.run(model, x, y, eps=torch.where(lp.fooled, lp.eps, torch.zeros_like(lp.eps)))
    assert bool(res.success[lp.fooled].all())


def test_iterative_otcm_is_repeated_targeted_fgm(setup):
    """Zhao Fig. 2(b)'s iterative OTCM: one drawn target, repeated FGM steps towards it."""
    model, x, y = setup
    res = IterativeOTCM(step_size=0.2, steps=5).run(model, x, y, generator=torch.Generator().manual_seed(3))
    t = res.extras["target"]
    assert torch.equal(t, OTCM(eps=1.0).run(model, x, y, generator=torch.Generator().manual_seed(3)).extras["target"])
    cur, hits = x, []
    for _ in range(5):
        cur = FGM(eps=0.2)(model, cur, t, targeted=True)
        with torch.no_grad():
            hits.append(model(cur).argmax(1) != y)
    torch.testing.assert_close(res.x_adv, cur, rtol=0, atol=1e-13)
    assert torch.equal(res.extras["success_per_step"], torch.stack(hits, 1))
    one = IterativeOTCM(step_size=0.7, steps=1, norm="linf").run(model, x, y, generator=torch.Generator().manual_seed(3))
    ref = OTCM(eps=0.7, norm="linf").run(model, x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(one.x_adv, ref.x_adv)
    capped = IterativeOTCM(step_size=0.5, steps=6, eps=0.8).run(model, x, y, generator=torch.Generator().manual_seed(3))
    assert bool((capped.norms["l2"] <= 0.8 + 1e-12).all())


# ----------------------------------------------------------------------------- shared


@pytest.mark.parametrize("atk", [BIM(eps=0.1, steps=3, norm="linf"), BIM(eps=1.0, steps=3, norm="l2"),
                                 BIM(eps=2.0, steps=3, norm="l1"), PGD(eps=0.5, steps=3, norm="l2", random_start=False),
                                 MIFGSM(eps=0.1, steps=3)], ids=lambda a: f"{type(a).__name__}-{a.norm}")
def test_batch_equals_per_sample_and_eps_zero(setup, atk):
    model, x, y = setup
    full = atk(model, x, y)
    for i in range(3):
        torch.testing.assert_close(atk(model, x[i : i + 1], y[i : i + 1])[0], full[i], rtol=0, atol=1e-12)
    assert torch.equal(dataclasses.replace(atk, eps=0.0)(model, x, y), x)


def test_bad_hyperparameters_rejected():
    with pytest.raises(ValueError, match="needs an explicit step_size"):
        BIM(eps=None)
    with pytest.raises(ValueError, match="BIM: norm must be .* got 'l0'"):
        BIM(eps=1.0, norm="l0")
    with pytest.raises(ValueError, match="BIM: l1_sparsity must be"):
        BIM(eps=1.0, norm="l1", l1_sparsity=1.0)
    with pytest.raises(ValueError, match="PGD: norm must be"):
        PGD(eps=1.0, norm="l1")
    with pytest.raises(ValueError, match="restarts without random_start"):
        PGD(eps=0.1, restarts=3, random_start=False)
    with pytest.raises(ValueError, match="PGD: restarts must be"):
        PGD(eps=0.1, restarts=0)
    with pytest.raises(ValueError, match="OTCM: target must be"):
        OTCM(eps=1.0, target="most_likely")
    with pytest.raises(ValueError, match="OTCM: norm must be"):
        OTCM(eps=1.0, norm="l1")
    with pytest.raises(ValueError, match="IterativeOTCM: target must be"):
        IterativeOTCM(target="first")
    with pytest.raises(ValueError, match="FGSM: eps must be"):
        FGSM(eps=-0.1)
