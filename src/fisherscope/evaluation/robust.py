"""Worst-case robust accuracy over an ensemble of attacks (AutoAttack's protocol) and masking checks.

:func:`robust_accuracy` runs a list of attacks one after the other, each only on the
samples still robust (correct on the clean input and not fooled by any earlier attack),
so a sample counts as robust only if every attack failed on it. ``attacks="standard"``
is AutoAttack's ensemble without FAB-T (Croce & Hein 2020): APGD-CE (100 steps, no
restart), APGD-T (targeted DLR, 100 steps, 9 target classes, or K − 1 if fewer) and
Square (5000 queries, p_init 0.8).

Alongside the number, the evaluation looks for the signs that gradient-based attacks are
being fooled rather than the model being robust (Carlini et al. 2019, §5 and App. A;
AutoAttack's ``checks.py``), each reported as a :class:`MaskingFlag` — a finding, never
an exception:

============================  =========  ====================================================
code                          level      what it means
============================  =========  ====================================================
``randomised_model``          always     two forwards of the same inputs differ: use EOT
``zero_gradients``            always     the logit-margin gradient is 0 or non-finite
``saturated_softmax``         always     the softmax is saturated and the CE gradient vanishes
``gradient_free_stronger``    always     Square fooled samples the gradient attacks did not
``no_convergence``            standard   APGD with 2× steps and one more restart still fools
``unbounded_fails``           standard   an attack with an unbounded budget fails somewhere
``not_monotone_in_eps``       full       robust accuracy rises with a larger budget
============================  =========  ====================================================

"always" checks cost two forwards and one forward-backward of at most ``check_samples``
inputs (the fourth comes free with the ensemble); "standard" adds two APGD runs on at
most ``check_samples`` inputs; "full" adds a four-point :func:`robust_accuracy_curve`
with APGD on them. The thresholds are module constants (``*_TOL``) and every flag
carries the numbers it was decided on.

References
----------
Croce, Hein. "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks." ICML 2020, arXiv:2003.01690.
Carlini, Athalye, Papernot, Brendel, Rauber, Tsipras, Goodfellow, Madry, Kurakin. "On
evaluating adversarial robustness." arXiv:1902.06705, 2019.
Athalye, Carlini, Wagner. "Obfuscated gradients give a false sense of security."
ICML 2018 (expectation over transformation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._progress import track
from .._random import randperm
from .._validation import check_inputs, check_labels, check_logits, eval_mode, warns_once
from ..attacks.apgd import APGD, APGDTargeted
from ..attacks.base import Attack
from ..attacks.square import Square

__all__ = [
    "MaskingFlag",
    "RobustAccuracy",
    "RobustAccuracyCurve",
    "robust_accuracy",
    "robust_accuracy_curve",
    "standard_attacks",
]

Checks = Literal["standard", "full"] | None

#: randomised_model: largest L2 distance between the L2-normalised logits of two forwards
RANDOMISED_TOL = 1e-4
#: zero_gradients: flagged when more than this fraction of the inputs has a zero gradient
ZERO_GRADIENT_TOL = 0.0
#: saturated_softmax: a sample is saturated when max softmax >= 1 - SATURATION_P and
#: ‖∇ CE‖ <= SATURATION_GRAD_RATIO · ‖∇ margin‖; flagged above SATURATED_FRACTION_TOL of the inputs
SATURATION_P = 1e-6
SATURATION_GRAD_RATIO = 1e-10
SATURATED_FRACTION_TOL = 0.5
#: gradient_free_stronger: flagged when gradient-free attacks lower robust accuracy by more (AutoAttack: 0.2%)
GRADIENT_FREE_TOL = 0.002
#: no_convergence: flagged when the stronger APGD fools more than this fraction of the robust subset
NO_CONVERGENCE_TOL = 0.0
#: unbounded_fails: flagged when the unbounded attack's success rate is below 1 - this
UNBOUNDED_TOL = 0.01
#: not_monotone_in_eps: multiples of eps of the "full" check's curve
MONOTONE_EPS_FACTORS = (0.25, 0.5, 1.0, 2.0)


# ------------------------------------------------------------------ results
@dataclass(frozen=True)
class MaskingFlag:
    """A gradient-masking finding: a code, one sentence, the numbers behind it.

    Attributes
    ----------
    code : str
        One of the codes in the module docstring's table.
    message : str
        What was seen and what to do about it, in one sentence.
    values : dict
        The numbers the finding was decided on (floats and ints).
    """

    code: str
    message: str
    values: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "values": dict(self.values)}


@dataclass(frozen=True)
class RobustAccuracy:
    """Result of :func:`robust_accuracy`.

    Attributes
    ----------
    robust_accuracy : float
        Fraction of all N samples correct on the clean input and after every attack.
    clean_accuracy : float
        Fraction correct on the clean inputs.
    robust : Tensor
        (N,) bool, the per-sample version of ``robust_accuracy``.
    clean_correct : Tensor
        (N,) bool, correct on the clean input.
    per_attack : list of (str, float)
        Attack names in the order run, each with the robust accuracy after it and all the
        attacks before it (cumulative, so non-increasing).
    fooled_by : Tensor
        (N,) int64: index into ``per_attack`` of the attack that fooled the sample first;
        −1 for samples never fooled (robust ones, and those misclassified clean).
    flags : list of MaskingFlag
        Gradient-masking findings (module docstring); empty when none was found.
    x_adv : Tensor
        Worst case per sample: the first successful adversarial example, else ``x``.
    norm : str
        Threat model.
    eps : float
        Budget.
    attacks : list of (str, str)
        Name and ``repr`` of every attack run (with the budget passed at call time).
    checks : str or None
        The check level that was run.
    """

    robust_accuracy: float
    clean_accuracy: float
    robust: Tensor
    clean_correct: Tensor
    per_attack: list[tuple[str, float]]
    fooled_by: Tensor
    flags: list[MaskingFlag]
    x_adv: Tensor
    norm: str
    eps: float
    attacks: list[tuple[str, str]]
    checks: str | None = None

    @property
    def n(self) -> int:
        return int(self.robust.shape[0])

    @property
    def flag_codes(self) -> list[str]:
        """The codes of :attr:`flags`, in order."""
        return [f.code for f in self.flags]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (per-sample masks as 0/1 lists; ``x_adv`` left out: store it as an array)."""
        return {
            "robust_accuracy": self.robust_accuracy,
            "clean_accuracy": self.clean_accuracy,
            "n": self.n,
            "norm": self.norm,
            "eps": self.eps,
            "checks": self.checks,
            "per_attack": [[name, acc] for name, acc in self.per_attack],
            "attacks": [[name, rep] for name, rep in self.attacks],
            "flags": [f.to_dict() for f in self.flags],
            "robust": self.robust.int().tolist(),
            "clean_correct": self.clean_correct.int().tolist(),
            "fooled_by": self.fooled_by.tolist(),
        }


