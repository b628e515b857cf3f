"""Paper architectures, deterministic training and the content-addressed checkpoint cache.

- :data:`MODELS` — architecture name -> keyword-only constructor; every model maps images
  in [0, 1] of shape (N, C, H, W) to logits (N, K), normalising inside the model.
- :func:`train_model` — deterministic, resumable training that returns a
  :class:`TrainedModel` and caches it under a sha256 of everything that determines the
  weights; presets in :data:`DEFAULT_TRAINING`.
- :func:`load_checkpoint`, :func:`list_checkpoints` — the cache, read back.
- :func:`as_logits` — adapter for models that output probabilities or log-probabilities.
"""

from __future__ import annotations

from .architectures import (
    ACTIVATIONS,
    MODELS,
    VGG11,
    AsLogits,
    ConvNetBN,
    DigitsCNN,
    LeNet5,
    MnistCNN,
    Normalize,
    ResNet14,
    ResNet18,
    VGGSmall,
    as_logits,
    build_model,
    count_parameters,
    find_normalize,
    model_parameters,
)
from .checkpoint import (
    CACHE_ENV_VAR,
    CheckpointInfo,
    TrainedModel,
    compute_key,
    list_checkpoints,
    load_checkpoint,
    resolve_cache_dir,
)
from .hg_mlp import HGMLP  # registers MODELS["hg_mlp"]
from .training import (
    AUGMENTATIONS,
    DEFAULT_TRAINING,
    GENERIC_TRAINING,
    LR_SCHEDULES,
    OPTIMIZERS,
    PRESETS,
    evaluate_accuracy,
    resolve_preset,
    resolve_training,
    train_model,
)

__all__ = [
    "ACTIVATIONS",
    "AUGMENTATIONS",
    "CACHE_ENV_VAR",
    "DEFAULT_TRAINING",
    "GENERIC_TRAINING",
    "LR_SCHEDULES",
    "MODELS",
    "OPTIMIZERS",
    "PRESETS",
    "AsLogits",
    "CheckpointInfo",
    "ConvNetBN",
    "DigitsCNN",
    "HGMLP",
    "LeNet5",
    "MnistCNN",
    "Normalize",
    "ResNet14",
    "ResNet18",
    "TrainedModel",
    "VGG11",
    "VGGSmall",
    "as_logits",
    "build_model",
    "compute_key",
    "count_parameters",
    "evaluate_accuracy",
    "find_normalize",
    "list_checkpoints",
    "load_checkpoint",
    "model_parameters",
    "resolve_cache_dir",
    "resolve_preset",
    "resolve_training",
    "train_model",
]
