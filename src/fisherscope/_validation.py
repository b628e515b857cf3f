"""Input validation shared by every public entry point (the README's "Model contract").

Every message says what was expected, what arrived and how to fix it. Checks are
always on: each is one reduction over the tensor, cheap next to a forward pass.

Hyperparameters (scalars such as ``eps``, ``steps``, ``tol``, ``norm``) are checked
declaratively by :func:`check_param` / :func:`check_params` against a
:class:`Constraint` (:func:`real`, :func:`integer`, :func:`one_of`, :data:`BOOL`, ...),
with one message template::

    <owner>: <parameter> must be <expected>; got <value!r>. <fix>

A wrong type raises :class:`~fisherscope.exceptions.ParameterTypeError` (a TypeError,
and a ValueError for older callers); a wrong value raises ValueError. Booleans are never
numbers, NaN is never accepted, and inf only where a constraint says so.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from .exceptions import ModelModeWarning, ParameterTypeError

__all__ = [
    "BOOL",
    "BOUNDS",
    "CALLABLE",
    "DEFAULT_BOUNDS",
    "FINITE",
    "NON_NEGATIVE",
    "NON_NEGATIVE_INT",
    "POSITIVE",
    "POSITIVE_INT",
    "STRING",
    "Constraint",
    "check_inputs",
    "check_labels",
    "check_logits",
    "check_model_dtype",
    "check_param",
    "check_params",
    "eval_mode",
    "one_mode_warning",
    "user_stacklevel",
    "warns_once",
    "any_of",
    "integer",
    "one_of",
    "param_error",
    "real",
    "sample_list",
    "satisfies",
]

T = TypeVar("T")

DEFAULT_BOUNDS: tuple[float, float] = (0.0, 1.0)
_BOUNDS_TOL = 1e-6
#: smallest row sum of outputs in [0, 1] taken as (scaled) probabilities by check_logits
_PROB_MASS_MIN = 0.5


def sample_list(mask: torch.Tensor, limit: int = 8) -> str:
    """The indices where ``mask`` is True, for error messages: ``"[0, 3, 7, ...]"`` (at most ``limit``)."""
    idx = torch.nonzero(mask, as_tuple=False).flatten().tolist()
    shown = ", ".join(str(i) for i in idx[:limit])
    return f"[{shown}{', ...' if len(idx) > limit else ''}]"


def check_inputs(
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    bounds: tuple[float, float] | None = DEFAULT_BOUNDS,
    name: str = "x",
    image: bool = False,
) -> torch.Tensor:
    """Validate a batch of inputs; returns ``x`` unchanged.

    Parameters
    ----------
    x : Tensor
        Shape (N, C, H, W) or (N, D) (only (N, C, H, W) when ``image=True``).
    y : Tensor, optional
        Labels; if given, its length must match the batch size of ``x``.
    bounds : (float, float) or None
        Admissible value range (tolerance 1e-6); ``None`` skips the range check.

    Raises
    ------
    TypeError
        ``x`` is not a floating-point tensor.
    ValueError
        Wrong number of dimensions, empty batch, non-finite values, values outside
        ``bounds``, or a batch-size mismatch with ``y``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (N, C, H, W); got {type(x).__name__}. "
            f"Convert with torch.as_tensor({name}, dtype=torch.float32)."
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor with values in "
            f"{list(bounds) if bounds else 'the model range'}; got {x.dtype}. "
            f"Convert images with {name}.float() / 255."
        )
    allowed = (4,) if image else (2, 4)
    if x.ndim not in allowed:
        expected = "(N, C, H, W)" if image else "(N, C, H, W) or (N, D)"
        if x.ndim in (1, 3):
            hint = f" Add a batch dimension with {name}.unsqueeze(0)."
        elif x.ndim == 0:
            hint = f" Pass a batch of samples, not a scalar ({name}.reshape(1, -1) for one flat sample)."
        elif x.ndim == 2:
            hint = f" Reshape the flat rows to images, e.g. {name}.reshape(-1, C, H, W)."
        else:
            hint = f" Fold the extra dimensions into the batch, e.g. {name}.flatten(0, {x.ndim - 4})."
        raise ValueError(
            f"{name} must have shape {expected}; got shape {tuple(x.shape)}.{hint}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); pass at least one sample.")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = ~finite.reshape(x.shape[0], -1).all(dim=1)
        n_bad = int((~finite).sum())
        raise ValueError(
            f"{name} contains {n_bad} non-finite values (NaN or inf) in samples "
            f"{sample_list(bad)}; remove or repair those samples before calling."
        )
    if bounds is not None:
        lo, hi = float(bounds[0]), float(bounds[1])
        xmin, xmax = float(x.detach().min()), float(x.detach().max())
        if xmin < lo - _BOUNDS_TOL or xmax > hi + _BOUNDS_TOL:
            raise ValueError(
                f"{name} has values in [{xmin:.4g}, {xmax:.4g}], outside bounds ({lo}, {hi}). "
                "If your model expects normalized inputs, put the normalization inside the "
                f"model and pass raw images in [{lo}, {hi}]."
            )
    if y is not None:
        n_y = y.shape[0] if isinstance(y, torch.Tensor) and y.ndim > 0 else None
        if n_y is not None and n_y != x.shape[0]:
            raise ValueError(
                f"{name} has {x.shape[0]} samples but y has {n_y}; pass one label per sample."
            )
    return x