@dataclass(frozen=True)
class RobustAccuracyCurve:
    """Result of :func:`robust_accuracy_curve`: robust accuracy at increasing budgets.

    Attributes
    ----------
    eps : list of float
        Budgets, ascending.
    robust_accuracy : list of float
        Robust accuracy at each budget (independent runs).
    clean_accuracy : float
    results : list of RobustAccuracy
        The full result at each budget (run without checks).
    flags : list of MaskingFlag
        ``not_monotone_in_eps`` when robust accuracy rises with the budget.
    norm : str
    """

    eps: list[float]
    robust_accuracy: list[float]
    clean_accuracy: float
    results: list[RobustAccuracy]
    flags: list[MaskingFlag]
    norm: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "norm": self.norm,
            "eps": list(self.eps),
            "robust_accuracy": list(self.robust_accuracy),
            "clean_accuracy": self.clean_accuracy,
            "flags": [f.to_dict() for f in self.flags],
            "results": [r.to_dict() for r in self.results],
        }


# ------------------------------------------------------------------ attacks
def standard_attacks(norm: str, eps: float, n_classes: int, *,
                     bounds: tuple[float, float] = (0.0, 1.0)) -> list[tuple[str, Attack]]:
    """AutoAttack's standard ensemble without FAB-T, as (name, attack) pairs.

    APGD-CE (100 steps, 1 run), APGD-T (100 steps, targeted DLR towards each of the
    ``min(9, K − 1)`` classes ranked highest after the top one; targeted CE when K < 4,
    where the targeted DLR loss is undefined) and Square (5000 queries, p_init 0.8).
    With K = 2 APGD-T has one target, the other class.
    """
    out: list[tuple[str, Attack]] = [("apgd-ce", APGD(eps=eps, norm=norm, loss="ce", steps=100, bounds=bounds))]  # type: ignore[arg-type]
    if n_classes >= 2:
        out.append(("apgd-t", APGDTargeted(eps=eps, norm=norm, loss="dlr" if n_classes >= 4 else "ce",  # type: ignore[arg-type]
                                           steps=100, n_target_classes=min(9, n_classes - 1), bounds=bounds)))
    out.append(("square", Square(eps=eps, norm=norm, n_queries=5000, p_init=0.8, bounds=bounds)))  # type: ignore[arg-type]
    return out


