"""Auto-PGD (Croce & Hein 2020): step-size-free PGD with momentum and checkpoints.

APGD runs ``steps`` iterations of projected steepest ascent (sign steps for L∞,
g/‖g‖₂ steps for L2) with momentum α = 0.75 and a per-sample step size that starts at
η = 2ε and is halved at checkpoints w_1 = ⌊0.22 N⌋, ... (the gaps shrink by
⌊0.03 N⌋ down to ⌊0.06 N⌋; :func:`apgd_checkpoints`) whenever, since the last checkpoint,

1. the loss rose in at most ρ = 75% of the steps (fewer than, with
   ``checkpoint_rule="paper"``; see below), or
2. the step size was not reduced at the last checkpoint and the best loss has not
   improved since it,

and the iterate then restarts from the best point found so far. ``loss="ce"`` is the
cross-entropy, ``loss="dlr"`` the Difference of Logits Ratio, invariant to shifts and
scalings of the logits (so a saturated or temperature-scaled softmax cannot hide the
gradient)::

    DLR(z, y)      = −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)
    DLR_T(z, y, t) = −(z_y − z_t) / (z_π1 − (z_π3 + z_π4) / 2 + 1e-12)

with z_π1 ≥ z_π2 ≥ ... the sorted logits. :class:`APGDTargeted` (APGD-T of AutoAttack)
runs the targeted DLR loss towards each of the ``n_target_classes`` classes ranked
highest by the clean logits after the top one, each only on the samples still robust.

Every iteration costs one forward and one input-gradient backward of the batch (times
``eot_iter`` for randomised models, averaging the gradient over ``eot_iter`` draws:
expectation over transformation, Athalye et al. 2018); the initial point costs one more.
Samples fooled at some iterate return the first such iterate; the others return the
iterate of highest loss.

``checkpoint_rule`` says how condition 1 counts. ``"reference"`` (the default) does what the
authors' implementation (and torchattacks') does, so that robust accuracies compare with
published AutoAttack numbers: the step size is halved when the loss rose in *at most* ρ·span
steps, and the first step is compared with a buffer of zeros, not with the starting point, so
with the DLR losses (negative until the sample is fooled) it never counts as a rise and the
first checkpoint halves more often. ``"paper"`` follows §3.2's text: fewer than ρ·span rises,
the first step compared with the starting point. The two differ only in short runs, where the
reference rule is stronger: on a random-weight ``vgg_small`` (32 images, L∞ 8/255) APGD-T
fooled 11 images in 10 steps with ``"reference"`` (torchattacks: 11) and 2 with ``"paper"``;
in 20 steps 25 (torchattacks: 25) against 23; in 100 steps 29 (torchattacks: 29) against 28.

References
----------
Croce, Hein. "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks." ICML 2020, arXiv:2003.01690.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._batching import per_sample as _bcast
from .._random import rand, randn
from .._validation import BOOL, POSITIVE_INT, check_param, check_params, one_of, param_error, real
from .base import Attack, project

__all__ = ["APGD", "APGDTargeted", "apgd_checkpoints", "dlr_loss"]


def dlr_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """Per-sample DLR loss (untargeted) or targeted DLR loss towards ``target`` (N,).

    Higher is better for the attacker. Needs at least 3 classes (4 for the targeted form).
    """
    k = logits.shape[1]
    if k < (4 if target is not None else 3):
        raise ValueError(
            f"the {'targeted ' if target is not None else ''}DLR loss needs at least "
            f"{4 if target is not None else 3} classes; the model has {k}. Use loss='ce'."
        )
    zs = logits.sort(dim=1, descending=True).values
    zy = logits.gather(1, y[:, None]).squeeze(1)
    if target is None:
        other = logits.clone()
        other.scatter_(1, y[:, None], -math.inf)
        return -(zy - other.max(1).values) / (zs[:, 0] - zs[:, 2] + 1e-12)
    zt = logits.gather(1, target[:, None]).squeeze(1)
    return -(zy - zt) / (zs[:, 0] - 0.5 * (zs[:, 2] + zs[:, 3]) + 1e-12)


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations after which APGD checks its step size (Croce & Hein 2020, §3.2).

    The first check comes after ⌊0.22 N⌋ iterations; each following gap is the previous
    one minus ⌊0.03 N⌋, but at least ⌊0.06 N⌋ (every count at least 1), as in the
    authors' implementation: for N = 100, after 22, 41, 57, 70, 80, 87, 93 and 99.
    """
    gap = max(int(0.22 * steps), 1)
    shrink, floor = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, at = [], gap
    while at <= steps:
        out.append(at)
        gap = max(gap - shrink, floor)
        at += gap
    return out


