"""The detection protocol the detection experiments share (a kit module).

Used by the unified table (:mod:`.unified_detection`), the Zhao et al. detection
reproduction (:mod:`.zhao_detection`) and the demo's "detect" section:

- :class:`DetectionConfig` — model, images, attacks (registry key + parameters), detectors
  (registry keys), the protocol's settings and the paper's numbers;
- :data:`RECIPES` — how each detector key is built from the
  :data:`~fisherscope.detectors.DETECTORS` registry: which registered class, with which
  settings, on which feature (by default the class's own ``feature``); :func:`detector_specs`
  turns a list of keys into :class:`~fisherscope.evaluation.DetectorSpec` s;
- :func:`evaluate` — :func:`~fisherscope.evaluation.evaluate_detectors` inside a run cell
  keyed by :func:`evaluation_spec`, storing
  :meth:`~fisherscope.evaluation.DetectionResult.to_records` (numbers only), thinned ROC
  curves and the wall time;
- :func:`model_cell` / :func:`record_model` — the facts about the model a report prints
  (accuracy, checkpoint, number of images, decoder or not), stored in a cell;
- table and figure helpers that read stored records only (:func:`detection_tables`,
  :func:`attack_table`, :func:`roc_figure_from`, :func:`auroc_heatmap`, ...).

Protocol choices (the protocol itself is documented in
:mod:`fisherscope.evaluation.detection`): test images drawn at random (seeded), split by
source image into fit / calibrate / test; positives are successful adversarials of
correctly classified images; thresholds at 5% FPR on the calibration split.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from ..attacks import ATTACKS
from .config import ExperimentConfig
from .kit import Block, Context, Paragraph, Run, Table, load_split, select_samples, trained_model
from .report import pct as report_pct

__all__ = [
    "main_detectors",
    "reconstruction_cfg",
    "DETECTOR_LABELS",
    "PROTOCOL_FIELDS",
    "RECIPES",
    "ZHAO_DETECTORS",
    "AttackSpec",
    "DetectionConfig",
    "DetectorInputs",
    "DetectorRecipe",
    "SweepSpec",
    "attack_rows",
    "attack_table",
    "auroc_heatmap",
    "build_attacks",
    "cross_rows",
    "detection_tables",
    "detector_specs",
    "dropout_model",
    "errors_paragraph",
    "evaluate",
    "settings_table",
    "evaluation_spec",
    "model_cell",
    "pct",
    "record_model",
    "roc_figure_from",
    "sources",
    "table_rows",
    "with_ci",
]

#: the detectors of Zhao et al.'s Table 4, in the paper's row order
ZHAO_DETECTORS = ["kd", "bu", "kdbu", "fisher_spectrum"]


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


#: The settings of a config the protocol and the detectors read (they decide the numbers).
PROTOCOL_FIELDS = ("seed", "dataset", "splits", "target_fpr", "n_bootstrap", "batch_size", "noise_in_fit",
                   "dropout", "mc_samples", "eigenvalues", "n_estimators", "max_depth", "lid_k",
                   "whitening_images")


def build_attacks(specs: Sequence[AttackSpec]) -> dict[str, Any]:
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


# ------------------------------------------------------------------ building detectors


class DetectorInputs:
    """What the detector recipes build from: the model, the settings, shared pieces made once.

    Parameters
    ----------
    trained : TrainedModel
        The attacked model (``.model``, and ``.arch`` / ``.model_kwargs`` for the dropout copy).
    cfg : config
        Any object with the :data:`PROTOCOL_FIELDS` attributes (a :class:`DetectionConfig`).
    ctx : Context
        Where the training split is found (PCA whitening).
    x_probe : Tensor
        Inputs shaped like the model's (one row is used to measure layer widths).

    Each shared piece (the MC-dropout feature on one dropout copy, the whitening, the layer
    widths) is built on first use and then reused, so e.g. BU and KD+BU share one feature
    and the evaluation's feature cache computes it once.
    """

    def __init__(self, trained: Any, cfg: Any, ctx: Context, x_probe: torch.Tensor) -> None:
        self.trained, self.cfg, self.ctx, self.x_probe = trained, cfg, ctx, x_probe

    @property
    def model(self) -> torch.nn.Module:
        return self.trained.model

    @cached_property
    def mc_dropout(self) -> Any:
        """``cfg.mc_samples`` MC-dropout passes of the dropout copy (rate ``cfg.dropout``)."""
        from ..evaluation import Feature

        return Feature("mc_dropout", model=dropout_model(self.trained, self.cfg.dropout),
                       kwargs={"n": self.cfg.mc_samples})

    @cached_property
    def whitening(self) -> Any:
        """PCA whitening fitted on ``cfg.whitening_images`` clean training images (all: None)."""
        from ..features import fit_pca_whitening

        train = load_split(self.cfg.dataset, "train", self.ctx)
        idx = select_samples(len(train), self.cfg.whitening_images, self.cfg.seed)
        return fit_pca_whitening(train.x[idx])

    @cached_property
    def layer_sizes(self) -> tuple[int, ...]:
        """Widths of the model's activation outputs and logits (the LID layers)."""
        from ..features import layer_sizes

        return tuple(layer_sizes(self.model, self.x_probe[:1]).values())


