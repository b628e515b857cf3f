"""The main job: ``fisherscope demo`` — a one-command tour of the toolkit on digits.

It runs offline on scikit-learn's bundled digits. Each capability adds a section to
:data:`DEMO_SECTIONS`; the demo runs them in order against the same trained model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..plotting import confusion_matrix_figure, image_grid
from .base import Context, register
from .common import load_split, predict, trained_model
from .report import Block, Figure, Heading, Paragraph, Table, save_figure
from .runner import Run

__all__ = ["DemoConfig", "DemoState", "DEMO_SECTIONS", "add_demo_section", "run_demo"]


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
    """What the sections share: the config, the trained model and the test split."""

    config: DemoConfig
    context: Context
    trained: Any
    test: Any
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> Any:
        return self.trained.model


def _accuracy_section(run: Run, state: DemoState) -> list[Block]:
    cfg, trained, test = state.config, state.trained, state.test

    def measure_model() -> dict[str, Any]:
        m = trained.metrics
        return {
            "train_accuracy": m["train_accuracy"],
            "test_accuracy": m["test_accuracy"],
            "train_wall_time_s": m["wall_time_s"],
            "epochs": trained.config["epochs"],
            "n_parameters": sum(p.numel() for p in trained.model.parameters()),
            "checkpoint_key": trained.key,
        }

    def measure_test() -> dict[str, Any]:
        pred = predict(trained.model, test.x)
        y = test.y.numpy()
        k = test.num_classes
        cm = np.zeros((k, k), dtype=int)
        np.add.at(cm, (y, pred), 1)
        rng = np.random.default_rng(cfg.seed)
        idx = np.sort(rng.choice(len(y), size=min(cfg.n_examples, len(y)), replace=False))
        return {
            "accuracy": float((pred == y).mean()),
            "n_test": int(len(y)),
            "per_class_accuracy": (cm.diagonal() / cm.sum(1).clip(min=1)).tolist(),
            "confusion_matrix": cm.tolist(),
            "example_indices": idx.tolist(),
            "example_predictions": pred[idx].tolist(),
        }

    model_res = run.cell("model", measure_model)
    test_res = run.cell("test", measure_test)

    idx = test_res["example_indices"]
    preds = test_res["example_predictions"]
    truth = test.y[idx].tolist()
    fig = image_grid(
        test.x[idx],
        [f"true {test.classes[t]}, pred {test.classes[p]}" for p, t in zip(preds, truth, strict=True)],
        title_colors=["green" if p == t else "red" for p, t in zip(preds, truth, strict=True)],
        ncols=8,
    )
    grid_path = save_figure(fig, run.figures_dir / "test_examples.png")
    cm_path = save_figure(
        confusion_matrix_figure(np.array(test_res["confusion_matrix"]), test.classes,
                                title=f"{cfg.arch} on {cfg.dataset} test"),
        run.figures_dir / "confusion_matrix.png",
    )
    per_class = test_res["per_class_accuracy"]
    return [
        Heading("Model and accuracy"),
        Paragraph(
            f"`{cfg.arch}` trained on `{cfg.dataset}` ({len(test)} test images of shape "
            f"{tuple(test.x.shape[1:])}, {test.num_classes} classes), seed {cfg.seed}; "
            f"checkpoint `{model_res['checkpoint_key'][:12]}` from the content-addressed cache."
        ),
        Table(
            ["quantity", "value"],
            [
                ["train accuracy", model_res["train_accuracy"]],
                ["test accuracy", test_res["accuracy"]],
                ["epochs", model_res["epochs"]],
                ["parameters", model_res["n_parameters"]],
                ["training wall time (s)", model_res["train_wall_time_s"]],
            ],
        ),
        Table(["class", *test.classes], [["test accuracy", *per_class]], caption="Per-class test accuracy"),
        Figure(grid_path, "Random test images with the model's prediction (green: correct, red: wrong), "
               "drawn on the fixed range [0, 1]."),
        Figure(cm_path, "Confusion matrix on the test split."),
    ]


DemoSection = Callable[[Run, DemoState], list[Block]]
#: Sections of the demo report, in order. Capabilities add theirs with add_demo_section.
DEMO_SECTIONS: list[DemoSection] = [_accuracy_section]
_ORDER: dict[DemoSection, float] = {_accuracy_section: 0.0}


def add_demo_section(section: DemoSection, order: float) -> DemoSection:
    """Add a section to the demo report at position ``order`` (the accuracy section is 0;
    attack 10–20, inspect 30, detect 40, defend 50), whatever the import order."""
    _ORDER[section] = order
    if section not in DEMO_SECTIONS:
        DEMO_SECTIONS.append(section)
    DEMO_SECTIONS.sort(key=lambda s: _ORDER.get(s, float("inf")))
    return section


@register("demo", DemoConfig, "The one-command tour of fisherscope on digits (the main job).")
def run_demo(run: Run, cfg: DemoConfig, ctx: Context) -> list[Block]:
    trained = trained_model(cfg.arch, cfg.dataset, ctx, seed=cfg.seed)
    state = DemoState(cfg, ctx, trained, load_split(cfg.dataset, "test", ctx))
    blocks: list[Block] = [
        Paragraph(
            "fisherscope makes the Fisher information a working instrument for adversarial "
            "robustness: attack, detect, defend and inspect. This report is produced by "
            "`fisherscope demo`; every number below is stored in `results.jsonl` beside it."
        )
    ]
    for section in DEMO_SECTIONS:
        blocks.extend(section(run, state))
    return blocks