@dataclass(frozen=True, kw_only=True)
class APGD(Attack):
    """Auto-PGD (module docstring), L∞ or L2, CE or DLR loss, with restarts and EOT.

    Parameters
    ----------
    eps : float
        Budget in the units of ``norm`` (AutoAttack: 0.3 L∞ on MNIST, 8/255 L∞ and 0.5 L2
        on CIFAR-10).
    steps : int
        Iterations N per restart (AutoAttack: 100).
    norm : {"linf", "l2"}
        Threat model (an instance field).
    loss : {"ce", "dlr"}
        Objective; targeted calls use −CE(target) or the targeted DLR loss (with the clean
        prediction as the class to move away from).
    restarts : int
        Random restarts; later restarts attack only the samples not yet fooled.
    rho : float
        Fraction of loss increases below which the step size is halved (0.75).
    momentum : float
        α of the momentum step (0.75).
    eot_iter : int
        Gradient averaged over this many forward/backward passes (randomised models).
    random_start : bool
        Start from a random point of the ball (AutoAttack; default) or from x itself.
    checkpoint_rule : {"reference", "paper"}
        How the step-size check counts the loss rises (module docstring): as the authors'
        implementation does (default) or as the paper's text says.

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> x_adv shaped like x. ``run`` extras: ``loss``
    (N,) the best loss reached, ``restart`` (N,) the restart whose example was kept.

    References
    ----------
    Croce, Hein, ICML 2020, arXiv:2003.01690.

    Examples
    --------
    >>> atk = APGD(eps=0.3, steps=100, loss="ce")  # AutoAttack's APGD-CE on MNIST, L∞
    >>> atk.norm, atk.eps, atk.steps, atk.loss
    ('linf', 0.3, 100, 'ce')
    """

    eps: float
    steps: int = 100
    norm: Literal["linf", "l2"] = "linf"  # type: ignore[misc]  # an instance field here
    loss: Literal["ce", "dlr"] = "ce"
    restarts: int = 1
    rho: float = 0.75
    momentum: float = 0.75
    eot_iter: int = 1
    random_start: bool = True
    checkpoint_rule: Literal["reference", "paper"] = "reference"
    norms = ("linf", "l2")
    budget = "required"
    standard = {"eps": 0.1, "steps": 20}
    standard_description = "L∞ ε = 0.1, 20 steps, CE loss, step size halved at checkpoints"

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_params(name, self, {
            "norm": one_of("linf", "l2"), "loss": one_of("ce", "dlr"), "restarts": POSITIVE_INT,
            "eot_iter": POSITIVE_INT, "random_start": BOOL, "rho": real(gt=0, le=1),
            "momentum": real(gt=0, le=1), "checkpoint_rule": one_of("reference", "paper"),
        })
        if self.restarts > 1 and not self.random_start:
            raise param_error(name, "restarts", self.restarts, "1 when random_start is False",
                              "Set random_start=True, or restarts=1: restarts from x would repeat the same run.")

    # ------------------------------------------------------------- pieces
    def _objective(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        if self.loss == "ce":
            if target is None:
                return F.cross_entropy(logits, y, reduction="none")
            return -F.cross_entropy(logits, target, reduction="none")
        return dlr_loss(logits, y, target)

    def _loss_grad(self, model: nn.Module, xa: Tensor, y: Tensor, target: Tensor | None
                   ) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, per-sample loss, ∇x loss), averaged over ``eot_iter`` draws."""
        grad = torch.zeros_like(xa)
        loss_sum = torch.zeros(xa.shape[0], dtype=xa.dtype, device=xa.device)
        logits_last = None
        for _ in range(self.eot_iter):
            xr = xa.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xr)
                loss = self._objective(logits, y, target)
                (g,) = torch.autograd.grad(loss.sum(), xr)
            grad += g
            loss_sum += loss.detach()
            logits_last = logits.detach()
        assert logits_last is not None
        return logits_last, loss_sum / self.eot_iter, grad / self.eot_iter

    def _start(self, x: Tensor, eps: Tensor, generator: torch.Generator | None) -> Tensor:
        if not self.random_start:
            return x.clone()
        flat = x.flatten(1)
        if self.norm == "linf":
            t = 2 * rand(tuple(flat.shape), generator=generator, like=x) - 1
            delta = t * (eps[:, None] / t.abs().amax(1, keepdim=True).clamp_min(1e-12))
        else:
            t = randn(tuple(flat.shape), generator=generator, like=x)
            delta = t * (eps[:, None] / t.norm(dim=1, keepdim=True).clamp_min(1e-12))
        return (x + delta.reshape(x.shape)).clamp(*self.bounds)

    def _project(self, x: Tensor, xa: Tensor, eps: Tensor) -> Tensor:
        return project(x, xa, eps, self.norm).clamp(*self.bounds)

    def _direction(self, grad: Tensor) -> Tensor:
        if self.norm == "linf":
            return grad.sign()
        return grad / _bcast(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)

    def _fooled(self, logits: Tensor, y: Tensor, target: Tensor | None, targeted_call: bool) -> Tensor:
        pred = logits.argmax(1)
        if targeted_call:
            assert target is not None
            return pred == target
        return pred != y

    # ---------------------------------------------------------- one run
    def _single(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, target: Tensor | None,
                targeted_call: bool, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """One APGD run: (x_adv, fooled (N,), best loss (N,))."""
        n = x.shape[0]
        checkpoints = set(apgd_checkpoints(self.steps))
        xa = self._start(x, eps, generator)
        logits, loss, grad = self._loss_grad(model, xa, y, target)
        fooled = self._fooled(logits, y, target, targeted_call)
        x_adv = xa.clone()  # first fooling iterate (or, for the others, replaced by x_best)
        x_best, loss_best, grad_best = xa.clone(), loss.clone(), grad.clone()
        step = 2.0 * eps.clone()
        x_prev = xa.clone()
        increases = torch.zeros(n, dtype=torch.long, device=x.device)
        reference = self.checkpoint_rule == "reference"
        # the authors' code compares the first step with its unfilled loss buffer (zeros)
        loss_prev = torch.zeros_like(loss) if reference else loss.clone()
        last_check = 0
        best_at_check = loss_best.clone()
        reduced_at_check = torch.ones(n, dtype=torch.bool, device=x.device)
        for i in range(self.steps):
            a = self.momentum if i > 0 else 1.0
            z = self._project(x, xa + _bcast(step, x) * self._direction(grad), eps)
            x_new = self._project(x, xa + a * (z - xa) + (1 - a) * (xa - x_prev), eps)
            x_prev, xa = xa, x_new
            logits, loss, grad = self._loss_grad(model, xa, y, target)
            hit = self._fooled(logits, y, target, targeted_call) & ~fooled
            x_adv[hit] = xa[hit]
            fooled |= hit
            increases += (loss > loss_prev).long()
            loss_prev = loss
            better = loss > loss_best
            x_best[better], grad_best[better], loss_best[better] = xa[better], grad[better], loss[better]
            if i + 1 in checkpoints:
                span = i + 1 - last_check
                limit = self.rho * span
                osc = increases.double() <= limit if reference else increases.double() < limit
                no_gain = ~reduced_at_check & (best_at_check >= loss_best)
                reduce = osc | no_gain
                step = torch.where(reduce, step / 2, step)
                xa = torch.where(_bcast(reduce, x), x_best, xa)
                grad = torch.where(_bcast(reduce, x), grad_best, grad)
                reduced_at_check = reduce
                best_at_check = loss_best.clone()
                increases.zero_()
                last_check = i + 1
        out = torch.where(_bcast(fooled, x), x_adv, x_best)
        return out, fooled, loss_best

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, target: Tensor | None,
                targeted_call: bool, generator: torch.Generator | None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """All restarts, each on the samples not fooled yet: (x_adv, fooled, loss, restart)."""
        out = x.clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        best_loss = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
        kept = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for r in range(self.restarts):
            todo = torch.nonzero(~fooled).flatten()
            if len(todo) == 0:
                break
            t = None if target is None else target[todo]
            xa, ok, loss = self._single(model, x[todo], y[todo], eps[todo], t, targeted_call, generator)
            take = ok | (loss > best_loss[todo])
            idx = todo[take]
            out[idx], best_loss[idx], kept[idx] = xa[take], loss[take], r
            fooled[todo[ok]] = True
        return out, fooled, best_loss, kept

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        assert eps is not None  # budgeted: the base class always passes eps
        if targeted:
            with torch.no_grad():
                clean = model(x).argmax(1)
            x_adv, _, loss, kept = self._attack(model, x, clean, eps, y, True, generator)
        else:
            x_adv, _, loss, kept = self._attack(model, x, y, eps, None, False, generator)
        return x_adv, {"loss": loss, "restart": kept}


@dataclass(frozen=True, kw_only=True)
class APGDTargeted(APGD):
    """APGD-T (AutoAttack): targeted APGD towards each of the top ``n_target_classes`` classes.

    Called untargeted (``y`` = the true labels): for j = 1 … ``n_target_classes`` the target
    of each sample is the class with the (j + 1)-th largest clean logit, and APGD with the
    targeted loss (DLR by default) runs on the samples not fooled by the earlier targets.
    Success is misclassification (any wrong class), as in AutoAttack.

    Parameters
    ----------
    n_target_classes : int
        How many target classes to try (AutoAttack: 9; at most K − 1).
    loss : {"dlr", "ce"}
        Targeted DLR (default) or −CE(target).

    Examples
    --------
    >>> atk = APGDTargeted(eps=8 / 255, n_target_classes=9)  # AutoAttack's APGD-T on CIFAR-10
    >>> atk.loss, atk.n_target_classes, atk.supports_targeted
    ('dlr', 9, False)
    """

    loss: Literal["ce", "dlr"] = "dlr"
    n_target_classes: int = 9
    supports_targeted = False  # it picks its own targets
    standard = {"eps": 0.1, "steps": 20, "n_target_classes": 3}
    standard_description = "L∞ ε = 0.1, 20 steps of targeted DLR towards each of the top 3 other classes"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_param("APGDTargeted", "n_target_classes", self.n_target_classes, POSITIVE_INT)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        assert eps is not None
        with torch.no_grad():
            logits = model(x)
        k = logits.shape[1]
        if self.n_target_classes > k - 1:
            raise ValueError(
                f"APGDTargeted: n_target_classes={self.n_target_classes}, but a model with {k} classes "
                f"has only {k - 1} target classes besides the true one. Pass n_target_classes <= {k - 1}."
            )
        order = logits.argsort(dim=1, descending=True)
        out = x.clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        best_loss = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
        used = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for j in range(1, self.n_target_classes + 1):
            todo = torch.nonzero(~fooled).flatten()
            if len(todo) == 0:
                break
            target = order[todo, j]
            xa, ok, loss, _ = self._attack(model, x[todo], y[todo], eps[todo], target, False, generator)
            take = ok | (loss > best_loss[todo])
            idx = todo[take]
            out[idx], best_loss[idx], used[idx] = xa[take], loss[take], j
            fooled[todo[ok]] = True
        return out, {"loss": best_loss, "target_rank": used}
