"""Fooling ratio against the budget: one direction per image, re-applied at every budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._batching import check_batch_size, predict
from .._validation import check_inputs, check_labels, eval_mode
from ..attacks.base import OneStepAttack
from ..fisher.input_space import FisherSpectrum

__all__ = ["FoolingCurve", "one_step_curve"]

#: Chunk of the clean forward that picks the correctly classified images.
_PREDICT_BATCH = 512


@dataclass(frozen=True)
class FoolingCurve:
    """Fooling ratio of a one-step attack at each budget (Shen et al. Figures 3 and 5).

    Attributes
    ----------
    budgets : tuple of float
        The budgets, in the attack's norm, before clipping to the input bounds.
    fooling_ratio : Tensor
        (B,) float64: of the ``n_correct`` correctly classified images, the fraction the
        model misclassifies at each budget (predictions recomputed).
    mean_applied_l2, mean_applied_linf : Tensor
        (B,) float64: mean L2 / L∞ norm of the perturbation actually applied (after
        clipping) over the attacked images.
    n_correct : int
        Images classified correctly, the only ones attacked (the denominator).
    n : int
        All images given.
    lambda_max : Tensor or None
        (n_correct,) float64: for attacks whose direction is a
        :class:`~fisherscope.fisher.input_space.FisherSpectrum` (OSSA), the top eigenvalue
        of G_x of each attacked image, from the spectrum the attack computed anyway;
        None for other attacks.
    lambda_max_mean, lambda_max_median : float
        Mean and median of ``lambda_max`` (NaN without a spectrum).
    """

    budgets: tuple[float, ...]
    fooling_ratio: Tensor
    mean_applied_l2: Tensor
    mean_applied_linf: Tensor
    n_correct: int
    n: int
    lambda_max: Tensor | None = None
    lambda_max_mean: float = float("nan")
    lambda_max_median: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        """Plain lists for JSON results (the ``lambda_max*`` keys only with a spectrum)."""
        out: dict[str, Any] = {
            "budgets": list(self.budgets),
            "fooling_ratio": self.fooling_ratio.tolist(),
            "mean_applied_l2": self.mean_applied_l2.tolist(),
            "mean_applied_linf": self.mean_applied_linf.tolist(),
            "n_correct": self.n_correct,
            "n": self.n,
        }
        if self.lambda_max is not None:
            out.update({"lambda_max_mean": self.lambda_max_mean, "lambda_max_median": self.lambda_max_median,
                        "lambda_max": self.lambda_max.tolist()})
        return out


def one_step_curve(attack: OneStepAttack, model: nn.Module, x: Tensor, y: Tensor, budgets: Sequence[float], *,
                   seed: int, batch_size: int) -> FoolingCurve:
    """Fooling ratio of a one-step attack at every budget, on the images ``model`` gets right.

    The attack's direction is computed once per batch (:meth:`OneStepAttack.prepare`,
    with one generator seeded by ``seed`` for the whole call, so OTCM's random targets are
    the same draw at every budget) and re-applied at each budget
    (:meth:`OneStepAttack.step`); an image counts as fooled at a budget when the model's
    prediction of the attacked image differs from ``y``. Images the model already gets
    wrong are left out (Shen et al.'s fooling ratio, as
    :func:`~fisherscope.evaluation.fooling_ratio`).

    Parameters
    ----------
    attack : OneStepAttack
        FGSM, FGM, OTCM, OSSA, ... (its own ``eps`` is not used).
    model : nn.Module
        Maps inputs to logits (N, K); run in eval mode (its modes restored).
    x : Tensor
        Clean images (N, ...) within the attack's bounds; moved to the model's device.
    y : Tensor
        True labels, int64 (N,).
    budgets : sequence of float
        Budgets in the attack's norm (before clipping).
    seed : int
        Seed of the attack's randomness.
    batch_size : int
        Images per prepared direction.

    Returns
    -------
    FoolingCurve

    Raises
    ------
    ValueError
        When the model classifies none of the images correctly, or the arguments are
        malformed.

    Examples
    --------
    >>> from fisherscope.attacks import OSSA
    >>> curve = one_step_curve(OSSA(eps=1.0), model, x, y, [0.5, 1.0, 2.0], seed=0,
    ...                        batch_size=256)  # doctest: +SKIP
    >>> curve.fooling_ratio  # doctest: +SKIP
    """
    if not isinstance(attack, OneStepAttack):
        raise TypeError(
            f"one_step_curve needs a OneStepAttack (FGSM, FGM, OTCM, OSSA, ...); got {type(attack).__name__}. "
            "Iterative attacks have no direction to re-apply; evaluate them at each budget instead."
        )
    check_batch_size(batch_size, "one_step_curve")
    budgets = tuple(float(b) for b in budgets)
    if not budgets:
        raise ValueError("budgets is empty; give the budgets to evaluate, e.g. [0.5, 1.0, 2.0].")
    check_inputs(x, y, bounds=attack.bounds)
    check_labels(y, x.shape[0])
    dev = next(model.parameters()).device
    x, y = x.to(dev), y.to(dev)
    with eval_mode(model, warn=False):
        correct = predict(model, x, _PREDICT_BATCH, check=False, warn=False) == y
    xc, yc = x[correct], y[correct]
    n_correct = int(correct.sum())
    if n_correct == 0:
        raise ValueError("the network classifies none of the given images correctly; nothing to attack.")
    gen = torch.Generator().manual_seed(seed)

    def one(xb: Tensor, yb: Tensor) -> dict[str, Tensor]:
        state = attack.prepare(model, xb, yb, False, gen)
        fooled, l2, linf = [], [], []
        for b in budgets:
            xa = attack.step(model, xb, yb, state, torch.full((len(xb),), b, dtype=xb.dtype, device=dev))
            with torch.no_grad():
                fooled.append(model(xa).argmax(1) != yb)
            delta = (xa - xb).flatten(1)
            l2.append(delta.norm(dim=1))
            linf.append(delta.abs().amax(1))
        out = {"fooled": torch.stack(fooled, 1), "l2": torch.stack(l2, 1), "linf": torch.stack(linf, 1)}
        if isinstance(state, FisherSpectrum):
            out["lam"] = state.eigenvalues[:, 0]
        return out

    parts = []
    with eval_mode(model, warn=False):
        for i in range(0, n_correct, batch_size):
            parts.append(one(xc[i : i + batch_size], yc[i : i + batch_size]))
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    spectrum: dict[str, Any] = {}
    if "lam" in cat:
        lam = cat["lam"].double()
        spectrum = {"lambda_max": lam.cpu(), "lambda_max_mean": float(lam.mean()),
                    "lambda_max_median": float(lam.median())}
    return FoolingCurve(
        budgets=budgets,
        fooling_ratio=cat["fooled"].double().mean(0).cpu(),
        mean_applied_l2=cat["l2"].double().mean(0).cpu(),
        mean_applied_linf=cat["linf"].double().mean(0).cpu(),
        n_correct=n_correct,
        n=int(x.shape[0]),
        **spectrum,
    )
