"""A user's own model, in every form it comes in, checked against the model contract.

:func:`load_model` is the one entry point (the ``audit`` command and :func:`fisherscope.audit`
call it); it takes

- an ``nn.Module`` (used as it is);
- a :data:`~fisherscope.models.MODELS` architecture name with ``weights=`` (a fisherscope
  checkpoint, a state dict saved with ``torch.save`` or a ``.safetensors`` file);
- a fisherscope checkpoint file alone (its architecture is recorded in it);
- a TorchScript file (``torch.jit.save``) or a ``torch.export`` program (``torch.export.save``,
  ``.pt2``), which carry their own weights;
- ``"package.module:factory"`` or ``"path/to/file.py:factory"`` (a class or function
  returning an ``nn.Module``), with ``weights=`` a state dict or ``.safetensors`` file.

Nothing is unpickled beyond tensors and plain containers: state dicts are read with
``torch.load(..., weights_only=True)``; a file that needs full unpickling (``torch.save(model)``)
is refused, naming the safe ways to save it. Formats are recognised by their content, not by
the file suffix.

Options wrap the model so that it meets the contract (pixels in ``bounds`` in, logits out):
``normalize=(mean, std)`` puts a :class:`~fisherscope.models.Normalize` in front of a model
that expects standardised inputs, ``output="probs"`` / ``"log_probs"`` adds the
:func:`~fisherscope.models.as_logits` adapter, ``num_classes`` and ``input_shape`` state what
the model must take and give. :func:`check_model_contract` runs it on one batch (``example=``
of :func:`load_model`) and says before any attack runs when the outputs are probabilities,
the input shape does not fit, the data's labels exceed the model's classes or the model fails.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import logging
import math
import os
import re
import struct
import sys
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._validation import (
    BOUNDS,
    DEFAULT_BOUNDS,
    check_inputs,
    check_logits,
    check_param,
    eval_mode,
    integer,
    one_of,
    param_error,
)
from ..exceptions import CheckpointError, ParameterTypeError
from .architectures import MODELS, Normalize, as_logits
from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .checkpoint import read_checkpoint

__all__ = [
    "NORMALIZE_PRESETS",
    "OUTPUTS",
    "ExportedProgramModel",
    "LoadedModel",
    "ModelContractWarning",
    "WeightsMismatchError",
    "check_model_contract",
    "load_model",
    "load_weights",
    "parse_normalize",
    "read_weights",
]

logger = logging.getLogger(__name__)

OUTPUTS = ("logits", "probs", "log_probs")

#: Well-known per-channel (mean, std) of datasets, for ``normalize="<name>"``.
NORMALIZE_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mnist": ((0.1307,), (0.3081,)),
}

#: Keys under which training scripts commonly store the state dict inside a checkpoint dict.
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights",
                    "params", "ema", "model_ema")
#: Prefixes that wrappers add to every key (DataParallel, torch.compile, Lightning, ...).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")
_FACTORY = re.compile(r"^(?P<module>[A-Za-z_][\w.]*|.+\.py):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")
_OWNER = "load_model"
_SHOW = 10  # keys named in an error message
_PICKLE_SCAN_LIMIT = 1 << 26  # bytes of a plain pickle scanned for the names it references


class WeightsMismatchError(ValueError):
    """Weights that do not fit the model: missing keys, unexpected keys, shape mismatches.

    Attributes
    ----------
    missing : list of str
        In the model, not in the file.
    unexpected : list of str
        In the file, not in the model.
    mismatched : list of (str, tuple, tuple)
        ``(key, shape in the file, shape in the model)``.
    """

    def __init__(self, message: str, *, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                 mismatched: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


class ModelContractWarning(UserWarning):
    """The model meets the contract, but its behaviour on the probe batch looks wrong
    (e.g. one class predicted for every image: a preprocessing mismatch)."""


# ------------------------------------------------------------------------ exported programs


class ExportedProgramModel(nn.Module):
    """A ``torch.export`` program as an ``nn.Module`` that fisherscope can run.

    The module of an exported program (``ExportedProgram.module()``) refuses ``train()`` and
    ``eval()``: its mode was fixed when it was exported. This wrapper accepts them (they set
    only its own flag) so that the library's eval-mode handling works; dropout and batch norm
    behave as they did at export time.

    Shapes
    ------
    x: the shape the program was exported for (a dynamic batch dimension) -> (N, K).
    """

    def __init__(self, program_module: nn.Module) -> None:
        super().__init__()
        self.program = program_module

    def train(self, mode: bool = True) -> ExportedProgramModel:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready for fisherscope, and where it came from.

    Attributes
    ----------
    model : nn.Module
        In eval mode; maps pixels in ``bounds`` (N, C, H, W) to logits (N, K), with the
        ``normalize`` and ``output`` wrappers applied.
    kind : str
        ``"module"``, ``"registry"``, ``"checkpoint"``, ``"torchscript"``, ``"export"`` or
        ``"factory"``.
    source : str
        The architecture name, file or ``module:factory`` it was built from.
    weights : str or None
        The weights file (``None`` when the model carries its own or was passed built).
    weights_format : str or None
        ``"safetensors"``, ``"state_dict"`` or ``"fisherscope.checkpoint"``.
    weights_sha256 : str or None
        sha256 of the weights file's bytes (or of the model file for TorchScript / export).
    model_kwargs : dict
        Keyword arguments the architecture or factory was called with.
    normalize : (tuple, tuple) or None
        Per-channel (mean, std) applied in front of the model (inside it for registry
        models whose weights lacked their Normalize statistics).
    output : str
        What the wrapped model returned before the adapter: one of :data:`OUTPUTS`.
    num_classes : int or None
        K, once the model ran on a batch (or as stated).
    input_shape : tuple or None
        (C, H, W) the model takes (as stated, or of the probe batch).
    capabilities : dict
        ``{"layer_hooks": bool, "parameter_fisher": bool}``: whether features that hook
        named layers (penultimate, layer activations: KD, LID, Mahalanobis) and the
        parameter-space Fisher (``torch.func.functional_call``) work on this model.
        TorchScript and exported programs have no Python layers to hook; TorchScript
        modules also refuse the stateless (functional) API.
    notes : tuple of str
        What was adapted on the way (a stripped key prefix, the state dict's key in the file).
    """

    model: nn.Module
    kind: str
    source: str
    weights: str | None = None
    weights_format: str | None = None
    weights_sha256: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    output: str = "logits"
    num_classes: int | None = None
    input_shape: tuple[int, int, int] | None = None
    capabilities: dict[str, bool] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        """Everything but the module itself, as JSON values (for provenance records)."""
        return {
            "kind": self.kind, "source": self.source, "weights": self.weights,
            "weights_format": self.weights_format, "weights_sha256": self.weights_sha256,
            "model_kwargs": dict(self.model_kwargs),
            "normalize": None if self.normalize is None else [list(self.normalize[0]), list(self.normalize[1])],
            "output": self.output, "num_classes": self.num_classes,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "capabilities": dict(self.capabilities), "notes": list(self.notes),
        }


