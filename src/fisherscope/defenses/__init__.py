"""Defenses: Fisher penalties and the training objectives that use them (Shen et al.).

- :func:`fisher_penalty` — Σ_i 1/p_i = tr G_s per sample from the logits, in log space
  (``"softmax_trace"``, capped where it would overflow; ``"log_softmax_trace"``).
- :func:`input_fisher_penalty` — tr G_x (``"input_trace"``, double backprop) and λ_max(G_x)
  (``"top_eigenvalue"``, envelope-theorem gradient), differentiable in the parameters.
- :class:`FisherRegularizedLoss` — cross-entropy (label smoothing ``alpha``) + μ · penalty;
  μ = 0 is exactly the plain cross-entropy.
- :class:`AdversarialLoss` — FGSM (Goodfellow et al.) / PGD (Madry et al.) / FGM
  adversarial training with any budgeted attack of :data:`fisherscope.attacks.ATTACKS`.
- :func:`normalize_defense`, :func:`build_objective` — the ``defense=`` mapping of
  :func:`fisherscope.training.train_model` (part of the checkpoint cache key).
"""

from __future__ import annotations

from .losses import TRAINING_MAX_LOG, AdversarialLoss, FisherRegularizedLoss, LossTerms
from .penalties import (
    INPUT_PENALTIES,
    SOFTMAX_PENALTIES,
    default_max_log,
    fisher_penalty,
    input_fisher_penalty,
    log_fisher_penalty,
)
from .spec import DEFENSE_KINDS, build_objective, normalize_defense

__all__ = [
    "DEFENSE_KINDS",
    "INPUT_PENALTIES",
    "SOFTMAX_PENALTIES",
    "TRAINING_MAX_LOG",
    "AdversarialLoss",
    "FisherRegularizedLoss",
    "LossTerms",
    "build_objective",
    "default_max_log",
    "fisher_penalty",
    "input_fisher_penalty",
    "log_fisher_penalty",
    "normalize_defense",
]
