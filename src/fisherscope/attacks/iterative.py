"""Iterative gradient attacks: BIM, PGD, MI-FGSM and iterative OTCM, on one driver.

Every attack here repeats the same step, for t = 0 … T − 1::

    g_t      = ∇x J(x_t)                     (J = CE(y), or −CE(target) when targeted)
    x_{t+1}  = clip_[lo, hi]( proj_{‖· − x‖ ≤ ε}( x_t + α · d(g_t, x_t) ) )

and differs only in the start x_0 (x, or a random point of the ball for PGD) and in the
direction d (sign for L∞, g/‖g‖₂ for L2, a sparse L1 step, or MI-FGSM's momentum).
:func:`_iterate` is that loop, written once; the projection is
:func:`~fisherscope.attacks.base.project` (exact for L1) followed by the box clip. When
there is no budget (``eps=None``) the projection is skipped, the box clip is not.
Gradients are taken with respect to the input only, for the whole batch at once; every
step is run (no early stop inside a run, as in Kurakin and Madry: stopping at the first
success would return less confident examples).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._batching import per_sample
from .._validation import BOOL, NON_NEGATIVE, POSITIVE_INT, check_param, check_params, one_of, real
from .base import Attack, input_gradient, project, random_in_ball
from .gradient import choose_targets, unit_l2

__all__ = ["BIM", "MIFGSM", "PGD", "IterativeOTCM", "sparse_l1_direction"]

Direction = Callable[[Tensor, Tensor], Tensor]


def _iterate(model: nn.Module, x: Tensor, y: Tensor, x_start: Tensor, *, steps: int, alpha: Tensor,
             eps: Tensor | None, norm: str, bounds: tuple[float, float], targeted: bool,
             direction: Direction, track: bool = False) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The shared loop (module docstring). Returns (x_T, logits at x_T, predictions (N, T)).

    ``alpha`` and ``eps`` are per sample (N,). With ``track`` the predictions after every
    step are recorded (those of steps 1 … T − 1 come free with the next gradient; the
    last costs one forward pass), otherwise the last two outputs are ``None``.
    """
    lo, hi = bounds
    a = per_sample(alpha, x)
    xt = x_start
    preds: list[Tensor] = []
    for t in range(steps):
        logits, grad = input_gradient(model, xt, y, targeted=targeted)
        if track and t > 0:
            preds.append(logits.argmax(1))
        xt = xt + a * direction(grad, xt)
        if eps is not None:
            xt = project(x, xt, eps, norm)  # type: ignore[arg-type]
        xt = xt.clamp(lo, hi)
    if not track:
        return xt, None, None
    with torch.no_grad():
        logits = model(xt)
    preds.append(logits.argmax(1))
    return xt, logits, torch.stack(preds, 1)


def _hits(preds: Tensor, y: Tensor, targeted: bool) -> Tensor:
    y = y.unsqueeze(1) if preds.ndim == 2 else y
    return preds == y if targeted else preds != y


def sparse_l1_direction(grad: Tensor, x_t: Tensor, bounds: tuple[float, float], sparsity: float) -> Tensor:
    """Steepest-ascent L1 step of unit L1 norm, spread over the largest gradient coordinates.

    The exact steepest-ascent direction for the L1 norm moves a single coordinate (the
    largest |g_i|); like the sparse L1 descent of Tramèr & Boneh (2019) this moves the
    ``k = max(1, D − ⌊sparsity · D⌋)`` coordinates of largest |g_i| (``sparsity = 0.99``:
    the top 1 %, CleverHans' default 99th percentile) by sign(g_i)/k' each, k' the number
    of them with a non-zero gradient, so the step has L1 norm 1 (0 if the gradient
    vanishes). Coordinates that sit on the box and whose gradient points out of it are
    skipped (their step would be clipped away), as Tramèr & Boneh do. Exactly k
    coordinates are chosen (ties broken by ``torch.topk``), not "all above the
    percentile".

    Shapes
    ------
    grad, x_t: (N, ...) -> (N, ...).
    """
    lo, hi = bounds
    g = grad.flatten(1)
    xf = x_t.flatten(1)
    g = torch.where(((xf >= hi) & (g > 0)) | ((xf <= lo) & (g < 0)), torch.zeros_like(g), g)
    d = g.shape[1]
    k = max(1, d - math.floor(sparsity * d + 1e-9))
    idx = g.abs().topk(k, dim=1).indices
    s = g.gather(1, idx).sign()
    nnz = (s != 0).sum(1, keepdim=True).clamp_min(1).to(g.dtype)
    return torch.zeros_like(g).scatter(1, idx, s / nnz).reshape(grad.shape)