def _named_attacks(attacks: str | Sequence[Attack | tuple[str, Attack]], norm: str, eps: float,
                   n_classes: int, bounds: tuple[float, float]) -> list[tuple[str, Attack]]:
    if isinstance(attacks, str):
        if attacks != "standard":
            raise ValueError(f"attacks must be 'standard' or a list of Attack instances; got {attacks!r}.")
        return standard_attacks(norm, eps, n_classes, bounds=bounds)
    if not isinstance(attacks, Sequence) or len(attacks) == 0:
        raise ValueError(f"attacks must be 'standard' or a non-empty list of Attack instances; got {attacks!r}.")
    out: list[tuple[str, Attack]] = []
    seen: dict[str, int] = {}
    for item in attacks:
        name, atk = item if isinstance(item, tuple) else (type(item).__name__.lower(), item)
        if not isinstance(atk, Attack):
            raise TypeError(f"attacks must hold Attack instances (or (name, Attack) pairs); got {type(atk).__name__}.")
        if getattr(atk, "norm", None) != norm:
            raise ValueError(
                f"{type(atk).__name__} attacks in norm {atk.norm!r}, but robust_accuracy was called with "
                f"norm={norm!r}; build it with norm={norm!r}."
            )
        if not getattr(atk, "budgeted", False) or getattr(atk, "eps", None) is None:
            raise ValueError(
                f"{type(atk).__name__} has no budget (eps); robust accuracy needs budgeted attacks, "
                f"each of which is run with eps={eps}."
            )
        if tuple(atk.bounds) != tuple(bounds):
            raise ValueError(
                f"{type(atk).__name__} has bounds {atk.bounds}, but robust_accuracy was called with "
                f"bounds={bounds}; use the same bounds for both."
            )
        if name in seen:
            seen[name] += 1
            name = f"{name}-{seen[name]}"
        else:
            seen[name] = 1
        out.append((str(name), atk))
    return out


def _check_common(model: nn.Module, x: Tensor, y: Tensor, norm: str, batch_size: int,
                  bounds: tuple[float, float]) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module mapping x to logits; got {type(model).__name__}.")
    check_inputs(x, y, bounds=bounds)
    check_labels(y, x.shape[0])
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2'; got {norm!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}.")


def _check_eps(eps: Any, name: str = "eps") -> float:
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {eps!r}.")
    return float(eps)


