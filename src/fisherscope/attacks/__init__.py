"""Attacks: frozen hyperparameters, model and data at call time (the README's "Model contract").

``ATTACKS`` (a :class:`~fisherscope._registry.Registry`) maps registry keys to attack
classes; the CLI, configs, the demo and the contract tests are driven by it. An attack
is registered with :func:`register_attack` (or ``ATTACKS.register``), which checks its
class-level metadata: ``norms``, ``budget`` (and the derived bool ``budgeted``),
``standard`` hyperparameters that build it and a one-line ``standard_description``
(see :class:`Attack`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

from .._registry import Registry, first_doc_line
from .adaptive import DetectorAwarePGD
from .apgd import APGD, APGDTargeted, dlr_loss
from .base import (
    BUDGETS,
    NORMS,
    Attack,
    AttackResult,
    OneStepAttack,
    input_gradient,
    perturbation_norms,
    project,
)
from .deepfool import DeepFool, DeepFoolLinf
from .gradient import FGM, FGSM, OTCM
from .hendrycks import HGFast, HGTargeted
from .iterative import BIM, MIFGSM, PGD, IterativeOTCM
from .jsma import JSMA
from .optimization import CarliniWagnerL2, Opt
from .spectral import OSSA, IterativeOSSA
from .square import Square
from .wrappers import FixedSeed


def _check_attack(key: str, cls: Any) -> None:
    """Registration check of ATTACKS: an attack class with truthful, usable metadata."""
    where = f"ATTACKS[{key!r}]"
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise TypeError(f"{where} must be a subclass of fisherscope.attacks.Attack; got {cls!r}.")
    name = cls.__name__
    if inspect.isabstract(cls):
        raise TypeError(f"{where}: {name} is abstract (it does not implement {sorted(cls.__abstractmethods__)}).")
    missing = [a for a in ("standard", "standard_description") if a not in cls.__dict__]
    if missing:
        raise TypeError(
            f"{where}: {name} declares no {' / '.join(missing)} in its class body. Every registered attack "
            "carries its standard setting, e.g. standard = {'eps': 0.1} (hyperparameters for [0, 1] images "
            "at digit/MNIST scale) and standard_description = 'L∞ ε = 0.1, one step'."
        )
    if not isinstance(cls.standard, Mapping) or not all(isinstance(k, str) for k in cls.standard):
        raise TypeError(f"{where}: {name}.standard must be a mapping of hyperparameter names to values; "
                        f"got {cls.standard!r}.")
    desc = cls.standard_description
    if not isinstance(desc, str) or not desc.strip() or "\n" in desc.strip():
        raise ValueError(f"{where}: {name}.standard_description must be one non-empty line; got {desc!r}.")
    norms = getattr(cls, "norms", None)
    if not (isinstance(norms, tuple) and norms and all(n in NORMS for n in norms) and len(set(norms)) == len(norms)):
        raise TypeError(f"{where}: {name}.norms must be a non-empty tuple of distinct norms from {NORMS}; "
                        f"got {norms!r}.")
    if cls.norm not in norms:
        raise ValueError(f"{where}: {name}.norm (the default) is {cls.norm!r}, not one of {name}.norms = {norms}.")
    budget = getattr(cls, "budget", None)
    if budget not in BUDGETS:
        raise TypeError(f"{where}: {name}.budget must be one of {BUDGETS}; got {budget!r}.")
    if not isinstance(cls.budgeted, bool) or cls.budgeted != (budget != "none"):
        raise TypeError(
            f"{where}: {name}.budgeted must be the bool budget != 'none' on the class (set budget, not "
            f"budgeted); got budgeted={cls.budgeted!r} with budget={budget!r}."
        )
    init = {f.name for f in dataclasses.fields(cls) if f.init}
    if budget != "none" and "eps" not in init:
        raise TypeError(f"{where}: {name} has budget={budget!r} but no 'eps' field to hold it.")
    unknown = sorted(set(cls.standard) - init)
    if unknown:
        raise TypeError(f"{where}: {name}.standard names {unknown}, which are not parameters of {name} "
                        f"(valid: {sorted(init)}).")
    try:
        attack = cls(**cls.standard)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where}: {name}(**{name}.standard) fails, so its standard setting is unusable: {exc}") from exc
    if attack.norm not in norms:
        raise ValueError(f"{where}: the standard {name} has norm {attack.norm!r}, not one of {norms}.")


def _describe_attack(cls: type[Attack]) -> str:
    return first_doc_line(cls)


ATTACKS: Registry[type[Attack]] = Registry("ATTACKS", validate=_check_attack, describe=_describe_attack)
"""Registry key -> attack class (one-step, iterative, minimal-perturbation, then the rest)."""


def register_attack(key: str, cls: type[Attack]) -> type[Attack]:
    """Add ``cls`` to :data:`ATTACKS` under ``key`` (its metadata is checked; a taken key is an error)."""
    return ATTACKS.register(key, cls)


_BUILTIN: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "fgm": FGM,
    "otcm": OTCM,
    "ossa": OSSA,
    "bim": BIM,
    "mifgsm": MIFGSM,
    "pgd": PGD,
    "apgd": APGD,
    "apgd_t": APGDTargeted,
    "square": Square,
    "otcm_iterative": IterativeOTCM,
    "ossa_iterative": IterativeOSSA,
    "deepfool": DeepFool,
    "deepfool_linf": DeepFoolLinf,
    "cw": CarliniWagnerL2,
    "opt": Opt,
    "jsma": JSMA,
    "hg_targeted": HGTargeted,
    "hg_fast": HGFast,
}
for _key, _cls in _BUILTIN.items():
    register_attack(_key, _cls)
del _key, _cls, _BUILTIN

__all__ = [
    "APGD",
    "APGDTargeted",
    "ATTACKS",
    "BIM",
    "CarliniWagnerL2",
    "DeepFool",
    "DetectorAwarePGD",
    "DeepFoolLinf",
    "FGM",
    "FGSM",
    "FixedSeed",
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
    "dlr_loss",
    "input_gradient",
    "perturbation_norms",
    "project",
    "register_attack",
    "Square",
]
