"""``fisherscope audit``: a user's own model and data in, an honest robustness report out.

:func:`audit` (and the ``audit`` command) loads the model with
:func:`~fisherscope.models.load_model` and the data with :func:`~fisherscope.data.open_data`,
checks the model contract on the first batch (before any attack runs), then runs the ``audit``
experiment kind: pure cells over the results store and a pure report rendered from the stored
cells, so a run is resumable and ``fisherscope report RUN`` re-renders it. Sections:

- clean accuracy and calibration (:func:`~fisherscope.evaluation.expected_calibration_error`);
- worst-case robust accuracy (:func:`~fisherscope.evaluation.robust_accuracy` through
  :func:`~fisherscope.experiments.robust_kit.worst_case`: APGD-CE, APGD-T with the DLR loss,
  Square) at L∞ and L2 budgets scaled to the data, with the gradient-masking flags and one
  headline sentence;
- minimal perturbations (DeepFool, C&W L2) per class;
- the spectrum of G_x (λ_max against the logit margin and the minimal perturbation);
- OSSA beside PGD and APGD at equal L2 budgets;
- every applicable detector fitted on a split of the user's data, oblivious and adaptive
  (:func:`~fisherscope.evaluation.evaluate_detectors` with ``adaptive=True``); no detector is
  called the best unless it passes its noise control and the adaptive attack;
- saliency and FIS maps of the most vulnerable images, drawn as the model saw them.

The images are streamed in chunks of ``chunk`` (one chunk in memory at a time, plus seeded draws
of ``detect_samples`` and ``minimal_samples`` images for the detectors and the maps; the
detector cell, met first, reads its draw on its own); every
per-image section is one cell per chunk, so a killed run loses at most one chunk of one
section. Every cell's spec holds the digest of the model's weights and of the data selection,
and :func:`audit` refuses to resume a run made with another model or other data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import distributed
from .base import Context, register
from .common import inspect_maps, saliency_rows, trained_model
from .config import config_from_dict, config_to_dict
from .detection_kit import (
    DETECTOR_LABELS,
    RECIPES,
    DetectionConfig,
    DetectorInputs,
    attack_rows,
    table_rows,
)
from .report import Block, Figure, Heading, Paragraph, Table, save_figure
from .robust_kit import EnsembleSpec, worst_case
from .runner import Artifact, Results, Run, atomic_write_text

__all__ = ["AUDIT_DETECTORS", "AuditConfig", "AuditContext", "QUICK_ENSEMBLE", "audit", "audit_cells",
           "audit_report", "default_budgets", "weights_digest"]

log = logging.getLogger(__name__)

#: The detectors an audit fits (those whose requirements the model meets; see :func:`_applicable`).
AUDIT_DETECTORS = ["kd", "lid", "mahalanobis", "fisher_spectrum", "fisher_score", "fisher_nform", "softmax",
                   "pca_whitening", "bu"]
#: A stated reduction of AutoAttack's ensemble, the default for the built-in digits audit only.
QUICK_ENSEMBLE = EnsembleSpec(apgd_steps=10, n_target_classes=3, square_queries=100, check_samples=16)
#: Noise control: a detector passes when it separates adversarials from noise of the same L2 norm.
NOISE_AUROC_MIN = 0.75
#: Adaptive attack: a detector passes when it still flags this fraction of the adaptive adversarials.
ADAPTIVE_TPR_MIN = 0.5
SUMMARY_FILE = "summary.json"
#: Smaller settings of the built-in digits audit (no model given), so that it takes a minute or two.
#: (LID and the parameter-space Fisher scores, whose adaptive attacks differentiate through the
#: weights' Fisher at every step, are left out there and listed as such in the report).
BUILTIN_SETTINGS: dict[str, Any] = {"cw_steps": 50, "adaptive_steps": 10, "minimal_samples": 64, "detect_samples": 150,
                                    "n_bootstrap": 100, "detectors": ["kd", "mahalanobis", "fisher_spectrum", "softmax",
                                                                      "pca_whitening", "bu"]}


@dataclass(frozen=True)
class AuditConfig:
    """What an audit runs on and how much (the ``audit`` kind; :func:`audit` fills it in).

    ``model`` / ``data``: the forms :func:`~fisherscope.models.load_model` and
    :func:`~fisherscope.data.open_data` take as strings (``None``: the built-in ``digits_cnn``
    trained on scikit-learn's digits, and the digits test split); an audit of a Python object
    records its class name here and gets the object through :class:`AuditContext`.
    ``model_digest`` / ``data_digest`` identify the weights and the selected images (filled in
    by :func:`audit`). ``linf_eps`` / ``l2_eps``: the threat models (None: :func:`default_budgets`).
    """

    name: str = "audit"
    kind: str = "audit"
    seed: int = 0
    description: str = ""
    model: str | None = None
    weights: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    normalize: str | None = None
    as_logits: bool = False
    num_classes: int | None = None
    input_shape: list[int] | None = None
    data: str | None = None
    split: str | None = None
    limit: int | None = None
    resize: int | None = None
    channels: int | None = None
    batch_size: int = 128
    chunk: int = 500
    linf_eps: list[float] | None = None
    l2_eps: list[float] | None = None
    ensemble: EnsembleSpec = field(default_factory=EnsembleSpec)
    pgd_steps: int = 40
    minimal_samples: int = 100
    deepfool_steps: int = 50
    cw_steps: int = 100
    cw_binary_steps: int = 5
    detect_samples: int = 300
    detectors: list[str] = field(default_factory=lambda: list(AUDIT_DETECTORS))
    detect_steps: int = 20
    adaptive_steps: int = 50
    n_bootstrap: int = 200
    n_maps: int = 4
    model_digest: str = ""
    data_digest: str = ""


@dataclass(frozen=True)
class AuditContext(Context):
    """A :class:`~fisherscope.experiments.Context` carrying the already loaded model and data."""

    loaded: Any = None
    source: Any = None


# ====================================================================== identity


def weights_digest(model: nn.Module) -> str:
    """sha256 of a model's weights: every state-dict entry's name, dtype, shape and bytes, in order,
    with the module's class name (so the same weights in another wrapper differ)."""
    h = hashlib.sha256(b"fisherscope.weights.v1\n")
    h.update(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"\n{name}:{t.dtype}:{list(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def default_budgets(image_shape: tuple[int, ...], saturated: float) -> tuple[str, list[float], list[float]]:
    """The standard threat models for images of ``image_shape`` (C, H, W) in [0, 1].

    MNIST-like data (one channel, most pixels at 0 or 1: ``saturated`` ≥ 0.5, the fraction of
    pixels within 0.05 of a bound): L∞ {0.1, 0.3} and L2 {1, 2}·sqrt(D / 784) (MNIST's usual
    budgets, scaled to D = C·H·W); natural images: L∞ {2/255, 8/255} and L2 {0.25, 0.5}·sqrt(D / 3072)
    (CIFAR-10's). Returns (kind, L∞ budgets, L2 budgets).
    """
    d = int(np.prod(image_shape))
    if image_shape[0] == 1 and saturated >= 0.5:
        s = math.sqrt(d / 784)
        return "MNIST-like", [0.1, 0.3], [round(1.0 * s, 4), round(2.0 * s, 4)]
    s = math.sqrt(d / 3072)
    return "natural images", [2 / 255, 8 / 255], [round(0.25 * s, 4), round(0.5 * s, 4)]


# ====================================================================== loading


def _open(cfg: AuditConfig, ctx: Context) -> tuple[Any, Any]:
    """(LoadedModel, DataSource): from the context when :func:`audit` passed them, else from ``cfg``."""
    if isinstance(ctx, AuditContext) and ctx.loaded is not None and ctx.source is not None:
        return ctx.loaded, ctx.source
    return _load(cfg, ctx)


def _load(cfg: AuditConfig, ctx: Context, model_obj: Any = None, data_obj: Any = None) -> tuple[Any, Any]:
    from ..data import open_data
    from ..models import load_model

    source = open_data(data_obj if data_obj is not None else (cfg.data or "digits"), split=cfg.split,
                       limit=cfg.limit, seed=cfg.seed, batch_size=cfg.batch_size, resize=cfg.resize,
                       channels=cfg.channels, data_dir=ctx.data_dir)
    x0, y0 = source.first_batch(min(cfg.batch_size, len(source)))
    if model_obj is None and cfg.model is None:
        model_obj = trained_model("digits_cnn", "digits", ctx, seed=cfg.seed).model
    loaded = load_model(model_obj if model_obj is not None else cfg.model, weights=cfg.weights,
                        model_kwargs=cfg.model_kwargs or None, normalize=cfg.normalize,
                        output="probs" if cfg.as_logits else "logits", num_classes=cfg.num_classes,
                        input_shape=tuple(cfg.input_shape) if cfg.input_shape else None,
                        example=x0, labels=y0, device=ctx.device)
    return loaded, source


def _check_digests(cfg: AuditConfig, loaded: Any, source: Any) -> None:
    for what, want, got in (("model", cfg.model_digest, weights_digest(loaded.model)),
                            ("data", cfg.data_digest, source.fingerprint)):
        if want and want != got:
            raise ValueError(f"audit: the {what} has digest {got[:16]}..., but this audit was made for "
                             f"{what} digest {want[:16]}...; a run resumes only with the same {what}. Start a "
                             "new run (--no-resume) to audit this one.")


# ====================================================================== cells (names and specs)


def _ident(cfg: AuditConfig) -> dict[str, Any]:
    return {"model_digest": cfg.model_digest, "data_digest": cfg.data_digest, "seed": cfg.seed}


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _facts_cell(cfg: AuditConfig) -> tuple[str, dict[str, Any]]:
    return "facts", {**_ident(cfg), "linf_eps": cfg.linf_eps, "l2_eps": cfg.l2_eps}


def _clean_cell(cfg: AuditConfig, c: tuple[int, int]) -> tuple[str, dict[str, Any]]:
    return f"clean/{c[0]}", {**_ident(cfg), "images": list(c), "batch_size": cfg.batch_size}


def _robust_cell(cfg: AuditConfig, norm: str, eps: float, c: tuple[int, int]) -> tuple[str, dict[str, Any]]:
    return f"robust/{norm}/{eps:g}/{c[0]}", {**_ident(cfg), "images": list(c), "norm": norm, "eps": float(eps),
                                             "ensemble": config_to_dict(cfg.ensemble), "batch_size": cfg.batch_size}


def _ossa_cell(cfg: AuditConfig, l2: list[float], c: tuple[int, int]) -> tuple[str, dict[str, Any]]:
    return f"ossa/{c[0]}", {**_ident(cfg), "images": list(c), "budgets": l2, "pgd_steps": cfg.pgd_steps,
                            "batch_size": cfg.batch_size}


def _minimal_cell(cfg: AuditConfig, c: tuple[int, int], positions: list[int]) -> tuple[str, dict[str, Any]]:
    return f"minimal/{c[0]}", {**_ident(cfg), "images": list(c), "positions": positions,
                               "deepfool_steps": cfg.deepfool_steps, "cw_steps": cfg.cw_steps,
                               "cw_binary_steps": cfg.cw_binary_steps, "batch_size": cfg.batch_size}


def _draw(n: int, k: int, seed: int, salt: int) -> np.ndarray:
    """Sorted positions of a seeded draw of ``k`` of ``n`` images (all of them when k >= n), so that
    the sections run on a subset see every class even when the files are sorted by class."""
    if k >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng([seed, salt]).choice(n, size=k, replace=False)).astype(np.int64)


def _detect_cell(cfg: AuditConfig, n: int, linf: float) -> tuple[str, dict[str, Any]]:
    return "detect", {**_ident(cfg), "n": n, "detectors": list(cfg.detectors), "eps": float(linf),
                      "steps": cfg.detect_steps, "adaptive_steps": cfg.adaptive_steps,
                      "n_bootstrap": cfg.n_bootstrap, "batch_size": cfg.batch_size}


def _maps_cell(cfg: AuditConfig, n_min: int) -> tuple[str, dict[str, Any]]:
    return "maps", {**_ident(cfg), "n_maps": cfg.n_maps, "minimal_images": n_min,
                    "deepfool_steps": cfg.deepfool_steps}


def _threats(facts: Mapping[str, Any]) -> list[tuple[str, float]]:
    return [("linf", float(e)) for e in facts["linf_eps"]] + [("l2", float(e)) for e in facts["l2_eps"]]


def _check(cfg: AuditConfig) -> None:
    for key in ("batch_size", "chunk", "pgd_steps", "deepfool_steps", "cw_steps", "cw_binary_steps",
                "detect_steps", "adaptive_steps"):
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"audit: {key} must be an integer >= 1; got {v!r}.")
    for key in ("minimal_samples", "detect_samples", "n_maps", "n_bootstrap"):
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"audit: {key} must be an integer >= 0 (0 skips the section); got {v!r}.")
    for key in ("linf_eps", "l2_eps"):
        v = getattr(cfg, key)
        if v is not None and (not v or any(isinstance(e, bool) or not isinstance(e, int | float) or not e > 0
                                           for e in v)):
            raise ValueError(f"audit: {key} must be a non-empty list of budgets > 0 (or None for the data's "
                             f"standard budgets); got {v!r}.")
    unknown = [d for d in cfg.detectors if d not in RECIPES]
    if unknown:
        raise ValueError(f"audit: unknown detector key(s) {unknown}; valid: {sorted(RECIPES)}.")


