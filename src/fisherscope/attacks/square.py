"""Square attack (Andriushchenko, Croce, Flammarion, Hein 2020): score-based random search.

No gradients: every iteration proposes, for each sample still correctly classified, a
change of the current perturbation δ on one random square window of side s (the same
window across channels), queries the model once at the proposal and keeps it when the
loss went down (or the sample became misclassified). With the margin loss

    L(x) = z_y − max_{i≠y} z_i          (untargeted; targeted: max_{i≠t} z_i − z_t)

a sample counts as fooled as soon as its prediction changes (``argmax z ≠ y``, or
``= t`` targeted); it is then never queried again. ``loss="ce"`` minimises −CE(y)
(untargeted) or CE(t) (targeted) instead, the success test is the same.

The size of the window follows the paper's schedule of the fraction p of pixels
changed: ``p = p_init`` halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000,
8000 of a 10 000-query budget, the iteration index rescaled to ``n_queries`` (i.e.
iteration i uses ``⌊10000 · i / n_queries⌋``), and s = round(√(p · H · W)).

L∞ (Algorithm 2 of the paper). Start: vertical stripes, δ = ±ε per (channel, column),
signs uniform. Update: inside the window δ is set to ±ε per channel (signs uniform), then
``x + δ`` is clipped to ``bounds``.

L2 (Algorithm 3). Start: a grid of ⌊H/s₀⌋ × ⌊W/s₀⌋ tiles of side s₀ = ⌊min(H, W)/5⌋ (centred),
each carrying the paper's pseudo-Gaussian window η (two stacked rectangles of opposite
sign whose entries decay as Σ_k 1/(k + 1)² away from the centre, randomly transposed)
with a random sign per channel; rescaled to ‖δ‖₂ = ε. Update (s odd, ≥ 3): two windows
W₁, W₂; the perturbation on W₂ is removed and its mass moved to W₁, where the new
content per channel is η · (±1) + δ_{W₁} / ‖δ_{W₁}‖, rescaled so that, per channel,
its norm is √(‖δ_{W₁ ∪ W₂}‖² + (ε² − ‖δ‖²)₊ / C); the whole δ is then rescaled to
‖δ‖₂ = ε and ``x + δ`` clipped to ``bounds`` (so ‖δ‖₂ ≤ ε after clipping).

Batching: the window positions (and signs, transpositions) are drawn per sample and the
window is written with one vectorised gather / scatter (advanced indexing with per-sample
row and column indices) — no Python loop over samples. Only the side s is shared by the
batch at each iteration, as it depends on the iteration alone. Every iteration costs one
forward pass of the samples not fooled yet; the start costs one forward of the batch.

Facts taken from the authors' code and torchattacks 3.5.1 (read, not copied), and where
this implementation differs:

- window positions are uniform over all placements that fit, ``0 … H − s`` inclusive
  (the reference code draws from ``0 … H − s − 1``, so it never touches the last row or
  column with a window of side s, and with s = H − 1 always places it at 0);
- one random transposition of η per sample (the reference: one for the whole batch), and
  the reference's extra resampling when an L∞ proposal equals the current point is not
  done (such a query is spent without change, as in AutoAttack's version);
- success is a changed prediction (argmax), so a tie between z_y and another logit does
  not count as fooled (the reference: margin ≤ 0).

References
----------
Andriushchenko, Croce, Flammarion, Hein. "Square Attack: a query-efficient black-box
adversarial attack via random search." ECCV 2020, arXiv:1912.00049.
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._random import rand, randint
from .._validation import POSITIVE_INT, check_params, one_of, real
from .base import Attack

__all__ = ["Square", "square_p_schedule", "pseudo_gaussian_window"]

#: iterations (of a 10 000-query run) after which p is halved (the paper, §3 / App. A)
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p_schedule(iteration: int, n_queries: int, p_init: float) -> float:
    """Fraction of pixels p changed at ``iteration`` (0-based) of an ``n_queries`` run.

    ``p_init`` halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of
    10 000, the iteration index rescaled to ``n_queries``: ``i' = ⌊10000 i / n_queries⌋``,
    ``p = p_init / 2^k`` with k the number of halving points strictly below ``i'``.
    """
    it = int(iteration / n_queries * 10000)
    return p_init / 2 ** bisect.bisect_left(_P_HALVINGS, it)


def _rectangle(h: int, w: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Entries Σ_{k=d}^{m−1} 1/(k + 1)², d the Chebyshev distance to the centre (h // 2, w // 2)."""
    m = max(h // 2 + 1, w // 2 + 1)
    weights = 1.0 / torch.arange(1, m + 1, dtype=dtype, device=device) ** 2
    tails = weights.flip(0).cumsum(0).flip(0)  # tails[d] = Σ_{k ≥ d} weights[k]
    di = (torch.arange(h, device=device) - h // 2).abs()
    dj = (torch.arange(w, device=device) - w // 2).abs()
    return tails[torch.maximum(di[:, None], dj[None, :])]


def pseudo_gaussian_window(s: int, dtype: torch.dtype = torch.float32,
                           device: torch.device | str = "cpu") -> Tensor:
    """The paper's L2 window η of side ``s``: two stacked rectangles of opposite sign, ‖η‖₂ = 1.

    The top ``s // 2`` rows hold the decaying rectangle of shape (s // 2, s), the other
    ``s − s // 2`` rows minus the one of shape (s − s // 2, s); each rectangle and then
    the window are normalised to unit L2 norm (Andriushchenko et al. 2020, §3.2).
    """
    device = torch.device(device)
    top, bottom = s // 2, s - s // 2
    parts = []
    if top > 0:
        r = _rectangle(top, s, dtype, device)
        parts.append(r / r.norm())
    r = _rectangle(bottom, s, dtype, device)
    parts.append(-r / r.norm())
    eta = torch.cat(parts, 0)
    return eta / eta.norm()


@functools.lru_cache(maxsize=64)
def _window(s: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """:func:`pseudo_gaussian_window`, computed once per (side, dtype, device); read-only."""
    return pseudo_gaussian_window(s, dtype, device)


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


@dataclass(frozen=True, kw_only=True)
class Square(Attack):
    """Square attack (module docstring): score-based, no gradients, L∞ or L2.

    Parameters
    ----------
    eps : float
        Budget in the units of ``norm`` (AutoAttack: 0.3 L∞ on MNIST, 8/255 L∞ and 0.5 L2
        on CIFAR-10).
    n_queries : int
        Iterations (model queries per sample, besides the start) per restart
        (AutoAttack: 5000; the paper: 10 000).
    norm : {"linf", "l2"}
        Threat model (an instance field).
    p_init : float
        Initial fraction of pixels changed per query, in (0, 1]. AutoAttack uses 0.8; the
        paper tunes 0.05 (L∞) and 0.1 (L2) for ImageNet / CIFAR-10 models at 10 000 queries.
    loss : {"margin", "ce"}
        Objective minimised (module docstring).
    restarts : int
        Independent runs from fresh random starts, each on the samples not fooled yet.

    Shapes
    ------
    x: (N, C, H, W) images (the windows need two spatial axes); y: (N,) -> x_adv
    shaped like x. ``run`` extras: ``queries`` (N,) model queries spent on each sample
    (start included, over all restarts), ``loss`` (N,) the lowest loss reached (margin:
    negative exactly when fooled).

    Notes
    -----
    Randomness (starts, windows, signs) comes from ``generator`` alone; the global RNG
    is not touched when one is given. Samples fooled return the first fooling point;
    the others the point of lowest loss over all restarts.

    References
    ----------
    Andriushchenko, Croce, Flammarion, Hein, ECCV 2020, arXiv:1912.00049.

    Examples
    --------
    >>> atk = Square(eps=0.3, n_queries=5000)  # AutoAttack's Square on MNIST, L∞
    >>> atk.norm, atk.loss, atk.p_init, atk.gradient_free
    ('linf', 'margin', 0.8, True)
    """

    eps: float
    n_queries: int = 5000
    norm: Literal["linf", "l2"] = "linf"  # type: ignore[misc]  # an instance field here
    p_init: float = 0.8
    loss: Literal["margin", "ce"] = "margin"
    restarts: int = 1

    #: needs no gradient of the model (read by the gradient-masking checks)
    gradient_free: ClassVar[bool] = True
    norms = ("linf", "l2")
    budget = "required"
    standard = {"eps": 0.1, "n_queries": 300}
    standard_description = "L∞ ε = 0.1, 300 score queries, no gradients"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_params(type(self).__name__, self, {
            "norm": one_of("linf", "l2"), "loss": one_of("margin", "ce"), "n_queries": POSITIVE_INT,
            "restarts": POSITIVE_INT, "p_init": real(gt=0, le=1),
        })

    # ------------------------------------------------------------- pieces
    def _margin_loss(self, logits: Tensor, label: Tensor, targeted: bool) -> tuple[Tensor, Tensor]:
        """(fooled (N,), loss (N,)) at ``logits``; ``label`` is y, or the target when targeted."""
        z_label = logits.gather(1, label[:, None]).squeeze(1)
        z_other = logits.scatter(1, label[:, None], -math.inf).amax(1)
        pred = logits.argmax(1)
        fooled = pred == label if targeted else pred != label
        if self.loss == "margin":
            loss = z_other - z_label if targeted else z_label - z_other
        else:
            ce = F.cross_entropy(logits, label, reduction="none")
            loss = ce if targeted else -ce
        return fooled, loss

    def _signs(self, shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.where(rand(shape, generator=generator, like=like) < 0.5, -1.0, 1.0).to(like.dtype)

    def _side(self, iteration: int, h: int, w: int) -> int:
        p = square_p_schedule(iteration, self.n_queries, self.p_init)
        s = int(round(math.sqrt(p * h * w)))
        if self.norm == "linf":
            return min(max(s, 1), h, w)
        s = max(s, 3)
        if s % 2 == 0:
            s += 1
        return min(s, h, w)

    def _corners(self, n: int, s: int, h: int, w: int, like: Tensor, generator: torch.Generator | None
                 ) -> tuple[Tensor, Tensor]:
        """Top-left corner (row, column) of one random s × s window per sample: two (n,) tensors."""
        return (randint(0, h - s + 1, (n,), generator=generator, like=like),
                randint(0, w - s + 1, (n,), generator=generator, like=like))

    def _window_index(self, n: int, c: int, s: int, h: int, w: int, like: Tensor,
                      generator: torch.Generator | None) -> Tensor:
        """Flat indices into a contiguous (n, c, h, w) tensor of one random s × s window per sample: (n, c, s, s)."""
        return self._flat_index(*self._corners(n, s, h, w, like, generator), c, s, h, w)

    @staticmethod
    def _flat_index(r0: Tensor, c0: Tensor, c: int, s: int, h: int, w: int) -> Tensor:
        ar = torch.arange(s, device=r0.device)
        n = r0.shape[0]
        base = (torch.arange(n, device=r0.device) * (c * h * w))[:, None, None, None] + (
            torch.arange(c, device=r0.device) * (h * w))[None, :, None, None]
        return base + ((r0[:, None] + ar) * w)[:, None, :, None] + (c0[:, None] + ar)[:, None, None, :]

    def _eta(self, n: int, s: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """η of side s for n samples, each transposed with probability 1/2: (n, 1, s, s)."""
        eta = _window(s, like.dtype, like.device)
        flip = rand((n,), generator=generator, like=like) < 0.5
        return torch.where(flip[:, None, None, None], eta.t(), eta)

    def _l2_normalise(self, delta: Tensor, eps: Tensor) -> Tensor:
        norms = delta.flatten(1).norm(dim=1)
        return delta * _bcast(eps / (norms + 1e-12), delta)

    # -------------------------------------------------------------- starts
    def _start_linf(self, x: Tensor, eps: Tensor, generator: torch.Generator | None) -> Tensor:
        n, c, _, w = x.shape
        stripes = self._signs((n, c, 1, w), x, generator)
        return (x + _bcast(eps, x) * stripes).clamp(*self.bounds)

    def _start_l2(self, x: Tensor, eps: Tensor, generator: torch.Generator | None) -> Tensor:
        n, c, h, w = x.shape
        s = max(min(h, w) // 5, 1)
        th, tw = h // s, w // s
        eta = _window(s, x.dtype, x.device)
        flip = rand((n, 1, th, tw), generator=generator, like=x) < 0.5
        tiles = torch.where(flip[..., None, None], eta.t(), eta)  # (n, 1, th, tw, s, s)
        tiles = tiles * self._signs((n, c, th, tw), x, generator)[..., None, None]
        block = tiles.permute(0, 1, 2, 4, 3, 5).reshape(n, c, th * s, tw * s)
        delta = torch.zeros_like(x)
        oh, ow = (h - th * s) // 2, (w - tw * s) // 2
        delta[:, :, oh:oh + th * s, ow:ow + tw * s] = block
        return (x + self._l2_normalise(delta, eps)).clamp(*self.bounds)

    # ------------------------------------------------------------- proposals
    def _propose_linf(self, x: Tensor, x_best: Tensor, eps: Tensor, s: int,
                      generator: torch.Generator | None) -> Tensor:
        n, c, h, w = x.shape
        idx = self._window_index(n, c, s, h, w, x, generator)
        delta = (x_best - x).contiguous()  # the flat indices address the (n, c, h, w) layout
        delta.view(-1)[idx] = (_bcast(eps, x) * self._signs((n, c, 1, 1), x, generator)).expand(n, c, s, s)
        return (x + delta).clamp(*self.bounds)

    def _propose_l2(self, x: Tensor, x_best: Tensor, eps: Tensor, s: int,
                    generator: torch.Generator | None) -> Tensor:
        n, c, h, w = x.shape
        r1, c1 = self._corners(n, s, h, w, x, generator)
        r2, c2 = self._corners(n, s, h, w, x, generator)
        idx1, idx2 = self._flat_index(r1, c1, c, s, h, w), self._flat_index(r2, c2, c, s, h, w)
        delta = (x_best - x).contiguous()  # the flat indices address the (n, c, h, w) layout
        flat = delta.view(-1)
        win1, win2 = flat[idx1], flat[idx2]  # (n, c, s, s)
        norm_win1 = win1.flatten(2).norm(dim=2)[..., None, None]  # per (sample, channel)
        norm_img = delta.flatten(1).norm(dim=1)
        # ‖δ‖² on the union of the two windows: both windows' energy minus the overlap's
        ar = torch.arange(s, device=x.device)
        rows_in = ((r1[:, None] + ar) >= r2[:, None]) & ((r1[:, None] + ar) < r2[:, None] + s)  # (n, s)
        cols_in = ((c1[:, None] + ar) >= c2[:, None]) & ((c1[:, None] + ar) < c2[:, None] + s)
        overlap = (rows_in[:, None, :, None] & cols_in[:, None, None, :]).to(x.dtype)  # (n, 1, s, s)
        sq1, sq2 = win1.square(), win2.square()
        norm_both = ((sq1 + (sq2 - sq1 * overlap)).flatten(1).sum(1)).clamp_min(0).sqrt()
        new = self._eta(n, s, x, generator) * self._signs((n, c, 1, 1), x, generator)
        new = new + win1 / (norm_win1 + 1e-12)
        mass = ((eps ** 2 - norm_img ** 2).clamp_min(0) / c + norm_both ** 2).sqrt()
        new = new / (new.flatten(2).norm(dim=2)[..., None, None] + 1e-12) * _bcast(mass, new)
        flat[idx2] = 0.0
        flat[idx1] = new
        return (x + self._l2_normalise(delta, eps)).clamp(*self.bounds)

    # ---------------------------------------------------------- one run
    def _single(self, model: nn.Module, x: Tensor, label: Tensor, eps: Tensor, targeted: bool,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One run from a random start: (x_best, fooled (N,), loss (N,), queries (N,))."""
        _, _, h, w = x.shape
        if self.norm == "linf":
            x_best = self._start_linf(x, eps, generator)
        else:
            x_best = self._start_l2(x, eps, generator)
        fooled, loss_best = self._margin_loss(model(x_best), label, targeted)
        queries = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        # the samples not fooled yet, compacted: gathered again only after an iteration fooled some
        active = torch.nonzero(~fooled).flatten()
        xa, xb, la, ea, lb = x[active], x_best[active], label[active], eps[active], loss_best[active]
        done = 0  # iterations run: an active sample has made 1 + done queries
        for i in range(self.n_queries):
            if active.numel() == 0:
                break
            done = i + 1
            s = self._side(i, h, w)
            if self.norm == "linf":
                x_new = self._propose_linf(xa, xb, ea, s, generator)
            else:
                x_new = self._propose_l2(xa, xb, ea, s, generator)
            hit, loss = self._margin_loss(model(x_new), la, targeted)
            take = hit | (loss < lb)
            xb = torch.where(_bcast(take, xb), x_new, xb)
            lb = torch.where(take, loss, lb)
            if hit.any():
                x_best[active], loss_best[active] = xb, lb
                fooled[active[hit]] = True
                queries[active[hit]] = 1 + done
                keep = ~hit
                active, xa, xb, la, ea, lb = active[keep], xa[keep], xb[keep], la[keep], ea[keep], lb[keep]
        x_best[active], loss_best[active] = xb, lb
        queries[active] = 1 + done
        return x_best, fooled, loss_best, queries

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        assert eps is not None  # budgeted: the base class always passes eps
        if x.ndim != 4:
            raise ValueError(
                f"Square needs images of shape (N, C, H, W) (its windows are squares of pixels); got "
                f"shape {tuple(x.shape)}. Reshape flat inputs to (N, 1, H, W) first if they are images."
            )
        n = x.shape[0]
        out = x.clone()
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        best_loss = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        queries = torch.zeros(n, dtype=torch.long, device=x.device)
        with torch.no_grad():
            for _ in range(self.restarts):
                todo = torch.nonzero(~fooled).flatten()
                if len(todo) == 0:
                    break
                xa, ok, loss, q = self._single(model, x[todo], y[todo], eps[todo], targeted, generator)
                take = ok | (loss < best_loss[todo])
                idx = todo[take]
                out[idx], best_loss[idx] = xa[take], loss[take]
                fooled[todo[ok]] = True
                queries[todo] += q
        return out, {"queries": queries, "loss": best_loss}
