"""Adaptive attacks on a classifier guarded by a detector (the attacker knows the detector).

:class:`DetectorAwarePGD` looks, within the same ε-ball as an oblivious attack, for an x_adv
that is **misclassified and scored below the detector's threshold** — the only success that
counts against a detector (Carlini & Wagner 2017; Tramèr et al. 2020, "optimise to both
misclassify and pass the detector at its operating threshold"). The detector enters as a
differentiable score ``score(x) -> (N,)`` (higher = more adversarial) with its fitted
``threshold``: a :class:`~fisherscope.detectors.TorchScore` built from the detector's torch
mirror, or a surrogate's (attacks import no detectors: they take score callables).

With the classifier margin m(x) = max_{i≠y} z_i − z_y (> 0: misclassified; targeted:
z_t − max_{i≠t} z_i) and the detector excess d(x) = (score(x) − threshold) / scale, two
modes step along:

- ``"penalty"``: ĝ(m) · [m ≤ κ] − λ ĝ(d) · [d > −margin] · [m > 0], the ascent directions
  of the classifier hinge min(m, κ) and of the detector hinge −max(d + margin, 0), each
  normalised to unit L2 norm per sample before they are added (so neither term's scale —
  logits vs kernel log-densities vs whitened variances — decides the direction; λ =
  ``penalty_weight`` weighs them). The detector term waits until the sample is
  misclassified: on the way to the decision boundary most detector scores rise whatever
  the path (the softmax confidence falls, the Fisher trace grows), and a penalty active
  there cancels the classifier step instead of steering it;
- ``"orthogonal"`` (Bryniarski et al. 2022, orthogonal projected gradient descent): while
  the sample is still classified correctly, the classifier direction with its component
  along ∇d removed (the step does not raise the detector score to first order); once
  misclassified but detected, the direction −∇d with its component along ∇m removed (the
  step lowers the score without undoing the misclassification to first order); once both
  hold, no step.

Then the steepest-ascent step of the norm (sign for L∞, unit L2 for L2), the projection onto
the ε-ball and the clip to the box, as PGD. Every step costs one forward and one backward of
the model and the score (two backwards in the orthogonal mode; ``eot_iter`` draws of the
score for a randomised detector, e.g. BU's dropout masks: expectation over transformation).
Per sample the returned point is the successful iterate with the lowest detector excess (the
safest margin), else the iterate with the best objective; restarts start again from random
points for the samples not yet successful.

References
----------
Carlini, Wagner. "Adversarial examples are not easily detected: bypassing ten detection
methods." AISec 2017, arXiv:1705.07263.
Tramèr, Carlini, Brendel, Madry. "On adaptive attacks to adversarial example defenses."
NeurIPS 2020, arXiv:2002.08347.
Bryniarski, Hingun, Pachuca, Wang, Carlini. "Evading adversarial example detection defenses
with orthogonal projected gradient descent." ICLR 2022, arXiv:2106.15023.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn

from .._batching import per_sample
from .._validation import (
    BOOL,
    CALLABLE,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    check_params,
    one_of,
    param_error,
    real,
)
from .base import Attack, AttackResult, project, random_in_ball

__all__ = ["DetectorAwarePGD", "classifier_margin"]

Score = Callable[[Tensor], Tensor]


def classifier_margin(logits: Tensor, y: Tensor, targeted: bool = False) -> Tensor:
    """max_{i≠y} z_i − z_y (untargeted: > 0 iff misclassified) or z_t − max_{i≠t} z_i (targeted)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -math.inf).amax(1)
    return z_y - other if targeted else other - z_y


def _unit(g: Tensor) -> Tensor:
    n = g.flatten(1).norm(dim=1)
    return g / per_sample(torch.where(n > 0, n, torch.ones_like(n)), g)


def _without(g: Tensor, along: Tensor) -> Tensor:
    """g minus its component along ``along``, per sample (unchanged where ``along`` = 0)."""
    a, b = g.flatten(1), along.flatten(1)
    bb = (b * b).sum(1)
    coef = torch.where(bb > 0, (a * b).sum(1) / torch.where(bb > 0, bb, torch.ones_like(bb)), torch.zeros_like(bb))
    return (a - coef[:, None] * b).reshape(g.shape)