# ====================================================================== compute


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    dev = _device(model)
    return torch.cat([model(x[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)])


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], -math.inf).amax(1)
    return true - other


def _clean(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AuditConfig) -> dict[str, Any]:
    from ..fisher import fisher_spectrum

    t0 = time.perf_counter()
    logits = _logits(model, x, cfg.batch_size)
    out: dict[str, Any] = {"logits": Artifact(logits), "y": y.tolist(), "margin": _margins(logits, y).tolist()}
    try:
        lam = []
        dev = _device(model)
        for i in range(0, len(x), cfg.batch_size):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lam.append(fisher_spectrum(model, x[i:i + cfg.batch_size].to(dev), k=1).top_eigenvalue.double().cpu())
        out["lambda_max"] = torch.cat(lam).tolist()
        out["spectrum_error"] = None
    except Exception as exc:  # noqa: BLE001 - a model the functional API cannot differentiate
        out["lambda_max"] = None
        out["spectrum_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    out["seconds"] = time.perf_counter() - t0
    return out


def _ossa(model: nn.Module, x: torch.Tensor, y: torch.Tensor, budgets: list[float], cfg: AuditConfig
          ) -> dict[str, Any]:
    from ..attacks import OSSA, PGD
    from ..evaluation import one_step_curve

    t0 = time.perf_counter()
    dev = _device(model)
    xd, yd = x.to(dev), y.to(dev)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = one_step_curve(OSSA(eps=1.0), model, xd, yd, budgets, seed=cfg.seed, batch_size=cfg.batch_size)
        ossa_fooled = [float(f) * c.n_correct for f in c.fooling_ratio.tolist()]
        err = None
    except Exception as exc:  # noqa: BLE001 - see _clean
        ossa_fooled, err = [math.nan] * len(budgets), f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    correct = _logits(model, x, cfg.batch_size).argmax(1) == y
    pgd_fooled = []
    for b in budgets:
        g = torch.Generator(device=dev).manual_seed(cfg.seed)
        fooled = 0
        idx = torch.nonzero(correct).flatten()
        for i in range(0, len(idx), cfg.batch_size):
            sel = idx[i:i + cfg.batch_size]
            res = PGD(eps=b, steps=cfg.pgd_steps, norm="l2").run(model, xd[sel.to(dev)], yd[sel.to(dev)], generator=g)
            fooled += int(res.success.sum())
        pgd_fooled.append(fooled)
    return {"n_correct": int(correct.sum()), "ossa_fooled": ossa_fooled, "pgd_fooled": pgd_fooled,
            "ossa_error": err, "seconds": time.perf_counter() - t0}


def _minimal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AuditConfig) -> dict[str, Any]:
    from ..attacks import CarliniWagnerL2, DeepFool

    out: dict[str, Any] = {"y": y.tolist()}
    dev = _device(model)
    correct = (_logits(model, x, cfg.batch_size).argmax(1) == y)
    out["correct"] = correct.int().tolist()
    for name, atk in (("deepfool", DeepFool(steps=cfg.deepfool_steps)),
                      ("cw", CarliniWagnerL2(steps=cfg.cw_steps, binary_search_steps=cfg.cw_binary_steps,
                                             initial_const=0.1, learning_rate=0.05))):
        t0 = time.perf_counter()
        l2 = torch.full((len(y),), math.nan, dtype=torch.float64)
        for i in range(0, len(y), cfg.batch_size):
            sl = slice(i, i + cfg.batch_size)
            res = atk.run(model, x[sl].to(dev), y[sl].to(dev))
            ok = (res.success.cpu() & correct[sl])
            l2[sl] = torch.where(ok, res.norms["l2"].double().cpu(), torch.tensor(math.nan, dtype=torch.float64))
        out[f"{name}_l2"] = l2.tolist()
        out[f"{name}_seconds"] = time.perf_counter() - t0
    return out


