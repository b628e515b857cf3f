"""Activations of named layers, captured by forward hooks (for LID and Mahalanobis).

A *layer* is a named submodule (``dict(model.named_modules())`` key, e.g.
``"classifier.2"``) whose output is captured in a forward pass; the special name
``"output"`` means the model's output (the logits) unless a submodule has that name.
Each layer's output is flattened per sample, or spatially mean-pooled first
(``pool="mean"``: (N, C, H, W) -> (N, C), as Lee et al. do for convolutional blocks).
The per-layer blocks are concatenated in the order of ``layers``; :func:`layer_sizes`
gives the block widths, which is what :class:`~fisherscope.detectors.LIDDetector` and
:class:`~fisherscope.detectors.MahalanobisDetector` take as ``layer_sizes``.

``layers=None`` picks every activation module (``nn.ReLU``, ``nn.ELU``, ``nn.GELU``,
``nn.LeakyReLU``, ``nn.SiLU``, ``nn.Tanh``, ...) that runs in the forward pass, in the
order they run, plus ``"output"``: the hidden representations Ma et al. compute LID on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .._batching import chunks
from .._validation import (
    BOOL,
    POSITIVE_INT,
    check_inputs,
    check_param,
    check_params,
    eval_mode,
    one_of,
)

__all__ = ["ACTIVATION_TYPES", "OUTPUT", "layer_activations", "layer_sizes"]

#: Module types ``layers=None`` treats as layer outputs.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.LeakyReLU, nn.PReLU, nn.SiLU,
    nn.Mish, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish,
)  # fmt: skip

#: The name of the model's output among ``layers``.
OUTPUT = "output"


def _check_common(model: Any, x: torch.Tensor, pool: Any, batch_size: Any, owner: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be a torch.nn.Module mapping x to logits (N, K); got {type(model).__name__}."
        )
    check_inputs(x)
    check_params(owner, {"pool": pool, "batch_size": batch_size},
                 {"pool": one_of("none", "mean"), "batch_size": POSITIVE_INT})


def _resolve(model: nn.Module, layers: Sequence[str] | None) -> list[str] | None:
    """Validated explicit layer names, or None for the default discovery."""
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = [layers]
    names = list(layers)
    if not names:
        raise ValueError("layers is empty; name at least one module, or pass layers=None.")
    modules = dict(model.named_modules())
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"layers must be module names (strings); got {name!r}.")
        if name not in modules and name != OUTPUT:
            known = [n for n in modules if n][:12]
            raise ValueError(
                f"{type(model).__name__} has no submodule named {name!r}; valid names include "
                f"{known}{' ...' if len(modules) > 13 else ''} (dict(model.named_modules())), or "
                f"{OUTPUT!r} for the model's output."
            )
    if len(set(names)) != len(names):
        raise ValueError(f"layers lists a name twice: {names}.")
    return names


class _Capture:
    """Forward hooks that record each hooked module's output per call."""

    def __init__(self, model: nn.Module, names: list[str] | None) -> None:
        modules = dict(model.named_modules())
        if names is None:
            targets = {n: m for n, m in modules.items() if isinstance(m, ACTIVATION_TYPES)}
        else:
            targets = {n: modules[n] for n in names if n in modules}
        self.explicit = names
        self.outputs: dict[str, list[torch.Tensor]] = {}
        self.order: list[str] = []
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in targets.items()]

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise ValueError(
                    f"layer {name!r} ({type(module).__name__}) returns {type(output).__name__}, "
                    "not a tensor; pick a module that returns one tensor."
                )
            if name not in self.outputs:
                self.order.append(name)
            self.outputs.setdefault(name, []).append(output.detach())

        return hook

    def reset(self) -> None:
        self.outputs, self.order = {}, []

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _run(
    model: nn.Module, x: torch.Tensor, names: list[str] | None, pool: str, batch_size: int
) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """Layer names in column order, per-layer (N, d_l) blocks, predictions (N,)."""
    modules = dict(model.named_modules())

    def is_output(name: str) -> bool:
        return name == OUTPUT and name not in modules

    cap = _Capture(model, None if names is None else [n for n in names if not is_output(n)])
    blocks: dict[str, list[np.ndarray]] = {}
    preds: list[np.ndarray] = []
    final: list[str] | None = None
    try:
        with eval_mode(model), torch.no_grad():
            for sl in chunks(x.shape[0], batch_size):
                cap.reset()
                out = model(x[sl])
                if not isinstance(out, torch.Tensor) or out.ndim != 2:
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise ValueError(
                        f"{type(model).__name__} must return logits of shape (N, K); got {got}."
                    )
                twice = [n for n, outs in cap.outputs.items() if len(outs) > 1]
                if twice:
                    raise ValueError(
                        f"module(s) {twice} run more than once per forward pass, so their output "
                        "is ambiguous; name other modules in layers=."
                    )
                if final is None:
                    if names is None:
                        final = [*cap.order, OUTPUT]
                    else:
                        missing = [n for n in names if not is_output(n) and n not in cap.outputs]
                        if missing:
                            raise ValueError(
                                f"layer(s) {missing} did not run in {type(model).__name__}'s "
                                "forward pass, so they have no activations; name modules on the "
                                "path to the logits."
                            )
                        final = list(names)
                for name in final:
                    t = out if is_output(name) else cap.outputs[name][0]
                    if pool == "mean" and t.ndim == 4:
                        t = t.mean(dim=(2, 3))
                    blocks.setdefault(name, []).append(t.flatten(1).double().cpu().numpy())
                preds.append(out.argmax(dim=1).cpu().numpy())
    finally:
        cap.remove()
    assert final is not None  # x has at least one sample (check_inputs)
    return final, [np.concatenate(blocks[n]) for n in final], np.concatenate(preds)


