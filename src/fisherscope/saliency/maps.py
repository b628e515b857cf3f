"""Gradient, guided-backprop and Hendrycks & Gimpel saliency maps.

How the backward rules are installed. Guided backprop and the Hendrycks map change the
backward pass of the activations. Instead of hooks on ``nn.ReLU`` modules (which miss
``F.relu`` / ``torch.relu`` / ``Tensor.relu`` calls inside ``forward``), the forward pass
runs under a :class:`torch.overrides.TorchFunctionMode` that replaces every ReLU call —
module or functional, in place or not — by an autograd function with the modified
backward. The mode is a context manager: nothing is left installed on the model, even
when the forward pass raises.

What happens with other activations:

- ``guided_backprop`` modifies ReLU only (Springenberg et al. define it for ReLU). GELU,
  ELU, SiLU, tanh, ... keep their ordinary derivative, and an
  :class:`UnmodifiedActivationWarning` names them; on a network without any ReLU the map
  equals :func:`gradient` (captum's ``GuidedBackprop`` does the same silently).
- ``hendrycks_saliency`` applies the ReLU rule to ReLU and the footnote's rule
  R_l = g′(x) g′(R_{l+1}) to GELU (both ``approximate="none"`` and ``"tanh"``); other
  activations are left unchanged with the same warning.

Activations computed without a torch function call (e.g. ``x.clamp(min=0)`` or
``torch.maximum(x, 0)``) are not recognised as ReLU.

References
----------
Springenberg, J. T., Dosovitskiy, A., Brox, T., Riedmiller, M. "Striving for simplicity:
the all convolutional net." ICLR workshop 2015.
Hendrycks, D., Gimpel, K. "Early methods for detecting adversarial images" /
"Methods for detecting adversarial images and a new saliency map." ICLR workshop 2017,
arXiv:1608.00530, §4.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .._validation import (
    BOOL,
    check_inputs,
    check_labels,
    check_logits,
    check_param,
    eval_mode,
    integer,
)

__all__ = ["UnmodifiedActivationWarning", "gradient", "guided_backprop", "hendrycks_saliency"]

Bounds = tuple[float, float] | None
Rule = Literal["guided", "hendrycks"]


class UnmodifiedActivationWarning(UserWarning):
    """A saliency rule met activations it does not define a backward rule for."""


# ------------------------------------------------------------------ backward rules


def _relu_mask_backward(rule: str, out: Tensor, grad: Tensor) -> Tensor:
    if rule == "guided":  # (f > 0)(R > 0) R
        return grad.clamp_min(0) * (out > 0).to(grad.dtype)
    return ((out > 0) & (grad > 0)).to(grad.dtype)  # hendrycks: (f > 0)(R > 0)


class _ReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, rule: str) -> Tensor:
        out = x.clamp_min(0)
        ctx.save_for_backward(out)
        ctx.rule = rule
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (out,) = ctx.saved_tensors
        return _relu_mask_backward(ctx.rule, out, grad), None


class _ReLUInplace(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, rule: str) -> Tensor:
        x.clamp_min_(0)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        ctx.rule = rule
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (out,) = ctx.saved_tensors
        return _relu_mask_backward(ctx.rule, out, grad), None


def _gelu_derivative(x: Tensor, approximate: str) -> Tensor:
    """d/dx GELU(x), exact or for the tanh approximation."""
    if approximate == "tanh":
        c = math.sqrt(2.0 / math.pi)
        inner = c * (x + 0.044715 * x.pow(3))
        t = torch.tanh(inner)
        return 0.5 * (1 + t) + 0.5 * x * (1 - t.pow(2)) * c * (1 + 3 * 0.044715 * x.pow(2))
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * x.pow(2)) / math.sqrt(2.0 * math.pi)
    return cdf + x * pdf


class _HendrycksGELU(torch.autograd.Function):
    """Forward GELU; backward R_l = g′(x) g′(R_{l+1}) (Hendrycks & Gimpel, footnote 2)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, approximate: str) -> Tensor:
        ctx.save_for_backward(x)
        ctx.approximate = approximate
        return F.gelu(x, approximate=approximate)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return _gelu_derivative(x, ctx.approximate) * _gelu_derivative(grad, ctx.approximate), None


