"""Momentum iterative FGSM (MI-FGSM), the attack of Martin & Elster's experiments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .base import Attack, input_gradient, project

__all__ = ["MIFGSM"]


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


@dataclass(frozen=True, kw_only=True)
class MIFGSM(Attack):
    """Momentum iterative fast gradient sign method, L∞ (Dong et al. 2018, Algorithm 1).

    With g_0 = 0 and x*_0 = x, for t = 0 … T − 1::

        g_{t+1}   = μ · g_t + ∇x J(x*_t, y) / ‖∇x J(x*_t, y)‖₁
        x*_{t+1}  = clip_[lo, hi]( proj_{‖· − x‖∞ ≤ ε}( x*_t + α · sign(g_{t+1}) ) )

    J is the cross-entropy of y (untargeted, ascended) or minus the cross-entropy of the
    target (targeted). The L1 norm is per sample; a sample whose gradient is exactly zero
    adds nothing to its momentum. Gradients are taken with respect to the input only
    (``torch.autograd.grad``), for the whole batch at once.

    Parameters
    ----------
    eps : float
        L∞ budget ε.
    steps : int
        Number of iterations T (paper: 10).
    decay : float
        Momentum decay μ (paper: 1.0; μ = 0 is I-FGSM / BIM).
    step_size : float, optional
        α; default ε / T, so that T steps can just reach the budget.

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x.

    References
    ----------
    Dong, Y., Liao, F., Pang, T., Su, H., Zhu, J., Hu, X., Li, J. "Boosting adversarial
    attacks with momentum." CVPR 2018, arXiv:1710.06081.

    Examples
    --------
    >>> attack = MIFGSM(eps=0.1, steps=10, decay=1.0)
    >>> x_adv = attack(model, x, y)  # doctest: +SKIP
    """

    eps: float
    steps: int = 10
    decay: float = 1.0
    step_size: float | None = None
    norm = "linf"

    def __post_init__(self) -> None:
        super().__post_init__()
        d = self.decay
        if isinstance(d, bool) or not isinstance(d, int | float) or not (d >= 0 and d < float("inf")):
            raise ValueError(f"The 'decay' parameter of MIFGSM must be a finite number >= 0; got {d!r}.")

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: Any) -> tuple[Tensor, dict[str, Tensor]]:
        assert eps is not None  # budgeted: the base class always passes eps
        alpha = eps / self.steps if self.step_size is None else torch.full_like(eps, self.step_size)
        lo, hi = self.bounds
        momentum = torch.zeros_like(x)
        x_adv = x.clone()
        for _ in range(self.steps):
            _, grad = input_gradient(model, x_adv, y, targeted=targeted)
            l1 = grad.flatten(1).abs().sum(1)
            unit = grad / _bcast(torch.where(l1 > 0, l1, torch.ones_like(l1)), x)
            momentum = self.decay * momentum + unit
            x_adv = x_adv + _bcast(alpha, x) * momentum.sign()
            x_adv = project(x, x_adv, eps, "linf").clamp(lo, hi)
        return x_adv, {}
