"""The Jacobian-based saliency map attack (JSMA) of Papernot et al. 2016, L0, batched."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .._batching import chunks
from .._validation import FINITE, check_params, one_of, real
from .base import Attack
from .gradient import choose_targets

__all__ = ["JSMA"]

#: elements of one (chunk, D, D) pair tensor: chunks of samples keep the pair search's
#: memory at a few tens of MB (6 MNIST images of D = 784 per chunk)
_PAIR_CHUNK_ELEMENTS = 2**22


def _target_and_sum_gradients(model: nn.Module, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, ∇x Z_t and ∇x Σ_j Z_j (each (n, D)): two backward passes on one graph."""
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xr)
        (g_t,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), xr, retain_graph=True)
        (g_all,) = torch.autograd.grad(logits.sum(), xr)
    return logits.detach(), g_t.flatten(1), g_all.flatten(1)


def _best_pairs(alpha: Tensor, beta: Tensor, domain: Tensor, sign: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample, the pair p ≠ q in the domain maximising the saliency map (Papernot eq. 10).

    With A = α_p + α_q and B = β_p + β_q: pairs with sign·A > 0 and sign·B < 0 qualify
    and the score is A · |B| (θ > 0) or |A| · B (θ < 0), i.e. −A·B in both cases.
    Returns (p, q, found) with found False where no pair qualifies. Chunked over samples
    so that no more than ``_PAIR_CHUNK_ELEMENTS`` pair scores exist at once.
    """
    n, d = alpha.shape
    per = max(1, _PAIR_CHUNK_ELEMENTS // (d * d))
    offdiag = ~torch.eye(d, dtype=torch.bool, device=alpha.device)
    best_idx, best_val = [], []
    for sl in chunks(n, per):
        a, b, dm = alpha[sl], beta[sl], domain[sl]
        pair_a = a[:, :, None] + a[:, None, :]
        pair_b = b[:, :, None] + b[:, None, :]
        valid = (sign * pair_a > 0) & (sign * pair_b < 0) & (dm[:, :, None] & dm[:, None, :]) & offdiag
        score = pair_a.mul_(pair_b).neg_().masked_fill_(~valid, -torch.inf)
        val, idx = score.flatten(1).max(1)
        best_idx.append(idx)
        best_val.append(val)
    idx, val = torch.cat(best_idx), torch.cat(best_val)
    return idx // d, idx % d, val > -torch.inf


@dataclass(frozen=True, kw_only=True)
class JSMA(Attack):
    """Jacobian-based saliency map attack, L0 (Papernot et al. 2016, Algorithms 2–3), batched.

    Targeted by nature. At each iteration, with Z the logits and t the target,
    α = ∇x Z_t and β = Σ_{j≠t} ∇x Z_j; over pairs of pixels p ≠ q in the search domain
    the pair maximising the saliency map (α_p + α_q) · |β_p + β_q| subject to
    α_p + α_q > 0 and β_p + β_q < 0 (θ > 0; for θ < 0: |α_p + α_q| · (β_p + β_q) with the
    signs reversed) is changed by θ: x_p ← clip(x_p + θ). The search domain is the set of
    pixels that can still move in the direction of θ (below ``hi`` for θ > 0, above
    ``lo`` for θ < 0): it shrinks as pixels saturate; with the default |θ| = hi − lo
    a pixel saturates when first chosen. A sample stops when it succeeds, when one more
    pair could take it past ⌊γ·D⌋ changed pixels, or when no pair qualifies.
    Derivatives are those of the logits (as in cleverhans and torchattacks; Papernot's
    paper differentiates the network output F), from two backward passes per iteration
    (∇Z_t and ∇Σ_j Z_j), batched over the still-active samples.

    Untargeted mode (``targeted=False``, y the true label): the saliency map aims at a
    per-sample target t chosen by ``target`` — ``"random"``: uniformly among the wrong
    classes, drawn with ``generator`` (as ART does; drawn in batch order, so a batch and
    its samples attacked one at a time get different targets); ``"most_likely"``: the
    most likely wrong class at x (the runner-up); ``"least_likely"``: the least likely
    class — and a sample stops as soon as it is misclassified (as any class), which
    success then means. With ``targeted=True`` y *is* the target and ``target`` is
    ignored.

    Parameters
    ----------
    theta : float
        Signed change applied to a chosen pixel (default 1.0 = saturate upwards);
        non-zero.
    gamma : float
        Maximum fraction of the D input elements that may change, in (0, 1] (Papernot:
        0.145 on MNIST; default 0.1 like torchattacks).
    target : {"random", "most_likely", "least_likely"}
        How untargeted mode picks the class to steer to.

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x. ``run`` extras:
    ``target`` (N,) int64 the class steered to, ``iterations`` (N,) int64 the pairs changed.
    The pair search holds (chunk, D, D) scores: D up to a few thousand is practical.

    References
    ----------
    Papernot, N., McDaniel, P., Jha, S., Fredrikson, M., Celik, Z. B., Swami, A.
    "The limitations of deep learning in adversarial settings." IEEE EuroS&P 2016,
    arXiv:1511.07528.

    Examples
    --------
    >>> x_adv = JSMA(theta=1.0, gamma=0.145)(model, x, target, targeted=True)
    """

    theta: float = 1.0
    gamma: float = 0.1
    target: Literal["random", "most_likely", "least_likely"] = "random"
    norms = ("l0",)
    budget = "none"
    standard = {"gamma": 0.2}
    standard_description = "L0, at most 20% of the pixels"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_params(type(self).__name__, self, {
            "theta": FINITE.where(lambda t: t != 0, expected="a finite non-zero number (+ increases pixels, - decreases them)",
                                  fix="Papernot et al. use theta=1.0 (or -1.0 to decrease pixels)."),
            "gamma": real(gt=0, le=1).but(expected="a fraction of pixels in (0, 1]"),
            "target": one_of("random", "most_likely", "least_likely"),
        })

    def _targets(self, logits: Tensor, y: Tensor, targeted: bool, generator: torch.Generator | None) -> Tensor:
        if targeted:
            return y
        return choose_targets(logits, y, self.target, generator)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        n = x.shape[0]
        lo, hi = self.bounds
        theta = float(self.theta)
        sign = 1.0 if theta > 0 else -1.0
        with torch.no_grad():
            logits0 = model(x)
        if logits0.shape[1] < 2:
            raise ValueError(f"JSMA needs a model with at least 2 classes; got {logits0.shape[1]} logits.")
        target = self._targets(logits0, y, targeted, generator)
        flat = x.flatten(1).clone()
        d = flat.shape[1]
        budget = math.floor(self.gamma * d)
        changed = torch.zeros_like(flat, dtype=torch.bool)
        iterations = torch.zeros(n, dtype=torch.int64, device=x.device)
        pred0 = logits0.argmax(1)
        active = (pred0 != y) if targeted else (pred0 == y)
        while True:
            active &= changed.sum(1) + 2 <= budget
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xi = flat[idx].reshape(-1, *x.shape[1:])
            logits, g_t, g_all = _target_and_sum_gradients(model, xi, target[idx])
            pred = logits.argmax(1)
            ok = (pred == y[idx]) if targeted else (pred != y[idx])
            fi = flat[idx]
            domain = fi < hi if sign > 0 else fi > lo
            p, q, found = _best_pairs(g_t, g_all - g_t, domain, sign)
            moving = ~ok & found
            active[idx[~moving]] = False
            idx, p, q = idx[moving], p[moving], q[moving]
            if idx.numel() == 0:
                break
            for pix in (p, q):
                flat[idx, pix] = (flat[idx, pix] + theta).clamp(lo, hi)
                changed[idx, pix] = True
            iterations[idx] += 1
        return flat.reshape(x.shape), {"target": target, "iterations": iterations}