def _no_settings(inputs: DetectorInputs) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class DetectorRecipe:
    """How the protocol builds one detector key, declared once.

    Parameters
    ----------
    detector : str
        The :data:`~fisherscope.detectors.DETECTORS` key of the class.
    label : str
        The name tables and figures print.
    settings : callable
        ``inputs -> kwargs`` of the class (none by default).
    features : callable, optional
        ``inputs -> feature(s)`` (see :class:`~fisherscope.evaluation.DetectorSpec`);
        ``None``: the class's own ``feature`` with default arguments, on the attacked model.
    """

    detector: str
    label: str
    settings: Callable[[DetectorInputs], dict[str, Any]] = _no_settings
    features: Callable[[DetectorInputs], Any] | None = None

    def build(self, inputs: DetectorInputs, *, fit_noise: bool = False) -> Any:
        """The :class:`~fisherscope.evaluation.DetectorSpec` of this recipe."""
        from ..detectors import DETECTORS
        from ..evaluation import DetectorSpec

        det = DETECTORS[self.detector](**self.settings(inputs))
        feats = None if self.features is None else self.features(inputs)
        return DetectorSpec(det, feats, fit_noise=fit_noise)


def _feature(name: str, **kwargs: Callable[[Any], Any]) -> Callable[[DetectorInputs], Any]:
    """``inputs -> Feature(name, kwargs={k: f(cfg)})``."""
    def make(inputs: DetectorInputs) -> Any:
        from ..evaluation import Feature

        return Feature(name, kwargs={k: f(inputs.cfg) for k, f in kwargs.items()})

    return make


def _kdbu_features(inputs: DetectorInputs) -> Any:
    from ..evaluation import Feature

    return [Feature("penultimate"), inputs.mc_dropout]


#: Every detector key the experiments accept -> its recipe (registry class, settings, feature).
#: ``fisher_score`` / ``fisher_form`` / ``fisher_nform`` are Martin & Elster's eqs. 4, 5, 8 (the
#: trace tr F_θ, the quadratic form vᵀF_θv and its normalised version), one class and one
#: feature (all three scores, computed once). KD and Mahalanobis (one tied covariance,
#: unsupervised, one layer) read the penultimate features with the predicted class (KD
#: bandwidth by leave-one-out likelihood on the fit split); BU and KD+BU share the MC-dropout
#: feature of the dropout copy (:func:`dropout_model`). PCA whitening is fitted on the clean
#: *training* images (as Hendrycks & Gimpel do), LID neighbours come from the clean fit-split
#: rows (logistic regression over the layers), the reconstruction detector is Hendrycks &
#: Gimpel's signed mean of x − reconstruct(x) (models with a decoder only, e.g. ``hg_mlp``).
RECIPES: dict[str, DetectorRecipe] = {
    "kd": DetectorRecipe("kd", "KD"),
    "bu": DetectorRecipe("bu", "BU", features=lambda i: i.mc_dropout),
    "kdbu": DetectorRecipe("kdbu", "KD+BU", features=_kdbu_features),
    "fisher_spectrum": DetectorRecipe(
        "fisher_spectrum", "eigenvalues (Zhao)",
        settings=lambda i: {"random_state": i.cfg.seed, "n_estimators": i.cfg.n_estimators,
                            "max_depth": i.cfg.max_depth},
        features=_feature("fisher_eigenvalues", k=lambda c: c.eigenvalues)),
    "fisher_score": DetectorRecipe("fisher_score", "Fisher trace (Martin & Elster)",
                                   settings=lambda i: {"statistic": "trace"}),
    "fisher_form": DetectorRecipe("fisher_score", "Fisher form (Martin & Elster)",
                                  settings=lambda i: {"statistic": "form"}),
    "fisher_nform": DetectorRecipe("fisher_score", "Fisher normalised form (Martin & Elster)",
                                   settings=lambda i: {"statistic": "normalized"}),
    "softmax": DetectorRecipe("softmax", "max softmax (H&G)", settings=lambda i: {"statistic": "max_prob"}),
    "pca_whitening": DetectorRecipe("pca_whitening", "PCA whitening (H&G)",
                                    settings=lambda i: {"whitening": i.whitening}),
    "reconstruction": DetectorRecipe("reconstruction", "reconstruction (H&G)",
                                     settings=lambda i: {"kind": "signed_mean"},
                                     features=_feature("reconstruction_error", kind=lambda c: "all")),
    "lid": DetectorRecipe("lid", "LID", settings=lambda i: {"k": i.cfg.lid_k, "layer_sizes": i.layer_sizes}),
    "mahalanobis": DetectorRecipe("mahalanobis", "Mahalanobis"),
}