_RELU_OUT = {F.relu, torch.relu, Tensor.relu}
_RELU_INPLACE = {F.relu_, torch.relu_, Tensor.relu_}
_GELU = {F.gelu}
#: activations we recognise (to warn about) but do not modify
_OTHER_ACTIVATIONS = {
    F.elu: "elu", F.selu: "selu", F.celu: "celu", F.silu: "silu", F.mish: "mish",
    F.leaky_relu: "leaky_relu", F.softplus: "softplus", F.hardswish: "hardswish",
    F.hardtanh: "hardtanh", F.relu6: "relu6", F.prelu: "prelu", torch.tanh: "tanh",
    Tensor.tanh: "tanh", torch.sigmoid: "sigmoid", Tensor.sigmoid: "sigmoid",
    F.gelu: "gelu",
}  # fmt: skip


class _RuleMode(TorchFunctionMode):
    """Replace ReLU (and, for ``hendrycks``, GELU) calls by functions with the rule's backward."""

    def __init__(self, rule: Rule):
        super().__init__()
        self.rule = rule
        self.modified: Counter[str] = Counter()
        self.unmodified: Counter[str] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _RELU_OUT or func in _RELU_INPLACE:
            x = args[0]
            inplace = func in _RELU_INPLACE or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            self.modified["relu"] += 1
            return (_ReLUInplace if inplace else _ReLU).apply(x, self.rule)
        if func in _GELU and self.rule == "hendrycks":
            approximate = kwargs.get("approximate", args[1] if len(args) > 1 else "none")
            self.modified["gelu"] += 1
            return _HendrycksGELU.apply(args[0], approximate)
        if func in _OTHER_ACTIVATIONS:
            self.unmodified[_OTHER_ACTIVATIONS[func]] += 1
        return func(*args, **kwargs)


# ------------------------------------------------------------------------ helpers


def _targets(y: Tensor | int | None, logits: Tensor, owner: str) -> Tensor:
    n, k = logits.shape
    if y is None:
        return logits.argmax(1)
    if isinstance(y, int) and not isinstance(y, bool):
        check_param(owner, "y", y, integer(ge=0, lt=k).but(
            expected=f"a class index in [0, {k}) for this {k}-class model, a (N,) label tensor or None"))
        return torch.full((n,), y, dtype=torch.int64, device=logits.device)
    assert isinstance(y, Tensor)  # an int was handled above; check_labels names any other type
    return check_labels(y, n, k).to(logits.device)


def _input_gradient(model: nn.Module, x: Tensor, y: Tensor | int | None, rule: Rule | None,
                    bounds: Bounds, name: str) -> Tensor:
    if not callable(model):
        raise TypeError(f"model must be a torch.nn.Module mapping x to logits; got {type(model).__name__}.")
    check_inputs(x, bounds=bounds)
    xr = x.detach().clone().requires_grad_(True)
    mode = _RuleMode(rule) if rule is not None else None
    with eval_mode(model), torch.enable_grad():
        if mode is None:
            logits = model(xr)
        else:
            with mode:
                logits = model(xr)
        check_logits(logits)
        target = _targets(y, logits.detach(), name)
        selected = logits.gather(1, target.unsqueeze(1)).sum()  # samples are independent in eval mode
        (grad,) = torch.autograd.grad(selected, xr)
    if mode is not None:
        _warn_rule(mode, name)
    return grad.detach()


