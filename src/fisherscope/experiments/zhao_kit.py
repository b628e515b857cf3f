"""What the Zhao et al. modules share (a kit module): their config, images and model facts.

:mod:`.zhao` (Table 2, Figures 1-4(a)) and :mod:`.zhao_detection` (Figure 4(b)) read
:class:`ZhaoConfig`; :func:`zhao_sources` draws their test images, :func:`data_spec` is
the part of every cell's spec that decides the model and the images, and
:func:`model_blurb` prints the stored model facts (:func:`.detection_kit.record_model`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .config import ExperimentConfig
from .kit import Context, Paragraph, dataset_phrase, load_split, select_samples, trained_model
from .report import fmt_number, pct

__all__ = ["ZhaoConfig", "data_spec", "model_blurb", "zhao_sources"]


@dataclass(frozen=True)
class ZhaoConfig(ExperimentConfig):
    """Shared config of the Zhao et al. reproductions (each kind reads what it needs)."""

    n_samples: int | None = None  # test images used (None: all)
    batch_size: int = 500
    hi: float = 6.0  # least-perturbation search interval [0, hi]
    tol: float = 1e-3
    attacks: list[str] = field(default_factory=lambda: ["fgm", "ossa"])
    budgets: list[float] = field(default_factory=lambda: [0.25 * i for i in range(25)])
    step_size: float = 0.05
    steps: int = 60
    eps: float = 2.0  # Figure 1 / Figure 4(a) budget
    n_examples: int = 16
    paper: dict[str, Any] = field(default_factory=dict)


def zhao_sources(cfg: ZhaoConfig, ctx: Context) -> tuple[Any, torch.Tensor, torch.Tensor, Any]:
    """(trained model, test images, labels, test split): ``cfg.n_samples`` random test images."""
    trained = trained_model(cfg.arch, cfg.dataset, ctx, seed=cfg.seed, preset=cfg.preset)
    test = load_split(cfg.dataset, "test", ctx)
    idx = select_samples(len(test), cfg.n_samples, cfg.seed)
    return trained, test.x[idx], test.y[idx], test


def data_spec(cfg: ZhaoConfig) -> dict[str, Any]:
    """What decides the model and the images of a cell (add the cell's own settings to it)."""
    return {"arch": cfg.arch, "dataset": cfg.dataset, "preset": cfg.preset, "seed": cfg.seed,
            "n_samples": cfg.n_samples}


def model_blurb(cfg: ZhaoConfig, facts: dict[str, Any], n: int) -> Paragraph:
    """The model line of a report from the stored model facts."""
    return Paragraph(
        f"Model `{cfg.arch}` on {dataset_phrase(cfg.dataset)} (test accuracy {fmt_number(pct(facts['test_accuracy']))}%, "
        f"checkpoint `{facts['checkpoint_key'][:12]}`), {n} test images, seed {cfg.seed}."
    )
