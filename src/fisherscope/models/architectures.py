"""The papers' image classifiers, with normalisation inside the model.

Every model maps images ``x`` of shape (N, C, H, W) with values in [0, 1] to logits of
shape (N, K). The first module is a :class:`Normalize` whose per-channel ``mean`` and
``std`` buffers belong to the state dict; :func:`fisherscope.training.train_model` sets
them from the training data, so a checkpoint carries its own preprocessing.

Conventions shared by all constructors (keyword-only):

- ``in_channels``, ``num_classes``: input channels C and number of classes K.
- ``activation``: ``"relu"`` | ``"elu"`` | ``"gelu"``; built as ``nn.ReLU`` /
  ``nn.ELU`` / ``nn.GELU`` *modules* (never functional calls, never in-place), one
  instance per use, so forward / backward hooks (guided backprop, activation capture)
  can find and replace them.
- ``dropout``: rate of the ``nn.Dropout`` layers used for MC-dropout (0 by default).
  With ``dropout=0`` the dropout slots hold ``nn.Identity``, so the state dict keys do
  not depend on the rate: weights trained without dropout load into the same
  architecture built with ``dropout=0.5`` for MC-dropout.
- ``input_size``: side length of the square input where the flatten size depends on it.

Unknown architecture names or keyword arguments raise ``ValueError`` listing the valid
ones (:func:`build_model` and the :data:`MODELS` entries).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .._registry import Registry
from .._validation import (
    BOOL,
    CALLABLE,
    POSITIVE_INT,
    check_param,
    check_params,
    integer,
    one_of,
    real,
)

__all__ = [
    "ACTIVATIONS",
    "MODELS",
    "AsLogits",
    "ConvNetBN",
    "DigitsCNN",
    "LeNet5",
    "MnistCNN",
    "Normalize",
    "ResNet14",
    "ResNet18",
    "ResNet50",
    "VGG11",
    "VGGSmall",
    "as_logits",
    "build_model",
    "check_arch",
    "count_parameters",
    "find_normalize",
    "model_parameters",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU}


# --------------------------------------------------------------------------- helpers


def _activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def _dropout(rate: float) -> nn.Module:
    return nn.Dropout(rate) if rate > 0 else nn.Identity()


def _check_common(
    cls_name: str,
    *,
    in_channels: int,
    num_classes: int,
    activation: str,
    dropout: float,
    input_size: int | None = None,
    min_input_size: int = 1,
) -> None:
    check_params(cls_name, {
        "in_channels": in_channels, "num_classes": num_classes, "activation": activation, "dropout": dropout,
    }, {
        "in_channels": POSITIVE_INT,
        "num_classes": integer(ge=2),
        "activation": one_of(*sorted(ACTIVATIONS)),
        "dropout": real(ge=0, lt=1).but(expected="a rate in [0, 1)"),
    })
    if input_size is not None:
        check_param(cls_name, "input_size", input_size, integer(ge=min_input_size))


def _check_spatial(x: torch.Tensor, input_size: int, name: str) -> None:
    if x.ndim != 4 or x.shape[-2] != input_size or x.shape[-1] != input_size:
        raise ValueError(
            f"{name} expects images of shape (N, C, {input_size}, {input_size}); got shape "
            f"{tuple(x.shape)}. Build the model with input_size={x.shape[-1] if x.ndim == 4 else '?'} "
            "or resize the images."
        )


def _init_conv_bn(module: nn.Module) -> None:
    """Kaiming-normal (fan_out) convolutions and unit BatchNorm, as torchvision does."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Normalize(nn.Module):
    """Per-channel standardisation ``(x - mean) / std`` inside the model.

    ``mean`` and ``std`` are buffers (part of the state dict, not parameters), shaped
    (1, C, 1, 1). They start at 0 and 1 (identity);
    :func:`fisherscope.training.train_model` sets them from the training set.

    Parameters
    ----------
    num_channels : int
        Number of input channels C.

    Shapes
    ------
    x: (N, C, H, W) -> (N, C, H, W).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, num_channels, 1, 1))
        self.register_buffer("std", torch.ones(1, num_channels, 1, 1))

    @torch.no_grad()
    def set_statistics(
        self, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
    ) -> None:
        """Set the per-channel mean and std (length C each; std must be positive)."""
        mean_t = torch.as_tensor(mean, dtype=self.mean.dtype).flatten()
        std_t = torch.as_tensor(std, dtype=self.std.dtype).flatten()
        c = self.mean.shape[1]
        if mean_t.numel() != c or std_t.numel() != c:
            raise ValueError(
                f"Normalize has {c} channels; got mean of length {mean_t.numel()} and std of "
                f"length {std_t.numel()}. Pass one value per channel."
            )
        if not bool(torch.isfinite(mean_t).all()) or not bool((std_t > 0).all()):
            raise ValueError(
                f"Normalize needs finite means and positive stds; got mean={mean_t.tolist()}, "
                f"std={std_t.tolist()}. A constant channel has std 0: use std=1 for it."
            )
        self.mean.copy_(mean_t.view(1, c, 1, 1))
        self.std.copy_(std_t.view(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"num_channels={self.mean.shape[1]}"


def find_normalize(model: nn.Module) -> Normalize:
    """The model's single :class:`Normalize` module.

    Raises
    ------
    ValueError
        The model has no ``Normalize`` module or more than one.
    """
    found = [m for m in model.modules() if isinstance(m, Normalize)]
    if len(found) != 1:
        raise ValueError(
            f"expected exactly one fisherscope.models.Normalize module in "
            f"{type(model).__name__}; found {len(found)}. Registry models have one as "
            "their first module; put yours in front of the network."
        )
    return found[0]


# -------------------------------------------------- plain CNNs: conv stack + dense head


@dataclass(frozen=True)
class _Conv:
    """One convolution of a :class:`_PlainCNN` feature stack: conv - [BN] - act.

    ``bias`` is the convolution's own bias (kept by ConvNetBN in front of its batch norm,
    dropped by VGG's).
    """

    channels: int
    kernel: int = 3
    padding: int = 0
    batch_norm: bool = False
    bias: bool = True


_POOL = "M"
"""Spec token: ``nn.MaxPool2d(2)`` (the letter VGG configurations use)."""
_DROPOUT = "D"
"""Spec token: one dropout slot (``nn.Dropout(dropout)``, ``nn.Identity`` at rate 0)."""

_FeatureSpec = Sequence[_Conv | str]
_DenseSpec = Sequence[int | str]


def _conv_layers(spec: _FeatureSpec, in_channels: int, activation: str, dropout: float) -> list[nn.Module]:
    """Modules of a feature stack, in spec order (creation order = initialisation order)."""
    layers: list[nn.Module] = []
    c = in_channels
    for item in spec:
        if item == _POOL:
            layers.append(nn.MaxPool2d(2))
        elif item == _DROPOUT:
            layers.append(_dropout(dropout))
        else:
            assert isinstance(item, _Conv), item
            layers.append(nn.Conv2d(c, item.channels, item.kernel, padding=item.padding, bias=item.bias))
            if item.batch_norm:
                layers.append(nn.BatchNorm2d(item.channels))
            layers.append(_activation(activation))
            c = item.channels
    return layers


def _dense_layers(spec: _DenseSpec, in_features: int, activation: str, dropout: float) -> tuple[list[nn.Module], int]:
    """Hidden fully connected layers: width ``w`` -> Linear - act - [dropout]; ``_DROPOUT`` -> [dropout].

    Returns the modules and the width of the last one (``in_features`` if none).
    """
    layers: list[nn.Module] = []
    d = in_features
    for item in spec:
        if item != _DROPOUT:
            assert isinstance(item, int), item
            layers += [nn.Linear(d, item), _activation(activation)]
            d = item
        layers.append(_dropout(dropout))
    return layers, d


def _output_side(spec: _FeatureSpec, input_size: int) -> int:
    """Side of the feature map after ``spec`` (0 where some layer would get an empty map)."""
    side = input_size
    for item in spec:
        if isinstance(item, _Conv):
            side = side + 2 * item.padding - item.kernel + 1
        elif item == _POOL:
            side //= 2
        if side < 1:
            return 0
    return side


def _min_input_size(spec: _FeatureSpec) -> int:
    """The smallest square input side for which every layer of ``spec`` gets a non-empty map."""
    side = 1
    while _output_side(spec, side) < 1:
        side += 1
    return side


def _check_positive_int(arch: str, name: str, value: Any) -> None:
    check_param(arch, name, value, POSITIVE_INT)


class _PlainCNN(nn.Module):
    """normalize - features - classifier, both ``nn.Sequential`` built from a spec.

    The shared definition of the registry's CNNs without skip connections
    (:class:`DigitsCNN`, :class:`MnistCNN`, :class:`LeNet5`, :class:`ConvNetBN`,
    :class:`VGGSmall`, :class:`VGG11`); each of those only fixes its public signature and
    its spec. ``features`` lists :class:`_Conv` layers and the ``_POOL`` / ``_DROPOUT``
    tokens; ``classifier`` is ``Flatten`` - the hidden layers of ``hidden`` (see
    :func:`_dense_layers`) - ``Linear(., num_classes)``. The flatten size and the smallest
    admissible ``input_size`` follow from the spec. Modules are created, and so
    initialised, in spec order, and the state-dict keys are ``features.<i>.*`` /
    ``classifier.<i>.*`` by position: changing a spec changes the checkpoints it loads
    (``tests/test_model_fingerprints.py`` guards the registry's).

    Parameters
    ----------
    arch : str
        Registry name, used in error messages.
    in_channels, num_classes, activation, dropout, input_size
        As for every registry model (module docstring).
    features, hidden
        The specs.
    kaiming_init : bool
        Re-initialise convolutions and batch norms as torchvision does
        (:func:`_init_conv_bn`) after building (the VGGs).
    """

    def __init__(
        self,
        arch: str,
        *,
        in_channels: int,
        num_classes: int,
        activation: str,
        dropout: float,
        input_size: int,
        features: _FeatureSpec,
        hidden: _DenseSpec,
        kaiming_init: bool = False,
    ) -> None:
        super().__init__()
        _check_common(
            arch, in_channels=in_channels, num_classes=num_classes, activation=activation,
            dropout=dropout, input_size=input_size, min_input_size=_min_input_size(features),
        )  # fmt: skip
        self._arch = arch
        self.input_size = input_size
        self.normalize = Normalize(in_channels)
        self.features = nn.Sequential(*_conv_layers(features, in_channels, activation, dropout))
        convs = [item for item in features if isinstance(item, _Conv)]
        channels = convs[-1].channels if convs else in_channels
        side = _output_side(features, input_size)
        dense, width = _dense_layers(hidden, channels * side * side, activation, dropout)
        self.classifier = nn.Sequential(nn.Flatten(), *dense, nn.Linear(width, num_classes))
        if kaiming_init:
            _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_spatial(x, self.input_size, self._arch)
        return self.classifier(self.features(self.normalize(x)))


# ------------------------------------------------------------------- small MNIST nets


class MnistCNN(_PlainCNN):
    """The Keras ``mnist_cnn`` example network (Martin & Elster's MNIST stand-in).

    conv 32 (3x3) - act - conv 64 (3x3) - act - max-pool 2 - [dropout] - fc 128 - act -
    [dropout] - fc K. The Keras example uses dropout 0.25 / 0.5 at the two slots; here
    both slots use ``dropout`` (0 by default). 1,199,882 parameters for MNIST.

    Parameters
    ----------
    in_channels, num_classes : int
        Input channels and classes (1 and 10 for MNIST).
    activation : {"relu", "elu", "gelu"}
    dropout : float
        Rate of both dropout slots.
    input_size : int
        Side of the square input (28 for MNIST); the flatten size is
        ``64 * ((input_size - 4) // 2) ** 2``.

    Shapes
    ------
    x: (N, in_channels, input_size, input_size) in [0, 1] -> logits (N, num_classes).

    References
    ----------
    .. [1] F. Chollet et al., Keras examples, ``mnist_cnn.py`` (2015).
    .. [2] J. Martin and C. Elster, "Inspecting adversarial examples using the Fisher
       information", Neurocomputing 382 (2020); arXiv:1909.05527.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
        input_size: int = 28,
    ) -> None:
        super().__init__(
            "mnist_cnn", in_channels=in_channels, num_classes=num_classes, activation=activation,
            dropout=dropout, input_size=input_size,
            features=(_Conv(32, 3), _Conv(64, 3), _POOL, _DROPOUT), hidden=(128,),
        )  # fmt: skip


class LeNet5(_PlainCNN):
    """LeNet-5 with max-pooling (Zhao et al.'s MNIST network).

    conv 6 (5x5, pad 2) - act - max-pool 2 - conv 16 (5x5) - act - max-pool 2 - fc 120 -
    act - [dropout] - fc 84 - act - [dropout] - fc K. 61,706 parameters for MNIST.

    Parameters
    ----------
    in_channels, num_classes : int
    activation : {"relu", "elu", "gelu"}
        Zhao's "-adv" variants use ELU.
    dropout : float
    input_size : int
        28 for MNIST, 32 for CIFAR-10; flatten size ``16 * ((input_size // 2 - 4) // 2) ** 2``.

    Shapes
    ------
    x: (N, in_channels, input_size, input_size) in [0, 1] -> logits (N, num_classes).

    References
    ----------
    .. [1] Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-based learning applied
       to document recognition", Proc. IEEE 86(11) (1998).
    .. [2] C. Zhao, P. T. Fletcher, M. Yu, Y. Peng, G. Zhang and C. Shen, "The adversarial
       attack and detection under the Fisher information metric", AAAI 2019.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
        input_size: int = 28,
    ) -> None:
        super().__init__(
            "lenet5", in_channels=in_channels, num_classes=num_classes, activation=activation,
            dropout=dropout, input_size=input_size,
            features=(_Conv(6, 5, padding=2), _POOL, _Conv(16, 5), _POOL), hidden=(120, 84),
        )  # fmt: skip


class ConvNetBN(_PlainCNN):
    """Shen et al.'s MNIST "ConvNet": two conv layers with batch norm, one fc layer.

    conv 32 (5x5, pad 2) - BN - act - max-pool 2 - conv 64 (5x5, pad 2) - BN - act -
    max-pool 2 - [dropout] - fc K. The paper gives only "two convolutional layers with
    batch normalization and one fully connected layer ... 99%"; widths and kernel sizes
    are the common PyTorch MNIST choice. 83,658 parameters for MNIST.

    Parameters
    ----------
    in_channels, num_classes : int
    activation : {"relu", "elu", "gelu"}
    dropout : float
    input_size : int
        Flatten size ``64 * (input_size // 4) ** 2``.

    Shapes
    ------
    x: (N, in_channels, input_size, input_size) in [0, 1] -> logits (N, num_classes).

    References
    ----------
    .. [1] C. Shen, Y. Peng, G. Zhang and J. Fan, "Defending against adversarial attacks
       by suppressing the largest eigenvalue of Fisher information matrix",
       arXiv:1909.06137 (2019).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
        input_size: int = 28,
    ) -> None:
        conv = functools.partial(_Conv, kernel=5, padding=2, batch_norm=True)
        super().__init__(
            "convnet_bn", in_channels=in_channels, num_classes=num_classes, activation=activation,
            dropout=dropout, input_size=input_size,
            features=(conv(32), _POOL, conv(64), _POOL), hidden=(_DROPOUT,),
        )  # fmt: skip


class DigitsCNN(_PlainCNN):
    """A small CNN for scikit-learn's 8x8 digits (the offline default dataset).

    conv 32 (3x3, pad 1) - act - conv 64 (3x3, pad 1) - act - max-pool 2 - [dropout] -
    fc 128 - act - [dropout] - fc K. 151,306 parameters for 8x8 digits; about 98% test
    accuracy after a few seconds of training on two cores.

    Parameters
    ----------
    in_channels, num_classes : int
    activation : {"relu", "elu", "gelu"}
    dropout : float
    input_size : int
        8 for sklearn's digits; flatten size ``64 * (input_size // 2) ** 2``.

    Shapes
    ------
    x: (N, in_channels, input_size, input_size) in [0, 1] -> logits (N, num_classes).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
        input_size: int = 8,
    ) -> None:
        super().__init__(
            "digits_cnn", in_channels=in_channels, num_classes=num_classes, activation=activation,
            dropout=dropout, input_size=input_size,
            features=(_Conv(32, 3, padding=1), _Conv(64, 3, padding=1), _POOL, _DROPOUT), hidden=(128,),
        )  # fmt: skip


# ------------------------------------------------------------------------------ VGG


def _vgg_spec(cfg: Sequence[int | str], batch_norm: bool) -> list[_Conv | str]:
    """VGG's configuration letters as a :class:`_PlainCNN` spec: 3x3 convs (pad 1), no
    conv bias before a batch norm."""
    return [
        item if item == _POOL else _Conv(int(item), 3, padding=1, batch_norm=batch_norm, bias=not batch_norm)
        for item in cfg
    ]


class VGGSmall(_PlainCNN):
    """Zhao et al.'s shallow VGG-16: conv4-1 ... conv5-3 removed.

    Features ``64, 64, M, 128, 128, M, 256, 256, 256, M`` (3x3 convs, max-pool 2), then
    fc ``classifier_width`` - act - [dropout] - fc ``classifier_width`` - act - [dropout] -
    fc K, as VGG's three-layer classifier with a smaller width.

    Batch norm after every convolution by default (``batch_norm=True``): the paper does not
    say; with BN the net trains from scratch reliably with the same recipe on MNIST and
    CIFAR-10. ``batch_norm=False`` gives the plain 2014 VGG layers (conv biases on).
    With ``in_channels=1, input_size=28`` it is Zhao's MNIST "VGG" (28 -> 3 after three
    pools, flatten 2,304); the defaults are CIFAR-10 (3 x 32 x 32, flatten 4,096).

    Parameters
    ----------
    in_channels, num_classes : int
    activation : {"relu", "elu", "gelu"}
    dropout : float
    input_size : int
        Flatten size ``256 * (input_size // 8) ** 2``.
    batch_norm : bool
    classifier_width : int
        Width of the two hidden fully connected layers (512).

    Shapes
    ------
    x: (N, in_channels, input_size, input_size) in [0, 1] -> logits (N, num_classes).

    References
    ----------
    .. [1] K. Simonyan and A. Zisserman, "Very deep convolutional networks for large-scale
       image recognition", ICLR 2015.
    .. [2] C. Zhao et al., "The adversarial attack and detection under the Fisher
       information metric", AAAI 2019.
    """

    cfg: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M")

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
        input_size: int = 32,
        batch_norm: bool = True,
        classifier_width: int = 512,
    ) -> None:
        check_params("vgg_small", {"batch_norm": batch_norm, "classifier_width": classifier_width},
                     {"batch_norm": BOOL, "classifier_width": POSITIVE_INT})
        super().__init__(
            "vgg_small", in_channels=in_channels, num_classes=num_classes, activation=activation,
            dropout=dropout, input_size=input_size, features=_vgg_spec(self.cfg, batch_norm),
            hidden=(classifier_width, classifier_width), kaiming_init=True,
        )  # fmt: skip


class VGG11(_PlainCNN):
    """Shen et al.'s simplified 11-layer VGG for CIFAR-10 (VGG-11 "A" with batch norm).

    Features ``64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M`` (eight 3x3 convs,
    each followed by BN and the activation), then a small three-layer classifier
    fc ``classifier_width`` - act - [dropout] - fc ``classifier_width`` - act -
    [dropout] - fc K: 8 + 3 = 11 weight layers. For 32 x 32 inputs the feature map is
    512 x 1 x 1.

    Parameters
    ----------
    in_channels, num_classes : int
    activation : {"relu", "elu", "gelu"}
    dropout : float
    input_size : int
        Multiple of 32 expected; flatten size ``512 * (input_size // 32) ** 2``.
    classifier_width : int
        512 by default (the 2014 VGG uses 4096 for ImageNet).

    Shapes
    ------
    x: (N, in_channels, input_size, input_size) in [0, 1] -> logits (N, num_classes).

    References
    ----------
    .. [1] K. Simonyan and A. Zisserman, ICLR 2015 (configuration A).
    .. [2] C. Shen et al., arXiv:1909.06137 (2019).
    """

    cfg: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
        input_size: int = 32,
        classifier_width: int = 512,
    ) -> None:
        _check_positive_int("vgg11", "classifier_width", classifier_width)
        super().__init__(
            "vgg11", in_channels=in_channels, num_classes=num_classes, activation=activation,
            dropout=dropout, input_size=input_size, features=_vgg_spec(self.cfg, batch_norm=True),
            hidden=(classifier_width, classifier_width), kaiming_init=True,
        )  # fmt: skip


# --------------------------------------------------------------------------- ResNets


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and an identity (or 1x1 conv + BN projection) shortcut.

    Module names follow torchvision (``conv1, bn1, conv2, bn2, downsample``) so that
    torchvision ResNet-18 state dicts map onto :class:`ResNet18`. Each activation is
    its own module (``act1``, ``act2``).
    """

    def __init__(self, in_planes: int, planes: int, stride: int, activation: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = _activation(activation)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = _activation(activation)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + identity)


def _make_stage(in_planes: int, planes: int, blocks: int, stride: int, activation: str) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride, activation)]
    layers += [BasicBlock(planes, planes, 1, activation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet14(nn.Module):
    """Shen et al.'s 14-layer ResNet for GTSRB (CIFAR-style, depth 6n + 2 with n = 2).

    3x3 conv stem (``base_width`` channels) - BN - act, three stages of two basic blocks
    with ``base_width * (1, 2, 4)`` channels (strides 1, 2, 2; 1x1 projection shortcuts
    where the shape changes), global average pooling, [dropout], fc K: 1 + 12 + 1 = 14
    weight layers on the main path. Any input size works (global pooling); GTSRB is
    rescaled to 32 x 32. ``num_classes`` defaults to 43 (GTSRB).

    Parameters
    ----------
    in_channels, num_classes : int
    activation : {"relu", "elu", "gelu"}
    dropout : float
    base_width : int
        Channels of the first stage (16, as in He et al.'s CIFAR ResNets).

    Shapes
    ------
    x: (N, in_channels, H, W) in [0, 1] -> logits (N, num_classes).

    References
    ----------
    .. [1] K. He, X. Zhang, S. Ren and J. Sun, "Deep residual learning for image
       recognition", CVPR 2016 (section 4.2, CIFAR-10 networks).
    .. [2] C. Shen et al., arXiv:1909.06137 (2019).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int = 43,
        activation: str = "relu",
        dropout: float = 0.0,
        base_width: int = 16,
    ) -> None:
        super().__init__()
        _check_common(
            "resnet14", in_channels=in_channels, num_classes=num_classes,
            activation=activation, dropout=dropout,
        )  # fmt: skip
        _check_positive_int("resnet14", "base_width", base_width)
        w = base_width
        self.normalize = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.act1 = _activation(activation)
        self.layer1 = _make_stage(w, w, 2, 1, activation)
        self.layer2 = _make_stage(w, 2 * w, 2, 2, activation)
        self.layer3 = _make_stage(2 * w, 4 * w, 2, 2, activation)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = _dropout(dropout)
        self.fc = nn.Linear(4 * w, num_classes)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.dropout(self.flatten(self.avgpool(x))))


class _ImageNetResNet(nn.Module):
    """The ImageNet-layout ResNet shared by :class:`ResNet18` and :class:`ResNet50`: the 7x7
    stride-2 stem with max-pooling, four stages, global average pooling and one linear layer,
    under torchvision's module names (so torchvision state dicts map onto it)."""

    def _build(self, name: str, in_channels: int, num_classes: int, activation: str, dropout: float,
               input_resize: int | None, stages: Callable[[], list[nn.Sequential]], *, width: int) -> None:
        _check_common(name, in_channels=in_channels, num_classes=num_classes, activation=activation,
                      dropout=dropout)
        check_param(name, "input_resize", input_resize, integer(ge=8).or_none("no resizing"))
        self.input_resize = input_resize
        self.normalize = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = _activation(activation)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = _dropout(dropout)
        self.fc = nn.Linear(width, num_classes)
        _init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        if self.input_resize is not None:
            x = nn.functional.interpolate(
                x, size=(self.input_resize, self.input_resize), mode="bilinear", align_corners=False
            )
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.dropout(self.flatten(self.avgpool(x))))


class ResNet18(_ImageNetResNet):
    """ResNet-18 with the ImageNet stem, written to match ``torchvision.models.resnet18``.

    7x7/2 conv 64 - BN - act - 3x3/2 max-pool, four stages of two basic blocks (64, 128,
    256, 512 channels), global average pooling, [dropout], fc K. Module names match
    torchvision's, so a torchvision state dict loads with
    ``model.load_state_dict(sd, strict=False)`` (only ``normalize.*`` is extra; set it to
    the ImageNet statistics). 11,689,512 parameters with ``num_classes=1000``.

    Martin & Elster fine-tuned torchvision's ImageNet-pretrained ResNet-18 on CIFAR-10
    upscaled to 224 x 224 (92.7% test accuracy). Pretrained weights cannot be downloaded
    here (no network access, torchvision not installed), so fisherscope trains this
    network from scratch; expect a different operating point from the paper's.
    ``input_resize=224`` reproduces the paper's upscaling *inside* the model (bilinear),
    so inputs and adversarial perturbations stay 32 x 32.

    Parameters
    ----------
    in_channels, num_classes : int
    activation : {"relu", "elu", "gelu"}
    dropout : float
    input_resize : int or None
        Resize inputs to ``input_resize x input_resize`` (bilinear, after normalisation)
        before the stem; ``None`` keeps the input size.

    Shapes
    ------
    x: (N, in_channels, H, W) in [0, 1] -> logits (N, num_classes).

    References
    ----------
    .. [1] K. He et al., "Deep residual learning for image recognition", CVPR 2016.
    .. [2] J. Martin and C. Elster, arXiv:1909.05527 (2019), section 4.2.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
        input_resize: int | None = None,
    ) -> None:
        super().__init__()
        self._build("resnet18", in_channels, num_classes, activation, dropout, input_resize,
                    lambda: [_make_stage(64, 64, 2, 1, activation), _make_stage(64, 128, 2, 2, activation),
                             _make_stage(128, 256, 2, 2, activation), _make_stage(256, 512, 2, 2, activation)],
                    width=512)


class Bottleneck(nn.Module):
    """1x1 reduce - 3x3 (stride here, "ResNet v1.5") - 1x1 expand (x4), BN after each, shortcut.

    Module names follow torchvision's ``Bottleneck`` (``conv1, bn1, conv2, bn2, conv3, bn3,
    downsample``) so that torchvision ResNet-50 state dicts map onto :class:`ResNet50`.
    Each activation is its own module (``act1``, ``act2``, ``act3``; torchvision reuses one
    ``relu``, which owns no parameters, so the state dicts agree).
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, activation: str) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = _activation(activation)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = _activation(activation)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.act3 = _activation(activation)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + identity)


