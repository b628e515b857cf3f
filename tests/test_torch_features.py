"""The differentiable torch mirrors of the features (fisherscope.features.TORCH_FEATURES).

Oracle: each mirror equals the numpy feature it mirrors (float64 models, tight tolerance),
and its gradient in x is finite, not identically zero, and passes gradcheck where cheap.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from _models import tiny_cnn, tiny_mlp
from fisherscope import features as F
from fisherscope.features import FEATURES, TORCH_FEATURES
from fisherscope.fisher import (
    differentiable_eigenvalues,
    differentiable_param_fisher,
    fisher_spectrum,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _x(shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _dropout_mlp(d=12, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, k))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.8)
    return net.double().eval()


def _grad_ok(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(t.sum(), x, retain_graph=True)
    assert torch.isfinite(g).all()
    assert g.abs().sum() > 0
    return g


def test_every_feature_has_a_mirror():
    assert set(TORCH_FEATURES) == set(FEATURES)


@pytest.mark.parametrize("net, x", [(tiny_mlp(d=12, k=5), _x((6, 12))), (tiny_cnn(), _x((4, 1, 8, 8)))])
def test_eigenvalues_equal_the_exact_spectrum_and_have_gradients(net, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = F.fisher_eigenvalues(net, x, k=8)
    xr = x.clone().requires_grad_(True)
    got = TORCH_FEATURES["fisher_eigenvalues"](net, xr, k=8)
    assert got.shape == ref.shape and got.dtype == torch.float64
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-10, atol=1e-12 * ref.max())
    assert (got[:, net(x).shape[1] - 1:] == 0).all()  # past K - 1: exact zeros
    _grad_ok(got, xr)
    xs = x[:2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: differentiable_eigenvalues(net, a), (xs,))


def test_eigenvalue_gradient_matches_a_finite_difference_of_the_exact_spectrum():
    net, x = tiny_mlp(d=12, k=5, seed=3), _x((3, 12), seed=3)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(differentiable_eigenvalues(net, xr)[:, 0].sum(), xr)
    h = 1e-6
    fd = (fisher_spectrum(net, x + h * v).eigenvalues[:, 0] - fisher_spectrum(net, x - h * v).eigenvalues[:, 0]) / (2 * h)
    np.testing.assert_allclose((g * v).sum(1).numpy(), fd.numpy(), rtol=1e-6)


def test_iterative_spectra_have_no_mirror():
    with pytest.raises(ValueError, match="exact spectrum only"):
        TORCH_FEATURES["fisher_eigenvalues"](tiny_mlp(), _x((2, 12)), method="lanczos")


@pytest.mark.parametrize("reduction", ["full", "two_class"])
def test_param_fisher_scores_equal_the_numpy_feature(reduction):
    for net, x in ((tiny_mlp(d=12, k=5), _x((5, 12))), (tiny_cnn(), _x((3, 1, 8, 8)))):
        ref = F.param_fisher_scores(net, x, reduction=reduction)
        xr = x.clone().requires_grad_(True)
        got = TORCH_FEATURES["param_fisher_scores"](net, xr, reduction=reduction)
        np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-10, atol=1e-13)
        _grad_ok(got[:, 0], xr)
        _grad_ok(got[:, 2], xr)


def test_param_fisher_gradcheck():
    net, x = tiny_mlp(d=6, k=4, hidden=5), _x((2, 6)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: differentiable_param_fisher(net, a), (x,))
    assert torch.autograd.gradcheck(lambda a: differentiable_param_fisher(net, a, reduction="two_class"), (x,))


def test_hidden_layer_features_equal_the_numpy_ones():
    net, x = tiny_cnn(), _x((5, 1, 8, 8))
    xr = x.clone().requires_grad_(True)
    for name, kw in (("penultimate", {}), ("penultimate", {"with_prediction": False}),
                     ("layer_activations", {}), ("layer_activations", {"with_prediction": True, "pool": "mean"})):
        ref = FEATURES[name](net, x, **kw)
        got = TORCH_FEATURES[name](net, xr, **kw)
        np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-12, atol=1e-14)
        _grad_ok(got[:, 1:], xr)
    assert torch.autograd.gradcheck(lambda a: TORCH_FEATURES["penultimate"](net, a)[:, 1:], (x[:2].clone().requires_grad_(True),))


def test_mc_dropout_uses_the_same_masks_and_has_gradients():
    net, x = _dropout_mlp(), _x((7, 12))
    ref = F.mc_dropout(net, x, n=6, generator=torch.Generator().manual_seed(5), with_mean_probs=True, batch_size=4)
    xr = x.clone().requires_grad_(True)
    got = TORCH_FEATURES["mc_dropout"](net, xr, n=6, generator=torch.Generator().manual_seed(5),
                                       with_mean_probs=True, batch_size=4)
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-12, atol=1e-15)
    _grad_ok(got[:, 0], xr)
    assert not any(m.training for m in net.modules())  # modes restored
    kdbu = F.kdbu_features(net, x, n=6, generator=torch.Generator().manual_seed(2))
    got = TORCH_FEATURES["kdbu_features"](net, x, n=6, generator=torch.Generator().manual_seed(2))
    np.testing.assert_allclose(got.detach().numpy(), kdbu, rtol=1e-12, atol=1e-15)


def test_closed_form_features_equal_the_numpy_ones():
    from fisherscope.models import build_model

    net, x = tiny_mlp(d=12, k=5), _x((6, 12))
    xr = x.clone().requires_grad_(True)
    got = TORCH_FEATURES["softmax_stats"](net, xr)
    np.testing.assert_allclose(got.detach().numpy(), F.softmax_stats(net, x), rtol=1e-12, atol=1e-15)
    _grad_ok(got[:, 0], xr)
    np.testing.assert_array_equal(TORCH_FEATURES["pixels"](x).numpy(), F.pixels(x))
    hg = build_model("hg_mlp", input_size=8).double().eval()
    xi = _x((4, 1, 8, 8)).requires_grad_(True)
    got = TORCH_FEATURES["reconstruction_error"](hg, xi, kind="all")
    np.testing.assert_allclose(got.detach().numpy(), F.reconstruction_error(hg, xi.detach(), kind="all"),
                               rtol=1e-12, atol=1e-15)
    _grad_ok(got[:, 1], xi)


def test_confident_softmax_stats_keep_their_precision():
    z = torch.tensor([[0.0, -200.0, -210.0]], dtype=torch.float64, requires_grad=True)
    got = F.torch_features.torch_softmax_stats_from_logits(z)
    np.testing.assert_allclose(got.detach().numpy(), F.softmax_stats_from_logits(z.detach()), rtol=1e-12)
    assert got[0, 2] > 0  # entropy ≈ 2.8e-85, not 0
