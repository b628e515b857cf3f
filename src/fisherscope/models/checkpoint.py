"""Content-addressed checkpoint cache for trained models.

A checkpoint is a dict of plain Python types and tensors, written atomically (temporary
file + ``os.replace``) and read with ``torch.load(..., weights_only=True)``::

    {"format": "fisherscope.checkpoint", "format_version": 1, "kind": "final",
     "key": <sha256 hex>, "arch": str, "model_kwargs": dict, "config": dict,
     "metrics": dict, "state_dict": {name: tensor}, "versions": dict, "created": str}

``key`` is the sha256 of the canonical JSON of ``config`` (:func:`compute_key`), and
``config`` holds everything that determines the weights: architecture and its keyword
arguments, training hyperparameters, dataset identity, defense settings and the format
version. A file whose content does not hash to its own key, or whose key is not the one
requested, is reported with :class:`~fisherscope.exceptions.CheckpointError` and never
overwritten. Partial checkpoints (``kind="partial"``, file ``<name>.partial.pt``) add
optimizer, generator and RNG states so that an interrupted run resumes exactly.

The cache directory is the ``cache_dir`` argument, then ``$FISHERSCOPE_CACHE``, then
``~/.cache/fisherscope/models``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import torch
from torch import nn

from .._io import WriteError, describe_write_error
from ..exceptions import CheckpointError, ModelNotSavedError
from .architectures import MODELS

__all__ = [
    "CACHE_ENV_VAR",
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointInfo",
    "TrainedModel",
    "canonical_json",
    "checkpoint_path",
    "compute_key",
    "content_digest",
    "library_versions",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_cache_dir",
    "save_checkpoint",
    "validate_partial",
]

logger = logging.getLogger(__name__)

FORMAT = "fisherscope.checkpoint"
FORMAT_VERSION = 1
CACHE_ENV_VAR = "FISHERSCOPE_CACHE"
PARTIAL_SUFFIX = ".partial.pt"
FINAL_SUFFIX = ".pt"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where checkpoints live: the argument, then ``$FISHERSCOPE_CACHE``, then
    ``~/.cache/fisherscope/models``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fisherscope" / "models"


def canonical_json(obj: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, ASCII, finite floats only.

    Raises
    ------
    ValueError
        ``obj`` holds something JSON cannot represent (tensors, sets, NaN, ...).
    """
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"the model/training configuration must contain only JSON values (str, int, float, "
            f"bool, None, lists and dicts of them); {exc}"
        ) from exc


def compute_key(config: Mapping[str, Any]) -> str:
    """sha256 hex digest of :func:`canonical_json` of ``config``: the cache key."""
    return hashlib.sha256(canonical_json(config).encode("ascii")).hexdigest()


def checkpoint_path(cache_dir: str | os.PathLike[str] | None, arch: str, key: str, *, partial: bool = False) -> Path:
    """File of the final (or partial) checkpoint for ``arch`` and ``key``."""
    suffix = PARTIAL_SUFFIX if partial else FINAL_SUFFIX
    return resolve_cache_dir(cache_dir) / f"{arch}-{key}{suffix}"


