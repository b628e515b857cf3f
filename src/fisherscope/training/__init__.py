"""Deterministic training of the :mod:`fisherscope.models` architectures, cached.

- :func:`train_model` — deterministic, resumable training (plain cross-entropy, the
  architecture's own joint objective, or a :mod:`fisherscope.defenses` objective) that
  returns a :class:`~fisherscope.models.TrainedModel` and caches it under a sha256 of
  everything that determines the weights (:mod:`fisherscope.models.checkpoint`).
- :data:`DEFAULT_TRAINING`, :data:`PRESETS`, :func:`resolve_preset`,
  :func:`resolve_training` — the named training presets and how settings combine.
- :func:`evaluate_accuracy` — top-1 accuracy, batched, in eval mode.

This package sits above :mod:`fisherscope.models` (architectures and checkpoint I/O,
which never import it) and :mod:`fisherscope.defenses` (the objectives it trains on).
"""

from __future__ import annotations

from ..models import TrainedModel
from . import presets
from .loop import evaluate_accuracy, train_model
from .presets import *  # noqa: F403  (the names in presets.__all__)

__all__ = ["TrainedModel", "evaluate_accuracy", "train_model", *presets.__all__]
