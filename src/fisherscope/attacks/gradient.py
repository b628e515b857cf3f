"""One-step gradient attacks: FGM (L2), the baseline of Zhao et al. Table 2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .base import OneStepAttack, input_gradient

__all__ = ["FGM"]


@dataclass(frozen=True, kw_only=True)
class FGM(OneStepAttack):
    """Fast gradient method, L2 (Goodfellow et al. 2015; Kurakin et al. 2016b).

    ``x_adv = clip(x + eps · g / ‖g‖₂)`` with g = ∇x CE(y) (untargeted) or −∇x CE(target)
    (targeted). Samples with a zero gradient are left unperturbed.

    Parameters
    ----------
    eps : float
        L2 norm of the perturbation before clipping to ``bounds``.

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x.

    References
    ----------
    Kurakin, Goodfellow, Bengio. "Adversarial examples in the physical world." arXiv:1607.02533.

    Examples
    --------
    >>> attack = FGM(eps=2.0)
    >>> x_adv = attack(model, x, y)  # doctest: +SKIP
    """

    eps: float
    norm = "l2"

    def _prepare(self, model: nn.Module, x: Tensor, y: Tensor, targeted: bool, generator: Any) -> Tensor:
        _, grad = input_gradient(model, x, y, targeted=targeted)
        n = grad.flatten(1).norm(dim=1)
        unit = grad / n.clamp_min(torch.finfo(grad.dtype).tiny).reshape(-1, *([1] * (x.ndim - 1)))
        return torch.where((n > 0).reshape(-1, *([1] * (x.ndim - 1))), unit, torch.zeros_like(unit))

    def _step(self, model, x, y, state, eps, targeted):
        return x + eps.reshape(-1, *([1] * (x.ndim - 1))) * state, {}