def check_model_dtype(model: Any, x: torch.Tensor, *, name: str = "x") -> None:
    """``x``'s floating dtype must be the model's (the dtype of all its floating parameters).

    Raises
    ------
    TypeError
        E.g. float64 inputs for a float32 model: torch would fail deep inside the first
        layer ("expected scalar type ..."); the message says which conversion fixes it.
    """
    if not isinstance(model, nn.Module):
        return
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) == 1 and x.is_floating_point():
        (dtype,) = dtypes
        if dtype != x.dtype:
            short = str(dtype).removeprefix("torch.")
            raise TypeError(
                f"{name} must have the model's dtype {dtype}; got {x.dtype}. Convert the inputs with "
                f"{name}.to(torch.{short}), or the model with model.to({x.dtype})."
            )


def check_labels(
    y: torch.Tensor, n: int | None = None, num_classes: int | None = None, *, name: str = "y"
) -> torch.Tensor:
    """Validate integer class labels of shape (N,); returns ``y`` unchanged.

    Raises
    ------
    TypeError
        ``y`` is not an int64 tensor.
    ValueError
        Wrong shape (one-hot labels get a hint), wrong length, or labels out of range.
    """
    expected = f"an int64 tensor of shape (N,){f' = ({n},)' if n is not None else ''}"
    if num_classes is not None:
        expected += f" with values in [0, {num_classes})"
    if not isinstance(y, torch.Tensor):
        raise TypeError(
            f"{name} must be {expected}; got {type(y).__name__}. "
            f"Convert with torch.as_tensor({name}, dtype=torch.int64)."
        )
    if y.ndim == 2 and (num_classes is None or y.shape[1] == num_classes) and y.shape[1] > 1:
        raise ValueError(
            f"{name} must be {expected}; got shape {tuple(y.shape)}, which looks one-hot. "
            f"Use {name}.argmax(1)."
        )
    if y.ndim != 1:
        raise ValueError(f"{name} must be {expected}; got shape {tuple(y.shape)}.")
    if y.dtype != torch.int64:
        raise TypeError(
            f"{name} must be {expected}; got dtype {y.dtype}. Convert with {name}.long()."
        )
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} must be {expected}; got {y.shape[0]} labels for {n} samples.")
    if num_classes is not None and y.numel() > 0:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name} must be {expected}; got values in [{lo}, {hi}]. "
                "Check that the labels belong to this model's classes."
            )
    return y


