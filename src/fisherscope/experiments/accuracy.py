"""``model-accuracy``: train (or load) the papers' models and tabulate their accuracy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import Context, register
from .common import trained_model
from .report import Block, Heading, Paragraph, Table
from .runner import Results, Run

__all__ = ["ModelAccuracyConfig", "ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    """One row of the accuracy table."""

    arch: str
    dataset: str
    preset: str | None = None
    label: str | None = None
    min_test_accuracy: float | None = None
    max_test_accuracy: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def row_name(self) -> str:
        return self.label or (self.preset or self.arch)


@dataclass(frozen=True)
class ModelAccuracyConfig:
    name: str
    kind: str = "model_accuracy"
    seed: int = 0
    description: str = ""
    models: list[ModelSpec] = field(default_factory=list)


def _cell_spec(cfg: ModelAccuracyConfig, spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    """The cell of one row: its name and everything that decides the model, so two rows
    that differ only in their overrides (or preset) never share a cell."""
    return f"{spec.row_name}@{spec.dataset}", {
        "arch": spec.arch, "dataset": spec.dataset, "preset": spec.preset,
        "overrides": spec.overrides, "seed": cfg.seed,
    }


def model_accuracy_cells(run: Run, cfg: ModelAccuracyConfig, ctx: Context) -> None:
    for spec in cfg.models:
        def measure(spec: ModelSpec = spec) -> dict[str, Any]:
            trained = trained_model(spec.arch, spec.dataset, ctx, seed=cfg.seed,
                                    preset=spec.preset, overrides=spec.overrides)
            m = trained.metrics
            return {
                "train_accuracy": m["train_accuracy"],
                "test_accuracy": m["test_accuracy"],
                "train_wall_time_s": m["wall_time_s"],
                "epochs": trained.config["epochs"],
                "checkpoint_key": trained.key,
                "from_cache": trained.from_cache,
            }

        name, cell_spec = _cell_spec(cfg, spec)
        run.cell(name, measure, spec=cell_spec)


def model_accuracy_report(cfg: ModelAccuracyConfig, results: Results) -> list[Block]:
    rows = []
    for spec in cfg.models:
        res = results.cell(*_cell_spec(cfg, spec))
        target = []
        if spec.min_test_accuracy is not None:
            target.append(f">= {spec.min_test_accuracy:.3f}")
        if spec.max_test_accuracy is not None:
            target.append(f"<= {spec.max_test_accuracy:.3f}")
        ok = (spec.min_test_accuracy is None or res["test_accuracy"] >= spec.min_test_accuracy) and (
            spec.max_test_accuracy is None or res["test_accuracy"] <= spec.max_test_accuracy
        )
        rows.append([
            spec.row_name, spec.arch, spec.dataset, res["epochs"], res["train_accuracy"],
            res["test_accuracy"], " and ".join(target) or "–", "yes" if ok else "NO",
            res["train_wall_time_s"],
        ])
    return [
        Heading("Model accuracy"),
        Paragraph(cfg.description or "Train and test accuracy of each model."),
        Table(
            ["model", "arch", "dataset", "epochs", "train acc", "test acc", "target", "met",
             "train time (s)"],
            rows,
        ),
    ]


register("model_accuracy", ModelAccuracyConfig,
         "Train the papers' models and tabulate train/test accuracy.",
         report=model_accuracy_report)(model_accuracy_cells)
