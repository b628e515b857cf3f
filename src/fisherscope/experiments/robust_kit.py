"""Worst-case robustness pieces shared by the experiments (part of the kit).

- :class:`EnsembleSpec` the attacks of a worst-case evaluation (AutoAttack's standard
  ensemble without FAB-T by default, or a stated reduction of it) and :func:`worst_case`,
  one :func:`~fisherscope.evaluation.robust_accuracy` evaluation as a cell's JSON values,
- :func:`train_network` a network of a ``[[models]]`` list, fine-tuned from the plain
  network of the same seed when the spec says ``finetune``,
- :func:`masking_verdict` the computed answer to "is a defense's lower fooling ratio under
  a weak attack robustness or gradient masking?", from stored numbers only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..attacks import APGD, APGDTargeted, Attack, Square
from ..evaluation import robust_accuracy
from .base import Context
from .report import pct
from .specs import ModelSpec, train_spec

__all__ = ["MASKING", "NO_GAP", "PARTLY", "ROBUSTNESS", "UNDECIDED", "EnsembleSpec", "Verdict", "masking_verdict",
           "train_network", "worst_case"]


# ====================================================================== networks


def train_network(spec: ModelSpec, *, arch: str, dataset: str, preset: str | None, training: dict[str, Any],
                  seed: int, ctx: Context) -> Any:
    """Train (or load) the network of ``spec``: from scratch with ``training`` (then the spec's
    overrides), or, when ``spec.finetune`` is set, fine-tuned from the plain network of the same
    seed, arch, preset and ``model_kwargs`` (trained with ``training``) with ``training`` updated
    by ``spec.finetune`` (``train_model(init_from=...)``)."""
    training = dict(training)
    if spec.finetune is not None:
        plain = ModelSpec(name="plain", arch=spec.arch, preset=spec.preset, model_kwargs=spec.model_kwargs)
        base = train_spec(plain, arch, dataset, ctx, seed=seed, preset=preset, training=training)
        training = {**training, **spec.finetune, "init_from": base}
    return train_spec(spec, arch, dataset, ctx, seed=seed, preset=preset, training=training)


# ====================================================================== the ensemble


@dataclass(frozen=True)
class EnsembleSpec:
    """The attacks of a worst-case evaluation and its masking checks.

    The defaults are AutoAttack's standard ensemble without FAB-T
    (:func:`fisherscope.evaluation.standard_attacks`): APGD-CE and APGD-T (targeted DLR;
    targeted CE below 4 classes) of ``apgd_steps`` steps, ``min(n_target_classes, K - 1)``
    targets, then Square with ``square_queries`` queries; each attack runs on the samples
    still robust. Smaller values are a reduction of that protocol, which the reports state
    (:meth:`describe`). ``checks`` and ``check_samples`` go to
    :func:`~fisherscope.evaluation.robust_accuracy`.
    """

    apgd_steps: int = 100
    n_target_classes: int = 9
    square_queries: int = 5000
    p_init: float = 0.8
    checks: str | None = "standard"
    check_samples: int = 64

    def __post_init__(self) -> None:
        for name in ("apgd_steps", "n_target_classes", "square_queries", "check_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ensemble: {name} must be an integer >= 1; got {v!r}. "
                                 f"Leave it out for AutoAttack's value ({getattr(EnsembleSpec, name)}).")
        if self.checks not in ("standard", "full", None):
            raise ValueError(f"ensemble: checks must be one of 'standard', 'full' or none; got {self.checks!r}. "
                             "Use 'standard' (AutoAttack's checks) unless the budget curve is wanted too.")

    @property
    def is_standard(self) -> bool:
        """True when the attacks are AutoAttack's standard settings (checks aside)."""
        d = EnsembleSpec()
        return (self.apgd_steps, self.n_target_classes, self.square_queries, self.p_init) == (
            d.apgd_steps, d.n_target_classes, d.square_queries, d.p_init)

    def attacks(self, norm: str, eps: float, n_classes: int) -> list[tuple[str, Attack]]:
        """(name, attack) pairs in the order they run."""
        out: list[tuple[str, Attack]] = [
            ("apgd-ce", APGD(eps=eps, norm=norm, loss="ce", steps=self.apgd_steps))]  # type: ignore[arg-type]
        if n_classes >= 2:
            out.append(("apgd-t", APGDTargeted(eps=eps, norm=norm, loss="dlr" if n_classes >= 4 else "ce",  # type: ignore[arg-type]
                                               steps=self.apgd_steps,
                                               n_target_classes=min(self.n_target_classes, n_classes - 1))))
        out.append(("square", Square(eps=eps, norm=norm, n_queries=self.square_queries,  # type: ignore[arg-type]
                                     p_init=self.p_init)))
        return out

    def describe(self) -> str:
        """One sentence naming the attacks and how they relate to AutoAttack's standard ensemble."""
        what = (f"APGD-CE ({self.apgd_steps} steps), APGD-T with the DLR loss ({self.apgd_steps} steps, "
                f"{self.n_target_classes} target classes) and Square ({self.square_queries} queries, "
                f"p_init {self.p_init:g}), each on the samples the attacks before it left robust")
        if self.is_standard:
            return what + ": AutoAttack's standard ensemble without FAB-T."
        return (what + ": a reduction of AutoAttack's standard ensemble (100 steps, 9 target classes, 5000 queries), "
                "so the robust accuracies are upper bounds that the full ensemble may lower.")


