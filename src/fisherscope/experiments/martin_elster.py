"""Martin & Elster 2019 on MNIST: Figure 1 and Figure 2 (``configs/martin-elster-*.toml``).

Protocol (also in docs/RESULTS.md):

- Model ``mnist_cnn`` at the paper's operating point (preset ``mnist_cnn@paper``: one
  epoch, about 98.5% test accuracy). Attack: MI-FGSM, L∞ ε = 0.1, T = 10, μ = 1.0
  (α = ε / T), untargeted on the true label, on every test image.
- Detection (Fig. 1): trace (eq. 4), quadratic form (eq. 5) and normalised form (eq. 8)
  on clean images (negatives) and their MI-FGSM versions (positives). Paper protocol
  (§4.1): every attacked image is a positive, failed attacks included. Beside it:
  successful attacks only (pairs whose clean image is classified correctly and whose
  adversarial is not). The forms are computed exactly (forward mode) and with the
  paper's eq. 9 forward difference (ε′ = 1e-4, float32) as the paper did.
- ROC on ``n_roc`` (400) and histogram on ``n_hist`` (1000) random test images; the ROC
  images are the first ``n_roc`` of the same random draw.
- FIS maps (Fig. 2): two-class reduction (eq. 7, the authors' code default) with the
  normalised direction v̄ = ∇θ log p(ŷ|x) / ‖·‖ at the same image, exact forward mode.

Each kind is cells (model, attack and scores, maps; arrays stored as artifacts) and a pure
report over the stored results, so ``fisherscope report RUN`` re-renders a finished run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..attacks import MIFGSM
from ..evaluation import detection_metrics, fooling_ratio
from ..fisher import fisher_sensitivity, param_fisher_form, param_fisher_trace
from ..plotting_maps import fis_figure, roc_figure, saliency_figure, score_histogram
from .base import Context, register
from .common import inspect_maps, load_split, predict, saliency_rows, trained_model
from .config import ExperimentConfig
from .report import Block, Figure, Heading, Paragraph, Table, fmt_number, pct, save_figure
from .runner import Artifact, Results, Run

__all__ = ["MartinElsterConfig", "fig1_cells", "fig1_report", "fig2_cells", "fig2_report", "fisher_scores"]

#: score name -> (label, equation)
SCORES: dict[str, tuple[str, str]] = {
    "trace": ("trace tr F", "eq. 4"),
    "form": ("form vᵀFv", "eq. 5"),
    "nform": ("normalised form v̄ᵀFv̄", "eq. 8"),
    "trace_2c": ("two-class trace", "eqs. 4 + 7"),
    "form_fd": ("form vᵀFv, finite difference", "eqs. 5 + 9"),
    "nform_fd": ("normalised form, finite difference", "eqs. 8 + 9"),
    "softmax": ("baseline: 1 − max softmax", "Hendrycks & Gimpel"),
}

#: Random test images among which Figure 2 picks its rows.
N_CANDIDATES = 256


@dataclass(frozen=True)
class MartinElsterConfig(ExperimentConfig):
    """Shared config of the Martin & Elster reproductions (each kind reads what it needs)."""

    arch: str = "mnist_cnn"
    preset: str | None = "mnist_cnn@paper"
    eps: float = 0.1
    steps: int = 10
    decay: float = 1.0
    n_attack: int | None = None  # test images attacked for the accuracy (None: all)
    attack_batch: int = 500
    n_roc: int = 400
    n_hist: int = 1000
    score_batch: int = 50
    fd_eps: float = 1e-4
    fis_reduction: str = "two_class"
    n_rows: int = 4  # Figure 2 rows
    n_failed_rows: int = 1  # of which failed attacks
    n_stats: int = 200  # images for the FIS magnitude statistics
    paper: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------- cells and their specs
#
# Each function below returns a cell's (name, spec); the cells and the reports both call
# them, so a report finds exactly the cells its config computed.

Cell = tuple[str, dict[str, Any]]


def _model_spec(cfg: MartinElsterConfig) -> dict[str, Any]:
    return {"arch": cfg.arch, "dataset": cfg.dataset, "preset": cfg.preset, "seed": cfg.seed}


def _attack_spec(cfg: MartinElsterConfig) -> dict[str, Any]:
    return {**_model_spec(cfg), "attack": "mifgsm", "eps": cfg.eps, "steps": cfg.steps, "decay": cfg.decay}


def model_cell(cfg: MartinElsterConfig) -> Cell:
    """The trained model's accuracy, size, checkpoint and the test split's size."""
    return "model", _model_spec(cfg)


def attack_cell(cfg: MartinElsterConfig, start: int, stop: int) -> Cell:
    """Accuracy under attack on test images ``start:stop``."""
    return f"attack/{start:05d}", {**_attack_spec(cfg), "start": start, "stop": stop}


def attack_chunks(cfg: MartinElsterConfig, n_test: int) -> list[tuple[int, int]]:
    """The (start, stop) chunks of the attacked test images (the first ``n_attack``)."""
    n_att = n_test if cfg.n_attack is None else min(cfg.n_attack, n_test)
    return [(start, min(start + cfg.attack_batch, n_att)) for start in range(0, n_att, cfg.attack_batch)]


def subset_cell(cfg: MartinElsterConfig) -> Cell:
    """The random test images of the histogram (their first ``n_roc`` are the ROC's)."""
    return "subset", {"dataset": cfg.dataset, "n_hist": cfg.n_hist, "seed": cfg.seed}


def scores_cell(cfg: MartinElsterConfig, start: int) -> Cell:
    """Fig. 1's scores of subset images ``start:start + score_batch``, clean and attacked."""
    return f"scores/{start:05d}", {**_attack_spec(cfg), "n_hist": cfg.n_hist, "score_batch": cfg.score_batch,
                                   "start": start, "fd_eps": cfg.fd_eps}


def rows_cell(cfg: MartinElsterConfig) -> Cell:
    """Figure 2's test images: successful attacks, then ``n_failed_rows`` failed ones."""
    return "rows", {**_attack_spec(cfg), "n_candidates": N_CANDIDATES, "n_rows": cfg.n_rows,
                    "n_failed_rows": cfg.n_failed_rows}


def maps_cell(cfg: MartinElsterConfig) -> Cell:
    """Figure 2's images, adversarials, FIS and saliency maps (artifacts)."""
    return "maps", {**rows_cell(cfg)[1], "fis_reduction": cfg.fis_reduction}


def stats_cell(cfg: MartinElsterConfig) -> Cell:
    """FIS magnitude statistics on ``n_stats`` random test images."""
    return "fis_stats", {**_attack_spec(cfg), "n_stats": cfg.n_stats, "fis_reduction": cfg.fis_reduction}


# ------------------------------------------------------------------------- compute


def _attack(cfg: MartinElsterConfig) -> MIFGSM:
    return MIFGSM(eps=cfg.eps, steps=cfg.steps, decay=cfg.decay)


def _setup(cfg: MartinElsterConfig, ctx: Context) -> tuple[Any, Any]:
    trained = trained_model(cfg.arch, cfg.dataset, ctx, seed=cfg.seed, preset=cfg.preset)
    return trained, load_split(cfg.dataset, "test", ctx)


def _draw(n_total: int, n: int, seed: int) -> torch.Tensor:
    """A seeded random permutation's first n indices (not sorted: any prefix is random too)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n]


def _measure_model(run: Run, cfg: MartinElsterConfig, trained: Any, test: Any) -> None:
    def measure() -> dict[str, Any]:
        pred = predict(trained.model, test.x)
        return {
            "test_accuracy": float((pred == test.y.numpy()).mean()),
            "train_accuracy": trained.metrics["train_accuracy"],
            "checkpoint_key": trained.key,
            "n_parameters": sum(p.numel() for p in trained.model.parameters()),
            "n_test": len(test),
        }

    name, spec = model_cell(cfg)
    run.cell(name, measure, spec=spec)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    if a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------------- Figure 1


def fisher_scores(model: torch.nn.Module, x: torch.Tensor, fd_eps: float) -> dict[str, list[float]]:
    """The detection scores of Fig. 1 for a batch (see :data:`SCORES`), plus the softmax baseline."""
    out = {
        "trace": param_fisher_trace(model, x, "full"),
        "trace_2c": param_fisher_trace(model, x, "two_class"),
        "form": param_fisher_form(model, x),
        "nform": param_fisher_form(model, x, normalized=True),
        "form_fd": param_fisher_form(model, x, method="finite_difference", fd_eps=fd_eps),
        "nform_fd": param_fisher_form(model, x, normalized=True, method="finite_difference", fd_eps=fd_eps),
    }
    with torch.no_grad():
        z = model(x).double()
    # 1 − p̂ = exp(logsumexp of the other logits − logsumexp of all), exact for confident inputs
    others = z.masked_fill(torch.nn.functional.one_hot(z.argmax(1), z.shape[1]).bool(), -torch.inf)
    out["softmax"] = torch.exp(others.logsumexp(1) - z.logsumexp(1))
    return {k: v.double().tolist() for k, v in out.items()}


def fig1_cells(run: Run, cfg: MartinElsterConfig, ctx: Context) -> None:
    """Accuracy under MI-FGSM on the test set (in resumable chunks) and the Fig. 1 scores of
    the random subset, clean and adversarial."""
    trained, test = _setup(cfg, ctx)
    model = trained.model.eval()
    _measure_model(run, cfg, trained, test)
    attack = _attack(cfg)

    for start, stop in attack_chunks(cfg, len(test)):
        def measure_attack(start: int = start, stop: int = stop) -> dict[str, Any]:
            x, y = test.x[start:stop], test.y[start:stop]
            res = attack.run(model, x, y)
            fr = fooling_ratio(model, x, res, y)
            return {"n": stop - start, "clean_correct": fr.n_correct, "adv_correct": int((~res.success).sum())}

        name, spec = attack_cell(cfg, start, stop)
        run.cell(name, measure_attack, spec=spec)

    idx = _draw(len(test), cfg.n_hist, cfg.seed)
    name, spec = subset_cell(cfg)
    run.cell(name, lambda: {"indices": idx.tolist()}, spec=spec)
    for start in range(0, len(idx), cfg.score_batch):
        sel = idx[start : start + cfg.score_batch]

        def measure_scores(sel: torch.Tensor = sel) -> dict[str, Any]:
            x, y = test.x[sel], test.y[sel]
            res = attack.run(model, x, y)
            with torch.no_grad():
                pred = model(x).argmax(1)
            out: dict[str, Any] = {"y": y.tolist(), "pred_clean": pred.tolist(),
                                   "pred_adv": res.logits_adv.argmax(1).tolist(),
                                   "linf": res.norms["linf"].tolist()}
            for tag, xs in (("clean", x), ("adv", res.x_adv)):
                for k, v in fisher_scores(model, xs, cfg.fd_eps).items():
                    out[f"{k}/{tag}"] = v
            return out

        name, spec = scores_cell(cfg, start)
        run.cell(name, measure_scores, spec=spec)


def _finite(a: np.ndarray) -> np.ndarray:
    return a[np.isfinite(a)]


def _auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """AUROC of the finite scores (adversarial positive); NaN when a class is empty."""
    return detection_metrics(_finite(neg), _finite(pos), n_bootstrap=0).auroc


def _roc(neg: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the ROC curve of the finite scores, for the figure."""
    from sklearn.metrics import roc_curve

    neg, pos = _finite(neg), _finite(pos)
    fpr, tpr, _ = roc_curve(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos])
    return fpr, tpr