DETECTOR_LABELS = {k: r.label for k, r in RECIPES.items()}


def _check_names(names: Sequence[str], noise_in_fit: Sequence[str]) -> None:
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise ValueError(f"unknown detector key(s) {unknown}; valid: {sorted(RECIPES)}.")
    bad_noise = [n for n in noise_in_fit if n not in RECIPES]
    if bad_noise:
        raise ValueError(f"noise_in_fit names unknown detector key(s) {bad_noise}; valid: {sorted(RECIPES)}.")


def detector_specs(names: Sequence[str], trained: Any, cfg: Any, ctx: Context,
                   x_probe: torch.Tensor) -> dict[str, Any]:
    """A :class:`~fisherscope.evaluation.DetectorSpec` per detector key, for ``trained.model``.

    Each key is built by its :data:`RECIPES` entry; a key listed in ``cfg.noise_in_fit``
    gets noise rows among its fitting negatives (Zhao §4). Unknown keys (in ``names`` or
    ``cfg.noise_in_fit``) and noise for an unsupervised detector (it fits on clean rows
    only) raise ``ValueError``.
    """
    _check_names(names, cfg.noise_in_fit)
    inputs = DetectorInputs(trained, cfg, ctx, x_probe)
    out: dict[str, Any] = {}
    for name in names:
        spec = RECIPES[name].build(inputs)
        if name in cfg.noise_in_fit:
            if not spec.detector.supervised:
                raise ValueError(
                    f"noise_in_fit lists {name!r}, but {type(spec.detector).__name__} is unsupervised: it fits "
                    "on clean rows only, so noise rows cannot be among its negatives. Drop it from noise_in_fit.")
            spec = dataclasses.replace(spec, fit_noise=True)
        out[name] = spec
    return out


# ------------------------------------------------------------------ cells


def sources(cfg: Any, ctx: Context) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """(trained model, test images, labels): ``cfg.n_samples`` random test images (seeded)."""
    trained = trained_model(cfg.arch, cfg.dataset, ctx, seed=cfg.seed, preset=cfg.preset)
    test = load_split(cfg.dataset, "test", ctx)
    idx = select_samples(len(test), cfg.n_samples, cfg.seed)
    return trained, test.x[idx], test.y[idx]


def model_cell(cfg: Any) -> tuple[str, dict[str, Any]]:
    """Name and spec of the cell holding the facts about ``cfg``'s model and images."""
    return f"model/{cfg.arch}", {"arch": cfg.arch, "dataset": cfg.dataset, "preset": cfg.preset,
                                 "seed": cfg.seed, "n_samples": getattr(cfg, "n_samples", None)}


def record_model(run: Run, cfg: Any, trained: Any, n_images: int) -> Mapping[str, Any]:
    """Store what a report says about the model: test accuracy, checkpoint, images, decoder."""
    def facts() -> dict[str, Any]:
        return {"test_accuracy": float(trained.metrics["test_accuracy"]), "checkpoint_key": trained.key,
                "n_images": int(n_images), "has_decoder": callable(getattr(trained.model, "reconstruct", None))}

    name, spec = model_cell(cfg)
    return run.cell(name, facts, spec=spec)