def worst_case(model: torch.nn.Module, x: Tensor, y: Tensor, *, norm: str, eps: float, ensemble: EnsembleSpec,
               seed: int, batch_size: int) -> dict[str, Any]:
    """One :func:`~fisherscope.evaluation.robust_accuracy` evaluation as JSON values.

    Returns the result's ``to_dict()`` (per-sample masks included, ``x_adv`` left out) plus
    ``n_correct``, ``fooling_ratio`` (of the correctly classified images, the fraction some
    attack fooled; NaN when none is correct), ``gradient_fooling_ratio`` (the same after
    the gradient-based attacks alone), ``per_attack_fooling`` and ``seconds``.
    """
    dev = next(model.parameters()).device
    named = ensemble.attacks(norm, eps, _n_classes(model, x[:1].to(dev)))
    t0 = time.perf_counter()
    res = robust_accuracy(model, x.to(dev), y.to(dev), norm=norm, eps=eps, attacks=named,
                          generator=torch.Generator(device=dev).manual_seed(seed), batch_size=batch_size,
                          checks=ensemble.checks, check_samples=ensemble.check_samples)
    seconds = time.perf_counter() - t0
    out = res.to_dict()
    n_correct = int(res.clean_correct.sum())
    fooling = [(n_correct - acc * res.n) / n_correct if n_correct else math.nan for _, acc in res.per_attack]
    gradient = [j for j, (_, a) in enumerate(named) if not getattr(a, "gradient_free", False)]
    out.update({
        "n_correct": n_correct,
        "fooling_ratio": fooling[-1],
        "gradient_fooling_ratio": fooling[max(gradient)] if gradient else math.nan,
        "per_attack_fooling": fooling,
        "seconds": seconds,
    })
    return out


