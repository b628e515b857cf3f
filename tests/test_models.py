"""Architectures, registry and the as_logits adapter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fisherscope import check_logits
from fisherscope.models import (
    ACTIVATIONS,
    MODELS,
    Normalize,
    as_logits,
    build_model,
    count_parameters,
    find_normalize,
    model_parameters,
)

ARCHS = sorted(MODELS)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _input_for(arch: str, n: int = 2, **kwargs) -> torch.Tensor:
    """A small batch matching the architecture's defaults (or the given kwargs).

    Models without ``input_size`` (global pooling: the ResNets) get 16 x 16 images to
    keep the suite fast.
    """
    params = model_parameters(arch)
    c = kwargs.get("in_channels", params["in_channels"])
    side = kwargs.get("input_size", params.get("input_size") or 16)
    return torch.rand(n, c, side, side, generator=torch.Generator().manual_seed(0))


def _build(arch: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return build_model(arch, **kwargs).eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shape_and_logits(arch):
    model = _build(arch)
    x = _input_for(arch, n=3)
    out = model(x)
    k = model_parameters(arch)["num_classes"]
    assert out.shape == (3, k)
    check_logits(out)  # finite, 2-D, not probabilities
    assert not torch.allclose(out.sum(1), torch.ones(3))
    assert (out < 0).any()


@pytest.mark.parametrize("arch", ARCHS)
def test_registry_signature_is_uniform(arch):
    params = model_parameters(arch)
    for name in ("in_channels", "num_classes", "activation", "dropout"):
        assert name in params
    assert params["activation"] == "relu"
    assert params["dropout"] == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_in_channels_and_num_classes(arch):
    model = _build(arch, in_channels=2, num_classes=7)
    out = model(_input_for(arch, n=2, in_channels=2))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("arch", ARCHS)
def test_activation_swaps_module_types(arch):
    relu = _build(arch)
    n_relu = sum(isinstance(m, nn.ReLU) for m in relu.modules())
    assert n_relu > 0
    for activation in ("elu", "gelu"):
        other = _build(arch, activation=activation)
        assert not any(isinstance(m, nn.ReLU) for m in other.modules())
        assert sum(isinstance(m, ACTIVATIONS[activation]) for m in other.modules()) == n_relu
        assert relu.state_dict().keys() == other.state_dict().keys()
    # Same parameters, different function.
    other.load_state_dict(relu.state_dict())
    x = _input_for(arch)
    assert not torch.allclose(relu(x), other(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_activations_are_separate_hookable_modules(arch):
    model = _build(arch)
    acts = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len({id(m) for m in acts}) == len(acts)
    assert not any(m.inplace for m in acts)
    calls = []
    for m in acts:
        m.register_forward_hook(lambda mod, inp, out: calls.append(mod))
    model(_input_for(arch, n=1))
    assert len(calls) == len(acts)  # each module used exactly once


@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_option(arch):
    plain = _build(arch)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    mc = _build(arch, dropout=0.3)
    drops = [m for m in mc.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(m.p == 0.3 for m in drops)
    # Same state-dict keys: weights trained without dropout load for MC-dropout.
    assert plain.state_dict().keys() == mc.state_dict().keys()
    mc.load_state_dict(plain.state_dict())
    x = _input_for(arch, n=2)
    torch.testing.assert_close(mc(x), plain(x))  # eval mode: dropout off
    mc.train()
    torch.manual_seed(1)
    a = mc(x)
    torch.manual_seed(2)
    b = mc(x)
    assert not torch.allclose(a, b)  # train mode: stochastic


@pytest.mark.parametrize("arch", ARCHS)
def test_normalize_is_first_and_in_state_dict(arch):
    model = _build(arch)
    norm = find_normalize(model)
    assert isinstance(norm, Normalize)
    sd = model.state_dict()
    assert "normalize.mean" in sd and "normalize.std" in sd
    x = _input_for(arch, n=2)
    before = model(x)
    c = model_parameters(arch)["in_channels"]
    norm.set_statistics([0.5] * c, [0.25] * c)
    assert not torch.allclose(before, model(x))
    assert "normalize.mean" not in dict(model.named_parameters())


def test_normalize_rejects_bad_statistics():
    norm = Normalize(3)
    with pytest.raises(ValueError, match="one value per channel"):
        norm.set_statistics([0.5], [0.2])
    with pytest.raises(ValueError, match="positive stds"):
        norm.set_statistics([0.5] * 3, [0.2, 0.0, 0.2])


def test_parameter_counts():
    assert count_parameters(build_model("mnist_cnn")) == 1_199_882  # Keras example
    assert count_parameters(build_model("lenet5")) == 61_706
    assert count_parameters(build_model("resnet18", num_classes=1000)) == 11_689_512  # torchvision
    assert count_parameters(build_model("resnet14")) == 177_403
    assert count_parameters(build_model("resnet50")) == 25_557_032  # torchvision resnet50
    counts = {a: count_parameters(build_model(a)) for a in ARCHS}
    assert counts["convnet_bn"] < 100_000
    assert counts["digits_cnn"] < 200_000
    assert 3_000_000 < counts["vgg_small"] < 5_000_000
    assert 9_000_000 < counts["vgg11"] < 10_500_000


def test_vgg_small_mnist_variant():
    model = _build("vgg_small", in_channels=1, input_size=28)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 7  # conv1-1 .. conv3-3
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 7
    plain = _build("vgg_small", batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())


def test_vgg11_has_eleven_weight_layers():
    model = _build("vgg11")
    n = sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())
    assert n == 11


def test_resnet14_has_fourteen_main_path_layers():
    model = _build("resnet14")
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in n]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 14
    assert model_parameters("resnet14")["num_classes"] == 43  # GTSRB


def test_resnet18_torchvision_names_and_resize():
    model = _build("resnet18")
    names = set(model.state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight",
                "layer2.0.downsample.0.weight", "layer4.1.bn2.weight", "fc.weight", "fc.bias"):
        assert key in names
    resized = _build("resnet18", input_resize=32)
    resized.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 16, 16)
    assert resized(x).shape == (2, 10)
    assert not torch.allclose(resized(x), model(x))


def test_resnet50_torchvision_layout():
    """Key names and shapes of torchvision's resnet50 state dict (53 convs, 16 bottlenecks)."""
    model = _build("resnet50")
    sd = model.state_dict()
    shapes = {
        "conv1.weight": (64, 3, 7, 7), "bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1), "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer3.5.bn3.weight": (1024,), "layer4.0.downsample.1.running_mean": (2048,),
        "layer4.2.conv3.weight": (2048, 512, 1, 1), "fc.weight": (1000, 2048), "fc.bias": (1000,),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert "layer3.6.conv1.weight" not in sd and "layer1.1.downsample.0.weight" not in sd
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 53
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)  # v1.5
    # torchvision keys plus normalize.* only: a torchvision state dict loads with strict=False
    extra = {k for k in sd if k.startswith("normalize.")}
    assert extra == {"normalize.mean", "normalize.std"}
    tv_like = {k: v for k, v in sd.items() if k not in extra}
    fresh = build_model("resnet50").eval()
    missing, unexpected = fresh.load_state_dict(tv_like, strict=False)
    assert set(missing) == extra and not unexpected


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ValueError, match="lenet5") as info:
        build_model("lenet")
    assert "resnet18" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"width": 3}, "valid keywords are .*in_channels"),
        ({"activation": "tanh"}, r"activation must be one of 'elu', 'gelu', 'relu'; got 'tanh'"),
        ({"dropout": 1.0}, "dropout must be a rate"),
        ({"dropout": -0.1}, "dropout must be a rate"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"in_channels": 0}, "in_channels"),
        ({"input_size": 8}, "input_size must be an integer >= 12"),
    ],
)
def test_bad_kwargs_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MODELS["lenet5"](**kwargs)