@torch.no_grad()
def _logits(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    out = []
    with eval_mode(model):
        for i in range(0, x.shape[0], batch_size):
            z = model(x[i:i + batch_size])
            check_logits(z)
            out.append(z)
    return torch.cat(out)


def _subset(mask: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """At most k indices where ``mask`` holds, in random order (``generator``)."""
    idx = torch.nonzero(mask).flatten()
    if len(idx) <= k:
        return idx
    perm = randperm(len(idx), generator=generator, like=idx)
    return idx[perm[:k]].sort().values


def _run_suite(model: nn.Module, x: Tensor, y: Tensor, clean_correct: Tensor, named: list[tuple[str, Attack]],
               eps: float, generator: torch.Generator | None, batch_size: int
               ) -> tuple[Tensor, Tensor, Tensor, list[tuple[str, float]]]:
    """(robust, fooled_by, x_adv, per_attack): each attack on the samples still robust, in batches."""
    n = x.shape[0]
    robust = clean_correct.clone()
    fooled_by = torch.full((n,), -1, dtype=torch.long, device=x.device)
    x_adv = x.clone()
    per_attack: list[tuple[str, float]] = []
    for j, (name, atk) in enumerate(named):
        todo = torch.nonzero(robust).flatten()
        # an empty index splits into one empty chunk: no attack call once nothing is robust
        for chunk in track(todo.split(batch_size) if len(todo) else (), f"{name} (eps {eps:g})"):
            res = atk.run(model, x[chunk], y[chunk], generator=generator, eps=eps)
            hit = chunk[res.success]
            x_adv[hit] = res.x_adv[res.success]
            robust[hit] = False
            fooled_by[hit] = j
        per_attack.append((name, float(robust.float().mean())))
    return robust, fooled_by, x_adv, per_attack


# ------------------------------------------------------------------ checks
def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _check_randomised(model: nn.Module, xs: Tensor, batch_size: int) -> MaskingFlag | None:
    z1, z2 = _logits(model, xs, batch_size), _logits(model, xs, batch_size)

    def unit(z: Tensor) -> Tensor:
        return z / (z.norm(dim=1, keepdim=True) + 1e-10)

    diff = float((unit(z1) - unit(z2)).norm(dim=1).max())
    changed = float((z1.argmax(1) != z2.argmax(1)).float().mean())
    if diff <= RANDOMISED_TOL and changed == 0:
        return None
    return MaskingFlag(
        "randomised_model",
        f"Two forward passes of the same {xs.shape[0]} inputs differ (largest distance of the normalised "
        f"logits {_fmt(diff)}, predictions changed on {changed:.1%}), so the model is randomised in eval "
        "mode: evaluate with expectation over transformation, for instance attacks=[APGD(..., eot_iter=20), "
        "APGDTargeted(..., eot_iter=20), Square(...)].",
        {"max_normalised_logit_diff": diff, "fraction_predictions_changed": changed, "n": xs.shape[0]},
    )


def _gradients(model: nn.Module, xs: Tensor, ys: Tensor, batch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """(‖∇ margin‖₂, ‖∇ CE‖₂, max softmax) per sample, non-finite gradients reported as NaN norms."""
    gm: list[Tensor] = []
    gc: list[Tensor] = []
    pm: list[Tensor] = []
    with eval_mode(model):
        for i in range(0, xs.shape[0], batch_size):
            xb = xs[i:i + batch_size].detach().requires_grad_(True)
            yb = ys[i:i + batch_size]
            with torch.enable_grad():
                z = model(xb)
                zy = z.gather(1, yb[:, None]).squeeze(1)
                margin = zy - z.scatter(1, yb[:, None], -math.inf).amax(1)
                ce = F.cross_entropy(z, yb, reduction="none")
                (g_m,) = torch.autograd.grad(margin.sum(), xb, retain_graph=True)
                (g_c,) = torch.autograd.grad(ce.sum(), xb)
            for g, acc in ((g_m, gm), (g_c, gc)):
                flat = g.flatten(1)
                norm = flat.norm(dim=1)
                acc.append(torch.where(torch.isfinite(flat).all(1), norm, torch.full_like(norm, math.nan)))
            pm.append(z.detach().softmax(1).amax(1))
    return torch.cat(gm), torch.cat(gc), torch.cat(pm)


def _check_gradients(model: nn.Module, xs: Tensor, ys: Tensor, batch_size: int) -> list[MaskingFlag]:
    flags = []
    g_margin, g_ce, p_max = _gradients(model, xs, ys, batch_size)
    m = xs.shape[0]
    nonfinite = torch.isnan(g_margin)
    zero = g_margin == 0
    bad = nonfinite | zero
    frac = float(bad.float().mean())
    if frac > ZERO_GRADIENT_TOL:
        flags.append(MaskingFlag(
            "zero_gradients",
            f"The input gradient of the logit margin z_y − max_(i≠y) z_i is zero on {int(zero.sum())} and "
            f"non-finite on {int(nonfinite.sum())} of {m} inputs, so gradient-based attacks cannot move "
            "there (non-differentiable or quantising layers, shattered gradients): approximate those layers "
            "with a differentiable surrogate (BPDA) and rely on the gradient-free Square results.",
            {"fraction": frac, "n_zero": int(zero.sum()), "n_nonfinite": int(nonfinite.sum()), "n": m},
        ))
    ok = ~bad
    saturated = ok & (p_max >= 1 - SATURATION_P) & (g_ce.nan_to_num(math.inf) <= SATURATION_GRAD_RATIO * g_margin)
    frac_sat = float(saturated.float().mean())
    if frac_sat > SATURATED_FRACTION_TOL:
        ratio = (g_ce / g_margin.clamp_min(1e-30))[ok]
        flags.append(MaskingFlag(
            "saturated_softmax",
            f"On {frac_sat:.0%} of {m} inputs the softmax is saturated (max probability ≥ 1 − {SATURATION_P:g}) "
            f"and the cross-entropy gradient vanishes next to the logit-margin gradient (ratio ≤ "
            f"{SATURATION_GRAD_RATIO:g}), so CE-based attacks see no signal: rely on the DLR loss "
            "(APGD(loss='dlr'), APGDTargeted) or the margin loss, which are invariant to the scale of the logits.",
            {"fraction": frac_sat, "median_max_softmax": float(p_max.median()),
             "median_ce_to_margin_gradient_ratio": float(ratio.median()) if len(ratio) else math.nan, "n": m},
        ))
    return flags


def _check_gradient_free(named: list[tuple[str, Attack]], fooled_by: Tensor, per_attack: list[tuple[str, float]]
                         ) -> MaskingFlag | None:
    is_free = [bool(getattr(a, "gradient_free", False)) for _, a in named]
    first_grad = next((j for j, f in enumerate(is_free) if not f), None)
    if first_grad is None:
        return None
    later_free = [j for j in range(first_grad + 1, len(named)) if is_free[j]]
    if not later_free:
        return None
    n = fooled_by.shape[0]
    count = int(sum(int((fooled_by == j).sum()) for j in later_free))
    before = per_attack[later_free[0] - 1][1]
    drop = count / n
    if drop <= GRADIENT_FREE_TOL:
        return None
    names = ", ".join(named[j][0] for j in later_free)
    return MaskingFlag(
        "gradient_free_stronger",
        f"The gradient-free attack ({names}) fooled {count} of {n} samples that every gradient-based attack "
        f"before it failed on, lowering robust accuracy by {drop:.2%}, which suggests masked gradients: the "
        "gradient-based evaluation is unreliable, run Square with more queries and restarts or an adaptive attack.",
        {"n_fooled": count, "robust_accuracy_drop": drop, "robust_accuracy_before": before, "n": n},
    )


def _probe_apgd(named: list[tuple[str, Attack]], norm: str, eps: float, bounds: tuple[float, float]) -> APGD:
    """The first untargeted APGD of the ensemble (its steps, loss, EOT), or APGD-CE-100."""
    for _, a in named:
        if type(a) is APGD:
            return a
    return APGD(eps=eps, norm=norm, loss="ce", steps=100, bounds=bounds)  # type: ignore[arg-type]


def _check_convergence(model: nn.Module, x: Tensor, y: Tensor, robust: Tensor, probe: APGD, eps: float,
                       check_samples: int, generator: torch.Generator | None, batch_size: int
                       ) -> MaskingFlag | None:
    idx = _subset(robust, check_samples, generator)
    if len(idx) == 0:
        return None
    stronger = dataclasses.replace(probe, steps=2 * probe.steps, restarts=probe.restarts + 1)
    fooled = 0
    for chunk in idx.split(batch_size):
        fooled += int(stronger.run(model, x[chunk], y[chunk], generator=generator, eps=eps).success.sum())
    frac = fooled / len(idx)
    if frac <= NO_CONVERGENCE_TOL:
        return None
    return MaskingFlag(
        "no_convergence",
        f"APGD with twice the steps ({stronger.steps}) and one more restart ({stronger.restarts}) fooled "
        f"{fooled} of {len(idx)} samples that the whole ensemble left robust, so robust accuracy is still "
        "falling with more iterations: the reported value is an over-estimate; evaluate with more steps and restarts.",
        {"n_fooled": fooled, "n": len(idx), "fraction": frac, "steps": stronger.steps,
         "restarts": stronger.restarts, "estimated_robust_accuracy_drop": frac * float(robust.float().mean())},
    )


def _check_unbounded(model: nn.Module, x: Tensor, y: Tensor, clean_correct: Tensor, norm: str,
                     bounds: tuple[float, float], n_classes: int, check_samples: int,
                     generator: torch.Generator | None, batch_size: int) -> MaskingFlag | None:
    idx = _subset(clean_correct, check_samples, generator)
    if len(idx) == 0:
        return None
    width = float(bounds[1] - bounds[0])
    big = width if norm == "linf" else width * math.sqrt(x[0].numel())
    atk = APGD(eps=big, norm=norm, loss="dlr" if n_classes >= 3 else "ce", steps=100, bounds=bounds)  # type: ignore[arg-type]
    fooled = 0
    for chunk in idx.split(batch_size):
        fooled += int(atk.run(model, x[chunk], y[chunk], generator=generator).success.sum())
    rate = fooled / len(idx)
    if rate >= 1 - UNBOUNDED_TOL:
        return None
    return MaskingFlag(
        "unbounded_fails",
        f"APGD with a budget covering the whole input box ({norm} eps={_fmt(big)}) fooled only {rate:.1%} of "
        f"{len(idx)} correctly classified samples where any working attack reaches ~100%, so the attack does not "
        "reach the examples that exist: suspect masked or obfuscated gradients, not robustness.",
        {"success_rate": rate, "n": len(idx), "eps": big},
    )


def _monotone_flag(eps_list: list[float], accs: list[float], robust_masks: list[Tensor]) -> MaskingFlag | None:
    worst = (0.0, 0, 0)
    for i in range(len(eps_list)):
        for j in range(i + 1, len(eps_list)):
            rise = accs[j] - accs[i]
            if rise > worst[0]:
                worst = (rise, i, j)
    rise, i, j = worst
    if rise <= 0:
        return None
    # samples fooled at the smaller budget but robust at the larger: their adversarial example is admissible there
    witnesses = int((robust_masks[j] & ~robust_masks[i]).sum())
    return MaskingFlag(
        "not_monotone_in_eps",
        f"Robust accuracy rises from {accs[i]:.1%} at eps={_fmt(eps_list[i])} to {accs[j]:.1%} at the larger "
        f"eps={_fmt(eps_list[j])}, although every example found at the smaller budget is admissible at the larger "
        f"({witnesses} such samples), so the attack fails at large budgets: suspect masked gradients.",
        {"eps_low": eps_list[i], "eps_high": eps_list[j], "robust_accuracy_low": accs[i],
         "robust_accuracy_high": accs[j], "n_witnesses": witnesses},
    )


# ------------------------------------------------------------------ public
@warns_once
def robust_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: Literal["linf", "l2"],
    eps: float,
    attacks: str | Sequence[Attack | tuple[str, Attack]] = "standard",
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    checks: Checks = "standard",
    check_samples: int = 64,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> RobustAccuracy:
    """Worst-case robust accuracy of ``model`` over an ensemble of attacks, with masking checks.

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K); run in eval mode (each module's mode is restored).
    x : Tensor
        Inputs (N, C, H, W) within ``bounds`` (Square needs images); never modified.
    y : Tensor
        True labels, int64 (N,).
    norm : {"linf", "l2"}
        Threat model.
    eps : float
        Budget; every attack is run with it (``run(..., eps=eps)``), whatever its own ``eps``.
    attacks : "standard" or list
        ``"standard"``: :func:`standard_attacks`. Or attack instances (named by their class,
        lower-cased) or ``(name, attack)`` pairs, run in that order, each on the samples
        still robust; their ``norm`` and ``bounds`` must match.
    generator : torch.Generator, optional
        All randomness (random starts, Square's windows, check subsets): the result is
        deterministic given its state (and ``batch_size``).
    batch_size : int
        Samples per attack call.
    checks : {"standard", "full", None}
        Which gradient-masking checks run besides the cheap ones (module docstring).
    check_samples : int
        At most this many samples enter each check.
    bounds : (float, float)
        Input range.

    Returns
    -------
    RobustAccuracy

    Examples
    --------
    >>> res = robust_accuracy(model, x, y, norm="linf", eps=0.3)  # doctest: +SKIP
    >>> res.robust_accuracy, res.per_attack, [f.code for f in res.flags]  # doctest: +SKIP
    """
    _check_common(model, x, y, norm, batch_size, bounds)
    eps = _check_eps(eps)
    if checks not in ("standard", "full", None):
        raise ValueError(f"checks must be 'standard', 'full' or None; got {checks!r}.")
    if isinstance(check_samples, bool) or not isinstance(check_samples, int) or check_samples < 1:
        raise ValueError(f"check_samples must be an integer >= 1; got {check_samples!r}.")
    x = x.detach()
    logits = _logits(model, x, batch_size)
    n_classes = logits.shape[1]
    check_labels(y, x.shape[0], n_classes)
    clean_correct = logits.argmax(1) == y
    named = _named_attacks(attacks, norm, eps, n_classes, bounds)

    flags: list[MaskingFlag] = []
    probe_idx = _subset(torch.ones_like(clean_correct), check_samples, generator)
    xs, ys = x[probe_idx], y[probe_idx]
    rand_flag = _check_randomised(model, xs, batch_size)
    if rand_flag is not None:
        flags.append(rand_flag)
    flags.extend(_check_gradients(model, xs, ys, batch_size))

    robust, fooled_by, x_adv, per_attack = _run_suite(model, x, y, clean_correct, named, eps, generator, batch_size)
    gf = _check_gradient_free(named, fooled_by, per_attack)
    if gf is not None:
        flags.append(gf)

    if checks in ("standard", "full"):
        probe = _probe_apgd(named, norm, eps, bounds)
        f = _check_convergence(model, x, y, robust, probe, eps, check_samples, generator, batch_size)
        if f is not None:
            flags.append(f)
        f = _check_unbounded(model, x, y, clean_correct, norm, bounds, n_classes, check_samples, generator, batch_size)
        if f is not None:
            flags.append(f)
    if checks == "full":
        probe = _probe_apgd(named, norm, eps, bounds)
        idx = _subset(clean_correct, check_samples, generator)
        if len(idx) > 0:
            curve = robust_accuracy_curve(model, x[idx], y[idx], norm, [k * eps for k in MONOTONE_EPS_FACTORS],
                                          attacks=[("apgd", probe)], generator=generator,
                                          batch_size=batch_size, bounds=bounds)
            flags.extend(curve.flags)

    return RobustAccuracy(
        robust_accuracy=float(robust.float().mean()),
        clean_accuracy=float(clean_correct.float().mean()),
        robust=robust,
        clean_correct=clean_correct,
        per_attack=per_attack,
        fooled_by=fooled_by,
        flags=flags,
        x_adv=x_adv,
        norm=norm,
        eps=eps,
        attacks=[(name, repr(dataclasses.replace(cast(Any, a), eps=eps) if hasattr(a, "eps") else a)) for name, a in named],
        checks=checks,
    )


@warns_once
def robust_accuracy_curve(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: Literal["linf", "l2"],
    eps_list: Sequence[float],
    *,
    attacks: str | Sequence[Attack | tuple[str, Attack]] = "standard",
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> RobustAccuracyCurve:
    """Robust accuracy at each budget of ``eps_list`` (ascending), with the monotonicity check.

    Each budget is an independent run of the ensemble (as :func:`robust_accuracy`, without
    its checks). Robust accuracy cannot rise with the budget for a working attack — an
    example found at a smaller budget is admissible at every larger one — so a rise is
    reported as the ``not_monotone_in_eps`` flag, with the number of samples fooled at
    the smaller budget and not at the larger.

    Parameters
    ----------
    eps_list : sequence of float
        At least two distinct budgets > 0; sorted ascending.
    Other parameters
        As :func:`robust_accuracy`.
    """
    _check_common(model, x, y, norm, batch_size, bounds)
    if isinstance(eps_list, str) or not isinstance(eps_list, Sequence) or len(eps_list) < 2:
        raise ValueError(f"eps_list must be a list of at least two budgets > 0; got {eps_list!r}.")
    budgets = sorted(_check_eps(e, "every entry of eps_list") for e in eps_list)
    if len(set(budgets)) != len(budgets):
        raise ValueError(f"eps_list must hold distinct budgets; got {list(eps_list)!r}.")
    x = x.detach()
    logits = _logits(model, x, batch_size)
    n_classes = logits.shape[1]
    check_labels(y, x.shape[0], n_classes)
    clean_correct = logits.argmax(1) == y
    results = []
    for e in budgets:
        named = _named_attacks(attacks, norm, e, n_classes, bounds)
        robust, fooled_by, x_adv, per_attack = _run_suite(model, x, y, clean_correct, named, e, generator, batch_size)
        results.append(RobustAccuracy(
            robust_accuracy=float(robust.float().mean()), clean_accuracy=float(clean_correct.float().mean()),
            robust=robust, clean_correct=clean_correct, per_attack=per_attack, fooled_by=fooled_by, flags=[],
            x_adv=x_adv, norm=norm, eps=e,
            attacks=[(name, repr(dataclasses.replace(cast(Any, a), eps=e) if hasattr(a, "eps") else a)) for name, a in named],
            checks=None,
        ))
    accs = [r.robust_accuracy for r in results]
    flag = _monotone_flag(budgets, accs, [r.robust for r in results])
    return RobustAccuracyCurve(
        eps=budgets, robust_accuracy=accs, clean_accuracy=float(clean_correct.float().mean()),
        results=results, flags=[flag] if flag is not None else [], norm=norm,
    )