def check_logits(logits: torch.Tensor, *, name: str = "model output") -> torch.Tensor:
    """Validate model outputs: 2-D (N, K) finite logits that are not probabilities.

    Probabilities are detected as a batch whose values are all in [0, 1] and whose rows
    each sum to 1 (within 1e-4), or — with two or more rows — all sum to the same mass
    c in [0.5, 1] (within 1e-4): a scaled softmax such as ``0.999 * softmax``. Logits
    like that are implausible; small non-negative logits of an untrained network (row
    sums that differ) and all-zero outputs (a constant model) are not flagged. A single
    row of a scaled softmax cannot be told from logits.

    Raises
    ------
    ValueError
        Not 2-D, fewer than two classes, non-finite values, or probabilities.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"{name} must be a tensor of logits with shape (N, K); got {type(logits).__name__}. "
            "Models must return a single tensor, not a tuple or dict."
        )
    if logits.ndim != 2:
        raise ValueError(
            f"{name} must be logits of shape (N, K); got shape {tuple(logits.shape)}. "
            "Flatten or squeeze the model's output to (N, K)."
        )
    if logits.shape[1] < 2:
        raise ValueError(
            f"{name} must have at least two classes (shape (N, K) with K >= 2); got "
            f"shape {tuple(logits.shape)}. For a binary model with one output z, return "
            "torch.cat([-z, z], 1) / 2 or torch.cat([zeros, z], 1)."
        )
    finite = torch.isfinite(logits)
    if not bool(finite.all()):
        bad = ~finite.all(dim=1)
        raise ValueError(
            f"{name} has non-finite logits for {int(bad.sum())} samples "
            f"{sample_list(bad)}; check the inputs and the model."
        )
    with torch.no_grad():
        in_unit = bool(((logits >= 0) & (logits <= 1)).all())
        sums = logits.sum(dim=1)
        lo, hi = float(sums.min()), float(sums.max())
        sums_to_one = bool(((sums - 1).abs() <= 1e-4).all())
        # c * softmax: the same mass c in (0.5, 1] in every row of a batch (untrained nets with
        # small positive logits have row sums that differ from row to row)
        scaled = logits.shape[0] >= 2 and _PROB_MASS_MIN <= lo and hi <= 1 + 1e-4 and hi - lo <= 1e-4
    if in_unit and (sums_to_one or scaled):
        what = "sums to 1" if sums_to_one else f"sums to the same {hi:.4g}, a scaled softmax"
        raise ValueError(
            f"{name} looks like probabilities (every value is in [0, 1] and every row {what}), "
            "but logits are expected. Remove the final softmax from the model, or wrap it with "
            "fisherscope.models.as_logits(model, output='probs')."
        )
    return logits


# --------------------------------------------------------------- hyperparameters

_REPR_LIMIT = 80


def _short_repr(value: Any) -> str:
    r = " ".join(repr(value).split())
    return r if len(r) <= _REPR_LIMIT else r[: _REPR_LIMIT - 3] + "..."


def _is_real(v: Any) -> bool:
    """A real number that is not a bool (Python, NumPy, fractions; not tensors)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except OverflowError:  # an int past float range
        return math.inf if v > 0 else -math.inf


def _fmt(v: float) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _number_type_fix(value: Any) -> str:
    if isinstance(value, bool):
        return "Pass a number; True and False are not accepted as numbers."
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return "Pass a Python number, e.g. float(t) or t.item(), not a tensor."
    if isinstance(value, str):
        return f"Pass a number, not a string (e.g. float({value!r}))."
    return f"Pass a Python int or float, not a {type(value).__name__}."


