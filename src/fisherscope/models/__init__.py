"""Paper architectures and the content-addressed checkpoint cache.

- :data:`MODELS` — architecture name -> keyword-only constructor; every model maps images
  in [0, 1] of shape (N, C, H, W) to logits (N, K), normalising inside the model.
- :class:`TrainedModel`, :func:`load_checkpoint`, :func:`list_checkpoints`,
  :func:`compute_key` — the cache that :func:`fisherscope.training.train_model` writes,
  read back.
- :func:`as_logits` — adapter for models that output probabilities or log-probabilities.
- :func:`load_model` — a user's own model (architecture + weights, TorchScript, ``torch.export``,
  ``package.module:factory`` + state dict or safetensors), wrapped to meet the model contract
  and checked on one batch (:func:`check_model_contract`).

Training lives in :mod:`fisherscope.training`, a layer above: this package imports
nothing from it, nor from :mod:`fisherscope.defenses` or :mod:`fisherscope.attacks`.
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
    ResNet50,
    VGGSmall,
    as_logits,
    build_model,
    check_arch,
    count_parameters,
    find_normalize,
    model_parameters,
)
from .checkpoint import (
    CACHE_ENV_VAR,
    CheckpointInfo,
    TrainedModel,
    compute_key,
    library_versions,
    list_checkpoints,
    load_checkpoint,
    resolve_cache_dir,
    save_checkpoint,
)
from .hg_mlp import HGMLP  # registers MODELS["hg_mlp"]
from .loading import (
    NORMALIZE_PRESETS,
    ExportedProgramModel,
    LoadedModel,
    ModelContractWarning,
    WeightsMismatchError,
    check_model_contract,
    load_model,
    load_weights,
    parse_normalize,
    read_weights,
)

__all__ = [
    "ACTIVATIONS",
    "CACHE_ENV_VAR",
    "MODELS",
    "NORMALIZE_PRESETS",
    "AsLogits",
    "CheckpointInfo",
    "ConvNetBN",
    "DigitsCNN",
    "ExportedProgramModel",
    "HGMLP",
    "LeNet5",
    "LoadedModel",
    "MnistCNN",
    "ModelContractWarning",
    "Normalize",
    "ResNet14",
    "ResNet18",
    "ResNet50",
    "TrainedModel",
    "VGG11",
    "VGGSmall",
    "WeightsMismatchError",
    "as_logits",
    "build_model",
    "check_arch",
    "check_model_contract",
    "compute_key",
    "count_parameters",
    "find_normalize",
    "library_versions",
    "list_checkpoints",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "model_parameters",
    "parse_normalize",
    "read_weights",
    "resolve_cache_dir",
    "save_checkpoint",
]
