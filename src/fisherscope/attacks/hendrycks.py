"""Hendrycks & Gimpel's targeted attacks (2017, §2–3): gradient descent towards a random class.

Two attacks make the adversarial images of the paper's detection experiments:

- :class:`HGTargeted`, the iterative attack: plain (unsigned) gradient descent on
  CE(target) + λ‖x − x0‖², clipped to the box after every step, stopped per sample as
  soon as the softmax probability of the target exceeds 0.5;
- :class:`HGFast`, the "fast" attack: one targeted fast-gradient-sign step towards the
  same kind of random target.

Both report success by the paper's keep rule: an adversarial image counts only if the
model gives its target class a softmax probability above ``threshold`` (0.5), which for
``threshold >= 0.5`` also means that the target is the predicted class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from .._batching import per_sample
from .._validation import (
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    check_param,
    check_params,
    one_of,
    real,
)
from .base import Attack, AttackResult, OneStepAttack, input_gradient
from .gradient import choose_targets

__all__ = ["HGFast", "HGTargeted"]

TargetSelection = Literal["random", "least_likely", "most_likely"]
_SELECTIONS = ("random", "least_likely", "most_likely")


def _check_common(attack: Attack) -> None:
    check_params(type(attack).__name__, attack, {
        "threshold": real(gt=0, lt=1).but(expected="a probability in (0, 1)"),
        "target": one_of(*_SELECTIONS),
    })


class _KeepRule(Attack):
    """Success = p_target > threshold and prediction = target (the paper's keep rule)."""

    supports_targeted: ClassVar[bool] = True

    def run(self, model: nn.Module, x: Tensor, y: Tensor | None = None, *, targeted: bool = False,
            generator: torch.Generator | None = None, eps: float | Tensor | None = None) -> AttackResult:
        res = super().run(model, x, y, targeted=targeted, generator=generator, eps=eps)
        target = res.extras["target"]
        probs = torch.softmax(res.logits_adv.double(), dim=1)
        p_target = probs.gather(1, target[:, None]).squeeze(1).to(res.logits_adv.dtype)
        success = (p_target > self.threshold) & (res.logits_adv.argmax(1) == target)  # type: ignore[attr-defined]
        return dataclasses.replace(res, success=success, extras={**res.extras, "p_target": p_target})

    def _targets(self, model: nn.Module, x: Tensor, y: Tensor, targeted: bool,
                 generator: torch.Generator | None) -> Tensor:
        if targeted:
            return y
        with torch.no_grad():
            logits = model(x)
        return choose_targets(logits, y, self.target, generator)  # type: ignore[attr-defined]


@dataclass(frozen=True, kw_only=True)
class HGTargeted(_KeepRule):
    """Iterative targeted attack of Hendrycks & Gimpel (2017, §1–3): raw-gradient descent.

    With x_0 the clean image and t the target, each step is::

        x_{s+1} = clip_[lo, hi]( x_s − α · ∇x [ CE(f(x_s), t) + λ ‖x_s − x_0‖₂² ] )
                = clip_[lo, hi]( x_s − α · (∇x CE(f(x_s), t) + 2λ (x_s − x_0)) )

    i.e. gradient descent with the unsigned gradient (not its sign), clipped to the box
    after every step (their §2 argument for box constraints). Before every step each
    sample is checked: once p_t(x_s) > ``threshold`` it is finished and frozen at x_s
    (so ``steps`` = 0 when the clean image already satisfies the rule); others stop after
    ``max_steps`` steps. Finished samples leave the batch, so the remaining steps cost
    only the samples still running.

    Targets: ``targeted=True`` takes y as the targets. ``targeted=False`` takes y as the
    classes to move away from (true labels, default: the predictions) and draws a target
    ≠ y per sample: uniformly at random with ``generator`` (the paper), or by
    ``target`` (the field's name and meaning follow OTCM's; ``targeted=True`` ignores it).
    The target is returned in ``extras["target"]``.

    Success is the paper's keep rule, recomputed at ``x_adv``: p_target > ``threshold``
    *and* argmax = target (implied by the first when ``threshold >= 0.5``). For an
    untargeted call this implies misclassification, since target ≠ y. The paper's other
    rule, attacking only correctly classified sources, belongs to the experiment (select
    the samples before calling).

    Parameters
    ----------
    step_size : float
        α (paper: 1/255 for images in [0, 1]).
    l2_reg : float
        λ, weight of the squared L2 distance to the clean image (paper: 1e-3; 1 for the
        reconstruction experiment of §3.4). The authors' CIFAR code steps along
        ∇CE + λ (x − x0), the gradient of (λ/2)‖x − x0‖²; use ``l2_reg = λ/2`` to match it.
        Their MNIST code builds the term from constants, so it drops out of the gradient
        there (``l2_reg = 0``).
    threshold : float
        Stop (and success) once the target's softmax probability exceeds this (0.5).
    max_steps : int
        Most descent steps per sample (paper: 1000; 100 in their CIFAR default).
    target : {"random", "least_likely", "most_likely"}
        How untargeted calls choose the target (see :func:`~fisherscope.attacks.gradient.choose_targets`).

    Extras
    ------
    target (N,) int64; steps (N,) int64 descent steps taken; p_target (N,) at x_adv.

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x.

    References
    ----------
    Hendrycks, D., Gimpel, K. "Early methods for detecting adversarial images" /
    "Methods for detecting adversarial images and a new saliency map." ICLR workshop 2017,
    arXiv:1608.00530, §1 (objective), §2 (clipping), §3.2 (1/255, λ = 1e-3, 50% rule).

    Examples
    --------
    >>> attack = HGTargeted()  # α = 1/255, λ = 1e-3, p_target > 0.5, ≤ 1000 steps
    >>> res = attack.run(model, x, y, generator=torch.Generator().manual_seed(0))
    >>> bool((res.extras["target"] != y).all()), int(res.extras["steps"].max()) <= 1000
    (True, True)
    """

    step_size: float = 1 / 255
    l2_reg: float = 1e-3
    threshold: float = 0.5
    max_steps: int = 1000
    target: TargetSelection = "random"
    norms = ("l2",)
    budget = "none"
    standard = {}
    standard_description = "targeted, 1/255 raw-gradient steps until p_target > 0.5"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_common(self)
        owner = type(self).__name__
        check_param(owner, "step_size", self.step_size, POSITIVE, fix="The paper uses 1/255.")
        check_params(owner, self, {"l2_reg": NON_NEGATIVE, "max_steps": POSITIVE_INT})

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: Any) -> tuple[Tensor, dict[str, Tensor]]:
        n = x.shape[0]
        target = self._targets(model, x, y, targeted, generator)
        out = x.clone()
        steps = torch.zeros(n, dtype=torch.int64, device=x.device)
        # the running (active) part of the batch
        idx = torch.arange(n, device=x.device)
        cur, x0, t = x.clone(), x, target
        for it in range(self.max_steps + 1):
            if it == self.max_steps:  # out of steps: everyone still running stops here
                out[idx] = cur
                steps[idx] = it
                break
            logits, grad = self.objective_gradient(model, cur, x0, t)  # per sample
            p_t = torch.log_softmax(logits.double(), dim=1).gather(1, t[:, None]).squeeze(1).exp()
            done = (p_t > self.threshold) & (logits.argmax(1) == t)
            if bool(done.any()):
                out[idx[done]] = cur[done]
                steps[idx[done]] = it
                keep = ~done
                if not bool(keep.any()):
                    break
                idx, cur, x0, t, grad = idx[keep], cur[keep], x0[keep], t[keep], grad[keep]
            cur = self.descend(model, cur, grad)
        return out, {"target": target, "steps": steps}

    # Hooks for variants that add a loss term or guard the step
    # (:class:`~fisherscope.attacks.detector_aware.BarrierHGTargeted`); public so that a
    # caller can trace the descent step by step (the hg_adaptive experiment does).
    def objective_gradient(self, model: nn.Module, x: Tensor, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(logits at x, ∇x [CE(f(x), t) + λ‖x − x0‖²]) per sample."""
        logits, grad = input_gradient(model, x, t)
        return logits, (grad + (2 * self.l2_reg) * (x - x0) if self.l2_reg else grad)

    def descend(self, model: nn.Module, x: Tensor, grad: Tensor) -> Tensor:  # noqa: ARG002
        """One clipped descent step from x along ``grad`` (the objective's gradient)."""
        lo, hi = self.bounds
        return (x - self.step_size * grad).clamp(lo, hi)


@dataclass(frozen=True, kw_only=True)
class HGFast(_KeepRule, OneStepAttack):
    """Hendrycks & Gimpel's "fast" attack: one targeted sign step towards a random class.

    ``x_adv = clip_[lo, hi](x − eps · sign(∇x CE(f(x), t)))`` — a targeted FGSM (L∞
    budget ``eps``), with t drawn as in :class:`HGTargeted` (random class ≠ y for
    untargeted calls, y itself for ``targeted=True``). Coordinates with a zero gradient
    are left unchanged. Success is the same keep rule: p_target > ``threshold`` and
    argmax = target, recomputed at ``x_adv``; a step that only misclassifies (to another
    class, or with p_target ≤ 0.5) is not a success.

    Parameters
    ----------
    eps : float
        L∞ size of the step (paper: 10/255 on MNIST and CIFAR-10 in [0, 1]).
    threshold : float
        Keep rule on the target's softmax probability (0.5).
    target : {"random", "least_likely", "most_likely"}
        How untargeted calls choose the target (see :func:`~fisherscope.attacks.gradient.choose_targets`).

    Extras
    ------
    target (N,) int64; p_target (N,) at x_adv.

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x.

    References
    ----------
    Hendrycks, D., Gimpel, K. arXiv:1608.00530 (2017), §2 and §3.2 ("fast gradient sign
    ... step size of 10/255").

    Examples
    --------
    >>> attack = HGFast()  # eps = 10/255
    >>> res = attack.run(model, x, y, generator=torch.Generator().manual_seed(0))
    """

    eps: float = 10 / 255
    threshold: float = 0.5
    target: TargetSelection = "random"
    norms = ("linf",)
    budget = "required"
    standard = {}
    standard_description = "one targeted sign step of 10/255"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_common(self)

    def _prepare(self, model: nn.Module, x: Tensor, y: Tensor, targeted: bool,
                 generator: Any) -> tuple[Tensor, Tensor]:
        target = self._targets(model, x, y, targeted, generator)
        _, grad = input_gradient(model, x, target)  # ∇x CE(t)
        return -grad.sign(), target

    def _step(self, model, x, y, state, eps, targeted):
        direction, target = state
        return x + per_sample(eps, x) * direction, {"target": target}
