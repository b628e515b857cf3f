"""Deterministic, resumable training with a content-addressed checkpoint cache.

:func:`train_model` trains a registry architecture on an in-memory
:class:`~fisherscope.data.ImageDataset` (index permutations over tensors, no
``DataLoader``), with an explicit ``torch.Generator`` for shuffling and augmentation
and ``torch.random.fork_rng`` around initialisation and dropout, so the caller's global
RNG is untouched and the same seed gives bitwise identical weights on CPU. The result
is cached under a sha256 of everything that determines the weights; asking again
returns the cached model at once. After every epoch a partial checkpoint is written, so
a killed run resumes from its last finished epoch and ends with the same weights.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._progress import progress_enabled, show_progress, stage
from .._validation import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    check_inputs,
    check_labels,
    check_param,
    eval_mode,
)
from ..data import ImageDataset, load_dataset
from ..defenses import build_objective, normalize_defense
from ..exceptions import CheckpointError, WriteError
from ..models import MODELS, TrainedModel, build_model, find_normalize
from ..models.checkpoint import (
    FORMAT_VERSION,
    canonical_json,
    checkpoint_path,
    compute_key,
    library_versions,
    make_checkpoint,
    model_from_checkpoint,
    not_saved_error,
    read_checkpoint,
    save_atomic,
)
from .presets import TRAINING_KEYS, pick_preset, resolve_training

__all__ = ["evaluate_accuracy", "train_model"]

logger = logging.getLogger(__name__)


def _full_model_kwargs(arch: str, given: Mapping[str, Any], ds: ImageDataset) -> dict[str, Any]:
    """Constructor kwargs with dataset-derived C, K, input size and all defaults filled in."""
    sig = inspect.signature(MODELS[arch])
    params = sig.parameters
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise ValueError(
            f"unknown model_kwargs {unknown} for {arch!r}; valid keywords are {list(params)}."
        )
    kwargs = dict(given)
    derived = {"in_channels": ds.in_channels, "num_classes": ds.num_classes}
    h, w = ds.image_size
    if "input_size" in params:
        if h != w:
            raise ValueError(
                f"{arch} takes square images (input_size); dataset {ds.name!r} has {h}x{w} images."
            )
        derived["input_size"] = h
    for k, v in derived.items():
        if k in params:
            kwargs.setdefault(k, v)
    if "in_channels" in params and kwargs["in_channels"] != ds.in_channels:
        raise ValueError(
            f"model_kwargs in_channels={kwargs['in_channels']!r}, but dataset {ds.name!r} has "
            f"{ds.in_channels}-channel images; drop in_channels to use the dataset's."
        )
    if "num_classes" in params and (
        not isinstance(kwargs["num_classes"], int) or kwargs["num_classes"] < ds.num_classes
    ):
        raise ValueError(
            f"model_kwargs num_classes={kwargs['num_classes']!r}, but dataset {ds.name!r} has "
            f"{ds.num_classes} classes; drop num_classes to use the dataset's."
        )
    full = {name: kwargs.get(name, p.default) for name, p in params.items()}
    canonical = json.loads(canonical_json(full))
    if canonical != full:
        raise ValueError(
            f"model_kwargs for {arch!r} must be JSON values (str, int, float, bool, None); "
            f"got {full!r}."
        )
    return canonical


# ---------------------------------------------------------------------- data helpers


def _content_sha256(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 of the tensors' shapes, dtypes and bytes (a few hundred ms for MNIST)."""
    h = hashlib.sha256()
    for t in (x, y):
        t = t.detach().cpu().contiguous()
        h.update(repr((tuple(t.shape), str(t.dtype))).encode())
        if t.numel():
            h.update(t.numpy().data)
    return h.hexdigest()


def _check_dataset(ds: Any, role: str) -> ImageDataset:
    if not isinstance(ds, ImageDataset):
        raise TypeError(
            f"{role} must be a dataset name or a fisherscope.data.ImageDataset; got "
            f"{type(ds).__name__}."
        )
    if ds.x.dtype != torch.float32:
        raise TypeError(
            f"{role} {ds.name!r}: x must be float32 in [0, 1]; got {ds.x.dtype}. "
            "Convert with x.float() (/ 255 for uint8 images)."
        )
    check_inputs(ds.x, ds.y, image=True, name=f"{role}.x")
    check_labels(ds.y, ds.x.shape[0], ds.num_classes, name=f"{role}.y")
    return ds


