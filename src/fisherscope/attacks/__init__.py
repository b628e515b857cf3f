"""Attacks: frozen hyperparameters, model and data at call time (DESIGN.md §3).

``ATTACKS`` maps registry keys to attack classes; the CLI, configs and the contract
tests are driven by it.
"""

from __future__ import annotations

from .base import Attack, AttackResult, OneStepAttack, input_gradient, perturbation_norms, project
from .gradient import FGM
from .hendrycks import HGFast, HGTargeted
from .iterative import MIFGSM
from .spectral import OSSA, IterativeOSSA

ATTACKS: dict[str, type[Attack]] = {
    "fgm": FGM,
    "hg_fast": HGFast,
    "hg_targeted": HGTargeted,
    "mifgsm": MIFGSM,
    "ossa": OSSA,
    "ossa_iterative": IterativeOSSA,
}

__all__ = [
    "ATTACKS",
    "FGM",
    "HGFast",
    "HGTargeted",
    "MIFGSM",
    "OSSA",
    "Attack",
    "AttackResult",
    "IterativeOSSA",
    "OneStepAttack",
    "input_gradient",
    "perturbation_norms",
    "project",
]
