"""What the Hendrycks & Gimpel modules share (a kit module): config, sources, attack runs.

:mod:`.hendrycks_gimpel` (kind ``hg_attack``) and :mod:`.hendrycks_gimpel_detection`
(kinds ``hg_detection``, ``hg_adaptive``) read :class:`HGConfig`:

- :func:`hg_sources` draws the model and the correctly classified test images they attack,
- :func:`data_spec` is the part of every cell's spec that decides the model and the images,
- :func:`record_model` / :func:`model_cell` store (and find) the facts a report prints about
  the model (accuracy, checkpoint, how many images, the class names),
- :func:`iterative_spec` / :func:`fast_spec` the settings that decide an attack's numbers,
- :func:`run_attack` runs an attack in batches from one seeded generator.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .config import ExperimentConfig
from .kit import Context, Run, correct_draw, in_batches, load_split, trained_model

__all__ = ["HGConfig", "data_spec", "fast_spec", "hg_sources", "iterative_spec", "model_cell", "record_model",
           "run_attack"]


@dataclass(frozen=True)
class HGConfig(ExperimentConfig):
    """What every Hendrycks & Gimpel config shares: the iterative targeted attack (§2)."""

    n_samples: int = 500  # correctly classified test images attacked
    batch_size: int = 500
    step_size: float = 1 / 255
    l2_reg: float = 1e-3
    threshold: float = 0.5
    max_steps: int = 1000


def _epochs(cfg: Any) -> int | None:
    """The detection configs' optional override of the preset's epochs (None: the preset's)."""
    return getattr(cfg, "epochs", None)


def hg_sources(cfg: HGConfig, ctx: Context) -> tuple[Any, torch.Tensor, torch.Tensor, Any, int]:
    """(trained model, images, labels, test split, number correct): ``cfg.n_samples`` of the
    test images the model classifies correctly (seeded draw, in test order).

    A config's optional ``epochs`` field overrides the training preset's epochs.
    """
    epochs = _epochs(cfg)
    trained = trained_model(cfg.arch, cfg.dataset, ctx, seed=cfg.seed, preset=cfg.preset,
                            overrides=None if epochs is None else {"epochs": epochs})
    test = load_split(cfg.dataset, "test", ctx)
    idx, n_correct = correct_draw(trained.model, test, cfg.n_samples, cfg.seed)
    return trained, test.x[idx], test.y[idx], test, n_correct


def data_spec(cfg: HGConfig) -> dict[str, Any]:
    """What decides the model and the attacked images of a cell (add the cell's own settings)."""
    return {"arch": cfg.arch, "dataset": cfg.dataset, "preset": cfg.preset, "epochs": _epochs(cfg),
            "seed": cfg.seed, "n_samples": cfg.n_samples}


def iterative_spec(cfg: HGConfig, l2_reg: float | None = None) -> dict[str, Any]:
    """The settings of the iterative attack (:class:`~fisherscope.attacks.HGTargeted`);
    ``l2_reg`` replaces the config's λ (the λ = 1 run of the reconstruction detector)."""
    return {"attack": "hg_targeted", "step_size": cfg.step_size, "l2_reg": cfg.l2_reg if l2_reg is None else l2_reg,
            "threshold": cfg.threshold, "max_steps": cfg.max_steps}


def fast_spec(cfg: Any) -> dict[str, Any]:
    """The settings of the fast attack (:class:`~fisherscope.attacks.HGFast`)."""
    return {"attack": "hg_fast", "eps": cfg.fast_eps, "threshold": cfg.threshold}


def model_cell(cfg: HGConfig) -> tuple[str, dict[str, Any]]:
    """Name and spec of the cell holding the facts about ``cfg``'s model and images."""
    return "model", data_spec(cfg)


def record_model(run: Run, cfg: HGConfig, trained: Any, test: Any, n: int, n_correct: int) -> Mapping[str, Any]:
    """Store what a report says about the model: test accuracy, checkpoint, the number of
    attacked images ``n`` of the ``n_correct`` correctly classified ones, the class names."""
    def facts() -> dict[str, Any]:
        return {"test_accuracy": float(trained.metrics["test_accuracy"]), "checkpoint_key": trained.key,
                "n": int(n), "n_correct": int(n_correct), "classes": [str(c) for c in test.classes]}

    name, spec = model_cell(cfg)
    return run.cell(name, facts, spec=spec)


def run_attack(attack: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int,
               batch_size: int) -> dict[str, torch.Tensor]:
    """``attack`` on ``x`` in batches of ``batch_size``, from one generator seeded with ``seed``
    (carried from batch to batch): ``x_adv``, ``success``, ``pred`` (the prediction at
    ``x_adv``) and the attack's extras (``target``, ``p_target``, ``steps``, ...)."""
    g = torch.Generator().manual_seed(seed)

    def one(xb: torch.Tensor, yb: torch.Tensor) -> dict[str, torch.Tensor]:
        res = attack.run(model, xb, yb, generator=g)
        return {"x_adv": res.x_adv, "success": res.success, "pred": res.logits_adv.argmax(1), **res.extras}

    return in_batches(one, x, y, batch_size=batch_size)
