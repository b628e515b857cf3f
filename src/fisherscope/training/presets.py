"""Training presets: the hyperparameters :func:`~fisherscope.training.train_model` uses.

Layers, later wins: :data:`GENERIC_TRAINING`, ``DEFAULT_TRAINING[arch]``,
``DEFAULT_TRAINING["<arch>@<variant>"]``, then the caller's explicit settings
(:func:`resolve_training`). :data:`PRESETS` is every preset fully resolved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# importing the package registers MODELS["hg_mlp"] before PRESETS resolve
from .._validation import (
    BOOL,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    STRING,
    check_params,
    one_of,
    real,
)
from ..models import check_arch

__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_TRAINING",
    "GENERIC_TRAINING",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "PRESETS",
    "TRAINING_KEYS",
    "pick_preset",
    "resolve_preset",
    "resolve_training",
]

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("none", "cosine", "linear", "step")
AUGMENTATIONS = ("none", "crop", "crop_flip")

#: Hyperparameters used when neither a preset nor the caller gives one.
GENERIC_TRAINING: dict[str, Any] = {
    "epochs": 10,
    "lr": 1e-3,
    "batch_size": 128,
    "optimizer": "adam",
    "momentum": None,
    "weight_decay": 0.0,
    "lr_schedule": "cosine",
    "augment": "none",
    "normalize": True,
}
#: The hyperparameter names of a training configuration (the keys of :data:`GENERIC_TRAINING`).
TRAINING_KEYS = tuple(GENERIC_TRAINING)

# The CIFAR-10 recipe of the VGG and ResNet presets (SGD with momentum, cosine, crop + flip).
_CIFAR_SGD: dict[str, Any] = {
    "dataset": "cifar10", "epochs": 30, "lr": 0.05, "batch_size": 128,
    "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4,
    "lr_schedule": "cosine", "augment": "crop_flip",
}

#: Named training presets: ``"<arch>"`` (the default for that architecture) and
#: ``"<arch>@<variant>"``. Each may name a ``dataset`` and ``model_kwargs``; the other keys
#: are :data:`GENERIC_TRAINING` keys. A variant inherits from its architecture's entry.
#: Measured accuracies and times: ``docs/training-measurements.md``.
DEFAULT_TRAINING: dict[str, dict[str, Any]] = {
    # sklearn's 8x8 digits: ~98% test in a few seconds on 2 CPU cores.
    "digits_cnn": {
        "dataset": "digits", "epochs": 12, "lr": 2e-3, "batch_size": 64,
        "optimizer": "adam", "lr_schedule": "cosine",
    },
    # Keras mnist_cnn: >= 99.0% MNIST test.
    "mnist_cnn": {
        "dataset": "mnist", "epochs": 6, "lr": 1e-3, "batch_size": 128,
        "optimizer": "adam", "lr_schedule": "cosine",
    },
    # Martin & Elster's operating point: ~98.5% test, ~99% train (constant lr, 2 epochs).
    "mnist_cnn@paper": {"epochs": 2, "lr": 1e-3, "lr_schedule": "none"},
    "lenet5": {
        "dataset": "mnist", "epochs": 15, "lr": 2e-3, "batch_size": 128,
        "optimizer": "adam", "lr_schedule": "cosine",
    },
    "convnet_bn": {
        "dataset": "mnist", "epochs": 8, "lr": 2e-3, "batch_size": 128,
        "optimizer": "adam", "lr_schedule": "cosine",
    },
    # Zhao's shallow VGG: CIFAR-10 by default, and its MNIST variant.
    "vgg_small": dict(_CIFAR_SGD),
    "vgg_small@mnist": {
        "dataset": "mnist", "epochs": 2, "lr": 0.05, "augment": "none",
        "model_kwargs": {"in_channels": 1, "input_size": 28},
    },
    "vgg11": dict(_CIFAR_SGD),
    # GTSRB (traffic signs must not be mirrored: crop only).
    "resnet14": {**_CIFAR_SGD, "dataset": "gtsrb", "epochs": 20, "lr": 0.1, "augment": "crop"},
    "resnet18": {**_CIFAR_SGD, "lr": 0.1},
    # CIFAR-10 (JPEG q75 copy), dataset cifar10_jpeg: the same recipe as on CIFAR-10 (the
    # images are CIFAR-10's up to JPEG error; the data set's counts, shape and classes are
    # CIFAR-10's). Accuracies aimed for on its test split (issue 20): vgg_small >= 85%,
    # vgg11 >= 88%, resnet18 >= 90%; not measured yet. resnet18 keeps the ImageNet stem (a 1x1
    # map after its last stage on 32x32 inputs); should it fall short, model_kwargs
    # {"input_resize": 224} is Martin & Elster's upscaling (about 49x the compute).
    # `fisherscope train vgg_small --dataset cifar10_jpeg` picks these (pick_preset).
    "vgg_small@cifar10_jpeg": {"dataset": "cifar10_jpeg"},
    "vgg11@cifar10_jpeg": {"dataset": "cifar10_jpeg"},
    "resnet18@cifar10_jpeg": {"dataset": "cifar10_jpeg"},
    # Hendrycks & Gimpel §3.4: GELU MLP + logit-fed decoder, CE + MSE, Adam 1e-3 (default,
    # constant), 20 epochs; the batch size is not stated (128 here).
    "hg_mlp": {
        "dataset": "mnist", "epochs": 20, "lr": 1e-3, "batch_size": 128,
        "optimizer": "adam", "lr_schedule": "none", "model_kwargs": {"activation": "gelu"},
    },
}  # fmt: skip


# ----------------------------------------------------------------------- resolution


def _split_arch(arch: str) -> tuple[str, str | None]:
    if not isinstance(arch, str):
        raise ValueError(f"arch must be a string naming a model in MODELS; got {arch!r}.")
    base, _, variant = arch.partition("@")
    check_arch(base)
    if variant and arch not in DEFAULT_TRAINING:
        presets = sorted(k for k in DEFAULT_TRAINING if k.startswith(base + "@"))
        raise ValueError(
            f"unknown training preset {arch!r}; presets for {base!r} are "
            f"{[base, *presets]} (fisherscope.training.DEFAULT_TRAINING)."
        )
    return base, (arch if variant else None)


def resolve_training(arch: str, **overrides: Any) -> dict[str, Any]:
    """The training settings ``train_model`` would use, after presets and overrides.

    Layers, later wins: :data:`GENERIC_TRAINING`, ``DEFAULT_TRAINING[base arch]``,
    ``DEFAULT_TRAINING[arch]`` for ``"<arch>@<variant>"``, then every override that is
    not ``None``.

    Parameters
    ----------
    arch : str
        ``"lenet5"`` or ``"mnist_cnn@paper"``.
    **overrides
        Any of ``epochs, lr, batch_size, optimizer, momentum, weight_decay, lr_schedule,
        augment, normalize, dataset, model_kwargs``; ``None`` means "use the preset".

    Returns
    -------
    dict
        Validated hyperparameters plus ``"arch"`` (the base name), ``"preset"``,
        ``"dataset"`` (name or None) and ``"model_kwargs"`` (the preset's, merged with
        the override's).

    Raises
    ------
    ValueError
        Unknown architecture, preset or key, or an invalid value.
    """
    base, variant = _split_arch(arch)
    allowed = set(TRAINING_KEYS) | {"dataset", "model_kwargs"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"unknown training setting(s) {unknown}; valid are {sorted(allowed)}.")
    merged: dict[str, Any] = dict(GENERIC_TRAINING, dataset=None)
    model_kwargs: dict[str, Any] = {}
    layers = [DEFAULT_TRAINING.get(base, {})] + ([DEFAULT_TRAINING[variant]] if variant else [])
    explicit = {k: v for k, v in overrides.items() if v is not None}
    for layer in [*layers, explicit]:
        for k, v in layer.items():
            if k == "model_kwargs":
                if not isinstance(v, Mapping):
                    raise ValueError(f"model_kwargs must be a mapping; got {type(v).__name__}.")
                model_kwargs.update(v)
            else:
                merged[k] = v
    # momentum belongs to SGD only.
    if merged["optimizer"] != "sgd":
        if explicit.get("momentum") is not None:
            raise ValueError(
                f"momentum applies to optimizer='sgd' only; got momentum={explicit['momentum']!r} "
                f"with optimizer={merged['optimizer']!r}. Drop momentum or use optimizer='sgd'."
            )
        merged["momentum"] = None
    elif merged["momentum"] is None:
        merged["momentum"] = 0.9
    _validate_training(merged)
    merged["arch"] = base
    merged["preset"] = variant or (base if base in DEFAULT_TRAINING else None)
    merged["model_kwargs"] = model_kwargs
    return merged


def pick_preset(arch: str, dataset: str | None) -> str:
    """``arch`` itself, or for a bare architecture name the ``arch@variant`` preset made
    for ``dataset`` when the architecture's own preset targets another dataset."""
    base, variant = _split_arch(arch)
    if variant is not None or dataset is None:
        return arch
    own = DEFAULT_TRAINING.get(base, {}).get("dataset")
    if own is None or own == dataset:
        return arch
    for name in sorted(DEFAULT_TRAINING):
        if name.startswith(base + "@") and resolve_training(name)["dataset"] == dataset:
            return name
    return arch


def resolve_preset(name: str, dataset: str | None = None) -> dict[str, Any]:
    """The :func:`train_model` keyword arguments of a training preset.

    Parameters
    ----------
    name : str
        An architecture (``"vgg_small"``) or a preset (``"mnist_cnn@paper"``), see
        :data:`DEFAULT_TRAINING`.
    dataset : str, optional
        For a bare architecture name: prefer its ``arch@variant`` preset made for this
        dataset (``resolve_preset("vgg_small", "mnist")`` gives ``"vgg_small@mnist"``).

    Returns
    -------
    dict
        ``epochs, lr, batch_size, optimizer, momentum, weight_decay, lr_schedule,
        augment, normalize, model_kwargs``: pass them as ``train_model(arch, data, **kw)``.
    """
    r = resolve_training(pick_preset(name, dataset))
    return {k: r[k] for k in (*TRAINING_KEYS, "model_kwargs")}


def _validate_training(t: dict[str, Any]) -> None:
    check_params("train_model", t, {
        "epochs": POSITIVE_INT,
        "batch_size": POSITIVE_INT,
        "lr": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        "momentum": real(ge=0, lt=1).or_none("the optimiser's default"),
        "optimizer": one_of(*OPTIMIZERS),
        "lr_schedule": one_of(*LR_SCHEDULES),
        "augment": one_of(*AUGMENTATIONS),
        "normalize": BOOL,
        "dataset": STRING.but(expected="a dataset name or an ImageDataset").or_none(),
    })
    for name in ("lr", "weight_decay") + (("momentum",) if t["momentum"] is not None else ()):
        t[name] = float(t[name])


def _presets() -> dict[str, dict[str, Any]]:
    out = {}
    for name in DEFAULT_TRAINING:
        r = resolve_training(name)
        out[name] = {"arch": r["arch"], "dataset": r["dataset"], **resolve_preset(name)}
    return out


#: Every preset fully resolved (read-only view of :data:`DEFAULT_TRAINING` computed at
#: import): name -> ``{"arch", "dataset", <hyperparameters>, "model_kwargs"}``.
PRESETS: dict[str, dict[str, Any]] = _presets()
