"""The experiment registry and the context every experiment receives."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._progress import show_progress, stage
from .._registry import Registry
from .config import config_from_dict, config_to_dict, read_toml
from .report import Block
from .runner import Results, Run

__all__ = ["Context", "Experiment", "EXPERIMENTS", "register", "load_config", "parse_overrides"]


@dataclass(frozen=True)
class Context:
    """Where an experiment finds data and caches, and how chatty it is.

    ``progress``: True shows the progress of cells, training, attacks and the report (rich
    bars on a terminal's stderr, log lines otherwise; the CLI's default); False silences it;
    None (default) follows an enclosing ``with fisherscope.show_progress():`` and is silent
    without one, so a Python caller opts in.
    """

    data_dir: Path | None = None
    cache_dir: Path | None = None
    progress: bool | None = None
    device: str | None = None


@dataclass(frozen=True)
class Experiment:
    """A kind of experiment: its config dataclass, its cells and its report.

    ``cells(run, config, context)`` computes what is missing through ``run.cell`` (pure
    compute: models, attacks, features; no tables, no figures). ``report(config, results)``
    builds the report blocks from the stored :class:`~fisherscope.experiments.runner.Results`
    only: it never loads a model or a dataset and never runs an attack, so a report can be
    re-rendered from a run directory alone (``fisherscope report RUN``).
    """

    kind: str
    spec: type
    cells: Callable[..., Any]
    description: str
    report: Callable[[Any, Results], list[Block]]


EXPERIMENTS: Registry[Experiment] = Registry("EXPERIMENTS")


def register(
    kind: str, spec: type, description: str, *, report: Callable[[Any, Results], list[Block]],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding an experiment's cells function to :data:`EXPERIMENTS`.

    ``report`` is the pure function rendering the stored results (see :class:`Experiment`).
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if kind in EXPERIMENTS:
            raise ValueError(f"experiment kind {kind!r} is already registered")
        for required in ("name", "kind", "seed"):
            if required not in {f.name for f in dataclasses.fields(spec)}:
                raise TypeError(f"config class {spec.__name__} needs a {required!r} field")
        EXPERIMENTS[kind] = Experiment(kind, spec, fn, description, report)
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

    def step(node: Any, part: str, i: int) -> Any:
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit():
                raise ValueError(
                    f"override {dotted!r}: {'.'.join(parts[:i]) or 'the config'} is a list of "
                    f"{len(node)} entries, so {where!r} needs an index 0..{len(node) - 1}, not {part!r}."
                )
            idx = int(part)
            if not 0 <= idx < len(node):
                raise ValueError(
                    f"override {dotted!r}: {'.'.join(parts[:i])} has {len(node)} entries "
                    f"(indices 0..{len(node) - 1}); got index {idx}."
                )
            return idx
        if not isinstance(node, dict):
            prefix = ".".join(parts[:i])
            raise ValueError(
                f"override {dotted!r}: {prefix} holds a {type(node).__name__} value, not a "
                f"table, so it has no key {part!r}. Set {prefix} itself (--set {prefix}=...)."
            )
        return part

    for i, part in enumerate(parts[:-1]):
        key = step(node, part, i)
        if isinstance(node, dict) and key not in node:
            raise ValueError(
                f"override {dotted!r}: no key {'.'.join(parts[:i + 1])!r} in the config "
                f"(keys there: {sorted(node)})."
            )
        node = node[key]
    node[step(node, parts[-1], len(parts) - 1)] = value


def load_config(source: str | Path | dict[str, Any], overrides: Sequence[str] = ()) -> Any:
    """Parse a config (TOML path or dict) into its kind's dataclass, strictly."""
    if isinstance(source, dict):
        data, where = dict(source), "config"
    else:
        data, where = read_toml(source), str(source)
    for key, value in parse_overrides(overrides).items():
        _apply_override(data, key, value)
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in EXPERIMENTS:
        import difflib

        close = difflib.get_close_matches(str(kind).lower(), sorted(EXPERIMENTS), n=1, cutoff=0.6)
        fix = f"Did you mean {close[0]!r}?" if close else "Set kind to one of them."
        raise ValueError(
            f"{where}: 'kind' must be one of {sorted(EXPERIMENTS)}; got {kind!r}. {fix}"
        )
    return config_from_dict(EXPERIMENTS[kind].spec, data, where=where)