def _make_bottleneck_stage(in_planes: int, planes: int, blocks: int, stride: int, activation: str) -> nn.Sequential:
    layers = [Bottleneck(in_planes, planes, stride, activation)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes, 1, activation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet50(_ImageNetResNet):
    """ResNet-50 (bottleneck blocks), written to match ``torchvision.models.resnet50``.

    7x7/2 conv 64 - BN - act - 3x3/2 max-pool, four stages of 3, 4, 6 and 3 bottleneck
    blocks (widths 64, 128, 256, 512, outputs 4x that; the stride sits on the 3x3 conv,
    torchvision's "v1.5"), global average pooling, [dropout], fc K. 25,557,032 parameters
    with ``num_classes=1000`` (the default: an ImageNet-size head), as torchvision's.

    Module and state-dict key names match torchvision's (``conv1``, ``bn1``,
    ``layer1.0.conv1`` ... ``layer4.2.bn3``, ``layerN.0.downsample.{0,1}``, ``fc``), so
    torchvision's ImageNet weights load with ``model.load_state_dict(sd, strict=False)``;
    only ``normalize.mean`` / ``normalize.std`` are extra: set them to the ImageNet
    statistics with ``model.normalize.set_statistics((0.485, 0.456, 0.406),
    (0.229, 0.224, 0.225))``, since fisherscope models take inputs in [0, 1]. Pretrained
    weights cannot be downloaded here and torchvision is not a dependency; the network is
    what the ImageNet-size code paths (Lanczos spectra, OSSA, Fisher features under a
    memory budget) are built and benchmarked on, with random weights.

    Parameters
    ----------
    in_channels, num_classes : int
    activation : {"relu", "elu", "gelu"}
    dropout : float
    input_resize : int or None
        Resize inputs to ``input_resize x input_resize`` (bilinear, after normalisation)
        before the stem; ``None`` keeps the input size (any size works: global pooling).

    Shapes
    ------
    x: (N, in_channels, H, W) in [0, 1] -> logits (N, num_classes); ImageNet: H = W = 224.

    References
    ----------
    .. [1] K. He et al., "Deep residual learning for image recognition", CVPR 2016.
    .. [2] C. Zhao et al., "The adversarial attack and detection under the Fisher
       information metric", AAAI 2019 (ImageNet experiments on ResNet-50).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int = 1000,
        activation: str = "relu",
        dropout: float = 0.0,
        input_resize: int | None = None,
    ) -> None:
        super().__init__()
        self._build("resnet50", in_channels, num_classes, activation, dropout, input_resize,
                    lambda: [_make_bottleneck_stage(64, 64, 3, 1, activation),
                             _make_bottleneck_stage(256, 128, 4, 2, activation),
                             _make_bottleneck_stage(512, 256, 6, 2, activation),
                             _make_bottleneck_stage(1024, 512, 3, 2, activation)],
                    width=512 * Bottleneck.expansion)


# ------------------------------------------------------------------------- registry


def _registered(name: str, cls: type[nn.Module]) -> Callable[..., nn.Module]:
    """A keyword-only factory for ``cls`` that turns bad keywords into ``ValueError``."""
    sig = inspect.signature(cls.__init__)
    params = [p for p in sig.parameters.values() if p.name != "self"]
    valid = [p.name for p in params]

    @functools.wraps(cls, updated=())
    def factory(*args: Any, **kwargs: Any) -> nn.Module:
        if args:
            raise ValueError(
                f"MODELS[{name!r}] takes keyword arguments only ({', '.join(valid)}); got "
                f"{len(args)} positional argument(s)."
            )
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown keyword argument(s) {unknown} for model {name!r}; valid keywords "
                f"are {valid}."
            )
        return cls(**kwargs)

    factory.__signature__ = inspect.Signature(params, return_annotation=cls)  # type: ignore[attr-defined]
    factory.__name__ = name
    factory.__qualname__ = name
    return factory


def _check_model(key: str, ctor: Any) -> None:
    if not callable(ctor):
        raise TypeError(f"MODELS[{key!r}] must be a callable building an nn.Module from keywords; got {ctor!r}.")


MODELS: Registry[Callable[..., nn.Module]] = Registry(
    "MODELS",
    {
        "digits_cnn": _registered("digits_cnn", DigitsCNN),
        "mnist_cnn": _registered("mnist_cnn", MnistCNN),
        "lenet5": _registered("lenet5", LeNet5),
        "convnet_bn": _registered("convnet_bn", ConvNetBN),
        "vgg_small": _registered("vgg_small", VGGSmall),
        "vgg11": _registered("vgg11", VGG11),
        "resnet14": _registered("resnet14", ResNet14),
        "resnet18": _registered("resnet18", ResNet18),
        "resnet50": _registered("resnet50", ResNet50),
    },
    validate=_check_model,
)
"""Architecture name -> keyword-only constructor (the CLI, configs and tests use it)."""


def model_parameters(arch: str) -> dict[str, Any]:
    """The keyword arguments of ``MODELS[arch]`` and their defaults."""
    check_arch(arch)
    sig = inspect.signature(MODELS[arch])
    return {p.name: p.default for p in sig.parameters.values()}


def check_arch(arch: Any) -> None:
    """Raise ``ValueError`` naming the valid choices unless ``arch`` is a :data:`MODELS` name."""
    if not isinstance(arch, str) or arch not in MODELS:
        raise ValueError(
            f"unknown architecture {arch!r}; valid names are {sorted(MODELS)} "
            "(fisherscope.models.MODELS)."
        )


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build ``MODELS[arch](**kwargs)`` with validated name and keywords.

    Examples
    --------
    >>> from fisherscope.models import build_model
    >>> model = build_model("digits_cnn", activation="elu")
    >>> tuple(model(torch.rand(2, 1, 8, 8)).shape)
    (2, 10)

    Raises
    ------
    ValueError
        Unknown architecture (the valid names are listed) or unknown / invalid keyword.
    """
    check_arch(arch)
    return MODELS[arch](**kwargs)


# ------------------------------------------------------------------------ adapters


class AsLogits(nn.Module):
    """Wraps a model that returns probabilities or log-probabilities so it returns logits.

    ``output="probs"``: ``log(clamp(p, tiny))`` with ``tiny`` the smallest normal number
    of the dtype (exact logits up to an additive per-row constant, which softmax ignores).
    ``output="log_probs"``: returned unchanged (log-probabilities are valid logits).

    The wrapper has no mode of its own: ``training`` is the wrapped model's, so an
    adapter around a model in eval mode is in eval mode (and ``.train()`` / ``.eval()``
    on the adapter switch the wrapped model, as on any parent module).

    Shapes
    ------
    x: whatever ``model`` takes -> (N, K).
    """

    def __init__(self, model: nn.Module, output: Literal["probs", "log_probs"] = "probs") -> None:
        super().__init__()
        check_param("as_logits", "model", model, CALLABLE.but(expected="a torch.nn.Module (or callable)"))
        check_param("as_logits", "output", output, one_of("probs", "log_probs"),
                    fix="Use 'probs' for a model ending in softmax, 'log_probs' for one ending in log_softmax.")
        self.model = model
        self.output = output

    @property
    def training(self) -> bool:
        """The wrapped model's mode (the adapter has none of its own)."""
        inner = self.__dict__.get("_modules", {}).get("model")
        return bool(getattr(inner, "training", False))

    @training.setter
    def training(self, mode: bool) -> None:
        # nn.Module.__init__ and .train() assign it; .train() then sets the wrapped model
        # itself, as one of the children, so there is nothing to store here.
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.output == "log_probs":
            return out
        tiny = torch.finfo(out.dtype).tiny if out.is_floating_point() else 1e-38
        return torch.log(out.clamp_min(tiny))

    def extra_repr(self) -> str:
        return f"output={self.output!r}"


def as_logits(model: nn.Module, output: Literal["probs", "log_probs"] = "probs") -> AsLogits:
    """The explicit adapter for models whose outputs are not logits (the README's "Model contract").

    Parameters
    ----------
    model : nn.Module
        Maps (N, C, H, W) to probabilities (``output="probs"``, e.g. a final softmax) or
        log-probabilities (``output="log_probs"``), shape (N, K).
    output : {"probs", "log_probs"}

    Returns
    -------
    AsLogits
        A module returning logits z with ``softmax(z) == p`` (up to clamping of p at the
        dtype's smallest normal number, so ``log`` stays finite).

    Examples
    --------
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Softmax(dim=1))
    >>> logits = as_logits(net, output="probs")(torch.rand(2, 1, 2, 2))
    >>> tuple(logits.shape)
    (2, 3)
    """
    return AsLogits(model, output)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

