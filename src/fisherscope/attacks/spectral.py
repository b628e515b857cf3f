"""The One-Step Spectral Attack (OSSA) of Zhao et al. 2019 and its iterative variant.

The perturbation follows the top eigenvector v₁ of the input-space Fisher matrix G_x:
the direction along which p(y|x) changes fastest in KL divergence.

Budget convention: ``eps`` is the **L2 norm** of η = s · eps · v₁ (‖v₁‖ = 1). Zhao's
eq. (2) writes the constraint as ηᵀη = ε, i.e. their ε is the *squared* norm; all their
reported perturbation sizes (Table 2, Figures 2–3) are L2 norms, which is what ``eps``
means here.

Sign: an eigenvector is a line, not a direction. For each sample we evaluate the real
candidates clip(x + eps·v₁) and clip(x − eps·v₁) and keep the one with the larger
cross-entropy of the true label (smaller CE of the target when targeted), ties going
to +v₁. Zhao's eq. (5) requires the loss to increase: where neither candidate raises it
(it can happen with clipping), the sample is left unperturbed and ``extras["sign"]`` is 0. Algorithm 1 (lines 8–10) tests the unit vector x ± v₁ instead; with clipping and
a finite budget the real candidates are what matters. The L2 norm actually applied after
clipping is reported in ``AttackResult.norms["l2"]`` (and ``extras["applied_l2"]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._batching import per_sample
from .._validation import NON_NEGATIVE_INT, check_param
from ..fisher.input_space import FisherSpectrum, fisher_spectrum
from .base import Attack, OneStepAttack, project

__all__ = ["OSSA", "IterativeOSSA"]


def _choose_sign(model: nn.Module, x: Tensor, y: Tensor, v: Tensor, step: Tensor,
                 bounds: tuple[float, float], targeted: bool) -> tuple[Tensor, Tensor]:
    """Per-sample s ∈ {+1, 0, −1} and the step s·step·v.

    s maximises CE(y) (minimises CE(target) when targeted) over the real candidates
    clip(x ± step·v), ties to +1. Zhao's eq. (5) constrains the loss to increase; where
    neither candidate does that (possible with clipping or strong curvature), s = 0 and
    the sample is left where it is.
    """
    lo, hi = bounds
    d = per_sample(step, x) * v
    cand = torch.cat([(x + d).clamp(lo, hi), (x - d).clamp(lo, hi), x])
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(model(cand), torch.cat([y, y, y]), reduction="none")
    ce_plus, ce_minus, ce_0 = ce.chunk(3)
    if targeted:
        ce_plus, ce_minus, ce_0 = -ce_plus, -ce_minus, -ce_0
    plus = ce_plus >= ce_minus
    best = torch.where(plus, ce_plus, ce_minus)
    sign = torch.where(plus, 1.0, -1.0).to(x.dtype)
    sign = torch.where(best >= ce_0, sign, torch.zeros_like(sign))
    return sign, per_sample(sign, x) * d


@dataclass(frozen=True, kw_only=True)
class OSSA(OneStepAttack):
    """One-Step Spectral Attack (Zhao et al. 2019, Algorithm 1), L2.

    ``x_adv = clip(x + s · eps · v_j)`` with v_j the j-th eigenvector of G_x
    (``eigen_index=0``: the top one) and s chosen per sample on the real candidates.

    Parameters
    ----------
    eps : float
        L2 norm of the perturbation before clipping (not Zhao's squared ε; see module doc).
    eigen_index : int
        Which eigenvector, 0-based (0 = v₁). Other indices probe the "multiple
        adversarial subspaces" of Zhao §3.4.
    method, class_samples, tol, max_iter
        Passed to :func:`~fisherscope.fisher.fisher_spectrum` (default: exact). For
        ImageNet-size heads (K = 1000 at 224 × 224) the exact method refuses (its K − 1
        Jacobian rows exceed ``fisher.input_space.EXACT_JACOBIAN_BYTES``); use
        ``method="lanczos"``, whose memory does not grow with K (chunked by
        ``KRYLOV_CHUNK_BYTES``; docs/BENCHMARKS.md has ResNet-50 timings).

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x. ``run`` extras:
    ``sign`` (N,), ``eigenvalue`` (N,), ``applied_l2`` (N,).

    References
    ----------
    Zhao et al. "The Adversarial Attack and Detection under the Fisher Information
    Metric." AAAI 2019. arXiv:1810.03806.

    Examples
    --------
    >>> x_adv = OSSA(eps=2.0)(model, x, y)
    """

    eps: float
    eigen_index: int = 0
    method: str = "exact"
    class_samples: int | None = None
    tol: float = 1e-6
    max_iter: int = 100
    norms = ("l2",)
    budget = "required"
    standard = {"eps": 1.0}
    standard_description = "L2 ε = 1.0, one step along the top eigenvector of G_x"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_param(type(self).__name__, "eigen_index", self.eigen_index,
                    NON_NEGATIVE_INT.but(expected="an integer >= 0 (0 = top eigenvector)"))

    def _prepare(self, model: nn.Module, x: Tensor, y: Tensor, targeted: bool,
                 generator: torch.Generator | None) -> FisherSpectrum:
        return fisher_spectrum(model, x, k=self.eigen_index + 1, method=self.method,  # type: ignore[arg-type]
                               class_samples=self.class_samples, tol=self.tol, max_iter=self.max_iter,
                               generator=generator, bounds=self.bounds)

    def _step(self, model: nn.Module, x: Tensor, y: Tensor, state: Any, eps: Tensor,
              targeted: bool) -> tuple[Tensor, dict[str, Tensor]]:
        v = state.eigenvectors[:, self.eigen_index]
        sign, d = _choose_sign(model, x, y, v, eps, self.bounds, targeted)
        x_adv = x + d
        applied = (x_adv.clamp(*self.bounds) - x).flatten(1).norm(dim=1)
        return x_adv, {"sign": sign, "eigenvalue": state.eigenvalues[:, self.eigen_index], "applied_l2": applied}


@dataclass(frozen=True, kw_only=True)
class IterativeOSSA(Attack):
    """Iterative OSSA (Zhao §3.4, "White-box attack"): a fresh top eigenvector every step.

    Each step moves ``step_size`` (L2) along ±v₁(x_t), the sign chosen as in :class:`OSSA`,
    then clips to ``bounds``. By default there is no total budget (as in the paper, 0.05
    per step); with ``eps`` the iterate is also projected onto the L2 ball of radius
    ``eps`` around x.

    Parameters
    ----------
    step_size : float
        L2 length of each step (Zhao: 0.05 on MNIST).
    steps : int
        Number of steps.
    eps : float, optional
        Total L2 budget; ``None`` (default) = no projection.
    eigen_index : int
        Eigenvector used at every step (0 = top).
    method, class_samples, tol, max_iter
        Passed to :func:`~fisherscope.fisher.fisher_spectrum` at every step, as for
        :class:`OSSA` (``method="lanczos"`` for ImageNet-size heads).

    Shapes
    ------
    x: (N, C, H, W) or (N, D) -> x_adv shaped like x. ``run`` extras:
    ``success_per_step`` (N, steps) bool (prediction at each iterate), ``eigenvalue``
    (N, steps) the eigenvalue used at each step.
    """

    step_size: float = 0.05
    steps: int = 10
    eps: float | None = None
    eigen_index: int = 0
    method: str = "exact"
    class_samples: int | None = None
    tol: float = 1e-6
    max_iter: int = 100
    norms = ("l2",)
    budget = "optional"
    standard = {"eps": 1.0, "step_size": 0.25, "steps": 4}
    standard_description = "L2 ε = 1.0, 4 steps of 0.25"

    def _run(self, model, x, y, eps, targeted, generator):
        xt = x
        step = torch.full((x.shape[0],), float(self.step_size), dtype=x.dtype, device=x.device)
        success, eigvals = [], []
        for _ in range(self.steps):
            spec = fisher_spectrum(model, xt, k=self.eigen_index + 1, method=self.method,
                                   class_samples=self.class_samples, tol=self.tol, max_iter=self.max_iter,
                                   generator=generator, bounds=self.bounds)
            v = spec.eigenvectors[:, self.eigen_index]
            _, d = _choose_sign(model, xt, y, v, step, self.bounds, targeted)
            xt = (xt + d).clamp(*self.bounds)
            if eps is not None:
                xt = project(x, xt, eps, "l2").clamp(*self.bounds)
            with torch.no_grad():
                pred = model(xt).argmax(1)
            success.append(pred == y if targeted else pred != y)
            eigvals.append(spec.eigenvalues[:, self.eigen_index])
        return xt, {"success_per_step": torch.stack(success, 1), "eigenvalue": torch.stack(eigvals, 1)}
