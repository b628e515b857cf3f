"""Training objectives: Fisher-regularised cross-entropy, label smoothing, adversarial training.

Each objective has ``evaluate(model, x, y, generator=None) -> LossTerms``: one training
step's loss (a differentiable scalar), the logits it computed and per-batch statistics.
:func:`fisherscope.training.train_model` calls it in place of the plain cross-entropy when
given a ``defense`` (see :func:`~fisherscope.defenses.normalize_defense`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import NON_NEGATIVE, check_param, check_params, eval_mode, one_of, real
from .penalties import (
    INPUT_PENALTIES,
    SOFTMAX_PENALTIES,
    _input_penalty,
    _softmax_penalty,
    default_max_log,
)

__all__ = ["TRAINING_MAX_LOG", "AdversarialLoss", "FisherRegularizedLoss", "LossTerms"]

#: Default cap on log Σ 1/p_i inside :class:`FisherRegularizedLoss` (Σ 1/p_i ≤ e^40 ≈ 2.4e17).
TRAINING_MAX_LOG = 40.0


class LossTerms(NamedTuple):
    """One training step's objective.

    Attributes
    ----------
    loss : Tensor
        Scalar to backpropagate.
    logits : Tensor
        (N, K) logits of the clean inputs (of the adversarial ones when the objective made
        no clean pass: adversarial training with ``mix=1``).
    stats : dict
        Per-batch *sums* over samples, detached (e.g. ``"penalty"``, ``"capped"``,
        ``"adv_accuracy"``); the training loop divides them by the number of samples.
    """

    loss: Tensor
    logits: Tensor
    stats: dict[str, Tensor]


def _cross_entropy(logits: Tensor, y: Tensor, alpha: float) -> Tensor:
    # alpha == 0 takes exactly the call the plain training loop makes (bitwise equal).
    if alpha == 0.0:
        return F.cross_entropy(logits, y)
    return F.cross_entropy(logits, y, label_smoothing=alpha)


class FisherRegularizedLoss(nn.Module):
    """Cross-entropy (optionally label-smoothed) + μ · the batch mean of a Fisher penalty.

    loss = CE_α(z, y) + μ · mean_n penalty_n, with CE_α the cross-entropy against the
    smoothed targets y(1 − α) + α/K (Szegedy et al.; Shen §3.4) and the penalty one of

    - ``"softmax_trace"``: Σ_i 1/p_i = tr G_s (Shen et al., eq. 4), in log space with a cap
      at ``max_log`` (see :func:`~fisherscope.defenses.fisher_penalty`);
    - ``"log_softmax_trace"``: log Σ_i 1/p_i, never capped;
    - ``"input_trace"``: tr G_x by double backpropagation;
    - ``"top_eigenvalue"``: λ_max(G_x), envelope-theorem gradient
      (see :func:`~fisherscope.defenses.input_fisher_penalty`).

    With ``mu == 0`` the penalty is not computed at all and the loss is *bitwise* the
    plain cross-entropy ``F.cross_entropy(logits, y)`` (``label_smoothing=alpha`` when
    α > 0): ``FisherRegularizedLoss(mu=0, alpha=0.1)`` is plain label smoothing.

    **The training cap.** The default ``max_log`` here is 40 (Σ 1/p_i ≤ 2.4e17, i.e.
    p_min ≳ 1e-17), lower than :func:`fisher_penalty`'s representability limit (81.7
    in float32): past the cap the gradient of the penalty with respect to L = log Σ 1/p_i
    is about exp(c), and with c ≈ 80 a single capped sample would send parameter
    gradients of order 1e34 into the optimiser (Adam's second moment overflows float32
    past 1.8e19 and freezes the affected weights). With c = 40 the push on a capped
    sample stays finite, points the right way and keeps the optimiser state finite.
    Samples that reach the cap are counted in ``LossTerms.stats["capped"]``.

    Parameters
    ----------
    mu : float
        Weight μ ≥ 0 of the penalty (Shen et al.: 0.005 … 0.025 on MNIST).
    kind : {"softmax_trace", "log_softmax_trace", "input_trace", "top_eigenvalue"}
    alpha : float
        Label smoothing α in [0, 1).
    max_log : float
        Cap on log Σ 1/p_i for ``kind="softmax_trace"`` (ignored otherwise).

    Shapes
    ------
    ``forward(logits, y)``: (N, K), (N,) -> scalar (softmax kinds and μ = 0 only).
    ``evaluate(model, x, y)``: x (N, *S), y (N,) -> :class:`LossTerms`.

    References
    ----------
    Shen, C., Peng, Y., Zhang, G., Fan, J. arXiv:1909.06137, eq. (4).
    Szegedy, C. et al. "Rethinking the Inception Architecture for Computer Vision."
    CVPR 2016 (label smoothing).

    Examples
    --------
    >>> loss_fn = FisherRegularizedLoss(mu=0.02)
    >>> logits = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    >>> loss = loss_fn(logits, torch.tensor([0]))
    >>> loss.backward()
    >>> plain = FisherRegularizedLoss(mu=0.0)(logits, torch.tensor([0]))
    >>> bool(plain == torch.nn.functional.cross_entropy(logits, torch.tensor([0])))
    True
    """

    def __init__(self, mu: float, kind: str = "softmax_trace", alpha: float = 0.0, *,
                 max_log: float = TRAINING_MAX_LOG) -> None:
        super().__init__()
        limit = default_max_log(torch.float32)
        check_params("FisherRegularizedLoss", {"mu": mu, "kind": kind, "alpha": alpha, "max_log": max_log}, {
            "mu": NON_NEGATIVE,
            "kind": one_of(*SOFTMAX_PENALTIES, *INPUT_PENALTIES),
            "alpha": real(ge=0, lt=1),
            # log Σ 1/p_i >= 2 log K >= 2 log 2; the bound for the actual K is checked per batch
            "max_log": real(ge=2 * math.log(2), le=limit).but(
                fix=f"log Σ 1/p_i is never below 2·log K (2·log 2 = {2 * math.log(2):.4g} for two classes), so "
                    f"a lower cap caps every sample; above {limit:.2f} the float32 penalty can overflow."),
        })
        self.mu, self.kind, self.alpha, self.max_log = float(mu), kind, float(alpha), float(max_log)

    @property
    def needs_input(self) -> bool:
        """Whether the penalty needs the model and x (an input-space kind with μ > 0)."""
        return self.mu > 0 and self.kind in INPUT_PENALTIES

    def extra_repr(self) -> str:
        return f"mu={self.mu}, kind={self.kind!r}, alpha={self.alpha}, max_log={self.max_log}"

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        """The loss from the logits (softmax-space kinds, or μ = 0)."""
        if self.needs_input:
            raise ValueError(
                f"FisherRegularizedLoss(kind={self.kind!r}) needs the model and the inputs, not "
                "just the logits: call loss_fn.evaluate(model, x, y).loss instead."
            )
        return self._from_logits(logits, y)[0]

    def _from_logits(self, logits: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        ce = _cross_entropy(logits, y, self.alpha)
        n = logits.shape[0]
        stats = {"cross_entropy": ce.detach() * n}
        if self.mu == 0:
            return ce, stats
        pen, capped = _softmax_penalty(logits, self.kind, self.max_log, "FisherRegularizedLoss")
        stats["penalty"] = pen.detach().sum()
        stats["capped"] = capped.sum().to(pen.dtype)
        return ce + self.mu * pen.mean(), stats

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor,
                 generator: torch.Generator | None = None) -> LossTerms:
        """One forward pass of ``model`` (in its current mode) and the loss.

        For the input-space kinds ``x`` is made to require grad (a detached copy; ``x``
        itself is untouched) and the penalty uses the same forward pass as the
        cross-entropy. ``generator`` is unused (uniform signature with
        :class:`AdversarialLoss`).
        """
        if not self.needs_input:
            logits = model(x)
            loss, stats = self._from_logits(logits, y)
            return LossTerms(loss, logits, stats)
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xr)
            ce = _cross_entropy(logits, y, self.alpha)
            pen = _input_penalty(logits, xr, self.kind)
        stats = {"cross_entropy": ce.detach() * x.shape[0], "penalty": pen.detach().sum()}
        return LossTerms(ce + self.mu * pen.mean(), logits, stats)


class AdversarialLoss(nn.Module):
    """Adversarial training: (1 − mix) · CE(x) + mix · CE(x_adv), x_adv from an attack.

    - ``mix=0.5`` with FGSM is Goodfellow et al.'s adversarial objective (their α = 0.5).
    - ``mix=1`` with PGD (e.g. 7 steps on MNIST) is Madry et al.'s: train on the
      adversarial examples only.

    The examples come from ``attack(model, x, y, generator=...)`` (untargeted, true
    labels), computed with the model in **eval mode** (BatchNorm running statistics,
    dropout off; every module's mode is restored) — as in most public adversarial
    training code — so the attack sees a deterministic function and does not disturb the
    BatchNorm statistics; the loss is then computed in the model's current (training)
    mode. With ``0 < mix < 1`` the clean and the adversarial batch go through the network
    in one forward pass (concatenated), so BatchNorm normalises them with joint batch
    statistics. The attack's random start draws from ``generator`` (the training
    loop's), which keeps training deterministic and resumable.

    Parameters
    ----------
    attack : Attack
        A budgeted :class:`~fisherscope.attacks.Attack` instance (``eps`` set), e.g.
        ``ATTACKS["pgd"](eps=0.3, step_size=0.01, steps=7)``.
    mix : float
        Weight of the adversarial term, in (0, 1].

    Shapes
    ------
    ``evaluate(model, x, y)``: x (N, *S), y (N,) -> :class:`LossTerms`.

    References
    ----------
    Goodfellow, I., Shlens, J., Szegedy, C. "Explaining and Harnessing Adversarial
    Examples." ICLR 2015, eq. (3).
    Madry, A., Makelov, A., Schmidt, L., Tsipras, D., Vladu, A. "Towards Deep Learning
    Models Resistant to Adversarial Attacks." ICLR 2018.

    Examples
    --------
    >>> from fisherscope.attacks import FGM
    >>> loss_fn = AdversarialLoss(FGM(eps=1.0), mix=0.5)
    >>> terms = loss_fn.evaluate(model, x, y)
    """

    def __init__(self, attack: Any, mix: float = 0.5) -> None:
        super().__init__()
        from ..attacks import Attack

        if not isinstance(attack, Attack):
            raise TypeError(
                f"AdversarialLoss: attack must be a fisherscope.attacks.Attack instance (e.g. "
                f"ATTACKS['fgm'](eps=1.0)); got {type(attack).__name__}."
            )
        if not type(attack).budgeted or getattr(attack, "eps", None) is None:
            raise ValueError(
                f"AdversarialLoss: adversarial training needs a budgeted attack with eps set; "
                f"{type(attack).__name__} has {'no budget' if not type(attack).budgeted else 'eps=None'}."
            )
        self.attack = attack
        self.mix = float(check_param("AdversarialLoss", "mix", mix, real(gt=0, le=1)))

    def extra_repr(self) -> str:
        return f"attack={self.attack!r}, mix={self.mix}"

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor,
                 generator: torch.Generator | None = None) -> LossTerms:
        with eval_mode(model, warn=False):
            x_adv = self.attack(model, x, y, generator=generator).detach()  # no success mask: no extra forward
        n = x.shape[0]
        if self.mix == 1.0:
            logits_adv = model(x_adv)
            loss = F.cross_entropy(logits_adv, y)
            logits = logits_adv
            stats = {"adv_cross_entropy": loss.detach() * n}
        else:
            out = model(torch.cat([x, x_adv]))
            logits, logits_adv = out[:n], out[n:]
            ce_clean = F.cross_entropy(logits, y)
            ce_adv = F.cross_entropy(logits_adv, y)
            loss = (1.0 - self.mix) * ce_clean + self.mix * ce_adv
            stats = {"cross_entropy": ce_clean.detach() * n, "adv_cross_entropy": ce_adv.detach() * n}
        stats["adv_accuracy"] = (logits_adv.detach().argmax(1) == y).sum().to(loss.dtype)
        return LossTerms(loss, logits, stats)
