"""Parameter-space Fisher trace, quadratic form and FIS against naive float64 oracles.

The oracles loop over samples and classes with full parameter gradients from
``torch.autograd.grad`` and build F_θ = Σ_c p_c g_c g_cᵀ as a dense P × P matrix; the FIS
oracle builds the mixed second derivatives ∂x ∇θ p_c(x) as explicit D × P Jacobians.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _models import tiny_cnn, tiny_mlp  # noqa: E402
from fisherscope import ModelModeWarning  # noqa: E402
from fisherscope.fisher import (  # noqa: E402
    fisher_sensitivity,
    param_direction,
    param_fisher_form,
    param_fisher_trace,
)

# ------------------------------------------------------------------------ oracles


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def _flat_grad(out: torch.Tensor, params: list[torch.Tensor], create_graph: bool = False) -> torch.Tensor:
    g = torch.autograd.grad(out, params, retain_graph=True, create_graph=create_graph)
    return torch.cat([t.reshape(-1) for t in g])


def naive_class_grads(model: nn.Module, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p (K,) and G (K, P) with G_c = ∇θ log p_c(x1), one backward per class."""
    params = _params(model)
    z = model(x1.unsqueeze(0))[0]
    log_p = torch.log_softmax(z, 0)
    grads = torch.stack([_flat_grad(log_p[c], params) for c in range(z.shape[0])])
    return log_p.exp().detach(), grads


def naive_fisher(model: nn.Module, x1: torch.Tensor, reduction: str = "full") -> torch.Tensor:
    """Dense F_θ(x1), P × P, by definition (eq. 3; eq. 7 for two_class)."""
    params = _params(model)
    if reduction == "full":
        p, g = naive_class_grads(model, x1)
        return torch.einsum("c,ci,cj->ij", p, g, g)
    z = model(x1.unsqueeze(0))[0]
    pred = int(z.argmax())
    p_hat = torch.softmax(z, 0)[pred]
    g_hat = _flat_grad(torch.log(p_hat), params)
    h = _flat_grad(torch.log1p(-p_hat), params)
    p_hat = p_hat.detach()
    return p_hat * torch.outer(g_hat, g_hat) + (1 - p_hat) * torch.outer(h, h)


def naive_direction(model: nn.Module, x1: torch.Tensor) -> torch.Tensor:
    """∇θ log p(ŷ|x1), flat (P,)."""
    p, g = naive_class_grads(model, x1)
    return g[int(p.argmax())]


def unflatten(model: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, p in model.named_parameters():
        out[name] = flat[..., i : i + p.numel()].reshape(*flat.shape[:-1], *p.shape)
        i += p.numel()
    return out


def _mixed(scalar_fn, x1: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """The D × P matrix of mixed second derivatives ∂²s/∂x_i∂θ_j, row by row (D double backwards)."""
    xr = x1.detach().clone().requires_grad_(True)
    gx = torch.autograd.grad(scalar_fn(xr), xr, create_graph=True)[0].reshape(-1)
    rows = []
    for i in range(gx.numel()):
        g = torch.autograd.grad(gx[i], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1)
                               for t, p in zip(g, params, strict=True)]))
    return torch.stack(rows)


def naive_fis(model: nn.Module, x1: torch.Tensor, v: torch.Tensor, reduction: str) -> torch.Tensor:
    """Σ_c (M_c v) ⊙ (L_c v) with M_c = ∂x∂θ p_c, L_c = ∂x∂θ log p_c as dense D × P matrices."""
    params = _params(model)
    with torch.no_grad():
        pred = int(model(x1.unsqueeze(0))[0].argmax())

    def class_probs(x: torch.Tensor) -> torch.Tensor:
        z = model(x.unsqueeze(0))[0]
        p = torch.softmax(z, 0)
        if reduction == "full":
            return p
        return torch.stack([p[pred], 1 - p[pred]])

    n_terms = class_probs(x1).shape[0]
    total = torch.zeros_like(x1)
    for c in range(n_terms):
        m = _mixed(lambda x, c=c: class_probs(x)[c], x1, params)  # (D, P)
        lm = _mixed(lambda x, c=c: torch.log(class_probs(x)[c]), x1, params)
        total = total + ((m @ v) * (lm @ v)).reshape(x1.shape)
    return total


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ----------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    return tiny_mlp(d=6, k=4, hidden=5, seed=1)