# ------------------------------------------------------------------------ normalisation


def _floats(value: Any) -> tuple[float, ...] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return (float(value),)
    if isinstance(value, torch.Tensor):
        return tuple(float(v) for v in value.flatten().tolist())
    if isinstance(value, Sequence) and not isinstance(value, str) and value and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        return tuple(float(v) for v in value)
    return None


def parse_normalize(value: Any, *, owner: str = _OWNER) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Per-channel ``(mean, std)`` from the forms a user writes them in.

    Parameters
    ----------
    value : None, str or (mean, std)
        ``None`` (no normalisation); a preset name of :data:`NORMALIZE_PRESETS`
        (``"imagenet"``, ``"cifar10"``, ``"mnist"``); a string ``"mean,std"`` of two numbers
        (the same for every channel), of 2C numbers (C means, then C stds) or
        ``"m1,m2,m3;s1,s2,s3"``; or a pair ``(mean, std)`` of numbers or sequences.

    Returns
    -------
    (tuple, tuple) or None
        Means and stds of equal length (1 or C); every std > 0, every value finite.

    Examples
    --------
    >>> parse_normalize("0.5,0.25")
    ((0.5,), (0.25,))
    >>> parse_normalize("0.1,0.2,0.3,1,2,3")
    ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    """
    if value is None:
        return None
    expected = ("None, a preset name (" + ", ".join(repr(k) for k in NORMALIZE_PRESETS)
                + "), 'mean,std', 'm1,..,mC,s1,..,sC', 'm1,..;s1,..' or a pair (mean, std)")
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in NORMALIZE_PRESETS:
            return NORMALIZE_PRESETS[text]
        try:
            if ";" in text:
                left, right = text.split(";", 1)
                mean = tuple(float(v) for v in left.split(",") if v.strip())
                std = tuple(float(v) for v in right.split(",") if v.strip())
            else:
                nums = tuple(float(v) for v in text.split(",") if v.strip())
                if len(nums) < 2 or len(nums) % 2:
                    raise ValueError("odd count")
                mean, std = nums[: len(nums) // 2], nums[len(nums) // 2:]
        except ValueError:
            raise param_error(owner, "normalize", value, expected,
                              "Write it as 'mean,std' (e.g. '0.5,0.5') or per channel "
                              "'0.485,0.456,0.406,0.229,0.224,0.225'.") from None
    elif isinstance(value, Sequence) and len(value) == 2:
        mean, std = _floats(value[0]), _floats(value[1])
        if mean is None or std is None:
            raise param_error(owner, "normalize", value, expected,
                              "Pass (mean, std) with numbers or sequences of numbers.", ParameterTypeError)
    else:
        raise param_error(owner, "normalize", value, expected,
                          "Pass (mean, std), e.g. (0.5, 0.5) or ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).",
                          ParameterTypeError)
    if len(mean) != len(std) or not mean:
        raise param_error(owner, "normalize", value, "one mean and one std per channel",
                          f"Got {len(mean)} means and {len(std)} stds; give as many of each.")
    if not all(math.isfinite(v) for v in mean + std) or not all(s > 0 for s in std):
        raise param_error(owner, "normalize", value, "finite means and stds > 0",
                          "A constant channel has std 0: use std 1 for it.")
    return mean, std


def _normalize_module(mean: tuple[float, ...], std: tuple[float, ...]) -> Normalize:
    norm = Normalize(len(mean))
    norm.set_statistics(mean, std)
    return norm


# ------------------------------------------------------------------------------ files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _zip_members(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON object."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 8 + n <= size


def _file_kind(path: Path) -> str:
    """``"export"``, ``"torchscript"``, ``"safetensors"`` or ``"torch"`` (a torch.save / pickle file)."""
    if _is_safetensors(path):
        return "safetensors"
    members = _zip_members(path)
    if any(m.endswith("/archive_format") or m == "archive_format" for m in members):
        return "export"
    if any(m.endswith("/constants.pkl") for m in members) and any("/code/" in m for m in members):
        return "torchscript"
    return "torch"


def _pickle_bytes(path: Path) -> bytes | None:
    """The pickle stream of a ``torch.save`` file (zip or legacy) or a plain pickle; None otherwise."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("data.pkl")]
            return zf.read(names[0]) if names else None
    except (zipfile.BadZipFile, OSError):
        pass
    try:
        with open(path, "rb") as f:
            data = f.read(_PICKLE_SCAN_LIMIT)
    except OSError:
        return None
    return data if data[:1] == b"\x80" else None