def _steepest(norm: str, bounds: tuple[float, float], l1_sparsity: float) -> Direction:
    if norm == "linf":
        return lambda g, xt: g.sign()
    if norm == "l2":
        return lambda g, xt: unit_l2(g)
    return lambda g, xt: sparse_l1_direction(g, xt, bounds, l1_sparsity)


@dataclass(frozen=True, kw_only=True)
class BIM(Attack):
    """Basic iterative method (Kurakin, Goodfellow, Bengio 2016a): repeated steepest-ascent steps.

    From x_0 = x (no random start), ``steps`` steps of size ``step_size`` along the
    steepest-ascent direction of ``norm``, each followed by the projection onto the
    ``eps`` ball and the clip to ``bounds`` (module docstring):

    - ``"linf"``: sign(g) — Kurakin's I-FGSM;
    - ``"l2"``: g/‖g‖₂ — iterative FGM (zero gradient: no move);
    - ``"l1"``: the sparse L1 step of :func:`sparse_l1_direction` (top ``1 − l1_sparsity``
      fraction of the coordinates), and the *exact* Euclidean projection onto the L1 ball
      (Duchi et al. 2008).

    ``eps=None`` gives the un-budgeted iterative variant Zhao et al. use for Fig. 2(b):
    ``BIM(norm="l2", step_size=0.05, steps=T, eps=None)`` is "iterative FGM, 0.05 per
    step", clipped to the box only; ``run(..., eps=...)`` is then ignored.

    Parameters
    ----------
    eps : float or None
        Budget in the units of ``norm``; ``None`` = no projection (then ``step_size`` is required).
    steps : int
        Number of iterations T.
    step_size : float, optional
        α per step (units of ``norm``). Default ``1.25 · eps / steps``: Kurakin et al. use
        α = 1/255 and T = min(255ε + 4, 1.25 · 255ε) for images in [0, 1], i.e.
        α · T = 1.25 ε whenever ε ≤ 16/255 — the same overshoot factor here, for any T.
    norm : {"linf", "l2", "l1"}
        Threat model (an instance field: ``BIM.norm`` on the class is the default, "linf").
    l1_sparsity : float
        For ``norm="l1"`` only: fraction of coordinates left still at every step, in [0, 1).

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x. ``run`` extras:
    ``success_per_step`` (N, steps) bool, success after every iteration.

    References
    ----------
    Kurakin, Goodfellow, Bengio. "Adversarial examples in the physical world." ICLR-W
    2017, arXiv:1607.02533.
    Tramèr, Boneh. "Adversarial training and robustness for multiple perturbations."
    NeurIPS 2019, arXiv:1904.13000 (sparse L1 steps).
    Duchi, Shalev-Shwartz, Singer, Chandra. "Efficient projections onto the l1-ball for
    learning in high dimensions." ICML 2008.

    Examples
    --------
    >>> x_adv = BIM(eps=0.1, steps=10)(model, x, y)
    >>> res = BIM(norm="l2", step_size=0.05, steps=20, eps=None).run(model, x, y)
    >>> rate = res.extras["success_per_step"].float().mean(0)  # fooling rate after each step
    >>> rate.shape
    torch.Size([20])
    """

    eps: float | None
    steps: int = 10
    step_size: float | None = None
    norm: Literal["linf", "l2", "l1"] = "linf"  # type: ignore[misc]  # an instance field here
    l1_sparsity: float = 0.99
    norms = ("linf", "l2", "l1")
    budget = "optional"
    standard = {"eps": 0.1, "steps": 10}
    standard_description = "L∞ ε = 0.1, 10 steps"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_params(type(self).__name__, self, {
            "norm": one_of("linf", "l2", "l1"),
            "l1_sparsity": real(ge=0, lt=1),
        })
        if self.eps is None and self.step_size is None:
            raise ValueError(f"{type(self).__name__} without a budget (eps=None) needs an explicit step_size.")

    def _alpha(self, eps: Tensor | None, x: Tensor, factor: float) -> Tensor:
        if self.step_size is not None:
            return torch.full((x.shape[0],), float(self.step_size), dtype=x.dtype, device=x.device)
        assert eps is not None  # __post_init__: no budget needs a step_size
        return factor * eps / self.steps

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: Any) -> tuple[Tensor, dict[str, Tensor]]:
        x_adv, _, preds = _iterate(model, x, y, x, steps=self.steps, alpha=self._alpha(eps, x, 1.25), eps=eps,
                                   norm=self.norm, bounds=self.bounds, targeted=targeted,
                                   direction=_steepest(self.norm, self.bounds, self.l1_sparsity), track=True)
        assert preds is not None
        return x_adv, {"success_per_step": _hits(preds, y, targeted)}


