"""Attacks: frozen hyperparameters, model and data at call time (DESIGN.md §3).

``ATTACKS`` maps registry keys to attack classes; the CLI, configs and the contract
tests are driven by it.
"""

from __future__ import annotations

from .apgd import APGD, APGDTargeted, dlr_loss
from .base import Attack, AttackResult, OneStepAttack, input_gradient, perturbation_norms, project
from .deepfool import DeepFool, DeepFoolLinf
from .gradient import FGM, FGSM, OTCM
from .hendrycks import HGFast, HGTargeted
from .iterative import BIM, MIFGSM, PGD, IterativeOTCM
from .jsma import JSMA
from .optimization import CarliniWagnerL2, Opt
from .spectral import OSSA, IterativeOSSA
from .square import Square

ATTACKS: dict[str, type[Attack]] = {
    "bim": BIM,
    "cw": CarliniWagnerL2,
    "deepfool": DeepFool,
    "deepfool_linf": DeepFoolLinf,
    "fgm": FGM,
    "fgsm": FGSM,
    "hg_fast": HGFast,
    "hg_targeted": HGTargeted,
    "jsma": JSMA,
    "mifgsm": MIFGSM,
    "otcm": OTCM,
    "opt": Opt,
    "otcm_iterative": IterativeOTCM,
    "pgd": PGD,
    "ossa": OSSA,
    "ossa_iterative": IterativeOSSA,
}

__all__ = [
    "APGD",
    "APGDTargeted",
    "ATTACKS",
    "BIM",
    "CarliniWagnerL2",
    "DeepFool",
    "DeepFoolLinf",
    "FGM",
    "FGSM",
    "HGFast",
    "HGTargeted",
    "JSMA",
    "MIFGSM",
    "OTCM",
    "Opt",
    "PGD",
    "OSSA",
    "Attack",
    "AttackResult",
    "IterativeOSSA",
    "IterativeOTCM",
    "OneStepAttack",
    "input_gradient",
    "perturbation_norms",
    "project",
    "Square",
    "dlr_loss",
]
