"""Defense specifications: the ``defense=`` mapping of ``train_model``, validated and normalised.

A defense is a small JSON mapping, part of the checkpoint cache key. :func:`normalize_defense`
checks it strictly and fills every default in, so that equivalent requests share a key;
:func:`build_objective` turns the normalised form into the training objective.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from .._validation import param_error, real
from .losses import TRAINING_MAX_LOG, AdversarialLoss, FisherRegularizedLoss
from .penalties import INPUT_PENALTIES, SOFTMAX_PENALTIES, default_max_log

__all__ = ["DEFENSE_KINDS", "build_objective", "normalize_defense"]

#: The ``kind`` values of a defense mapping.
DEFENSE_KINDS: tuple[str, ...] = ("fisher", "label_smoothing", "adversarial")

_HINT = " (fisherscope.defenses.normalize_defense documents the accepted forms)"
_KEYS = {
    "fisher": {"kind", "mu", "penalty", "alpha", "max_log"},
    "label_smoothing": {"kind", "alpha"},
    "adversarial": {"kind", "attack", "params", "mix"},
}


def _fail(msg: str) -> ValueError:
    return ValueError(msg + _HINT + ".")


def _num(d: Mapping[str, Any], key: str, default: Any, *, lo: float, hi: float = math.inf,
         lo_open: bool = False, hi_open: bool = False) -> float:
    if key not in d:
        if default is None:
            raise _fail(f"defense kind {d['kind']!r} needs {key!r}")
        return float(default)
    v = d[key]
    upper = None if math.isinf(hi) else hi
    constraint = real(gt=lo if lo_open else None, ge=None if lo_open else lo,
                      lt=upper if hi_open else None, le=None if hi_open else upper)
    kind = constraint.failure(v)
    if kind is not None:
        fix = constraint.fix_for(v, kind).rstrip(".") + _HINT + "."
        raise param_error("defense", repr(key), v, constraint.expected, fix, kind)
    return float(v)


def _json_value(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _attack_from(name: str, params: Mapping[str, Any]) -> Any:
    from ..attacks import ATTACKS

    if not isinstance(name, str) or name not in ATTACKS:
        raise _fail(f"unknown attack {name!r} for adversarial training; valid names are {sorted(ATTACKS)}")
    if not isinstance(params, Mapping):
        raise _fail(f"adversarial 'params' must be a mapping of {name!r} hyperparameters; got {type(params).__name__}")
    cls = ATTACKS[name]
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise _fail(f"unknown parameter(s) {unknown} for attack {name!r}; valid are {valid}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    try:
        attack = cls(**kwargs)
    except TypeError as exc:  # a required hyperparameter (e.g. eps) is missing
        raise _fail(f"attack {name!r} cannot be built from params {dict(params)!r}: {exc}") from exc
    except ValueError as exc:
        raise _fail(f"attack {name!r}: {exc}") from exc
    return attack


def normalize_defense(defense: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Validate a ``defense`` mapping and return its canonical form (or None).

    Accepted forms (every key but ``kind`` and the ones marked required has a default):

    - ``{"kind": "fisher", "mu": 0.02, "penalty": "softmax_trace", "alpha": 0.0,
      "max_log": 40.0}`` — :class:`FisherRegularizedLoss`; ``mu`` required (≥ 0);
      ``penalty`` one of ``"softmax_trace"`` (default), ``"log_softmax_trace"``,
      ``"input_trace"``, ``"top_eigenvalue"``; ``alpha`` label smoothing in [0, 1);
      ``max_log`` (cap on log Σ 1/p_i) only with ``softmax_trace``.
    - ``{"kind": "label_smoothing", "alpha": 0.1}`` — ``alpha`` required, in [0, 1).
    - ``{"kind": "adversarial", "attack": "pgd", "params": {"eps": 0.3, "steps": 7, ...},
      "mix": 0.5}`` — :class:`AdversarialLoss` with ``ATTACKS[attack](**params)`` (a
      budgeted attack; ``eps`` required); ``mix`` in (0, 1], default 0.5 (Goodfellow et
      al.); Madry et al.'s PGD training is ``mix=1``.

    Normalisation: numbers become floats, defaults are filled in (all of the attack's
    hyperparameters too, so a later change of an attack default cannot alias a cached
    model), and requests that train exactly like plain training collapse: ``mu == 0``
    becomes ``None`` (or label smoothing when ``alpha > 0``), ``alpha == 0`` label
    smoothing becomes ``None``.

    Parameters
    ----------
    defense : mapping or None

    Returns
    -------
    dict or None
        The canonical mapping (JSON values only), or None for plain training.

    Raises
    ------
    ValueError
        Not a mapping, an unknown ``kind`` / key / attack / attack parameter, a missing
        required key, or a value out of range; the message names the valid choices.

    Examples
    --------
    >>> normalize_defense({"kind": "fisher", "mu": 1})
    {'kind': 'fisher', 'mu': 1.0, 'penalty': 'softmax_trace', 'alpha': 0.0, 'max_log': 40.0}
    >>> normalize_defense({"kind": "fisher", "mu": 0.0, "alpha": 0.1})
    {'kind': 'label_smoothing', 'alpha': 0.1}
    >>> normalize_defense({"kind": "label_smoothing", "alpha": 0}) is None
    True
    """
    if defense is None:
        return None
    if not isinstance(defense, Mapping):
        raise _fail(
            f"defense must be None or a mapping such as {{'kind': 'fisher', 'mu': 0.02}}; got "
            f"{type(defense).__name__}"
        )
    kind = defense.get("kind")
    if kind not in DEFENSE_KINDS:
        raise _fail(f"defense 'kind' must be one of {list(DEFENSE_KINDS)}; got {kind!r}")
    unknown = sorted(set(defense) - _KEYS[kind])
    if unknown:
        raise _fail(f"unknown key(s) {unknown} for defense kind {kind!r}; valid keys are {sorted(_KEYS[kind])}")

    if kind == "label_smoothing":
        alpha = _num(defense, "alpha", None, lo=0.0, hi=1.0, hi_open=True)
        return None if alpha == 0 else {"kind": "label_smoothing", "alpha": alpha}

    if kind == "fisher":
        mu = _num(defense, "mu", None, lo=0.0)
        penalty = defense.get("penalty", "softmax_trace")
        kinds = (*SOFTMAX_PENALTIES, *INPUT_PENALTIES)
        if penalty not in kinds:
            raise _fail(f"defense 'penalty' must be one of {list(kinds)}; got {penalty!r}")
        alpha = _num(defense, "alpha", 0.0, lo=0.0, hi=1.0, hi_open=True)
        if "max_log" in defense and penalty != "softmax_trace":
            raise _fail(f"'max_log' caps the softmax_trace penalty only; drop it for penalty={penalty!r}")
        max_log = _num(defense, "max_log", TRAINING_MAX_LOG, lo=0.0, lo_open=True,
                       hi=round(default_max_log(), 2))
        if mu == 0:
            return None if alpha == 0 else {"kind": "label_smoothing", "alpha": alpha}
        out: dict[str, Any] = {"kind": "fisher", "mu": mu, "penalty": penalty, "alpha": alpha}
        if penalty == "softmax_trace":
            out["max_log"] = max_log
        return out

    # adversarial
    if "attack" not in defense:
        raise _fail("defense kind 'adversarial' needs 'attack' (a fisherscope.attacks.ATTACKS key)")
    name = defense["attack"]
    attack = _attack_from(name, defense.get("params", {}))
    if not type(attack).budgeted or getattr(attack, "eps", None) is None or attack.eps <= 0:
        raise _fail(
            f"adversarial training needs a budgeted attack with eps > 0; {name!r} was given "
            f"eps={getattr(attack, 'eps', None)!r}"
        )
    mix = _num(defense, "mix", 0.5, lo=0.0, hi=1.0, lo_open=True)
    params = {f.name: _json_value(getattr(attack, f.name)) for f in dataclasses.fields(attack)}
    try:
        json.dumps(params, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _fail(f"attack {name!r} parameters must be JSON values; {exc}") from exc
    return {"kind": "adversarial", "attack": name, "params": params, "mix": mix}


def build_objective(defense: Mapping[str, Any] | None) -> FisherRegularizedLoss | AdversarialLoss | None:
    """The training objective of a defense mapping (normalised first); None for plain training.

    Examples
    --------
    >>> build_objective({"kind": "label_smoothing", "alpha": 0.1})
    FisherRegularizedLoss(mu=0.0, kind='softmax_trace', alpha=0.1, max_log=40.0)
    """
    d = normalize_defense(defense)
    if d is None:
        return None
    if d["kind"] == "label_smoothing":
        return FisherRegularizedLoss(mu=0.0, alpha=d["alpha"])
    if d["kind"] == "fisher":
        return FisherRegularizedLoss(mu=d["mu"], kind=d["penalty"], alpha=d["alpha"],
                                     max_log=d.get("max_log", TRAINING_MAX_LOG))
    return AdversarialLoss(_attack_from(d["attack"], d["params"]), mix=d["mix"])
