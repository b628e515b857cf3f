"""Fisher penalties against float64 oracles: naive Σ 1/p_i, dense / per-class input Fisher,
finite differences of the exact spectrum, and torch.autograd.gradcheck."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from fisherscope.defenses import (
    FisherRegularizedLoss,
    default_max_log,
    fisher_penalty,
    input_fisher_penalty,
    log_fisher_penalty,
)
from fisherscope.fisher import fisher_spectrum, fisher_trace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _models import LinearSoftmax, tiny_cnn, tiny_mlp  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------ helpers


def _logits(n: int, k: int, scale: float, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Random logits in [-scale, scale] plus rows that reach ±scale exactly."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.rand(n, k, generator=g, dtype=torch.float64) * 2 - 1) * scale
    z[0, 0], z[0, 1] = scale, -scale  # p_min ≈ e^{-2 scale}
    z[1] = torch.linspace(-scale, scale, k, dtype=torch.float64)
    z[2] = 0.0  # uniform: Σ 1/p = K²
    return z.to(dtype)


def _naive(z64: torch.Tensor) -> torch.Tensor:
    """Σ_i 1/p_i the obvious way, in float64 (fine for |z| ≤ 30: p ≥ 1e-27)."""
    return (1.0 / torch.softmax(z64, dim=1)).sum(1)


def _assert_rows_close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float = 1e-9) -> None:
    """|a − b| ≤ rtol · max|b| of the row + atol: gradient entries that nearly cancel
    carry the absolute error of the row's scale, in any correct implementation."""
    err = (a.double() - b.double()).abs()
    scale = b.double().abs().amax(1, keepdim=True)
    bad = err > rtol * scale + atol
    assert not bad.any(), f"max row-relative error {(err / scale.clamp_min(1e-300)).max():.3g}"