def library_versions() -> dict[str, str]:
    """Versions of fisherscope, torch and Python, as recorded in every checkpoint."""
    import platform

    try:
        from importlib.metadata import version

        fs_version = version("fisherscope")
    except Exception:  # not installed (source checkout)
        fs_version = "unknown"
    return {"fisherscope": fs_version, "torch": str(torch.__version__), "python": platform.python_version()}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def save_atomic(obj: Mapping[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file in the same directory, then ``os.replace``.

    A reader never sees a half-written file; the temporary file is removed on failure.
    Permissions follow the umask (like any newly created file).

    Raises
    ------
    WriteError
        The file could not be written (no space, read-only folder, a path component that
        is a file, ...): the message names the path and the cause; nothing is left behind.
    """
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise WriteError(describe_write_error(path, exc, what="checkpoint")) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(dict(obj), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise WriteError(describe_write_error(path, exc, what="checkpoint")) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def content_digest(state_dict: Mapping[str, torch.Tensor], metrics: Mapping[str, Any] | None) -> str:
    """sha256 of the weights (names, dtypes, shapes, bytes) and the metrics' canonical JSON.

    Stored in every checkpoint as ``content_sha256`` and checked on load, so flipped bytes
    in a weight tensor or an edited ``metrics["test_accuracy"]`` are caught, not served.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(dict(metrics or {}), sort_keys=True, separators=(",", ":"), default=str).encode())
    return h.hexdigest()


def _fix_hint(path: Path) -> str:
    return (
        f"The file was left untouched. Delete it to retrain (rm '{path}') or pass another "
        f"cache_dir (or set ${CACHE_ENV_VAR})."
    )


def read_checkpoint(
    path: str | os.PathLike[str],
    *,
    expected_key: str | None = None,
    expected_kind: str | None = None,
    mmap: bool = False,
) -> dict[str, Any]:
    """Load and verify a checkpoint file (weights-only unpickling).

    Verifies the format tag and version, the required fields, that ``key`` is the hash
    of the stored ``config``, that ``arch`` / ``model_kwargs`` agree with the config
    and, when given, ``expected_key`` and ``expected_kind``.

    Raises
    ------
    CheckpointError
        Unreadable, corrupt, from another format version, inconsistent, or not the
        requested checkpoint. The message names the file and how to fix it.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). {_fix_hint(path)}"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a fisherscope checkpoint (no format tag {FORMAT!r}). {_fix_hint(path)}"
        )
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {ckpt.get('format_version')!r}; this "
            f"fisherscope reads version {FORMAT_VERSION}. {_fix_hint(path)}"
        )
    required = ("kind", "key", "arch", "model_kwargs", "config", "state_dict")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the fields {missing}. {_fix_hint(path)}")
    config = ckpt["config"]
    try:
        actual = compute_key(config)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path} has an invalid config ({exc}). {_fix_hint(path)}") from exc
    if actual != ckpt["key"]:
        raise CheckpointError(
            f"checkpoint {path} is inconsistent: its stored key {ckpt['key']} is not the hash "
            f"of its stored config ({actual}); it was modified or damaged. {_fix_hint(path)}"
        )
    if config.get("arch") != ckpt["arch"] or config.get("model_kwargs") != ckpt["model_kwargs"]:
        raise CheckpointError(
            f"checkpoint {path} is inconsistent: arch/model_kwargs "
            f"({ckpt['arch']!r}, {ckpt['model_kwargs']!r}) differ from its config "
            f"({config.get('arch')!r}, {config.get('model_kwargs')!r}). {_fix_hint(path)}"
        )
    _verify_content(ckpt, path)
    if ckpt["kind"] not in ("final", "partial"):
        raise CheckpointError(
            f"checkpoint {path} has kind {ckpt['kind']!r}; expected 'final' or 'partial'. {_fix_hint(path)}"
        )
    if ckpt["kind"] == "partial":
        validate_partial(ckpt, path)
    if expected_kind is not None and ckpt["kind"] != expected_kind:
        raise CheckpointError(
            f"{path} holds a {ckpt['kind']!r} checkpoint where a {expected_kind!r} one was "
            f"expected. {_fix_hint(path)}"
        )
    if expected_key is not None and ckpt["key"] != expected_key:
        raise CheckpointError(
            f"checkpoint {path} does not match the request: it stores key {ckpt['key']} "
            f"(arch {ckpt['arch']!r}) but key {expected_key} was requested under this file "
            f"name. {_fix_hint(path)}"
        )
    return ckpt


def _partial_error(path: Path, field: str, expected: str, got: Any) -> CheckpointError:
    r = repr(got)
    r = r if len(r) <= 80 else r[:77] + "..."
    return CheckpointError(
        f"partial checkpoint {path} cannot be resumed: its {field} must be {expected}; got {r}. "
        f"It was left untouched; delete it to train from the start (rm '{path}') or pass another "
        f"cache_dir (or set ${CACHE_ENV_VAR})."
    )


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_rng_state(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.ndim == 1 and v.numel() > 0


def validate_partial(ckpt: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Check every resume field of a partial checkpoint against its own (verified) config.

    A partial is written after epoch ``e`` of an ``epochs``-epoch run only while
    ``e < epochs``, with ``e`` history records (numbered 1..e, finite losses), the
    optimizer state (``state`` and ``param_groups``), the shuffling generator's and the
    global RNG's states (uint8 tensors), an optional CUDA RNG state and the finite,
    non-negative wall time so far. Anything else (an ``epoch`` past the run's end, an
    ``epoch`` that is not an integer, a history of the wrong length, ...) would resume
    into a wrong model, so it is refused here.

    Raises
    ------
    CheckpointError
        Naming the file, the field, what it must be and what it holds, and the fix.
    """
    path = Path(path)
    config = ckpt.get("config") or {}
    epochs = config.get("epochs")
    if not _is_int(epochs) or epochs < 1:
        raise _partial_error(path, "config['epochs']", "an integer >= 1", epochs)
    epoch = ckpt.get("epoch")
    if not _is_int(epoch):
        raise _partial_error(path, "epoch (the number of finished epochs)", "an integer", epoch)
    if not 1 <= epoch < epochs:
        raise _partial_error(
            path, "epoch (the number of finished epochs)",
            f"in [1, {epochs - 1}] (partials are written before the last of the run's {epochs} epochs)", epoch,
        )
    history = ckpt.get("history")
    if not isinstance(history, list) or len(history) != epoch:
        got = f"{type(history).__name__} of length {len(history)}" if isinstance(history, list) else history
        raise _partial_error(path, "history", f"a list of {epoch} per-epoch records (one per finished epoch)", got)
    for i, rec in enumerate(history):
        if not isinstance(rec, Mapping) or rec.get("epoch") != i + 1:
            raise _partial_error(path, f"history[{i}]", f"a record of epoch {i + 1}", rec)
        loss = rec.get("train_loss")
        if not isinstance(loss, int | float) or isinstance(loss, bool) or not math.isfinite(loss):
            raise _partial_error(path, f"history[{i}]['train_loss']", "a finite number", loss)
    wall = ckpt.get("wall_time_s")
    if not isinstance(wall, int | float) or isinstance(wall, bool) or not math.isfinite(wall) or wall < 0:
        raise _partial_error(path, "wall_time_s", "a finite number >= 0", wall)
    opt = ckpt.get("optimizer")
    if not isinstance(opt, Mapping) or not {"state", "param_groups"} <= set(opt):
        shown = sorted(opt) if isinstance(opt, Mapping) else opt
        raise _partial_error(path, "optimizer", "an optimizer state_dict (with 'state' and 'param_groups')",
                             shown)
    for name in ("generator", "rng"):
        if not _is_rng_state(ckpt.get(name)):
            raise _partial_error(path, name, "a random-generator state (a 1-D uint8 tensor)", ckpt.get(name))
    if ckpt.get("cuda_rng") is not None and not _is_rng_state(ckpt["cuda_rng"]):
        raise _partial_error(path, "cuda_rng", "None or a CUDA generator state (a 1-D uint8 tensor)",
                             ckpt["cuda_rng"])


def _verify_content(ckpt: Mapping[str, Any], path: Path) -> None:
    state = ckpt["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} has a state_dict that is not a mapping of tensors. "
                              f"{_fix_hint(path)}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds non-finite weights (NaN or inf) in {bad[:5]}; a model like that "
            f"cannot have the accuracy it records. {_fix_hint(path)}"
        )
    stored = ckpt.get("content_sha256")
    if stored is None:
        logger.warning("checkpoint %s was written by an older fisherscope without a content digest; "
                       "its weights and metrics cannot be verified (retrain to get a verified one)", path)
        return
    actual = content_digest(state, ckpt.get("metrics"))
    if actual != stored:
        raise CheckpointError(
            f"checkpoint {path} is damaged or was edited: its weights and metrics hash to {actual[:16]}..., "
            f"not to the recorded content_sha256 {str(stored)[:16]}.... {_fix_hint(path)}"
        )


@dataclass(eq=False)
class TrainedModel:
    """A trained model and everything needed to reproduce or find it again.

    Attributes
    ----------
    model : nn.Module
        The network, in eval mode.
    arch : str
        Registry name (:data:`fisherscope.models.MODELS`).
    model_kwargs : dict
        All constructor keywords (defaults filled in): ``MODELS[arch](**model_kwargs)``.
    config : dict
        Everything that determined the weights, flat: ``format_version, arch,
        model_kwargs``, the training hyperparameters (``epochs, lr, batch_size, optimizer,
        momentum, weight_decay, lr_schedule, augment, normalize, seed``), ``dataset``
        (name, checksum, per-split size / shape / content sha256) and ``defense``;
        ``key == compute_key(config)``.
    key : str
        sha256 cache key.
    checkpoint_path : Path or None
        The final checkpoint file (``None`` when trained with ``cache=False``).
    from_cache : bool
        True when loaded from the cache without training.
    metrics : dict
        ``train_accuracy`` (full training set, eval mode), ``test_accuracy`` (or None),
        ``wall_time_s`` (training time, summed over resumed runs), ``history`` (one dict
        per epoch), ``device``, ``versions``...
    """

    model: nn.Module
    arch: str
    model_kwargs: dict[str, Any]
    config: dict[str, Any]
    key: str
    checkpoint_path: Path | None
    from_cache: bool
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoint(self) -> Path | None:
        """Alias of ``checkpoint_path``."""
        return self.checkpoint_path

    @property
    def train_accuracy(self) -> float | None:
        return self.metrics.get("train_accuracy")

    @property
    def test_accuracy(self) -> float | None:
        return self.metrics.get("test_accuracy")

    def __repr__(self) -> str:
        acc = self.test_accuracy
        acc_s = f"{acc:.4f}" if isinstance(acc, float) else "n/a"
        return (
            f"TrainedModel(arch={self.arch!r}, key={self.key[:12]}..., test_accuracy={acc_s}, "
            f"from_cache={self.from_cache}, checkpoint_path={str(self.checkpoint_path)!r})"
        )


def model_from_checkpoint(ckpt: Mapping[str, Any], path: Path) -> nn.Module:
    """Build ``MODELS[arch](**model_kwargs)`` and load the state dict (eval mode, CPU)."""
    arch = ckpt["arch"]
    if arch not in MODELS:
        raise CheckpointError(
            f"checkpoint {path} is for architecture {arch!r}, which this fisherscope does not "
            f"know (valid: {sorted(MODELS)}). Upgrade fisherscope, or delete the file."
        )
    try:
        model = MODELS[arch](**ckpt["model_kwargs"])
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit architecture {arch!r} with {ckpt['model_kwargs']}: "
            f"{str(exc).splitlines()[0]}. {_fix_hint(path)}"
        ) from exc
    return model.eval()


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    expected_key: str | None = None,
) -> TrainedModel:
    """Load a final checkpoint written by :func:`fisherscope.training.train_model`.

    Parameters
    ----------
    path : path-like
        A ``<arch>-<key>.pt`` file (see :func:`list_checkpoints`).
    device : str or torch.device, optional
        Where to put the model (CPU by default).
    expected_key : str, optional
        Refuse the file unless it stores this key.

    Returns
    -------
    TrainedModel
        With ``from_cache=True`` and the model in eval mode.

    Raises
    ------
    FileNotFoundError
        No such file.
    CheckpointError
        Corrupt, partial, inconsistent, or another key than ``expected_key``.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, expected_key=expected_key, expected_kind="final")
    model = model_from_checkpoint(ckpt, path)
    if device is not None:
        model.to(device)
    return TrainedModel(
        model=model,
        arch=ckpt["arch"],
        model_kwargs=dict(ckpt["model_kwargs"]),
        config=dict(ckpt["config"]),
        key=ckpt["key"],
        checkpoint_path=path,
        from_cache=True,
        metrics=dict(ckpt.get("metrics") or {}),
    )


@dataclass(frozen=True)
class CheckpointInfo:
    """One file in the checkpoint cache, as listed by :func:`list_checkpoints`.

    ``status`` is ``"complete"``, ``"partial"`` (an interrupted run; training the same
    request resumes it) or ``"corrupt"`` (``error`` says why; never used by the cache).
    """

    path: Path
    status: str
    arch: str | None = None
    key: str | None = None
    dataset: str | None = None
    epochs_done: int | None = None
    epochs: int | None = None
    train_accuracy: float | None = None
    test_accuracy: float | None = None
    wall_time_s: float | None = None
    created: str | None = None
    size_bytes: int = 0
    config: dict[str, Any] | None = None
    error: str | None = None


def list_checkpoints(cache_dir: str | os.PathLike[str] | None = None) -> list[CheckpointInfo]:
    """Every checkpoint in the cache directory, newest first.

    Reads files memory-mapped (cheap even for large models) and verifies each; files that
    fail are listed with ``status="corrupt"`` and the reason, never modified.

    Parameters
    ----------
    cache_dir : path-like, optional
        Defaults to :func:`resolve_cache_dir`.
    """
    root = resolve_cache_dir(cache_dir)
    if not root.is_dir():
        return []
    infos: list[CheckpointInfo] = []
    for path in root.glob("*.pt"):
        if path.name.startswith("."):
            continue
        size = path.stat().st_size
        try:
            ckpt = read_checkpoint(path, mmap=True)
        except (CheckpointError, OSError) as exc:
            infos.append(CheckpointInfo(path=path, status="corrupt", size_bytes=size, error=str(exc)))
            continue
        config = ckpt["config"]
        metrics = ckpt.get("metrics") or {}
        partial = ckpt["kind"] == "partial"
        training = config
        infos.append(
            CheckpointInfo(
                path=path,
                status="partial" if partial else "complete",
                arch=ckpt["arch"],
                key=ckpt["key"],
                dataset=(config.get("dataset") or {}).get("name"),
                epochs_done=ckpt["epoch"] if partial else training.get("epochs"),
                epochs=training.get("epochs"),
                train_accuracy=None if partial else metrics.get("train_accuracy"),
                test_accuracy=None if partial else metrics.get("test_accuracy"),
                wall_time_s=ckpt.get("wall_time_s") if partial else metrics.get("wall_time_s"),
                created=ckpt.get("created"),
                size_bytes=size,
                config=dict(config),
            )
        )
    infos.sort(key=lambda i: (i.created or "", str(i.path)), reverse=True)
    return infos


def make_checkpoint(
    *,
    kind: str,
    key: str,
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    metrics: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Assemble the checkpoint dict (plain types and CPU tensors only)."""
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "key": key,
        "arch": config["arch"],
        "model_kwargs": dict(config["model_kwargs"]),
        "config": json.loads(canonical_json(config)),
        "metrics": dict(metrics or {}),
        "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
        "versions": library_versions(),
        "created": _now(),
    }
    ckpt.update(extra)
    ckpt["content_sha256"] = content_digest(ckpt["state_dict"], ckpt["metrics"])
    return ckpt


