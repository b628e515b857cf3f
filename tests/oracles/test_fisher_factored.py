"""The factored, batched parameter-space path (``fisherscope.fisher._factored``) against float64 oracles.

Convolutions (stride, padding — zeros, reflect, circular, "same" —, dilation, groups, with
and without bias, Conv1d), BatchNorm in eval mode, linear layers with one or several rows
per sample, and modules only the local generic path knows (GroupNorm, a custom module):
trace, form, FIS and the default direction against the naive per-sample loops of
``test_param_fisher.py`` (dense F_θ, D × P mixed derivatives), for both per-layer norm
forms (ghost and materialised) and both ways of running the backward passes (loop, vmap).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_param_fisher import naive_direction, naive_fis, naive_fisher, rel_err  # noqa: E402

import fisherscope.fisher._factored as fa  # noqa: E402
import fisherscope.fisher.parameter_space as ps  # noqa: E402
from fisherscope.fisher import (  # noqa: E402
    fisher_sensitivity,
    param_direction,
    param_fisher_form,
    param_fisher_trace,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _init(net: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.6)
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.double().eval()


class _Custom(nn.Module):
    """A module the factored path does not know: a per-channel scale and shift of tanh."""

    def __init__(self, c: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(c, 1, 1))
        self.shift = nn.Parameter(torch.zeros(c, 1, 1))

    def forward(self, x):
        return torch.tanh(x * self.scale) + self.shift


class _Rows(nn.Module):
    """Linear layers applied to several rows per sample: (N, T, in)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 2, stride=2)
        self.row = nn.Linear(3, 4)
        self.head = nn.Linear(4 * 4, 3)

    def forward(self, x):
        h = torch.tanh(self.conv(x))  # (N, 3, 2, 2)
        h = torch.tanh(self.row(h.flatten(2).transpose(1, 2)))  # (N, 4 rows, 4)
        return self.head(h.flatten(1))


def conv_net(variant: str) -> nn.Module:
    """Small conv nets on 2 × 6 × 6 inputs (1 × 4 × 4 for ``rows``), 4 classes."""
    if variant == "strided_bn":
        layers = [nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ELU(),
                  nn.Conv2d(4, 4, 2, bias=False), nn.Tanh(), nn.Flatten(), nn.Linear(16, 4)]
    elif variant == "dilated_groups":
        layers = [nn.Conv2d(2, 4, 3, padding=2, dilation=2, groups=2), nn.Tanh(),
                  nn.Conv2d(4, 4, 3, groups=4, bias=False), nn.BatchNorm2d(4), nn.ELU(), nn.MaxPool2d(2),
                  nn.Flatten(), nn.Linear(16, 4)]
    elif variant == "padding_modes":
        layers = [nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), nn.Tanh(),
                  nn.Conv2d(3, 3, 2, padding="same", padding_mode="circular"), nn.ELU(),
                  nn.Conv2d(3, 2, (3, 2), stride=(1, 2), padding=(1, 0)), nn.Tanh(),
                  nn.Flatten(), nn.Linear(2 * 6 * 3, 4)]
    elif variant == "conv1d_bn1d":
        class Net1d(nn.Module):
            def __init__(self):
                super().__init__()
                self.c1 = nn.Conv1d(12, 3, 3, padding=1, stride=2)
                self.bn = nn.BatchNorm1d(3)
                self.c2 = nn.Conv1d(3, 2, 2, dilation=2, padding="same")
                self.lin = nn.Linear(2 * 3, 5)
                self.bn2 = nn.BatchNorm1d(5)
                self.out = nn.Linear(5, 4)

            def forward(self, x):  # (N, 2, 6, 6) read as 12 channels of length 6
                h = torch.tanh(self.bn(self.c1(x.reshape(x.shape[0], 12, 6))))
                h = torch.tanh(self.c2(h)).flatten(1)
                return self.out(torch.tanh(self.bn2(self.lin(h))))

        return Net1d()
    elif variant == "generic":
        # (nn.GroupNorm, not nn.LayerNorm: in torch 2.13 the mixed second derivatives of
        # layer_norm / instance_norm that the FIS needs disagree with finite differences)
        layers = [nn.Conv2d(2, 3, 3), _Custom(3), nn.GroupNorm(1, 3), nn.Flatten(), nn.Linear(48, 4)]
    elif variant == "rows":
        return _Rows()
    else:
        raise ValueError(variant)
    return nn.Sequential(*layers)


VARIANTS = ["strided_bn", "dilated_groups", "padding_modes", "conv1d_bn1d", "generic", "rows"]


def _model(variant: str) -> nn.Module:
    return _init(conv_net(variant), seed=VARIANTS.index(variant))


