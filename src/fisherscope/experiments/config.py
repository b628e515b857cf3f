"""TOML experiment configs parsed into frozen dataclasses, unknown keys rejected.

A config file names its ``kind`` (a key of :data:`fisherscope.experiments.EXPERIMENTS`);
the kind's spec dataclass declares every other valid key. Nested tables and arrays of
tables map to nested dataclasses. Anything unknown is an error that lists the valid keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["config_from_dict", "config_hash", "config_to_dict", "read_toml", "to_toml"]

T = TypeVar("T")



@dataclass(frozen=True)
class ExperimentConfig:
    """The fields every paper config starts with (subclasses may change the defaults).

    ``name`` names the run, ``kind`` picks the registered experiment, ``seed`` seeds the
    sample draw, training and attacks, ``arch`` / ``dataset`` / ``preset`` the model
    (a :data:`~fisherscope.models.MODELS` name, a dataset name, a training preset).
    """

    name: str
    kind: str
    seed: int = 0
    description: str = ""
    arch: str = "lenet5"
    dataset: str = "mnist"
    preset: str | None = None


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; syntax errors name the file."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}. Fix the file there (the syntax: https://toml.io).") from exc


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors: list[Exception] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except (TypeError, ValueError) as exc:
                errors.append(exc)
        if len(errors) == 1:  # X | None: X's own message says more
            raise errors[0]
        raise TypeError(
            f"{where} must be one of the types {[_type_name(a) for a in args if a is not type(None)]}"
            f"{' or none' if type(None) in args else ''}; got {value!r}. Write a value of one of them."
        )
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where} must be one of {list(args)}; got {value!r}. Pick one of those.")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise TypeError(f"{where} must be an array; got {type(value).__name__} {value!r}. "
                            "Write it in brackets, e.g. [1, 2].")
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise TypeError(f"{where} must be a table; got {type(value).__name__}. "
                            "Write it as a [table] or an inline { key = value }.")
        return dict(value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise TypeError(f"{where} must be a table; got {type(value).__name__} {value!r}. "
                            "Write it as a [table] or an inline { key = value }.")
        return config_from_dict(tp, value, where=where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{where} must be a number; got {value!r}. Write a number without quotes, e.g. 0.5.")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where} must be an integer; got {value!r}. Write a whole number without quotes, "
                            "e.g. 3.")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where} must be true or false; got {value!r}. Write true or false (True or "
                            "False in --set).")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{where} must be a string; got {value!r}. Write it in quotes, e.g. \"name\" "
                            "(in --set: key='name').")
        return value
    return value


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"Unknown keys in {where}: {unknown}. Valid keys: {sorted(fields)}. Remove or rename them."
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"Missing required key {where}.{name} ({_type_name(hints[name])}). "
                             f"Add {name} = ... to the config.")
    return cls(**kwargs)


def config_to_dict(cfg: Any) -> Any:
    """Plain (JSON/TOML-ready) form of a config dataclass.

    A field declared with ``metadata={"omit_if_default": True}`` is left out while it holds
    its default, so adding such an option keeps the hashes (and the resumability) of the
    runs made before it existed.
    """
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                if not (f.metadata.get("omit_if_default") and getattr(cfg, f.name) == f.default)}
    if isinstance(cfg, list | tuple):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


def config_hash(cfg: Any) -> str:
    """Short sha256 of the canonical JSON of a resolved config."""
    blob = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(data: Mapping[str, Any]) -> str:
    """Write a (resolved) config dict as TOML: scalars first, then tables and arrays of tables."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for k, v in data.items():
        if v is None:
            continue
        if isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(i, dict) for i in v)):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in tables:
        items = v if isinstance(v, list) else [v]
        for item in items:
            lines.append("")
            lines.append(f"[[{k}]]" if isinstance(v, list) else f"[{k}]")
            for ik, iv in item.items():
                if iv is not None:
                    lines.append(f"{ik} = {_toml_value(iv)}")
    return "\n".join(lines) + "\n"
