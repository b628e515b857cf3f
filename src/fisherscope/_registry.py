"""The one registry type behind ``MODELS``, ``DATASETS``, ``ATTACKS``, ``DETECTORS``,
``FEATURES`` and ``EXPERIMENTS``.

A :class:`Registry` is a ``dict`` (name -> entry) that

- names itself, so a failed lookup says which registry it was, the key asked for, the
  close matches and every valid key (:class:`RegistryKeyError`, a ``KeyError``);
- refuses a second :meth:`~Registry.register` of the same key, and checks every entry
  against its ``validate`` function when it goes in (so a malformed entry fails at import,
  not at first use);
- gives each entry a one-line description (:meth:`~Registry.describe`) for ``fisherscope list``.

Plain item assignment (``reg[key] = value``) still works for an existing key: it is how
tests swap an entry for a while (``monkeypatch.setitem``); the value is validated all the
same. This module imports nothing from the package, so every other module can use it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "RegistryKeyError", "first_doc_line"]

V = TypeVar("V")


def first_doc_line(obj: Any) -> str:
    """The first non-empty line of ``obj.__doc__`` ("" if it has none)."""
    doc = getattr(obj, "__doc__", None) or ""
    for line in doc.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _default_description(value: Any) -> str:
    desc = getattr(value, "description", None)
    if isinstance(desc, str) and desc:
        return desc
    return first_doc_line(value)


class RegistryKeyError(KeyError):
    """A key that is not in a :class:`Registry`; the message lists close matches and all valid keys.

    Attributes
    ----------
    registry : str
        The registry's name (e.g. ``"ATTACKS"``).
    key : Any
        The key that was looked up.
    valid : list of str
        The registry's keys, sorted.
    close : list of str
        The valid keys closest to ``key`` (:func:`difflib.get_close_matches`), best first.
    """

    def __init__(self, registry: str, key: Any, valid: Iterable[str]) -> None:
        self.registry = registry
        self.key = key
        self.valid = sorted(valid)
        self.close = difflib.get_close_matches(str(key), self.valid, n=3, cutoff=0.6)
        quoted = [repr(c) for c in self.close]
        alternatives = ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else "".join(quoted)
        hint = f" Did you mean {alternatives}?" if self.close else ""
        listing = ", ".join(self.valid) if self.valid else "(none registered)"
        super().__init__(f"{registry} has no entry {key!r}.{hint} Valid keys: {listing}.")

    def __str__(self) -> str:  # KeyError's str() would repr-quote the whole message
        return str(self.args[0])


class Registry(dict[str, V], Generic[V]):
    """A named ``dict`` of string keys to entries, with validation and descriptions.

    Parameters
    ----------
    name : str
        How the registry is called in messages, e.g. ``"ATTACKS"``.
    validate : callable, optional
        ``validate(key, value)`` raises ``TypeError`` / ``ValueError`` for an entry that
        does not meet the registry's contract; called on every insertion.
    describe : callable, optional
        ``describe(value) -> str``, the one-line description of an entry when
        :meth:`register` was given none. Default: the entry's ``description`` attribute
        if it is a string, else the first line of its docstring.

    Examples
    --------
    >>> reg = Registry("COLOURS")
    >>> reg.register("red", 0xFF0000, description="pure red")
    16711680
    >>> reg["rde"]
    Traceback (most recent call last):
    ...
    fisherscope._registry.RegistryKeyError: COLOURS has no entry 'rde'. Did you mean 'red'? Valid keys: red.
    """

    def __init__(
        self,
        name: str,
        entries: Mapping[str, V] | None = None,
        *,
        validate: Callable[[str, V], None] | None = None,
        describe: Callable[[V], str] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self._validate = validate
        self._describe = describe
        self._descriptions: dict[str, str] = {}
        for key, value in (entries or {}).items():
            self.register(key, value)

    # ------------------------------------------------------------- registering
    def register(self, key: str, value: V, *, description: str | None = None) -> V:
        """Add ``value`` under ``key`` (validated); a key already present is an error.

        Returns ``value``, so it can end a class or function definition.
        """
        if isinstance(key, str) and key in self:
            raise ValueError(
                f"{self.name}[{key!r}] is already registered (to {self[key]!r}); pick another "
                f"key, or delete the entry first (del {self.name}[{key!r}]) to replace it."
            )
        if description is not None and (not isinstance(description, str) or "\n" in description.strip()):
            raise ValueError(f"{self.name}[{key!r}]: description must be a one-line string; got {description!r}.")
        self[key] = value
        if description is not None:
            self._descriptions[key] = description.strip()
        return value

    def __setitem__(self, key: str, value: V) -> None:
        if not isinstance(key, str) or not key:
            raise TypeError(f"{self.name} keys must be non-empty strings; got {key!r}.")
        if self._validate is not None:
            self._validate(key, value)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise RegistryKeyError(self.name, key, self.keys())
        super().__delitem__(key)
        self._descriptions.pop(key, None)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Assign every item through :meth:`__setitem__` (validated)."""
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: str, default: V) -> V:
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other: Any) -> Registry[V]:  # type: ignore[override,misc]
        self.update(other)
        return self

    # ---------------------------------------------------------------- looking up
    def __missing__(self, key: Any) -> V:
        raise RegistryKeyError(self.name, key, self.keys())

    def pop(self, key: str, *default: Any) -> Any:
        if key not in self and not default:
            raise RegistryKeyError(self.name, key, self.keys())
        self._descriptions.pop(key, None)
        return super().pop(key, *default)

    def describe(self, key: str) -> str:
        """The one-line description of ``self[key]``."""
        value = self[key]
        if key in self._descriptions:
            return self._descriptions[key]
        return (self._describe or _default_description)(value)

    def descriptions(self) -> Iterator[tuple[str, str]]:
        """``(key, description)`` for every entry, in registration order."""
        for key in self:
            yield key, self.describe(key)

    # ------------------------------------------------------------------ plumbing
    def copy(self) -> Registry[V]:
        out: Registry[V] = Registry(self.name, validate=self._validate, describe=self._describe)
        dict.update(out, self)
        out._descriptions = dict(self._descriptions)
        return out

    def __reduce__(self) -> Any:
        return (_rebuild, (self.name, dict(self), self._validate, self._describe, dict(self._descriptions)))

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {dict.__repr__(self)})"


def _rebuild(name: str, entries: dict[str, Any], validate: Any, describe: Any, descriptions: dict[str, str]) -> Registry:
    out: Registry = Registry(name, validate=validate, describe=describe)
    dict.update(out, entries)
    out._descriptions = descriptions
    return out
