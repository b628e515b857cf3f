"""Saliency maps against hand-written backward passes of small MLPs (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fisherscope import ModelModeWarning
from fisherscope.saliency import (
    UnmodifiedActivationWarning,
    gradient,
    guided_backprop,
    hendrycks_saliency,
)


def _weights(seed: int = 0, d: int = 7, h1: int = 9, h2: int = 8, k: int = 4):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(h1, d, generator=g, dtype=torch.float64), torch.randn(h1, generator=g, dtype=torch.float64) * 0.3),
        (torch.randn(h2, h1, generator=g, dtype=torch.float64) * 0.5, torch.randn(h2, generator=g, dtype=torch.float64) * 0.3),
        (torch.randn(k, h2, generator=g, dtype=torch.float64) * 0.5, torch.randn(k, generator=g, dtype=torch.float64) * 0.3),
    ]


class MLP(nn.Module):
    """Linear - act - Linear - act - Linear, with the activation as a module or a function."""

    def __init__(self, weights, act: str = "module"):
        super().__init__()
        self.lins = nn.ModuleList()
        for w, b in weights:
            lin = nn.Linear(w.shape[1], w.shape[0]).double()
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(b)
            self.lins.append(lin)
        self.act = act
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU(inplace=True)
        self.gelu1, self.gelu2 = nn.GELU(), nn.GELU(approximate="tanh")

    def forward(self, x):
        h = self.lins[0](x.flatten(1))
        if self.act == "module":
            h = self.lins[1](self.relu1(h))
            h = self.relu2(h)
        elif self.act == "functional":
            h = self.lins[1](F.relu(h))
            h = (h * 1.0).relu_()  # in-place Tensor.relu_
        elif self.act == "method":
            h = self.lins[1](h.relu())
            h = torch.relu_(torch.relu(h) * 1.0)  # torch.relu, then in-place torch.relu_ (idempotent)
        elif self.act == "gelu":
            h = self.lins[1](self.gelu1(h))
            h = self.gelu2(h)
        return self.lins[2](h)


def _gelu_prime(t, approximate):
    t = t.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.gelu(t, approximate=approximate).sum(), t)
    return g


def manual_map(weights, x, y, rule: str) -> torch.Tensor:
    """Explicit backward pass of the 3-layer MLP for one rule, per sample."""
    (w1, b1), (w2, b2), (w3, _) = weights
    out = []
    for i in range(x.shape[0]):
        a1 = w1 @ x[i].flatten() + b1
        a2 = w2 @ torch.relu(a1) + b2
        r = w3[y[i]].clone()  # ∂z_y / ∂(second activation output)
        for pre, w in ((a2, w2), (a1, w1)):
            if rule == "gradient":
                r = (pre > 0).double() * r
            elif rule == "guided":
                r = (pre > 0).double() * (r > 0).double() * r
            elif rule == "hendrycks":
                r = ((pre > 0) & (r > 0)).double()
            r = w.T @ r
        out.append(r.reshape(x.shape[1:]))
    return torch.stack(out)


def manual_gelu_hendrycks(weights, x, y) -> torch.Tensor:
    (w1, b1), (w2, b2), (w3, _) = weights
    out = []
    for i in range(x.shape[0]):
        a1 = w1 @ x[i].flatten() + b1
        a2 = w2 @ F.gelu(a1) + b2
        r = w3[y[i]].clone()
        r = _gelu_prime(a2, "tanh") * _gelu_prime(r, "tanh")  # second GELU is the tanh form
        r = w2.T @ r
        r = _gelu_prime(a1, "none") * _gelu_prime(r, "none")
        out.append((w1.T @ r).reshape(x.shape[1:]))
    return torch.stack(out)


@pytest.fixture(scope="module")
def data():
    weights = _weights()
    x = torch.rand(5, 1, 7, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return weights, x


@pytest.mark.parametrize("act", ["module", "functional", "method"])
@pytest.mark.parametrize("rule", ["gradient", "guided", "hendrycks"])
def test_maps_match_explicit_backward(data, act, rule):
    weights, x = data
    model = MLP(weights, act).eval()
    y = torch.tensor([0, 1, 2, 3, 1])
    fn = {"gradient": gradient, "guided": guided_backprop, "hendrycks": hendrycks_saliency}[rule]
    got = fn(model, x, y)
    assert got.shape == x.shape and got.dtype == x.dtype
    torch.testing.assert_close(got, manual_map(weights, x, y, rule), rtol=1e-12, atol=1e-12)


def test_guided_and_hendrycks_differ_from_gradient(data):
    weights, x = data
    model = MLP(weights).eval()
    g, gb, h = gradient(model, x), guided_backprop(model, x), hendrycks_saliency(model, x)
    assert not torch.allclose(g, gb) and not torch.allclose(gb, h)


def test_default_target_is_prediction_and_int_target(data):
    weights, x = data
    model = MLP(weights).eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    torch.testing.assert_close(guided_backprop(model, x), guided_backprop(model, x, pred))
    torch.testing.assert_close(gradient(model, x, 2), gradient(model, x, torch.full((5,), 2)))
    torch.testing.assert_close(gradient(model, x, absolute=True), gradient(model, x).abs())


def test_gelu_hendrycks_footnote_rule(data):
    weights, x = data
    model = MLP(weights, "gelu").eval()
    y = torch.tensor([3, 2, 1, 0, 0])
    got = hendrycks_saliency(model, x, y)
    torch.testing.assert_close(got, manual_gelu_hendrycks(weights, x, y), rtol=1e-10, atol=1e-12)


def test_guided_backprop_on_gelu_warns_and_equals_gradient(data):
    weights, x = data
    model = MLP(weights, "gelu").eval()
    with pytest.warns(UnmodifiedActivationWarning) as record:
        gb = guided_backprop(model, x)
    messages = [str(w.message) for w in record]
    assert any("gelu (2x)" in m and "hendrycks_saliency has a rule for GELU" in m for m in messages)
    assert any("equals the plain gradient" in m for m in messages)
    torch.testing.assert_close(gb, gradient(model, x))


def test_other_activations_named():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.ELU(), nn.Linear(5, 3)).eval()
    x = torch.rand(2, 4)
    with pytest.warns(UnmodifiedActivationWarning, match=r"elu \(1x\)"):
        hendrycks_saliency(model, x)


def test_batched_equals_per_sample(data):
    weights, x = data
    model = MLP(weights).eval()
    for fn in (gradient, guided_backprop, hendrycks_saliency):
        full = fn(model, x)
        for i in range(x.shape[0]):
            torch.testing.assert_close(fn(model, x[i : i + 1])[0], full[i])


@pytest.mark.parametrize("fn", [gradient, guided_backprop, hendrycks_saliency])
def test_no_side_effects(data, fn):
    weights, x = data
    model = MLP(weights)
    model.train()
    x0 = x.clone()
    sentinel = {n: torch.full_like(p, 5.0) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = sentinel[n].clone()
    with pytest.warns(ModelModeWarning):
        fn(model, x)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(x, x0) and x.grad is None and not x.requires_grad
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, sentinel[n])


class _Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.fail = True

    def forward(self, x):
        h = F.relu(self.lin(x))
        if self.fail:
            raise RuntimeError("boom")
        return h


def test_rules_removed_even_on_error():
    model = _Raises().eval()
    x = torch.rand(2, 3)
    for fn in (guided_backprop, hendrycks_saliency):
        with pytest.raises(RuntimeError, match="boom"):
            fn(model, x)
        assert not torch._C._is_torch_function_mode_enabled()
    # ReLU backward is the ordinary one again
    model.fail = False
    t = torch.tensor([[-1.0, 0.5, 2.0]], requires_grad=True)
    (g,) = torch.autograd.grad(F.relu(t).mul(torch.tensor([[1.0, -3.0, 2.0]])).sum(), t)
    assert torch.equal(g, torch.tensor([[0.0, -3.0, 2.0]]))
    assert not model._forward_hooks and not model._backward_hooks


def test_bad_inputs_rejected(data):
    weights, x = data
    model = MLP(weights).eval()
    with pytest.raises(ValueError, match="outside bounds"):
        gradient(model, x + 2)
    with pytest.raises(ValueError, match="class index in"):
        guided_backprop(model, x, 7)
    with pytest.raises(ValueError, match=r"values in \[0, 4\)"):
        hendrycks_saliency(model, x, torch.tensor([0, 1, 2, 3, 9]))
    with pytest.raises(ValueError, match="5 samples"):
        gradient(model, x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="looks like probabilities"):
        gradient(nn.Sequential(model, nn.Softmax(dim=1)).eval(), x)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        gradient(42, x)  # type: ignore[arg-type]
    assert math.isfinite(float(gradient(model, x).sum()))


def test_map_figures_render_images_as_seen():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fisherscope.plotting_maps import fis_figure, map_overlay, saliency_figure

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 6, 6, generator=g)
    xa = (x + 0.1 * torch.randn(2, 1, 6, 6, generator=g)).clamp(0, 1)
    fa, fc = torch.randn(2, 1, 6, 6, generator=g), 1e-3 * torch.randn(2, 1, 6, 6, generator=g)
    for shared in (True, False):
        fig = fis_figure(xa, fa, x, fc, shared_scale=shared, row_titles=["a", "b"])
        overlays = [im for ax in fig.axes for im in ax.get_images() if im.get_alpha() is not None]
        tops = [im.get_clim()[1] for im in overlays]  # adv, clean, adv, clean
        assert math.isclose(tops[0], float(fa[0].abs().max()), rel_tol=1e-6)
        if shared:
            assert tops[1] == tops[0]
        else:
            assert math.isclose(tops[1], float(fc[0].abs().max()), rel_tol=1e-6)
        # images are drawn on the fixed range [0, 1], never rescaled
        grey = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == "gray"]
        assert grey and all(im.get_clim() == (0.0, 1.0) for im in grey)
        plt.close(fig)
    fig = saliency_figure(list(x), {"gradient": list(fa), "FIS": list(fc)})
    plt.close(fig)
    with pytest.raises(ValueError, match="outside"):
        fis_figure(xa + 0.5, fa, x, fc, shared_scale=True)
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="hide the perturbation"):
        map_overlay(ax, x[0] - 0.2, fa[0])
    plt.close(fig)
