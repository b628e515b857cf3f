"""Detector-aware variants of Hendrycks & Gimpel's iterative attack (2017, §3.2 end, §3.3).

Hendrycks & Gimpel test their own detectors against an attacker who knows them: the
iterative targeted search (:class:`~fisherscope.attacks.HGTargeted`) with logarithmic
barriers added to the loss, so that a detector statistic s(x) stays inside a band
(low, high) around its clean mean:

- §3.2: s = the variance of the trailing PCA-whitened coefficients (the detector's
  score as a torch function, ``ImageScore(detector.torch_score())``, see
  :meth:`fisherscope.detectors.PCAWhiteningDetector.torch_score`), band = clean mean ±
  one clean standard deviation; on
  MNIST "the search procedure could not generate any adversarial MNIST digit";
- §3.3: s = KL(softmax ‖ uniform) (:class:`SoftmaxKL`), band = clean mean ± r·σ for
  r ∈ {1, 1/2, 1/4} (their Table 2, CIFAR-10: creation success 83%, 63%, 70%).

:class:`BarrierHGTargeted` is that search. The statistics need detector fits (a
whitening, clean means and deviations) at construction, so these attacks are not in
the :data:`~fisherscope.attacks.ATTACKS` registry (the contract suite builds every
registered attack from hyperparameters alone); import them from this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import (
    CALLABLE,
    NON_NEGATIVE_INT,
    POSITIVE,
    check_param,
    check_params,
    real,
)
from .base import AttackResult
from .hendrycks import HGTargeted

__all__ = ["BarrierHGTargeted", "ImageScore", "SoftmaxKL", "band_around"]

Statistic = Callable[[Tensor, Tensor | None], Tensor]


class ImageScore:
    """A differentiable score of the images as a :class:`BarrierHGTargeted` statistic.

    Wraps ``score(x) -> (N,)`` (a torch function with gradients in x that does not need
    the logits) so that ``ImageScore(score)(x, logits)`` is ``score(x)``. Hendrycks &
    Gimpel §3.2's statistic is the PCA-whitening detector's score:
    ``ImageScore(detector.torch_score())`` for a fitted
    :class:`~fisherscope.detectors.PCAWhiteningDetector`, or
    ``ImageScore(whitening.trailing_variance_score(start))`` from a
    :class:`~fisherscope.features.PCAWhitening`.

    Parameters
    ----------
    score : callable
        ``score(x) -> (N,)`` tensor, differentiable in x.

    Attributes
    ----------
    score : callable
        The wrapped function (e.g. for its ``project_off_window`` as ``step_transform``).

    Shapes
    ------
    x: (N, C, H, W) or (N, D) -> (N,).

    Examples
    --------
    >>> s = ImageScore(lambda x: x.flatten(1).pow(2).sum(1))
    >>> s(torch.ones(2, 3), None).tolist()
    [3.0, 3.0]
    """

    needs_logits: ClassVar[bool] = False

    def __init__(self, score: Callable[[Tensor], Tensor]) -> None:
        if not callable(score):
            raise TypeError(
                "score must be callable as score(x) -> (N,) tensor, differentiable in x, e.g. "
                f"PCAWhiteningDetector(...).fit(X).torch_score(); got {type(score).__name__}."
            )
        self.score = score

    def __call__(self, x: Tensor, logits: Tensor | None = None) -> Tensor:  # noqa: ARG002
        return self.score(x)

    def __repr__(self) -> str:
        return f"ImageScore({self.score!r})"


class SoftmaxKL:
    """KL(softmax(z) ‖ uniform) = log K + Σ_k p_k log p_k in nats, from the logits, float64.

    The statistic of Hendrycks & Gimpel §3.3 (and of
    :class:`~fisherscope.detectors.SoftmaxDetector` with ``statistic="kl_uniform"``,
    which negates it). Differentiable through ``log_softmax``.

    Shapes
    ------
    x: ignored; logits: (N, K) -> (N,) float64.

    Examples
    --------
    >>> SoftmaxKL()(None, torch.tensor([[0.0, 0.0], [50.0, 0.0]])).round(decimals=6).tolist()
    [0.0, 0.693147]
    """

    needs_logits: ClassVar[bool] = True

    def __call__(self, x: Tensor | None, logits: Tensor | None) -> Tensor:  # noqa: ARG002
        if logits is None:
            raise ValueError("SoftmaxKL needs the logits (N, K); got None.")
        log_p = torch.log_softmax(logits.double(), dim=1)
        return (log_p.exp() * log_p).sum(1) + math.log(logits.shape[1])

    def __repr__(self) -> str:
        return "SoftmaxKL()"


def band_around(clean_values: Any, radius: float) -> tuple[float, float]:
    """``(mean − radius·std, mean + radius·std)`` of clean statistic values (std with ddof 0).

    ``radius = inf`` gives (−inf, inf): no constraint.

    Examples
    --------
    >>> band_around([1.0, 3.0], 0.5)
    (1.5, 2.5)
    """
    v = np.asarray(clean_values.detach().cpu() if isinstance(clean_values, Tensor) else clean_values,
                   dtype=np.float64).ravel()
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"clean_values must be a non-empty set of finite numbers; got {v.size} value(s).")
    check_param("band_around", "radius", radius, real(gt=0, finite=False).but(
        expected="a number > 0 (inf for no constraint)"))
    if math.isinf(radius):
        return -math.inf, math.inf
    mu, sd = float(v.mean()), float(v.std())
    return mu - radius * sd, mu + radius * sd


@dataclass(frozen=True, kw_only=True)
class BarrierHGTargeted(HGTargeted):
    """:class:`~fisherscope.attacks.HGTargeted` with log barriers keeping a statistic in a band.

    Each step descends the per-sample objective::

        CE(f(x), t) + λ‖x − x0‖² − w · [log(high − s(x)) + log(s(x) − low)]

    (terms of an infinite bound dropped), clipped to the box, with the same step size,
    threshold and stopping rule as ``HGTargeted`` (Hendrycks & Gimpel §3.2: "adding the
    logarithmic barriers −log(μ + σ − v) and −log(v − μ + σ) to the loss"). The barrier
    is infinite outside the open band, so a plain fixed-size step can jump out of it:
    each step is **backtracked** — the step size is halved (at most ``max_backtracks``
    times) until the clipped iterate has s strictly inside (low, high); if none does,
    the sample stays where it is for that step. Every iterate is therefore inside the
    band, and the search stops per sample once p_target > ``threshold`` (or after
    ``max_steps``).

    Samples whose clean input is already outside the band cannot start (the barrier is
    infinite there): they are returned unchanged, with ``extras["started_inside"]``
    False and 0 steps, and count as failures.

    Success ("creation success" in the paper) is recomputed at the returned image:
    p_target > ``threshold``, argmax = target **and** low < s(x_adv) < high.

    Differences from the authors' code (``fooler_generator_constrained.py``, as described
    in the reference study): their KL mode tests the band on the *original* image, so its
    failure check never fires, and their whitening omits the mean. Here the band is tested
    on every iterate (the backtracking) and again on the returned image.

    Parameters
    ----------
    statistic : callable
        ``statistic(x, logits) -> (N,)``, differentiable in x (and the logits):
        :class:`SoftmaxKL`, an image score wrapped in :class:`ImageScore`, or any function
        with an optional class attribute ``needs_logits`` (default True: the logits are
        computed for it).
    low, high : float
        The open band (use :meth:`around` for mean ± r·std of clean values). One may be
        infinite; both infinite is plain ``HGTargeted`` (same iterates, bit for bit).
    barrier_weight : float
        w, the weight of the barrier terms (paper: 1).
    step_transform : callable, optional
        Applied to the objective's gradient before each step (``None``: the paper's plain
        descent). E.g. ``project_off_window`` of
        :class:`~fisherscope.features.TrailingVarianceScore`, a stronger attacker
        than the paper's: the step no longer moves the whitened window at all.
    max_backtracks : int
        Most step halvings per step (the last tried step is ``step_size / 2**max_backtracks``).
    step_size, l2_reg, threshold, max_steps, target
        As in :class:`~fisherscope.attacks.HGTargeted` (1/255, 1e-3, 0.5, 1000, random).

    Extras
    ------
    target, steps, p_target as in ``HGTargeted``; statistic (N,) float64 at x_adv;
    in_band (N,) bool at x_adv; started_inside (N,) bool (the clean input was in the band).

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x.

    References
    ----------
    Hendrycks, D., Gimpel, K. "Early methods for detecting adversarial images."
    ICLR workshop 2017, arXiv:1608.00530, §3.2 (end) and §3.3 (Table 2).

    Examples
    --------
    >>> kl = SoftmaxKL()
    >>> clean_kl = kl(None, model(x_train))
    >>> attack = BarrierHGTargeted.around(kl, clean_kl, radius=0.5)
    >>> res = attack.run(model, x, y, generator=torch.Generator().manual_seed(0))
    >>> bool(res.extras["in_band"][res.success].all())  # every success ends inside the band
    True
    """

    statistic: Statistic
    low: float = -math.inf
    high: float = math.inf
    barrier_weight: float = 1.0
    step_transform: Callable[[Tensor], Tensor] | None = None
    max_backtracks: int = 30

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_params(owner, self, {
            "step_transform": CALLABLE.but(
                expected="callable as step_transform(grad) -> tensor shaped like grad").or_none("no transform"),
            "statistic": CALLABLE.but(
                expected="callable as statistic(x, logits) -> (N,) tensor, e.g. "
                "ImageScore(detector.torch_score()) or SoftmaxKL()"),
        })
        check_params(owner, self, {"low": real(finite=False), "high": real(finite=False)})
        if not self.low < self.high:
            raise ValueError(
                f"BarrierHGTargeted needs low < high; got low={self.low!r}, high={self.high!r}. "
                "Build the band with BarrierHGTargeted.around(statistic, clean_values, radius)."
            )
        check_params(owner, self, {"barrier_weight": POSITIVE, "max_backtracks": NON_NEGATIVE_INT})

    @classmethod
    def around(cls, statistic: Statistic, clean_values: Any, radius: float = 1.0, **kwargs: Any) -> BarrierHGTargeted:
        """The attack with band mean ± ``radius`` · std of ``clean_values`` (see :func:`band_around`)."""
        low, high = band_around(clean_values, radius)
        return cls(statistic=statistic, low=low, high=high, **kwargs)

    # ---------------------------------------------------------------- helpers
    @property
    def _constrained(self) -> bool:
        return math.isfinite(self.low) or math.isfinite(self.high)

    def _values(self, model: nn.Module, x: Tensor, logits: Tensor | None = None) -> Tensor:
        """The statistic at x (no gradient), computing the logits if it needs them."""
        with torch.no_grad():
            if logits is None and getattr(self.statistic, "needs_logits", True):
                logits = model(x)
            s = self.statistic(x, logits)
        if not isinstance(s, Tensor) or s.shape != (x.shape[0],):
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(f"statistic must return a tensor of shape ({x.shape[0]},); got {got}.")
        return s.detach()

    def inside(self, values: Tensor) -> Tensor:
        """(N,) bool: low < value < high (and finite)."""
        return torch.isfinite(values) & (values > self.low) & (values < self.high)

    def _barrier(self, s: Tensor) -> Tensor:
        b = torch.zeros_like(s)
        if math.isfinite(self.high):
            b = b - torch.log(self.high - s)
        if math.isfinite(self.low):
            b = b - torch.log(s - self.low)
        return b

    # ------------------------------------------------------------------ hooks
    def objective_gradient(self, model: nn.Module, x: Tensor, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        if not self._constrained:
            return super().objective_gradient(model, x, x0, t)
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xr)
            loss = F.cross_entropy(logits, t, reduction="sum")
            s = self.statistic(xr, logits)
            loss = loss + self.barrier_weight * self._barrier(s).sum()
            (grad,) = torch.autograd.grad(loss, xr)
        grad = grad.detach()
        return logits.detach(), (grad + (2 * self.l2_reg) * (x - x0) if self.l2_reg else grad)

    def descend(self, model: nn.Module, x: Tensor, grad: Tensor) -> Tensor:
        if self.step_transform is not None:
            grad = self.step_transform(grad)
        if not self._constrained:
            return super().descend(model, x, grad)
        lo, hi = self.bounds
        new = x.clone()
        pending = torch.arange(x.shape[0], device=x.device)
        step = self.step_size
        for _ in range(self.max_backtracks + 1):
            prop = (x[pending] - step * grad[pending]).clamp(lo, hi)
            ok = self.inside(self._values(model, prop))
            new[pending[ok]] = prop[ok]
            pending = pending[~ok]
            if pending.numel() == 0:
                break
            step = step / 2
        return new  # samples still pending make no move this step

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: Any) -> tuple[Tensor, dict[str, Tensor]]:
        target = self._targets(model, x, y, targeted, generator)
        started = self.inside(self._values(model, x))
        out = x.clone()
        steps = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        if bool(started.any()):
            sub, extras = super()._run(model, x[started], target[started], eps, True, None)
            out[started] = sub
            steps[started] = extras["steps"]
        return out, {"target": target, "steps": steps, "started_inside": started}

    def run(self, model: nn.Module, x: Tensor, y: Tensor | None = None, *, targeted: bool = False,
            generator: torch.Generator | None = None, eps: float | Tensor | None = None) -> AttackResult:
        res = super().run(model, x, y, targeted=targeted, generator=generator, eps=eps)
        s = self._values(model, res.x_adv, res.logits_adv)
        in_band = self.inside(s)
        return replace(res, success=res.success & in_band,
                       extras={**res.extras, "statistic": s, "in_band": in_band})
