"""The main job: ``fisherscope demo`` — a one-command tour of the toolkit on digits.

It runs offline on scikit-learn's bundled digits. Each capability adds a section to
:data:`DEMO_SECTIONS`; the demo runs them in order against the same trained model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._progress import track
from ..plotting import confusion_matrix_figure, image_grid
from .base import Context, register
from .common import load_split, predict, trained_model
from .kit import DEMO_SECTIONS, DemoConfig, DemoSection, DemoState, add_demo_section
from .report import Block, Figure, Heading, Paragraph, Table, pct, save_figure
from .runner import Artifact, Results, Run

__all__ = ["DemoConfig", "DemoState", "DEMO_SECTIONS", "add_demo_section", "demo_cells", "demo_report"]


def _accuracy_cells(run: Run, state: DemoState) -> None:
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
            "image_shape": list(test.x.shape[1:]),
            "classes": [str(c) for c in test.classes],
            "per_class_accuracy": (cm.diagonal() / cm.sum(1).clip(min=1)).tolist(),
            "confusion_matrix": cm.tolist(),
            "example_indices": idx.tolist(),
            "example_predictions": pred[idx].tolist(),
            "example_labels": y[idx].tolist(),
            "example_images": Artifact(test.x[idx]),
        }

    run.cell("model", measure_model)
    run.cell("test", measure_test)


def _accuracy_report(cfg: DemoConfig, results: Results) -> list[Block]:
    model_res, test_res = results.cell("model"), results.cell("test")
    classes = test_res["classes"]
    preds, truth = test_res["example_predictions"], test_res["example_labels"]
    fig = image_grid(
        test_res["example_images"],
        [f"true {classes[t]}, pred {classes[p]}" for p, t in zip(preds, truth, strict=True)],
        title_colors=["green" if p == t else "red" for p, t in zip(preds, truth, strict=True)],
        ncols=8,
    )
    grid_path = save_figure(fig, results.figures_dir / "test_examples.png")
    cm_path = save_figure(
        confusion_matrix_figure(np.array(test_res["confusion_matrix"]), classes,
                                title=f"{cfg.arch} on {cfg.dataset} test"),
        results.figures_dir / "confusion_matrix.png",
    )
    per_class = test_res["per_class_accuracy"]
    return [
        Heading("Model and accuracy"),
        Paragraph(
            f"`{cfg.arch}` trained on `{cfg.dataset}` ({test_res['n_test']} test images of shape "
            f"{tuple(test_res['image_shape'])}, {len(classes)} classes), seed {cfg.seed}; "
            f"checkpoint `{model_res['checkpoint_key'][:12]}` from the content-addressed cache."
        ),
        Table(
            ["quantity", "value"],
            [
                ["train accuracy %", pct(model_res["train_accuracy"])],
                ["test accuracy %", pct(test_res["accuracy"])],
                ["epochs", model_res["epochs"]],
                ["parameters", model_res["n_parameters"]],
                ["training wall time (s)", model_res["train_wall_time_s"]],
            ],
        ),
        Table(["class", *classes], [["test accuracy %", *[pct(v) for v in per_class]]],
              caption="Per-class test accuracy"),
        Figure(grid_path, "Random test images with the model's prediction (green: correct, red: wrong), "
               "drawn on the fixed range [0, 1]."),
        Figure(cm_path, "Confusion matrix on the test split."),
    ]


add_demo_section(DemoSection("accuracy", 0.0, _accuracy_cells, _accuracy_report))

_INTRO = (
    "fisherscope makes the Fisher information a working instrument for adversarial "
    "robustness: attack, detect, defend and inspect. This report is produced by "
    "`fisherscope demo`; every number below is stored in `results.jsonl` beside it. To get the same "
    "kind of report for your own model and data — clean accuracy and calibration, worst-case robust "
    "accuracy, minimal perturbations, the Fisher spectrum, detectors under adaptive attack — run "
    "`fisherscope audit --model pkg.module:factory --weights w.safetensors --data images/` "
    "(`fisherscope audit` alone audits this digits model)."
)


def demo_cells(run: Run, cfg: DemoConfig, ctx: Context) -> None:
    trained = trained_model(cfg.arch, cfg.dataset, ctx, seed=cfg.seed)
    state = DemoState(cfg, ctx, trained, load_split(cfg.dataset, "test", ctx))
    for section in DEMO_SECTIONS:
        section.cells(run, state)


def demo_report(cfg: DemoConfig, results: Results) -> list[Block]:
    blocks: list[Block] = [Paragraph(_INTRO)]
    for section in DEMO_SECTIONS:
        if section.headline is not None:
            blocks.extend(section.headline(cfg, results))
    for section in track(DEMO_SECTIONS, "demo report: sections (tables, figures)"):
        blocks.extend(section.report(cfg, results))
    return blocks


register("demo", DemoConfig, "The one-command tour of fisherscope on digits (the main job).",
         report=demo_report)(demo_cells)
