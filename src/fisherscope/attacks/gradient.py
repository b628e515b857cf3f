"""One-step gradient attacks: FGM (L2), the baseline of Zhao et al. Table 2, FGSM (L∞)
and the one-step target class method OTCM (Zhao et al. §3.4; Kurakin et al. 2016b).

The direction of each attack does not depend on the budget, so all three are
:class:`~fisherscope.attacks.base.OneStepAttack`: a budget search
(:func:`~fisherscope.evaluation.least_perturbation`) computes the gradient once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._batching import per_sample
from .._random import randint
from .._validation import check_param, check_params, one_of
from .base import OneStepAttack, input_gradient

__all__ = ["FGM", "FGSM", "OTCM", "choose_targets", "unit_l2"]


def unit_l2(grad: Tensor) -> Tensor:
    """``grad / ‖grad‖₂`` per sample; samples with a zero gradient give a zero direction."""
    n = grad.flatten(1).norm(dim=1)
    unit = grad / per_sample(n.clamp_min(torch.finfo(grad.dtype).tiny), grad)
    return torch.where(per_sample(n > 0, grad), unit, torch.zeros_like(unit))


def choose_targets(logits: Tensor, y: Tensor, how: str, generator: torch.Generator | None = None) -> Tensor:
    """A wrong class per sample: uniform over the K − 1 classes other than ``y``, or the least likely one.

    Parameters
    ----------
    logits : Tensor
        (N, K) logits at the clean inputs (only used by ``"least_likely"``; K is read from it).
    y : Tensor
        (N,) int64 true labels; the target is never ``y``.
    how : {"random", "least_likely", "most_likely"}
        ``"random"``: ``t = (y + u) mod K`` with u uniform on {1, …, K − 1}, drawn on the
        CPU (or the generator's device) from ``generator`` — uniform over the wrong
        classes. ``"least_likely"``: the argmin of the logits over the classes other than
        ``y`` (Kurakin et al. 2016b, "step l.l."; equal to the plain argmin whenever ``y``
        is not itself the least likely class, e.g. for every correctly classified sample).
        ``"most_likely"``: the argmax over the classes other than ``y`` (the runner-up
        when ``y`` is the prediction).

    Random targets are drawn in batch order: a batch and its samples attacked one at a
    time with identically seeded generators get different targets.

    Shapes
    ------
    logits: (N, K); y: (N,) -> (N,) int64.
    """
    check_param("choose_targets", "how", how, one_of("random", "least_likely", "most_likely"))
    k = logits.shape[1]
    if k < 2:
        raise ValueError(f"a target class needs at least 2 classes; the model has {k} output.")
    if how == "random":
        u = randint(1, k, tuple(y.shape), generator=generator, like=y)
        return (y + u) % k
    is_y = torch.nn.functional.one_hot(y, k).bool()
    if how == "least_likely":
        return logits.detach().masked_fill(is_y, float("inf")).argmin(1)
    return logits.detach().masked_fill(is_y, float("-inf")).argmax(1)  # most_likely


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
    >>> x_adv = attack(model, x, y)
    """

    eps: float
    norms = ("l2",)
    budget = "required"
    standard = {"eps": 1.0}
    standard_description = "L2 ε = 1.0, one step"

    def _prepare(self, model: nn.Module, x: Tensor, y: Tensor, targeted: bool, generator: Any) -> Tensor:
        _, grad = input_gradient(model, x, y, targeted=targeted)
        return unit_l2(grad)

    def _step(self, model, x, y, state, eps, targeted):
        return x + per_sample(eps, x) * state, {}


@dataclass(frozen=True, kw_only=True)
class FGSM(OneStepAttack):
    """Fast gradient sign method, L∞ (Goodfellow, Shlens, Szegedy 2015).

    ``x_adv = clip(x + eps · sign(g))`` with g = ∇x CE(y) (untargeted) or −∇x CE(target)
    (targeted). Coordinates with a zero gradient are not moved (sign 0), so a sample whose
    gradient vanishes is returned unperturbed. Same result as ``torchattacks.FGSM``
    (checked in ``tests/peer/test_torchattacks.py``).

    Parameters
    ----------
    eps : float
        L∞ size of the perturbation (before clipping to ``bounds``).

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x.

    References
    ----------
    Goodfellow, Shlens, Szegedy. "Explaining and harnessing adversarial examples."
    ICLR 2015, arXiv:1412.6572.

    Examples
    --------
    >>> attack = FGSM(eps=0.1)
    >>> x_adv = attack(model, x, y)
    """

    eps: float
    norms = ("linf",)
    budget = "required"
    standard = {"eps": 0.1}
    standard_description = "L∞ ε = 0.1, one step"

    def _prepare(self, model: nn.Module, x: Tensor, y: Tensor, targeted: bool, generator: Any) -> Tensor:
        _, grad = input_gradient(model, x, y, targeted=targeted)
        return grad.sign()

    def _step(self, model, x, y, state, eps, targeted):
        return x + per_sample(eps, x) * state, {}


@dataclass(frozen=True, kw_only=True)
class OTCM(OneStepAttack):
    """One-step target class method (Kurakin et al. 2016b), as Zhao et al. 2019 §3.4 use it.

    One gradient step that *decreases* the cross-entropy of a target class t::

        L2  (default):  x_adv = clip(x − eps · ∇x CE(t) / ‖∇x CE(t)‖₂)
        L∞ (norm="linf"): x_adv = clip(x − eps · sign(∇x CE(t)))

    With ``targeted=False`` (the default) ``y`` is the *true* label: a target t ≠ y is
    chosen per sample (``target="random"``: uniform over the wrong classes from
    ``generator``, as in Zhao; ``target="least_likely"``: Kurakin's "step l.l."), and
    success means misclassification (pred ≠ y), the fooling rate Zhao report. With
    ``targeted=True`` ``y`` *is* the target, ``target`` is ignored and success means
    pred = y. A sample whose gradient vanishes is left unperturbed.

    The drawn targets are returned in ``run(...).extras["target"]``; the direction (and
    the draw) is computed once per :meth:`prepare`, so a budget search reuses it. For the
    iterative variant of Zhao Fig. 2(b) see :class:`~fisherscope.attacks.IterativeOTCM`.

    Parameters
    ----------
    eps : float
        Size of the step in the units of ``norm`` (L2 norm, or L∞ size), before clipping.
    target : {"random", "least_likely"}
        How the target is chosen when ``targeted=False`` (see :func:`choose_targets`).
    norm : {"l2", "linf"}
        Normalised-gradient step (Zhao's OTCM, the default) or the sign step of Kurakin's
        "step l.l." / targeted FGSM. The budget is enforced in this norm. (``OTCM.norm``
        on the class is the default, ``"l2"``; an instance reports its own.)

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x. ``run`` extras:
    ``target`` (N,) int64.

    References
    ----------
    Kurakin, Goodfellow, Bengio. "Adversarial machine learning at scale." ICLR 2017,
    arXiv:1611.01236 (one-step target class methods, "step l.l.").
    Zhao et al. "The Adversarial Attack and Detection under the Fisher Information
    Metric." AAAI 2019, arXiv:1810.03806, §3.4 (random wrong target class).

    Examples
    --------
    >>> res = OTCM(eps=2.0).run(model, x, y, generator=torch.Generator().manual_seed(0))
    >>> bool((res.extras["target"] != y).all())  # the target is never the true class
    True
    """

    eps: float
    target: Literal["random", "least_likely"] = "random"
    norm: Literal["l2", "linf"] = "l2"  # type: ignore[misc]  # an instance field here, a ClassVar in Attack
    norms = ("l2", "linf")
    budget = "required"
    standard = {"eps": 1.0}
    standard_description = "L2 ε = 1.0, one targeted step (random wrong class)"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_params(type(self).__name__, self, {
            "target": one_of("random", "least_likely"),
            "norm": one_of("l2", "linf"),
        })

    def _prepare(self, model: nn.Module, x: Tensor, y: Tensor, targeted: bool,
                 generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        if targeted:
            t = y
        else:
            with torch.no_grad():
                logits = model(x)
            t = choose_targets(logits, y, self.target, generator)
        _, grad = input_gradient(model, x, t, targeted=True)  # −∇x CE(t)
        return (unit_l2(grad) if self.norm == "l2" else grad.sign()), t

    def _step(self, model, x, y, state, eps, targeted):
        direction, t = state
        return x + per_sample(eps, x) * direction, {"target": t}