@dataclass(frozen=True, kw_only=True)
class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018), L∞ or L2, with random starts and restarts.

    BIM's iteration (module docstring; sign steps for L∞, g/‖g‖₂ steps for L2) from a
    random start: uniform in the L∞ ball (x + U(−ε, ε) per coordinate), or uniform in the
    L2 ball (Gaussian direction, radius ε · U^{1/D}), clipped to ``bounds``.
    (``torchattacks.PGDL2`` draws the radius as ε · U, which is not uniform in the ball.)

    Restarts: a sample fooled by a restart keeps that (its first successful) example and
    is not attacked again — later restarts run on the remaining samples only. A sample
    never fooled keeps the restart with the highest final loss (CE(y), or −CE(target) when
    targeted). ``run(...).extras["restart"]`` says which restart was kept. Every restart
    draws its start for the whole batch, so results are reproducible from the generator.

    Parameters
    ----------
    eps : float
        Budget in the units of ``norm``. Madry et al.: 0.3 (L∞) on MNIST, 8/255 on CIFAR-10.
    steps : int
        Iterations per restart (Madry MNIST: 40 for training, 100 for evaluation;
        CIFAR-10: 7 / 20).
    step_size : float, optional
        α; default ``2.5 · eps / steps``, a common rule (e.g. the ``robustness`` library).
        Madry MNIST: 0.01 (with ε = 0.3); CIFAR-10: 2/255.
    norm : {"linf", "l2"}
        Threat model (an instance field: ``PGD.norm`` on the class is the default, "linf").
    random_start : bool
        Start from a uniform point of the ball (default, as Madry) or from x.
    restarts : int
        Number of random restarts (needs ``random_start``; Madry's MNIST challenge: 50).

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x. ``run`` extras:
    ``restart`` (N,) int64, the restart whose example was kept.

    References
    ----------
    Madry, Makelov, Schmidt, Tsipras, Vladu. "Towards deep learning models resistant to
    adversarial attacks." ICLR 2018, arXiv:1706.06083.

    Examples
    --------
    >>> attack = PGD(eps=0.3, step_size=0.01, steps=40)  # Madry, MNIST
    >>> x_adv = attack(model, x, y, generator=torch.Generator().manual_seed(0))
    """

    eps: float
    steps: int = 40
    step_size: float | None = None
    norm: Literal["linf", "l2"] = "linf"  # type: ignore[misc]  # an instance field here
    random_start: bool = True
    restarts: int = 1
    norms = ("linf", "l2")
    budget = "required"
    standard = {"eps": 0.1, "steps": 20}
    standard_description = "L∞ ε = 0.1, 20 steps, random start"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_params(type(self).__name__, self, {
            "norm": one_of("linf", "l2"),
            "random_start": BOOL,
            "restarts": POSITIVE_INT,
        })
        if self.restarts > 1 and not self.random_start:
            raise ValueError("PGD restarts without random_start would repeat the same run; set random_start=True or restarts=1.")

    def _start(self, x: Tensor, eps: Tensor, generator: torch.Generator | None) -> Tensor:
        return random_in_ball(x, eps, self.norm, self.bounds, generator)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        assert eps is not None  # budgeted: the base class always passes eps
        alpha = eps * 2.5 / self.steps if self.step_size is None else torch.full_like(eps, self.step_size)
        direction = _steepest(self.norm, self.bounds, 0.0)
        kept = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if self.restarts == 1:  # nothing to choose between: no forward at the end, no copies
            start = self._start(x, eps, generator) if self.random_start else x
            xt, _, _ = _iterate(model, x, y, start, steps=self.steps, alpha=alpha, eps=eps, norm=self.norm,
                                bounds=self.bounds, targeted=targeted, direction=direction)
            return xt, {"restart": kept}
        best = x.clone()
        best_loss = torch.full_like(eps, -float("inf"))
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for r in range(self.restarts):
            start = self._start(x, eps, generator) if self.random_start else x
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xs, ys = x[idx], y[idx]
            xt, logits, _ = _iterate(model, xs, ys, start[idx], steps=self.steps, alpha=alpha[idx], eps=eps[idx],
                                     norm=self.norm, bounds=self.bounds, targeted=targeted, direction=direction,
                                     track=True)
            assert logits is not None
            hit = _hits(logits.argmax(1), ys, targeted)
            loss = torch.nn.functional.cross_entropy(logits, ys, reduction="none")
            loss = -loss if targeted else loss
            take = hit | (loss > best_loss[idx])
            best[idx] = torch.where(per_sample(take, xt), xt, best[idx])
            best_loss[idx] = torch.where(take, loss, best_loss[idx])
            kept[idx] = torch.where(take, torch.full_like(kept[idx], r), kept[idx])
            done[idx] = hit
        return best, {"restart": kept}


@dataclass(frozen=True, kw_only=True)
class MIFGSM(Attack):
    """Momentum iterative fast gradient sign method, L∞ (Dong et al. 2018, Algorithm 1).

    With g_0 = 0 and x*_0 = x, for t = 0 … T − 1::

        g_{t+1}   = μ · g_t + ∇x J(x*_t, y) / ‖∇x J(x*_t, y)‖₁
        x*_{t+1}  = clip_[lo, hi]( proj_{‖· − x‖∞ ≤ ε}( x*_t + α · sign(g_{t+1}) ) )

    J is the cross-entropy of y (untargeted, ascended) or minus the cross-entropy of the
    target (targeted). The L1 norm is per sample; a sample whose gradient is exactly zero
    adds nothing to its momentum. Gradients are taken with respect to the input only
    (``torch.autograd.grad``), for the whole batch at once. ``torchattacks.MIFGSM``
    divides by the *mean* |g| instead of the L1 sum: its momentum is D times ours, the
    signs and hence the examples are the same (and it produces NaN for a zero gradient).

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
    >>> x_adv = attack(model, x, y)
    """

    eps: float
    steps: int = 10
    decay: float = 1.0
    step_size: float | None = None
    norms = ("linf",)
    budget = "required"
    standard = {"eps": 0.1, "steps": 10, "decay": 1.0}
    standard_description = "L∞ ε = 0.1, 10 steps, μ = 1"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_param(type(self).__name__, "decay", self.decay, NON_NEGATIVE)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: Any) -> tuple[Tensor, dict[str, Tensor]]:
        assert eps is not None  # budgeted: the base class always passes eps
        alpha = eps / self.steps if self.step_size is None else torch.full_like(eps, self.step_size)
        momentum = torch.zeros_like(x)

        def direction(grad: Tensor, xt: Tensor) -> Tensor:
            nonlocal momentum
            l1 = grad.flatten(1).abs().sum(1)
            momentum = self.decay * momentum + grad / per_sample(torch.where(l1 > 0, l1, torch.ones_like(l1)), x)
            return momentum.sign()

        x_adv, _, _ = _iterate(model, x, y, x, steps=self.steps, alpha=alpha, eps=eps, norm="linf",
                               bounds=self.bounds, targeted=targeted, direction=direction)
        return x_adv, {}


@dataclass(frozen=True, kw_only=True)
class IterativeOTCM(Attack):
    """Iterative one-step target class method (Zhao et al. 2019 §3.4, Fig. 2(b); Kurakin "iter. l.l.").

    :class:`~fisherscope.attacks.OTCM` repeated: one target t ≠ y per sample is chosen
    once at the clean input (``target="random"``: uniform over the wrong classes from
    ``generator``, or ``"least_likely"``), then ``steps`` steps of size ``step_size``
    along −∇x CE(t)/‖∇x CE(t)‖₂ (``norm="linf"``: −sign ∇x CE(t)), each clipped to
    ``bounds`` (and projected onto the ``eps`` ball when ``eps`` is given; by default
    there is no total budget, as in Zhao's 0.05-per-step curves). Untargeted calls
    (``y`` = true label) count success as misclassification; ``targeted=True`` takes ``y``
    as the target.

    Parameters
    ----------
    step_size : float
        Length of each step in the units of ``norm`` (Zhao, MNIST: 0.05).
    steps : int
        Number of steps.
    eps : float, optional
        Total budget; ``None`` (default) = clip to the box only.
    target : {"random", "least_likely"}
        Target choice for untargeted calls.
    norm : {"l2", "linf"}
        Normalised-gradient (default) or sign steps.

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x. ``run`` extras:
    ``target`` (N,) int64, ``success_per_step`` (N, steps) bool.

    References
    ----------
    Zhao et al. "The Adversarial Attack and Detection under the Fisher Information
    Metric." AAAI 2019, arXiv:1810.03806.
    Kurakin, Goodfellow, Bengio. "Adversarial examples in the physical world."
    arXiv:1607.02533 (iterative least-likely class method).

    Examples
    --------
    >>> attack = IterativeOTCM(step_size=0.05, steps=40)  # Zhao Fig. 2(b), MNIST
    >>> res = attack.run(model, x, y, generator=torch.Generator().manual_seed(0))
    >>> res.extras["success_per_step"].float().mean(0).shape  # fooling rate after each step
    torch.Size([40])
    """

    step_size: float = 0.05
    steps: int = 10
    eps: float | None = None
    target: Literal["random", "least_likely"] = "random"
    norm: Literal["l2", "linf"] = "l2"  # type: ignore[misc]  # an instance field here
    norms = ("l2", "linf")
    budget = "optional"
    standard = {"eps": 1.0, "step_size": 0.1, "steps": 10}
    standard_description = "L2 ε = 1.0, 10 targeted steps of 0.1"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_params(type(self).__name__, self, {
            "target": one_of("random", "least_likely"),
            "norm": one_of("l2", "linf"),
        })

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        if targeted:
            t = y
        else:
            with torch.no_grad():
                t = choose_targets(model(x), y, self.target, generator)
        alpha = torch.full((x.shape[0],), float(self.step_size), dtype=x.dtype, device=x.device)
        x_adv, _, preds = _iterate(model, x, t, x, steps=self.steps, alpha=alpha, eps=eps, norm=self.norm,
                                   bounds=self.bounds, targeted=True,
                                   direction=_steepest(self.norm, self.bounds, 0.0), track=True)
        assert preds is not None
        return x_adv, {"target": t, "success_per_step": _hits(preds, y, targeted)}
