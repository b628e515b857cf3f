"""Differentiable torch mirrors of the feature functions, for attackers who know the detector.

Every entry of :data:`TORCH_FEATURES` has the name and the keyword arguments of the
:data:`~fisherscope.features.FEATURES` function it mirrors and returns the **same columns**
as a float64 torch tensor (N, n_features) that keeps the autograd graph to ``x``: a
detector's :meth:`~fisherscope.detectors.Detector.decision_torch` on it is its score as a
differentiable function of the images (:class:`~fisherscope.detectors.TorchScore`). The
mirrors never detach and never touch parameter gradients; they run the model in eval mode
for the forward pass (each module's mode is restored) and leave the backward to the caller.

- ``fisher_eigenvalues``: the exact spectrum of G_x through
  :func:`~fisherscope.fisher.differentiable_eigenvalues` (``method="exact"`` only; the
  iterative solvers and class sampling have no mirror);
- ``param_fisher_scores``: trace, form and normalised form by double backprop through the
  per-sample parameter gradients (:func:`~fisherscope.fisher.differentiable_param_fisher`;
  the form is the exact one, also where the numpy feature used the paper's finite difference);
- ``penultimate`` / ``layer_activations``: the hooked activations (the predicted-class column
  is the argmax, a constant of the graph);
- ``mc_dropout`` / ``kdbu_features``: BU under ``n`` dropout masks. Masks are drawn as the
  numpy feature draws them (same generator, same chunks: the same masks); each call with an
  advancing generator is one draw of the expectation over transformation (EOT) an attacker
  averages over;
- ``softmax_stats``, ``pixels``, ``reconstruction_error``: the closed forms.

Detectors that compare with a fixed reference (LID against its clean fit rows, KD against its
kernel support, Mahalanobis against its class means) keep that reference in the fitted
detector; the features here are the query side only.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._batching import chunks
from .._registry import Registry
from .._validation import check_inputs, check_logits, eval_mode
from ..fisher import differentiable_eigenvalues, differentiable_param_fisher
from ._common import check_model
from .activations import _last_linear, _resolve_layer, _seed_from, dropout_modules
from .fisher import PARAM_FISHER_SCORES, _check_scores
from .layers import ACTIVATION_TYPES, OUTPUT, _resolve
from .reconstruction import RECONSTRUCTION_KINDS
from .softmax import SOFTMAX_STATS, _check_stats

__all__ = [
    "TORCH_FEATURES",
    "torch_fisher_eigenvalues",
    "torch_kdbu_features",
    "torch_layer_activations",
    "torch_mc_dropout",
    "torch_param_fisher_scores",
    "torch_penultimate",
    "torch_pixels",
    "torch_reconstruction_error",
    "torch_softmax_stats",
    "torch_softmax_stats_from_logits",
]


def _check_torch_feature(key: str, fn: Any) -> None:
    if not callable(fn) or "x" not in inspect.signature(fn).parameters:
        raise TypeError(f"TORCH_FEATURES[{key!r}] must be a function fn(model, x, ...) (or fn(x)) -> Tensor; "
                        f"got {fn!r}.")


def _rows(x: Tensor) -> int:
    return int(x.shape[0])


# --------------------------------------------------------------------------- Fisher


def torch_fisher_eigenvalues(model: nn.Module, x: Tensor, k: int = 20, *, batch_size: int = 256,
                             bounds: tuple[float, float] | None = (0.0, 1.0), method: str = "exact",
                             **spectrum_kwargs: Any) -> Tensor:
    """Mirror of :func:`~fisherscope.features.fisher_eigenvalues`: (N, k) float64, differentiable.

    Only ``method="exact"`` has a mirror; ``class_samples`` / ``tol`` / ``max_iter`` /
    ``generator`` belong to the iterative solvers and are refused.
    """
    check_model(model)
    if method != "exact" or spectrum_kwargs:
        raise ValueError(
            "torch_fisher_eigenvalues mirrors the exact spectrum only (method='exact', no class_samples, "
            f"tol, max_iter or generator); got method={method!r} and {sorted(spectrum_kwargs)}. Fit the "
            "detector on fisher_eigenvalues(..., method='exact') features to attack it adaptively."
        )
    with eval_mode(model):
        parts = [differentiable_eigenvalues(model, x[sl], k, bounds=bounds) for sl in chunks(_rows(x), batch_size)]
    return torch.cat(parts)


def torch_param_fisher_scores(model: nn.Module, x: Tensor, scores: Sequence[str] = PARAM_FISHER_SCORES, *,
                              reduction: str = "full", method: str = "jvp", fd_eps: float = 1e-4,
                              scale: float = 1.0, batch_size: int | None = None,
                              bounds: tuple[float, float] | None = (0.0, 1.0)) -> Tensor:
    """Mirror of :func:`~fisherscope.features.param_fisher_scores`: (N, len(scores)), differentiable.

    The forms are always the exact ones (``method`` and ``fd_eps`` are accepted for the
    signature; the finite difference of eq. 9 differs from them by O(ε′)).
    """
    names = _check_scores(scores)
    check_model(model)
    out = differentiable_param_fisher(model, x, names, reduction=reduction, scale=scale,  # type: ignore[arg-type]
                                      chunk_size=batch_size, bounds=bounds)
    return out.to(torch.float64)


# --------------------------------------------------------------------------- hidden layers


def torch_penultimate(model: nn.Module, x: Tensor, with_prediction: bool = True, layer: str | None = None, *,
                      batch_size: int = 512, bounds: tuple[float, float] | None = (0.0, 1.0)) -> Tensor:
    """Mirror of :func:`~fisherscope.features.penultimate`: [ŷ,] h — (N, [1 +] F) float64.

    h is the input of the last ``nn.Linear`` (or the output of ``layer``) captured with its
    graph; the prediction column is a constant.
    """
    check_model(model)
    check_inputs(x, bounds=bounds)
    module: nn.Module
    if layer is None:
        _, module = _last_linear(model)
    else:
        _, module = _resolve_layer(model, layer)
    captured: list[Tensor] = []
    if layer is None:
        handle = module.register_forward_pre_hook(lambda m, inputs: captured.append(inputs[0]))
    else:
        handle = module.register_forward_hook(lambda m, inputs, output: captured.append(output))
    feats, preds = [], []
    try:
        with eval_mode(model):
            for sl in chunks(_rows(x), batch_size):
                captured.clear()
                logits = check_logits(model(x[sl]))
                if len(captured) != 1:
                    raise ValueError(f"the hooked layer ran {len(captured)} times in one forward pass; it must "
                                     "run exactly once. Name a module that does with layer=...")
                feats.append(captured[0].reshape(logits.shape[0], -1).to(torch.float64))
                preds.append(logits.detach().argmax(1).to(torch.float64))
    finally:
        handle.remove()
    out = torch.cat(feats)
    if with_prediction:
        out = torch.cat([torch.cat(preds)[:, None], out], dim=1)
    return out


def torch_layer_activations(model: nn.Module, x: Tensor, layers: Sequence[str] | None = None, *,
                            pool: str = "none", with_prediction: bool = False, batch_size: int = 256) -> Tensor:
    """Mirror of :func:`~fisherscope.features.layer_activations`: the layers side by side, differentiable."""
    check_model(model)
    check_inputs(x)
    names = _resolve(model, layers)
    modules = dict(model.named_modules())

    def is_output(name: str) -> bool:
        return name == OUTPUT and name not in modules

    if names is None:
        targets = {n: m for n, m in modules.items() if isinstance(m, ACTIVATION_TYPES)}
    else:
        targets = {n: modules[n] for n in names if not is_output(n)}
    outputs: dict[str, Tensor] = {}
    order: list[str] = []

    def hook(name: str) -> Any:
        def fn(module: nn.Module, inputs: Any, output: Any) -> None:
            if name in outputs:
                raise ValueError(f"module {name!r} runs more than once per forward pass, so its output is "
                                 "ambiguous; name other modules in layers=.")
            outputs[name] = output
            order.append(name)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in targets.items()]
    blocks: list[Tensor] = []
    try:
        with eval_mode(model):
            for sl in chunks(_rows(x), batch_size):
                outputs.clear()
                order.clear()
                out = check_logits(model(x[sl]))
                final = [*order, OUTPUT] if names is None else list(names)
                cols = []
                if with_prediction:
                    cols.append(out.detach().argmax(1).to(torch.float64)[:, None])
                for name in final:
                    t = out if is_output(name) else outputs[name]
                    if pool == "mean" and t.ndim == 4:
                        t = t.mean(dim=(2, 3))
                    cols.append(t.flatten(1).to(torch.float64))
                blocks.append(torch.cat(cols, dim=1))
    finally:
        for h in handles:
            h.remove()
    return torch.cat(blocks)


def torch_mc_dropout(model: nn.Module, x: Tensor, n: int = 50, generator: torch.Generator | None = None, *,
                     with_mean_probs: bool = False, batch_size: int = 512,
                     bounds: tuple[float, float] | None = (0.0, 1.0)) -> Tensor:
    """Mirror of :func:`~fisherscope.features.mc_dropout`: BU [, p̄] — (N, 1 [+ K]), differentiable.

    The same masks as the numpy feature for the same ``generator`` state and ``batch_size``
    (the passes run in the same order inside ``torch.random.fork_rng``); the gradient is
    that of this draw of masks. BU is computed with the two-pass variance of
    ``mc_dropout`` (mean over classes of the population variance over passes).
    """
    check_model(model)
    check_inputs(x, bounds=bounds)
    drops = dropout_modules(model)
    if not drops:
        raise ValueError(
            f"{type(model).__name__} has no dropout module, so MC dropout has nothing to sample. Build the "
            "architecture with dropout, e.g. fisherscope.models.build_model(name, dropout=0.5)."
        )
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    bu_parts, mean_parts = [], []
    with eval_mode(model):
        for m in drops:
            m.train()  # restored by eval_mode
        with torch.random.fork_rng(devices=devices, enabled=generator is not None):
            if generator is not None:
                torch.manual_seed(_seed_from(generator))
            for sl in chunks(_rows(x), batch_size):
                xb = x[sl]
                passes = torch.stack([torch.softmax(check_logits(model(xb)).to(torch.float64), dim=1)
                                      for _ in range(n)])  # (T, B, K)
                d = passes - passes[:1]
                m1 = d.mean(0)
                bu_parts.append((d - m1).pow(2).mean(0).mean(1))
                if with_mean_probs:
                    mean_parts.append(passes[0] + m1)
    out = torch.cat(bu_parts)[:, None]
    if with_mean_probs:
        out = torch.cat([out, torch.cat(mean_parts)], dim=1)
    return out


def torch_kdbu_features(model: nn.Module, x: Tensor, n: int = 50, generator: torch.Generator | None = None, *,
                        layer: str | None = None, batch_size: int = 512,
                        bounds: tuple[float, float] | None = (0.0, 1.0)) -> Tensor:
    """Mirror of :func:`~fisherscope.features.kdbu_features`: [ŷ, h, BU], differentiable."""
    pen = torch_penultimate(model, x, True, layer, batch_size=batch_size, bounds=bounds)
    bu = torch_mc_dropout(model, x, n, generator, batch_size=batch_size, bounds=bounds)
    return torch.cat([pen, bu[:, :1]], dim=1)


# --------------------------------------------------------------------------- closed forms


def torch_softmax_stats_from_logits(logits: Tensor, stats: Sequence[str] = SOFTMAX_STATS) -> Tensor:
    """Mirror of :func:`~fisherscope.features.softmax_stats_from_logits` (same log-space formulas)."""
    names = _check_stats(stats)
    check_logits(logits, name="logits")
    z = logits.to(torch.float64)
    top = z.detach().argmax(1, keepdim=True)
    u = z - z.gather(1, top)
    log1p_s = torch.log1p(u.exp().scatter(1, top, 0.0).sum(1))
    log_p = u - log1p_s[:, None]
    p = log_p.exp()
    k = logits.shape[1]
    cols = {"max_prob": torch.exp(-log1p_s), "kl_uniform": (p * (log_p + math.log(k))).sum(1),
            "entropy": log1p_s - (p * u).sum(1)}
    return torch.stack([cols[s] for s in names], dim=1)


def torch_softmax_stats(model: nn.Module, x: Tensor, stats: Sequence[str] = SOFTMAX_STATS, *,
                        batch_size: int = 512, bounds: tuple[float, float] | None = (0.0, 1.0)) -> Tensor:
    """Mirror of :func:`~fisherscope.features.softmax_stats`: (N, len(stats)), differentiable."""
    names = _check_stats(stats)
    check_model(model)
    check_inputs(x, bounds=bounds)
    with eval_mode(model):
        parts = [torch_softmax_stats_from_logits(model(x[sl]), names) for sl in chunks(_rows(x), batch_size)]
    return torch.cat(parts)


def torch_pixels(x: Tensor) -> Tensor:
    """Mirror of :func:`~fisherscope.features.pixels`: the flattened inputs, float64."""
    check_inputs(x, bounds=None)
    return x.flatten(1).to(torch.float64)


def torch_reconstruction_error(model: nn.Module, x: Tensor, kind: str = "signed_mean", *,
                               batch_size: int = 512) -> Tensor:
    """Mirror of :func:`~fisherscope.features.reconstruction_error`, differentiable."""
    if kind not in (*RECONSTRUCTION_KINDS, "all"):
        raise ValueError(f"torch_reconstruction_error: kind must be one of {[*RECONSTRUCTION_KINDS, 'all']}; "
                         f"got {kind!r}.")
    reconstruct = getattr(model, "reconstruct", None)
    if not isinstance(model, nn.Module) or not callable(reconstruct):
        raise TypeError(f"{type(model).__name__} has no reconstruct(x) method; the reconstruction feature needs "
                        "a classifier-autoencoder such as MODELS['hg_mlp'].")
    check_inputs(x)
    parts = []
    with eval_mode(model):
        for sl in chunks(_rows(x), batch_size):
            xb = x[sl]
            rec = reconstruct(xb)
            if not isinstance(rec, Tensor) or rec.shape != xb.shape:
                raise ValueError(f"{type(model).__name__}.reconstruct must return a tensor shaped like its input "
                                 f"{tuple(xb.shape)}.")
            diff = (xb.to(torch.float64) - rec.to(torch.float64)).flatten(1)
            parts.append(torch.stack([diff.mean(1), diff.square().mean(1)], dim=1))
    both = torch.cat(parts)
    if kind == "all":
        return both
    return both[:, [RECONSTRUCTION_KINDS.index(kind)]]


TORCH_FEATURES: Registry[Callable[..., Tensor]] = Registry("TORCH_FEATURES", validate=_check_torch_feature)
"""Feature name (a key of :data:`~fisherscope.features.FEATURES`) -> its differentiable torch mirror."""

for _name, _fn in (
    ("fisher_eigenvalues", torch_fisher_eigenvalues),
    ("param_fisher_scores", torch_param_fisher_scores),
    ("penultimate", torch_penultimate),
    ("mc_dropout", torch_mc_dropout),
    ("kdbu_features", torch_kdbu_features),
    ("softmax_stats", torch_softmax_stats),
    ("pixels", torch_pixels),
    ("reconstruction_error", torch_reconstruction_error),
    ("layer_activations", torch_layer_activations),
):
    TORCH_FEATURES.register(_name, _fn, description=f"differentiable mirror of FEATURES[{_name!r}]")
del _name, _fn
