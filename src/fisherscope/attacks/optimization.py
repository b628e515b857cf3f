"""Optimisation-based attacks: Carlini & Wagner L2 and the "Opt." attack of Liu et al.

Both minimise a weighted sum of the squared L2 distance to x and a misclassification
term with Adam, inside the box ``bounds``, and keep per sample the smallest successful
perturbation seen. They share one driver (:func:`_adam_in_box`), batched over samples:
per-sample weights, per-sample Adam state, per-sample early stopping (a stopped sample
leaves the active batch, so the forward/backward passes shrink with it).

Minimal-perturbation attacks: there is no ``eps`` budget (``budget = "none"``). A
sample for which no successful point was found is returned as ``x`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .._batching import per_sample
from .._validation import BOOL, NON_NEGATIVE, POSITIVE, POSITIVE_INT, check_params
from .base import Attack

__all__ = ["CarliniWagnerL2", "Opt"]

#: relative shrink of the tanh box: x0 mapped to [-1, 1] is multiplied by (1 - 1e-6)
#: before ``atanh`` so that pixels at exactly ``lo`` / ``hi`` have finite preimages.
_TANH_SHRINK = 1e-6
_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8
#: consecutive stalled checks before a sample stops (see :func:`_adam_in_box`)
_PATIENCE = 2




def _others_mask(logits: Tensor, y: Tensor) -> Tensor:
    return torch.nn.functional.one_hot(y, logits.shape[1]).bool()


def _cw_margin(logits: Tensor, y: Tensor, targeted: bool, confidence: float) -> Tensor:
    """Carlini & Wagner's f: max(Z_y − max_{i≠y} Z_i, −κ) (untargeted), max(max_{i≠t} Z_i − Z_t, −κ)."""
    is_y = _others_mask(logits, y)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(is_y, -torch.inf).amax(1)
    diff = other - z_y if targeted else z_y - other
    return diff.clamp_min(-confidence)


def _cw_success(logits: Tensor, y: Tensor, targeted: bool, confidence: float) -> Tensor:
    """Carlini's success test with the confidence margin: argmax of Z ∓ κ·onehot(y)."""
    if confidence == 0:
        pred = logits.argmax(1)
    else:
        shift = torch.nn.functional.one_hot(y, logits.shape[1]).to(logits.dtype) * confidence
        pred = (logits - shift if targeted else logits + shift).argmax(1)
    return pred == y if targeted else pred != y


def _neg_log_one_minus_p(logits: Tensor, y: Tensor) -> Tensor:
    """−log(1 − p_y) = logsumexp(z) − logsumexp_{i≠y}(z), stable for confident inputs."""
    others = logits.masked_fill(_others_mask(logits, y), -torch.inf)
    return torch.logsumexp(logits, 1) - torch.logsumexp(others, 1)


def _cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    return torch.nn.functional.cross_entropy(logits, y, reduction="none")


class _Box:
    """How the free variable maps into the box [lo, hi] (per sample, gathered by index).

    ``"tanh"``: the variable is an offset u in the tanh space of Carlini & Wagner:
    x(u) = lo + (hi − lo)(tanh(w0 + u) + 1)/2 with w0 = atanh((1 − 1e-6)·(2(x0 − lo)/(hi − lo) − 1)).
    The model sees clamp(x0 + x(u) − x(0)): the (≤ 5e-7·(hi − lo)) reconstruction error of
    the shrink cancels, so u = 0 is x0 exactly and never counts as a perturbation.

    ``"clip"``: the variable is the perturbation δ itself; after each step
    x0 + δ is clamped to the box (projected gradient).
    """

    def __init__(self, kind: Literal["tanh", "clip"], x: Tensor, bounds: tuple[float, float]):
        self.kind, self.x = kind, x
        self.lo, self.hi = bounds
        if kind == "tanh":
            span = self.hi - self.lo
            # clamp first: check_inputs admits values up to 1e-6 outside the bounds
            z0 = ((x - self.lo) / span * 2 - 1).clamp(-1, 1) * (1 - _TANH_SHRINK)
            self.w0 = torch.atanh(z0)
            self.x_rec = self._to_model(self.w0)

    def _to_model(self, w: Tensor) -> Tensor:
        return self.lo + (self.hi - self.lo) * (torch.tanh(w) + 1) / 2

    def to_input(self, u: Tensor, idx: Tensor) -> Tensor:
        x0 = self.x[idx]
        if self.kind == "tanh":
            return (x0 + (self._to_model(self.w0[idx] + u) - self.x_rec[idx])).clamp(self.lo, self.hi)
        return (x0 + u).clamp(self.lo, self.hi)

    def project(self, u: Tensor, idx: Tensor) -> Tensor:
        if self.kind == "tanh":
            return u
        x0 = self.x[idx]
        return (x0 + u).clamp(self.lo, self.hi) - x0