def _pickle_globals(data: bytes) -> list[str]:
    """The classes and functions a pickle stream names, read with ``pickletools`` (nothing runs)."""
    import pickletools

    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            if isinstance(arg, str) and "UNICODE" in op.name:
                strings.append(arg)
            if op.name == "STOP":
                break
    except Exception:  # noqa: BLE001 - a damaged stream: report what was read
        pass
    benign = ("torch._utils.", "collections.OrderedDict", "torch.")
    return list(dict.fromkeys(g for g in found if not g.startswith(benign)))


def _pickle_refusal(path: Path, names: list[str]) -> CheckpointError:
    refs = f" (it references {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else ""
    return CheckpointError(
        f"{path} holds pickled Python objects beyond tensors{refs}: loading it would run code "
        "from the file (torch.load(weights_only=False)), so fisherscope refuses it. Save the model "
        "in a safe form instead: its weights, torch.save(model.state_dict(), 'weights.pt') or "
        "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors'), loaded with "
        "model='your_package.module:YourModel' (or an architecture name) and weights=...; or the "
        "whole program, torch.export.save(torch.export.export(model, (x,)), 'model.pt2') or "
        "torch.jit.save(torch.jit.trace(model, x), 'model.ts')."
    )


def _load_failure(exc: BaseException) -> str:
    """The reason torch.load gave, without its advice to load with weights_only=False."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:  # torch's weights-only preamble, then the reason
        reason = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
        text = " ".join(reason.split())
    else:
        text = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a weights file safely: a state dict, a checkpoint dict holding one, or safetensors.

    Parameters
    ----------
    path : path-like
        A ``.safetensors`` file; a file of ``torch.save(model.state_dict())``; a checkpoint
        dict with the state dict under one of ``state_dict``, ``model_state_dict``,
        ``model``, ``net``, ... (training scripts' habits); or a fisherscope checkpoint
        (verified: format, key and content digest).

    Returns
    -------
    state_dict : dict
        Name -> tensor, on the CPU.
    info : dict
        ``format`` (``"safetensors"``, ``"state_dict"``, ``"fisherscope.checkpoint"``),
        ``sha256`` of the file, ``container_key`` (where in the file the state dict was),
        ``arch`` / ``model_kwargs`` for a fisherscope checkpoint.

    Raises
    ------
    FileNotFoundError
        No such file.
    CheckpointError
        A pickle-only file (the message names the safe alternatives), a corrupt file, or
        one with no state dict in it (the message lists what it holds).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{_OWNER}: weights file {path} does not exist.")
    info: dict[str, Any] = {"sha256": _sha256(path), "container_key": None}
    kind = _file_kind(path)
    if kind == "safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - a dependency
            raise CheckpointError(f"{path} is a safetensors file; install the safetensors package "
                                  "(pip install safetensors) to read it.") from None
        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - any decoding failure is a corrupt file
            raise CheckpointError(f"{path} looks like a safetensors file but cannot be read "
                                  f"({type(exc).__name__}: {exc}); it is truncated or corrupt.") from exc
        info["format"] = "safetensors"
        return dict(state), info
    if kind in ("export", "torchscript"):
        what = "a torch.export program" if kind == "export" else "a TorchScript module"
        raise CheckpointError(
            f"{path} is {what}, which carries its own architecture and weights: pass it as the "
            "model (model=path) without weights=."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle_errors() as exc:
        stream = _pickle_bytes(path)
        if stream is not None and "Weights only load failed" in str(exc):
            raise _pickle_refusal(path, _pickle_globals(stream)) from None
        raise CheckpointError(
            f"{path} is not a PyTorch weights file: torch.load(weights_only=True) could not read it "
            f"({_load_failure(exc)}). Expected a state dict saved with "
            "torch.save(model.state_dict(), path), a fisherscope checkpoint, a .safetensors file, "
            "a TorchScript or a torch.export file; check that the file is complete (not truncated) "
            "and is the one you meant."
        ) from None
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        ckpt = read_checkpoint(path)
        info.update(format="fisherscope.checkpoint", container_key="state_dict",
                    arch=ckpt["arch"], model_kwargs=dict(ckpt["model_kwargs"]))
        return dict(ckpt["state_dict"]), info
    info["format"] = "state_dict"
    if _tensor_mapping(obj):
        return dict(obj), info
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            if _tensor_mapping(obj.get(key)):
                info["container_key"] = key
                return dict(obj[key]), info
        held = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:12])
        raise CheckpointError(
            f"{path} holds a dict without a state dict in it ({{{held}}}); expected a mapping of "
            f"parameter names to tensors, at the top level or under one of {list(_STATE_DICT_KEYS)}. "
            "Save it with torch.save(model.state_dict(), path)."
        )
    raise CheckpointError(
        f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of parameter names to "
        "tensors). Save it with torch.save(model.state_dict(), path)."
    )


def pickle_errors() -> tuple[type[BaseException], ...]:
    """What ``torch.load`` raises for files it cannot or will not unpickle."""
    import pickle

    return (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, AttributeError, TypeError,
            ImportError, KeyError, IndexError, struct.error, UnicodeDecodeError)


# ------------------------------------------------------------------- weights -> module


def _strip_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Drop wrapper prefixes (``module.`` of DataParallel, ``_orig_mod.`` of torch.compile, ...)
    that every key of ``state`` carries and the model's keys do not."""
    stripped: list[str] = []
    for _ in range(3):
        if set(state) & expected:
            break
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped.append(prefix)
                break
        else:
            break
    return state, stripped