def _int_type_fix(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return f"Pass the integer {int(value)}, not the float {value!r}."
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return "Pass a Python int, e.g. int(t), not a tensor."
    if isinstance(value, bool):
        return "Pass an integer; True and False are not accepted as numbers."
    return f"Pass a Python int, not a {type(value).__name__}."


@dataclass(frozen=True)
class Constraint:
    """What a hyperparameter must be: a type test, a value test and their wording.

    Build one with :func:`real`, :func:`integer`, :func:`one_of`, :data:`BOOL` (or the
    constructor for a custom test) and check values with :func:`check_param`.

    Attributes
    ----------
    expected : str
        Completes "<parameter> must be ...", e.g. ``"a finite number > 0"``.
    type_ok, value_ok : callable
        ``value -> bool``; ``value_ok`` is only asked once ``type_ok`` said yes. A failed
        type test raises :class:`~fisherscope.exceptions.ParameterTypeError`, a failed
        value test ValueError.
    fix : str or callable, optional
        The sentence after the message, or ``value -> sentence``; ``None`` uses
        ``type_fix`` / ``value_fix``.
    type_fix, value_fix : callable
        The generic fix sentences for a wrong type and a wrong value.
    allow_none : bool
        ``None`` is accepted (see :meth:`or_none`).
    """

    expected: str
    type_ok: Callable[[Any], bool]
    value_ok: Callable[[Any], bool] = lambda v: True  # noqa: E731
    fix: str | Callable[[Any], str] | None = None
    type_fix: Callable[[Any], str] = lambda v: f"Got a {type(v).__name__}."  # noqa: E731
    value_fix: Callable[[Any], str] = lambda v: "Pass a value that satisfies it."  # noqa: E731
    allow_none: bool = False

    def or_none(self, meaning: str = "") -> Constraint:
        """The same constraint, with ``None`` also accepted (``meaning`` says what it does)."""
        tail = f" or None ({meaning})" if meaning else " or None"
        return replace(self, expected=self.expected + tail, allow_none=True)

    def but(self, *, expected: str | None = None, fix: str | Callable[[Any], str] | None = None) -> Constraint:
        """The same test with other wording: ``expected`` replaces the description,
        ``fix`` the generic fix sentence (for both kinds of failure)."""
        return replace(self, expected=self.expected if expected is None else expected,
                       fix=self.fix if fix is None else fix)

    def where(self, test: Callable[[Any], bool], *, expected: str,
              fix: str | Callable[[Any], str] | None = None) -> Constraint:
        """A narrower constraint: this one and ``test(value)`` (asked only after this one's
        tests pass); ``fix`` is the sentence for a value failing it."""
        base, base_fix = self.value_ok, self.value_fix
        narrow_fix = base_fix if fix is None else (fix if callable(fix) else lambda v: fix)
        return replace(self, expected=expected, value_ok=lambda v: base(v) and test(v),
                       value_fix=lambda v: narrow_fix(v) if base(v) else base_fix(v))

    def failure(self, value: Any) -> type[Exception] | None:
        """``None`` when ``value`` satisfies the constraint, else the exception class to raise."""
        if value is None and self.allow_none:
            return None
        if not self.type_ok(value):
            return ParameterTypeError
        if not self.value_ok(value):
            return ValueError
        return None

    def fix_for(self, value: Any, kind: type[Exception]) -> str:
        fix = self.fix
        if fix is None:
            fix = self.type_fix if kind is ParameterTypeError else self.value_fix
        return fix(value) if callable(fix) else fix


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {_fmt(lo)}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {_fmt(hi)}"
    return ""


def _bounds(gt: float | None, ge: float | None, lt: float | None, le: float | None
            ) -> tuple[float | None, float | None, bool, bool]:
    if gt is not None and ge is not None or lt is not None and le is not None:
        raise TypeError("give at most one lower (gt/ge) and one upper (lt/le) bound")
    lo = gt if gt is not None else ge
    hi = lt if lt is not None else le
    return lo, hi, gt is not None, lt is not None


def _in_bounds(v: Any, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    if lo is not None and not (v > lo if lo_open else v >= lo):
        return False
    return hi is None or (v < hi if hi_open else v <= hi)


def real(*, gt: float | None = None, ge: float | None = None, lt: float | None = None,
         le: float | None = None, finite: bool = True) -> Constraint:
    """A real number (not a bool, never NaN) within optional bounds.

    ``finite=False`` also admits ±inf where the bounds allow it (e.g. ``real(gt=0,
    finite=False)`` for "a radius, inf for no constraint"). Integers and NumPy scalars
    are accepted; tensors are not.

    Examples
    --------
    >>> real(gt=0).expected, real(gt=0, lt=1).expected
    ('a finite number > 0', 'a number in (0, 1)')
    """
    lo, hi, lo_open, hi_open = _bounds(gt, ge, lt, le)
    cond = _interval(lo, hi, lo_open, hi_open)
    both = lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)
    if both:
        expected = f"a number {cond}"
    elif finite:
        expected = f"a finite number {cond}".rstrip()
    else:
        expected = f"a number {cond} (inf allowed)" if cond else "a number (not NaN; inf allowed)"

    def value_ok(v: Any) -> bool:
        f = _as_float(v)
        if math.isnan(f) or (finite and math.isinf(f)):
            return False
        return _in_bounds(v, lo, hi, lo_open, hi_open)

    def value_fix(v: Any) -> str:
        f = _as_float(v)
        if math.isnan(f):
            return "NaN is not a setting; pass a number."
        if finite and math.isinf(f):
            return f"inf is not accepted here; pass a finite number{' ' + cond if cond else ''}."
        return f"Pass a value {cond}." if cond else "Pass another value."

    return Constraint(expected, _is_real, value_ok, type_fix=_number_type_fix, value_fix=value_fix)


def integer(*, gt: int | None = None, ge: int | None = None, lt: int | None = None,
            le: int | None = None) -> Constraint:
    """An integer (Python or NumPy; not a bool, not a whole float) within optional bounds.

    Examples
    --------
    >>> integer(ge=1).expected, integer(ge=0, le=5).expected
    ('an integer >= 1', 'an integer in [0, 5]')
    """
    lo, hi, lo_open, hi_open = _bounds(gt, ge, lt, le)
    cond = _interval(lo, hi, lo_open, hi_open)
    return Constraint(
        f"an integer {cond}".rstrip(),
        _is_int,
        lambda v: _in_bounds(v, lo, hi, lo_open, hi_open),
        type_fix=_int_type_fix,
        value_fix=lambda v: f"Pass an integer {cond}." if cond else "Pass another integer.",
    )


def one_of(*choices: Any) -> Constraint:
    """One of ``choices`` (compared with ``==``; a wrong type is a wrong value here).

    Examples
    --------
    >>> one_of("l2", "linf").expected
    "one of 'l2', 'linf'"
    """
    names = ", ".join(repr(c) for c in choices)

    def value_ok(v: Any) -> bool:
        try:
            return any(v == c and type(v) is not bool for c in choices)
        except Exception:  # noqa: BLE001 - arrays and tensors compare elementwise
            return False

    def value_fix(v: Any) -> str:
        strings = [c for c in choices if isinstance(c, str)]
        if isinstance(v, str) and strings:
            close = difflib.get_close_matches(v.lower(), strings, n=1, cutoff=0.6)
            if close:
                return f"Did you mean {close[0]!r}?"
        return "Pass one of the listed values."

    return Constraint(f"one of {names}", lambda v: True, value_ok, value_fix=value_fix)


def any_of(*constraints: Constraint) -> Constraint:
    """A value meeting at least one of ``constraints`` (e.g. a number or a rule name).

    A value no alternative accepts the type of is a wrong type; otherwise a wrong value.

    Examples
    --------
    >>> any_of(real(gt=0), one_of("scott", "silverman")).expected
    "a finite number > 0 or one of 'scott', 'silverman'"
    """

    def value_ok(v: Any) -> bool:
        return any(c.failure(v) is None for c in constraints)

    def value_fix(v: Any) -> str:
        fitting = [c for c in constraints if c.type_ok(v)]
        return fitting[0].value_fix(v) if len(fitting) == 1 else "Pass one of the alternatives."

    return Constraint(
        " or ".join(c.expected for c in constraints),
        lambda v: any(c.type_ok(v) for c in constraints),
        value_ok,
        type_fix=constraints[0].type_fix,
        value_fix=value_fix,
        allow_none=any(c.allow_none for c in constraints),
    )


BOOL = Constraint(
    "True or False",
    lambda v: isinstance(v, bool | np.bool_),
    type_fix=lambda v: f"Pass True or False, not a {type(v).__name__}.",
)
"""A bool (Python or NumPy); 0, 1 and strings are rejected."""

STRING = Constraint(
    "a string",
    lambda v: isinstance(v, str),
    lambda v: bool(v.strip()),
    type_fix=lambda v: f"Pass a str, not a {type(v).__name__}.",
    value_fix=lambda v: "Pass a non-empty name.",
)
"""A non-empty string."""

CALLABLE = Constraint(
    "callable",
    callable,
    type_fix=lambda v: f"Pass a function or an object with __call__, not a {type(v).__name__}.",
)
"""A callable (a function, a module, an object with ``__call__``)."""

BOUNDS = Constraint(
    "a pair (low, high) of finite numbers with low < high",
    lambda v: isinstance(v, tuple | list) and len(v) == 2 and all(_is_real(b) for b in v),
    lambda v: math.isfinite(_as_float(v[0])) and math.isfinite(_as_float(v[1])) and v[0] < v[1],
    type_fix=lambda v: "Pass a tuple such as (0.0, 1.0).",
    value_fix=lambda v: "Order the pair as (low, high), e.g. (0.0, 1.0) for images in [0, 1].",
)
"""The admissible input range ``(low, high)`` of attacks and input-space functions."""

POSITIVE = real(gt=0)
NON_NEGATIVE = real(ge=0)
FINITE = real()
POSITIVE_INT = integer(ge=1)
NON_NEGATIVE_INT = integer(ge=0)


def satisfies(value: Any, constraint: Constraint) -> bool:
    """Whether ``value`` meets ``constraint`` (no exception)."""
    return constraint.failure(value) is None


def param_error(owner: str, name: str, value: Any, expected: str, fix: str,
                kind: type[Exception] = ValueError) -> Exception:
    """The exception of the one template, for checks :class:`Constraint` cannot express.

    ``"<owner>: <name> must be <expected>; got <value!r>. <fix>"``, an instance of
    ``kind`` (ValueError, or :class:`~fisherscope.exceptions.ParameterTypeError`).
    """
    fix = f" {fix}" if fix else ""
    return kind(f"{owner}: {name} must be {expected}; got {_short_repr(value)}.{fix}")


def check_param(owner: str, name: str, value: T, constraint: Constraint, *,
                fix: str | None = None) -> T:
    """Check one hyperparameter; returns ``value`` unchanged.

    Parameters
    ----------
    owner : str
        The class or function the parameter belongs to (``"PGD"``, ``"fisher_spectrum"``).
    name : str
        The parameter's name as the caller spells it.
    value
        What arrived.
    constraint : Constraint
        What it must be.
    fix : str, optional
        A specific fix sentence replacing the constraint's generic one.

    Raises
    ------
    ParameterTypeError
        Wrong type (a TypeError and a ValueError).
    ValueError
        Right type, inadmissible value.

    Examples
    --------
    >>> check_param("PGD", "steps", 10, POSITIVE_INT)
    10
    >>> check_param("PGD", "steps", 0, POSITIVE_INT)
    Traceback (most recent call last):
    ...
    ValueError: PGD: steps must be an integer >= 1; got 0. Pass an integer >= 1.
    """
    kind = constraint.failure(value)
    if kind is None:
        return value
    text = fix if fix is not None else constraint.fix_for(value, kind)
    raise param_error(owner, name, value, constraint.expected, text, kind)


def check_params(owner: str, values: Mapping[str, Any] | Any,
                 spec: Mapping[str, Constraint]) -> None:
    """Check several hyperparameters at once, in the order of ``spec``.

    ``values`` is a mapping name -> value, or an object whose attributes are read (a
    dataclass in ``__post_init__``, an estimator in ``fit``).

    Examples
    --------
    >>> check_params("MyAttack", {"eps": 0.1, "steps": 5}, {"eps": NON_NEGATIVE, "steps": POSITIVE_INT})
    """
    for name, constraint in spec.items():
        value = values[name] if isinstance(values, Mapping) else getattr(values, name)
        check_param(owner, name, value, constraint)


def user_stacklevel() -> int:
    """The ``stacklevel`` for :func:`warnings.warn` that points at the first frame outside
    fisherscope: the user's line, however deep inside the package the warning is raised
    (frames of generated dataclass ``__init__`` s count as fisherscope's: their globals are;
    so do the frames of ``contextlib``, ``functools`` and ``torch.no_grad`` wrappers)."""
    import sys

    def internal(name: str) -> bool:
        return name.startswith("fisherscope") or name in ("contextlib", "functools", "torch.utils._contextlib")

    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and internal(str(frame.f_globals.get("__name__", ""))):
        frame, level = frame.f_back, level + 1
    return level


#: ids of the models already warned about inside the current :func:`one_mode_warning` block
_MODE_WARNED: contextvars.ContextVar[set[int] | None] = contextvars.ContextVar("fisherscope_mode_warned",
                                                                              default=None)


@contextlib.contextmanager
def one_mode_warning() -> Iterator[None]:
    """Inside this block :func:`eval_mode` warns at most once per model.

    Public functions that put a model in eval mode several times one after the other
    (an attack's ``run``: the attack, then the forward at ``x_adv``; a transfer matrix:
    every source and target model) wrap their body in it, so a model in training mode
    gets one :class:`ModelModeWarning` per call, not one per internal step. Nested
    blocks share the outermost one's record.
    """
    if _MODE_WARNED.get() is not None:
        yield
        return
    token = _MODE_WARNED.set(set())
    try:
        yield
    finally:
        _MODE_WARNED.reset(token)


def warns_once(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: run ``fn`` inside :func:`one_mode_warning`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with one_mode_warning():
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def eval_mode(model: nn.Module, *, warn: bool = True) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode and restore every module's own mode afterwards.

    Warns with :class:`ModelModeWarning` when any module was in training mode on entry
    (BatchNorm statistics and dropout change the result), once per model inside a
    :func:`one_mode_warning` block. The per-module state, not just the top-level flag,
    is restored, even if the body raises.
    """
    modes = [(m, m.training) for m in model.modules()]
    seen = _MODE_WARNED.get()
    if warn and seen is not None and id(model) in seen:
        warn = False
    if warn and any(training for _, training in modes):
        if seen is not None:
            seen.add(id(model))
        warnings.warn(
            "model was in training mode; it is run in eval mode (BatchNorm running "
            "statistics, dropout off) and its previous mode is restored afterwards. "
            "Call model.eval() to silence this warning.",
            ModelModeWarning,
            stacklevel=user_stacklevel(),
        )
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
