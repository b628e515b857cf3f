"""Hendrycks & Gimpel 2017, §3 on MNIST with ``hg_mlp``: their three detectors and their two
detector-aware attacks (``configs/hendrycks-gimpel-detection.toml``,
``configs/hendrycks-gimpel-adaptive.toml``).

Protocol of ``hg_detection`` (the paper's, §3.1; also in docs/RESULTS.md):

- Sources: ``n_samples`` correctly classified test images (seeded draw), attacked by the
  fast attack (one targeted sign step, 10/255), the iterative attack (raw-gradient
  descent, 1/255 steps, λ = 1e-3, stop at p_target > 0.5, ≤ 1000 steps) and the
  iterative attack with λ = 1 (§3.4, for the reconstruction detector), one random
  wrong-class target per image (the same targets for both iterative runs).
- Positives: the adversarial images kept by the paper's rule (p_target > 0.5);
  negatives: their clean sources (each adversarial paired with its source, as in the
  authors' notebook). AUROC and AUPR as ``sklearn.metrics`` defines them
  (``roc_auc_score``, ``average_precision_score``; computed by
  :func:`fisherscope.evaluation.detection_metrics`), adversarial = positive, plus a
  paired bootstrap 95% interval of the AUROC (pairs resampled).
- Everything fitted is fitted on training images only: the PCA whitening on all
  training images, the clean reference statistics (mean, standard deviation) and every
  detector's threshold (at ``target_fpr``) on ``n_fit`` correctly classified training
  images; the test images are only scored. TPR at that threshold is reported beside
  the false-positive rate it actually gives on the clean test sources.
- Scores: the variance of the trailing whitened coefficients (from index 700 on MNIST)
  for each regulariser ``eps`` in ``whitening_eps``; −max softmax probability and
  −KL(softmax ‖ uniform); the signed mean of x − reconstruction(x) (the paper's) and
  the mean squared error.

``hg_adaptive`` runs :class:`~fisherscope.attacks.detector_aware.BarrierHGTargeted`
(log barriers keeping the whitened-coefficient variance, or the KL statistic, inside a
band around its clean mean) and reports how often it can create an adversarial image
that is both kept (p_target > 0.5) and inside the band, and at what distance.

Both kinds have the kit's shape: their cells (named and keyed by :func:`_detection_cells`
/ :func:`_adaptive_cells` from the config alone) compute everything, the figures' arrays
included (the ``figures`` cell of ``hg_detection``: whitened images and coefficients,
reconstructions); the reports draw from the stored cells only. The paired metrics are
:func:`fisherscope.evaluation.detection_metrics` (:func:`paired_detection_metrics`).
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from ..attacks import HGFast, HGTargeted
from ..attacks.base import perturbation_norms
from ..attacks.detector_aware import BarrierHGTargeted, ImageScore, SoftmaxKL
from ..detectors import PCAWhiteningDetector, ReconstructionDetector, SoftmaxDetector
from ..evaluation import detection_metrics
from ..features import fit_pca_whitening, pixels, reconstruction_error, softmax_stats
from ..plotting import image_grid
from .base import Context, register
from .common import correct_draw, load_split
from .hendrycks_kit import (
    HGConfig,
    data_spec,
    fast_spec,
    hg_sources,
    iterative_spec,
    model_cell,
    record_model,
    run_attack,
)
from .report import Block, Figure, Heading, Paragraph, Table, fmt_number, pct, save_figure
from .runner import Artifact, Results, Run

__all__ = ["HGAdaptiveConfig", "HGDetectionConfig", "paired_detection_metrics"]

_ATTACK_LABELS = {
    "fast": "fast sign step",
    "iterative": "iterative, λ = {l2_reg:g}",
    "iterative_recon": "iterative, λ = {recon_l2_reg:g}",
}


# ----------------------------------------------------------------------------- shared


def _fit_images(cfg: Any, ctx: Context, model: torch.nn.Module) -> tuple[Any, torch.Tensor]:
    """The training split and ``n_fit`` correctly classified training images (seeded draw)."""
    train = load_split(cfg.dataset, "train", ctx)
    idx, _ = correct_draw(model, train, cfg.n_fit, cfg.seed + 1)
    return train, train.x[idx]


def _eps_key(eps: float) -> str:
    return f"whitening@{eps:g}"


def _norms(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, list[float]]:
    n = perturbation_norms((x_adv - x).double())
    return {k: n[k].tolist() for k in ("l1", "l2", "linf")}


def _mean_over(values: Any, mask: np.ndarray) -> float:
    v = np.asarray(values, dtype=float)
    return float(v[mask].mean()) if mask.any() else math.nan


def paired_detection_metrics(clean: np.ndarray, adv: np.ndarray, *, threshold: float | None = None,
                             n_bootstrap: int = 0, seed: int = 0) -> dict[str, Any]:
    """The paper's protocol on paired scores (higher = more adversarial), as one flat dict.

    :func:`fisherscope.evaluation.detection_metrics` with the adversarial scores as
    positives and the clean scores as negatives: AUROC and AUPR (equal to
    ``roc_auc_score`` / ``average_precision_score``); with ``threshold``, the TPR on the
    adversarial and the FPR on the clean scores (scores strictly above it); with
    ``n_bootstrap`` > 0 and at least two pairs, a percentile 95% interval of the AUROC from
    resampling the pairs (clean_i, adv_i) with replacement (each pair is one group).

    Shapes
    ------
    clean, adv: (n,) (the same n: clean_i is adv_i's source) -> dict of floats
    (``n``, ``auroc``, ``aupr``, ``auroc_lo``, ``auroc_hi``, ``tpr``, ``fpr``; NaN where
    undefined).
    """
    clean, adv = np.asarray(clean, dtype=float), np.asarray(adv, dtype=float)
    if clean.shape != adv.shape or clean.ndim != 1:
        raise ValueError(f"clean and adv must be paired 1-D arrays; got shapes {clean.shape} and {adv.shape}.")
    n = clean.size
    pairs = np.arange(n)
    m = detection_metrics(clean, adv, math.inf if threshold is None else threshold, neg_groups=pairs,
                          pos_groups=pairs, n_bootstrap=n_bootstrap if n > 1 else 0, seed=seed)
    lo, hi = m.ci["auroc"]
    out: dict[str, Any] = {"n": int(n), "auroc": m.auroc, "aupr": m.aupr, "auroc_lo": lo, "auroc_hi": hi,
                           "tpr": m.tpr if threshold is not None else math.nan,
                           "fpr": m.fpr if threshold is not None else math.nan}
    return out


def _model_blurb(cfg: Any, facts: dict[str, Any], n_fit: int, n_train: int) -> Paragraph:
    n, n_correct = facts["n"], facts["n_correct"]
    return Paragraph(
        f"Model `{cfg.arch}` on `{cfg.dataset}` (test accuracy {fmt_number(pct(facts['test_accuracy']))}%, checkpoint "
        f"`{facts['checkpoint_key'][:12]}`). Sources: {n} of the {n_correct} correctly classified test images (seeded draw, "
        f"seed {cfg.seed}), one random wrong-class target each. Fitted on training images only: the whitening on "
        f"all {n_train}, clean reference statistics and thresholds on {n_fit} correctly classified ones."
    )


def _sym_rows(rows: dict[str, np.ndarray], ranges: dict[str, float], side: int, titles: dict[str, list[str]],
              cell: float = 1.25) -> Any:
    """Rows of images on a symmetric diverging scale [−R, R] per row (R stated in the row label)."""
    import matplotlib.pyplot as plt

    names = list(rows)
    n = rows[names[0]].shape[0]
    fig, axes = plt.subplots(len(names), n, figsize=(cell * n + 1.6, cell * len(names) + 0.5), squeeze=False)
    for r, name in enumerate(names):
        arr = rows[name]
        rng = ranges.get(name)
        im: Any = None
        for i in range(n):
            ax = axes[r, i]
            img = arr[i].reshape(side, side)
            if rng is None:
                im = ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                im = ax.imshow(img, cmap="RdBu_r", vmin=-rng, vmax=rng, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name, fontsize=6)
            ax.set_xlabel(titles[name][i], fontsize=6, labelpad=1)
        fig.colorbar(im, ax=list(axes[r]), fraction=0.015, pad=0.01)
    return fig


# ----------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class _HGDetectorConfig(HGConfig):
    """What the detection and the detector-aware configs share: the jointly trained MLP."""

    arch: str = "hg_mlp"
    epochs: int | None = None  # override of the preset's epochs (quick runs and tests only)
    n_fit: int | None = 10000  # correctly classified training images for thresholds / clean statistics
    whitening_start: int | None = None  # None: the paper's cut-off (700 on MNIST)


@dataclass(frozen=True)
class HGDetectionConfig(_HGDetectorConfig):
    """Config of the Hendrycks & Gimpel detection reproduction (kind ``hg_detection``)."""

    recon_l2_reg: float = 1.0
    fast_eps: float = 10 / 255
    whitening_eps: tuple[float, ...] = (1e-11, 1e-8, 1e-5, 1e-2)
    paper_eps: float = 1e-11
    target_fpr: float = 0.05
    n_bootstrap: int = 300
    n_examples: int = 6
    n_protocol: int = 0  # > 0: also run fisherscope.evaluation.evaluate_detectors on this many test images
    paper: dict[str, Any] = field(default_factory=dict)


def _detection_attacks(cfg: HGDetectionConfig) -> dict[str, Any]:
    it: dict[str, Any] = dict(step_size=cfg.step_size, threshold=cfg.threshold, max_steps=cfg.max_steps)
    return {
        "fast": HGFast(eps=cfg.fast_eps, threshold=cfg.threshold),
        "iterative": HGTargeted(l2_reg=cfg.l2_reg, **it),
        "iterative_recon": HGTargeted(l2_reg=cfg.recon_l2_reg, **it),
    }


def _detectors(cfg: HGDetectionConfig, pca: Any) -> dict[str, Any]:
    dets: dict[str, Any] = {}
    for eps in cfg.whitening_eps:
        dets[_eps_key(eps)] = PCAWhiteningDetector(start=cfg.whitening_start, eps=eps,
                                                   whitening=dataclasses.replace(pca, eps=eps),
                                                   target_fpr=cfg.target_fpr)
    dets["max_prob"] = SoftmaxDetector(statistic="max_prob", target_fpr=cfg.target_fpr)
    dets["kl_uniform"] = SoftmaxDetector(statistic="kl_uniform", target_fpr=cfg.target_fpr)
    dets["recon_signed"] = ReconstructionDetector(kind="signed_mean", target_fpr=cfg.target_fpr)
    dets["recon_squared"] = ReconstructionDetector(kind="squared", target_fpr=cfg.target_fpr)
    return dets


def _features(model: torch.nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    return {"pixels": pixels(x), "softmax_stats": softmax_stats(model, x),
            "reconstruction_error": reconstruction_error(model, x, kind="all")}


def _decisions(dets: dict[str, Any], feats: dict[str, np.ndarray]) -> dict[str, list[float]]:
    return {name: det.decision_function(feats[det.feature]).tolist() for name, det in dets.items()}


_DET_LABELS = {
    "max_prob": "softmax: −max probability",
    "kl_uniform": "softmax: −KL(p ‖ uniform)",
    "recon_signed": "reconstruction: mean(x − r(x)) (paper)",
    "recon_squared": "reconstruction: mean (x − r(x))²",
}


def _det_label(name: str) -> str:
    if name.startswith("whitening@"):
        return f"PCA whitening var, eps = {name.split('@')[1]}"
    return _DET_LABELS[name]


def _detector_names(cfg: HGDetectionConfig) -> list[str]:
    """The scores of ``hg_detection`` in table order (the keys :func:`_detectors` builds)."""
    return [*(_eps_key(eps) for eps in cfg.whitening_eps), "max_prob", "kl_uniform", "recon_signed", "recon_squared"]


def _detection_attack_specs(cfg: HGDetectionConfig) -> dict[str, dict[str, Any]]:
    """The settings that decide each attack's numbers (the same as :func:`_detection_attacks`)."""
    return {"fast": fast_spec(cfg), "iterative": iterative_spec(cfg),
            "iterative_recon": iterative_spec(cfg, l2_reg=cfg.recon_l2_reg)}


def _detection_cells(cfg: HGDetectionConfig) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every cell of ``hg_detection`` (name, spec) by role, from the config alone."""
    fit = {**data_spec(cfg), "n_fit": cfg.n_fit, "paper_eps": cfg.paper_eps,
           "whitening_eps": list(cfg.whitening_eps), "whitening_start": cfg.whitening_start,
           "target_fpr": cfg.target_fpr}
    attacks = _detection_attack_specs(cfg)
    cells = {"setup": ("setup", fit), "clean": ("clean", fit)}
    for name, atk in attacks.items():
        cells[f"attack/{name}"] = (f"attack/{name}", {**fit, "batch_size": cfg.batch_size,
                                                       "n_examples": cfg.n_examples, **atk})
    every = {**fit, "batch_size": cfg.batch_size, "attacks": attacks}
    cells["metrics"] = ("metrics", {**every, "n_bootstrap": cfg.n_bootstrap})
    cells["protocol"] = ("protocol", {**every, "n_bootstrap": cfg.n_bootstrap, "n_protocol": cfg.n_protocol})
    cells["figures"] = ("figures", {**every, "n_examples": cfg.n_examples})
    return cells


def _figure_eps(cfg: HGDetectionConfig) -> tuple[list[float], list[float]]:
    """The regularisers Figure 2 (ZCA images) and Figure 3 (coefficients) show."""
    eps_show = sorted({cfg.paper_eps, max(cfg.whitening_eps)})
    eps_coef = sorted({cfg.paper_eps, sorted(cfg.whitening_eps)[len(cfg.whitening_eps) // 2]})
    return eps_show, eps_coef


def hg_detection_cells(run: Run, cfg: HGDetectionConfig, ctx: Context) -> None:
    """Fit on training images, score the clean and attacked sources, and store the metrics,
    the general protocol's records and the arrays the figures draw."""
    trained, x, y, test, n_correct = hg_sources(cfg, ctx)
    record_model(run, cfg, trained, test, len(y), n_correct)
    model = trained.model.eval()
    train, fit_x = _fit_images(cfg, ctx, model)
    pca = fit_pca_whitening(train.x, eps=cfg.paper_eps)
    dets = _detectors(cfg, pca)
    fit_feats = _features(model, fit_x)
    for det in dets.values():
        det.fit(fit_feats[det.feature])
    start = dets[_eps_key(cfg.whitening_eps[0])].start_
    cells = _detection_cells(cfg)

    def setup() -> dict[str, Any]:
        lam = pca.eigenvalues
        out: dict[str, Any] = {"test_accuracy": trained.metrics["test_accuracy"], "n_correct": n_correct,
                               "n_fit": int(fit_x.shape[0]), "n_train": int(train.x.shape[0]),
                               "rank": pca.rank, "start": start, "n_features": pca.n_features,
                               "eig_start": float(lam[start]), "eig_last_nonzero": float(lam[pca.rank - 1]),
                               "eig_max": float(lam[0])}
        for name, det in dets.items():
            d = np.asarray(det.decision_function(fit_feats[det.feature]))
            out[f"fit/{name}"] = {"threshold": float(det.threshold_), "mean": float(d.mean()), "std": float(d.std()),
                                  "median": float(np.median(d)), "q99": float(np.quantile(d, 0.99))}
        return out

    info = run.cell(cells["setup"][0], setup, spec=cells["setup"][1])
    clean = run.cell(cells["clean"][0], lambda: {"y": y.tolist(), **_decisions(dets, _features(model, x))},
                     spec=cells["clean"][1])
    attacks = _detection_attacks(cfg)
    ne = min(cfg.n_examples, len(y))

    def measure(name: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        o = run_attack(attacks[name], model, x, y, cfg.seed, cfg.batch_size)
        seconds = time.perf_counter() - t0
        out: dict[str, Any] = {"success": o["success"].tolist(), "target": o["target"].tolist(),
                               "p_target": o["p_target"].tolist(), "pred": o["pred"].tolist(),
                               **_norms(x, o["x_adv"]), "seconds": seconds,
                               "examples_x_adv": o["x_adv"][:ne].flatten(1).tolist()}
        if "steps" in o:
            out["steps"] = o["steps"].tolist()
        out.update({f"score/{k}": v for k, v in _decisions(dets, _features(model, o["x_adv"])).items()})
        return out

    res = {}
    for name in attacks:
        cell, spec = cells[f"attack/{name}"]
        res[name] = run.cell(cell, partial(measure, name), spec=spec)
    run.cell(cells["metrics"][0], lambda: _metrics(cfg, info, clean, res), spec=cells["metrics"][1])
    if cfg.n_protocol:
        run.cell(cells["protocol"][0], lambda: _protocol(cfg, model, test, attacks, dets), spec=cells["protocol"][1])
    run.cell(cells["figures"][0], lambda: _figure_arrays(cfg, model, pca, x, res, ne), spec=cells["figures"][1])


def _metrics(cfg: HGDetectionConfig, info: Mapping[str, Any], clean: Mapping[str, Any],
             res: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The paper's paired metrics of every score against every attack, and §3.2's σ counts."""
    out: dict[str, Any] = {}
    for a, r in res.items():
        kept = np.asarray(r["success"], dtype=bool)
        for d in _detector_names(cfg):
            c, v = np.asarray(clean[d]), np.asarray(r[f"score/{d}"])
            thr = info[f"fit/{d}"]["threshold"]
            out[f"{a}/{d}"] = paired_detection_metrics(c[kept], v[kept], threshold=thr,
                                                       n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
            out[f"{a}/{d}/all"] = paired_detection_metrics(c, v, threshold=thr)
    # §3.2: how many standard deviations of the clean mean the whitened variance lies
    for eps in cfg.whitening_eps:
        d = _eps_key(eps)
        refs = {"train": (info[f"fit/{d}"]["mean"], info[f"fit/{d}"]["std"]),
                "test": (float(np.mean(clean[d])), float(np.std(clean[d])))}
        for a, r in res.items():
            v = np.asarray(r[f"score/{d}"])
            kept = np.asarray(r["success"], dtype=bool)
            for ref, (mu, sd) in refs.items():
                z = (v - mu) / sd
                out[f"sigmas/{a}/{d}/{ref}"] = {
                    "mu": mu, "sd": sd, "n_kept": int(kept.sum()), "n_all": int(v.size),
                    "beyond10_kept": _mean_over(z > 10, kept), "beyond1e10_kept": _mean_over(z > 1e10, kept),
                    "beyond10_all": float((z > 10).mean()), "beyond1e10_all": float((z > 1e10).mean()),
                    "median_z_all": float(np.median(z)), "max_z_all": float(z.max()),
                    "min_z_kept": float(z[kept].min()) if kept.any() else math.nan,
                }
    return out


def hg_detection_report(cfg: HGDetectionConfig, results: Results) -> list[Block]:
    """Tables and figures of ``hg_detection`` from the stored cells alone."""
    cells = _detection_cells(cfg)
    facts = results.cell(*model_cell(cfg))
    info = results.cell(*cells["setup"])
    clean = results.cell(*cells["clean"])
    res = {a: results.cell(*cells[f"attack/{a}"]) for a in _detection_attack_specs(cfg)}
    m = results.cell(*cells["metrics"])
    proto = results.cell(*cells["protocol"]) if cfg.n_protocol else None
    figures = _detection_figures(results, cfg, results.cell(*cells["figures"]), res, clean, info)
    return _detection_blocks(cfg, facts, info, res, m, figures, proto)


register("hg_detection", HGDetectionConfig,
         "Hendrycks & Gimpel §3: PCA-whitening, softmax and reconstruction detectors on MNIST (hg_mlp).",
         report=hg_detection_report)(hg_detection_cells)


def _protocol(cfg: HGDetectionConfig, model: torch.nn.Module, test: Any, attacks: dict[str, Any],
              dets: dict[str, Any]) -> dict[str, Any]:
    """The same detectors through the library's general protocol (disjoint fit / calibrate / test splits).

    The attacks run here on ``n_protocol`` random test images; an image whose attack fails the
    paper's keep rule is handed over unchanged, so the protocol's positives (misclassified
    adversarials of correctly classified images) are exactly the kept adversarials.
    """
    from sklearn.base import clone

    from ..evaluation import DetectorSpec, Feature, evaluate_detectors

    g = torch.Generator().manual_seed(cfg.seed + 2)
    idx = torch.randperm(len(test), generator=g)[: cfg.n_protocol].sort().values
    xp, yp = test.x[idx], test.y[idx]
    advs = {}
    for name, atk in attacks.items():
        o = run_attack(atk, model, xp, yp, cfg.seed, cfg.batch_size)
        advs[name] = torch.where(o["success"].reshape(-1, *([1] * (xp.ndim - 1))), o["x_adv"], xp)
    specs: dict[str, Any] = {}
    for name, det in dets.items():
        fresh = clone(det)
        if name == "recon_squared":
            specs[name] = DetectorSpec(fresh, Feature("reconstruction_error", kwargs={"kind": "all"}))
        else:
            specs[name] = fresh
    result = evaluate_detectors(model, xp, yp, advs, specs, target_fpr=cfg.target_fpr,
                                n_bootstrap=cfg.n_bootstrap, seed=cfg.seed, cross_attack=False,
                                batch_size=cfg.batch_size)
    return {"n_images": int(len(yp)), "records": result.to_records()}


def _figure_arrays(cfg: HGDetectionConfig, model: Any, pca: Any, x: torch.Tensor,
                   res: Mapping[str, Mapping[str, Any]], ne: int) -> dict[str, Any]:
    """What Figures 2-4 draw, computed once: the first ``ne`` sources and their stored
    adversarials whitened (ZCA, and the whitened coefficients of the first three), and the
    reconstructions of the clean and the λ = ``recon_l2_reg`` adversarial images."""
    xe = x[:ne]
    adv = {a: torch.tensor(r["examples_x_adv"], dtype=x.dtype).reshape(xe.shape) for a, r in res.items()}
    out: dict[str, Any] = {"x": Artifact(xe), "side": int(round(math.sqrt(pca.n_features / x.shape[1])))}
    eps_show, eps_coef = _figure_eps(cfg)
    ref_rows = pixels(x[: min(len(x), 200)])
    for eps in eps_show:  # Figure 2: one fixed symmetric range per eps (99th percentile of |ZCA| of clean images)
        w = dataclasses.replace(pca, eps=eps)
        out[f"zca/{eps!r}/range"] = float(np.quantile(np.abs(w.zca(ref_rows)), 0.99))
        out[f"zca/{eps!r}/clean"] = Artifact(w.zca(xe))
        out[f"zca/{eps!r}/adv"] = Artifact(w.zca(adv["iterative"]))
    n_show = min(3, ne)
    for eps in eps_coef:  # Figure 3: whitened coefficients by index
        w = dataclasses.replace(pca, eps=eps)
        for tag, imgs in (("clean", xe), ("iterative", adv["iterative"]), ("fast", adv["fast"])):
            out[f"coef/{eps!r}/{tag}"] = Artifact(w.transform(imgs)[:n_show])
    xr = adv["iterative_recon"]  # Figure 4
    with torch.no_grad():
        out["recon/clean"], out["recon/adv"] = Artifact(model.reconstruct(xe)), Artifact(model.reconstruct(xr))
    out["recon/clean_signed"] = reconstruction_error(model, xe, kind="signed_mean")[:, 0].tolist()
    out["recon/adv_signed"] = reconstruction_error(model, xr, kind="signed_mean")[:, 0].tolist()
    return out


def _detection_figures(results: Results, cfg: HGDetectionConfig, arr: dict[str, Any], res: dict[str, Any],
                       clean: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc, roc_curve

    paths: dict[str, Any] = {}
    xe = np.asarray(arr["x"])
    ne, side = xe.shape[0], arr["side"]
    adv = {a: np.asarray(r["examples_x_adv"], dtype=xe.dtype).reshape(xe.shape) for a, r in res.items()}
    start, rank = info["start"], info["rank"]
    eps_show, eps_coef = _figure_eps(cfg)

    # Figure 2: ZCA-whitened clean and adversarial images, one fixed symmetric range per eps
    rows: dict[str, np.ndarray] = {"clean x": pixels(xe), "iterative x_adv": pixels(adv["iterative"])}
    ranges: dict[str, float] = {}
    titles: dict[str, list[str]] = {"clean x": ["" for _ in range(ne)],
                                    "iterative x_adv": [f"p_t {p:.2f}" for p in res["iterative"]["p_target"][:ne]]}
    for eps in eps_show:
        r_ = arr[f"zca/{eps!r}/range"]
        for tag in ("clean", "adv"):
            z = np.asarray(arr[f"zca/{eps!r}/{tag}"])
            key = f"ZCA {tag}, eps {eps:g}\n±{r_:.3g}"
            rows[key], ranges[key] = z, r_
            titles[key] = [f"max |·| {a:.2g}" for a in np.abs(z).max(1)]
    fig = _sym_rows(rows, ranges, side, titles)
    fig.suptitle(textwrap.fill(
        "ZCA whitening U diag(1/sqrt(λ+eps)) Uᵀ(x − mean) of clean and iterative adversarial images. Images: fixed "
        "[0, 1] gray; ZCA rows: one fixed symmetric range ±R per eps (row label: the 99th percentile of |ZCA| over "
        "200 clean test images), values beyond ±R saturate. Under each map: its largest |value|.", 110), fontsize=7)
    paths["zca"] = save_figure(fig, results.figures_dir / "hg_zca.png")

    # Figure 3: whitened coefficients by index
    n_show = min(3, ne)
    fig, axes = plt.subplots(len(eps_coef), n_show, figsize=(4.2 * n_show, 3.0 * len(eps_coef)), squeeze=False)
    for r, eps in enumerate(eps_coef):
        cc, ca, cf = (np.asarray(arr[f"coef/{eps!r}/{tag}"]) for tag in ("clean", "iterative", "fast"))
        for i in range(n_show):
            ax = axes[r, i]
            idx = np.arange(cc.shape[1])
            ax.plot(idx, np.abs(cc[i]), ".", ms=1.5, color="C0", label="clean")
            ax.plot(idx, np.abs(ca[i]), ".", ms=1.5, color="C3", label="iterative")
            ax.plot(idx, np.abs(cf[i]), "x", ms=1.5, color="C1", alpha=0.7, label="fast sign step")
            ax.set_yscale("log")
            ax.set_ylim(1e-3, None)
            ax.axvline(start, color="k", lw=0.8, ls="--")
            ax.axvline(rank, color="grey", lw=0.8, ls=":")
            ax.set_title(f"test image {i}, eps = {eps:g}", fontsize=8)
            ax.set_xlabel("principal component index (largest eigenvalue first)", fontsize=7)
            if i == 0:
                ax.set_ylabel("|whitened coefficient|", fontsize=7)
            ax.grid(alpha=0.3)
        axes[r, 0].legend(fontsize=6, markerscale=5, loc="upper left")
    fig.suptitle(f"|(x − mean) U / sqrt(λ + eps)| by index; dashed: start of the detector's window ({start}); "
                 f"dotted: covariance rank ({rank}). Values below 1e-3 (clean images: round-off in the covariance's "
                 "null space, ~1e-8 and less) are off the scale.", fontsize=8)
    fig.tight_layout()
    paths["coefficients"] = save_figure(fig, results.figures_dir / "hg_coefficients.png")

    # Figure 4: reconstructions of clean and λ = recon_l2_reg adversarial images
    xr = adv["iterative_recon"]
    rc, ra = np.asarray(arr["recon/clean"]), np.asarray(arr["recon/adv"])
    sc, sa = arr["recon/clean_signed"], arr["recon/adv_signed"]
    kept = res["iterative_recon"]["success"][:ne]
    tt = ([f"clean {i}" for i in range(ne)] + [f"mean(x−r) {v:+.3f}" for v in sc]
          + [f"p_t {p:.2f}{'' if k else ' (not kept)'}" for p, k in zip(res["iterative_recon"]["p_target"][:ne], kept,
                                                                     strict=True)]
          + [f"mean(x−r) {v:+.3f}" for v in sa])
    fig = image_grid(torch.as_tensor(np.concatenate([xe, rc, xr, ra])), tt, ncols=ne,
                     suptitle=f"Rows: clean; its reconstruction; iterative adversarial (λ = {cfg.recon_l2_reg:g}); its "
                              "reconstruction. Fixed [0, 1] range, no rescaling.")
    paths["reconstructions"] = save_figure(fig, results.figures_dir / "hg_reconstructions.png")

    # score histograms of the whitening variance for each eps
    fig, axes = plt.subplots(1, len(cfg.whitening_eps), figsize=(3.6 * len(cfg.whitening_eps), 3.0), squeeze=False)
    for ax, eps in zip(axes[0], cfg.whitening_eps, strict=True):
        d = _eps_key(eps)
        series = {"clean test": np.asarray(clean[d])}
        for a in ("iterative", "fast"):
            series[a] = np.asarray(res[a][f"score/{d}"])
        lo = min(float(np.log10(np.maximum(s, 1e-300)).min()) for s in series.values())
        hi = max(float(np.log10(np.maximum(s, 1e-300)).max()) for s in series.values())
        bins = np.linspace(lo, hi, 50)
        for (lbl, s), col in zip(series.items(), ("C0", "C3", "C1"), strict=True):
            ax.hist(np.log10(np.maximum(s, 1e-300)), bins=bins, alpha=0.55, color=col, label=lbl)
        ax.axvline(math.log10(info[f"fit/{d}"]["threshold"]), color="k", ls="--", lw=0.8,
                   label=f"threshold ({100 * cfg.target_fpr:g}% FPR, train)")
        ax.set_title(f"eps = {eps:g}", fontsize=9)
        ax.set_xlabel(f"log10 var(whitened coefficients [{start}:])", fontsize=7)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("count (all attacked images)")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    paths["scores"] = save_figure(fig, results.figures_dir / "hg_whitening_scores.png")

    # ROC curves of every detector against the two iterative attacks (kept pairs)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, a in zip(axes, ("iterative", "iterative_recon"), strict=True):
        kept = np.asarray(res[a]["success"], dtype=bool)
        for d in _detector_names(cfg):
            c, v = np.asarray(clean[d])[kept], np.asarray(res[a][f"score/{d}"])[kept]
            if not kept.any():
                continue
            fpr, tpr, _ = roc_curve(np.r_[np.zeros(c.size), np.ones(v.size)], np.r_[c, v])
            ax.plot(fpr, tpr, lw=1.2, label=f"{_det_label(d)} ({auc(fpr, tpr):.3f})")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_title(_ATTACK_LABELS[a].format(**dataclasses.asdict(cfg)) + f", {int(kept.sum())} kept", fontsize=9)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=6, loc="lower right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths["roc"] = save_figure(fig, results.figures_dir / "hg_roc.png")
    return paths


def _pct(v: float | None) -> str:
    """``100 v`` as report tables show percentages; "–" for a metric the protocol could not define
    (stored as None, e.g. an AUROC without test positives: no kept adversarial in the split)."""
    return fmt_number(pct(v))


def _protocol_blocks(cfg: HGDetectionConfig, proto: dict[str, Any], labels: dict[str, str]) -> list[Block]:
    rows_by: dict[str, dict[str, Any]] = {}
    for r in proto["records"]:
        if r.get("kind") == "table":
            rows_by.setdefault(r["detector"], {})[r["attack"]] = r
    attacks = list(labels)
    rows = []
    for det, per in rows_by.items():
        row: list[Any] = [_det_label(det)]
        for a in attacks:
            r = per.get(a, {})
            if r.get("error") or not r:
                row.append("error" if r.get("error") else "–")
                continue
            row.append(f"{_pct(r['auroc'])} [{_pct(r['auroc_lo'])}, {_pct(r['auroc_hi'])}]; "
                       f"TPR {_pct(r['tpr'])} (FPR {_pct(r['fpr'])}); {r['n_pos']}/{r['n_neg']}")
        rows.append(row)
    return [
        Table(["score", *[f"{labels[a]}: AUROC [CI]; TPR (test FPR); test positives/negatives" for a in attacks]],
              rows, caption=(
                  f"The same scores through fisherscope.evaluation.evaluate_detectors on {proto['n_images']} random "
                  "test images: disjoint fit / calibrate / test splits by source image (50/25/25), threshold at "
                  f"{100 * cfg.target_fpr:g}% FPR on the calibration split, numbers on the test split, bootstrap "
                  "intervals over test images; positives = the kept adversarials (an image whose attack failed the "
                  "keep rule is passed unchanged), negatives = the correctly classified clean test images.")),
    ]


def _detection_blocks(cfg: HGDetectionConfig, facts: dict[str, Any], info: dict[str, Any], res: dict[str, Any],
                      m: dict[str, Any], figs: dict[str, Any], proto: dict[str, Any] | None = None) -> list[Block]:
    n = facts["n"]
    labels = {a: _ATTACK_LABELS[a].format(**dataclasses.asdict(cfg)) for a in res}
    labels["fast"] = f"fast sign step {cfg.fast_eps * 255:g}/255"
    att_rows = []
    for a, r in res.items():
        kept = np.asarray(r["success"], dtype=bool)
        steps = np.asarray(r.get("steps", [math.nan] * n), dtype=float)
        att_rows.append([labels[a], f"{int(kept.sum())}/{n}", pct(kept.mean()), _mean_over(r["l2"], kept),
                         _mean_over(r["linf"], kept), _mean_over(steps, kept), r["seconds"]])
    paper = cfg.paper
    det_rows = []
    dets = [k for k in m if k.startswith("fast/") and not k.endswith("/all")]
    for key in dets:
        d = key.split("/", 1)[1]
        row: list[Any] = [_det_label(d)]
        for a in res:
            v = m[f"{a}/{d}"]
            row += [pct(v["auroc"]), pct(v["aupr"]), pct(v["tpr"])]
        det_rows.append(row)
    cols = ["score"]
    for a in res:
        cols += [f"{labels[a]}: AUROC", "AUPR", "TPR@thr"]
    ci_rows = []
    for key in dets:
        d = key.split("/", 1)[1]
        row = [_det_label(d)]
        for a in res:
            v = m[f"{a}/{d}"]
            row.append(f"{_pct(v['auroc'])} [{_pct(v['auroc_lo'])}, {_pct(v['auroc_hi'])}], "
                       f"FPR {_pct(v['fpr'])}%")
        row.append(pct(m[f"fast/{d}/all"]["auroc"]))
        ci_rows.append(row)
    eps_rows = []
    for eps in cfg.whitening_eps:
        d = _eps_key(eps)
        fit = info[f"fit/{d}"]
        eps_rows.append([eps, fit["median"], fit["mean"], fit["std"],
                         float(np.median(res["iterative"][f"score/{d}"])),
                         pct(m[f"iterative/{d}"]["auroc"]), pct(m[f"iterative/{d}"]["aupr"]),
                         pct(m[f"fast/{d}"]["auroc"]), pct(m[f"fast/{d}/all"]["auroc"]),
                         pct(m[f"iterative_recon/{d}"]["auroc"])])
    sig_rows = []
    for eps in cfg.whitening_eps:
        d = _eps_key(eps)
        for ref in ("train", "test"):
            s = m[f"sigmas/fast/{d}/{ref}"]
            si = m[f"sigmas/iterative/{d}/{ref}"]
            sig_rows.append([f"{eps:g}", ref, s["mu"], s["sd"], pct(s["beyond10_kept"]), pct(s["beyond1e10_kept"]),
                             s["min_z_kept"], pct(s["beyond10_all"]), pct(s["beyond1e10_all"]), s["median_z_all"],
                             s["max_z_all"], pct(si["beyond10_all"])])
    return [
        Heading(f"Hendrycks & Gimpel §3: detecting adversarial images on {cfg.dataset} (`{cfg.arch}`)"),
        _model_blurb(cfg, facts, info["n_fit"], info["n_train"]),
        Paragraph(
            f"Training covariance: rank {info['rank']} of {info['n_features']}; λ_max {info['eig_max']:.3g}, "
            f"λ at the window start ({info['start']}) {info['eig_start']:.3g}, smallest non-zero "
            f"{info['eig_last_nonzero']:.3g}. {paper.get('note', '')}"
        ),
        Table(["attack", "kept", "kept %", "mean L2 (kept)", "mean L∞ (kept)", "mean steps (kept)", "seconds"],
              att_rows, caption="Attacks (kept = p_target > 0.5)"),
        Table(cols, det_rows, caption=(
            "Detection, the paper's protocol: kept adversarial images (positives) against their clean sources "
            f"(negatives); all numbers in %. TPR at the threshold set at {100 * cfg.target_fpr:g}% FPR on clean "
            "training images.")),
        Table(["score", *[f"{labels[a]}: AUROC [95% CI], test FPR" for a in res], "fast, all attacked images: AUROC"],
              ci_rows, caption="Bootstrap intervals (pairs resampled) and the clean test FPR at the training threshold"),
        Table(["eps", "clean train median", "clean train mean", "clean train std", "iterative median",
               "iterative AUROC", "iterative AUPR", "fast AUROC (kept)", "fast AUROC (all)", "λ=1 AUROC"], eps_rows,
              caption="PCA whitening: the score and its AUROC against the regulariser eps"),
        *(_protocol_blocks(cfg, proto, labels) if proto else []),
        Table(["eps", "clean reference", "μ", "σ", "fast kept > μ+10σ %", "fast kept > μ+1e10σ %",
               "fast kept min (v−μ)/σ", "fast all > μ+10σ %", "fast all > μ+1e10σ %", "fast all median (v−μ)/σ",
               "fast all max (v−μ)/σ", "iterative all > μ+10σ %"],
              sig_rows, caption="§3.2's 'beyond ten standard deviations' claim"),
        Figure(figs["zca"], "Figure 2: ZCA-whitened clean and adversarial images (symmetric colour map, fixed range "
               "per eps stated in the row label; not rescaled per image)."),
        Figure(figs["coefficients"], "Figure 3: whitened coefficients by index for three test images."),
        Figure(figs["reconstructions"], "Figure 4: reconstructions of clean and adversarial images."),
        Figure(figs["scores"], "The whitening score for each eps (log10)."),
        Figure(figs["roc"], "ROC curves of every score against the two iterative attacks."),
    ]


# ----------------------------------------------------------------------------- adaptive


@dataclass(frozen=True)
class HGAdaptiveConfig(_HGDetectorConfig):
    """Config of Hendrycks & Gimpel's detector-aware attacks (kind ``hg_adaptive``)."""

    n_samples: int = 200
    batch_size: int = 200
    max_backtracks: int = 20
    barrier_weight: float = 1.0
    whitening_eps: tuple[float, ...] = (1e-11, 1e-5)
    whitening_radius: float = 1.0
    projected: bool = True  # also run the barrier search with steps projected off the whitened window
    kl_radii: tuple[float, ...] = (1.0, 0.5, 0.25, 8.0, 16.0, 32.0)
    n_trace: int = 8
    trace_steps: int = 200
    paper: dict[str, Any] = field(default_factory=dict)


def _summary(x: torch.Tensor, o: dict[str, torch.Tensor], threshold: float, seconds: float,
             extra: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"success": o["success"].tolist(), "reached": (o["p_target"] > threshold).tolist(),
                           "p_target": o["p_target"].tolist(), "steps": o["steps"].tolist(),
                           "target": o["target"].tolist(),
                           **_norms(x, o["x_adv"]), "seconds": seconds, **extra}
    for k in ("started_inside", "in_band", "statistic"):
        if k in o:
            out[k] = o[k].tolist()
    return out


def _trace(attack: HGTargeted, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, steps: int,
           stats: dict[str, Any]) -> dict[str, Any]:
    """p_target and statistics along ``steps`` iterations of ``attack``'s descent (no early stop)."""
    cur = x.clone()
    rec: dict[str, list[list[float]]] = {"p_target": [], **{k: [] for k in stats}}
    for _ in range(steps + 1):
        logits, grad = attack.objective_gradient(model, cur, x, target)
        rec["p_target"].append(torch.softmax(logits.double(), 1).gather(1, target[:, None]).squeeze(1).tolist())
        for k, s in stats.items():
            rec[k].append(s(cur, logits).tolist())
        cur = attack.descend(model, cur, grad)
    return rec


def _adaptive_cells(cfg: HGAdaptiveConfig) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every cell of ``hg_adaptive`` (name, spec) by role, from the config alone; the
    attacks' roles are the row keys of the report (``unconstrained``, ``whitening/...``,
    ``kl/...``)."""
    fit = {**data_spec(cfg), "n_fit": cfg.n_fit, "whitening_eps": list(cfg.whitening_eps),
           "whitening_start": cfg.whitening_start}
    it = iterative_spec(cfg)
    bar = {**it, "attack": "barrier_hg_targeted", "max_backtracks": cfg.max_backtracks,
           "barrier_weight": cfg.barrier_weight}
    cells = {"reference": ("reference", fit),
             "unconstrained": ("attack/unconstrained", {**fit, "batch_size": cfg.batch_size, **it})}
    for eps in cfg.whitening_eps:
        for src in ("train", "test"):
            key = f"whitening/{eps:g}/{src}"
            band = {"statistic": "whitening", "eps": eps, "band": src, "radius": cfg.whitening_radius}
            cells[key] = (f"attack/{key}", {**fit, "batch_size": cfg.batch_size, **bar, **band, "projected": False})
            if cfg.projected:
                cells[f"{key}/projected"] = (f"attack/{key}/projected",
                                             {**fit, "batch_size": cfg.batch_size, **bar, **band, "projected": True})
    for r in cfg.kl_radii:
        cells[f"kl/{r:g}"] = (f"attack/kl/{r:g}", {**fit, "batch_size": cfg.batch_size, **bar, "statistic": "kl",
                                                   "band": "train", "radius": r})
    cells["trace"] = ("trace", {**cells["unconstrained"][1], "n_trace": cfg.n_trace, "trace_steps": cfg.trace_steps})
    return cells


def hg_adaptive_cells(run: Run, cfg: HGAdaptiveConfig, ctx: Context) -> None:
    """The clean reference statistics, the unconstrained and every barrier search, and the
    statistics along the unconstrained path."""
    trained, x, y, test, n_correct = hg_sources(cfg, ctx)
    record_model(run, cfg, trained, test, len(y), n_correct)
    model = trained.model.eval()
    train, fit_x = _fit_images(cfg, ctx, model)
    pca = fit_pca_whitening(train.x, eps=cfg.whitening_eps[0])
    fit_pixels = pixels(fit_x)
    scores = {}  # the detector's score as a torch function, from a fitted detector per eps
    for eps in cfg.whitening_eps:
        det = PCAWhiteningDetector(start=cfg.whitening_start, eps=eps, whitening=dataclasses.replace(pca, eps=eps))
        det.fit(fit_pixels)
        scores[eps] = det.torch_score()
    wstats = {eps: ImageScore(score) for eps, score in scores.items()}
    start = scores[cfg.whitening_eps[0]].start
    kl = SoftmaxKL()
    cells = _adaptive_cells(cfg)

    def reference() -> dict[str, Any]:
        with torch.no_grad():
            kl_fit, kl_test = kl(None, model(fit_x)), kl(None, model(x))
        out: dict[str, Any] = {"n_fit": int(fit_x.shape[0]), "n_train": int(train.x.shape[0]), "start": start,
                               "kl/train": [float(kl_fit.mean()), float(kl_fit.std(unbiased=False))],
                               "kl/test": [float(kl_test.mean()), float(kl_test.std(unbiased=False))]}
        for eps, s in wstats.items():
            vf, vt = s(fit_x), s(x)
            out[f"{_eps_key(eps)}/train"] = [float(vf.mean()), float(vf.std(unbiased=False))]
            out[f"{_eps_key(eps)}/test"] = [float(vt.mean()), float(vt.std(unbiased=False))]
        return out

    ref = run.cell(cells["reference"][0], reference, spec=cells["reference"][1])
    it: dict[str, Any] = dict(step_size=cfg.step_size, l2_reg=cfg.l2_reg, threshold=cfg.threshold, max_steps=cfg.max_steps)
    plain = HGTargeted(**it)

    def unconstrained() -> dict[str, Any]:
        t0 = time.perf_counter()
        o = run_attack(plain, model, x, y, cfg.seed, cfg.batch_size)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            k = kl(None, model(o["x_adv"]))
        extra = {"kl": k.tolist(), **{f"v/{_eps_key(e)}": s(o["x_adv"]).tolist() for e, s in wstats.items()}}
        return _summary(x, o, cfg.threshold, seconds, extra)

    un = run.cell(cells["unconstrained"][0], unconstrained, spec=cells["unconstrained"][1])
    bar: dict[str, Any] = dict(max_backtracks=cfg.max_backtracks, barrier_weight=cfg.barrier_weight, **it)

    def barrier(attack: BarrierHGTargeted) -> dict[str, Any]:
        t0 = time.perf_counter()
        o = run_attack(attack, model, x, y, cfg.seed, cfg.batch_size)
        return _summary(x, o, cfg.threshold, time.perf_counter() - t0, {"low": attack.low, "high": attack.high})

    def search(key: str, attack: BarrierHGTargeted) -> None:
        name, spec = cells[key]
        run.cell(name, lambda: barrier(attack), spec=spec)

    for eps, s in wstats.items():
        for src in ("train", "test"):
            mu, sd = ref[f"{_eps_key(eps)}/{src}"]
            band: dict[str, Any] = dict(low=mu - cfg.whitening_radius * sd, high=mu + cfg.whitening_radius * sd)
            key = f"whitening/{eps:g}/{src}"
            search(key, BarrierHGTargeted(statistic=s, **band, **bar))
            if cfg.projected:  # a stronger attacker: steps that do not move the whitened window
                search(f"{key}/projected",
                       BarrierHGTargeted(statistic=s, step_transform=scores[eps].project_off_window, **band, **bar))
    for r in cfg.kl_radii:
        mu, sd = ref["kl/train"]
        search(f"kl/{r:g}", BarrierHGTargeted(statistic=kl, low=mu - r * sd, high=mu + r * sd, **bar))

    def trace() -> dict[str, Any]:
        nt = min(cfg.n_trace, len(y))
        target = torch.tensor(un["target"][:nt], dtype=torch.int64)  # the attack's targets
        stats = {"kl": kl, **{f"v/{_eps_key(e)}": s for e, s in wstats.items()}}
        return _trace(plain, model, x[:nt], target, cfg.trace_steps, stats)

    run.cell(cells["trace"][0], trace, spec=cells["trace"][1])


def hg_adaptive_report(cfg: HGAdaptiveConfig, results: Results) -> list[Block]:
    """Tables and the path figure of ``hg_adaptive`` from the stored cells alone."""
    cells = _adaptive_cells(cfg)
    facts = results.cell(*model_cell(cfg))
    ref = results.cell(*cells["reference"])
    tr = results.cell(*cells["trace"])
    rows = {key: results.cell(*cell) for key, cell in cells.items() if key not in ("reference", "trace")}
    path = _adaptive_figure(results, cfg, ref, tr, len(facts["classes"]))
    return _adaptive_blocks(cfg, facts, ref, rows, path)


register("hg_adaptive", HGAdaptiveConfig,
         "Hendrycks & Gimpel §3.2-3.3: log-barrier attacks keeping the whitening variance or the softmax KL typical.",
         report=hg_adaptive_report)(hg_adaptive_cells)


def _adaptive_figure(results: Results, cfg: HGAdaptiveConfig, ref: dict[str, Any], tr: dict[str, Any],
                     n_classes: int) -> Any:
    import matplotlib.pyplot as plt

    pt = np.asarray(tr["p_target"])  # (steps + 1, n)
    first = [int(np.argmax(pt[:, i] > cfg.threshold)) if (pt[:, i] > cfg.threshold).any() else None
             for i in range(pt.shape[1])]
    eps0 = cfg.whitening_eps[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    k = np.asarray(tr["kl"])
    for i in range(k.shape[1]):
        ax.plot(k[:, i], lw=1, color=f"C{i % 10}")
        if first[i] is not None:
            ax.plot(first[i], k[first[i], i], "o", ms=4, color=f"C{i % 10}")
    mu, sd = ref["kl/train"]
    radii = sorted(cfg.kl_radii)
    for j, r in enumerate(radii):
        ax.axhline(mu - r * sd, color=plt.cm.viridis(j / max(len(radii) - 1, 1)), lw=0.9, ls="--",
                   label=f"band low μ − rσ, r = {r:g}")
    ax.axhline(math.log(n_classes / 2), color="red", lw=0.8, ls=":", label="log(K/2): largest KL at a tie")
    ax.legend(fontsize=5.5, loc="lower left", ncol=2, framealpha=0.9)
    ax.set_xlabel("step of the unconstrained iterative attack")
    ax.set_ylabel("KL(softmax ‖ uniform)")
    ax.set_title("KL along the path (dot: first p_target > 0.5, where the attack stops)", fontsize=9)
    ax.grid(alpha=0.3)
    ax = axes[1]
    v = np.asarray(tr[f"v/{_eps_key(eps0)}"])
    for i in range(v.shape[1]):
        ax.plot(np.maximum(v[:, i], 1e-300), lw=1, color=f"C{i % 10}")
        if first[i] is not None:
            ax.plot(first[i], v[first[i], i], "o", ms=4, color=f"C{i % 10}")
    for src, ls in (("train", "--"), ("test", ":")):
        m_, s_ = ref[f"{_eps_key(eps0)}/{src}"]
        ax.axhline(m_ + cfg.whitening_radius * s_, color="k", lw=0.8, ls=ls,
                   label=f"band high, clean {src} μ + {cfg.whitening_radius:g}σ")
    ax.legend(fontsize=6, loc="lower right")
    ax.set_yscale("log")
    ax.set_xlabel("step of the unconstrained iterative attack")
    ax.set_ylabel(f"var(whitened coefficients [{ref['start']}:]), eps {eps0:g}")
    ax.set_title("whitened-coefficient variance along the path", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, results.figures_dir / "hg_barrier_paths.png")


def _adaptive_blocks(cfg: HGAdaptiveConfig, facts: dict[str, Any], ref: dict[str, Any], results: dict[str, Any],
                     path: Any) -> list[Block]:
    n = facts["n"]

    def row(label: str, r: dict[str, Any], band: str) -> list[Any]:
        succ = np.asarray(r["success"], dtype=bool)
        started = np.asarray(r.get("started_inside", [True] * n), dtype=bool)
        l2 = np.asarray(r["l2"])
        return [label, band, f"{int(started.sum())}/{n}", pct(succ.mean()),
                100 * (succ.sum() / started.sum()) if started.any() else math.nan,
                pct(np.mean(r["reached"])), _mean_over(r["l1"], succ), _mean_over(l2, succ),
                _mean_over(l2**2, succ), _mean_over(r["linf"], succ), _mean_over(r["steps"], succ), r["seconds"]]

    cols = ["constraint", "band", "started inside", "creation success %", "success % of started",
            "p_t > 0.5 reached %", "mean L1", "mean L2", "mean L2²", "mean L∞", "mean steps", "seconds"]
    w_rows = [row("none (r = ∞)", results["unconstrained"], "–")]
    for eps in cfg.whitening_eps:
        for src in ("train", "test"):
            r = results[f"whitening/{eps:g}/{src}"]
            label = f"whitening var, eps {eps:g}, clean μ ± {cfg.whitening_radius:g}σ ({src})"
            w_rows.append(row(label, r, f"({fmt_number(r['low'])}, {fmt_number(r['high'])})"))
            if cfg.projected:
                r = results[f"whitening/{eps:g}/{src}/projected"]
                w_rows.append(row(label + ", steps projected off the window", r,
                                  f"({fmt_number(r['low'])}, {fmt_number(r['high'])})"))
    k_rows = [row("r = ∞", results["unconstrained"], "–")]
    for r_ in cfg.kl_radii:
        r = results[f"kl/{r_:g}"]
        k_rows.append(row(f"r = {r_:g} σ_KL", r, f"({fmt_number(r['low'])}, {fmt_number(r['high'])})"))
    mu, sd = ref["kl/train"]
    mt, st = ref["kl/test"]
    un = results["unconstrained"]
    kl_adv = np.asarray(un["kl"])[np.asarray(un["success"], dtype=bool)]
    paper = cfg.paper
    return [
        Heading(f"Hendrycks & Gimpel §3.2–3.3: detector-aware (log-barrier) attacks on {cfg.dataset} (`{cfg.arch}`)"),
        _model_blurb(cfg, facts, ref["n_fit"], ref["n_train"]),
        Paragraph(
            f"Iterative attack (step {cfg.step_size * 255:g}/255, λ = {cfg.l2_reg:g}, ≤ {cfg.max_steps} steps) with "
            f"log barriers −log(high − s) − log(s − low) (weight {cfg.barrier_weight:g}) added to the loss; every step "
            f"is halved up to {cfg.max_backtracks} times until the iterate is inside the band, else the sample waits. "
            "Creation success = p_target > 0.5 and the statistic inside the band at the returned image; samples whose "
            "clean image is outside the band cannot start and count as failures. Distances over the successes."
        ),
        Table(cols, w_rows, caption="§3.2: keeping the whitened-coefficient variance within one σ of the clean mean"),
        Paragraph(
            "'Steps projected off the window': the same barrier search, each descent direction first stripped of its "
            "component along the principal directions of the detector's window (a step then leaves the statistic "
            "unchanged up to clipping; the barrier and backtracking still guard every iterate). It is not in the "
            "paper: it separates what the constraint forbids from what the plain fixed-step descent fails to find."
        ),
        Paragraph(
            f"KL(softmax ‖ uniform) on clean images: training {mu:.4f} ± {sd:.4f}, test sources {mt:.4f} ± {st:.4f} "
            f"(maximum log 10 = {math.log(10):.4f}); the unconstrained adversarial images end at KL "
            f"{np.mean(kl_adv) if kl_adv.size else math.nan:.3f} on average. {paper.get('note', '')}"
        ),
        Table(cols, k_rows, caption="§3.3 / Table 2: the search bounded to a typical KL within r·σ_KL of the clean "
              "mean (band from correctly classified training images)"),
        Figure(path, "The statistics along the unconstrained attack's path (no early stop) for a few test images, "
               "with the barrier bands."),
    ]