def _names(keys: Sequence[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_SHOW])
    return f"[{shown}{', ...' if len(keys) > _SHOW else ''}]"


def _mismatch_hints(model: nn.Module, mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> list[str]:
    hints = []
    params = [k for k, v in model.state_dict().items() if v.ndim >= 1 and v.is_floating_point()]
    head = set(params[-2:])
    for key, got, want in mismatched:
        if key in head and len(got) == len(want) and got[0] != want[0] and got[1:] == want[1:]:
            hints.append(f"the file's output layer {key!r} has {got[0]} outputs: pass num_classes={got[0]}")
            break
    for key, got, want in mismatched:
        if key.endswith("weight") and len(got) == 4 and len(want) == 4 and got[1] != want[1] and got[0] == want[0]:
            hints.append(f"{key!r} takes {got[1]} input channels in the file: build the model with "
                         f"in_channels={got[1]} (model_kwargs) or feed {want[1]}-channel images")
            break
    return hints


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str = "the weights",
                 what: str | None = None, allow_missing: Sequence[str] = ()) -> list[str]:
    """Load ``state`` into ``model`` strictly, naming every key that does not fit.

    Wrapper prefixes that every key carries (``module.``, ``_orig_mod.``, ``model.``, ``net.``)
    are dropped when the model's keys lack them. Keys in ``allow_missing`` may be absent
    (they keep the model's values).

    Returns
    -------
    list of str
        Notes on what was adapted (stripped prefixes).

    Raises
    ------
    WeightsMismatchError
        Missing keys, unexpected keys or shape mismatches (all of them counted, the first ten
        of each named, with a hint at num_classes / in_channels where the shapes suggest it).
    CheckpointError
        Non-finite weights (the keys are named).
    """
    expected = model.state_dict()
    state, stripped = _strip_prefix(dict(state), set(expected))
    notes = [f"stripped the key prefix {p!r} from the weights" for p in stripped]
    missing = [k for k in expected if k not in state and k not in allow_missing]
    unexpected = [k for k in state if k not in expected]
    mismatched = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    target = what or type(model).__name__
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (in the model, not in the file): {_names(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (in the file, not in the model): {_names(unexpected)}")
        if mismatched:
            shown = "; ".join(f"{k!r} file {list(g)} vs model {list(w)}" for k, g, w in mismatched[:_SHOW])
            parts.append(f"{len(mismatched)} shape mismatch(es): {shown}{'; ...' if len(mismatched) > _SHOW else ''}")
        hints = _mismatch_hints(model, mismatched)
        fix = ("; ".join(hints) + ". " if hints else "") + (
            "Build the model with the arguments the weights were saved from (model_kwargs=..., "
            "num_classes=...), or pass the factory that made them.")
        raise WeightsMismatchError(f"{_OWNER}: {source} do not fit {target}: " + "; ".join(parts) + ". " + fix,
                                   missing=missing, unexpected=unexpected, mismatched=mismatched)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{_OWNER}: {source} hold non-finite values (NaN or inf) in {_names(bad)}; "
                              "a model with such weights cannot be audited. Re-save them from a healthy model.")
    missing_ok = [k for k in allow_missing if k in expected and k not in state]
    result = model.load_state_dict(state, strict=not missing_ok)
    if missing_ok and (set(result.missing_keys) - set(missing_ok) or result.unexpected_keys):  # pragma: no cover
        raise WeightsMismatchError(f"{_OWNER}: {source} do not fit {target}.",
                                   missing=result.missing_keys, unexpected=result.unexpected_keys)
    return notes


def _normalize_keys(model: nn.Module) -> dict[str, Normalize]:
    """State-dict prefix -> Normalize module, for the model's fisherscope Normalize modules."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Normalize)}


# ---------------------------------------------------------------------------- builders


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _import_factory(spec: str) -> Any:
    m = _FACTORY.match(spec)
    assert m is not None
    module_name, attr = m.group("module"), m.group("attr")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name).expanduser()
            if not file.is_file():
                raise FileNotFoundError(f"no such file {file}")
            name = f"fisherscope_user_{hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]}"
            loader_spec = importlib.util.spec_from_file_location(name, file)
            if loader_spec is None or loader_spec.loader is None:
                raise ImportError(f"cannot import {file}")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the same user error
        raise param_error(_OWNER, "model", spec, "an importable 'package.module:factory' or 'file.py:factory'",
                          f"Importing {module_name!r} failed ({type(exc).__name__}: {exc}); check the name "
                          "and that its folder is on PYTHONPATH (or give the .py file's path).") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(obj) if not n.startswith("_"))[:20]
            raise param_error(_OWNER, "model", spec, "'package.module:factory' naming an attribute of the module",
                              f"{module_name} has no attribute {attr!r} (it has {names}).")
        obj = getattr(obj, part)
    if not callable(obj):
        raise param_error(_OWNER, "model", spec, "'package.module:factory' naming a class or function",
                          f"{module_name}.{attr} is a {type(obj).__name__}, not callable.", ParameterTypeError)
    return obj


def _registry_kwargs(arch: str, model_kwargs: Mapping[str, Any], num_classes: int | None,
                     input_shape: tuple[int, int, int] | None) -> dict[str, Any]:
    kwargs = dict(model_kwargs)
    ctor = MODELS[arch]
    if num_classes is not None and "num_classes" not in kwargs and _accepts(ctor, "num_classes"):
        kwargs["num_classes"] = num_classes
    if input_shape is not None:
        if "in_channels" not in kwargs and _accepts(ctor, "in_channels"):
            kwargs["in_channels"] = input_shape[0]
        if "input_size" not in kwargs and _accepts(ctor, "input_size") and input_shape[1] == input_shape[2]:
            kwargs["input_size"] = input_shape[1]
    return kwargs


def _check_input_shape(input_shape: Any) -> tuple[int, int, int] | None:
    if input_shape is None:
        return None
    ok = (isinstance(input_shape, Sequence) and not isinstance(input_shape, str) and len(input_shape) == 3
          and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in input_shape))
    if not ok:
        raise param_error(_OWNER, "input_shape", input_shape, "None or (C, H, W), three integers >= 1",
                          "Pass e.g. (3, 32, 32) for CIFAR-size colour images (no batch dimension).")
    return (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))


def _exported_static_batch(module: nn.Module) -> tuple[int, ...] | None:
    """The traced input shape when an exported program's batch dimension is static."""
    graph = getattr(module, "graph", None)
    if graph is None:
        return None
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    user_inputs = [n for n in placeholders if not str(n.name).startswith(("p_", "b_", "c_"))]
    for node in user_inputs:
        val = node.meta.get("val")
        shape = getattr(val, "shape", None)
        if shape is not None and len(shape) >= 1 and isinstance(shape[0], int):
            return tuple(int(s) for s in shape)
    return None


def _load_program(path: Path, kind: str, device: Any) -> nn.Module:
    try:
        if kind == "torchscript":
            return torch.jit.load(str(path), map_location=device or "cpu")
        program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - a corrupt archive of either kind
        what = "TorchScript module" if kind == "torchscript" else "torch.export program"
        raise CheckpointError(f"{path} looks like a {what} but cannot be loaded ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}).") from exc
    module = program.module()
    static = _exported_static_batch(module)
    if static is not None:
        raise CheckpointError(
            f"{path} is a torch.export program traced for inputs of shape {list(static)} with a fixed "
            f"batch size of {static[0]}; fisherscope runs batches of any size. Export it with a dynamic "
            "batch dimension: torch.export.export(model, (x,), dynamic_shapes={'x': {0: "
            "torch.export.Dim('batch')}}) (x of batch size >= 2), then torch.export.save(...)."
        )
    return ExportedProgramModel(module)


# -------------------------------------------------------------------------- the contract


def check_model_contract(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    num_classes: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    owner: str = _OWNER,
) -> int:
    """Run ``model`` on one batch and check it against the model contract (README).

    Checked, in this order, so that a mismatch is named before any attack runs: the batch
    has the stated ``input_shape``; its values lie in ``bounds``; the model runs on it; it
    returns one row of finite logits per image (not probabilities: those get the
    ``output="probs"`` fix); there are ``num_classes`` columns; the labels ``y`` are classes
    of the model. A model predicting one class for every image of a batch with several
    labels gets a :class:`ModelContractWarning` (usually a preprocessing mismatch).

    Parameters
    ----------
    model : nn.Module
        Run in eval mode without gradients (each module's mode is restored).
    x : Tensor
        (N, C, H, W) images in ``bounds``.
    y : Tensor, optional
        (N,) int64 labels.
    num_classes : int, optional
        The K the model must output.
    input_shape : (int, int, int), optional
        The (C, H, W) the model takes.

    Returns
    -------
    int
        K, the number of classes of the model.

    Raises
    ------
    ValueError
        Any of the above, naming what was expected, what arrived and the fix.
    """
    if not isinstance(model, nn.Module):
        raise param_error(owner, "model", model, "a torch.nn.Module mapping (N, C, H, W) to logits (N, K)",
                          "Load it with fisherscope.models.load_model(...).", ParameterTypeError)
    input_shape = _check_input_shape(input_shape)
    if input_shape is not None and isinstance(x, torch.Tensor) and x.ndim == 4 and tuple(x.shape[1:]) != input_shape:
        raise ValueError(
            f"{owner}: the data's images have shape {list(x.shape[1:])} (C, H, W) but the model takes "
            f"input_shape {list(input_shape)}. Resize or crop the images (the data loader's resize / "
            "center_crop / channels options) or correct input_shape."
        )
    check_inputs(x, y, bounds=bounds, name="the data batch", image=True)
    with eval_mode(model, warn=False), torch.no_grad():
        try:
            out = model(x)
        except Exception as exc:  # noqa: BLE001 - any failure in the user's forward
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ValueError(
                f"{owner}: the model fails on a batch of shape {list(x.shape)} ({type(exc).__name__}: "
                f"{first}). It probably takes another input shape or channel count: state it with "
                "input_shape=(C, H, W) and resize the data to it (resize / center_crop / channels)."
            ) from exc
    try:
        check_logits(out, name="the model's output")
    except ValueError as exc:
        if "probabilities" in str(exc):
            raise ValueError(
                f"{owner}: the model's outputs look like probabilities (every row is in [0, 1] and sums "
                "to 1), but fisherscope's attacks and Fisher matrices need logits. Load it with "
                "output='probs' (log-softmax models: output='log_probs'), which wraps it in "
                "fisherscope.models.as_logits, or remove its final softmax."
            ) from None
        raise ValueError(f"{owner}: {exc}") from None
    if out.shape[0] != x.shape[0]:
        raise ValueError(
            f"{owner}: the model returned {out.shape[0]} rows for a batch of {x.shape[0]} images; it must "
            "return one row of logits per image (check for a reshape that merges the batch dimension)."
        )
    k = int(out.shape[1])
    if num_classes is not None and k != num_classes:
        raise ValueError(
            f"{owner}: the model outputs {k} classes but num_classes={num_classes} was stated. Pass "
            f"num_classes={k}, or load the model built for {num_classes} classes."
        )
    if y is not None and y.numel():
        hi, lo = int(y.max()), int(y.min())
        if lo < 0 or hi >= k:
            raise ValueError(
                f"{owner}: the data has labels {lo}..{hi} but the model has only {k} classes (0..{k - 1}). "
                "The data's classes must be the model's: check the class folders / label mapping, or "
                "load the model built for these classes."
            )
        pred = out.argmax(1)
        if x.shape[0] >= 8 and int(torch.unique(y).numel()) >= 2 and int(torch.unique(pred).numel()) == 1:
            warnings.warn(
                f"the model predicts class {int(pred[0])} for all {x.shape[0]} images of the probe batch, "
                f"which holds {int(torch.unique(y).numel())} classes: it probably expects other "
                "preprocessing (normalize=(mean, std), another input range, channel order or size).",
                ModelContractWarning, stacklevel=2,
            )
    return k


def _probe(model: nn.Module, input_shape: tuple[int, int, int], bounds: tuple[float, float]) -> torch.Tensor:
    lo, hi = bounds
    g = torch.Generator().manual_seed(0)
    x = torch.rand((2, *input_shape), generator=g) * (hi - lo) + lo
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    return x.to(device)


# ----------------------------------------------------------------------------- the entry


def load_model(
    model: Any,
    *,
    weights: str | os.PathLike[str] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    normalize: Any = None,
    output: str = "logits",
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    example: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    device: str | torch.device | None = None,
) -> LoadedModel:
    """A user's model, from whatever form it comes in, wrapped to meet the model contract.

    Parameters
    ----------
    model : nn.Module, str or path-like
        An ``nn.Module`` (put in eval mode; ``weights`` are loaded into it); an architecture name of :data:`~fisherscope.models.MODELS` (needs
        ``weights``); a fisherscope checkpoint file; a TorchScript file; a ``torch.export``
        program (``.pt2``); or ``"package.module:factory"`` / ``"path/file.py:factory"``
        (a class or function returning an ``nn.Module``; ``weights`` optional, for factories
        that load their own).
    weights : path-like, optional
        For an architecture name or a factory: a state dict file (``torch.save(model.state_dict())``,
        read with ``weights_only=True``), a checkpoint dict holding one, a fisherscope
        checkpoint, or a ``.safetensors`` file. Keys must match the model exactly (wrapper
        prefixes such as ``module.`` are dropped).
    model_kwargs : dict, optional
        Keyword arguments of the architecture or factory.
    normalize : None, str or (mean, std)
        The model expects standardised inputs ``(x - mean) / std``: a
        :class:`~fisherscope.models.Normalize` is put in front of it so that it takes pixels
        in ``bounds`` (see :func:`parse_normalize` for the forms). A registry model whose
        weights lack their Normalize statistics gets them set instead. A model whose weights
        carry non-trivial statistics already is refused with this option (it would
        normalise twice).
    output : {"logits", "probs", "log_probs"}
        What the model returns; ``"probs"`` / ``"log_probs"`` add the
        :func:`~fisherscope.models.as_logits` adapter.
    num_classes : int, optional
        K. Passed to the architecture or factory when it takes ``num_classes``; checked
        against the outputs.
    input_shape : (C, H, W), optional
        The input the model takes: passed to registry architectures (``in_channels``,
        ``input_size``), checked against ``example``, and used for a random probe batch when
        no ``example`` is given.
    example, labels : Tensor, optional
        A batch of the data (N, C, H, W) in ``bounds`` and its labels (N,): the contract is
        checked on them (:func:`check_model_contract`) before anything else runs.
    bounds : (float, float)
        The input range (default [0, 1]).
    device : str or torch.device, optional
        Where to put the model (CPU by default).

    Returns
    -------
    LoadedModel
        The wrapped model (eval mode) with its provenance; ``num_classes`` is K once it ran.

    Raises
    ------
    ValueError
        An unknown form of ``model``, bad options, or a contract violation on the probe batch.
    WeightsMismatchError
        Weights that do not fit the architecture (the keys and shapes are named).
    CheckpointError
        A pickle-only, corrupt or unsuitable file (the safe alternatives are named).
    FileNotFoundError
        A file that does not exist.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Softmax(dim=1))
    >>> loaded = load_model(net, output="probs", normalize=(0.5, 0.25), input_shape=(1, 8, 8))
    >>> loaded.num_classes, loaded.kind
    (10, 'module')
    """
    check_param(_OWNER, "output", output, one_of(*OUTPUTS),
                fix="Use 'probs' for a model ending in softmax, 'log_probs' for one ending in log_softmax.")
    check_param(_OWNER, "num_classes", num_classes, integer(ge=2).or_none("taken from the model"))
    check_param(_OWNER, "bounds", bounds, BOUNDS)
    shape = _check_input_shape(input_shape)
    norm = parse_normalize(normalize)
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise param_error(_OWNER, "model_kwargs", model_kwargs, "None or a dict of keyword arguments",
                          "Pass e.g. {'in_channels': 3}.", ParameterTypeError)
    kwargs = dict(model_kwargs or {})
    notes: list[str] = []
    capabilities = {"layer_hooks": True, "parameter_fisher": True}
    weights_path = None if weights is None else Path(weights).expanduser()
    weights_format = weights_sha = None
    normalize_inside = False

    def with_weights(net: nn.Module, what: str,
                     read: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> nn.Module:
        nonlocal weights_format, weights_sha, normalize_inside
        if weights_path is None:
            return net
        state, info = read if read is not None else read_weights(weights_path)
        weights_format, weights_sha = info["format"], info["sha256"]
        if info.get("container_key"):
            notes.append(f"state dict read from the file's {info['container_key']!r} entry")
        norms = _normalize_keys(net)
        stat_keys = [f"{p}.{b}" if p else b for p in norms for b in ("mean", "std")]
        has_stats = any(k in state for k in stat_keys)
        allow = stat_keys if (norm is not None and not has_stats) else ()
        try:
            notes.extend(load_weights(net, state, source=f"the weights in {weights_path}", what=what,
                                      allow_missing=allow))
        except WeightsMismatchError as exc:
            lacking = [k for k in exc.missing if k in stat_keys]
            if not lacking or norm is not None:
                raise
            raise WeightsMismatchError(
                f"{exc} The weights lack the input normalisation statistics {lacking} of the model's "
                "Normalize module: pass normalize=(mean, std) the model was trained with ((0, 1) for "
                "raw inputs in [0, 1]).",
                missing=exc.missing, unexpected=exc.unexpected, mismatched=exc.mismatched) from None
        if allow:
            for m in norms.values():
                mean, std = norm  # type: ignore[misc]
                c = m.mean.shape[1]
                m.set_statistics(mean * c if len(mean) == 1 else mean, std * c if len(std) == 1 else std)
            normalize_inside = True
            notes.append("the weights lack the Normalize statistics: set them from normalize=")
        elif norm is not None and norms:
            for name, m in norms.items():
                if not (bool((m.mean == 0).all()) and bool((m.std == 1).all())):
                    raise ValueError(
                        f"{_OWNER}: the model already normalises its inputs ({name or 'normalize'}.mean="
                        f"{[round(v, 4) for v in m.mean.flatten().tolist()]}, std="
                        f"{[round(v, 4) for v in m.std.flatten().tolist()]} from the weights); normalize="
                        f"{normalize!r} would standardise them a second time. Drop the normalize option."
                    )
        return net

    if isinstance(model, nn.Module):
        if weights_path is not None:
            net = with_weights(model, type(model).__name__)
        else:
            net = model
        kind, source = "module", type(model).__name__
    elif isinstance(model, str | os.PathLike):
        spec = os.fspath(model)
        path = Path(spec).expanduser()
        if path.is_file():
            kind = _file_kind(path)
            source = str(path)
            if kind in ("torchscript", "export"):
                if weights_path is not None:
                    raise param_error(_OWNER, "weights", str(weights_path),
                                      "None for a TorchScript or torch.export file",
                                      f"{path} carries its own weights; drop weights=.")
                net = _load_program(path, kind, device)
                weights_sha = _sha256(path)
                capabilities = {"layer_hooks": False, "parameter_fisher": kind == "export"}
            else:
                if weights_path is not None:
                    raise param_error(_OWNER, "model", spec, "an architecture name or 'module:factory' when "
                                      "weights= is given", f"{path} is a file: pass it as weights=, and the "
                                      "architecture as model.")
                state, info = read_weights(path)
                if info.get("format") != "fisherscope.checkpoint":
                    raise param_error(
                        _OWNER, "model", spec, "a module, an architecture name, 'module:factory', a fisherscope "
                        "checkpoint, a TorchScript or a torch.export file",
                        f"{path} holds weights ({info['format']}) but no architecture: pass the architecture "
                        f"as model (a name of fisherscope.models.MODELS or 'package.module:factory') and "
                        f"weights='{path}'.")
                kind = "checkpoint"
                arch = info["arch"]
                if arch not in MODELS:
                    raise CheckpointError(f"{path} is a checkpoint of architecture {arch!r}, which this "
                                          f"fisherscope does not know (valid: {sorted(MODELS)}).")
                kwargs = {**info["model_kwargs"], **kwargs}
                net = MODELS[arch](**kwargs)
                weights_path = path
                net = with_weights(net, f"architecture {arch!r} with {kwargs}", (state, info))
        elif _FACTORY.match(spec) and spec.split(":", 1)[0] not in MODELS:
            factory = _import_factory(spec)
            if num_classes is not None and "num_classes" not in kwargs and _accepts(factory, "num_classes"):
                kwargs["num_classes"] = num_classes
            try:
                net = factory(**kwargs)
            except TypeError as exc:
                raise param_error(_OWNER, "model_kwargs", kwargs, f"keyword arguments {spec} accepts",
                                  f"Calling it failed: {exc}.") from exc
            if not isinstance(net, nn.Module):
                raise param_error(_OWNER, "model", spec, "a factory returning a torch.nn.Module",
                                  f"It returned a {type(net).__name__}.", ParameterTypeError)
            kind, source = "factory", spec
            net = with_weights(net, f"{spec}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")
        elif spec in MODELS:
            if weights_path is None:
                raise param_error(_OWNER, "weights", None, f"a weights file for architecture {spec!r}",
                                  "An architecture alone has random weights; pass weights=<state dict, "
                                  "safetensors or fisherscope checkpoint> (or train one with fisherscope train).")
            head = _peek_checkpoint_arch(weights_path)
            if head is not None:
                arch_ckpt, kw_ckpt = head
                if arch_ckpt != spec:
                    raise param_error(_OWNER, "model", spec, f"the architecture of the checkpoint ({arch_ckpt!r})",
                                      f"{weights_path} is a fisherscope checkpoint of {arch_ckpt!r}: pass "
                                      f"model={arch_ckpt!r}, or the checkpoint alone.")
                kwargs = {**kw_ckpt, **kwargs}
            kwargs = _registry_kwargs(spec, kwargs, num_classes, shape)
            net = MODELS[spec](**kwargs)
            kind, source = "registry", spec
            net = with_weights(net, f"architecture {spec!r} with {kwargs}")
        else:
            if not Path(spec).suffix and os.sep not in spec and ":" not in spec:
                close = difflib.get_close_matches(spec, list(MODELS), n=1, cutoff=0.6)
                hint = (f"Did you mean {close[0]!r}? " if close else "") + f"Architectures: {sorted(MODELS)}."
            else:
                hint = f"No such file {path}." if not path.exists() else f"{path} is not a file."
            raise param_error(_OWNER, "model", spec, "an architecture name, a model file, or "
                              "'package.module:factory'", hint)
    else:
        raise param_error(_OWNER, "model", model, "an nn.Module, an architecture name, a model file or "
                          "'package.module:factory'", f"Got a {type(model).__name__}.", ParameterTypeError)

    if norm is not None and not normalize_inside:
        net = nn.Sequential(OrderedDict(normalize=_normalize_module(*norm), model=net))
    if output != "logits":
        net = as_logits(net, output=output)  # type: ignore[arg-type]
    if device is not None:
        net = net.to(device)
    net.eval()
    k: int | None = None
    if example is not None:
        k = check_model_contract(net, example, labels, num_classes=num_classes, input_shape=shape,
                                 bounds=bounds)
        shape = shape or (int(example.shape[1]), int(example.shape[2]), int(example.shape[3]))
    elif shape is not None:
        k = check_model_contract(net, _probe(net, shape, bounds), None, num_classes=num_classes,
                                 input_shape=shape, bounds=bounds)
    for note in notes:
        logger.info("%s: %s", source, note)
    return LoadedModel(
        model=net, kind=kind, source=source,
        weights=None if weights_path is None or kind in ("torchscript", "export") else str(weights_path),
        weights_format=weights_format, weights_sha256=weights_sha, model_kwargs=kwargs,
        normalize=norm, output=output, num_classes=k if k is not None else num_classes,
        input_shape=shape, capabilities=capabilities, notes=tuple(notes),
    )


def _peek_checkpoint_arch(path: Path) -> tuple[str, dict[str, Any]] | None:
    """(arch, model_kwargs) of a fisherscope checkpoint file; None for any other file."""
    if not path.is_file() or _file_kind(path) != "torch":
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - read_weights reports it properly
        return None
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return str(obj.get("arch")), dict(obj.get("model_kwargs") or {})
    return None