def evaluation_spec(cfg: Any, *, attacks: Sequence[Any], detectors: Sequence[str], cross_attack: bool,
                    roc_points: int = 0, **extra: Any) -> dict[str, Any]:
    """The full spec of an evaluation cell: everything that decides its numbers.

    The :data:`PROTOCOL_FIELDS` of ``cfg``, its model (``arch``, ``preset``) and images
    (``n_samples``) where it has them, the attacks (dataclasses or mappings), the detector
    keys, ``cross_attack``, ``roc_points`` and ``extra``.
    """
    spec: dict[str, Any] = {f: getattr(cfg, f) for f in PROTOCOL_FIELDS}
    for f in ("arch", "preset", "n_samples"):
        if hasattr(cfg, f):
            spec[f] = getattr(cfg, f)
    spec.update(
        attacks=[dataclasses.asdict(a) if dataclasses.is_dataclass(a) and not isinstance(a, type) else dict(a) for a in attacks],
        detectors=list(detectors), cross_attack=bool(cross_attack), roc_points=int(roc_points), **extra)
    return spec


def evaluate(run: Run, cell: str, spec: Mapping[str, Any], cfg: Any, ctx: Context, trained: Any,
             x: torch.Tensor, y: torch.Tensor, attacks: dict[str, Any], detectors: list[str], *,
             cross_attack: bool, feature_cache: dict[Any, Any] | None = None,
             roc_points: int = 0, **protocol: Any) -> Mapping[str, Any]:
    """Run the protocol in the cell ``(cell, spec)`` (``spec`` from :func:`evaluation_spec`).

    ``protocol`` goes to :func:`~fisherscope.evaluation.evaluate_detectors` as it is
    (``adaptive``, ``adaptive_settings``, ``kappa_sweep``); put what decides the numbers in
    the spec too. Stored: ``records`` and ``settings`` of the result, the thinned ROC curves
    (``roc``, ``"detector|attack" -> [fpr, tpr]``) if ``roc_points``, and ``wall_s``.
    """
    from ..evaluation import evaluate_detectors

    def measure() -> dict[str, Any]:
        t0 = time.perf_counter()
        specs = detector_specs(detectors, trained, cfg, ctx, x)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="G_x has rank at most")
            res = evaluate_detectors(
                trained.model, x, y, attacks, specs, splits=tuple(cfg.splits), target_fpr=cfg.target_fpr,
                n_bootstrap=cfg.n_bootstrap, seed=cfg.seed, cross_attack=cross_attack,
                batch_size=cfg.batch_size, feature_cache=feature_cache, **protocol,
            )
        out: dict[str, Any] = {"records": res.to_records(), "settings": res.settings}
        if roc_points:
            out["roc"] = {f"{d}|{a}": [_thin(c, roc_points) for c in curve] for (d, a), curve in res.roc.items()}
        out["wall_s"] = time.perf_counter() - t0
        return out

    return run.cell(cell, measure, spec=spec)


def _thin(v: Any, n: int) -> list[float]:
    """At most ``n`` points of a ROC coordinate array, keeping both ends."""
    import numpy as np

    v = np.asarray(v, dtype=float)
    if v.size <= n:
        return v.tolist()
    idx = np.unique(np.round(np.linspace(0, v.size - 1, n)).astype(int))
    return v[idx].tolist()


# ------------------------------------------------------------------ reading records


def table_rows(records: list[dict[str, Any]], setting: str = "oblivious") -> dict[tuple[str, str], dict[str, Any]]:
    """The ``kind == "table"`` records of one setting (default the oblivious attacks) by (detector, attack).

    Records stored before settings existed have none and count as oblivious."""
    return {(r["detector"], r["attack"]): r for r in records
            if r["kind"] == "table" and r.get("setting", "oblivious") == setting}


def attack_rows(records: list[dict[str, Any]], setting: str = "oblivious") -> dict[str, dict[str, Any]]:
    """The ``kind == "attack"`` records of one setting by attack."""
    return {r["attack"]: r for r in records if r["kind"] == "attack" and r.get("setting", "oblivious") == setting}