class _AuditInputs(DetectorInputs):
    """The detector recipes' inputs for a user's model: no dropout copy and no training split;
    PCA whitening is fitted on the detection images of the fit split, BU runs the model's own
    dropout modules."""

    def __init__(self, model: nn.Module, cfg: AuditConfig, x_fit: torch.Tensor, x_probe: torch.Tensor) -> None:
        protocol = DetectionConfig(name=cfg.name, kind="audit", seed=cfg.seed, mc_samples=20)
        super().__init__(None, protocol, Context(), x_probe)
        self._model, self._x_fit = model, x_fit

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def mc_dropout(self) -> Any:
        from ..evaluation import Feature

        return Feature("mc_dropout", model=self._model, kwargs={"n": 20})

    @property
    def whitening(self) -> Any:
        from ..features import fit_pca_whitening

        return fit_pca_whitening(self._x_fit)


def _applicable(cfg: AuditConfig, loaded: Any) -> dict[str, str | None]:
    """Detector key -> None when it can run on this model, else why not."""
    caps = loaded.capabilities or {}
    dropout = any(isinstance(m, nn.Dropout | nn.Dropout2d | nn.AlphaDropout) for m in loaded.model.modules())
    out: dict[str, str | None] = {}
    for d in cfg.detectors:
        why = None
        if d in ("kd", "lid", "mahalanobis", "kdbu") and not caps.get("layer_hooks", True):
            why = "needs the model's layers (a TorchScript / exported program has none to hook)"
        elif d in ("fisher_score", "fisher_form", "fisher_nform") and not caps.get("parameter_fisher", True):
            why = "needs the parameter-space Fisher (torch.func on the weights; TorchScript refuses it)"
        elif d in ("bu", "kdbu") and not dropout:
            why = "needs dropout layers in the model (Bayesian uncertainty samples dropout masks)"
        elif d == "reconstruction" and not callable(getattr(loaded.model, "reconstruct", None)):
            why = "needs a model with a decoder (reconstruct)"
        out[d] = why
    return out


def _detect(loaded: Any, x: torch.Tensor, y: torch.Tensor, linf: float, cfg: AuditConfig) -> dict[str, Any]:
    from ..attacks import PGD
    from ..evaluation import AdaptiveSettings, DetectorSpec, evaluate_detectors, source_splits

    t0 = time.perf_counter()
    splits = (0.4, 0.2, 0.4)
    model = loaded.model
    dev = _device(model)
    fit_rows = torch.from_numpy(source_splits(y.numpy(), splits, cfg.seed) == 0)
    inputs = _AuditInputs(model, cfg, x[fit_rows], x)
    usable = {d: why for d, why in _applicable(cfg, loaded).items()}
    specs: dict[str, Any] = {}
    for d, why in usable.items():
        if why is None:
            spec = RECIPES[d].build(inputs)
            specs[d] = DetectorSpec(spec.detector, spec.features, fit_noise=d == "fisher_spectrum")
    attacks = {"PGD-L∞": PGD(eps=linf, steps=cfg.detect_steps)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="G_x has rank at most")
        res = evaluate_detectors(model, x.to(dev), y.to(dev), attacks, specs, splits=splits,
                                 n_bootstrap=cfg.n_bootstrap, seed=cfg.seed, cross_attack=False,
                                 batch_size=cfg.batch_size, adaptive=True,
                                 adaptive_settings=AdaptiveSettings(steps=cfg.adaptive_steps))
    return {"records": res.to_records(), "not_applicable": {d: w for d, w in usable.items() if w},
            "wall_s": time.perf_counter() - t0}


def _detect_drawn(loaded: Any, source: Any, positions: np.ndarray, linf: float, cfg: AuditConfig) -> dict[str, Any]:
    """:func:`_detect` on the images at ``positions`` of the selection, read from ``source``."""
    parts = list(source.subset(positions).batches(cfg.chunk))
    return _detect(loaded, torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), linf, cfg)