def fig1_report(cfg: MartinElsterConfig, results: Results) -> list[Block]:
    """Fig. 1 from the stored cells: accuracy, AUC table, ROC, histograms, rank correlations."""
    m = results.cell(*model_cell(cfg))
    chunks = attack_chunks(cfg, m["n_test"])
    n_att = chunks[-1][1] if chunks else 0
    adv_ok = sum(results.cell(*attack_cell(cfg, start, stop))["adv_correct"] for start, stop in chunks)
    idx = results.cell(*subset_cell(cfg))["indices"]
    rec: dict[str, list[Any]] = {}
    for start in range(0, len(idx), cfg.score_batch):
        for k, v in results.cell(*scores_cell(cfg, start)).items():
            rec.setdefault(k, []).extend(v)
    arr = {k: np.asarray(v, dtype=float) for k, v in rec.items()}
    y, pc, pa = arr["y"], arr["pred_clean"], arr["pred_adv"]
    success = (pc == y) & (pa != y)

    # AUCs: paper protocol (every attacked image positive) and successful attacks only
    rows, curves, curves_fd = [], {}, {}
    paper_auc = cfg.paper.get("auc", {})
    s400 = success[: cfg.n_roc]
    for k, (label, eq) in SCORES.items():
        neg, pos = arr[f"{k}/clean"], arr[f"{k}/adv"]
        a400 = _auroc(neg[: cfg.n_roc], pos[: cfg.n_roc])
        a1000 = _auroc(neg, pos)
        a_succ = _auroc(neg[: cfg.n_roc][s400], pos[: cfg.n_roc][s400])
        a_succ_all = _auroc(neg[success], pos[success])
        paper = paper_auc.get(k.replace("_fd", ""), math.nan)
        rows.append([label, eq, a400, paper, a_succ, a1000, a_succ_all])
        if k in ("trace", "form", "nform"):
            curves[label] = (*_roc(neg[: cfg.n_roc], pos[: cfg.n_roc]), a400)
        if k in ("form_fd", "nform_fd"):
            curves_fd[label] = (*_roc(neg[: cfg.n_roc], pos[: cfg.n_roc]), a400)
    roc_path = save_figure(
        roc_figure({**curves, **curves_fd}, title=f"MNIST, MI-FGSM ε={cfg.eps}, {cfg.n_roc} test images",
                   styles={lbl: "--" for lbl in curves_fd}),
        results.figures_dir / "fig1_roc.png",
    )
    hist_path = save_figure(
        score_histogram(arr["nform/clean"], arr["nform/adv"], xlabel="v̄ᵀFv̄ (exact)",
                        title=f"{cfg.n_hist} MNIST test images"),
        results.figures_dir / "fig1_hist_nform.png",
    )
    hist_fd_path = save_figure(
        score_histogram(arr["nform_fd/clean"], arr["nform_fd/adv"], xlabel=f"v̄ᵀFv̄ (eq. 9, ε′={cfg.fd_eps:g}, float32)",
                        title=f"{cfg.n_hist} MNIST test images"),
        results.figures_dir / "fig1_hist_nform_fd.png",
    )
    # how far the paper's finite difference is from the exact form (float32)
    fd_err = {}
    for k in ("form", "nform"):
        for tag in ("clean", "adv"):
            ex, fd = arr[f"{k}/{tag}"], arr[f"{k}_fd/{tag}"]
            fd_err[f"{k}/{tag}"] = float(np.median(np.abs(fd - ex) / np.abs(ex)))
    # how much of each score is the softmax confidence: Spearman rank correlation with 1 − p̂
    from scipy.stats import spearmanr

    rank_rows = []
    for k, (label, _) in SCORES.items():
        if k == "softmax":
            continue
        both = [spearmanr(arr[f"{k}/{t}"], arr[f"softmax/{t}"]).statistic for t in ("clean", "adv")]
        pooled = spearmanr(np.concatenate([arr[f"{k}/clean"], arr[f"{k}/adv"]]),
                           np.concatenate([arr["softmax/clean"], arr["softmax/adv"]])).statistic
        rank_rows.append([label, float(both[0]), float(both[1]), float(pooled)])
    acc_adv = adv_ok / n_att
    paper_acc = cfg.paper.get("accuracy", {})
    return [
        Heading("Martin & Elster 2019, Figure 1 (MNIST)"),
        Paragraph(
            f"Model `{cfg.arch}` (preset `{cfg.preset}`, {m['n_parameters']:,} parameters, checkpoint "
            f"`{m['checkpoint_key'][:12]}`), seed {cfg.seed}. Attack: MI-FGSM, L∞ ε = {cfg.eps}, T = {cfg.steps}, "
            f"μ = {cfg.decay}, untargeted on the true label, {n_att} test images."
        ),
        Table(
            ["quantity", "ours", "paper"],
            [
                ["test accuracy (clean)", m["test_accuracy"], paper_acc.get("clean", math.nan)],
                ["train accuracy", m["train_accuracy"], paper_acc.get("train", math.nan)],
                [f"test accuracy under MI-FGSM ε={cfg.eps}", acc_adv, paper_acc.get("adversarial", math.nan)],
                [f"attack success on the {cfg.n_hist}-image subset (clean correct, adversarial wrong)",
                 float(success.mean()), math.nan],
            ],
            caption="Accuracy",
        ),
        Table(
            ["score", "equation", f"AUC, {cfg.n_roc} images (paper protocol)", "paper",
             f"AUC, {cfg.n_roc} images, successful attacks only", f"AUC, {cfg.n_hist} images",
             f"AUC, {cfg.n_hist} images, successful only"],
            rows,
            caption=("Detection AUC. Paper protocol: clean images negative, every attacked image positive "
                     "(failed attacks included). 'Successful only': pairs with a correctly classified clean "
                     "image whose adversarial is misclassified. The paper computed the forms with eq. 9 "
                     f"(ε′ = {cfg.fd_eps:g}); its numbers stand in the finite-difference rows."),
        ),
        Figure(roc_path, f"ROC on {cfg.n_roc} random test images (paper protocol); solid: exact, dashed: eq. 9."),
        Figure(hist_path, f"Normalised form v̄ᵀF_θv̄ (exact) on {cfg.n_hist} random test images: clean (green) "
               "and MI-FGSM (red), log10 scale (Martin & Elster Fig. 1 left)."),
        Figure(hist_fd_path, "The same with the paper's finite difference (eq. 9) in float32."),
        Table(["score", "clean", "adversarial", "clean and adversarial pooled"], rank_rows,
              caption=f"Spearman rank correlation with the softmax baseline 1 − p̂ on the {cfg.n_hist} images"),
        Table(["quantity", "median abs(eq. 9 − exact) / exact"], [[k, v] for k, v in fd_err.items()],
              caption=f"Finite difference (ε′ = {cfg.fd_eps:g}, float32) against the exact forward-mode form"),
    ]