def run_experiment(config: Any, out_dir: str | Path = "runs", *, resume: bool | str | Path = False,
                   context: Context | None = None) -> Run:
    """Run (or resume) ``config``: compute its missing cells, then write its report.

    Launched by ``torchrun`` (see :mod:`fisherscope.distributed`), every rank calls this
    with the same arguments: the ranks share one run directory and results store, each
    computes its share of the cells, and rank 0 renders the report once every cell is stored.

    Progress (cells, training, attacks over batches, report) is shown as
    :func:`fisherscope.show_progress` shows it when ``context.progress`` is True (or None
    inside an enclosing ``show_progress``); under torchrun only rank 0 shows it.
    """
    from contextlib import nullcontext

    from .. import distributed

    exp = EXPERIMENTS[config.kind]
    context = context or Context()
    world = distributed.world()
    if world.distributed:
        distributed.init(context.device)
        context = dataclasses.replace(context, device=distributed.device_for(context.device, world),
                                      progress=context.progress if world.is_main else False)
    with nullcontext() if context.progress is None else show_progress(context.progress):
        run = Run(config, out_dir, resume=resume, world=world)
        exp.cells(run, config, context)
        if not world.is_main:
            return run
        run.wait_for_pending()
        _render(exp, config, run.view(), run.dir)
    return run


def _data_caveat(config: Any) -> list[Any]:
    """A first paragraph for reports on a dataset the registry flags with a note (an
    approximation such as ``cifar10_jpeg``): its label and what it is, above every table."""
    from ..data.registry import get_spec
    from .report import Paragraph

    name = getattr(config, "dataset", None)
    spec = get_spec(name) if isinstance(name, str) else None
    if spec is None or not spec.note:
        return []
    return [Paragraph(f"Data: {spec.display_name} (dataset `{spec.name}`), {spec.note}.")]


def _render(exp: Experiment, config: Any, results: Results, run_dir: Path) -> None:
    from .report import render_report

    with stage(f"{config.name}: report", keep=True):
        render_report([*_data_caveat(config), *exp.report(config, results)], run_dir,
                      title=f"fisherscope — {config.name}", provenance=results.provenance())


def stored_config(run_dir: str | Path) -> Any:
    """The resolved config a run directory was made with (from its ``config.json``)."""
    import json

    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{run_dir} has no config.json, so it is not a run directory made by fisherscope "
            "(or the file was deleted). Pass a directory under runs/, or re-run the config."
        )
    data = json.loads(path.read_text(encoding="utf-8"))["config"]
    return load_config(data)


def render_stored(run_dir: str | Path) -> Path:
    """Re-render the report of ``run_dir`` from its stored results alone (no model, no data).

    Raises ``KeyError`` naming the missing cell when the run did not finish.
    """
    from .config import config_hash

    run_dir = Path(run_dir)
    config = stored_config(run_dir)
    exp = EXPERIMENTS[config.kind]
    results = Results.open(run_dir)
    foreign = results.store.hashes() - {config_hash(config)}
    if foreign:
        from .store import StoreError

        raise StoreError(
            f"{run_dir}/results.jsonl holds records of other configs (hashes {sorted(foreign)}); "
            "it was mixed with another run's results and cannot be rendered as one report."
        )
    _render(exp, config, results, run_dir)
    return run_dir / "report.html"


__all__ += ["render_stored", "run_experiment", "stored_config", "config_to_dict"]