def _x(variant: str, n: int = 3) -> torch.Tensor:
    shape = (1, 4, 4) if variant == "rows" else (2, 6, 6)
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.fixture(params=["ghost", "materialize", "auto"])
def norm_form(request, monkeypatch):
    monkeypatch.setattr(fa, "CONV_NORM", request.param)
    return request.param


@pytest.fixture(params=["loop", "vmap"])
def strategy(request, monkeypatch):
    monkeypatch.setattr(ps, "VJP_STRATEGY", request.param)
    return request.param


def _plan(model, x):
    net, _, _ = ps._prepare(model, x, (0.0, 1.0))
    return net.plan


def test_units_are_the_expected_kinds():
    kinds = {v: [u.kind for u in _plan(_model(v), _x(v)).units] for v in VARIANTS}
    assert kinds["strided_bn"] == ["matrix", "batchnorm", "matrix", "matrix"]
    assert kinds["conv1d_bn1d"] == ["matrix", "batchnorm", "matrix", "matrix", "batchnorm", "matrix"]
    assert kinds["generic"] == ["matrix", "generic", "generic", "matrix"]
    assert kinds["rows"] == ["matrix", "matrix", "matrix"]
    rows = _plan(_model("rows"), _x("rows")).units[1]
    assert rows.t == 4 and rows.d_in == 3  # four rows per sample


def test_auto_picks_the_cheaper_norm_per_layer():
    # first conv of an image net: few input channels, many positions -> materialised;
    # a deep conv on a small map -> ghost; nn.Linear on (N, in) -> ghost (the outer product)
    net = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(8),
                        nn.Conv2d(64, 256, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256 * 16, 10)).eval()
    plan = _plan(net, torch.rand(2, 3, 32, 32))
    plan.prepare(9, tangent=False)
    assert [u.mode for u in plan.units] == ["materialize", "ghost", "ghost"]


# ------------------------------------------------------------------------ oracles


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reduction", ["full", "two_class"])
def test_trace_matches_dense_oracle(variant, reduction, norm_form, strategy):
    model, x = _model(variant), _x(variant)
    assert _plan(model, x) is not None
    ours = param_fisher_trace(model, x, reduction)
    ref = torch.stack([torch.trace(naive_fisher(model, x[i], reduction)) for i in range(x.shape[0])])
    assert ours.dtype == torch.float64
    assert float(((ours - ref).abs() / ref.abs()).max()) <= 1e-10


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reduction", ["full", "two_class"])
def test_form_matches_dense_oracle(variant, reduction, norm_form):
    model, x = _model(variant), _x(variant)
    for normalized in (False, True):
        ours = param_fisher_form(model, x, normalized=normalized, reduction=reduction, scale=0.5)
        ref = []
        for i in range(x.shape[0]):
            v = naive_direction(model, x[i])
            v = v / v.norm() if normalized else 0.5 * v
            ref.append(v @ naive_fisher(model, x[i], reduction) @ v)
        assert rel_err(ours, torch.stack(ref)) < 1e-10, normalized


