"""The experiment kit: everything a paper module or a demo section builds on.

A paper module (``zhao.py``, ``shen.py``, ...) imports from this kit and from the library
packages (``fisherscope.attacks``, ``.evaluation``, ...) only, never from another paper
module; ``tests/test_experiment_shape.py`` enforces it. The shape of an experiment:

- a frozen config dataclass (``name``, ``kind``, ``seed`` plus its own fields),
- ``cells(run, cfg, ctx)``: pure compute through ``run.cell(name, fn, spec=...)``; each cell's
  key is derived from its full resolved spec; arrays go in :class:`Artifact` values,
- ``report(cfg, results)``: builds :data:`Block` s (tables, figures drawn from stored values
  and artifacts) from a :class:`Results` view; it never loads a model or a dataset and never
  runs an attack, so ``fisherscope report RUN`` re-renders any finished run,
- ``register(kind, Config, description, report=report)(cells)``.

The demo is one experiment made of :class:`DemoSection` s (cells + report each) that
capability modules add with :func:`add_demo_section`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .base import Context, register
from .common import (
    correct_draw,
    dataset_phrase,
    in_batches,
    inspect_maps,
    load_split,
    predict,
    saliency_rows,
    select_samples,
    trained_model,
)
from .report import Block, Figure, Heading, Paragraph, Table, save_figure
from .runner import Artifact, Results, Run, cell_key

__all__ = [
    "Artifact",
    "Block",
    "Context",
    "DEMO_SECTIONS",
    "DemoConfig",
    "DemoSection",
    "DemoState",
    "Figure",
    "Heading",
    "Paragraph",
    "Results",
    "Run",
    "Table",
    "add_demo_section",
    "cell_key",
    "correct_draw",
    "dataset_phrase",
    "in_batches",
    "inspect_maps",
    "load_split",
    "predict",
    "register",
    "saliency_rows",
    "save_figure",
    "select_samples",
    "trained_model",
]


@dataclass(frozen=True)
class DemoConfig:
    """Configuration of the demo (defaults are the offline main job)."""

    name: str = "demo"
    kind: str = "demo"
    seed: int = 0
    description: str = "The fisherscope tour on scikit-learn's digits (offline)."
    dataset: str = "digits"
    arch: str = "digits_cnn"
    n_examples: int = 32


@dataclass
class DemoState:
    """What the sections' cells share: the config, the trained model and the test split."""

    config: DemoConfig
    context: Context
    trained: Any
    test: Any
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> Any:
        return self.trained.model


@dataclass(frozen=True)
class DemoSection:
    """One section of the demo report: its cells (compute) and its report (render).

    ``headline`` (optional) renders the section's key number for the top of the report,
    under the introduction, from the same stored results.
    """

    name: str
    order: float
    cells: Callable[[Run, DemoState], None]
    report: Callable[[DemoConfig, Results], list[Block]]
    headline: Callable[[DemoConfig, Results], list[Block]] | None = None


#: Sections of the demo report, in order. Capabilities add theirs with add_demo_section.
DEMO_SECTIONS: list[DemoSection] = []


def add_demo_section(section: DemoSection) -> DemoSection:
    """Add ``section`` to the demo (accuracy is at order 0; attack 10-20, inspect 30,
    detect 40, defend 50), whatever the import order; a name is added once."""
    if any(s.name == section.name for s in DEMO_SECTIONS):
        raise ValueError(f"a demo section named {section.name!r} is already registered")
    DEMO_SECTIONS.append(section)
    DEMO_SECTIONS.sort(key=lambda s: s.order)
    return section
