"""Every detector against every attack on one model, one protocol (``configs/unified-detection.toml``).

The pieces here are shared with the Zhao et al. detection reproduction
(:mod:`.zhao_detection`) and the demo's "detect" section:

- :class:`DetectionConfig` — model, images, attacks (registry key + parameters), detectors
  (registry keys), the protocol's settings and the paper's numbers;
- :func:`detector_specs` — the :class:`~fisherscope.evaluation.DetectorSpec` of each
  :data:`~fisherscope.detectors.DETECTORS` key for a given model: which feature, with
  which arguments, on which model (BU / KD+BU use the same weights built with dropout);
- :func:`evaluate` — :func:`~fisherscope.evaluation.evaluate_detectors` inside a run cell,
  storing :meth:`~fisherscope.evaluation.DetectionResult.to_records` (numbers only).

Protocol choices (the protocol itself is documented in
:mod:`fisherscope.evaluation.detection`): test images drawn at random (seeded), split by
source image into fit / calibrate / test; positives are successful adversarials of
correctly classified images; thresholds at 5% FPR on the calibration split.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ..attacks import ATTACKS
from .base import Context, register
from .common import load_split, select_samples, trained_model
from .config import ExperimentConfig
from .report import Block, Figure, Heading, Paragraph, Table, save_figure
from .runner import Run

__all__ = ["AttackSpec", "DetectionConfig", "SweepSpec", "build_attacks", "detector_specs",
           "dropout_model", "evaluate", "roc_figure_from"]

#: the detectors of Zhao et al.'s Table 4, in the paper's row order
ZHAO_DETECTORS = ["kd", "bu", "kdbu", "fisher_spectrum"]
DETECTOR_LABELS = {
    "kd": "KD", "bu": "BU", "kdbu": "KD+BU", "fisher_spectrum": "eigenvalues (Zhao)",
    "fisher_score": "Fisher trace (Martin & Elster)", "fisher_form": "Fisher form (Martin & Elster)",
    "fisher_nform": "Fisher normalised form (Martin & Elster)", "softmax": "max softmax (H&G)",
    "pca_whitening": "PCA whitening (H&G)", "reconstruction": "reconstruction (H&G)",
    "lid": "LID", "mahalanobis": "Mahalanobis",
}


#: Martin & Elster's three scores (eqs. 4, 5, 8) as detector keys -> FisherScoreDetector's statistic
FISHER_SCORES = {"fisher_score": "trace", "fisher_form": "form", "fisher_nform": "normalized"}


@dataclass(frozen=True)
class AttackSpec:
    """One attack: a label, an :data:`~fisherscope.attacks.ATTACKS` key and its parameters."""

    name: str
    key: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepSpec:
    """One attack at several budgets (``eps``), for AUROC against the budget."""

    name: str
    key: str
    budgets: list[float] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DetectionConfig(ExperimentConfig):
    """Config of the detection experiments (``zhao_table4``, ``detection_unified``)."""

    n_samples: int | None = 1000  # test images drawn at random (None: all)
    batch_size: int = 250
    attacks: list[AttackSpec] = field(default_factory=list)
    detectors: list[str] = field(default_factory=lambda: list(ZHAO_DETECTORS))
    splits: list[float] = field(default_factory=lambda: [0.4, 0.2, 0.4])
    target_fpr: float = 0.05
    n_bootstrap: int = 1000
    cross_attack: bool = True
    noise_in_fit: list[str] = field(default_factory=lambda: ["fisher_spectrum"])
    dropout: float = 0.5  # rate of the dropout copy used for BU / KD+BU
    mc_samples: int = 50  # MC-dropout passes
    eigenvalues: int = 20  # top-k eigenvalues of G_x (zeros past K - 1)
    n_estimators: int = 50
    max_depth: int = 5
    lid_k: int = 20
    whitening_images: int | None = None  # training images for PCA whitening (None: all)
    sweep: list[SweepSpec] = field(default_factory=list)
    sweep_detectors: list[str] = field(default_factory=list)  # [] : all of `detectors`
    reconstruction_arch: str | None = None  # also run the reconstruction detector on this model
    paper: dict[str, Any] = field(default_factory=dict)


def build_attacks(specs: list[AttackSpec]) -> dict[str, Any]:
    """Attack instances by label; unknown keys or parameters raise with the valid ones."""
    out = {}
    for s in specs:
        if s.key not in ATTACKS:
            raise ValueError(f"attack {s.name!r}: unknown key {s.key!r}; valid keys: {sorted(ATTACKS)}.")
        try:
            out[s.name] = ATTACKS[s.key](**s.params)
        except TypeError as exc:
            raise ValueError(f"attack {s.name!r} ({s.key}): bad parameters {s.params!r}: {exc}") from exc
    if len(out) != len(specs):
        raise ValueError(f"attack names must be unique; got {[s.name for s in specs]}.")
    return out


def dropout_model(trained: Any, rate: float) -> torch.nn.Module:
    """The trained weights loaded into the same architecture built with dropout ``rate``.

    The models of :mod:`fisherscope.models` hold ``nn.Identity`` in their dropout slots
    when built with ``dropout=0``, so the state dict does not depend on the rate (see the
    architectures' docstring). In eval mode the copy computes exactly what the original
    does; :func:`~fisherscope.features.mc_dropout` switches only its dropout modules on.
    """
    from ..models import MODELS

    model = MODELS[trained.arch](**{**trained.model_kwargs, "dropout": float(rate)})
    model.load_state_dict(trained.model.state_dict())
    device = next(trained.model.parameters()).device
    return model.to(device).eval()


def detector_specs(names: list[str], trained: Any, cfg: Any, ctx: Context, x_probe: torch.Tensor) -> dict[str, Any]:
    """A :class:`~fisherscope.evaluation.DetectorSpec` per detector key, for ``trained.model``.

    - ``fisher_spectrum``: top-``cfg.eigenvalues`` eigenvalues of G_x -> random forest
      (``n_estimators``, ``max_depth``); noise rows among its fitting negatives when the
      key is in ``cfg.noise_in_fit`` (Zhao §4).
    - ``fisher_score`` / ``fisher_form`` / ``fisher_nform``: the trace tr F_θ, the quadratic
      form vᵀF_θv and its normalised version (Martin & Elster eqs. 4, 5, 8) as the score;
      the three share one feature, computed once.
    - ``kd`` / ``mahalanobis``: penultimate features (input of the last linear layer) with
      the predicted class; KD bandwidth by leave-one-out likelihood on the fit split;
      Mahalanobis with one tied covariance (unsupervised, one layer).
    - ``bu`` / ``kdbu``: ``cfg.mc_samples`` MC-dropout passes of the dropout copy
      (:func:`dropout_model`, rate ``cfg.dropout``); the two share the feature.
    - ``softmax``: maximum softmax probability.
    - ``pca_whitening``: whitening fitted on the clean *training* images (as Hendrycks &
      Gimpel do; ``cfg.whitening_images`` of them, all by default), their cut-off and
      eps = 1e-11.
    - ``lid``: LID (k = ``cfg.lid_k``) of every activation module's output and the logits,
      neighbours from the clean fit-split rows, logistic regression over the layers.
    - ``reconstruction``: Hendrycks & Gimpel's signed mean of x − reconstruct(x) (models
      with a decoder only, e.g. ``hg_mlp``).
    """
    from ..detectors import (
        BayesianUncertaintyDetector,
        FisherScoreDetector,
        FisherSpectrumDetector,
        KDBUDetector,
        KernelDensityDetector,
        LIDDetector,
        MahalanobisDetector,
        PCAWhiteningDetector,
        ReconstructionDetector,
        SoftmaxDetector,
    )
    from ..evaluation import DetectorSpec, Feature
    from ..features import fit_pca_whitening, layer_sizes

    unknown = [n for n in names if n not in DETECTOR_LABELS]
    if unknown:
        raise ValueError(f"unknown detector key(s) {unknown}; valid: {sorted(DETECTOR_LABELS)}.")
    model = trained.model
    pen = Feature("penultimate")
    mc = None
    if {"bu", "kdbu"} & set(names):
        mc = Feature("mc_dropout", model=dropout_model(trained, cfg.dropout), kwargs={"n": cfg.mc_samples})
    out: dict[str, Any] = {}
    for name in names:
        noise = name in cfg.noise_in_fit
        if name == "fisher_spectrum":
            det = FisherSpectrumDetector(random_state=cfg.seed, n_estimators=cfg.n_estimators,
                                         max_depth=cfg.max_depth)
            out[name] = DetectorSpec(det, Feature("fisher_eigenvalues", kwargs={"k": cfg.eigenvalues}),
                                     fit_noise=noise)
        elif name in FISHER_SCORES:  # one feature (all three scores, computed once) for the three detectors
            out[name] = DetectorSpec(FisherScoreDetector(statistic=FISHER_SCORES[name]), Feature("param_fisher_scores"))
        elif name == "kd":
            out[name] = DetectorSpec(KernelDensityDetector(), pen)
        elif name == "bu":
            out[name] = DetectorSpec(BayesianUncertaintyDetector(), mc)
        elif name == "kdbu":
            out[name] = DetectorSpec(KDBUDetector(), [pen, mc], fit_noise=noise)
        elif name == "softmax":
            out[name] = DetectorSpec(SoftmaxDetector(statistic="max_prob"), Feature("softmax_stats"))
        elif name == "pca_whitening":
            train = load_split(cfg.dataset, "train", ctx)
            idx = select_samples(len(train), cfg.whitening_images, cfg.seed)
            white = fit_pca_whitening(train.x[idx])
            out[name] = DetectorSpec(PCAWhiteningDetector(whitening=white), Feature("pixels"))
        elif name == "lid":
            sizes = tuple(layer_sizes(model, x_probe[:1]).values())
            out[name] = DetectorSpec(LIDDetector(k=cfg.lid_k, layer_sizes=sizes), Feature("layer_activations"),
                                     fit_noise=noise)
        elif name == "mahalanobis":
            out[name] = DetectorSpec(MahalanobisDetector(), pen)
        elif name == "reconstruction":
            out[name] = DetectorSpec(ReconstructionDetector(kind="signed_mean"),
                                     Feature("reconstruction_error", kwargs={"kind": "all"}))
    return out


def sources(cfg: Any, ctx: Context) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """(trained model, test images, labels): ``cfg.n_samples`` random test images (seeded)."""
    trained = trained_model(cfg.arch, cfg.dataset, ctx, seed=cfg.seed, preset=cfg.preset)
    test = load_split(cfg.dataset, "test", ctx)
    idx = select_samples(len(test), cfg.n_samples, cfg.seed)
    return trained, test.x[idx], test.y[idx]


def evaluate(run: Run, cell: str, cfg: Any, ctx: Context, trained: Any, x: torch.Tensor, y: torch.Tensor,
             attacks: dict[str, Any], detectors: list[str], *, cross_attack: bool,
             feature_cache: dict[Any, Any] | None = None, roc_points: int = 0) -> dict[str, Any]:
    """Run the protocol in a cell; stored: records (and thinned ROC curves if ``roc_points``)."""
    from ..evaluation import evaluate_detectors

    def measure() -> dict[str, Any]:
        specs = detector_specs(detectors, trained, cfg, ctx, x)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="G_x has rank at most")
            res = evaluate_detectors(
                trained.model, x, y, attacks, specs, splits=tuple(cfg.splits), target_fpr=cfg.target_fpr,
                n_bootstrap=cfg.n_bootstrap, seed=cfg.seed, cross_attack=cross_attack,
                batch_size=cfg.batch_size, feature_cache=feature_cache,
            )
        out: dict[str, Any] = {"records": res.to_records(), "settings": res.settings}
        if roc_points:
            out["roc"] = {f"{d}|{a}": [_thin(c, roc_points) for c in curve] for (d, a), curve in res.roc.items()}
        return out

    return run.cell(cell, measure)


def _thin(v: Any, n: int) -> list[float]:
    """At most ``n`` points of a ROC coordinate array, keeping both ends."""
    import numpy as np

    v = np.asarray(v, dtype=float)
    if v.size <= n:
        return v.tolist()
    idx = np.unique(np.round(np.linspace(0, v.size - 1, n)).astype(int))
    return v[idx].tolist()


# ------------------------------------------------------------------ reading records


def table_rows(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["detector"], r["attack"]): r for r in records if r["kind"] == "table"}


def attack_rows(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["attack"]: r for r in records if r["kind"] == "attack"}


def cross_rows(records: list[dict[str, Any]]) -> dict[str, dict[tuple[str, str], float]]:
    out: dict[str, dict[tuple[str, str], float]] = {}
    for r in records:
        if r["kind"] == "cross":
            out.setdefault(r["detector"], {})[(r["train"], r["test"])] = _num(r["auroc"])
    return out


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def pct(v: Any) -> float:
    return 100.0 * _num(v)


def with_ci(r: dict[str, Any] | None, metric: str = "auroc") -> str:
    """``"96.1 [94.0, 97.9]"`` (percent) or why the cell is empty."""
    if r is None:
        return "n/a"
    if r.get("error"):
        return "error"
    v, lo, hi = _num(r.get(metric)), _num(r.get(f"{metric}_lo")), _num(r.get(f"{metric}_hi"))
    if math.isnan(v):
        return "–"
    return f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" if not math.isnan(lo) else f"{100 * v:.1f}"


def attack_table(specs: list[AttackSpec], atk: dict[str, dict[str, Any]]) -> Table:
    rows = []
    for s in specs:
        a = atk[s.name]
        params = ", ".join(f"{k}={v}" for k, v in s.params.items()) or "defaults"
        rows.append([s.name, f"`{s.key}`({params})", a["n_correct"], a["n_success"], pct(a["success_rate"]),
                     _num(a["mean_l2"]), _num(a["mean_linf"]), a["n_pos_test"]])
    return Table(["attack", "registry key (parameters)", "correct images attacked", "successful",
                  "success rate %", "mean L2 of positives", "mean L∞", "test positives"], rows,
                 caption="Attacks (untargeted on the true label; success recomputed: prediction ≠ label)")


def detection_tables(records: list[dict[str, Any]], detectors: list[str], attacks: list[str],
                     caption: str) -> list[Block]:
    """AUROC table with intervals, TPR at the threshold with the test FPR, noise control."""
    tab = table_rows(records)
    auc = Table(["detector", *attacks],
                [[DETECTOR_LABELS.get(d, d), *[with_ci(tab.get((d, a))) for a in attacks]] for d in detectors],
                caption=caption)
    tpr_rows = []
    for d in detectors:
        cells = []
        for a in attacks:
            r = tab.get((d, a))
            if r is None or r.get("error"):
                cells.append("n/a" if r is None else "error")
            else:
                cells.append(f"{pct(r['tpr']):.1f} ({pct(r['fpr']):.1f})")
        tpr_rows.append([DETECTOR_LABELS.get(d, d), *cells])
    fpr = next((r["target_fpr"] for r in tab.values()), 0.05)
    tpr = Table(["detector", *attacks], tpr_rows,
                caption=f"TPR % at the threshold set for {100 * fpr:g}% FPR on the calibration split "
                        "(FPR % reached on the test clean images)")
    noise_rows = []
    for d in detectors:
        cells = []
        for a in attacks:
            r = tab.get((d, a))
            if r is None or r.get("error") or r.get("auroc_noise") is None:
                cells.append("n/a" if r is None else "–")
            else:
                cells.append(f"{pct(r['auroc_noise']):.1f} / {pct(r['noise_flagged']):.1f}")
        noise_rows.append([DETECTOR_LABELS.get(d, d), *cells])
    noise = Table(["detector", *attacks], noise_rows,
                  caption="Noise control: AUROC % of adversarial vs noise with the same L2 norm / % of the "
                          "noisy images flagged at the threshold")
    return [auc, tpr, noise]


def errors_paragraph(records: list[dict[str, Any]]) -> list[Block]:
    errs = sorted({(r["detector"], r["error"]) for r in records if r["kind"] == "table" and r.get("error")})
    if not errs:
        return []
    return [Paragraph("Cells without numbers: " + "; ".join(f"{d}: {e}" for d, e in errs))]


# ------------------------------------------------------------------ the unified table


@register("detection_unified", DetectionConfig,
          "Every detector against every attack on one model, one protocol (and reconstruction on a decoder model).")
def run_unified(run: Run, cfg: DetectionConfig, ctx: Context) -> list[Block]:
    import time

    trained, x, y = sources(cfg, ctx)
    attacks = build_attacks(cfg.attacks)
    names = [s.name for s in cfg.attacks]
    dets = list(cfg.detectors)
    has_decoder = callable(getattr(trained.model, "reconstruct", None))
    main = [d for d in dets if d != "reconstruction" or has_decoder]
    t0 = time.perf_counter()
    r = evaluate(run, "unified", cfg, ctx, trained, x, y, attacks, main, cross_attack=cfg.cross_attack)
    wall = time.perf_counter() - t0
    blocks: list[Block] = [
        Heading(f"All detectors against all attacks on `{cfg.arch}` ({cfg.dataset})"),
        Paragraph(
            f"`{cfg.arch}` (test accuracy {trained.metrics['test_accuracy']:.4f}, checkpoint "
            f"`{trained.key[:12]}`), {len(y)} random test images (seed {cfg.seed}), split by source image "
            f"into fit / calibrate / test = {cfg.splits}; thresholds at {100 * cfg.target_fpr:g}% FPR on "
            f"the calibration split; 95% intervals from {cfg.n_bootstrap} bootstrap draws of test images. "
            f"BU / KD+BU: the same weights with dropout {cfg.dropout} at {cfg.mc_samples} MC passes."
        ),
        attack_table(cfg.attacks, attack_rows(r["records"])),
        *detection_tables(r["records"], main, names, "AUROC % [95% interval], seen attack (trained and tested "
                          "on the same attack; unsupervised detectors fit on clean images only)"),
        *errors_paragraph(r["records"]),
    ]
    if "reconstruction" in dets and not has_decoder:
        blocks.append(Paragraph(
            f"Reconstruction: n/a on `{cfg.arch}` (no decoder)"
            + (f"; run on `{cfg.reconstruction_arch}` below." if cfg.reconstruction_arch else ".")))
    if "reconstruction" in dets and not has_decoder and cfg.reconstruction_arch:
        rec_cfg = _with(cfg, arch=cfg.reconstruction_arch)
        rtrained, rx, ry = sources(rec_cfg, ctx)
        rr = evaluate(run, f"reconstruction/{cfg.reconstruction_arch}", rec_cfg, ctx, rtrained, rx, ry,
                      build_attacks(cfg.attacks), ["reconstruction", "softmax"], cross_attack=False)
        blocks += [
            Heading(f"Reconstruction detector on `{cfg.reconstruction_arch}`", 3),
            Paragraph(f"The reconstruction error needs a decoder: `{cfg.reconstruction_arch}` (test accuracy "
                      f"{rtrained.metrics['test_accuracy']:.4f}) attacked with the same attack settings, the same "
                      "images and protocol; max softmax beside it for reference."),
            attack_table(cfg.attacks, attack_rows(rr["records"])),
            *detection_tables(rr["records"], ["reconstruction", "softmax"], names, "AUROC % [95% interval]"),
        ]
    heat = {DETECTOR_LABELS.get(d, d): [table_rows(r["records"]).get((d, a)) for a in names] for d in main}
    if "reconstruction" in dets and not has_decoder and cfg.reconstruction_arch:
        heat[f"reconstruction (H&G) on {cfg.reconstruction_arch}"] = [
            table_rows(rr["records"]).get(("reconstruction", a)) for a in names]
    blocks.append(Figure(save_figure(_heatmap(heat, names), run.figures_dir / "unified-detection-auroc.png"),
                         "AUROC % (left) and the noise control, AUROC % of adversarial vs noise with the same L2 "
                         "norm (right); test split."))
    cross = cross_rows(r["records"])
    for d, m in cross.items():
        blocks.append(Table(["trained on \\ tested on", *names],
                            [[a, *[pct(m.get((a, b))) for b in names]] for a in names],
                            caption=f"{DETECTOR_LABELS.get(d, d)}: AUROC % trained on one attack, tested on each"))
    blocks.append(Paragraph(f"Evaluation wall time {wall:.0f} s (0 when the cell was resumed)."))
    return blocks


def _heatmap(rows: dict[str, list[dict[str, Any] | None]], attacks: list[str]) -> Any:
    import matplotlib.pyplot as plt
    import numpy as np

    narrow = len(attacks) < 4  # titles on two lines, and a minimum width, for one to three columns
    sep = "\n" if narrow else " "
    fig, axes = plt.subplots(1, 2, figsize=(2.6 + 1.3 * max(len(attacks), 2), 0.9 + 0.42 * len(rows)), sharey=True)
    for ax, metric, title in zip(axes, ("auroc", "auroc_noise"), (f"AUROC %:{sep}adversarial vs clean",
                                                                    f"control:{sep}adversarial vs noise"), strict=True):
        vals = np.array([[np.nan if c is None or c.get(metric) is None else 100 * c[metric] for c in row]
                         for row in rows.values()])
        ax.imshow(vals, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        for i, j in np.ndindex(vals.shape):
            ax.text(j, i, "n/a" if np.isnan(vals[i, j]) else f"{vals[i, j]:.0f}", ha="center", va="center",
                    fontsize=7.5)
        ax.set_xticks(range(len(attacks)), attacks, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0].set_yticks(range(len(rows)), list(rows), fontsize=8)
    fig.tight_layout()
    return fig


def _with(cfg: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def roc_figure_from(stored: dict[str, Any], detectors: list[str], attack: str, title: str) -> Any:
    """ROC figure of stored (thinned) curves of one attack."""
    from ..plotting_maps import roc_figure

    tab = table_rows(stored["records"])
    curves = {}
    for d in detectors:
        key = f"{d}|{attack}"
        if key in stored.get("roc", {}):
            fpr, tpr = stored["roc"][key]
            curves[DETECTOR_LABELS.get(d, d)] = (fpr, tpr, _num(tab[(d, attack)]["auroc"]))
    return roc_figure(curves, title=title)

