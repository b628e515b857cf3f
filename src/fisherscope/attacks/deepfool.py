"""DeepFool (Moosavi-Dezfooli et al. 2016), L2 and L∞, batched with per-sample early stopping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._batching import per_sample
from .._validation import NON_NEGATIVE, check_params, integer
from .base import Attack, Norm

__all__ = ["DeepFool", "DeepFoolLinf"]


def _candidate_classes(logits: Tensor, y: Tensor, candidates: int) -> Tensor:
    """(N, C): y first, then the C − 1 other classes with the largest logits at x0 (descending)."""
    others = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), -torch.inf)
    top = others.topk(candidates - 1, dim=1).indices
    return torch.cat([y[:, None], top], 1)


def _difference_jacobian(model: nn.Module, x: Tensor, classes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, f_k = Z_{c_k} − Z_{c_0} (n, C−1) and their input gradients w_k (n, C−1, *S).

    One forward pass; one batched backward per candidate class on the retained graph
    (on CPU for MNIST-size nets this was 1.0–1.9× faster than one vmapped call with
    ``is_grads_batched=True``). Gradients are taken w.r.t. the input only.
    """
    xr = x.detach().requires_grad_(True)
    c = classes.shape[1]
    with torch.enable_grad():
        logits = model(xr)
        z = logits.gather(1, classes)
        f = z[:, 1:] - z[:, :1]
        grads = [torch.autograd.grad(f[:, k].sum(), xr, retain_graph=k < c - 2)[0] for k in range(c - 1)]
    return logits.detach(), f.detach(), torch.stack(grads, 1)


