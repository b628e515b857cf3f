"""Hidden-layer features: penultimate activations (KD) and MC-dropout uncertainty (BU).

Feinman et al. (2017) detect adversarial inputs with a kernel density on the last hidden
layer ("KD", :func:`penultimate`) and with the variance of the softmax under Monte Carlo
dropout ("BU", :func:`mc_dropout`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from .._batching import check_batch_size, chunks
from .._validation import BOOL, check_inputs, check_logits, check_param, eval_mode, integer
from ._common import check_model, to_numpy

__all__ = ["dropout_modules", "join_kdbu", "kdbu_features", "mc_dropout", "penultimate"]


# --------------------------------------------------------------------------- penultimate


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear module, so its penultimate layer (the "
            "input of the last nn.Linear) is undefined. Name the module whose output to use "
            f"with layer=..., one of {names} (dict(model.named_modules()))."
        )
    return linears[-1]


def _resolve_layer(model: nn.Module, layer: Any) -> tuple[str, nn.Module]:
    if not isinstance(layer, str):
        raise TypeError(
            f"layer must be a module name (a key of dict(model.named_modules())); got "
            f"{type(layer).__name__}."
        )
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        names = [n for n in modules if n][:12]
        raise ValueError(
            f"{type(model).__name__} has no submodule named {layer!r}; valid names include "
            f"{names}{' ...' if len(modules) > 13 else ''} (dict(model.named_modules()))."
        )
    return layer, modules[layer]


def penultimate(
    model: nn.Module,
    x: torch.Tensor,
    with_prediction: bool = True,
    layer: str | None = None,
    *,
    batch_size: int = 512,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> np.ndarray:
    """Last-hidden-layer activations per sample, optionally after the predicted class.

    By default the features are the **input of the model's last ``nn.Linear``** (the last
    one in ``model.modules()`` order, the classifier head of a sequential model), captured
    by a forward pre-hook and flattened per sample. ``layer`` names another module instead,
    whose **output** is used. Both are captured from the same forward pass that gives the
    predicted class ŷ = argmax of the logits.

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K); run in eval mode (every module's mode is restored),
        without gradients.
    x : Tensor
        Inputs (N, C, H, W) or (N, D) within ``bounds``; never modified.
    with_prediction : bool
        Put ŷ (a float holding an integer) in column 0: the layout the class-conditional
        detectors (:class:`~fisherscope.detectors.KernelDensityDetector`, Mahalanobis) take.
    layer : str, optional
        Name of a module (``dict(model.named_modules())`` key) whose output replaces the
        default; needed when the model has no final ``nn.Linear``.
    batch_size : int
        Samples per forward pass.
    bounds : (float, float) or None
        Admissible input range (``None`` skips the check).

    Returns
    -------
    ndarray
        (N, 1 + F) with the prediction, or (N, F) without; float64.

    Raises
    ------
    ValueError
        No ``nn.Linear`` in the model (and no ``layer``), an unknown ``layer``, or a hooked
        module that does not run exactly once per forward pass.

    Shapes
    ------
    x: (N, *S) -> (N, 1 + F) or (N, F).

    References
    ----------
    Feinman, R., Curtin, R. R., Shintre, S., Gardner, A. B. "Detecting Adversarial
    Samples from Artifacts." arXiv:1703.00410 (2017), §4.1 (last hidden layer).

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(),
    ...                           torch.nn.Linear(8, 3)).eval()
    >>> penultimate(net, torch.rand(5, 4)).shape
    (5, 9)
    """
    check_model(model)
    check_inputs(x, bounds=bounds)
    check_batch_size(batch_size, "penultimate")
    check_param("penultimate", "with_prediction", with_prediction, BOOL)
    module: nn.Module
    if layer is None:
        name, module = _last_linear(model)
        where = f"the input of the last nn.Linear ({name!r})"
    else:
        name, module = _resolve_layer(model, layer)
        where = f"the output of {name!r}"
    captured: list[torch.Tensor] = []

    def grab(t: Any) -> None:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{where} is a {type(t).__name__}, not a tensor; pick another layer=.")
        captured.append(t.detach())

    if layer is None:
        handle = module.register_forward_pre_hook(lambda m, inputs: grab(inputs[0]))
    else:
        handle = module.register_forward_hook(lambda m, inputs, output: grab(output))
    feats, preds = [], []
    try:
        with eval_mode(model), torch.no_grad():
            for sl in chunks(x.shape[0], batch_size):
                captured.clear()
                logits = check_logits(model(x[sl]))
                if len(captured) != 1:
                    raise ValueError(
                        f"{where} was captured {len(captured)} times in one forward pass; it "
                        "must run exactly once. Name a module that does with layer=..."
                    )
                feats.append(to_numpy(captured[0].reshape(logits.shape[0], -1)))
                preds.append(to_numpy(logits.argmax(1)))
    finally:
        handle.remove()
    out = np.concatenate(feats)
    if with_prediction:
        out = np.concatenate([np.concatenate(preds)[:, None], out], axis=1)
    return out


# --------------------------------------------------------------------------- MC dropout


def dropout_modules(model: nn.Module) -> list[_DropoutNd]:
    """The dropout modules of ``model`` (every ``torch.nn`` dropout type, whatever its rate)."""
    return [m for m in model.modules() if isinstance(m, _DropoutNd)]


def _probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(check_logits(model(x)).to(torch.float64), dim=1)


def _seed_from(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def mc_dropout(
    model: nn.Module,
    x: torch.Tensor,
    n: int = 50,
    generator: torch.Generator | None = None,
    *,
    with_mean_probs: bool = False,
    batch_size: int = 512,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> np.ndarray:
    """Bayesian uncertainty (BU) of Feinman et al.: the softmax variance under MC dropout.

    ``n`` stochastic forward passes with **only the dropout modules** in training mode
    (every other module, BatchNorm included, in eval mode; each module's mode is restored
    afterwards) give probabilities p_t(x) ∈ Δ^{K−1}, t = 1..T (T = ``n``). The feature is
    the mean over classes of the variance over passes (population variance, ddof = 0):

        BU(x) = (1/K) Σ_k [ (1/T) Σ_t p_{t,k}² − ( (1/T) Σ_t p_{t,k} )² ],

    which is what the authors' code computes (``preds_mc.var(axis=0).mean(axis=1)``); the
    paper's formula (1/T) Σ_t p_tᵀp_t − p̄ᵀp̄ is K times this (same ranking). The variance
    is computed in float64 with the two-pass formula on p_t − p_1, so identical passes
    (dropout rate 0) give exactly 0.

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K) and has at least one dropout module. The models of
        :mod:`fisherscope.models` take ``dropout=``; weights trained without dropout load
        into the same architecture built with ``dropout > 0`` (the state dict keys do not
        depend on the rate).
    x : Tensor
        Inputs (N, C, H, W) or (N, D) within ``bounds``; never modified.
    n : int
        Number of stochastic passes T (Feinman et al.: 50).
    generator : torch.Generator, optional
        Makes the result deterministic: dropout masks are drawn from torch's global RNG,
        so the passes run inside ``torch.random.fork_rng`` seeded with a number drawn from
        ``generator`` (the global RNG state is left untouched). Without it, masks come
        from (and advance) the global RNG. Masks are drawn chunk after chunk, so results
        depend on ``batch_size``.
    with_mean_probs : bool
        Append the mean softmax p̄ (K columns) after BU.
    batch_size : int
        Samples per forward pass.
    bounds : (float, float) or None
        Admissible input range (``None`` skips the check).

    Returns
    -------
    ndarray
        (N, 1) — or (N, 1 + K) with ``with_mean_probs`` — float64; column 0 is BU ≥ 0.

    Raises
    ------
    ValueError
        The model has no dropout module (``nn.Dropout`` and its relatives).

    Warns
    -----
    UserWarning
        Every dropout module has rate 0 (BU is then exactly 0).

    Shapes
    ------
    x: (N, *S) -> (N, 1) or (N, 1 + K).

    References
    ----------
    Feinman et al. (2017), §4.2 (Bayesian uncertainty estimates); Gal & Ghahramani
    (2016), dropout as a Bayesian approximation.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8),
    ...                           torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    >>> g = torch.Generator().manual_seed(0)
    >>> mc_dropout(net.eval(), torch.rand(5, 4), n=10, generator=g).shape
    (5, 1)
    """
    check_model(model)
    check_inputs(x, bounds=bounds)
    check_batch_size(batch_size, "mc_dropout")
    check_param("mc_dropout", "n", n, integer(ge=2).but(expected="an integer >= 2 (the number of stochastic passes)"))
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}.")
    drops = dropout_modules(model)
    if not drops:
        raise ValueError(
            f"{type(model).__name__} has no dropout module, so MC dropout has nothing to sample. "
            "Build the architecture with dropout, e.g. fisherscope.models.build_model(name, "
            "dropout=0.5), and load the trained weights into it (the state dict keys do not "
            "depend on the rate)."
        )
    if all(float(m.p) == 0.0 for m in drops):
        warnings.warn(
            "every dropout module has rate 0: the MC-dropout passes are identical and BU is 0. "
            "Build the model with dropout > 0.",
            UserWarning,
            stacklevel=2,
        )
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    bu_parts, mean_parts = [], []
    with eval_mode(model), torch.no_grad():
        for m in drops:
            m.train()  # restored by eval_mode
        with torch.random.fork_rng(devices=devices, enabled=generator is not None):
            if generator is not None:
                torch.manual_seed(_seed_from(generator))
            for sl in chunks(x.shape[0], batch_size):
                xb = x[sl]
                first = _probs(model, xb)
                d = torch.stack([torch.zeros_like(first)]
                                + [_probs(model, xb) - first for _ in range(n - 1)])  # (T, B, K)
                m1 = d.mean(0)  # p̄ − p_1
                bu = (d - m1).pow(2).mean(0).mean(1)  # mean over classes of var over passes
                bu_parts.append(to_numpy(bu))
                if with_mean_probs:
                    mean_parts.append(to_numpy(first + m1))
    out = np.concatenate(bu_parts)[:, None]
    if with_mean_probs:
        out = np.concatenate([out, np.concatenate(mean_parts)], axis=1)
    return out


# --------------------------------------------------------------------------- KD + BU


def join_kdbu(penultimate_features: Any, bu_features: Any) -> np.ndarray:
    """X of :class:`~fisherscope.detectors.KDBUDetector` from the two feature arrays.

    Parameters
    ----------
    penultimate_features : array (N, 1 + F)
        :func:`penultimate` with ``with_prediction=True``: predicted class, then features.
    bu_features : array (N,) or (N, m)
        :func:`mc_dropout` output; its column 0 (BU) is used.

    Returns
    -------
    ndarray
        ``[predicted class, h_1, ..., h_F, bu]``, shape (N, 2 + F), float64.

    Examples
    --------
    >>> join_kdbu(np.array([[1.0, 0.5, 0.2]]), np.array([[0.01]])).tolist()
    [[1.0, 0.5, 0.2, 0.01]]
    """
    pen = np.asarray(penultimate_features, dtype=np.float64)
    bu = np.asarray(bu_features, dtype=np.float64)
    if pen.ndim != 2 or pen.shape[1] < 2:
        raise ValueError(
            "penultimate_features must be (N, 1 + F): the predicted class then the features, as "
            "made by fisherscope.features.penultimate(model, x, with_prediction=True); got shape "
            f"{pen.shape}."
        )
    if bu.ndim == 1:
        bu = bu[:, None]
    if bu.ndim != 2 or bu.shape[0] != pen.shape[0]:
        raise ValueError(
            f"bu_features must be (N,) or (N, m) with N = {pen.shape[0]} rows like "
            f"penultimate_features (fisherscope.features.mc_dropout); got shape {bu.shape}."
        )
    return np.concatenate([pen, bu[:, :1]], axis=1)


def kdbu_features(
    model: nn.Module,
    x: torch.Tensor,
    n: int = 50,
    generator: torch.Generator | None = None,
    *,
    layer: str | None = None,
    batch_size: int = 512,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> np.ndarray:
    """Features of Feinman et al.'s KD+BU detector from one model built with dropout.

    In eval mode the dropout modules are inactive, so :func:`penultimate` of a model built
    with ``dropout > 0`` gives the deterministic features and prediction, and
    :func:`mc_dropout` its BU; the columns are joined by :func:`join_kdbu`.

    Parameters
    ----------
    model, x, n, generator, batch_size, bounds
        As in :func:`mc_dropout` (``n`` passes, seeded by ``generator``).
    layer : str, optional
        As in :func:`penultimate`.

    Returns
    -------
    ndarray
        ``[predicted class, h_1, ..., h_F, bu]``, shape (N, 2 + F), float64.

    Shapes
    ------
    x: (N, *S) -> (N, 2 + F).

    References
    ----------
    Feinman et al. (2017), §5.
    """
    pen = penultimate(model, x, with_prediction=True, layer=layer, batch_size=batch_size,
                      bounds=bounds)
    bu = mc_dropout(model, x, n, generator, batch_size=batch_size, bounds=bounds)
    return join_kdbu(pen, bu)
