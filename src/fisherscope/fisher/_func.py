"""``torch.func.vjp`` / ``jvp`` with the return types this package uses (no ``has_aux``).

torch's stubs type both as returning a tuple of two *or three* items (the third only with
``has_aux=True``), so every ``out, fn = vjp(...)`` fails the type check; these wrappers
state the two-item form once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def vjp(fn: Callable[..., Any], *primals: Any) -> tuple[Any, Callable[..., Any]]:
    """``(fn(*primals), vjp_fn)``, as :func:`torch.func.vjp`."""
    res = torch.func.vjp(fn, *primals)
    return res[0], res[1]


def jvp(fn: Callable[..., Any], primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> tuple[Any, Any]:
    """``(fn(*primals), J · tangents)``, as :func:`torch.func.jvp`."""
    res = torch.func.jvp(fn, primals, tangents)
    return res[0], res[1]