@dataclass(frozen=True, kw_only=True)
class DeepFool(Attack):
    """DeepFool, L2 (Moosavi-Dezfooli, Fawzi, Frossard 2016, Algorithm 2), batched.

    At the current point x_i, with c_0 = y (the label; DeepFool's k̂(x0) when the
    sample is correctly classified) and c_1 … c_{C−1} the other ``candidates`` − 1
    classes with the largest logits at x0 (fixed for the run, as in foolbox),
    f'_k = Z_{c_k}(x_i) − Z_{c_0}(x_i) and w'_k = ∇x f'_k(x_i). The linearised closest
    boundary is l̂ = argmin_k |f'_k| / ‖w'_k‖₂ and the step is
    r_i = (|f'_l̂| / ‖w'_l̂‖₂ + m) · w'_l̂ / ‖w'_l̂‖₂, m = ``step_margin``. The iterate is::

        x_{i+1} = clip(x0 + (1 + overshoot) · Σ_{j ≤ i} r_j)

    (the overshoot multiplies the *total* perturbation, as in the authors' code and in
    foolbox; torchattacks applies it to each step instead; no in-place aliasing, cf. ART
    #219). A sample stops as soon as it is misclassified (it then leaves the active
    batch) or after ``steps`` steps; a sample whose gradients w'_k are all zero cannot
    move and stops too.

    ``step_margin``: with m = 0 the step is the paper's, r_i = |f'_l̂| / ‖w'_l̂‖₂² · w'_l̂,
    and a linear model is solved exactly in one step. With clipping, however, the
    overshoot is absorbed by the pixels that cannot move (MNIST's saturated 0s): the
    iterates then approach the boundary geometrically and "cross" it only at rounding
    level (measured: 16% of a trained digits model's samples ended on an exact logit
    tie, i.e. not adversarial when re-evaluated in another batch). A margin of 1e-4
    (foolbox adds the same 1e-4 "for numerical stability") makes them cross. The other
    difference from foolbox's ``L2DeepFoolAttack``: c_0 is the label y, not the
    prediction (the same on correctly classified samples; misclassified samples are
    returned unchanged).

    Parameters
    ----------
    steps : int
        Maximum number of linearisation steps (default 50).
    candidates : int or None
        Number of classes considered, the label included (default 10, like foolbox;
        ``None`` = all classes). At least 2.
    overshoot : float
        η ≥ 0 (default 0.02).
    step_margin : float
        m ≥ 0 added to each step's length, in the units of ``norm`` (default 1e-4).

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x. ``run`` extras:
    ``iterations`` (N,) int64, the number of steps taken by each sample (0 when it
    was already misclassified).

    References
    ----------
    Moosavi-Dezfooli, S.-M., Fawzi, A., Frossard, P. "DeepFool: a simple and accurate
    method to fool deep neural networks." CVPR 2016, arXiv:1511.04599.

    Examples
    --------
    >>> res = DeepFool(steps=50, overshoot=0.02).run(model, x, y)
    >>> bool((res.extras["iterations"] <= 50).all()), res.norms["l2"].shape == y.shape
    (True, True)
    """

    steps: int = 50
    candidates: int | None = 10
    overshoot: float = 0.02
    step_margin: float = 1e-4
    norms: ClassVar[tuple[Norm, ...]] = ("l2",)
    budget = "none"
    supports_targeted = False
    standard = {"steps": 20}
    standard_description = "minimal L2, 20 steps, overshoot 0.02"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_params(type(self).__name__, self, {
            "candidates": integer(ge=2).or_none("all classes"),
            "overshoot": NON_NEGATIVE,
            "step_margin": NON_NEGATIVE,
        })

    def _step(self, f: Tensor, w: Tensor) -> Tensor:
        """The linearised step (n, *S) from f (n, C−1) and w (n, C−1, *S)."""
        wn = w.flatten(2).norm(dim=2)
        dist = f.abs() / wn
        best = dist.nan_to_num(nan=torch.inf).argmin(1)
        rows = torch.arange(f.shape[0], device=f.device)
        fb, wb, nb = f[rows, best], w[rows, best], wn[rows, best]
        length = fb.abs() / nb + self.step_margin
        scale = torch.where(nb > 0, length / nb, torch.zeros_like(nb))
        return per_sample(scale, wb) * wb

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: Any) -> tuple[Tensor, dict[str, Tensor]]:
        n = x.shape[0]
        with torch.no_grad():
            logits0 = model(x)
        k = logits0.shape[1]
        if k < 2:
            raise ValueError(f"{type(self).__name__} needs a model with at least 2 classes; got {k} logits.")
        classes = _candidate_classes(logits0, y, k if self.candidates is None else min(self.candidates, k))
        lo, hi = self.bounds
        r_tot = torch.zeros_like(x)
        x_adv = x.clone()
        iterations = torch.zeros(n, dtype=torch.int64, device=x.device)
        active = logits0.argmax(1) == y
        for _ in range(self.steps):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            logits, f, w = _difference_jacobian(model, x_adv[idx], classes[idx])
            r = self._step(f, w)
            # misclassified samples stop; so do samples that cannot move (zero step)
            moving = (logits.argmax(1) == y[idx]) & (r.flatten(1).abs().amax(1) > 0)
            active[idx[~moving]] = False
            idx, r = idx[moving], r[moving]
            if idx.numel() == 0:
                break
            r_tot[idx] = r_tot[idx] + r
            x_adv[idx] = (x[idx] + (1 + self.overshoot) * r_tot[idx]).clamp(lo, hi)
            iterations[idx] += 1
        return x_adv, {"iterations": iterations}


@dataclass(frozen=True, kw_only=True)
class DeepFoolLinf(DeepFool):
    """DeepFool, L∞: the ℓp generalisation of Moosavi-Dezfooli et al. (§3.2) with p = ∞.

    Same as :class:`DeepFool` with l̂ = argmin_k |f'_k| / ‖w'_k‖₁ and
    r_i = (|f'_l̂| / ‖w'_l̂‖₁ + m) · sign(w'_l̂) (foolbox's ``LinfDeepFoolAttack``; m is
    ``step_margin``, an L∞ length here). No budget: ``norm`` only says which norm is
    minimised.

    Examples
    --------
    >>> x_adv = DeepFoolLinf(steps=50)(model, x, y)
    """

    norms = ("linf",)
    standard = {"steps": 10}
    standard_description = "minimal L∞, 10 steps, overshoot 0.02"

    def _step(self, f: Tensor, w: Tensor) -> Tensor:
        wn = w.flatten(2).abs().sum(2)
        dist = f.abs() / wn
        best = dist.nan_to_num(nan=torch.inf).argmin(1)
        rows = torch.arange(f.shape[0], device=f.device)
        fb, wb, nb = f[rows, best], w[rows, best], wn[rows, best]
        scale = torch.where(nb > 0, fb.abs() / nb + self.step_margin, torch.zeros_like(nb))
        return per_sample(scale, wb) * wb.sign()