def save_checkpoint(trained: TrainedModel, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write ``trained`` as the final checkpoint of its key into ``cache_dir``; returns the path.

    The way to keep a model whose training finished but whose checkpoint could not be
    written (:class:`~fisherscope.exceptions.ModelNotSavedError`: ``exc.trained``): save
    it into another folder, and the same ``train_model`` request with that ``cache_dir``
    then loads it instead of training. A verified checkpoint of the same key already
    there is kept as it is (same request, same weights).

    Raises
    ------
    ValueError
        ``trained.key`` is not the hash of ``trained.config``.
    CheckpointError
        A damaged file or another request's checkpoint is in the way (never overwritten).
    WriteError
        The file could not be written (the message says why); nothing is left behind.
    """
    if not isinstance(trained, TrainedModel):
        raise TypeError(f"save_checkpoint needs a TrainedModel (from train_model); got {type(trained).__name__}.")
    if compute_key(trained.config) != trained.key:
        raise ValueError(
            f"save_checkpoint: the TrainedModel's key {trained.key[:16]}... is not the hash of its config; "
            "it was modified after training. Save the TrainedModel train_model returned."
        )
    path = checkpoint_path(cache_dir, trained.arch, trained.key)
    if path.exists():
        read_checkpoint(path, expected_key=trained.key, expected_kind="final")
        return path
    save_atomic(
        make_checkpoint(kind="final", key=trained.key, config=trained.config,
                        state_dict=trained.model.state_dict(), metrics=trained.metrics),
        path,
    )
    return path


def not_saved_error(trained: TrainedModel, path: Path, exc: BaseException) -> ModelNotSavedError:
    """The :class:`ModelNotSavedError` for a finished training whose checkpoint ``path`` failed."""
    acc = trained.metrics.get("test_accuracy")
    acc_s = f", test accuracy {acc:.4f}" if isinstance(acc, float) else ""
    return ModelNotSavedError(
        f"training {trained.arch} finished{acc_s}, but {exc} The trained model was kept: it is "
        f"exc.trained (a TrainedModel); save it with fisherscope.models.save_checkpoint(exc.trained, "
        f"cache_dir=<another folder>), or retry with another cache folder (--cache-dir DIR on the "
        f"command line, cache_dir= in Python, or ${CACHE_ENV_VAR}). No partial file was left behind.",
        trained=trained, path=path,
    )
