"""The experiment registry and the context every experiment receives."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._registry import Registry
from .config import config_from_dict, config_to_dict, read_toml
from .report import Block
from .runner import Run

__all__ = ["Context", "Experiment", "EXPERIMENTS", "register", "load_config", "parse_overrides"]


@dataclass(frozen=True)
class Context:
    """Where an experiment finds data and caches, and how chatty it is."""

    data_dir: Path | None = None
    cache_dir: Path | None = None
    progress: bool = True
    device: str | None = None


@dataclass(frozen=True)
class Experiment:
    """A kind of experiment: its config dataclass and the function that runs it.

    ``run(run, config, context)`` computes what is missing through ``run.cell`` and
    returns the report blocks built from the stored results.
    """

    kind: str
    spec: type
    run: Callable[[Run, Any, Context], list[Block]]
    description: str


EXPERIMENTS: Registry[Experiment] = Registry("EXPERIMENTS")


def register(kind: str, spec: type, description: str) -> Callable[[Callable[..., list[Block]]], Callable[..., list[Block]]]:
    """Decorator adding an experiment function to :data:`EXPERIMENTS`."""

    def deco(fn: Callable[..., list[Block]]) -> Callable[..., list[Block]]:
        if kind in EXPERIMENTS:
            raise ValueError(f"experiment kind {kind!r} is already registered")
        for required in ("name", "kind", "seed"):
            if required not in {f.name for f in dataclasses.fields(spec)}:
                raise TypeError(f"config class {spec.__name__} needs a {required!r} field")
        EXPERIMENTS[kind] = Experiment(kind, spec, fn, description)
        return fn

    return deco


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["seed=3", "models.0.epochs=2"]`` -> nested dict updates (values via literal_eval)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. seed=3).")
        key, raw = item.split("=", 1)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key.strip()] = value
    return out


def _apply_override(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[int(part)]
        else:
            if part not in node:
                raise ValueError(f"override {dotted!r}: no key {'.'.join(parts[:i + 1])!r} in the config.")
            node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def load_config(source: str | Path | dict[str, Any], overrides: Sequence[str] = ()) -> Any:
    """Parse a config (TOML path or dict) into its kind's dataclass, strictly."""
    if isinstance(source, dict):
        data, where = dict(source), "config"
    else:
        data, where = read_toml(source), str(source)
    for key, value in parse_overrides(overrides).items():
        _apply_override(data, key, value)
    kind = data.get("kind")
    if kind not in EXPERIMENTS:
        raise ValueError(
            f"{where}: 'kind' must be one of {sorted(EXPERIMENTS)}; got {kind!r}."
        )
    return config_from_dict(EXPERIMENTS[kind].spec, data, where=where)


def run_experiment(config: Any, out_dir: str | Path = "runs", *, resume: bool | str | Path = False,
                   context: Context | None = None) -> Run:
    """Run (or resume) ``config`` and write its report; returns the :class:`Run`."""
    from .report import render_report

    exp = EXPERIMENTS[config.kind]
    run = Run(config, out_dir, resume=resume)
    blocks = exp.run(run, config, context or Context())
    render_report(blocks, run.dir, title=f"fisherscope — {config.name}")
    return run


__all__ += ["run_experiment", "config_to_dict"]