@pytest.fixture(scope="module")
def xs():
    return torch.rand(4, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


@pytest.fixture(scope="module")
def cnn():
    return tiny_cnn(c=1, side=4, k=3, seed=3)


@pytest.fixture(scope="module")
def ximg():
    return torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


# -------------------------------------------------------------------------- trace


@pytest.mark.parametrize("reduction", ["full", "two_class"])
@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_trace_matches_naive(request, which, reduction):
    model = request.getfixturevalue(which)
    x = request.getfixturevalue("xs" if which == "mlp" else "ximg")
    ours = param_fisher_trace(model, x, reduction=reduction)
    ref = torch.stack([torch.trace(naive_fisher(model, x[i], reduction)) for i in range(x.shape[0])])
    assert ours.shape == (x.shape[0],) and ours.dtype == torch.float64
    assert float(((ours - ref).abs() / ref.abs()).max()) <= 1e-8


def test_two_class_equals_precise_short_forms(mlp, xs):
    """Both forms of eq. 7: p̂/(1−p̂)‖∇log p̂‖² and (1−p̂)/p̂‖∇log(1−p̂)‖² (moderate confidence)."""
    ours = param_fisher_trace(mlp, xs, reduction="two_class")
    for i in range(xs.shape[0]):
        z = mlp(xs[i : i + 1])[0]
        pred = int(z.argmax())
        p_hat = torch.softmax(z, 0)[pred]
        g = _flat_grad(torch.log(p_hat), _params(mlp))
        h = _flat_grad(torch.log1p(-p_hat), _params(mlp))
        p_hat = float(p_hat.detach())
        short = p_hat / (1 - p_hat) * g.pow(2).sum()
        precise = (1 - p_hat) / p_hat * h.pow(2).sum()
        assert math.isclose(float(ours[i]), float(short), rel_tol=1e-8)
        assert math.isclose(float(ours[i]), float(precise), rel_tol=1e-8)


def test_two_class_with_two_classes_equals_full():
    model = tiny_mlp(d=5, k=2, hidden=4, seed=5)
    x = torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(param_fisher_trace(model, x, "two_class"), param_fisher_trace(model, x, "full"),
                               rtol=1e-12, atol=0)


class _Confident(nn.Module):
    """Linear softmax with a logit gap of about 21: 1 − p̂ ≈ 1e-9, p̂ rounds to 1 in float32."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        w = torch.randn(4, 6, generator=g) * 0.3
        b = torch.tensor([21.0, 0.0, 0.5, -0.3])
        self.lin = nn.Linear(6, 4).to(dtype)
        with torch.no_grad():
            self.lin.weight.copy_(w)
            self.lin.bias.copy_(b)

    def forward(self, x):
        return self.lin(x)


def _confident(dtype: torch.dtype) -> nn.Module:
    return _Confident(dtype).eval()


def test_confident_inputs_keep_precision_in_float32():
    x64 = torch.rand(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    m64, m32 = _confident(torch.float64), _confident(torch.float32)
    with torch.no_grad():
        p32 = torch.softmax(m32(x64.float()), 1).max(1).values
    assert bool((p32 == 1).all())  # the naive 1 − p̂ would be exactly 0 in float32
    for reduction in ("full", "two_class"):
        ref = param_fisher_trace(m64, x64, reduction)
        ref_naive = torch.stack([torch.trace(naive_fisher(m64, x64[i], reduction)) for i in range(3)])
        assert rel_err(ref, ref_naive) < 1e-6
        got = param_fisher_trace(m32, x64.float(), reduction).double()
        assert rel_err(got, ref) < 1e-4, reduction
        for normalized in (False, True):
            f64 = param_fisher_form(m64, x64, normalized=normalized, reduction=reduction)
            f32 = param_fisher_form(m32, x64.float(), normalized=normalized, reduction=reduction).double()
            assert bool(torch.isfinite(f32).all()) and bool((f32 > 0).all())
            assert rel_err(f32, f64) < 1e-3, (reduction, normalized)


# --------------------------------------------------------------------------- form


@pytest.mark.parametrize("reduction", ["full", "two_class"])
@pytest.mark.parametrize("normalized", [False, True])
def test_form_jvp_equals_naive(mlp, xs, reduction, normalized):
    ours = param_fisher_form(mlp, xs, normalized=normalized, reduction=reduction)
    ref = []
    for i in range(xs.shape[0]):
        v = naive_direction(mlp, xs[i])
        if normalized:
            v = v / v.norm()
        ref.append(v @ naive_fisher(mlp, xs[i], reduction) @ v)
    ref = torch.stack(ref)
    assert float(((ours - ref).abs() / ref.abs()).max()) <= 1e-10


def test_default_direction_is_grad_log_p_hat(mlp, xs):
    v = param_direction(mlp, xs, scale=0.5)
    flat = torch.cat([t.flatten(1) for t in v.values()], 1)
    ref = torch.stack([0.5 * naive_direction(mlp, xs[i]) for i in range(xs.shape[0])])
    torch.testing.assert_close(flat, ref, rtol=1e-10, atol=1e-14)
    vn = param_direction(mlp, xs, normalized=True)
    flat_n = torch.cat([t.flatten(1) for t in vn.values()], 1)
    torch.testing.assert_close(flat_n.norm(dim=1), torch.ones(xs.shape[0], dtype=torch.float64))
    # λ scales the form by λ²; the normalised form does not depend on λ
    torch.testing.assert_close(param_fisher_form(mlp, xs, scale=0.5), 0.25 * param_fisher_form(mlp, xs))
    torch.testing.assert_close(param_fisher_form(mlp, xs, scale=0.5, normalized=True),
                               param_fisher_form(mlp, xs, normalized=True))


def test_form_with_user_direction(mlp, xs):
    g = torch.Generator().manual_seed(7)
    p = sum(t.numel() for t in mlp.parameters())
    per_sample = torch.randn(xs.shape[0], p, generator=g, dtype=torch.float64)
    shared = torch.randn(p, generator=g, dtype=torch.float64)
    ours = param_fisher_form(mlp, xs, unflatten(mlp, per_sample))
    ours_shared = param_fisher_form(mlp, xs, unflatten(mlp, shared))
    ours_norm = param_fisher_form(mlp, xs, unflatten(mlp, per_sample), normalized=True)
    for i in range(xs.shape[0]):
        f = naive_fisher(mlp, xs[i])
        v = per_sample[i]
        assert math.isclose(float(ours[i]), float(v @ f @ v), rel_tol=1e-10)
        assert math.isclose(float(ours_shared[i]), float(shared @ f @ shared), rel_tol=1e-10)
        assert math.isclose(float(ours_norm[i]), float(v @ f @ v / (v @ v)), rel_tol=1e-10)


@pytest.mark.parametrize("reduction", ["full", "two_class"])
def test_form_finite_difference_is_first_order(mlp, xs, reduction):
    exact = param_fisher_form(mlp, xs, normalized=True, reduction=reduction)
    errs = []
    for eps in (1e-3, 1e-4):
        fd = param_fisher_form(mlp, xs, normalized=True, method="finite_difference", fd_eps=eps,
                               reduction=reduction)
        errs.append(float(((fd - exact).abs() / exact.abs()).max()))
    # forward difference: error O(ε′) (plus round-off ~1e-16/ε′, negligible in float64)
    assert errs[0] < 50 * 1e-3 and errs[1] < 50 * 1e-4
    assert 3 < errs[0] / errs[1] < 30


# ---------------------------------------------------------------------------- FIS


@pytest.mark.parametrize("reduction", ["full", "two_class"])
@pytest.mark.parametrize("normalized", [False, True])
def test_fis_equals_mixed_second_derivatives(mlp, xs, reduction, normalized):
    x = xs[:2]
    ours = fisher_sensitivity(mlp, x, normalized=normalized, reduction=reduction)
    assert ours.shape == x.shape
    for i in range(x.shape[0]):
        v = naive_direction(mlp, x[i]).detach()
        if normalized:
            v = v / v.norm()
        ref = naive_fis(mlp, x[i], v, reduction)
        assert rel_err(ours[i], ref) < 1e-9


def test_fis_on_cnn_with_user_direction(cnn, ximg):
    x = ximg[:1]
    p = sum(t.numel() for t in cnn.parameters())
    v = torch.randn(p, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = fisher_sensitivity(cnn, x, unflatten(cnn, v), normalized=False, reduction="full")
    for i in range(x.shape[0]):
        assert rel_err(ours[i], naive_fis(cnn, x[i], v, "full")) < 1e-9


@pytest.mark.parametrize("reduction", ["full", "two_class"])
def test_fis_finite_difference_is_first_order(mlp, xs, reduction):
    exact = fisher_sensitivity(mlp, xs, reduction=reduction)
    errs = [rel_err(fisher_sensitivity(mlp, xs, reduction=reduction, method="finite_difference", fd_eps=e), exact)
            for e in (1e-3, 1e-4)]
    assert errs[0] < 50 * 1e-3 and errs[1] < 50 * 1e-4
    assert 3 < errs[0] / errs[1] < 30


def test_fis_scales_with_norm_of_v(mlp, xs):
    """Normalising v only rescales each map by 1/‖v‖²."""
    v = param_direction(mlp, xs)
    norm2 = sum(t.flatten(1).pow(2).sum(1) for t in v.values())
    raw = fisher_sensitivity(mlp, xs, normalized=False)
    unit = fisher_sensitivity(mlp, xs, normalized=True)
    torch.testing.assert_close(unit, raw / norm2.reshape(-1, 1), rtol=1e-10, atol=1e-18)


# -------------------------------------------------- batching, side effects, errors

FUNCS = {
    "trace_full": lambda m, x, **kw: param_fisher_trace(m, x, "full", **kw),
    "trace_two_class": lambda m, x, **kw: param_fisher_trace(m, x, "two_class", **kw),
    "form_jvp": lambda m, x, **kw: param_fisher_form(m, x, **kw),
    "form_fd_normalized": lambda m, x, **kw: param_fisher_form(m, x, normalized=True, method="finite_difference", **kw),
    "fis_two_class": lambda m, x, **kw: fisher_sensitivity(m, x, **kw),
    "fis_full": lambda m, x, **kw: fisher_sensitivity(m, x, reduction="full", **kw),
}


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_batched_equals_per_sample_and_chunks(cnn, ximg, name):
    fn = FUNCS[name]
    batched = fn(cnn, ximg)
    chunked = fn(cnn, ximg, chunk_size=2)
    # The finite-difference form divides a difference of two O(1) numbers by eps' = 1e-4,
    # so a different summation order (another chunking, another BLAS kernel) moves it by
    # about machine-eps / eps' ~ 2e-12 relative; the exact methods agree to 1e-12.
    rtol = 1e-10 if "fd" in name else 1e-12
    torch.testing.assert_close(chunked, batched, rtol=rtol, atol=1e-15)
    for i in range(ximg.shape[0]):
        torch.testing.assert_close(fn(cnn, ximg[i : i + 1])[0], batched[i], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_no_side_effects(name):
    model = tiny_cnn(c=1, side=4, k=3, seed=3)
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x0 = x.clone()
    state0 = {k: v.clone() for k, v in model.state_dict().items()}
    sentinel = {n: torch.full_like(p, 3.0) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = sentinel[n].clone()
    model.train()
    model[1].eval()  # a mixed state: every module's own flag must come back
    modes = [m.training for m in model.modules()]
    with pytest.warns(ModelModeWarning):
        FUNCS[name](model, x)
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(x, x0) and x.grad is None and not x.requires_grad
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, sentinel[n])
    for k, v in model.state_dict().items():
        assert torch.equal(v, state0[k])


def test_float32_model_on_trained_style_cnn_runs():
    model = tiny_cnn(c=1, side=8, k=5, dtype=torch.float32, seed=0)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for name, fn in FUNCS.items():
        out = fn(model, x)
        assert out.dtype == torch.float32 and bool(torch.isfinite(out).all()), name


def test_zero_direction_gives_nan_and_warns(mlp, xs):
    v = {n: torch.zeros_like(p) for n, p in mlp.named_parameters()}
    with pytest.warns(RuntimeWarning, match="zero vector for samples"):
        out = param_fisher_form(mlp, xs, v, normalized=True)
    assert bool(torch.isnan(out).all())
    assert bool((param_fisher_form(mlp, xs, v) == 0).all())


def test_bad_inputs_rejected(mlp, xs):
    with pytest.raises(ValueError, match="outside bounds"):
        param_fisher_trace(mlp, xs + 2)
    bad = xs.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        param_fisher_form(mlp, bad)
    with pytest.raises(ValueError, match="must have shape"):
        fisher_sensitivity(mlp, xs[0])
    with pytest.raises(TypeError, match="floating-point"):
        param_fisher_trace(mlp, (xs * 255).to(torch.uint8))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        param_fisher_trace(lambda t: mlp(t), xs)
    with pytest.raises(ValueError, match="looks like probabilities"):
        param_fisher_trace(nn.Sequential(mlp, nn.Softmax(dim=1)).eval(), xs)
    with pytest.raises(ValueError, match="reduction must be one of"):
        param_fisher_trace(mlp, xs, reduction="two-class")
    with pytest.raises(ValueError, match="method must be one of"):
        param_fisher_form(mlp, xs, method="fd")
    with pytest.raises(ValueError, match="fd_eps must be a finite number > 0"):
        param_fisher_form(mlp, xs, method="finite_difference", fd_eps=0.0)
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        param_fisher_form(mlp, xs, scale=-1.0)
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        fisher_sensitivity(mlp, xs, chunk_size=0)
    with pytest.raises(TypeError, match="v must be a mapping"):
        param_fisher_form(mlp, xs, torch.zeros(3))
    v = {n: torch.zeros_like(p) for n, p in mlp.named_parameters()}
    first = next(iter(v))
    with pytest.raises(ValueError, match="missing"):
        param_fisher_form(mlp, xs, {k: t for k, t in v.items() if k != first})
    with pytest.raises(ValueError, match=r"must have shape \(4, "):
        param_fisher_form(mlp, xs, {**v, first: torch.zeros(2, *v[first].shape, dtype=torch.float64)})
    frozen = tiny_mlp(d=6, k=4, hidden=5)
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters with requires_grad=True"):
        param_fisher_trace(frozen, xs)


def test_frozen_parameters_are_excluded(mlp, xs):
    """Only requires_grad parameters count: freezing the first layer drops its terms."""
    model = tiny_mlp(d=6, k=4, hidden=5, seed=1)
    model[1].weight.requires_grad_(False)
    model[1].bias.requires_grad_(False)
    ours = param_fisher_trace(model, xs)
    ref = []
    for i in range(xs.shape[0]):
        p, g = naive_class_grads(model, xs[i])  # _params skips frozen tensors
        ref.append((p * g.pow(2).sum(1)).sum())
    torch.testing.assert_close(ours, torch.stack(ref), rtol=1e-10, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fisher_sensitivity(model, xs)


# ------------------------------------------------- factored nn.Linear layers


class _Reuse(nn.Module):
    """Linear layers the factored path must not take: tied, called twice, functional reuse, 3-D input."""

    def __init__(self, kind: str):
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.kind = kind
        self.a = nn.Linear(6, 6).double()
        self.b = nn.Linear(6, 4).double()
        if kind == "tied":
            self.c = nn.Linear(6, 6).double()
            self.c.weight = self.a.weight
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        if self.kind == "tied":
            h = torch.tanh(self.c(h))
        elif self.kind == "twice":
            h = torch.tanh(self.a(h))
        elif self.kind == "functional":
            h = torch.tanh(torch.nn.functional.linear(h, self.a.weight))
        elif self.kind == "3d":
            h = torch.tanh(self.a(h.reshape(-1, 2, 3).repeat(1, 1, 2))).sum(1)
        elif self.kind == "rows":  # 2-D input, but two rows per sample
            n = h.shape[0]
            h = torch.tanh(self.a(h.reshape(-1, 3).repeat(1, 2))).reshape(n, 2, 6).sum(1)
        return self.b(h)


@pytest.mark.parametrize("kind", ["tied", "twice", "functional", "3d", "rows"])
def test_factoring_skips_reused_linear_layers(kind, xs):
    from fisherscope.fisher.parameter_space import _prepare

    model = _Reuse(kind).eval()
    net, _, _ = _prepare(model, xs, (0.0, 1.0))
    assert net.plan is None  # layer "a" is reused: the whole-model path, nn.Linear factored where it can
    assert "a" not in net.lins and "b" in net.lins
    ref_t = torch.stack([torch.trace(naive_fisher(model, xs[i])) for i in range(xs.shape[0])])
    assert rel_err(param_fisher_trace(model, xs), ref_t) < 1e-10
    ref_f = []
    for i in range(xs.shape[0]):
        v = naive_direction(model, xs[i])
        ref_f.append(v @ naive_fisher(model, xs[i]) @ v / (v @ v))
    assert rel_err(param_fisher_form(model, xs, normalized=True), torch.stack(ref_f)) < 1e-10
    v = naive_direction(model, xs[0]).detach()
    assert rel_err(fisher_sensitivity(model, xs[:1], normalized=False, reduction="full")[0],
                   naive_fis(model, xs[0], v, "full")) < 1e-9


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_factored_equals_generic_path(monkeypatch, mlp, xs, name):
    import fisherscope.fisher.parameter_space as ps

    factored = FUNCS[name](mlp, xs)
    monkeypatch.setattr(ps, "FACTOR_LAYERS", False)
    linear_only = FUNCS[name](mlp, xs)  # the whole-model vmap path, nn.Linear factored
    monkeypatch.setattr(ps, "FACTOR_LINEAR", False)
    generic = FUNCS[name](mlp, xs)
    torch.testing.assert_close(factored, generic, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(linear_only, generic, rtol=1e-10, atol=1e-14)


def test_factoring_leaves_no_hooks(mlp, xs):
    fisher_sensitivity(mlp, xs)
    param_fisher_trace(mlp, xs)
    assert all(not m._forward_hooks for m in mlp.modules())
    assert not torch._C._is_torch_function_mode_enabled()