def layer_activations(
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str] | None = None,
    *,
    pool: Literal["none", "mean"] = "none",
    with_prediction: bool = False,
    batch_size: int = 256,
) -> np.ndarray:
    """Concatenated activations of named layers, one row per sample.

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K); run in eval mode (modes restored), without gradients.
    x : Tensor
        Inputs (N, C, H, W) in [0, 1].
    layers : sequence of str, optional
        Submodule names (see the module docstring; ``"output"`` = the logits). Default:
        every activation module that runs in the forward pass, in order, then ``"output"``.
    pool : {"none", "mean"}
        ``"mean"`` averages 4-D outputs over their spatial dimensions before flattening.
    with_prediction : bool
        Prepend a column holding the model's predicted class (as a float), the
        convention of the class-conditional detectors (Mahalanobis).
    batch_size : int
        Samples per forward pass.

    Returns
    -------
    ndarray
        Shape (N, [1 +] Σ_l d_l), float64: the layers' flattened (or pooled) outputs side
        by side; widths from :func:`layer_sizes`.

    Raises
    ------
    ValueError
        Unknown layer name, a layer that does not run or runs more than once per
        forward pass, a layer whose output is not a tensor, bad ``pool`` / ``batch_size``,
        invalid ``x``.

    Shapes
    ------
    x: (N, C, H, W) -> (N, [1 +] Σ_l d_l).

    Examples
    --------
    >>> from fisherscope.models import build_model
    >>> model = build_model("hg_mlp", input_size=8, hidden=16).eval()
    >>> layer_sizes(model, torch.rand(1, 1, 8, 8))
    {'encoder.2': 16, 'encoder.5': 16, 'output': 10}
    >>> layer_activations(model, torch.rand(5, 1, 8, 8), with_prediction=True).shape
    (5, 43)
    """
    _check_common(model, x, pool, batch_size, "layer_activations")
    check_param("layer_activations", "with_prediction", with_prediction, BOOL)
    _, blocks, preds = _run(model, x, _resolve(model, layers), pool, batch_size)
    if with_prediction:
        blocks = [preds.astype(np.float64)[:, None], *blocks]
    return np.concatenate(blocks, axis=1)


def layer_sizes(
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str] | None = None,
    *,
    pool: Literal["none", "mean"] = "none",
) -> dict[str, int]:
    """Name -> width of each layer block of :func:`layer_activations` (one sample is run).

    Parameters
    ----------
    model, x, layers, pool
        As for :func:`layer_activations`; only ``x[:1]`` is used.

    Returns
    -------
    dict
        Ordered like the columns of :func:`layer_activations` (without the prediction
        column); ``tuple(layer_sizes(...).values())`` is a detector's ``layer_sizes``.
    """
    _check_common(model, x, pool, 1, "layer_sizes")
    names, blocks, _ = _run(model, x[:1], _resolve(model, layers), pool, 1)
    return {n: int(b.shape[1]) for n, b in zip(names, blocks, strict=True)}
