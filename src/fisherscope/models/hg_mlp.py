"""Hendrycks & Gimpel's MNIST classifier with a logit-fed reconstruction decoder (§3.4).

:class:`HGMLP` is registered as ``MODELS["hg_mlp"]``. ``forward`` returns logits only (the
model contract every attack and Fisher function relies on); the decoder runs only in
:meth:`HGMLP.reconstruct`, :meth:`HGMLP.forward_with_reconstruction` and
:meth:`HGMLP.training_forward`, the hook :func:`fisherscope.training.train_model` uses to
add the reconstruction loss to the cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_param, one_of
from .architectures import (
    MODELS,
    Normalize,
    _check_common,
    _check_positive_int,
    _check_spatial,
    _dense_layers,
    _registered,
)

__all__ = ["DecoderActivation", "HGMLP", "LogitFedDecoder"]

_FUNCTIONAL: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "elu": F.elu, "gelu": F.gelu}


class DecoderActivation(nn.Module):
    """The decoder's nonlinearity: the same function as ``activation``, a distinct type.

    ``nn.ReLU`` / ``nn.ELU`` / ``nn.GELU`` modules of a registry model all lie on the
    path from the input to the logits, and each runs once per forward pass: guided
    backprop and activation hooks rely on that. The decoder does not run in
    ``forward``, so its nonlinearities are modules of this type instead (same
    function: ``F.relu``, ``F.elu`` with alpha 1, exact ``F.gelu``).
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        check_param(type(self).__name__, "name", name, one_of(*sorted(_FUNCTIONAL)))
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FUNCTIONAL[self.name](x)

    def extra_repr(self) -> str:
        return self.name


class LogitFedDecoder(nn.Module):
    """concat(h2, logits) -> Linear(hidden + K, bottleneck) -> act -> Linear(bottleneck,
    hidden) -> act -> Linear(hidden, D) -> sigmoid.

    The first layer equals Hendrycks & Gimpel's ``h2 W + logits W_info + b`` (one matrix
    on the concatenation). The sigmoid keeps reconstructions in [0, 1] like the images
    (the paper does not say which output nonlinearity it used).

    Shapes
    ------
    h2: (N, hidden), logits: (N, K) -> (N, D) in (0, 1).
    """

    def __init__(
        self, hidden: int, num_classes: int, bottleneck: int, out_features: int, activation: str
    ) -> None:
        super().__init__()
        self.bottleneck = nn.Linear(hidden + num_classes, bottleneck)
        self.act1 = DecoderActivation(activation)
        self.expand = nn.Linear(bottleneck, hidden)
        self.act2 = DecoderActivation(activation)
        self.output = nn.Linear(hidden, out_features)
        self.squash = nn.Sigmoid()

    def forward(self, h2: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        z = self.act1(self.bottleneck(torch.cat([h2, logits], dim=1)))
        return self.squash(self.output(self.act2(self.expand(z))))


class HGMLP(nn.Module):
    """MLP classifier (784-256-256-10 on MNIST) with a decoder fed h2 and the logits.

    Classifier: normalise - flatten - fc ``hidden`` - act - [dropout] - fc ``hidden`` - act
    - [dropout] (= h2) - fc K (the logits). Decoder (:class:`LogitFedDecoder`):
    concat(h2, logits) (``hidden + K`` = 266) - fc ``bottleneck`` (10) - act - fc
    ``hidden`` - act - fc D - sigmoid, reshaped like the input. Hendrycks & Gimpel train
    it on cross-entropy + MSE(x, reconstruction) with Adam (lr 1e-3) for 20 epochs and
    GELU units: that is the ``"hg_mlp"`` training preset (``activation="gelu"``); the
    constructor's default activation is ReLU like every registry model.

    The reconstruction target is the raw input in [0, 1]; the ``Normalize`` module only
    standardises what the classifier sees. Module order puts the classifier head
    (``head``) last, so "the last ``nn.Linear``" is the logit layer and its input, h2, is
    the penultimate feature. 476,296 parameters on MNIST (269,322 classifier + 206,974
    decoder).

    Parameters
    ----------
    in_channels, num_classes : int
    activation : {"relu", "elu", "gelu"}
        Used by the classifier (``nn`` modules) and the decoder
        (:class:`DecoderActivation`).
    dropout : float
        Rate of the dropout after each hidden layer (0: ``nn.Identity``); the decoder
        sees h2 after dropout.
    input_size : int
        Side of the square input; D = ``in_channels * input_size ** 2`` (784 on MNIST,
        64 on sklearn's 8x8 digits).
    hidden : int
        Width of both hidden layers (256).
    bottleneck : int
        Width of the decoder's bottleneck (10).

    Shapes
    ------
    x: (N, in_channels, input_size, input_size) in [0, 1] -> logits (N, num_classes);
    :meth:`reconstruct`: -> (N, in_channels, input_size, input_size) in (0, 1).

    References
    ----------
    .. [1] D. Hendrycks and K. Gimpel, "Early methods for detecting adversarial images",
       ICLR 2017 workshop; arXiv:1608.00530, section 3.4.

    Examples
    --------
    >>> from fisherscope.models import build_model
    >>> model = build_model("hg_mlp", input_size=8, activation="gelu").eval()
    >>> x = torch.rand(3, 1, 8, 8)
    >>> logits, recon = model.forward_with_reconstruction(x)
    >>> tuple(logits.shape), tuple(recon.shape)
    ((3, 10), (3, 1, 8, 8))
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
        input_size: int = 28,
        hidden: int = 256,
        bottleneck: int = 10,
    ) -> None:
        super().__init__()
        _check_common(
            "hg_mlp", in_channels=in_channels, num_classes=num_classes,
            activation=activation, dropout=dropout, input_size=input_size, min_input_size=1,
        )  # fmt: skip
        _check_positive_int("hg_mlp", "hidden", hidden)
        _check_positive_int("hg_mlp", "bottleneck", bottleneck)
        self.input_size = input_size
        d = in_channels * input_size * input_size
        self.normalize = Normalize(in_channels)
        layers, _ = _dense_layers((hidden, hidden), d, activation, dropout)
        self.encoder = nn.Sequential(nn.Flatten(), *layers)
        self.decoder = LogitFedDecoder(hidden, num_classes, bottleneck, d, activation)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K); the decoder does not run."""
        _check_spatial(x, self.input_size, "hg_mlp")
        return self.head(self.encoder(self.normalize(x)))

    def forward_with_reconstruction(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, K) and the reconstruction, shaped like ``x``, from one encoder pass."""
        _check_spatial(x, self.input_size, "hg_mlp")
        h2 = self.encoder(self.normalize(x))
        logits = self.head(h2)
        return logits, self.decoder(h2, logits).view_as(x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's reconstruction of ``x`` (same shape, values in (0, 1))."""
        return self.forward_with_reconstruction(x)[1]

    def training_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the auxiliary loss for :func:`~fisherscope.training.train_model`.

        The auxiliary loss is the mean squared reconstruction error over pixels and
        batch (weight 1, as Hendrycks & Gimpel); the loop adds it to the cross-entropy.
        """
        logits, recon = self.forward_with_reconstruction(x)
        return logits, F.mse_loss(recon, x)


MODELS.register("hg_mlp", _registered("hg_mlp", HGMLP))