def _warn_rule(mode: _RuleMode, name: str) -> None:
    if mode.unmodified:
        kinds = ", ".join(f"{k} ({c}x)" for k, c in sorted(mode.unmodified.items()))
        hint = (
            " hendrycks_saliency has a rule for GELU (Hendrycks & Gimpel, footnote 2)."
            if name == "guided_backprop" and "gelu" in mode.unmodified
            else ""
        )
        warnings.warn(
            f"{name} defines its backward rule for "
            f"{'ReLU' if mode.rule == 'guided' else 'ReLU and GELU'} only; these activations "
            f"kept their ordinary derivative: {kinds}.{hint}",
            UnmodifiedActivationWarning,
            stacklevel=3,
        )
    if not mode.modified:
        warnings.warn(
            f"{name} found no {'ReLU' if mode.rule == 'guided' else 'ReLU or GELU'} call in the "
            "model's forward pass; the map equals the plain gradient saliency.",
            UnmodifiedActivationWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------- API


def gradient(
    model: nn.Module,
    x: Tensor,
    y: Tensor | int | None = None,
    *,
    absolute: bool = False,
    bounds: Bounds = (0.0, 1.0),
) -> Tensor:
    """Gradient saliency: ∂z_y(x)/∂x, the input gradient of the class-y logit.

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K); run in eval mode (every module's mode is restored).
    x : Tensor
        Inputs (N, C, H, W) or (N, D) within ``bounds``; never modified, no ``.grad``.
    y : Tensor (N,) or int, optional
        Class whose logit is differentiated; default the predicted class.
    absolute : bool
        Return |∂z_y/∂x| (captum's ``Saliency`` default ``abs=True``).

    Returns
    -------
    Tensor
        Shaped like x.

    Shapes
    ------
    x: (N, *S) -> (N, *S).

    References
    ----------
    Simonyan, K., Vedaldi, A., Zisserman, A. "Deep inside convolutional networks."
    ICLR workshop 2014. Hendrycks & Gimpel (2017) §4.
    """
    check_param("gradient", "absolute", absolute, BOOL)
    g = _input_gradient(model, x, y, None, bounds, "gradient")
    return g.abs() if absolute else g


def guided_backprop(
    model: nn.Module,
    x: Tensor,
    y: Tensor | int | None = None,
    *,
    bounds: Bounds = (0.0, 1.0),
) -> Tensor:
    """Guided backpropagation: R_l = (f_l > 0)(R_{l+1} > 0) R_{l+1} at every ReLU.

    Applies to ``nn.ReLU`` modules and to functional ``F.relu`` / ``torch.relu`` /
    ``Tensor.relu`` calls (in place or not). Other activations, GELU included, keep their
    ordinary derivative and an :class:`UnmodifiedActivationWarning` names them; without
    any ReLU the map is the plain gradient.

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K); run in eval mode (every module's mode is restored).
    x : Tensor
        Inputs (N, C, H, W) or (N, D) within ``bounds``; never modified, no ``.grad``.
    y : Tensor (N,) or int, optional
        Class whose logit is explained; default the predicted class.

    Returns
    -------
    Tensor
        Shaped like x.

    Shapes
    ------
    x: (N, *S) -> (N, *S).

    References
    ----------
    Springenberg et al. (2015); Hendrycks & Gimpel (2017) §4.
    """
    return _input_gradient(model, x, y, "guided", bounds, "guided_backprop")


def hendrycks_saliency(
    model: nn.Module,
    x: Tensor,
    y: Tensor | int | None = None,
    *,
    bounds: Bounds = (0.0, 1.0),
) -> Tensor:
    """Hendrycks & Gimpel's saliency map: R_l = (f_l > 0)(R_{l+1} > 0) at every ReLU.

    The backward signal through each ReLU is replaced by the 0/1 indicator that both the
    activation and the incoming signal are positive (magnitudes dropped); linear layers,
    convolutions and pooling backpropagate as usual. For GELU (their footnote 2),
    R_l = g′(x) g′(R_{l+1}) with g′ the GELU derivative. The paper displays the positive
    part of the map.

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K); run in eval mode (every module's mode is restored).
    x : Tensor
        Inputs (N, C, H, W) or (N, D) within ``bounds``; never modified, no ``.grad``.
    y : Tensor (N,) or int, optional
        Class whose logit is explained; default the predicted class.

    Returns
    -------
    Tensor
        Shaped like x.

    Shapes
    ------
    x: (N, *S) -> (N, *S).

    References
    ----------
    Hendrycks, D., Gimpel, K. arXiv:1608.00530 (2017), §4 and footnote 2.
    """
    return _input_gradient(model, x, y, "hendrycks", bounds, "hendrycks_saliency")