@torch.no_grad()
def _n_classes(model: torch.nn.Module, x1: Tensor) -> int:
    """The number of classes: the width of the logits of one input (eval mode, mode restored)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return int(model(x1).shape[1])
    finally:
        for m, mode in modes:
            m.training = mode


# ====================================================================== the verdict

#: Verdict labels, by what the strong attacks say about a defense's lower weak-attack fooling ratio.
ROBUSTNESS, PARTLY, MASKING, NO_GAP, UNDECIDED = (
    "robustness", "partly robustness", "gradient masking", "no lower ratio", "inconclusive")


@dataclass(frozen=True)
class Verdict:
    """The computed answer: ``label`` (one of :data:`ROBUSTNESS`, :data:`PARTLY`,
    :data:`MASKING`, :data:`NO_GAP`, :data:`UNDECIDED`), the ``sentence`` saying it with the numbers, and one
    row per budget: ``[budget, weak ref, weak defense, strong ref, strong defense, finding]``
    (fooling ratios in %)."""

    label: str
    sentence: str
    rows: list[list[Any]]


def _margin(p1: float, n1: int, p2: float, n2: int) -> float:
    """What a difference of two fooling ratios must exceed to count: two standard errors of the
    difference plus one image of the smaller denominator (so 0% vs 0% is never a difference)."""
    return 2 * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2) + 1 / min(n1, n2)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def masking_verdict(defense: str, ref: str, budgets: Sequence[float], weak_ref: Sequence[float],
                    weak_def: Sequence[float], strong_ref: Sequence[float], strong_def: Sequence[float],
                    n_weak: tuple[int, int], n_strong: tuple[int, int], *, weak: str = "OSSA", strong: str = "the worst-case ensemble",
                    flags: Sequence[str] = (), norm: str = "L2") -> Verdict:
    """Is ``defense``'s lower fooling ratio under the ``weak`` attack robustness or gradient masking?

    At each budget (fooling ratios of the correctly classified images: ``n_weak`` = (reference,
    defense) counts of the images the weak attack ran on, ``n_strong`` the strong attacks'): where the weak attack fools the defense less than the reference by more than
    :func:`_margin`, the strong attacks at the same budget decide (their own margin ``m``): a
    gap at least half the weak attack's and beyond ``m`` is robustness; a gap within ``m`` of
    zero but more than ``m`` below the weak attack's is gradient masking (the weak attack's
    signal is lost, stronger attacks still find the examples); a gap beyond ``m`` but under
    half the weak attack's is partly robustness; a gap within ``m`` of both zero and the weak
    attack's gap is inconclusive (too few images for the strong attacks). The verdict is the
    finding of most conclusive budgets (ties: the weaker claim, partly before masking before
    robustness); ``flags`` (masking codes raised on the defense) are named in the sentence.
    """
    if not (len(budgets) == len(weak_ref) == len(weak_def) == len(strong_ref) == len(strong_def)) or not budgets:
        raise ValueError(f"masking_verdict: budgets and the four fooling-ratio lists must have one equal, non-zero "
                         f"length; got {len(budgets)}, {len(weak_ref)}, {len(weak_def)}, {len(strong_ref)}, "
                         f"{len(strong_def)}. Pass the ratios at the same budgets.")
    if min(*n_weak, *n_strong) < 1:
        raise ValueError(f"masking_verdict: n_weak and n_strong must be pairs of counts >= 1 (correctly classified "
                         f"images attacked); got {n_weak} and {n_strong}. A network that classifies nothing correctly "
                         "has no fooling ratio.")
    rows: list[list[Any]] = []
    found: list[tuple[float, float, float, float, float, str]] = []
    for b, wr, wd, sr, sd in zip(budgets, weak_ref, weak_def, strong_ref, strong_def, strict=True):
        gap_w, gap_s = wr - wd, sr - sd
        m_s = _margin(sr, n_strong[0], sd, n_strong[1])
        if gap_w <= _margin(wr, n_weak[0], wd, n_weak[1]):
            finding = "not lower"
        elif gap_s > m_s:
            finding = ROBUSTNESS if gap_s >= 0.5 * gap_w else PARTLY
        elif gap_w - gap_s > m_s:
            finding = MASKING
        else:
            finding = UNDECIDED
        rows.append([b, pct(wr), pct(wd), pct(sr), pct(sd), finding])
        if finding != "not lower":
            found.append((b, wr, wd, sr, sd, finding))
    flag_text = (f"masking flags raised on {defense}: {', '.join(sorted(set(flags)))}" if flags
                 else f"no masking flag raised on {defense}")
    if not found:
        lo = min(rows, key=lambda r: r[2] - r[1])
        return Verdict(NO_GAP, (
            f"{NO_GAP.capitalize()}: {weak} does not fool {defense} significantly less than {ref} at any {norm} budget "
            f"tested (its largest drop, at {lo[0]:g}: {lo[2]:.1f}% against {lo[1]:.1f}%), so there is no lower fooling ratio to "
            f"explain; {flag_text}."), rows)
    counts = {k: sum(f[-1] == k for f in found) for k in (MASKING, PARTLY, ROBUSTNESS, UNDECIDED)}
    order = (PARTLY, MASKING, ROBUSTNESS)  # ties: the weaker claim first
    label = max(order, key=lambda k: (counts[k], -order.index(k)))
    if counts[label] == 0:
        label = UNDECIDED
    decided = [f for f in found if f[-1] == label] or found
    b, wr, wd, sr, sd, _ = max(decided, key=lambda f: f[1] - f[2])
    where = ", ".join(f"{f[0]:g}" for f in found)
    lead = {
        MASKING: f"Gradient masking, not robustness: at the {norm} budgets where {weak} fools {defense} less than {ref} "
                 f"({where}), {strong} fools the two about equally",
        ROBUSTNESS: f"Robustness: at the {norm} budgets where {weak} fools {defense} less than {ref} ({where}), {strong} "
                    f"fools it less too",
        PARTLY: f"Partly robustness: at the {norm} budgets where {weak} fools {defense} less than {ref} ({where}), "
                f"{strong} fools it less by under half {weak}'s gap",
        UNDECIDED: f"Inconclusive: at the {norm} budgets where {weak} fools {defense} less than {ref} ({where}), "
                   f"{strong}'s gap is within its noise of both zero and {weak}'s gap (too few images)",
    }[label]
    detail = (f" (at {b:g}, the largest such {weak} gap: {weak} {_pct(wd)} against {_pct(wr)}, {strong} "
              f"{_pct(sd)} against {_pct(sr)}; budgets: {counts[MASKING]} masking, {counts[PARTLY]} partly, "
              f"{counts[ROBUSTNESS]} robust, {counts[UNDECIDED]} inconclusive)")
    return Verdict(label, f"{lead}{detail}; {flag_text}.", rows)