@pytest.mark.parametrize("variant", VARIANTS)
def test_form_finite_difference_matches_generic_path(variant, monkeypatch):
    """Same eq. 9 (θ + ε′v over the whole v, exact shifts per layer) as the whole-model path."""
    model, x = _model(variant), _x(variant)
    kw = dict(normalized=True, method="finite_difference", fd_eps=1e-4)
    ours = param_fisher_form(model, x, **kw)
    monkeypatch.setattr(ps, "FACTOR_LAYERS", False)
    generic = param_fisher_form(model, x, **kw)
    torch.testing.assert_close(ours, generic, rtol=1e-8, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_direction_matches_naive(variant, norm_form):
    model, x = _model(variant), _x(variant)
    v = param_direction(model, x, scale=0.5)
    assert list(v) == [n for n, _ in model.named_parameters()]
    flat = torch.cat([t.flatten(1) for t in v.values()], 1)
    ref = torch.stack([0.5 * naive_direction(model, x[i]) for i in range(x.shape[0])])
    torch.testing.assert_close(flat, ref, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("variant", ["strided_bn", "dilated_groups", "padding_modes", "generic", "rows"])
@pytest.mark.parametrize("reduction", ["full", "two_class"])
def test_fis_matches_mixed_derivative_oracle(variant, reduction, norm_form, strategy):
    model, x = _model(variant), _x(variant, n=2)
    if norm_form == "auto" and reduction == "full" and strategy == "vmap":
        pytest.skip("covered by the other combinations")  # the D × P oracle is the slow part
    ours = fisher_sensitivity(model, x, normalized=False, reduction=reduction)
    assert ours.shape == x.shape
    for i in range(x.shape[0]):
        v = naive_direction(model, x[i]).detach()
        assert rel_err(ours[i], naive_fis(model, x[i], v, reduction)) < 1e-9


def test_fis_finite_difference_matches_generic_path(monkeypatch):
    model, x = _model("dilated_groups"), _x("dilated_groups", n=2)
    kw = dict(method="finite_difference", fd_eps=1e-4, reduction="full")
    ours = fisher_sensitivity(model, x, **kw)
    monkeypatch.setattr(ps, "FACTOR_LAYERS", False)
    torch.testing.assert_close(ours, fisher_sensitivity(model, x, **kw), rtol=1e-7, atol=1e-12)


# ----------------------------------------------------- chunks, fallback, float32


@pytest.mark.parametrize("variant", ["strided_bn", "generic"])
def test_chunks_and_single_samples_agree(variant):
    model, x = _model(variant), _x(variant, n=5)
    for fn in (lambda **kw: param_fisher_trace(model, x, **kw), lambda **kw: param_fisher_form(model, x, **kw),
               lambda **kw: fisher_sensitivity(model, x, **kw)):
        torch.testing.assert_close(fn(chunk_size=2), fn(), rtol=1e-12, atol=1e-15)
    one = torch.stack([param_fisher_trace(model, x[i : i + 1])[0] for i in range(5)])
    torch.testing.assert_close(one, param_fisher_trace(model, x), rtol=1e-12, atol=0)


class _Shared(nn.Module):
    """Models the factored path must leave to the whole-model vmap path."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.lin = nn.Linear(2 * 6 * 6, 4)
        if kind == "parent":  # a parameter of the model itself next to its submodules' ones
            self.extra = nn.Parameter(torch.ones(4))
        if kind == "tied":
            self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
            self.conv2.weight = self.conv.weight

    def forward(self, x):
        h = torch.tanh(self.conv(x))
        if self.kind == "twice":
            h = torch.tanh(self.conv(h))
        elif self.kind == "tied":
            h = torch.tanh(self.conv2(h))
        elif self.kind == "functional":
            h = torch.tanh(torch.nn.functional.conv2d(h, self.conv.weight, padding=1))
        z = self.lin(h.flatten(1))
        return z * self.extra if self.kind == "parent" else z


@pytest.mark.parametrize("kind", ["twice", "tied", "functional", "parent"])
def test_fallback_to_whole_model_path(kind):
    model = _init(_Shared(kind), seed=3)
    x = _x("strided_bn")
    assert _plan(model, x) is None
    ref = torch.stack([torch.trace(naive_fisher(model, x[i])) for i in range(x.shape[0])])
    assert rel_err(param_fisher_trace(model, x), ref) < 1e-10


def test_float32_factored_equals_generic_path(monkeypatch):
    """The paper nets' layer types in float32: factored and whole-model vmap paths agree."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 10)).eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 1.5, generator=g)
    x = torch.rand(4, 3, 8, 8, generator=g)
    fns = {"trace": lambda: param_fisher_trace(model, x), "two_class": lambda: param_fisher_trace(model, x, "two_class"),
           "form": lambda: param_fisher_form(model, x, normalized=True), "fis": lambda: fisher_sensitivity(model, x)}
    ours = {k: f() for k, f in fns.items()}
    monkeypatch.setattr(ps, "FACTOR_LAYERS", False)
    for k, f in fns.items():
        assert ours[k].dtype == torch.float32
        assert rel_err(ours[k], f()) < 1e-4, k


def test_no_hooks_left_and_no_side_effects():
    model = _model("generic")
    x = _x("generic")
    x0, state0 = x.clone(), {k: v.clone() for k, v in model.state_dict().items()}
    param_fisher_trace(model, x)
    param_fisher_form(model, x)
    fisher_sensitivity(model, x, method="finite_difference")
    param_direction(model, x)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not torch._C._is_torch_function_mode_enabled()
    assert torch.equal(x, x0) and all(torch.equal(v, state0[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_strategy_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert fa.choose_strategy(9, 20, 1e7, cpu, "loop") == "loop"
    assert fa.choose_strategy(9, 20, 1e7, cpu, "vmap") == "vmap"
    assert fa.choose_strategy(1, 4, 1e7, cpu, "auto") == "loop"  # one row: nothing to vmap
    assert fa.choose_strategy(9, 64, 1e9, cuda, "auto") == "vmap"
    # CPU: small batches vmap, batches of 20 and more loop (mnist_cnn ~1e7, vgg_small ~2e8 MACs)
    for macs in (1.2e7, 1.9e8):
        assert [fa.choose_strategy(9, n, macs, cpu, "auto") for n in (1, 4, 20, 256)] == ["vmap"] * 2 + ["loop"] * 2
    assert fa.choose_strategy(9, 256, 1e3, cpu, "auto") == "vmap"  # tiny model: call overhead
    assert math.isfinite(fa.VMAP_MAX_WORK) and fa.VMAP_MAX_ROWS >= 9