def _grad(fn, z: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.detach().requires_grad_(True)
    v = fn(z)
    (g,) = torch.autograd.grad((v * w.to(v.dtype)).sum(), z)
    return v.detach(), g


# ------------------------------------------------------------------ softmax space


def test_float64_matches_naive_up_to_30():
    z = _logits(64, 10, 30.0, seed=0)
    w = torch.rand(64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v, g = _grad(fisher_penalty, z, w)
    v_ref, g_ref = _grad(_naive, z, w)
    assert v_ref.max() > 1e25  # the test reaches p_i ~ 1e-26
    torch.testing.assert_close(v, v_ref, rtol=1e-12, atol=0)
    _assert_rows_close(g, g_ref, rtol=1e-10)
    assert v[2].item() == pytest.approx(100.0, rel=1e-14)  # uniform: K²


def test_float32_matches_float64_naive_up_to_15():
    z32 = _logits(64, 10, 15.0, seed=2, dtype=torch.float32)
    z64 = z32.double()  # the same numbers
    w = torch.rand(64, generator=torch.Generator().manual_seed(3))
    v, g = _grad(fisher_penalty, z32, w)
    v_ref, g_ref = _grad(_naive, z64, w.double())
    assert v.dtype == torch.float32 and g.dtype == torch.float32
    assert v_ref.max() > 1e12
    # computed in float64 and rounded once: relative error of float32 rounding, per entry
    torch.testing.assert_close(v.double(), v_ref, rtol=2e-7, atol=0)
    _assert_rows_close(g, g_ref, rtol=2e-7)


def test_log_form_exact_everywhere():
    z = _logits(32, 10, 30.0, seed=4)
    torch.testing.assert_close(log_fisher_penalty(z), _naive(z).log(), rtol=1e-13, atol=0)
    a = 1e4
    big = torch.tensor([[a, -a, 0.0]], dtype=torch.float64, requires_grad=True)
    val = log_fisher_penalty(big)
    # lse(z) = a + log1p(e^{-a} + e^{-2a}) = a (to float64), same for -z
    assert val.item() == 2 * a
    (g,) = torch.autograd.grad(val.sum(), big)
    torch.testing.assert_close(g, torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64))
    assert fisher_penalty(big, kind="log_softmax_trace").item() == 2 * a


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_logits_give_the_documented_cap(dtype):
    a = 1e4
    z = torch.tensor([[a, -a, 0.0], [-a, 0.5 * a, a], [3.0, 1.0, 2.0]], dtype=dtype, requires_grad=True)
    v = fisher_penalty(z)
    (g,) = torch.autograd.grad(v.sum(), z)
    assert torch.isfinite(v).all() and torch.isfinite(g).all()
    c = default_max_log(dtype)
    z64 = z.detach().double()
    log_t = torch.logsumexp(z64, 1) + torch.logsumexp(-z64, 1)
    expected = math.exp(c) * (1 + torch.log1p(log_t - c))
    torch.testing.assert_close(v[:2].double(), expected[:2], rtol=1e-6, atol=0)
    assert v[2].item() == pytest.approx(_naive(z64[2:]).item(), rel=1e-6)  # unaffected row
    # gradient: dP/dL · (softmax(z) − softmax(−z)), the direction of the exact penalty
    slope = math.exp(c) / (1 + log_t[:2] - c)
    direction = torch.softmax(z64[:2], 1) - torch.softmax(-z64[:2], 1)
    torch.testing.assert_close(g[:2].double(), slope[:, None] * direction, rtol=1e-6, atol=0)
    assert (g[:2].abs().amax(1) > 0).all()  # never a vanishing push
    # a step against the gradient lowers the penalty
    step = z.detach() - 1e-3 * g / g.abs().amax(1, keepdim=True)
    assert (fisher_penalty(step)[:2] < v[:2].detach()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cap_is_continuous_with_continuous_slope(dtype):
    """C¹ across L = c: value and dP/dL agree from both sides (c = 5 here)."""
    c = 5.0
    base = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    l0 = (torch.logsumexp(base, 1) + torch.logsumexp(-base, 1)).item()
    # L(s·base) is increasing in s; find s with L = c by bisection
    lo, hi = 1.0, 20.0
    for _ in range(200):
        mid = (lo + hi) / 2
        zz = base * mid
        if (torch.logsumexp(zz, 1) + torch.logsumexp(-zz, 1)).item() < c:
            lo = mid
        else:
            hi = mid
    assert l0 < c
    h = 1e-4
    vals = [fisher_penalty((base * s).to(dtype), max_log=c).double().item() for s in (lo - h, lo, lo + h)]
    assert vals[1] == pytest.approx(math.exp(c), rel=1e-6)
    left, right = (vals[1] - vals[0]) / h, (vals[2] - vals[1]) / h
    assert left == pytest.approx(right, rel=1e-2 if dtype == torch.float32 else 1e-4)


def test_gradcheck_softmax_kinds():
    z = (_logits(6, 5, 4.0, seed=5)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: fisher_penalty(t), (z,))
    assert torch.autograd.gradcheck(lambda t: fisher_penalty(t, kind="log_softmax_trace"), (z,))
    # past the cap (max_log = 7 < L for half the rows): the continuation is differentiable too
    zc = (_logits(6, 5, 4.0, seed=6)).requires_grad_(True)
    lt = log_fisher_penalty(zc.detach())
    assert (lt > 7.2).sum() >= 3 and (lt < 6.8).sum() >= 2 and (lt - 7.0).abs().min() > 1e-3
    assert torch.autograd.gradcheck(lambda t: fisher_penalty(t, max_log=7.0), (zc,))


def test_half_precision_is_evaluated_in_float32():
    z = torch.tensor([[12.0, -12.0, 0.0]], dtype=torch.bfloat16)
    v = fisher_penalty(z)
    assert v.dtype == torch.float32
    assert v.item() == pytest.approx(_naive(z.double()).item(), rel=1e-6)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: fisher_penalty(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]])), ValueError, r"samples \[1\]"),
        (lambda: fisher_penalty(torch.tensor([[0.0, float("inf")]])), ValueError, "non-finite logits"),
        (lambda: fisher_penalty(torch.zeros(3)), ValueError, r"shape \(N, K\)"),
        (lambda: fisher_penalty(torch.zeros(2, 1)), ValueError, "K >= 2"),
        (lambda: fisher_penalty(torch.zeros(2, 3, dtype=torch.int64)), TypeError, "floating-point"),
        (lambda: fisher_penalty(torch.zeros(2, 3), kind="input_trace"), ValueError, "input_fisher_penalty"),
        (lambda: fisher_penalty(torch.zeros(2, 3), max_log=100.0), ValueError, r"max_log must be .*81\.72\]"),
        (lambda: fisher_penalty(torch.zeros(2, 3), max_log=float("nan")), ValueError, "max_log must be .*got nan"),
        (lambda: fisher_penalty(torch.zeros(2, 3), max_log=True), TypeError, "max_log must be .*got True"),
    ],
)
def test_penalty_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("k", [2, 3, 10])
def test_cap_below_two_log_k_is_rejected(k):
    """log Σ 1/p_i >= 2 log K for every input, so a cap below it would cap every sample:
    fisher_penalty(zeros(1, 3), max_log=-5) returned 0.0209 where the exact value is 9."""
    z = torch.zeros(1, k)
    floor = 2 * math.log(k)
    with pytest.raises(ValueError, match=rf"fisher_penalty: max_log must be .*2·log K.*{floor:.4g}.*got -5"):
        fisher_penalty(z, max_log=-5.0)
    with pytest.raises(ValueError, match="max_log must be"):
        fisher_penalty(z, max_log=floor - 1e-9)
    # at the bound itself the uniform distribution is exact: K² = exp(2 log K)
    assert fisher_penalty(z.double(), max_log=floor).item() == pytest.approx(k * k, rel=1e-12)
    with pytest.raises(ValueError, match="FisherRegularizedLoss: max_log must be"):
        FisherRegularizedLoss(mu=1.0, max_log=floor - 1e-9)(z, torch.zeros(1, dtype=torch.long))