def test_positional_arguments_rejected():
    with pytest.raises(ValueError, match="keyword arguments only"):
        MODELS["lenet5"](1)


def test_wrong_input_size_is_explained():
    model = _build("mnist_cnn")
    with pytest.raises(ValueError, match=r"expects images of shape \(N, C, 28, 28\).*input_size=32"):
        model(torch.rand(1, 1, 32, 32))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("arch", ["digits_cnn", "lenet5", "convnet_bn", "resnet14"])
def test_forward_mode_and_vmap_work_in_eval_mode(arch):
    """The Fisher maths uses jvp / vjp under vmap: every layer must support them."""
    model = _build(arch)
    x = _input_for(arch, n=2)

    def f(xi):
        return model(xi.unsqueeze(0)).squeeze(0)

    v = torch.randn_like(x)
    _, jv = torch.func.vmap(lambda xi, vi: torch.func.jvp(f, (xi,), (vi,)))(x, v)
    assert jv.shape == (2, model_parameters(arch)["num_classes"])
    # Forward and reverse mode agree: u . (J v) == (J^T u) . v per sample.
    u = torch.randn_like(jv)
    _, vjp_fn = torch.func.vjp(model, x)
    (jtu,) = vjp_fn(u)
    lhs = (u * jv).sum(1)
    rhs = (jtu * v).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-4, atol=1e-4)


class _SoftmaxNet(nn.Module):
    def __init__(self, log: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.log = log

    def forward(self, x):
        z = self.lin(x.flatten(1))
        return z.log_softmax(1) if self.log else z.softmax(1)


def test_as_logits_probs():
    torch.manual_seed(0)
    net = _SoftmaxNet()
    x = torch.rand(5, 1, 2, 2)
    with pytest.raises(ValueError, match="as_logits"):
        check_logits(net(x))
    wrapped = as_logits(net, output="probs")
    z = wrapped(x)
    check_logits(z)
    torch.testing.assert_close(z.softmax(1), net(x))
    torch.testing.assert_close(z, net.lin(x.flatten(1)).log_softmax(1))


def test_as_logits_zero_probability_stays_finite():
    class Hard(nn.Module):
        def forward(self, x):
            return torch.tensor([[1.0, 0.0, 0.0]]).expand(x.shape[0], 3)

    z = as_logits(Hard())(torch.rand(2, 4))
    assert torch.isfinite(z).all()
    assert (z.argmax(1) == 0).all()


def test_as_logits_log_probs_and_bad_output():
    net = _SoftmaxNet(log=True)
    x = torch.rand(3, 1, 2, 2)
    torch.testing.assert_close(as_logits(net, output="log_probs")(x), net(x))
    with pytest.raises(ValueError, match="as_logits: output must be one of 'probs', 'log_probs'; got"):
        as_logits(net, output="logits")


@pytest.mark.parametrize(
    ("arch", "smallest"),
    [("digits_cnn", 2), ("mnist_cnn", 6), ("lenet5", 12), ("convnet_bn", 4), ("vgg_small", 8), ("vgg11", 32)],
)
def test_smallest_input_size_follows_from_the_layers(arch, smallest):
    with pytest.raises(ValueError, match=f"input_size must be an integer >= {smallest}; got {smallest - 1}"):
        build_model(arch, input_size=smallest - 1)
    model = _build(arch, input_size=smallest)
    assert model(_input_for(arch, input_size=smallest)).shape == (2, 10)