def _maps(loaded: Any, x: torch.Tensor, y: torch.Tensor, deepfool_l2: list[float], cfg: AuditConfig
          ) -> dict[str, Any]:
    from ..attacks import DeepFool
    from ..saliency import gradient, guided_backprop, hendrycks_saliency

    model = loaded.model
    l2 = np.asarray(deepfool_l2, dtype=float)
    order = [int(i) for i in np.argsort(np.where(np.isnan(l2), np.inf, l2), kind="stable") if not np.isnan(l2[i])]
    sel = order[:cfg.n_maps]
    if not sel:
        return {"positions": [], "note": "no image of the minimal-perturbation set was both correctly classified "
                                         "and fooled by DeepFool"}
    dev = _device(model)
    xs, ys = x[sel].to(dev), y[sel].to(dev)
    xa = DeepFool(steps=cfg.deepfool_steps).run(model, xs, ys).x_adv.detach()
    out: dict[str, Any] = {"positions": sel, "y": ys.tolist(), "l2": [float(l2[i]) for i in sel]}
    try:
        maps = inspect_maps(model, xs, xa)
        out["fis"] = True
    except Exception as exc:  # noqa: BLE001 - FIS needs the parameter-space Fisher
        maps = {}
        for tag, xx in (("clean", xs), ("adv", xa)):
            maps[f"gradient/{tag}"] = gradient(model, xx)
            maps[f"guided/{tag}"] = guided_backprop(model, xx)
            maps[f"hendrycks/{tag}"] = hendrycks_saliency(model, xx)
            maps[f"fis/{tag}"] = torch.zeros_like(xx)
        out["fis"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    with torch.no_grad():
        out["pred_clean"] = model(xs).argmax(1).tolist()
        out["pred_adv"] = model(xa).argmax(1).tolist()
    out.update({"x": Artifact(xs), "x_adv": Artifact(xa), **{k: Artifact(v) for k, v in maps.items()}})
    return out


def _stream(source: Any, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    yield from source.batches(size)


def audit_cells(run: Run, cfg: AuditConfig, ctx: Context) -> None:
    """Compute what is missing, chunk by chunk (see the module docstring)."""
    _check(cfg)
    loaded, source = _open(cfg, ctx)
    _check_digests(cfg, loaded, source)
    model = loaded.model
    n = len(source)

    def facts() -> dict[str, Any]:
        xb, _ = source.first_batch(min(512, n))
        sat = float(((xb <= 0.05) | (xb >= 0.95)).float().mean())
        kind, linf, l2 = default_budgets(source.image_shape, sat)
        return {"model": loaded.describe(), "data": source.describe(), "n": n,
                "classes": [str(c) for c in source.classes], "image_shape": list(source.image_shape),
                "num_classes": int(loaded.num_classes or source.num_classes),
                "n_parameters": int(sum(p.numel() for p in model.parameters())),
                "data_kind": kind, "saturated_fraction": sat,
                "linf_eps": [float(e) for e in (cfg.linf_eps or linf)], "l2_eps": [float(e) for e in (cfg.l2_eps or l2)],
                "budgets_from": "config" if cfg.linf_eps or cfg.l2_eps else "data",
                "model_digest": weights_digest(model), "data_digest": source.fingerprint}

    f = run.cell(*_facts_cell(cfg)[:1], facts, spec=_facts_cell(cfg)[1])
    threats = _threats(f)
    l2 = [float(e) for e in f["l2_eps"]]
    pos_min = _draw(n, cfg.minimal_samples, cfg.seed, 1)
    pos_det = _draw(n, cfg.detect_samples, cfg.seed, 2)
    if len(pos_det) and cfg.detectors:
        # met first: the one long cell of fixed size, so under torchrun one rank takes it while the
        # others start on the chunks (it reads its own images, only the drawn ones)
        linf = max(f["linf_eps"])
        name, spec = _detect_cell(cfg, len(pos_det), linf)
        run.cell(name, partial(_detect_drawn, loaded, source, pos_det, linf, cfg), spec=spec)
    kept: dict[str, list[torch.Tensor]] = {"xm": [], "ym": []}
    for c, (xb, yb) in zip(_chunks(n, cfg.chunk), _stream(source, cfg.chunk), strict=True):
        pm = _local(pos_min, c)
        kept["xm"].append(xb[pm])
        kept["ym"].append(yb[pm])
        run.cell(*_clean_cell(cfg, c)[:1], partial(_clean, model, xb, yb, cfg), spec=_clean_cell(cfg, c)[1])
        for norm, eps in threats:
            name, spec = _robust_cell(cfg, norm, eps, c)
            run.cell(name, partial(worst_case, model, xb, yb, norm=norm, eps=eps, ensemble=cfg.ensemble, seed=cfg.seed,
                                   batch_size=cfg.batch_size), spec=spec)
        run.cell(*_ossa_cell(cfg, l2, c)[:1], partial(_ossa, model, xb, yb, l2, cfg), spec=_ossa_cell(cfg, l2, c)[1])
        if len(pm):
            name, spec = _minimal_cell(cfg, c, (pm + c[0]).tolist())
            run.cell(name, partial(_minimal, model, xb[pm], yb[pm], cfg), spec=spec)
        del xb, yb
    xm, ym = (torch.cat(kept[k]) for k in ("xm", "ym"))
    if len(pos_min) and cfg.n_maps:
        minimal = [_key(name, spec) for name, spec in _minimal_cells(cfg, n)]

        def maps() -> dict[str, Any]:
            run.wait_for(minimal)  # under torchrun other ranks may still be computing some of them
            df = [v for k in minimal for v in run.results(k)["deepfool_l2"]]
            return _maps(loaded, xm, ym, df, cfg)

        run.cell(*_maps_cell(cfg, len(pos_min))[:1], maps, spec=_maps_cell(cfg, len(pos_min))[1])


def _local(positions: np.ndarray, c: tuple[int, int]) -> np.ndarray:
    """The positions inside chunk ``c``, relative to its start."""
    return positions[(positions >= c[0]) & (positions < c[1])] - c[0]


def _key(name: str, spec: dict[str, Any]) -> str:
    from .runner import cell_key

    return cell_key(name, spec)


def _minimal_cells(cfg: AuditConfig, n: int) -> list[tuple[str, dict[str, Any]]]:
    """The minimal-perturbation cells, in chunk order (their images: the draw of ``minimal_samples``)."""
    pos = _draw(n, cfg.minimal_samples, cfg.seed, 1)
    out = []
    for c in _chunks(n, cfg.chunk):
        pm = _local(pos, c)
        if len(pm):
            out.append(_minimal_cell(cfg, c, (pm + c[0]).tolist()))
    return out


# ====================================================================== report helpers


def _eps_label(norm: str, eps: float) -> str:
    k = eps * 255
    text = f"{round(k)}/255" if norm == "linf" and abs(k - round(k)) < 1e-6 and eps < 0.1 else f"{eps:g}"
    return f"{'L∞' if norm == 'linf' else 'L2'} ε={text}"


def _p1(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _g3(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 3:
        return math.nan
    ra = np.argsort(np.argsort(a[ok])).astype(float)
    rb = np.argsort(np.argsort(b[ok])).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def _robust_summary(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """One threat model's chunks merged: accuracies over all images, flags of any chunk."""
    n = sum(c["n"] for c in cells)
    rob = sum(c["robust_accuracy"] * c["n"] for c in cells) / n
    clean = sum(c["clean_accuracy"] * c["n"] for c in cells) / n
    names = [a for a, _ in cells[0]["per_attack"]]
    per = [sum(c["per_attack"][j][1] * c["n"] for c in cells) / n for j in range(len(names))]
    n_correct = sum(c["n_correct"] for c in cells)
    flags: dict[str, str] = {}
    for c in cells:
        for fl in c["flags"]:
            flags.setdefault(fl["code"], fl["message"])
    return {"n": n, "robust_accuracy": rob, "clean_accuracy": clean, "per_attack": list(zip(names, per, strict=True)),
            "n_correct": n_correct, "fooling_after": [(n_correct - p * n) / n_correct if n_correct else math.nan
                                                      for p in per],
            "flags": flags, "seconds": sum(c["seconds"] for c in cells),
            "attacks": cells[0]["attacks"]}


def _detector_verdicts(records: list[dict[str, Any]], detectors: list[str]) -> list[dict[str, Any]]:
    obl, ada = table_rows(records), table_rows(records, "adaptive")
    out = []
    for d in detectors:
        r = next((v for (dd, _), v in obl.items() if dd == d), None)
        a = next((v for (dd, _), v in ada.items() if dd == d), None)
        if r is None or r.get("error"):
            out.append({"detector": d, "label": DETECTOR_LABELS.get(d, d), "error": (r or {}).get("error", "no row")})
            continue
        noise = r.get("auroc_noise")
        a_tpr = None if a is None or a.get("error") else a.get("tpr")
        out.append({
            "detector": d, "label": DETECTOR_LABELS.get(d, d), "auroc": r.get("auroc"), "tpr": r.get("tpr"),
            "fpr": r.get("fpr"), "auroc_noise": noise, "adaptive_tpr": a_tpr,
            "adaptive_evasion": None if a is None else a.get("evasion_rate"),
            "passes_noise": noise is not None and not math.isnan(float(noise)) and float(noise) >= NOISE_AUROC_MIN,
            "passes_adaptive": a_tpr is not None and not math.isnan(float(a_tpr)) and float(a_tpr) >= ADAPTIVE_TPR_MIN,
        })
    return out


def _fig_lambda(lam: np.ndarray, margin: np.ndarray, correct: np.ndarray, df_l2: np.ndarray, lam_min: np.ndarray,
                path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
    pos = lam[lam > 0]
    axes[0].hist(np.log10(pos) if len(pos) else [], bins=30, color="tab:blue")
    axes[0].set_xlabel("log10 λ_max of G_x")
    axes[0].set_ylabel("images")
    axes[1].scatter(margin[correct], lam[correct], s=6, label="correct")
    axes[1].scatter(margin[~correct], lam[~correct], s=6, color="tab:red", label="misclassified")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("logit margin z_y − max_{j≠y} z_j")
    axes[1].set_ylabel("λ_max")
    axes[1].legend(fontsize=7)
    ok = ~np.isnan(df_l2)
    axes[2].scatter(df_l2[ok], lam_min[ok], s=8, color="tab:green")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("DeepFool minimal L2 perturbation")
    axes[2].set_ylabel("λ_max")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def _fig_minimal(y: np.ndarray, vals: dict[str, np.ndarray], classes: list[str], path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(vals), figsize=(5.2 * len(vals), 3.2), squeeze=False)
    present = [k for k in range(len(classes)) if (y == k).any()]
    for ax, (name, v) in zip(axes[0], vals.items(), strict=True):
        data = [v[(y == k) & ~np.isnan(v)] for k in present]
        ax.boxplot([d if len(d) else [np.nan] for d in data], showfliers=True)
        ax.set_xticks(range(1, len(present) + 1), [classes[k] for k in present], fontsize=8,
                      rotation=45 if len(present) > 12 else 0)
        ax.set_xlabel("true class")
        ax.set_ylabel("minimal L2 perturbation")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def _fig_calibration(cal: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    edges = np.asarray(cal.bin_edges)
    centers = (edges[:-1] + edges[1:]) / 2
    acc = np.asarray(cal.bin_accuracy, dtype=float)
    ax.bar(centers, np.nan_to_num(acc), width=edges[1] - edges[0], edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlabel("confidence (max softmax)")
    ax.set_ylabel("accuracy in the bin")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


# ====================================================================== the report


def _gather(cfg: AuditConfig, results: Results) -> dict[str, Any]:
    """Every stored cell the report reads, merged over the chunks (raises KeyError for a missing one)."""
    f = results.cell(*_facts_cell(cfg))
    n = f["n"]
    chunks = _chunks(n, cfg.chunk)
    clean = [results.cell(*_clean_cell(cfg, c)) for c in chunks]
    g: dict[str, Any] = {"facts": f, "chunks": chunks}
    g["logits"] = torch.from_numpy(np.concatenate([np.asarray(c["logits"]) for c in clean]))
    g["y"] = np.concatenate([np.asarray(c["y"], dtype=np.int64) for c in clean])
    g["margin"] = np.concatenate([np.asarray(c["margin"], dtype=float) for c in clean])
    spec_err = next((c["spectrum_error"] for c in clean if c["lambda_max"] is None), None)
    g["lambda"] = None if spec_err else np.concatenate([np.asarray(c["lambda_max"], dtype=float) for c in clean])
    g["spectrum_error"] = spec_err
    g["robust"] = {t: _robust_summary([results.cell(*_robust_cell(cfg, *t, c)) for c in chunks]) for t in _threats(f)}
    ossa = [results.cell(*_ossa_cell(cfg, [float(e) for e in f["l2_eps"]], c)) for c in chunks]
    g["ossa"] = {"n_correct": sum(o["n_correct"] for o in ossa),
                 "ossa_fooled": np.sum([o["ossa_fooled"] for o in ossa], axis=0).tolist(),
                 "pgd_fooled": np.sum([o["pgd_fooled"] for o in ossa], axis=0).tolist(),
                 "error": next((o["ossa_error"] for o in ossa if o["ossa_error"]), None)}
    mins = [results.cell(*mc) for mc in _minimal_cells(cfg, n)]
    g["minimal_positions"] = np.asarray([p for mc in _minimal_cells(cfg, n) for p in mc[1]["positions"]], dtype=np.int64)
    g["minimal"] = {k: np.concatenate([np.asarray(m[k], dtype=float) for m in mins]) if mins else np.empty(0)
                    for k in ("y", "correct", "deepfool_l2", "cw_l2")}
    g["minimal_seconds"] = {k: sum(m[f"{k}_seconds"] for m in mins) for k in ("deepfool", "cw")}
    n_det = min(n, cfg.detect_samples)
    g["detect"] = (results.cell(*_detect_cell(cfg, n_det, max(f["linf_eps"])))
                   if n_det and cfg.detectors else None)
    n_min = min(n, cfg.minimal_samples)
    g["maps"] = results.cell(*_maps_cell(cfg, n_min)) if n_min and cfg.n_maps else None
    return g


def _headline(f: dict[str, Any], g: dict[str, Any], cfg: AuditConfig) -> tuple[str, dict[str, Any]]:
    linf = max(f["linf_eps"])
    r = g["robust"][("linf", float(linf))]
    flags = sorted(r["flags"])
    bound = "" if cfg.ensemble.is_standard else " (a reduced ensemble: an upper bound)"
    flag_text = (f"; gradient-masking flags raised: {', '.join(flags)} — treat the number as an upper bound"
                 if flags else "; no gradient-masking flag was raised")
    sentence = (f"Robust accuracy {_p1(r['robust_accuracy'])} under {_eps_label('linf', linf)} "
                f"(worst case of APGD-CE, APGD-T and Square{bound}, {r['n']} images; clean accuracy "
                f"{_p1(r['clean_accuracy'])}){flag_text}.")
    return sentence, {"norm": "linf", "eps": float(linf), "robust_accuracy": r["robust_accuracy"],
                      "clean_accuracy": r["clean_accuracy"], "n": r["n"], "flags": flags}


def audit_report(cfg: AuditConfig, results: Results) -> list[Block]:
    from ..evaluation import expected_calibration_error
    from ..plotting_maps import fis_figure, saliency_figure

    g = _gather(cfg, results)
    f = g["facts"]
    classes = f["classes"]
    y = g["y"]
    logits = g["logits"]
    pred = logits.argmax(1).numpy()
    correct = pred == y
    cal = expected_calibration_error(logits, torch.from_numpy(y))
    headline, head = _headline(f, g, cfg)
    md, dd = f["model"], f["data"]
    summary: dict[str, Any] = {
        "headline": headline, "headline_threat": head,
        "model": {"source": md["source"], "kind": md["kind"], "weights": md["weights"], "digest": f["model_digest"],
                  "num_classes": f["num_classes"], "n_parameters": f["n_parameters"]},
        "data": {"source": dd["source"], "kind": dd["kind"], "split": dd["split"], "n": f["n"],
                 "image_shape": f["image_shape"], "digest": f["data_digest"], "data_kind": f["data_kind"]},
        "clean_accuracy": float(correct.mean()), "ece": cal.ece, "mce": cal.mce,
    }
    blocks: list[Block] = [
        Heading("Robustness audit"),
        Paragraph(f"**{headline}**"),
        Paragraph(
            f"Model `{md['source']}` ({md['kind']}{', weights `' + str(md['weights']) + '`' if md['weights'] else ''}; "
            f"{f['n_parameters']} parameters, {f['num_classes']} classes; weights digest `{f['model_digest'][:16]}`). "
            f"Data `{dd['source']}` ({dd['kind']}, split {dd['split']}; {f['n']} of {dd['n_available']} images"
            f"{' (seeded draw, seed ' + str(cfg.seed) + ')' if dd['limit'] else ''}, shape {tuple(f['image_shape'])}; "
            f"data digest `{f['data_digest'][:16]}`). Every number below is stored in `results.jsonl`; "
            "`fisherscope report RUN` re-renders this page from it."),
    ]

    # ---- clean accuracy and calibration
    per_class = [[classes[k], int((y == k).sum()), _p1(float(correct[y == k].mean())) if (y == k).any() else "–"]
                 for k in range(len(classes))]
    cal_path = _fig_calibration(cal, results.figures_dir / "audit_calibration.png")
    blocks += [
        Heading("Clean accuracy and calibration"),
        Paragraph(f"Clean accuracy {_p1(float(correct.mean()))} on {len(y)} images. Expected calibration error "
                  f"(15 equal-width confidence bins) {_g3(cal.ece)}, maximum calibration error {_g3(cal.mce)}; mean "
                  f"confidence {_p1(float(torch.softmax(logits.double(), 1).max(1).values.mean()))}."),
        Table(["class", "images", "accuracy"], per_class, caption="Clean accuracy per class"),
        Figure(cal_path, "Reliability diagram: accuracy per confidence bin against the diagonal."),
    ]

    # ---- worst-case robust accuracy
    threats = _threats(f)
    rows, flag_rows = [], []
    for t in threats:
        r = g["robust"][t]
        rows.append([_eps_label(*t), _p1(r["clean_accuracy"]), *[_p1(a) for _, a in r["per_attack"]],
                     _p1(r["robust_accuracy"]), ", ".join(sorted(r["flags"])) or "none", f"{r['seconds']:.0f}"])
        flag_rows += [[_eps_label(*t), code, msg] for code, msg in sorted(r["flags"].items())]
    attack_names = [a for a, _ in g["robust"][threats[0]]["per_attack"]]
    summary["robust"] = [{"norm": t[0], "eps": t[1], "robust_accuracy": g["robust"][t]["robust_accuracy"],
                          "per_attack": [[a, v] for a, v in g["robust"][t]["per_attack"]],
                          "flags": sorted(g["robust"][t]["flags"])} for t in threats]
    blocks += [
        Heading("Worst-case robust accuracy"),
        Paragraph(f"Threat models: {', '.join(_eps_label(*t) for t in threats)} — "
                  + (f"the standard budgets for {f['data_kind']} ({f['saturated_fraction'] * 100:.0f}% of the pixels "
                     "of the first batch lie within 0.05 of 0 or 1; L2 budgets scaled with sqrt of the input "
                     "dimension)" if f["budgets_from"] == "data" else "as configured")
                  + f". Attacks: {cfg.ensemble.describe()} Masking checks: `{cfg.ensemble.checks}` on at most "
                  f"{cfg.ensemble.check_samples} images per chunk of {cfg.chunk} "
                  "(fisherscope.evaluation.robust_accuracy)."),
        Table(["threat model", "clean", *[f"after {a}" for a in attack_names], "robust accuracy", "masking flags",
               "seconds"], rows, caption="Robust accuracy (% of all images: correct on the clean image and after "
                                         "every attack so far)"),
        Table(["threat model", "flag", "finding"], flag_rows or [["–", "none", "no gradient-masking flag was raised"]],
              caption="Gradient-masking flags and what they mean"),
    ]

    # ---- minimal perturbations
    mn = g["minimal"]
    my = mn["y"].astype(np.int64)
    vals = {"DeepFool (L2)": mn["deepfool_l2"], "C&W L2": mn["cw_l2"]}
    if len(my):
        min_path = _fig_minimal(my, vals, classes, results.figures_dir / "audit_minimal.png")
        mrows = []
        for k in range(len(classes)):
            sel = my == k
            if not sel.any():
                continue
            mrows.append([classes[k], int(sel.sum()), *[_g3(float(np.nanmedian(v[sel]))) if (~np.isnan(v[sel])).any()
                                                        else "–" for v in vals.values()]])
        mrows.append(["all", len(my), *[_g3(float(np.nanmedian(v))) if (~np.isnan(v)).any() else "–"
                                        for v in vals.values()]])
        summary["minimal_perturbation"] = {"n": int(len(my)), **{
            k: {"median_l2": float(np.nanmedian(v)) if (~np.isnan(v)).any() else None,
                "found": int((~np.isnan(v)).sum())} for k, v in (("deepfool", mn["deepfool_l2"]), ("cw", mn["cw_l2"]))}}
        blocks += [
            Heading("Minimal perturbations"),
            Paragraph(f"DeepFool ({cfg.deepfool_steps} steps) and Carlini & Wagner L2 ({cfg.cw_binary_steps} binary-search "
                      f"steps × {cfg.cw_steps} Adam steps) on {len(my)} images (a seeded draw), over the correctly classified "
                      f"ones they fooled (DeepFool {int((~np.isnan(mn['deepfool_l2'])).sum())}, C&W "
                      f"{int((~np.isnan(mn['cw_l2'])).sum())} of {int(mn['correct'].sum())} correct). The L2 norm of "
                      f"the smallest adversarial perturbation each found: an upper bound on the distance to the "
                      f"decision boundary. Time: DeepFool {g['minimal_seconds']['deepfool']:.0f} s, C&W "
                      f"{g['minimal_seconds']['cw']:.0f} s."),
            Table(["class", "images", "DeepFool median L2", "C&W median L2"], mrows,
                  caption="Median minimal L2 perturbation per true class"),
            Figure(min_path, "Minimal L2 perturbation per true class (box: quartiles; whiskers 1.5 IQR)."),
        ]

    # ---- the spectrum of G_x
    blocks.append(Heading("The spectrum of the input-space Fisher matrix G_x"))
    if g["lambda"] is None:
        blocks.append(Paragraph(f"Not computed: {g['spectrum_error']}."))
        summary["spectrum"] = None
    else:
        lam = g["lambda"]
        n_min = len(my)
        lam_min = lam[g["minimal_positions"]]
        rho_margin = _spearman(lam[correct], g["margin"][correct])
        rho_df = _spearman(lam_min, mn["deepfool_l2"]) if n_min else math.nan
        sp_path = _fig_lambda(lam, g["margin"], correct, mn["deepfool_l2"] if n_min else np.empty(0),
                              lam_min, results.figures_dir / "audit_spectrum.png")
        summary["spectrum"] = {"lambda_max_median": float(np.median(lam)), "spearman_margin": rho_margin,
                               "spearman_deepfool": rho_df}
        blocks += [
            Paragraph(
                "λ_max, the largest eigenvalue of G_x = Jᵀ(diag p − p pᵀ)J, says how fast the prediction changes "
                "(in KL divergence) along the most sensitive input direction; exact, from K batched "
                f"vector-Jacobian products (fisherscope.fisher.fisher_spectrum). Median λ_max {_g3(float(np.median(lam)))} "
                f"(quartiles {_g3(float(np.quantile(lam, 0.25)))} – {_g3(float(np.quantile(lam, 0.75)))}). Spearman rank "
                f"correlation of λ_max with the logit margin on the correctly classified images: {_g3(rho_margin)}; "
                f"with the DeepFool minimal perturbation: {_g3(rho_df)} (negative: images with a larger λ_max are "
                "closer to the boundary)."),
            Figure(sp_path, "Left: distribution of λ_max. Middle: λ_max against the logit margin. Right: λ_max "
                            "against the DeepFool minimal L2 perturbation."),
        ]

    # ---- OSSA beside PGD / APGD at equal L2 budget
    o = g["ossa"]
    orows = []
    ossa_sum = []
    for j, b in enumerate(f["l2_eps"]):
        r = g["robust"][("l2", float(b))]
        oss = o["ossa_fooled"][j] / o["n_correct"] if o["n_correct"] else math.nan
        pgd = o["pgd_fooled"][j] / o["n_correct"] if o["n_correct"] else math.nan
        orows.append([_eps_label("l2", b), _p1(oss), _p1(pgd), _p1(r["fooling_after"][0]), _p1(r["fooling_after"][-1])])
        ossa_sum.append({"eps": float(b), "ossa": oss, "pgd": pgd, "apgd_ce": r["fooling_after"][0],
                         "worst_case": r["fooling_after"][-1]})
    summary["ossa_vs_pgd"] = ossa_sum
    blocks += [
        Heading("OSSA beside PGD and APGD at equal L2 budget"),
        Paragraph("Fooling ratio (of the correctly classified images, the fraction misclassified after the attack) "
                  "of the one-step spectral attack (Zhao et al.: one step along the top eigenvector of G_x; budget "
                  f"before clipping), PGD-L2 ({cfg.pgd_steps} steps, random start), APGD-CE and the whole worst-case "
                  "ensemble at the same L2 budgets. A one-step attack far below the iterative ones is the usual "
                  "picture; OSSA close to them means the model is nearly linear around its inputs."
                  + (f" OSSA failed: {o['error']}." if o["error"] else "")),
        Table(["L2 budget", "OSSA", f"PGD-L2 ({cfg.pgd_steps} steps)", "APGD-CE", "worst case"], orows,
              caption=f"Fooling ratio on the {o['n_correct']} correctly classified images"),
    ]

    # ---- detectors
    det = g["detect"]
    best: str | None = None
    if det is not None:
        recs = det["records"]
        used = [d for d in cfg.detectors if d not in det["not_applicable"]]
        verdicts = _detector_verdicts(recs, used)
        atk = attack_rows(recs)
        a = next(iter(atk.values()), None)
        passing = [v for v in verdicts if not v.get("error") and v["passes_noise"] and v["passes_adaptive"]]
        if passing:
            bestv = max(passing, key=lambda v: float(v["auroc"]))
            best = bestv["detector"]
            best_text = (f"Of the detectors that pass both the noise control (AUROC adversarial vs noise ≥ "
                         f"{NOISE_AUROC_MIN:.2f}) and the adaptive attack (TPR ≥ {ADAPTIVE_TPR_MIN:.0%} at the 5%-FPR "
                         f"threshold), {bestv['label']} has the highest oblivious AUROC ({_p1(bestv['auroc'])}).")
        else:
            best_text = (f"No detector passes both the noise control (AUROC adversarial vs noise ≥ {NOISE_AUROC_MIN:.2f}) "
                         f"and the adaptive attack (TPR ≥ {ADAPTIVE_TPR_MIN:.0%} at the 5%-FPR threshold), so none is "
                         "recommended: an attacker who knows the detector evades it, or it flags any perturbation.")
        drows = [[v["label"], "error: " + str(v["error"]), "", "", "", "", ""] if v.get("error") else
                 [v["label"], _p1(v["auroc"]), f"{_p1(v['tpr'])} ({_p1(v['fpr'])})", _p1(v["auroc_noise"]),
                  _p1(v["adaptive_tpr"]), _p1(v["adaptive_evasion"]),
                  "yes" if v["passes_noise"] and v["passes_adaptive"] else
                  "no: " + ", ".join(w for w, ok in (("noise control", v["passes_noise"]),
                                                    ("adaptive attack", v["passes_adaptive"])) if not ok)]
                 for v in verdicts]
        na = [[DETECTOR_LABELS.get(d, d), why] for d, why in det["not_applicable"].items()]
        na += [[DETECTOR_LABELS.get(d, d), "is not in this audit's detector list (add it with --set "
                "detectors=[...]; the adaptive attacks on LID and the Fisher scores are the slow ones)"]
               for d in AUDIT_DETECTORS if d not in cfg.detectors]
        summary["detectors"] = [{k: v[k] for k in ("detector", "auroc", "auroc_noise", "adaptive_tpr", "passes_noise",
                                                   "passes_adaptive") if k in v} for v in verdicts]
        summary["best_detector"] = best
        n_correct_test = next((r["n_correct_test"] for r in recs if r["kind"] == "table" and r.get("n_correct_test")),
                              0)
        blocks += [
            Heading("Detectors: oblivious and adaptive"),
            Paragraph(f"Every applicable detector fitted on {min(f['n'], cfg.detect_samples)} images (a seeded draw), split by "
                      "source image into fit / calibrate / test = 40/20/40% (fisherscope.evaluation.evaluate_detectors); "
                      f"positives: PGD-L∞ ({_eps_label('linf', max(f['linf_eps']))}, {cfg.detect_steps} steps) "
                      f"adversarials of correctly classified images"
                      + (f" (success rate {_p1(a['success_rate'])})" if a else "")
                      + f"; {n_correct_test} correctly classified test images. Adaptive: DetectorAwarePGD "
                      f"({cfg.adaptive_steps} steps per mode) in the same ε-ball against each fitted detector; an "
                      "adversarial counts against it only if misclassified and not flagged by the real detector. "
                      + best_text),
            Table(["detector", "AUROC", "TPR (FPR) at 5% FPR", "noise control AUROC", "adaptive TPR", "adaptive evasion",
                   "recommendable"], drows, caption="Detectors on the test split"),
        ]
        if na:
            blocks.append(Table(["detector", "not run because it"], na, caption="Detectors not run, and why "
                                                                                "not"))

    # ---- maps
    mp = g["maps"]
    if mp is not None and mp.get("positions"):
        arr = {k: np.asarray(v, dtype=float) for k, v in mp.items() if k not in ("positions", "fis", "note")}
        x, xa = arr["x"], arr["x_adv"]
        titles = [f"{classes[int(t)]} → {classes[int(p)]} (L2 {l2:.2g})"
                  for t, p, l2 in zip(arr["y"], arr["pred_adv"], arr["l2"], strict=True)]
        blocks.append(Heading("The most vulnerable images: saliency and FIS maps"))
        if mp["fis"] is True:
            fis_path = save_figure(fis_figure(xa, arr["fis/adv"], x, arr["fis/clean"], shared_scale=False,
                                              row_titles=titles, cell_size=1.3),
                                   results.figures_dir / "audit_fis.png")
            blocks.append(Figure(fis_path, "The DeepFool adversarial of each of the images with the smallest minimal "
                                           "perturbation, |FIS| of the adversarial and of the clean image, and x_adv − x."))
        images, cols, stitles = saliency_rows(
            x, xa, arr, [f"clean, pred {classes[int(p)]}" for p in arr["pred_clean"]],
            [f"adv, pred {classes[int(p)]}" for p in arr["pred_adv"]])
        if mp["fis"] is not True:
            cols.pop("FIS", None)
        sal_path = save_figure(saliency_figure(images, cols, row_titles=stitles, cell_size=1.2),
                               results.figures_dir / "audit_saliency.png")
        blocks.append(Figure(sal_path, "Clean and DeepFool-adversarial versions of the most vulnerable images with "
                                       "their signed saliency maps, drawn exactly as the model saw them (pixels on [0, 1], "
                                       "no resampling)."
                             + ("" if mp["fis"] is True else f" FIS not available: {mp['fis']}.")))

    atomic_write_text(results.dir / SUMMARY_FILE, json.dumps(_finite(summary), indent=2, sort_keys=True) + "\n")
    return blocks


def _finite(obj: Any) -> Any:
    """JSON-safe: NaN and infinities as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


register("audit", AuditConfig,
         "A user's own model and data: clean accuracy and calibration, worst-case robust accuracy with masking "
         "flags, minimal perturbations, the G_x spectrum, OSSA vs PGD, detectors (oblivious and adaptive), maps.",
         report=audit_report)(audit_cells)


# ====================================================================== the entry


def audit(
    model: Any = None,
    data: Any = None,
    *,
    out: str | Path = "runs",
    weights: str | Path | None = None,
    model_kwargs: dict[str, Any] | None = None,
    normalize: Any = None,
    as_logits: bool = False,
    num_classes: int | None = None,
    input_shape: Any = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
    resize: int | None = None,
    channels: int | None = None,
    linf_eps: list[float] | None = None,
    l2_eps: list[float] | None = None,
    ensemble: str | dict[str, Any] | EnsembleSpec | None = None,
    resume: bool | str | Path = False,
    name: str = "audit",
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    progress: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Audit a model's robustness on a user's data; write a run directory and return its summary.

    Parameters
    ----------
    model : nn.Module, str or None
        Anything :func:`~fisherscope.models.load_model` takes (a module, an architecture name with
        ``weights``, a checkpoint, a TorchScript or ``.pt2`` file, ``"package.module:factory"``);
        ``None``: the built-in ``digits_cnn`` trained on scikit-learn's digits (offline).
    data : str, ImageDataset, (x, y) or None
        Anything :func:`~fisherscope.data.open_data` takes (``None``: the digits test split).
    out : path
        Parent folder of the run directory (``runs/<timestamp>-<name>``).
    weights, model_kwargs, normalize, num_classes, input_shape
        As :func:`~fisherscope.models.load_model`; ``as_logits=True``: the model returns
        probabilities (``output="probs"``).
    split, limit, seed, batch_size, resize, channels, data_dir
        As :func:`~fisherscope.data.open_data` (``seed`` also seeds every attack and split).
        Without a model and ``limit``, the built-in audit uses 200 digits.
    linf_eps, l2_eps : list of float, optional
        Threat models (default :func:`default_budgets` of the data).
    ensemble : "standard", "quick", dict or EnsembleSpec, optional
        The worst-case attacks: AutoAttack's standard ensemble (the default for a given model) or
        :data:`QUICK_ENSEMBLE`, a stated reduction (the default of the built-in digits audit); a dict
        overrides fields of the default.
    resume : bool or path
        Continue the latest run of ``name`` under ``out`` (or this run directory); refused when it
        was made with another model or other data.
    settings
        Any other field of :class:`AuditConfig` (``chunk``, ``minimal_samples``, ``detect_samples``,
        ``detectors``, ``adaptive_steps``, ...).

    Returns
    -------
    dict
        The run's ``summary.json`` (headline sentence, clean accuracy, ECE, robust accuracy per
        threat model, ...) with ``run_dir`` added.

    Raises
    ------
    ValueError, TypeError, FileNotFoundError, CheckpointError
        Bad input (weights that do not fit, a pickle checkpoint, probability outputs without
        ``as_logits``, an input shape that does not match the data, ...): raised before any attack runs.
    """
    from .base import run_experiment

    builtin = model is None
    if isinstance(ensemble, str):
        if ensemble not in ("standard", "quick"):
            raise ValueError(f"audit: ensemble must be 'standard', 'quick', a dict or an EnsembleSpec; got {ensemble!r}.")
        spec = EnsembleSpec() if ensemble == "standard" else QUICK_ENSEMBLE
    elif ensemble is None or isinstance(ensemble, dict):
        spec = QUICK_ENSEMBLE if builtin else EnsembleSpec()
        if isinstance(ensemble, dict):
            spec = config_from_dict(EnsembleSpec, {**config_to_dict(spec), **ensemble}, where="audit ensemble")
    elif isinstance(ensemble, EnsembleSpec):
        spec = ensemble
    else:
        raise TypeError(f"audit: ensemble must be 'standard', 'quick', a dict or an EnsembleSpec; got "
                        f"{type(ensemble).__name__}.")
    if builtin and data is None:
        limit = 200 if limit is None else limit
    if builtin:
        for key, value in BUILTIN_SETTINGS.items():
            settings.setdefault(key, value)

    def text(obj: Any) -> str | None:
        if obj is None or isinstance(obj, str):
            return obj
        return str(obj) if isinstance(obj, Path) else f"<{type(obj).__name__} object>"

    norm = normalize
    if norm is not None and not isinstance(norm, str):
        norm = ";".join(",".join(str(v) for v in (part if isinstance(part, list | tuple) else [part])) for part in norm)
    fields: dict[str, Any] = {
        "name": name, "seed": seed, "model": text(model), "weights": None if weights is None else str(weights),
        "model_kwargs": dict(model_kwargs or {}), "normalize": norm, "as_logits": as_logits,
        "num_classes": num_classes, "input_shape": None if input_shape is None else list(input_shape),
        "data": text(data), "split": split, "limit": limit, "resize": resize, "channels": channels,
        "batch_size": batch_size, "linf_eps": linf_eps, "l2_eps": l2_eps, "ensemble": config_to_dict(spec),
        **settings,
    }
    cfg = config_from_dict(AuditConfig, fields, where="audit")
    _check(cfg)
    ctx = Context(data_dir=None if data_dir is None else Path(data_dir),
                  cache_dir=None if cache_dir is None else Path(cache_dir), progress=progress, device=device)
    loaded, source = _load(cfg, ctx, model_obj=None if isinstance(model, str) else model,
                           data_obj=None if isinstance(data, str) else data)
    cfg = replace(cfg, model_digest=weights_digest(loaded.model), data_digest=source.fingerprint)
    _check_resume(cfg, Path(out), resume)
    actx = AuditContext(data_dir=ctx.data_dir, cache_dir=ctx.cache_dir, progress=progress, device=device,
                        loaded=loaded, source=source)
    run = run_experiment(cfg, out, resume=resume, context=actx)
    world = distributed.world()
    if not world.is_main:
        # torchrun: this rank's cells are stored; rank 0 renders the report and writes the summary
        return {"run_dir": str(run.dir), "rank": world.rank, "world_size": world.size,
                "headline": f"rank {world.rank} of {world.size}: its cells are stored; rank 0 writes the report"}
    summary = json.loads((run.dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    summary["run_dir"] = str(run.dir)
    return summary


def _check_resume(cfg: AuditConfig, out: Path, resume: bool | str | Path) -> None:
    """Refuse, with the digests, to resume a run of another model or other data."""
    from .runner import find_latest_run

    if resume is False:
        return
    run_dir = find_latest_run(out, cfg.name) if resume is True else Path(resume)
    if run_dir is None or not (run_dir / "config.json").is_file():
        return
    old = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("config", {})
    for what, key in (("model", "model_digest"), ("data", "data_digest")):
        if old.get(key) and old.get(key) != getattr(cfg, key):
            raise ValueError(
                f"audit: cannot resume {run_dir}: it audited a {what} with digest {str(old[key])[:16]}..., and this "
                f"{what}'s digest is {getattr(cfg, key)[:16]}.... Resume with the same {what}, or start a new run "
                "(--no-resume).")