register("martin_elster_fig1", MartinElsterConfig,
         "Martin & Elster Fig. 1: MI-FGSM on MNIST, ROC/AUC of Fisher trace and forms, histogram.",
         report=fig1_report)(fig1_cells)


# ---------------------------------------------------------------------- Figure 2


def fig2_cells(run: Run, cfg: MartinElsterConfig, ctx: Context) -> None:
    """Figure 2's rows (images, adversarials, FIS and saliency maps) and the FIS statistics."""
    trained, test = _setup(cfg, ctx)
    model = trained.model.eval()
    _measure_model(run, cfg, trained, test)
    attack = _attack(cfg)

    def pick() -> dict[str, Any]:
        cand = _draw(len(test), N_CANDIDATES, cfg.seed + 1)
        x, y = test.x[cand], test.y[cand]
        fr = fooling_ratio(model, x, attack.run(model, x, y), y)
        succ = [int(i) for i in cand[fr.fooled]]
        fail = [int(i) for i in cand[fr.correct & ~fr.fooled]]
        n_fail = min(cfg.n_failed_rows, len(fail))
        return {"indices": succ[: cfg.n_rows - n_fail] + fail[:n_fail]}

    name, spec = rows_cell(cfg)
    rows = run.cell(name, pick, spec=spec)["indices"]

    def measure_maps() -> dict[str, Any]:
        sel = torch.tensor(rows)
        x, y = test.x[sel], test.y[sel]
        res = attack.run(model, x, y)
        maps = inspect_maps(model, x, res.x_adv, cfg.fis_reduction)
        other = "full" if cfg.fis_reduction == "two_class" else "two_class"
        maps_other = {f"fis_{other}/{t}": fisher_sensitivity(model, xs, reduction=other)  # type: ignore[arg-type]
                      for t, xs in (("clean", x), ("adv", res.x_adv))}
        with torch.no_grad():
            pc = model(x).argmax(1)
        out: dict[str, Any] = {"y": y.tolist(), "pred_clean": pc.tolist(),
                               "pred_adv": res.logits_adv.argmax(1).tolist(),
                               "x": Artifact(x), "x_adv": Artifact(res.x_adv), "other_reduction": other}
        out.update({k: Artifact(v) for k, v in {**maps, **maps_other}.items()})
        return out

    name, spec = maps_cell(cfg)
    run.cell(name, measure_maps, spec=spec)

    def measure_stats() -> dict[str, Any]:
        sel = _draw(len(test), cfg.n_stats, cfg.seed + 2)
        x, y = test.x[sel], test.y[sel]
        res = attack.run(model, x, y)
        fr = fooling_ratio(model, x, res, y)
        fa = fisher_sensitivity(model, res.x_adv, reduction=cfg.fis_reduction).abs().flatten(1)  # type: ignore[arg-type]
        fc = fisher_sensitivity(model, x, reduction=cfg.fis_reduction).abs().flatten(1)  # type: ignore[arg-type]
        diff = (res.x_adv - x).abs().flatten(1)
        corr = [_corr(fa[i].numpy(), diff[i].numpy()) for i in range(len(sel))]
        return {"max_ratio": (fa.amax(1) / fc.amax(1)).tolist(), "sum_ratio": (fa.sum(1) / fc.sum(1)).tolist(),
                "success": fr.fooled.tolist(), "clean_correct": fr.correct.tolist(), "corr_fis_diff": corr}

    name, spec = stats_cell(cfg)
    run.cell(name, measure_stats, spec=spec)