@dataclass
class _Best:
    """Per-sample best successful point so far (x itself where none)."""

    x: Tensor
    l2: Tensor

    @classmethod
    def start(cls, x: Tensor) -> _Best:
        return cls(x.clone(), torch.full((x.shape[0],), torch.inf, dtype=x.dtype, device=x.device))


def _adam_in_box(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    term: Callable[[Tensor, Tensor], Tensor],
    success: Callable[[Tensor, Tensor], Tensor],
    dist_weight: Tensor,
    term_weight: Tensor,
    steps: int,
    learning_rate: float,
    box: _Box,
    abort_early: bool,
    best: _Best,
    record: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Minimise ``dist_weight·‖x' − x‖₂² + term_weight·term(Z(x'), y)`` per sample with Adam.

    x' is ``box.to_input(u)`` of the free variable u (start 0, i.e. x' = x). Every
    evaluated point that ``success`` accepts and that is closer than ``best.l2`` replaces
    the sample's best (in place). Adam state starts from zero. With ``abort_early`` a
    sample stops when its objective, checked every ceil(steps/10) steps, has failed to
    go below 0.9999 of its value at the previous check at two consecutive checks.
    Carlini & Wagner (and foolbox) stop the whole batch at the first such check on the
    *summed* loss; per sample, one check is premature: crossing the boundary, Adam's
    momentum carries a sample past it and its objective rises for a while before
    decreasing again (measured on a digits CNN, C&W-100 with c = 1: 6% larger mean L2
    than foolbox with one check; identical with two). Samples whose best is already at
    distance 0 are not run.

    Returns ``(found, improved, history)``: found (N,) — a successful point was evaluated
    in this run; improved (N,) — the best was replaced in this run; history (N, steps)
    the objective at each evaluated point (NaN after the sample stopped) if ``record``.
    """
    n = x.shape[0]
    u = torch.zeros_like(x)
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    prev = torch.full((n,), torch.inf, dtype=x.dtype, device=x.device)
    stalls = torch.zeros(n, dtype=torch.int64, device=x.device)
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    improved = torch.zeros_like(found)
    active = best.l2 > 0
    history = torch.full((n, steps), torch.nan, dtype=x.dtype, device=x.device) if record else None
    check_every = max(1, math.ceil(steps / 10))
    for t in range(1, steps + 1):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        x0 = x[idx]
        ui = u[idx].requires_grad_(True)
        with torch.enable_grad():
            xi = box.to_input(ui, idx)
            logits = model(xi)
            d2 = (xi - x0).flatten(1).square().sum(1)
            obj = dist_weight[idx] * d2 + term_weight[idx] * term(logits, y[idx])
            (grad,) = torch.autograd.grad(obj.sum(), ui)
        with torch.no_grad():
            obj = obj.detach()
            ok = success(logits.detach(), y[idx])
            l2 = d2.detach().sqrt()
            better = ok & (l2 < best.l2[idx])
            best.l2[idx] = torch.where(better, l2, best.l2[idx])
            best.x[idx] = torch.where(per_sample(better, xi), xi.detach(), best.x[idx])
            found[idx] |= ok
            improved[idx] |= better
            if history is not None:
                history[idx, t - 1] = obj
            stop = best.l2[idx] == 0
            if abort_early and (t - 1) % check_every == 0:
                stalled = obj > 0.9999 * prev[idx]
                stalls[idx] = torch.where(stalled, stalls[idx] + 1, 0)
                stop |= stalls[idx] >= _PATIENCE
                prev[idx] = obj
            mi = _BETA1 * m[idx] + (1 - _BETA1) * grad
            vi = _BETA2 * v[idx] + (1 - _BETA2) * grad.square()
            step = learning_rate * (mi / (1 - _BETA1**t)) / ((vi / (1 - _BETA2**t)).sqrt() + _ADAM_EPS)
            m[idx], v[idx] = mi, vi
            u[idx] = box.project(ui.detach() - step, idx)
            active[idx[stop]] = False
    return found, improved, history


@dataclass(frozen=True, kw_only=True)
class CarliniWagnerL2(Attack):
    """Carlini & Wagner's L2 attack (2017), batched, with a per-sample binary search over c.

    For each sample, minimise over w (change of variables, so the box needs no
    projection)::

        ‖x(w) − x0‖₂² + c · f(x(w)),   x(w) = lo + (hi − lo)(tanh(w) + 1)/2
        f = max(Z_y − max_{i≠y} Z_i, −κ)          (untargeted, y the true label)
        f = max(max_{i≠t} Z_i − Z_t, −κ)          (targeted, t = y the target)

    with Adam (``learning_rate``, ``steps`` per binary-search step, state reset at each
    binary-search step), Z the logits. c starts at ``initial_const`` and is searched per
    sample: ×10 while no adversarial example was found, bisection once one was (with
    ``binary_search_steps >= 10`` the last step reuses the upper bound, as in Carlini's
    code). The smallest-L2 successful point seen in any step is returned; a point is
    successful when argmax(Z + κ·onehot(y)) ≠ y (untargeted) / argmax(Z − κ·onehot(t)) = t.

    Pixel saturation. atanh is ±∞ at exactly ``lo`` / ``hi`` (most MNIST pixels). x0 is
    mapped to [−1, 1] and multiplied by (1 − 1e-6) before atanh, and the point given to
    the model is ``clamp(x0 + x(w) − x(w0))``: the shrink's reconstruction error
    (≤ 5e-7·(hi − lo) per pixel) cancels, so w = w0 *is* x0 and the distance term and
    the returned perturbation are the perturbation actually applied. A sample never
    successful is returned as x0 exactly (foolbox returns an all-zero image there,
    torchattacks the unchanged input). ``abort_early`` stops a *sample* (not the batch,
    as in Carlini's and foolbox's code) whose loss stopped decreasing at two consecutive
    checks (see :func:`_adam_in_box`); samples already misclassified (distance 0) are
    not optimised.

    Parameters
    ----------
    binary_search_steps : int
        Number of values of c tried per sample (Carlini: 9).
    steps : int
        Adam iterations per binary-search step (Carlini: 10000; "C&W-100": 100 with
        ``binary_search_steps=1``, where c stays at ``initial_const``: on a trained MNIST
        CNN that found adversarial examples for 0/32 inputs with c = 1e-3 and 5/32 with
        c = 1, against 32/32 with 5 binary-search steps from c = 0.1 at learning rate 0.05).
    learning_rate : float
        Adam step size in w-space (Carlini: 1e-2).
    confidence : float
        κ ≥ 0, the logit margin required (Carlini: 0).
    initial_const : float
        Starting c (Carlini: 1e-3).
    abort_early : bool
        Per-sample early stop when the objective has not decreased by 0.01% over
        ceil(steps/10) steps, twice in a row.

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x. ``run`` extras:
    ``const`` (N,) the c of the returned example (NaN where none was found).

    References
    ----------
    Carlini, N., Wagner, D. "Towards evaluating the robustness of neural networks."
    IEEE S&P 2017, arXiv:1608.04644.

    Examples
    --------
    >>> attack = CarliniWagnerL2(steps=100, binary_search_steps=1)  # "C&W-100"
    >>> x_adv = attack(model, x, y)
    """

    binary_search_steps: int = 9
    steps: int = 10000
    learning_rate: float = 1e-2
    confidence: float = 0.0
    initial_const: float = 1e-3
    abort_early: bool = True
    norms = ("l2",)
    budget = "none"
    standard = {"steps": 40, "binary_search_steps": 2, "initial_const": 1.0, "learning_rate": 0.05}
    standard_description = "minimal L2, 2 × 40 Adam steps from c = 1"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_params(type(self).__name__, self, {
            "binary_search_steps": POSITIVE_INT,
            "learning_rate": POSITIVE,
            "confidence": NON_NEGATIVE,
            "initial_const": POSITIVE,
            "abort_early": BOOL,
        })

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        n = x.shape[0]
        kappa = float(self.confidence)
        box = _Box("tanh", x, self.bounds)
        best = _Best.start(x)
        const = torch.full((n,), float(self.initial_const), dtype=torch.float64, device=x.device)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, torch.inf)
        best_const = torch.full_like(const, torch.nan)
        ones = torch.ones(n, dtype=x.dtype, device=x.device)
        for b in range(self.binary_search_steps):
            if self.binary_search_steps >= 10 and b == self.binary_search_steps - 1:
                const = upper.clamp_max(1e10)
            found, improved, _ = _adam_in_box(
                model, x, y,
                term=lambda z, t: _cw_margin(z, t, targeted, kappa),
                success=lambda z, t: _cw_success(z, t, targeted, kappa),
                dist_weight=ones, term_weight=const.to(x.dtype), steps=self.steps,
                learning_rate=self.learning_rate, box=box, abort_early=self.abort_early, best=best,
            )  # fmt: skip
            best_const = torch.where(improved, const, best_const)
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
        return best.x, {"const": best_const.to(x.dtype)}


@dataclass(frozen=True, kw_only=True)
class Opt(Attack):
    """The optimisation-based attack of Liu et al. 2016 ("Opt." in Zhao et al. 2019, Tables 2–4).

    Objective, per sample, minimised over x' in the box with Adam::

        λ · ‖x' − x0‖₂²  +  ℓ(x')
        ℓ = −log(1 − p_y(x')) = logsumexp(Z) − logsumexp_{i≠y}(Z)     (untargeted)
        ℓ = CE(x', t) = −log p_t(x')                                   (targeted, t = y)

    This is Liu et al.'s ``argmin λ d(x, x*) − ℓ_CE-based(1_y, J(x*))`` with their
    untargeted loss log(1 − p_y) (bounded below by 0, unlike −CE(y), so the distance term
    keeps the minimiser finite) and their targeted loss CE(t). Choices made here, and why:
    d is the *squared* L2 distance (differentiable at x0, where ‖·‖₂ has no gradient;
    Liu's d is an L2 distance); −log(1 − p_y) is computed from two logsumexps, never
    from a probability (exact for confident inputs where 1 − p_y underflows). The box
    is kept by projection: each Adam step on the perturbation δ is followed by
    clamping x0 + δ to ``bounds`` (saturated pixels need no care, unlike tanh).

    The returned example is the smallest-L2 iterate that was misclassified (classified
    as t when targeted); x0 exactly where none was. The Adam driver is the one of
    :class:`CarliniWagnerL2`; ``abort_early`` stops a sample whose objective has not
    decreased by 0.01% over ceil(steps/10) steps, twice in a row.

    Parameters
    ----------
    distance_weight : float
        λ > 0, weight of the squared L2 distance.
    steps : int
        Adam iterations.
    learning_rate : float
        Adam step size (input units).
    abort_early : bool
        Per-sample early stop on a stalled objective.

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x. ``run`` extras:
    ``objective`` (N, steps) the objective at each evaluated iterate (NaN once the
    sample stopped; column 0 is the objective at x0).

    References
    ----------
    Liu, Y., Chen, X., Liu, C., Song, D. "Delving into transferable adversarial examples
    and black-box attacks." ICLR 2017, arXiv:1611.02770.
    Zhao et al. "The adversarial attack and detection under the Fisher information
    metric." AAAI 2019, arXiv:1810.03806.

    Examples
    --------
    >>> x_adv = Opt(distance_weight=0.05, steps=200)(model, x, y)
    """

    distance_weight: float = 0.05
    steps: int = 200
    learning_rate: float = 1e-2
    abort_early: bool = True
    norms = ("l2",)
    budget = "none"
    standard = {"steps": 40, "learning_rate": 0.05}
    standard_description = "L2-penalised CE (Liu et al. 2016), 40 Adam steps"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_params(type(self).__name__, self, {
            "distance_weight": POSITIVE,
            "learning_rate": POSITIVE,
            "abort_early": BOOL,
        })

    def objective(self, logits: Tensor, x_adv: Tensor, x: Tensor, y: Tensor, *, targeted: bool = False) -> Tensor:
        """The per-sample objective λ‖x_adv − x‖₂² + ℓ at given logits of ``x_adv`` (N,)."""
        term = _cross_entropy if targeted else _neg_log_one_minus_p
        return self.distance_weight * (x_adv - x).flatten(1).square().sum(1) + term(logits, y)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        n = x.shape[0]
        best = _Best.start(x)
        _, _, history = _adam_in_box(
            model, x, y,
            term=_cross_entropy if targeted else _neg_log_one_minus_p,
            success=lambda z, t: _cw_success(z, t, targeted, 0.0),
            dist_weight=torch.full((n,), float(self.distance_weight), dtype=x.dtype, device=x.device),
            term_weight=torch.ones(n, dtype=x.dtype, device=x.device), steps=self.steps,
            learning_rate=self.learning_rate, box=_Box("clip", x, self.bounds),
            abort_early=self.abort_early, best=best, record=True,
        )  # fmt: skip
        assert history is not None
        return best.x, {"objective": history}
