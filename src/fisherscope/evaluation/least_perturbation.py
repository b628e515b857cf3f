"""Smallest budget that fools the model, per sample, by binary search (Zhao Table 2, Fig. 3),
and :class:`MinimalBudget`, the attack returning the example at that budget (Shen Table 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import (
    BOOL,
    FINITE,
    NON_NEGATIVE,
    POSITIVE,
    check_inputs,
    check_labels,
    check_param,
    check_params,
    eval_mode,
    integer,
)
from ..attacks.base import Attack, OneStepAttack
from ..attacks.wrappers import FixedSeed

__all__ = ["LeastPerturbation", "MinimalBudget", "least_perturbation"]


@dataclass(frozen=True)
class LeastPerturbation:
    """Per-sample least budgets.

    Attributes
    ----------
    eps : Tensor
        (N,) smallest budget found that fools the model (within ``tol``); NaN where the
        sample is not fooled at ``hi`` or was already misclassified.
    applied_l2 : Tensor
        (N,) L2 norm of the perturbation actually applied at ``eps`` (after clipping);
        NaN where ``eps`` is NaN.
    fooled : Tensor
        (N,) bool: originally correct and fooled with a budget ≤ ``hi``.
    correct : Tensor
        (N,) bool: classified correctly before the attack (only these are attacked). With
        ``targeted=True``: not already classified as the target (a target equal to the
        clean prediction is excluded here and counted, never a success).
    hi : float
        Upper end of the search interval.
    """

    eps: Tensor
    applied_l2: Tensor
    fooled: Tensor
    correct: Tensor
    hi: float

    @property
    def fooling_rate(self) -> float:
        """Fooled / originally correct (samples not fooled at ``hi`` count as not fooled)."""
        n = int(self.correct.sum())
        return float(self.fooled.sum()) / n if n else float("nan")

    @property
    def mean_eps(self) -> float:
        """Mean least budget over the fooled samples only."""
        return float(self.eps[self.fooled].mean()) if bool(self.fooled.any()) else float("nan")

    @property
    def mean_applied_l2(self) -> float:
        return float(self.applied_l2[self.fooled].mean()) if bool(self.fooled.any()) else float("nan")


def _check_search(lo: Any, hi: Any, tol: Any, max_halvings: Any, targeted: Any) -> None:
    """Reject settings with which the search would return ``hi`` (or a coarser bracket
    than ``tol``) as every sample's budget: a non-finite or empty interval, a tolerance
    as wide as the interval, or too few halvings to reach it."""
    owner = "least_perturbation"
    check_params(owner, {"lo": lo, "targeted": targeted}, {"lo": NON_NEGATIVE, "targeted": BOOL})
    check_param(owner, "hi", hi, FINITE.where(
        lambda h: h > lo, expected=f"a finite number > lo = {lo!r}",
        fix="Pass the upper end of the search interval (Zhao et al. search [0, 6] in L2)."))
    width = hi - lo
    check_param(owner, "tol", tol, POSITIVE.where(
        lambda t: t < width, expected=f"a finite number in (0, hi - lo) = (0, {width:g})",
        fix="A tolerance as wide as the interval stops before the first halving and returns hi for every sample."))
    need = max(1, math.ceil(math.log2(width / tol)))
    check_param(owner, "max_halvings", max_halvings, integer(ge=need).but(
        expected=f"an integer >= {need} (the halvings that narrow [{lo:g}, {hi:g}] to tol={tol:g})",
        fix=f"Raise max_halvings to at least {need}, or loosen tol."))


def least_perturbation(
    attack: Attack,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    lo: float = 0.0,
    hi: float = 6.0,
    tol: float = 1e-3,
    *,
    targeted: bool = False,
    generator: torch.Generator | None = None,
    max_halvings: int = 60,
) -> LeastPerturbation:
    """Per-sample binary search for the smallest budget with which ``attack`` fools ``model``.

    Works with any budgeted attack (one with ``eps``); a :class:`OneStepAttack` computes
    its direction once and re-applies it at every budget. Only samples the model
    classifies correctly are attacked; samples not fooled at ``hi`` are reported as such
    (``eps`` NaN), never averaged in. The search assumes that success is monotone in the
    budget, as in Zhao et al.

    Parameters
    ----------
    lo, hi : float
        Search interval of the budget (Zhao: [0, 6] in L2).
    tol : float
        Stop when the bracket is narrower than ``tol``; the upper end is returned. Must lie
        in (0, hi − lo).
    max_halvings : int
        Bisection steps at most; at least ⌈log2((hi − lo) / tol)⌉, the number that
        reaches ``tol``.

    Raises
    ------
    ValueError
        Non-finite or empty ``[lo, hi]``, ``tol`` outside (0, hi − lo), or too few
        ``max_halvings``: settings with which the search would report ``hi`` (or a bracket
        wider than ``tol``) as the budget.

    Shapes
    ------
    x: (N, ...); y: (N,) -> every field (N,).
    """
    if not attack.budgeted or getattr(attack, "eps", None) is None:
        raise TypeError(
            f"least_perturbation needs an attack with a budget 'eps'; {type(attack).__name__} has "
            f"{'eps=None (no projection)' if attack.budgeted else 'none'}. Give it an eps (any value; the "
            "search replaces it). Minimisation attacks (C&W, DeepFool) already return minimal perturbations."
        )
    _check_search(lo, hi, tol, max_halvings, targeted)
    check_inputs(x, y, bounds=attack.bounds)
    x = x.detach()
    n = x.shape[0]
    dt = x.dtype
    with eval_mode(model):
        with torch.no_grad():
            logits = model(x)
        check_labels(y, n, logits.shape[1])
        pred0 = logits.argmax(1)
        correct = pred0 == y if not targeted else pred0 != y
        if targeted:  # targets equal to the clean prediction are excluded (correct=False) and
            # given a stand-in target, as the attacks refuse them; their results are masked out
            y = torch.where(correct, y, (pred0 + 1) % logits.shape[1])

        if isinstance(attack, OneStepAttack):
            state = attack.prepare(model, x, y, targeted, generator)

            def fooled_at(eps: Tensor) -> tuple[Tensor, Tensor]:
                xa = attack.step(model, x, y, state, eps, targeted)
                with torch.no_grad():
                    pred = model(xa).argmax(1)
                hit = pred == y if targeted else pred != y
                return hit, (xa - x).flatten(1).norm(dim=1)
        else:

            def fooled_at(eps: Tensor) -> tuple[Tensor, Tensor]:
                res = attack.run(model, x, y, targeted=targeted, generator=generator, eps=eps)
                return res.success, res.norms["l2"]

        lo_t = torch.full((n,), float(lo), dtype=dt, device=x.device)
        hi_t = torch.full((n,), float(hi), dtype=dt, device=x.device)
        ok_hi, l2_hi = fooled_at(hi_t)
        active = correct & ok_hi
        best_l2 = torch.where(active, l2_hi, torch.full_like(l2_hi, float("nan")))
        for _ in range(max_halvings):
            if not bool(((hi_t - lo_t > tol) & active).any()):
                break
            mid = (lo_t + hi_t) / 2
            hit, l2 = fooled_at(torch.where(active, mid, hi_t))
            move_hi = active & hit & (hi_t - lo_t > tol)
            move_lo = active & ~hit & (hi_t - lo_t > tol)
            hi_t = torch.where(move_hi, mid, hi_t)
            best_l2 = torch.where(move_hi, l2, best_l2)
            lo_t = torch.where(move_lo, mid, lo_t)
    nan = torch.full_like(hi_t, float("nan"))
    return LeastPerturbation(
        eps=torch.where(active, hi_t, nan),
        applied_l2=torch.where(active, best_l2, nan),
        fooled=active,
        correct=correct,
        hi=float(hi),
    )


def _seed_from(generator: torch.Generator | None) -> int:
    """One seed drawn from ``generator`` (0 without one)."""
    if generator is None:
        return 0
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


@dataclass(frozen=True, kw_only=True)
class MinimalBudget(Attack):
    """The smallest-budget adversarial example of a budgeted attack.

    Foolbox's "minimisation" use of FGSM / BIM / PGD: per sample,
    :func:`least_perturbation` finds the smallest budget in [0, ``hi``] (within ``tol``)
    at which ``attack`` fools the model, and the example returned is the attack's at that
    budget. Samples not fooled within ``hi``, and samples already misclassified, are
    returned unchanged (as C&W does for its failures). The attack's randomness is one seed
    drawn from ``generator`` per call and reused at every budget of the search (a
    :class:`~fisherscope.attacks.FixedSeed`; a :class:`~fisherscope.attacks.OneStepAttack`
    prepares its direction once with a generator of that seed), so the search and the
    returned example agree.

    Not in :data:`~fisherscope.attacks.ATTACKS`: it wraps an attack instance.

    Parameters
    ----------
    attack : Attack
        A budgeted attack instance with an ``eps`` (its value is not used: the search
        sets the budget).
    hi : float
        Upper end of the search interval, in the units of ``attack.norm``.
    tol : float
        Width of the final bracket; the upper end is the budget returned.
    bounds : (float, float)
        Input bounds (pass the inner attack's, ``bounds=attack.bounds``).

    Notes
    -----
    ``run(...).extras["eps"]`` is the budget found per sample (NaN where none up to ``hi``
    fools, or the sample was already misclassified). The class is not budgeted itself
    (``budgeted = False``): the base class does not project its output.

    Examples
    --------
    >>> from fisherscope.attacks import FGSM
    >>> atk = MinimalBudget(attack=FGSM(eps=1.0), hi=1.0, tol=1e-3)
    >>> # res = atk.run(model, x, y); res.extras["eps"] is each sample's least L-inf budget
    """

    attack: Attack
    hi: float
    tol: float = 1e-3
    budgeted = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.attack, Attack) or not self.attack.budgeted or getattr(self.attack, "eps", None) is None:
            raise ValueError(
                f"MinimalBudget needs a budgeted attack instance with an eps (e.g. FGSM(eps=1.0)); got {self.attack!r}."
            )
        if not (self.hi > 0 and self.tol > 0):
            raise ValueError(f"MinimalBudget needs hi > 0 and tol > 0; got hi={self.hi!r}, tol={self.tol!r}.")

    @property
    def norm(self) -> str:  # type: ignore[override]
        return self.attack.norm

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        seed = _seed_from(generator)
        inner = self.attack
        if isinstance(inner, OneStepAttack):
            lp = least_perturbation(inner, model, x, y, hi=self.hi, tol=self.tol, targeted=targeted,
                                    generator=torch.Generator().manual_seed(seed))
            at = torch.where(lp.fooled, lp.eps, torch.zeros_like(lp.eps))
            state = inner.prepare(model, x, y, targeted, torch.Generator().manual_seed(seed))
            x_adv = inner.step(model, x, y, state, at, targeted)
        else:
            fixed = FixedSeed(attack=inner, seed=seed, bounds=inner.bounds)
            lp = least_perturbation(fixed, model, x, y, hi=self.hi, tol=self.tol, targeted=targeted)
            at = torch.where(lp.fooled, lp.eps, torch.zeros_like(lp.eps))
            x_adv = fixed.run(model, x, y, targeted=targeted, eps=at).x_adv
        return x_adv, {"eps": lp.eps}
