"""Detector-aware variants of Hendrycks & Gimpel's iterative attack (2017, §3.2 end, §3.3).

Hendrycks & Gimpel test their own detectors against an attacker who knows them: the
iterative targeted search (:class:`~fisherscope.attacks.HGTargeted`) with logarithmic
barriers added to the loss, so that a detector statistic s(x) stays inside a band
(low, high) around its clean mean:

- §3.2: s = the variance of the trailing PCA-whitened coefficients
  (:class:`WhitenedVariance`), band = clean mean ± one clean standard deviation; on
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

from ..features.pca import PCAWhitening
from .base import AttackResult
from .hendrycks import HGTargeted

__all__ = ["BarrierHGTargeted", "SoftmaxKL", "WhitenedVariance", "band_around"]

Statistic = Callable[[Tensor, Tensor | None], Tensor]


class WhitenedVariance:
    """The PCA-whitening detector's score as a differentiable torch function.

    ``s(x) = var(c[start:])`` with ``c = (x − mean) U / sqrt(λ + eps)`` the whitened
    coefficients of the flattened input (leading component first) and the population
    variance (ddof 0) — the same number as
    :class:`~fisherscope.detectors.PCAWhiteningDetector`'s ``decision_function``,
    computed in float64 from the fitted whitening; gradients flow back to ``x`` in its
    own dtype.

    Parameters
    ----------
    whitening : PCAWhitening
        From :func:`~fisherscope.features.fit_pca_whitening` (clean training images).
    start : int
        First trailing coefficient (Hendrycks & Gimpel: 700 on MNIST). At least two
        coefficients must remain.

    Shapes
    ------
    x: (N, C, H, W) or (N, D) with C·H·W = D -> (N,) float64.

    Examples
    --------
    >>> from fisherscope.features import fit_pca_whitening
    >>> w = fit_pca_whitening(torch.rand(200, 6, dtype=torch.float64))
    >>> WhitenedVariance(w, start=3)(torch.rand(5, 6)).shape
    torch.Size([5])
    """

    needs_logits: ClassVar[bool] = False

    def __init__(self, whitening: PCAWhitening, start: int) -> None:
        if not isinstance(whitening, PCAWhitening):
            raise TypeError(
                "whitening must be a PCAWhitening from fisherscope.features.fit_pca_whitening; "
                f"got {type(whitening).__name__}."
            )
        d = whitening.n_features
        if isinstance(start, bool) or not isinstance(start, int | np.integer) or not 0 <= start <= d - 2:
            raise ValueError(
                f"start must be an integer index in [0, {d - 2}] (at least two trailing "
                f"coefficients of {d}); got {start!r}. Hendrycks & Gimpel use 700 on MNIST."
            )
        self.start = int(start)
        self.eps = whitening.eps
        self.n_features = d
        self._mean = torch.as_tensor(whitening.mean, dtype=torch.float64)
        self._window = torch.as_tensor(whitening.components[:, self.start :], dtype=torch.float64)
        self._proj = self._window * torch.as_tensor(whitening.scale[self.start :], dtype=torch.float64)

    @classmethod
    def from_detector(cls, detector: Any) -> WhitenedVariance:
        """The statistic of a fitted :class:`~fisherscope.detectors.PCAWhiteningDetector`."""
        if not (hasattr(detector, "whitening_") and hasattr(detector, "start_")):
            raise ValueError(
                f"{type(detector).__name__} is not a fitted PCAWhiteningDetector (no whitening_ / "
                "start_); call detector.fit(pixels(x_train)) first."
            )
        return cls(detector.whitening_, detector.start_)

    def __call__(self, x: Tensor, logits: Tensor | None = None) -> Tensor:  # noqa: ARG002
        flat = x.flatten(1)
        if flat.shape[1] != self.n_features:
            raise ValueError(
                f"this statistic's whitening was fitted on inputs with {self.n_features} values per "
                f"sample; got x of shape {tuple(x.shape)}."
            )
        mean, proj = self._mean.to(x.device), self._proj.to(x.device)
        c = (flat.double() - mean) @ proj
        return c.var(dim=1, unbiased=False)

    def project_off_window(self, v: Tensor) -> Tensor:
        """``v`` minus its component along the window's principal directions (per sample).

        A step along the result leaves every trailing whitened coefficient, hence the
        statistic, unchanged (before clipping to the box). Pass it as
        ``BarrierHGTargeted(step_transform=...)``. Without it the barrier has to hold
        the window by itself: a change of size d along a null-space direction of the
        training covariance raises the statistic by about d² / (n_window · eps), so with
        eps = 1e-11 any fixed-size step that touches those directions leaves the band,
        and backtracking shrinks the step until the search barely moves.

        Shapes
        ------
        v: (N, C, H, W) or (N, D) -> same shape and dtype.
        """
        flat = v.flatten(1).double()
        u = self._window.to(v.device)
        return (flat - (flat @ u) @ u.T).to(v.dtype).reshape(v.shape)

    def __repr__(self) -> str:
        return f"WhitenedVariance(start={self.start}, eps={self.eps:g}, n_features={self.n_features})"


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
    if isinstance(radius, bool) or not isinstance(radius, int | float) or not radius > 0:
        raise ValueError(f"radius must be a number > 0 (inf for no constraint); got {radius!r}.")
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
        :class:`WhitenedVariance`, :class:`SoftmaxKL`, or any function with an optional
        class attribute ``needs_logits`` (default True: the logits are computed for it).
    low, high : float
        The open band (use :meth:`around` for mean ± r·std of clean values). One may be
        infinite; both infinite is plain ``HGTargeted`` (same iterates, bit for bit).
    barrier_weight : float
        w, the weight of the barrier terms (paper: 1).
    step_transform : callable, optional
        Applied to the objective's gradient before each step (``None``: the paper's plain
        descent). E.g. :meth:`WhitenedVariance.project_off_window`, a stronger attacker
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
        if self.step_transform is not None and not callable(self.step_transform):
            raise TypeError(
                "step_transform must be None or callable as step_transform(grad) -> tensor shaped like grad; "
                f"got {type(self.step_transform).__name__}."
            )
        if not callable(self.statistic):
            raise TypeError(
                "statistic must be callable as statistic(x, logits) -> (N,) tensor, e.g. "
                f"WhitenedVariance(whitening, 700) or SoftmaxKL(); got {type(self.statistic).__name__}."
            )
        for name in ("low", "high"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
                raise ValueError(f"The '{name}' parameter of BarrierHGTargeted must be a number; got {v!r}.")
        if not self.low < self.high:
            raise ValueError(
                f"BarrierHGTargeted needs low < high; got low={self.low!r}, high={self.high!r}. "
                "Build the band with BarrierHGTargeted.around(statistic, clean_values, radius)."
            )
        w = self.barrier_weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 < w < math.inf:
            raise ValueError(f"The 'barrier_weight' parameter of BarrierHGTargeted must be > 0 and finite; got {w!r}.")
        m = self.max_backtracks
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ValueError(f"The 'max_backtracks' parameter of BarrierHGTargeted must be an integer >= 0; got {m!r}.")

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
    def _objective_gradient(self, model: nn.Module, x: Tensor, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        if not self._constrained:
            return super()._objective_gradient(model, x, x0, t)
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xr)
            loss = F.cross_entropy(logits, t, reduction="sum")
            s = self.statistic(xr, logits)
            loss = loss + self.barrier_weight * self._barrier(s).sum()
            (grad,) = torch.autograd.grad(loss, xr)
        grad = grad.detach()
        return logits.detach(), (grad + (2 * self.l2_reg) * (x - x0) if self.l2_reg else grad)

    def _descend(self, model: nn.Module, x: Tensor, grad: Tensor) -> Tensor:
        if self.step_transform is not None:
            grad = self.step_transform(grad)
        if not self._constrained:
            return super()._descend(model, x, grad)
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