def cross_rows(records: list[dict[str, Any]]) -> dict[str, dict[tuple[str, str], float]]:
    """Cross-attack AUROCs: detector -> (train attack, test attack) -> AUROC."""
    out: dict[str, dict[tuple[str, str], float]] = {}
    for r in records:
        if r["kind"] == "cross":
            out.setdefault(r["detector"], {})[(r["train"], r["test"])] = _num(r["auroc"])
    return out


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def pct(v: Any) -> float:
    """Percent of a stored fraction (NaN for a missing one), shown with one decimal in tables."""
    return report_pct(v)


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


def attack_table(specs: Sequence[AttackSpec], atk: dict[str, dict[str, Any]]) -> Table:
    """One row per attack: parameters, images attacked, successes, norms, test positives."""
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


def _setting_cell(r: dict[str, Any] | None, metric: str) -> str:
    if r is None:
        return "n/a"
    if r.get("error"):
        return "error"
    v = r.get(metric)
    return "–" if v is None else f"{pct(v):.1f}"


def settings_table(records: list[dict[str, Any]], detectors: list[str], budgets: Sequence[str],
                   kappas: Sequence[float], metric: str, caption: str) -> Table:
    """One row per detector: ``metric`` for each attack of ``budgets`` (oblivious | adaptive), then
    the plain C&W and each ``cw_kappa`` setting of the κ sweep (when the records hold one)."""
    obl, ada = table_rows(records), table_rows(records, "adaptive")
    cw = next((r["attack"] for r in records if r["kind"] == "table" and str(r.get("setting", "")).startswith(
        "cw_kappa=")), None)
    cols: list[str] = []
    for a in budgets:
        cols += [f"{a} oblivious", f"{a} adaptive"]
    if cw is not None:
        cols += [f"{cw} κ=0"] + [f"{cw} κ={k:g}" for k in kappas]
    rows = []
    for d in detectors:
        row: list[Any] = [DETECTOR_LABELS.get(d, d)]
        for a in budgets:
            row += [_setting_cell(obl.get((d, a)), metric), _setting_cell(ada.get((d, a)), metric)]
        if cw is not None:
            row.append(_setting_cell(obl.get((d, cw)), metric))
            row += [_setting_cell(table_rows(records, f"cw_kappa={k:g}").get((d, cw)), metric) for k in kappas]
        rows.append(row)
    return Table(["detector", *cols], rows, caption=caption)


def errors_paragraph(records: list[dict[str, Any]]) -> list[Block]:
    """A paragraph naming the detectors whose cells hold an error instead of numbers."""
    errs = sorted({(r["detector"], r["error"]) for r in records if r["kind"] == "table" and r.get("error")})
    if not errs:
        return []
    return [Paragraph("Cells without numbers: " + "; ".join(f"{d}: {e}" for d, e in errs))]


def auroc_heatmap(rows: dict[str, list[dict[str, Any] | None]], attacks: list[str]) -> Any:
    """Two heatmaps, AUROC % and the noise control, one row per detector, one column per attack."""
    import matplotlib.pyplot as plt
    import numpy as np

    narrow = len(attacks) < 4  # titles on two lines, and a minimum width, for one to three columns
    sep = "\n" if narrow else " "
    fig, axes = plt.subplots(1, 2, figsize=(2.6 + 1.3 * max(len(attacks), 2), 0.9 + 0.42 * len(rows)), sharey=True)
    for ax, metric, title in zip(axes, ("auroc", "auroc_noise"), (f"AUROC %:{sep}adversarial vs clean",
                                                                    f"control:{sep}adversarial vs noise"), strict=True):
        vals = np.array([[np.nan if c is None or c.get(metric) is None else pct(c[metric]) for c in row]
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


def main_detectors(cfg: DetectionConfig, has_decoder: bool) -> list[str]:
    """The detectors evaluated on the main network: reconstruction only where it has a decoder."""
    return [d for d in cfg.detectors if d != "reconstruction" or has_decoder]


def reconstruction_cfg(cfg: Any, has_decoder: bool) -> Any:
    """The config of the reconstruction run on ``cfg.reconstruction_arch``, if there is one."""
    if "reconstruction" in cfg.detectors and not has_decoder and cfg.reconstruction_arch:
        return dataclasses.replace(cfg, arch=cfg.reconstruction_arch)
    return None