def _resolve_datasets(
    dataset: Any, test_dataset: Any, data_dir: str | os.PathLike[str] | None
) -> tuple[ImageDataset, ImageDataset | None]:
    if isinstance(dataset, str):
        train = load_dataset(dataset, "train", data_dir=data_dir)
        test = test_dataset if test_dataset is not None else load_dataset(dataset, "test", data_dir=data_dir)
    else:
        train, test = dataset, test_dataset
    train = _check_dataset(train, "dataset")
    if test is not None:
        test = _check_dataset(test, "test_dataset")
        if test.x.shape[1:] != train.x.shape[1:]:
            raise ValueError(
                f"test_dataset images have shape {tuple(test.x.shape[1:])} but the training "
                f"images have {tuple(train.x.shape[1:])}; pass splits of the same dataset."
            )
    return train, test


def _dataset_identity(train: ImageDataset, test: ImageDataset | None) -> dict[str, Any]:
    def split(ds: ImageDataset) -> dict[str, Any]:
        return {
            "split": ds.split,
            "n": len(ds),
            "shape": list(ds.x.shape[1:]),
            "num_classes": ds.num_classes,
            "sha256": _content_sha256(ds.x, ds.y),
        }

    return {
        "name": train.name,
        "checksum": train.checksum,
        "train": split(train),
        "test": split(test) if test is not None else None,
    }