def fig2_report(cfg: MartinElsterConfig, results: Results) -> list[Block]:
    """Fig. 2 from the stored cells: FIS figures, saliency grid, per-row and overall statistics."""
    m = results.cell(*model_cell(cfg))
    r = results.cell(*maps_cell(cfg))
    st = results.cell(*stats_cell(cfg))
    arr = {k: np.asarray(v, dtype=float) for k, v in r.items() if k not in ("other_reduction",)}
    x, xa = arr["x"], arr["x_adv"]
    titles = [f"true {int(t)}, adv pred {int(p)} ({'fooled' if p != t else 'not fooled'})"
              for t, p in zip(arr["y"], arr["pred_adv"], strict=True)]
    fig2a = save_figure(fis_figure(xa, arr["fis/adv"], x, arr["fis/clean"], shared_scale=True, row_titles=titles,
                                   suptitle="FIS, same colour scale for adversarial and clean (cf. Fig. 2a)"),
                        results.figures_dir / "fig2a_fis_same_scale.png")
    fig2b = save_figure(fis_figure(xa, arr["fis/adv"], x, arr["fis/clean"], shared_scale=False, row_titles=titles,
                                   suptitle="FIS, separate colour scales (cf. Fig. 2b)"),
                        results.figures_dir / "fig2b_fis_own_scale.png")
    t_clean = [f"clean, pred {int(p)}" for p in arr["pred_clean"]]
    t_adv = [f"adv, pred {int(p)}" for p in arr["pred_adv"]]
    images, cols, stitles = saliency_rows(x, xa, arr, t_clean, t_adv)
    sal = save_figure(saliency_figure(images, cols, row_titles=stitles,
                                      suptitle="Signed maps (red +, blue −, each on its own symmetric scale)"),
                      results.figures_dir / "fig2_saliency.png")
    other = r["other_reduction"]
    per_row = []
    for i in range(len(x)):
        ma, mc = np.abs(arr["fis/adv"][i]).max(), np.abs(arr["fis/clean"][i]).max()
        per_row.append([titles[i], float(ma), float(mc), float(ma / mc),
                        _corr(arr["fis/adv"][i], arr[f"fis_{other}/adv"][i]),
                        _corr(arr["fis/clean"][i], arr[f"fis_{other}/clean"][i])])
    ratio = np.asarray(st["max_ratio"])
    succ = np.asarray(st["success"], dtype=bool)
    corr = np.asarray(st["corr_fis_diff"], dtype=float)
    clean_ok = np.asarray(st["clean_correct"], dtype=bool)

    def stats_row(label: str, mask: np.ndarray) -> list[Any]:
        if not mask.any():
            return [label, 0, math.nan, math.nan, math.nan]
        return [label, int(mask.sum()), float(np.median(ratio[mask])), float((ratio[mask] > 1).mean()),
                float(np.nanmedian(corr[mask]))]

    stats_rows = [
        stats_row("all attacked images", np.ones_like(succ)),
        stats_row("successful attacks", succ),
        stats_row("failed attacks (clean correct)", ~succ & clean_ok),
    ]
    return [
        Heading("Martin & Elster 2019, Figure 2 (MNIST): Fisher information sensitivity"),
        Paragraph(
            f"Model `{cfg.arch}` (preset `{cfg.preset}`, test accuracy {fmt_number(pct(m['test_accuracy']))}%), MI-FGSM "
            f"ε = {cfg.eps}, T = {cfg.steps}, μ = {cfg.decay}. FIS (eq. 13) with the {cfg.fis_reduction.replace('_', '-')} "
            "reduction and the normalised direction v̄ = ∇θ log p(ŷ|x)/‖·‖ at the same image, exact (forward "
            "mode); |FIS| is drawn over the image the model saw. Saliency maps explain each image's own "
            "predicted class."
        ),
        Figure(fig2a, "FIS of the adversarial and the clean image on the adversarial map's colour scale; "
               "rightmost: x_adv − x."),
        Figure(fig2b, "The same rows, each FIS map on its own colour scale."),
        Table(["row", "max abs FIS adv", "max abs FIS clean", "ratio", f"corr. with {other} FIS (adv)",
               f"corr. with {other} FIS (clean)"], per_row,
              caption=f"Per row: magnitudes and the correlation between the {cfg.fis_reduction} and {other} maps"),
        Table(["images", "n", "median of max abs FIS adv / max abs FIS clean", "fraction with ratio > 1",
               "median corr(abs FIS adv, abs(x_adv − x))"], stats_rows,
              caption=f"{cfg.n_stats} random test images: is the FIS larger on the adversarial image (paper §4.1)?"),
        Figure(sal, "Clean and adversarial image of each row with the gradient, guided-backprop, Hendrycks & "
               "Gimpel saliency and the (signed) FIS."),
    ]


register("martin_elster_fig2", MartinElsterConfig,
         "Martin & Elster Fig. 2: FIS maps of MI-FGSM adversarials on MNIST, beside saliency maps.",
         report=fig2_report)(fig2_cells)