@dataclass(frozen=True, kw_only=True)
class DetectorAwarePGD(Attack):
    """PGD against a classifier and a detector at once (module docstring).

    Parameters
    ----------
    eps : float
        Budget in the units of ``norm`` (use the oblivious attack's).
    score : callable
        ``score(x) -> (N,)`` differentiable detector score, higher = more adversarial
        (e.g. :class:`~fisherscope.detectors.TorchScore`).
    threshold : float
        The detector flags ``score > threshold`` (its fitted 5%-FPR threshold).
    scale : float
        Unit of the detector excess d = (score − threshold) / scale (e.g. the standard
        deviation of clean scores); only ``margin`` is measured in it.
    margin : float
        Aim for d ≤ −margin (a safety margin for randomised or surrogate scores).
    steps : int
        Iterations per restart (use the oblivious attack's, or more).
    step_size : float, optional
        Default ``2.5 · eps / steps``.
    norm : {"linf", "l2"}
        Threat model.
    mode : {"penalty", "orthogonal"}
        How the classifier and detector directions combine (module docstring).
    kappa : float
        Classifier margin (logits) after which the classifier term is satisfied (≥ 0).
    penalty_weight : float
        λ of the detector direction in ``"penalty"`` mode.
    random_start : bool
        Start from a uniform point of the L∞ ball / a uniform point of the L2 ball.
    restarts : int
        Restarts for the samples not yet successful.
    eot_iter : int
        Score gradient averaged over this many draws (randomised detectors).
    step_transform : callable, optional
        ``step_transform(direction) -> tensor shaped like it``, applied to each step's
        direction before the norm's steepest step (sign or unit L2): e.g. a detector's
        ``project_off_window`` (:class:`~fisherscope.features.TrailingVarianceScore`),
        which removes the directions its score is built on. The random start is not
        transformed; use ``random_start=False`` to keep an invariant of the clean image.

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x. ``run`` extras: ``score`` (N,)
    at x_adv, ``undetected`` (N,) score ≤ threshold, ``margin`` (N,) classifier margin,
    ``restart`` (N,). ``run(...).success`` = misclassified (or at the target) and undetected
    **by this score**: for a surrogate or a random score, judge with the real detector.

    Examples
    --------
    >>> score = lambda t: t.flatten(1).mean(1)  # a toy "detector": mean brightness
    >>> atk = DetectorAwarePGD(eps=0.3, score=score, threshold=0.5, steps=20)
    >>> res = atk.run(model, x, y, generator=torch.Generator().manual_seed(0))
    >>> bool((res.extras["score"][res.success] <= 0.5).all())
    True
    """

    eps: float
    score: Score
    threshold: float
    scale: float = 1.0
    margin: float = 0.0
    steps: int = 100
    step_size: float | None = None
    norm: Literal["linf", "l2"] = "linf"  # type: ignore[misc]  # an instance field here
    mode: Literal["penalty", "orthogonal"] = "penalty"
    kappa: float = math.inf
    penalty_weight: float = 1.0
    random_start: bool = True
    restarts: int = 1
    eot_iter: int = 1
    step_transform: Callable[[Tensor], Tensor] | None = None
    norms = ("linf", "l2")
    budget = "required"

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_params(name, self, {
            "step_transform": CALLABLE.but(
                expected="callable as step_transform(direction) -> tensor shaped like direction").or_none("no transform"),
            "score": CALLABLE.but(expected="callable as score(x) -> (N,) tensor, differentiable in x, e.g. "
                                  "fisherscope.detectors.TorchScore"),
            "threshold": real().but(fix="Pass the detector's fitted threshold_ (finite)."),
            "scale": POSITIVE, "margin": NON_NEGATIVE, "kappa": real(ge=0, finite=False), "penalty_weight": POSITIVE,
            "norm": one_of("linf", "l2"), "mode": one_of("penalty", "orthogonal"), "random_start": BOOL,
            "restarts": POSITIVE_INT, "eot_iter": POSITIVE_INT,
        })
        if self.restarts > 1 and not self.random_start:
            raise param_error(name, "restarts", self.restarts, "1 when random_start is False",
                              "Set random_start=True, or restarts=1: restarts from x would repeat the same run.")

    # ------------------------------------------------------------------ pieces
    def _start(self, x: Tensor, eps: Tensor, generator: torch.Generator | None) -> Tensor:
        if not self.random_start:
            return x.clone()
        return random_in_ball(x, eps, self.norm, self.bounds, generator)

    def _excess(self, s: Tensor) -> Tensor:
        return (s.to(torch.float64) - self.threshold) / self.scale

    def _score_values(self, x: Tensor) -> Tensor:
        s = self.score(x)
        if not isinstance(s, Tensor) or s.shape != (x.shape[0],):
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(f"DetectorAwarePGD: score must return a tensor of shape ({x.shape[0]},); got {got}.")
        return s

    def _gradients(self, model: nn.Module, xt: Tensor, y: Tensor, targeted: bool
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(classifier margin m, detector excess d, ∇m, ∇d), d and ∇d averaged over ``eot_iter`` draws."""
        xr = xt.detach().requires_grad_(True)
        with torch.enable_grad():
            m = classifier_margin(model(xr), y, targeted)
            (gm,) = torch.autograd.grad(m.sum(), xr)
        gd = torch.zeros_like(xt)
        d = torch.zeros(xt.shape[0], dtype=torch.float64, device=xt.device)
        for _ in range(self.eot_iter):
            xr = xt.detach().requires_grad_(True)
            with torch.enable_grad():
                di = self._excess(self._score_values(xr))
                (g,) = torch.autograd.grad(di.sum(), xr)
            gd += torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
            d += di.detach()
        return m.detach(), d / self.eot_iter, gm, gd / self.eot_iter

    def _direction(self, m: Tensor, d: Tensor, gm: Tensor, gd: Tensor) -> Tensor:
        need_cls = per_sample(m <= self.kappa, gm)
        need_det = per_sample(d > -self.margin, gd)
        zero = torch.zeros_like(gm)
        if self.mode == "penalty":
            need_det = need_det & per_sample(m > 0, gd)
            return (torch.where(need_cls, _unit(gm), zero)
                    - self.penalty_weight * torch.where(need_det, _unit(gd), zero))
        cls_step = _without(gm, gd)
        det_step = _without(-gd, gm)
        correct = per_sample(m <= 0, gm)
        return torch.where(correct, cls_step, torch.where(need_det, det_step, torch.where(need_cls, cls_step, zero)))

    def _transformed(self, direction: Tensor) -> Tensor:
        assert self.step_transform is not None
        out = self.step_transform(direction)
        if not isinstance(out, Tensor) or out.shape != direction.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"DetectorAwarePGD: step_transform must return a tensor of shape "
                             f"{tuple(direction.shape)} (the direction's); got {got}.")
        return out.to(direction.dtype)

    def _steepest(self, g: Tensor) -> Tensor:
        return g.sign() if self.norm == "linf" else _unit(g)

    # --------------------------------------------------------------- one run
    def _single(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, targeted: bool,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """(x_adv, success under this score, detector excess at x_adv)."""
        alpha = per_sample(eps * 2.5 / self.steps if self.step_size is None else torch.full_like(eps, self.step_size), x)
        xt = self._start(x, eps, generator)
        best = xt.clone()
        best_d = torch.full((x.shape[0],), math.inf, dtype=torch.float64, device=x.device)
        best_obj = torch.full_like(best_d, -math.inf)
        ok = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for t in range(self.steps + 1):
            m, d, gm, gd = self._gradients(model, xt, y, targeted)
            hit = (m > 0) & (d <= 0)
            obj = torch.minimum(m.to(torch.float64), torch.full_like(d, self.kappa)) - self.penalty_weight * (
                d + self.margin).clamp_min(0)
            take = (hit & (d < best_d)) | (~ok & ~hit & (obj > best_obj))
            best = torch.where(per_sample(take, x), xt, best)
            # best_d is the excess of the kept *successful* iterate only: a non-successful
            # iterate kept earlier must not stop the first success from being taken
            best_d = torch.where(take & hit, d, best_d)
            best_obj = torch.where(take & ~hit, obj, best_obj)
            ok |= hit
            if t == self.steps:
                break
            direction = self._direction(m, d, gm, gd)
            if self.step_transform is not None:
                direction = self._transformed(direction)
            xt = xt + alpha * self._steepest(direction)
            xt = project(x, xt, eps, self.norm).clamp(*self.bounds)
        return best, ok, best_d

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        assert eps is not None  # budgeted: the base class always passes eps
        out = x.clone()
        ok = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        kept = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for r in range(self.restarts):
            todo = torch.nonzero(~ok).flatten()
            if todo.numel() == 0:
                break
            xa, hit, _ = self._single(model, x[todo], y[todo], eps[todo], targeted, generator)
            take = hit | torch.full_like(hit, r == 0)
            out[todo[take]] = xa[take]
            kept[todo[take]] = r
            ok[todo[hit]] = True
        return out, {"restart": kept}

    def run(self, model: nn.Module, x: Tensor, y: Tensor | None = None, *, targeted: bool = False,
            generator: torch.Generator | None = None, eps: float | Tensor | None = None) -> AttackResult:
        res = super().run(model, x, y, targeted=targeted, generator=generator, eps=eps)
        with torch.no_grad():
            s = self._score_values(res.x_adv).detach().to(torch.float64)
        undetected = s <= self.threshold
        ref = y if y is not None else res.logits_adv.argmax(1)
        margin = classifier_margin(res.logits_adv, ref, targeted) if y is not None else torch.zeros_like(s)
        return replace(res, success=res.success & undetected,
                       extras={**res.extras, "score": s, "undetected": undetected, "margin": margin})

    def __repr__(self) -> str:
        return (f"DetectorAwarePGD(eps={self.eps}, norm={self.norm!r}, mode={self.mode!r}, steps={self.steps}, "
                f"threshold={self.threshold:.6g}, restarts={self.restarts}, eot_iter={self.eot_iter})")