def _augment(xb: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Random shifts (zero padding of side // 8, at least 1) and horizontal flips."""
    if kind == "none":
        return xb
    n, c, h, w = xb.shape
    pad = max(1, min(h, w) // 8)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(xb.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(xb.device)
    xp = F.pad(xb, (pad, pad, pad, pad))
    rows = (oy[:, None] + torch.arange(h, device=xb.device))[:, None, :, None]
    xp = xp.gather(2, rows.expand(n, c, h, w + 2 * pad))
    cols = (ox[:, None] + torch.arange(w, device=xb.device))[:, None, None, :]
    out = xp.gather(3, cols.expand(n, c, h, w))
    if kind == "crop_flip":
        flip = (torch.rand(n, generator=gen) < 0.5).to(xb.device)[:, None, None, None]
        out = torch.where(flip, out.flip(3), out)
    return out


def _lr_at(schedule: str, base: float, step: int, total: int) -> float:
    frac = step / max(total, 1)
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "linear":
        return base * (1.0 - frac)
    if schedule == "step":  # x0.1 at 50% and 75% of training
        return base * 0.1 ** ((frac >= 0.5) + (frac >= 0.75))
    return base


def _make_optimizer(model: nn.Module, t: Mapping[str, Any]) -> torch.optim.Optimizer:
    params = model.parameters()
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
    if t["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=t["lr"], weight_decay=t["weight_decay"])
    return torch.optim.Adam(params, lr=t["lr"], weight_decay=t["weight_decay"])


# ------------------------------------------------------------------------ evaluation


def evaluate_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 1024,
    *,
    device: str | torch.device | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``, batched, in eval mode, without gradients.

    Each module's train/eval mode is restored afterwards (a
    :class:`~fisherscope.exceptions.ModelModeWarning` is emitted if the model was in
    training mode).

    Parameters
    ----------
    model : nn.Module
        Returns logits (or any scores whose argmax is the prediction).
    x : Tensor
        Inputs in [0, 1].
    y : Tensor
        int64 labels.
    batch_size : int
    device : str or torch.device, optional
        Where the batches go; defaults to the device of the model's first parameter.

    Returns
    -------
    float
        Fraction of correct predictions.

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,).
    """
    check_inputs(x, y)
    check_labels(y, x.shape[0])
    check_param("evaluate_accuracy", "batch_size", batch_size, POSITIVE_INT)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    correct = torch.zeros((), dtype=torch.int64)
    with eval_mode(model), torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            pred = model(x[i : i + batch_size].to(device)).argmax(dim=1).cpu()
            correct += (pred == y[i : i + batch_size]).sum()
    return int(correct) / int(x.shape[0])


# -------------------------------------------------------------------------- training


def _progress(enabled: bool | None) -> Any:
    """Where training reports: None follows the caller (shown only inside ``show_progress``);
    True joins the caller's display or opens its own; False is silent."""
    from contextlib import nullcontext

    if enabled is None or (enabled and progress_enabled()):
        return nullcontext()
    return show_progress(enabled)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='cpu'.")
    return dev


def train_model(
    arch: str,
    dataset: str | ImageDataset | None = None,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    optimizer: str | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    lr_schedule: str | None = None,
    augment: str | None = None,
    normalize: bool | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    test_dataset: ImageDataset | None = None,
    defense: Mapping[str, Any] | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    track_test_accuracy: bool = False,
    callback: Callable[[int, Mapping[str, Any]], None] | None = None,
    num_threads: int | None = None,
    init_from: TrainedModel | None = None,
) -> TrainedModel:
    """Train ``MODELS[arch]`` (or fetch it from the checkpoint cache).

    Hyperparameters left as ``None`` come from the preset (:func:`resolve_training`):
    ``DEFAULT_TRAINING[arch]``, or ``DEFAULT_TRAINING["<arch>@<variant>"]`` when ``arch``
    is written that way (e.g. ``"mnist_cnn@paper"``), then :data:`GENERIC_TRAINING`.

    Joint objectives: a model that defines ``training_forward(x) -> (logits, aux_loss)``
    is trained on ``cross_entropy(logits, y) + aux_loss`` (``hg_mlp``: the mean squared
    reconstruction error of its decoder), and each epoch's history record gets
    ``train_aux_loss`` (the epoch mean of ``aux_loss``). The objective belongs to the
    architecture, which is part of the cache key.

    Parameters
    ----------
    arch : str
        A :data:`MODELS` name, optionally with a preset variant (``"vgg_small@mnist"``).
    dataset : str or ImageDataset, optional
        A name for ``fisherscope.data.load_dataset`` (train and test splits are loaded),
        or a training split held in memory. Defaults to the preset's dataset.
    epochs, lr, batch_size : optional
        Passes over the data, base learning rate, mini-batch size (the last, smaller
        batch of each epoch is kept).
    seed : int
        Seeds initialisation (under ``torch.random.fork_rng``), dropout, shuffling and
        augmentation (an explicit ``torch.Generator``). The global RNG is left untouched.
    optimizer : {"adam", "adamw", "sgd"}, optional
    momentum : float, optional
        SGD momentum (0.9 when omitted); an error with Adam.
    weight_decay : float, optional
        L2 penalty (decoupled for AdamW).
    lr_schedule : {"none", "cosine", "linear", "step"}, optional
        Per-iteration schedule; ``"step"`` multiplies by 0.1 at 50% and 75% of training.
    augment : {"none", "crop", "crop_flip"}, optional
        Random shifts by up to ``side // 8`` pixels (zero padding) and horizontal flips.
    normalize : bool, optional
        Set the model's ``Normalize`` buffers to the per-channel mean / std of the
        training images (True by default); False keeps mean 0, std 1.
    model_kwargs : mapping, optional
        Constructor keywords; ``in_channels``, ``num_classes`` and ``input_size`` default
        to the dataset's.
    test_dataset : ImageDataset, optional
        Held-out split for ``metrics["test_accuracy"]`` (loaded automatically when
        ``dataset`` is a name).
    defense : mapping, optional
        Defensive training, validated and normalised by
        :func:`fisherscope.defenses.normalize_defense` and part of the cache key
        (``config["defense"]``): ``{"kind": "fisher", "mu": 0.02, "penalty":
        "softmax_trace"}`` (Shen et al.'s Fisher penalty; also ``"log_softmax_trace"``,
        ``"input_trace"``, ``"top_eigenvalue"``), ``{"kind": "label_smoothing", "alpha":
        0.1}``, ``{"kind": "adversarial", "attack": "pgd", "params": {...}, "mix": 0.5}``
        (adversarial examples from ``fisherscope.attacks.ATTACKS``, drawn with the training
        generator). ``None`` (and every request equivalent to it, e.g. ``mu=0``) is plain
        cross-entropy training, bitwise unchanged. Each epoch's history record gets
        ``defense_stats``: per-sample means of the objective's terms (``cross_entropy``,
        ``penalty``, ``capped`` — the fraction of samples whose softmax-trace penalty hit
        its cap, logged as a warning when non-zero —, ``adv_cross_entropy``,
        ``adv_accuracy``).
    cache : bool
        Read and write the checkpoint cache (and partial checkpoints for resuming).
    cache_dir : path-like, optional
        Cache directory: this, then ``$FISHERSCOPE_CACHE``, then
        ``~/.cache/fisherscope/models``.
    data_dir : path-like, optional
        Passed to ``load_dataset`` when ``dataset`` is a name.
    progress : bool, optional
        Report progress: a rich bar on stderr when it is a terminal, log lines otherwise
        (see :func:`fisherscope.show_progress`). None (default): only inside an enclosing
        ``with fisherscope.show_progress():``; True: always; False: never.
    device : str or torch.device, optional
        CUDA when available, else CPU. Not part of the cache key; bitwise
        reproducibility is guaranteed on CPU only.
    track_test_accuracy : bool
        Also evaluate the test split after every epoch (into ``metrics["history"]``);
        does not change the weights and is not part of the cache key.
    callback : callable, optional
        ``callback(epoch, record)`` after each finished epoch (1-based) and its partial
        checkpoint; an exception raised there stops training, and the same call later
        resumes from that epoch.
    num_threads : int, optional
        CPU intra-op threads for this call (``torch.set_num_threads``; the previous value
        is restored afterwards). Small models on a busy machine train fastest with 1.
        Not part of the cache key.
    init_from : TrainedModel, optional
        Start from this model's weights (and its ``Normalize`` statistics) instead of a
        fresh initialisation: fine-tuning, e.g. a penalised network retrained from the
        plain one. Same architecture and constructor keywords required. Its cache key is
        part of this model's (``config["init_from"]``); the optimizer starts fresh and
        the seed still drives shuffling, dropout and augmentation.

    Returns
    -------
    TrainedModel
        The model in eval mode on ``device``, with config, key, checkpoint path and
        metrics (``train_accuracy`` on the full training split in eval mode,
        ``test_accuracy``, ``wall_time_s``, ``history``).

    Raises
    ------
    ValueError
        Unknown architecture / preset / setting, invalid value or ``defense``, or data
        that does not fit the model.
    CheckpointError
        The cache holds a corrupt file, or a file under this request's name that belongs
        to another request. It is never overwritten; the message says how to fix it.
    FloatingPointError
        The training loss became NaN or infinite (lower ``lr``).

    Examples
    --------
    >>> tm = train_model("digits_cnn", "digits", progress=False)  # a few seconds, then cached
    >>> tm.metrics["test_accuracy"] > 0.97
    True
    """
    defense_cfg = normalize_defense(defense)
    ds_name = dataset if isinstance(dataset, str) else getattr(dataset, "name", None)
    t = resolve_training(
        pick_preset(arch, ds_name), epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
        momentum=momentum, weight_decay=weight_decay, lr_schedule=lr_schedule,
        augment=augment, normalize=normalize,
        dataset=dataset if isinstance(dataset, str) else None, model_kwargs=model_kwargs,
    )  # fmt: skip
    check_param("train_model", "seed", seed, NON_NEGATIVE_INT)
    base = t["arch"]
    if dataset is None:
        if t["dataset"] is None:
            raise ValueError(
                f"no dataset given and preset {arch!r} names none; pass a dataset name "
                "(e.g. 'digits', 'mnist') or an ImageDataset."
            )
        dataset = t["dataset"]
    train_ds, test_ds = _resolve_datasets(dataset, test_dataset, data_dir)
    full_kwargs = _full_model_kwargs(base, t["model_kwargs"], train_ds)
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "arch": base,
        "model_kwargs": full_kwargs,
        **{k: t[k] for k in TRAINING_KEYS},
        "seed": seed,
        "dataset": _dataset_identity(train_ds, test_ds),
        "defense": defense_cfg,
    }
    init_state = None
    if init_from is not None:
        if not isinstance(init_from, TrainedModel):
            raise TypeError(f"init_from must be a TrainedModel (from train_model); got {type(init_from).__name__}.")
        if init_from.arch != base or dict(init_from.model_kwargs) != dict(full_kwargs):
            raise ValueError(
                f"init_from is a {init_from.arch} with {dict(init_from.model_kwargs)}; this request builds a "
                f"{base} with {full_kwargs}. Fine-tune from a model of the same architecture and keywords."
            )
        config["init_from"] = init_from.key  # only present when given: other keys are unchanged
        init_state = {k: v.detach().cpu().clone() for k, v in init_from.model.state_dict().items()}
    key = compute_key(config)
    dev = _resolve_device(device)
    final_path = checkpoint_path(cache_dir, base, key) if cache else None
    partial_path = checkpoint_path(cache_dir, base, key, partial=True) if cache else None

    if final_path is not None and final_path.exists():
        ckpt = read_checkpoint(final_path, expected_key=key, expected_kind="final")
        model = model_from_checkpoint(ckpt, final_path).to(dev)
        logger.info("%s: loaded from cache %s", base, final_path)
        return TrainedModel(
            model=model, arch=base, model_kwargs=full_kwargs, config=ckpt["config"], key=key,
            checkpoint_path=final_path, from_cache=True, metrics=dict(ckpt.get("metrics") or {}),
        )  # fmt: skip

    resume = None
    if partial_path is not None and partial_path.exists():
        resume = read_checkpoint(partial_path, expected_key=key, expected_kind="partial")
        logger.info("%s: resuming from %s (epoch %d)", base, partial_path, resume["epoch"])

    check_param("train_model", "num_threads", num_threads, POSITIVE_INT.or_none("torch's setting"))
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        model, metrics = _fit(
            config, key, train_ds, test_ds, dev, resume, partial_path, progress,
            track_test_accuracy, callback, init_state,
        )  # fmt: skip
    finally:
        torch.set_num_threads(previous_threads)
    if final_path is not None:
        try:
            save_atomic(
                make_checkpoint(kind="final", key=key, config=config, state_dict=model.state_dict(),
                                metrics=metrics),
                final_path,
            )
        except WriteError as exc:
            kept = TrainedModel(
                model=model, arch=base, model_kwargs=full_kwargs, config=json.loads(canonical_json(config)),
                key=key, checkpoint_path=None, from_cache=False, metrics=metrics,
            )  # fmt: skip
            raise not_saved_error(kept, final_path, exc) from exc
        assert partial_path is not None
        if partial_path.exists():
            partial_path.unlink()
        logger.info("%s: saved %s", base, final_path)
    return TrainedModel(
        model=model, arch=base, model_kwargs=full_kwargs,
        config=json.loads(canonical_json(config)), key=key, checkpoint_path=final_path,
        from_cache=False, metrics=metrics,
    )  # fmt: skip


def _fit(
    config: dict[str, Any],
    key: str,
    train_ds: ImageDataset,
    test_ds: ImageDataset | None,
    dev: torch.device,
    resume: dict[str, Any] | None,
    partial_path: Path | None,
    progress: bool | None,
    track_test: bool,
    callback: Callable[[int, Mapping[str, Any]], None] | None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    t = config
    arch = config["arch"]
    n = len(train_ds)
    bs = t["batch_size"]
    steps_per_epoch = math.ceil(n / bs)
    total_steps = steps_per_epoch * t["epochs"]
    fork_devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []

    x = train_ds.x.to(dev)
    y = train_ds.y.to(dev)
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(t["seed"])
        model = build_model(arch, **config["model_kwargs"])
        if t["normalize"]:
            xd = train_ds.x.double()
            mean = xd.mean(dim=(0, 2, 3))
            std = xd.std(dim=(0, 2, 3))
            std = torch.where(std > 0, std, torch.ones_like(std))
            find_normalize(model).set_statistics(mean.float(), std.float())
        if init_state is not None:
            model.load_state_dict(init_state)
        model.to(dev)
        opt = _make_optimizer(model, t)
        objective = _objective(config.get("defense"))
        gen = torch.Generator().manual_seed(t["seed"])
        start_epoch, history, wall = 0, [], 0.0
        if resume is not None:
            try:
                model.load_state_dict(resume["state_dict"])
                opt.load_state_dict(resume["optimizer"])
                gen.set_state(resume["generator"])
                torch.set_rng_state(resume["rng"])
                if dev.type == "cuda" and resume.get("cuda_rng") is not None:
                    torch.cuda.set_rng_state(resume["cuda_rng"], dev)
            except (KeyError, RuntimeError, ValueError, TypeError) as exc:
                raise CheckpointError(
                    f"partial checkpoint {partial_path} cannot be resumed ({exc}). It was left "
                    f"untouched; delete it to start over (rm '{partial_path}')."
                ) from exc
            start_epoch = int(resume["epoch"])
            history = list(resume.get("history") or [])
            wall = float(resume.get("wall_time_s") or 0.0)

        # Joint objectives: a model with ``training_forward(x) -> (logits, aux_loss)``
        # trains on cross_entropy(logits, y) + aux_loss (hg_mlp: its reconstruction MSE).
        joint = getattr(model, "training_forward", None)
        if joint is not None and objective is not None:
            raise ValueError(
                f"{arch} trains on its own joint loss (training_forward); combining it with "
                "defense= is not supported. Pass defense=None."
            )

        # A dry run on two samples turns shape mismatches into a readable error.
        model.eval()
        try:
            with torch.no_grad():
                out = model(x[:2])
        except (RuntimeError, ValueError) as exc:
            raise ValueError(
                f"{arch} with {config['model_kwargs']} cannot take the dataset's images of shape "
                f"{tuple(train_ds.x.shape[1:])}: {str(exc).splitlines()[0]}"
            ) from exc
        if out.ndim != 2 or out.shape[1] < train_ds.num_classes:
            raise ValueError(
                f"{arch} returns shape {tuple(out.shape)}, but the dataset has "
                f"{train_ds.num_classes} classes; set model_kwargs num_classes."
            )

        with _progress(progress), stage(f"train {arch}", total=total_steps) as bar:
            bar.advance(start_epoch * steps_per_epoch)
            for epoch in range(start_epoch, t["epochs"]):
                t0 = time.perf_counter()
                model.train()
                perm = torch.randperm(n, generator=gen)
                loss_sum = torch.zeros((), device=dev)
                aux_sum = torch.zeros((), device=dev)
                correct = torch.zeros((), dtype=torch.int64, device=dev)
                defense_sums: dict[str, torch.Tensor] = {}
                lr_now = t["lr"]
                for i in range(steps_per_epoch):
                    step = epoch * steps_per_epoch + i
                    lr_now = _lr_at(t["lr_schedule"], t["lr"], step, total_steps)
                    for group in opt.param_groups:
                        group["lr"] = lr_now
                    idx = perm[i * bs : (i + 1) * bs].to(dev)
                    xb = _augment(x[idx], t["augment"], gen)
                    yb = y[idx]
                    if objective is None and joint is None:
                        logits = model(xb)
                        loss = F.cross_entropy(logits, yb)
                    elif objective is None:
                        assert joint is not None
                        logits, aux = joint(xb)
                        loss = F.cross_entropy(logits, yb) + aux
                        aux_sum += aux.detach() * idx.numel()
                    else:
                        try:
                            terms = objective.evaluate(model, xb, yb, generator=gen)
                        except ValueError as exc:  # e.g. non-finite logits met by a penalty or an attack
                            if not _diverged(model, xb):
                                raise
                            raise FloatingPointError(
                                f"training {arch} diverged in epoch {epoch + 1}: the model's weights "
                                f"or outputs are no longer finite ({exc}). Lower lr (now {t['lr']}) "
                                "or use a schedule; nothing was saved for this epoch."
                            ) from exc
                        logits, loss = terms.logits, terms.loss
                        for name, value in terms.stats.items():
                            defense_sums[name] = defense_sums.get(name, 0.0) + value.detach()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    loss_sum += loss.detach() * idx.numel()
                    correct += (logits.detach().argmax(1) == yb).sum()
                    bar.advance()
                    if progress_enabled() and i % 50 == 0:
                        bar.advance(0, description=f"train {arch} epoch {epoch + 1}/{t['epochs']} loss {loss.item():.4f}")
                train_loss = float(loss_sum) / n
                if not math.isfinite(train_loss):
                    raise FloatingPointError(
                        f"training {arch} diverged: the mean loss of epoch {epoch + 1} is "
                        f"{train_loss}. Lower lr (now {t['lr']}) or use a schedule; nothing was "
                        "saved for this epoch."
                    )
                dt = time.perf_counter() - t0
                wall += dt
                record: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "train_loss": train_loss,
                    "train_accuracy_running": int(correct) / n,
                    "lr_end": lr_now,
                    "time_s": dt,
                    "num_threads": torch.get_num_threads(),
                }
                if joint is not None:
                    record["train_aux_loss"] = float(aux_sum) / n
                if objective is not None:
                    record["defense_stats"] = {k: float(v) / n for k, v in sorted(defense_sums.items())}
                    capped = record["defense_stats"].get("capped", 0.0)
                    if capped > 0:
                        logger.warning(
                            "%s epoch %d: the softmax-trace penalty hit its cap (log sum 1/p > %g) "
                            "for %.3g%% of the samples; their push is bounded (see "
                            "fisherscope.defenses.fisher_penalty). Lower mu or the learning rate "
                            "if this persists.",
                            arch, epoch + 1, config["defense"].get("max_log"), 100 * capped,
                        )  # fmt: skip
                if track_test and test_ds is not None:
                    model.eval()
                    record["test_accuracy"] = evaluate_accuracy(model, test_ds.x, test_ds.y, device=dev)
                history.append(record)
                logger.info(
                    "%s epoch %d/%d: loss %.4f, running acc %.4f%s, %.1fs",
                    arch, epoch + 1, t["epochs"], train_loss, record["train_accuracy_running"],
                    f", test acc {record['test_accuracy']:.4f}" if "test_accuracy" in record else "",
                    dt,
                )  # fmt: skip
                if partial_path is not None and epoch + 1 < t["epochs"]:
                    partial_path = _save_partial(partial_path, make_checkpoint(
                            kind="partial", key=key, config=config, state_dict=model.state_dict(),
                            optimizer=_cpu_state(opt.state_dict()), generator=gen.get_state(),
                            rng=torch.get_rng_state(),
                            cuda_rng=torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
                            epoch=epoch + 1, history=copy.deepcopy(history), wall_time_s=wall,
                        ))  # fmt: skip
                if callback is not None:
                    callback(epoch + 1, dict(record))

    model.eval()
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {
        "train_accuracy": evaluate_accuracy(model, train_ds.x, train_ds.y, device=dev),
        "test_accuracy": (
            evaluate_accuracy(model, test_ds.x, test_ds.y, device=dev) if test_ds is not None else None
        ),
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "wall_time_s": wall,
        "eval_time_s": time.perf_counter() - t0,
        "epochs": len(history),
        "history": history,
        "device": str(dev),
        "num_threads": torch.get_num_threads(),
        "versions": library_versions(),
    }
    logger.info(
        "%s: train acc %.4f, test acc %s, %.1fs", arch, metrics["train_accuracy"],
        "n/a" if metrics["test_accuracy"] is None else f"{metrics['test_accuracy']:.4f}", wall,
    )  # fmt: skip
    return model, metrics


def _save_partial(path: Path, ckpt: dict[str, Any]) -> Path | None:
    """Write a partial checkpoint; on a failed write warn and return None (no more partials).

    Training goes on: losing the ability to resume is better than losing the run. The
    final save then reports the same cause (:class:`ModelNotSavedError`, model kept).
    """
    try:
        save_atomic(ckpt, path)
    except WriteError as exc:
        logger.warning("%s Training continues without partial checkpoints (an interruption now "
                       "restarts from the last one written).", exc)
        return None
    return path


def _diverged(model: nn.Module, xb: torch.Tensor) -> bool:
    """Whether the weights, or the eval-mode outputs on a (finite) batch, are non-finite."""
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return True
    with eval_mode(model, warn=False), torch.no_grad():
        return not bool(torch.isfinite(model(xb)).all())


def _objective(defense: Mapping[str, Any] | None) -> Any:
    """The training objective of a (normalised) defense; None for plain cross-entropy."""
    if defense is None:
        return None
    return build_objective(defense)


def _cpu_state(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu_state(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_cpu_state(v) for v in obj)
    return obj