# ------------------------------------------------------------------ input space


def _naive_input_trace(model, x: torch.Tensor) -> torch.Tensor:
    """Σ_k p_k ‖∇x log p_k‖² per sample and class, double-backprop-ready (float64)."""
    out = []
    for n in range(x.shape[0]):
        xn = x[n : n + 1].detach().requires_grad_(True)
        logp = torch.log_softmax(model(xn), dim=1)[0]
        total = 0.0
        for k in range(logp.shape[0]):
            (g,) = torch.autograd.grad(logp[k], xn, create_graph=True)
            total = total + logp[k].exp() * g.pow(2).sum()
        out.append(total)
    return torch.stack(out)


@pytest.mark.parametrize(
    "factory, shape", [(lambda: tiny_mlp(k=5), (5, 12)), (lambda: tiny_cnn(k=6), (5, 1, 8, 8))], ids=["mlp", "cnn"]
)
def test_input_trace_equals_fisher_trace_and_naive_gradient(factory, shape):
    model = factory()
    x = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))[:3]
    pen = input_fisher_penalty(model, x, "input_trace")
    torch.testing.assert_close(pen, fisher_trace(model, x), rtol=1e-10, atol=0)
    ref = _naive_input_trace(model, x)
    torch.testing.assert_close(pen.detach(), ref.detach(), rtol=1e-10, atol=0)
    w = torch.rand(3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    params = [p for p in model.parameters()]
    g_ours = torch.autograd.grad((w * pen).sum(), params)
    g_ref = torch.autograd.grad((w * ref).sum(), params)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert all(p.grad is None for p in params)  # autograd.grad only: .grad untouched


def test_input_trace_linear_softmax_closed_form():
    g = torch.Generator().manual_seed(9)
    w, b = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    model = LinearSoftmax(w, b)
    x = torch.rand(3, 6, dtype=torch.float64, generator=g)
    p = torch.softmax(x @ w.T + b, 1)
    a = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    expected = torch.einsum("nij,ij->n", a, w @ w.T)  # tr(Wᵀ A W)
    torch.testing.assert_close(input_fisher_penalty(model, x), expected, rtol=1e-12, atol=0)


def _functional(model, names, kind, n_params):
    def fn(*args):
        params = dict(zip(names, args[:n_params], strict=True))
        return input_fisher_penalty(lambda t: functional_call(model, params, (t,)), args[n_params], kind)

    return fn


def _separated(model, x, gap=0.2):
    ev = fisher_spectrum(model, x, k=2).eigenvalues
    keep = (ev[:, 0] - ev[:, 1]) > gap * ev[:, 0]
    return x[keep]


@pytest.mark.parametrize("kind", ["input_trace", "top_eigenvalue"])
def test_gradcheck_input_kinds(kind):
    """Parameters and x together, float64 (a tiny tanh MLP, K = 4)."""
    model = tiny_mlp(d=6, k=4, hidden=5, seed=1)
    x = torch.rand(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    if kind == "top_eigenvalue":
        x = _separated(model, x)[:3]
        assert x.shape[0] == 3
    x = x[:3].clone().requires_grad_(True)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    fn = _functional(model, names, kind, len(params))
    assert torch.autograd.gradcheck(fn, (*params, x), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "factory, shape",
    [(lambda: tiny_mlp(k=5, seed=2), (12, 12)), (lambda: tiny_cnn(k=6, seed=3), (12, 1, 8, 8))],
    ids=["mlp", "cnn"],
)
def test_top_eigenvalue_equals_spectrum_and_finite_differences(factory, shape):
    model = factory()
    x = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    x = _separated(model, x)[:4]
    assert x.shape[0] >= 3
    lam = input_fisher_penalty(model, x, "top_eigenvalue")
    spec = fisher_spectrum(model, x, k=1).top_eigenvalue
    torch.testing.assert_close(lam.detach(), spec, rtol=1e-10, atol=0)
    # directional derivative along a random parameter direction vs central differences
    params = list(model.parameters())
    g = torch.Generator().manual_seed(12)
    dirs = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    w = torch.rand(x.shape[0], dtype=torch.float64, generator=g)
    grads = torch.autograd.grad((w * lam).sum(), params)
    analytic = sum((gr * d).sum() for gr, d in zip(grads, dirs, strict=True))
    h = 1e-5
    vals = []
    with torch.no_grad():
        for s in (h, -h):
            for p, d in zip(params, dirs, strict=True):
                p.add_(s * d)
            vals.append((w * fisher_spectrum(model, x, k=1).top_eigenvalue).sum())
            for p, d in zip(params, dirs, strict=True):
                p.sub_(s * d)
    numeric = (vals[0] - vals[1]) / (2 * h)
    assert analytic.item() == pytest.approx(numeric.item(), rel=1e-6)


def test_input_penalty_keeps_mode_and_inputs():
    model = tiny_cnn(k=6, seed=4).train()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    x0 = x.clone()
    pen = input_fisher_penalty(model, x, "top_eigenvalue")
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(x, x0) and not x.requires_grad
    assert pen.shape == (4,) and pen.requires_grad and torch.isfinite(pen).all()


def test_input_penalty_is_differentiable_in_x_when_asked():
    model = tiny_mlp(d=12, k=5, seed=5)
    x = torch.rand(2, 12, dtype=torch.float64).requires_grad_(True)
    (gx,) = torch.autograd.grad(input_fisher_penalty(model, x).sum(), x)
    assert gx.shape == x.shape and gx.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"kind": "softmax_trace"}, ValueError, "fisher_penalty"),
        ({"kind": "trace"}, ValueError, "input_trace"),
        ({"x": torch.full((2, 12), 2.0, dtype=torch.float64)}, ValueError, "outside bounds"),
    ],
)
def test_input_penalty_errors(kwargs, exc, match):
    model = tiny_mlp()
    args = {"x": torch.rand(2, 12, dtype=torch.float64), **kwargs}
    with pytest.raises(exc, match=match):
        input_fisher_penalty(model, **args)
