"""Zhao et al. 2019 on MNIST (Table 2 also on CIFAR-10 (JPEG q75 copy)): Table 2 and Figures 1–4(a)
(``configs/zhao-*.toml``).

Protocol notes (also in docs/RESULTS.md):

- Attacks run on test images the model classifies correctly; the fooling rate is the
  fraction of those misclassified after the attack (the paper does not say how it
  treats already-misclassified images; counting them as fooled at budget 0 would add
  the model's test error to every rate).
- Budgets are L2 norms of the perturbation before clipping to [0, 1] (``eps``); the
  norm actually applied after clipping is reported beside it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..attacks import ATTACKS, BIM, FGM, OSSA, IterativeOSSA, IterativeOTCM
from ..data.registry import dataset_label
from ..evaluation import least_perturbation
from ..fisher import fisher_spectrum
from ..plotting import image_grid
from .base import Context, register
from .common import in_batches, predict
from .detection_kit import model_cell, record_model
from .report import Block, Figure, Heading, Paragraph, Table, pct, save_figure
from .runner import Artifact, Results, Run
from .zhao_kit import ZhaoConfig, data_spec, model_blurb, zhao_sources

__all__ = ["ZhaoConfig"]


def _one_step(key: str, eps: float = 1.0) -> Any:
    cls: Any = ATTACKS[key]
    return cls(eps=eps)


def _facts(results: Results, cfg: ZhaoConfig) -> dict[str, Any]:
    return results.cell(*model_cell(cfg))


# ------------------------------------------------------------------- Table 2

#: The column of the paper's Table 2 a dataset reproduces (the JPEG copy stands in for CIFAR-10).
_TABLE2_COLUMNS = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar10_jpeg": "CIFAR-10"}


def _table2_cell(cfg: ZhaoConfig, key: str) -> tuple[str, dict[str, Any]]:
    return f"table2/{key}", {**data_spec(cfg), "batch_size": cfg.batch_size, "hi": cfg.hi, "tol": cfg.tol,
                             "attack": key}


def table2_cells(run: Run, cfg: ZhaoConfig, ctx: Context) -> None:
    trained, x, y, _ = zhao_sources(cfg, ctx)
    record_model(run, cfg, trained, len(y))
    model = trained.model
    for key in cfg.attacks:

        def measure(key: str = key) -> dict[str, Any]:
            attack = _one_step(key)
            lp = in_batches(
                lambda xb, yb: _lp_fields(least_perturbation(attack, model, xb, yb, hi=cfg.hi, tol=cfg.tol)),
                x, y, batch_size=cfg.batch_size,
            )
            fooled, correct = lp["fooled"].bool(), lp["correct"].bool()
            eps = lp["eps"]
            return {
                "fooling_rate": float(fooled.sum() / correct.sum()),
                "fooling_rate_all": float((fooled | ~correct).float().mean()),
                "mean_least_l2": float(eps[fooled].mean()),
                "median_least_l2": float(eps[fooled].median()),
                "mean_applied_l2": float(lp["applied_l2"][fooled].mean()),
                "n_correct": int(correct.sum()),
                "n_fooled": int(fooled.sum()),
                "n": int(len(y)),
            }

        name, spec = _table2_cell(cfg, key)
        run.cell(name, measure, spec=spec)


def table2_report(cfg: ZhaoConfig, results: Results) -> list[Block]:
    facts = _facts(results, cfg)
    rows = []
    for key in cfg.attacks:
        r = results.cell(*_table2_cell(cfg, key))
        paper = cfg.paper.get(key, {})
        rows.append([key.upper(), r["mean_least_l2"], pct(r["fooling_rate"]), r["mean_applied_l2"],
                     pct(r["fooling_rate_all"]), paper.get("mean", math.nan), paper.get("rate", math.nan)])
    column = _TABLE2_COLUMNS.get(cfg.dataset)
    label = dataset_label(cfg.dataset)
    if column is None:
        heading = f"Zhao et al. Table 2 on {label}"
    else:
        heading = f"Zhao et al. Table 2 ({column} column)" + ("" if label == column else f" on {label}")
    caveat = ([] if column is None or label == column else [Paragraph(
        f"The 'paper' columns are the paper's {column} numbers; the others are measured on {label}, "
        f"not on {column} itself.")])
    return [
        Heading(heading),
        model_blurb(cfg, facts, facts["n_images"]),
        *caveat,
        Paragraph(
            f"Per-sample binary search of the least L2 budget in [0, {cfg.hi}] (tolerance {cfg.tol}) "
            "on correctly classified test images; the mean is over the fooled ones only. "
            "'rate incl. misclassified' counts the model's own errors as fooled."
        ),
        Table(["attack", "mean least L2", "fooling rate %", "mean applied L2 (after clip)",
               "rate incl. misclassified %", "paper mean", "paper rate %"], rows),
    ]


register("zhao_table2", ZhaoConfig, "Zhao Table 2: fooling rate and mean least L2 perturbation, FGM vs OSSA.",
         report=table2_report)(table2_cells)


def _lp_fields(lp: Any) -> dict[str, torch.Tensor]:
    return {"eps": lp.eps, "applied_l2": lp.applied_l2, "fooled": lp.fooled.float(), "correct": lp.correct.float()}


# ------------------------------------------------------------------- Figure 1


def _figure1_cell(cfg: ZhaoConfig) -> tuple[str, dict[str, Any]]:
    return "figure1", {**data_spec(cfg), "eps": cfg.eps, "n_examples": cfg.n_examples}


def figure1_cells(run: Run, cfg: ZhaoConfig, ctx: Context) -> None:
    trained, x, y, test = zhao_sources(cfg, ctx)
    record_model(run, cfg, trained, len(y))
    model = trained.model
    x, y = x[: cfg.n_examples], y[: cfg.n_examples]

    def measure() -> dict[str, Any]:
        res = OSSA(eps=cfg.eps).run(model, x, y)
        return {
            "clean_pred": predict(model, x).tolist(),
            "adv_pred": res.logits_adv.argmax(1).tolist(),
            "applied_l2": res.norms["l2"].tolist(),
            "success_rate": float(res.success.float().mean()),
            # the images of the figure: the clean ones and this run's adversarials
            "x": Artifact(x),
            "x_adv": Artifact(res.x_adv),
            "classes": [str(c) for c in test.classes],
        }

    name, spec = _figure1_cell(cfg)
    run.cell(name, measure, spec=spec)


def figure1_report(cfg: ZhaoConfig, results: Results) -> list[Block]:
    facts = _facts(results, cfg)
    r = results.cell(*_figure1_cell(cfg))
    classes = r["classes"]
    x, x_adv = torch.as_tensor(r["x"]), torch.as_tensor(r["x_adv"])
    imgs = torch.cat([x, x_adv])
    titles = [f"{classes[p]}" for p in r["clean_pred"]] + [
        f"{classes[p]} (L2 {d:.2f})" for p, d in zip(r["adv_pred"], r["applied_l2"], strict=True)
    ]
    colors = ["black"] * len(x) + ["red" if a != c else "black" for a, c in zip(r["adv_pred"], r["clean_pred"], strict=True)]
    fig = image_grid(imgs, titles, title_colors=colors, ncols=min(8, len(x)),
                     suptitle=f"Top: clean with prediction. Bottom: OSSA, L2 budget {cfg.eps} (red: prediction changed)")
    path = save_figure(fig, results.figures_dir / "zhao_figure1.png")
    return [
        Heading("Zhao et al. Figure 1: OSSA adversarial examples"),
        model_blurb(cfg, facts, len(x)),
        Paragraph(f"One OSSA step with L2 budget {cfg.eps}; {100 * r['success_rate']:.1f}% of these change the prediction."),
        Figure(path, "Clean images (top rows) and their OSSA adversarials (bottom rows), drawn as the model sees them."),
    ]


register("zhao_figure1", ZhaoConfig, "Zhao Figure 1: a grid of OSSA adversarial examples with predictions.",
         report=figure1_report)(figure1_cells)


# ------------------------------------------------------------------- Figure 2


def _figure2_cells(cfg: ZhaoConfig) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every cell of Figure 2 (name, spec) by role, from the config alone."""
    base = {**data_spec(cfg), "batch_size": cfg.batch_size}
    steps = {**base, "step_size": cfg.step_size, "steps": cfg.steps}
    cells = {"attacked": ("figure2/attacked", data_spec(cfg))}
    for key in _figure2_keys(cfg):
        cells[f"a/{key}"] = (f"figure2a/{key}", {**base, "budgets": list(cfg.budgets), "attack": key})
    cells["b/ossa"] = ("figure2b/ossa_iterative", steps)
    cells["b/fgm"] = ("figure2b/fgm_iterative", steps)
    cells["b/otcm"] = ("figure2b/otcm_iterative", steps)
    return cells


def _figure2_keys(cfg: ZhaoConfig) -> list[str]:
    return [k for k in cfg.attacks if k in ATTACKS]


def _figure2_iterative(cfg: ZhaoConfig) -> list[str]:
    """The iterative variants Figure 2(b) shows: OSSA, and FGM / OTCM when (a) has them."""
    keys = _figure2_keys(cfg)
    return ["ossa", *[k for k in ("fgm", "otcm") if k in keys]]


def figure2_cells(run: Run, cfg: ZhaoConfig, ctx: Context) -> None:
    trained, x, y, _ = zhao_sources(cfg, ctx)
    record_model(run, cfg, trained, len(y))
    model = trained.model
    correct = torch.as_tensor(predict(model, x)) == y
    xc, yc = x[correct], y[correct]
    cells = _figure2_cells(cfg)
    name, spec = cells["attacked"]
    run.cell(name, lambda: {"n_correct": int(correct.sum())}, spec=spec)
    for key in _figure2_keys(cfg):

        def measure(key: str = key) -> dict[str, Any]:
            attack = _one_step(key)
            rates = []
            for eps in cfg.budgets:
                gen = torch.Generator().manual_seed(cfg.seed)  # OTCM's targets: the same draw at every budget
                succ = in_batches(lambda xb, yb, eps=eps, gen=gen: attack.run(model, xb, yb, eps=eps, generator=gen).success.float(),
                                  xc, yc, batch_size=cfg.batch_size)
                rates.append(float(succ.mean()))
            return {"budgets": list(cfg.budgets), "fooling_rate": rates}

        name, spec = cells[f"a/{key}"]
        run.cell(name, measure, spec=spec)

    def measure_iter() -> dict[str, Any]:
        attack = IterativeOSSA(step_size=cfg.step_size, steps=cfg.steps)
        per_step = in_batches(lambda xb, yb: attack.run(model, xb, yb).extras["success_per_step"].float(),
                              xc, yc, batch_size=cfg.batch_size)
        return {"fooling_rate": per_step.mean(0).tolist()}

    def measure_repeated(attack: Any) -> dict[str, Any]:
        # Iterative FGM (BIM-L2) / OTCM as Zhao run them: cfg.step_size per step, clipped to
        # the box after each step, no total budget; OTCM keeps one random wrong-class target.
        gen = torch.Generator().manual_seed(cfg.seed)
        per_step = in_batches(
            lambda xb, yb: attack.run(model, xb, yb, generator=gen).extras["success_per_step"].float(),
            xc, yc, batch_size=cfg.batch_size)
        return {"fooling_rate": per_step.mean(0).tolist()}

    iterative = {
        "ossa": measure_iter,
        "fgm": lambda: measure_repeated(BIM(norm="l2", eps=None, step_size=cfg.step_size, steps=cfg.steps)),
        "otcm": lambda: measure_repeated(IterativeOTCM(step_size=cfg.step_size, steps=cfg.steps)),
    }
    for key in _figure2_iterative(cfg):
        name, spec = cells[f"b/{key}"]
        run.cell(name, iterative[key], spec=spec)


def figure2_report(cfg: ZhaoConfig, results: Results) -> list[Block]:
    import matplotlib.pyplot as plt

    facts = _facts(results, cfg)
    cells = _figure2_cells(cfg)
    keys = _figure2_keys(cfg)
    curves = {key: results.cell(*cells[f"a/{key}"]) for key in keys}
    iterative = {key: results.cell(*cells[f"b/{key}"]) for key in _figure2_iterative(cfg)}
    n_correct = results.cell(*cells["attacked"])["n_correct"]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, c in curves.items():
        ax1.plot(c["budgets"], [100 * r for r in c["fooling_rate"]], marker=".", label=key.upper())
    ax1.set_xlabel("L2 perturbation budget")
    ax1.set_ylabel("fooling rate (%)")
    ax1.set_title("(a) one-step attacks")
    ax1.grid(alpha=0.3)
    ax1.legend()
    for key, c in iterative.items():
        steps = np.arange(1, len(c["fooling_rate"]) + 1)
        ax2.plot(steps, [100 * r for r in c["fooling_rate"]], label=f"iterative {key.upper()} ({cfg.step_size}/step)")
    ax2.set_xlabel("iterations")
    ax2.set_ylabel("fooling rate (%)")
    ax2.set_title("(b) iterative attacks")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.tight_layout()
    path = save_figure(fig, results.figures_dir / "zhao_figure2.png")
    rows = []
    for target in (0.5, 0.9):
        row: list[Any] = [f"budget for {int(100 * target)}% fooled"]
        for key in keys:
            rates = curves[key]["fooling_rate"]
            hit = next((b for b, r in zip(curves[key]["budgets"], rates, strict=True) if r >= target), math.nan)
            row.append(hit)
        rows.append(row)
    return [
        Heading("Zhao et al. Figure 2: fooling rate vs budget and vs iterations"),
        model_blurb(cfg, facts, facts["n_images"]),
        Paragraph(f"{n_correct} correctly classified images attacked; budgets are L2 norms before clipping."),
        Table(["", *[k.upper() for k in keys]], rows,
              caption="Smallest budget on the grid reaching the rate (paper, OSSA on MNIST: 90% at 2.1)"),
        Table(["iterations", *[f"iterative {k.upper()}" for k in iterative]],
              [[t, *[c["fooling_rate"][t - 1] for c in iterative.values()]]
               for t in (1, 5, 10, 20, 40, cfg.steps) if t <= cfg.steps],
              caption=f"(b) fooling rate after t steps of {cfg.step_size} (L2, clipped every step, no total budget)"),
        Figure(path, "(a) fooling rate vs L2 budget; (b) fooling rate vs iterations of the iterative variants."),
    ]


register("zhao_figure2", ZhaoConfig,
         "Zhao Figure 2: fooling rate vs budget (one-step) and vs iterations (iterative OSSA, FGM, OTCM).",
         report=figure2_report)(figure2_cells)


# ------------------------------------------------------------------- Figure 3


def _figure3_cell(cfg: ZhaoConfig) -> tuple[str, dict[str, Any]]:
    return "figure3", {**data_spec(cfg), "batch_size": cfg.batch_size, "hi": cfg.hi, "tol": cfg.tol}


def figure3_cells(run: Run, cfg: ZhaoConfig, ctx: Context) -> None:
    trained, x, y, _ = zhao_sources(cfg, ctx)
    record_model(run, cfg, trained, len(y))
    model = trained.model

    def measure() -> dict[str, Any]:
        out = in_batches(
            lambda xb, yb: {
                **_lp_fields(least_perturbation(OSSA(eps=1.0), model, xb, yb, hi=cfg.hi, tol=cfg.tol)),
                "lam": fisher_spectrum(model, xb, k=1).top_eigenvalue,
            },
            x, y, batch_size=cfg.batch_size,
        )
        fooled = out["fooled"].bool()
        lam, eps = out["lam"][fooled].double(), out["eps"][fooled].double()
        loglam = lam.clamp_min(1e-30).log10()
        r = float(np.corrcoef(loglam.numpy(), eps.numpy())[0, 1])
        return {"log10_lambda_max": loglam.tolist(), "least_l2": eps.tolist(), "pearson_r": r,
                "n_fooled": int(fooled.sum()), "n_correct": int(out["correct"].sum())}

    name, spec = _figure3_cell(cfg)
    run.cell(name, measure, spec=spec)


def figure3_report(cfg: ZhaoConfig, results: Results) -> list[Block]:
    import matplotlib.pyplot as plt

    facts = _facts(results, cfg)
    r = results.cell(*_figure3_cell(cfg))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(r["log10_lambda_max"], r["least_l2"], s=6, alpha=0.5)
    ax.set_xlabel("log10 λ_max of G_x")
    ax.set_ylabel("least OSSA L2 perturbation")
    ax.set_title(f"{r['n_fooled']} fooled samples, Pearson r = {r['pearson_r']:.3f}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = save_figure(fig, results.figures_dir / "zhao_figure3.png")
    return [
        Heading("Zhao et al. Figure 3: least perturbation vs λ_max"),
        model_blurb(cfg, facts, facts["n_images"]),
        Paragraph(
            f"Least OSSA budget by binary search in [0, {cfg.hi}] for the {r['n_fooled']} of {r['n_correct']} "
            f"correct samples fooled within it; Pearson correlation with log10 λ_max: {r['pearson_r']:.3f} "
            "(the paper shows a clear negative trend and gives no coefficient)."
        ),
        Figure(path, "Least OSSA L2 perturbation against log10 of the top eigenvalue of G_x."),
    ]


register("zhao_figure3", ZhaoConfig, "Zhao Figure 3: least OSSA L2 perturbation vs log λ_max, with the correlation.",
         report=figure3_report)(figure3_cells)


# ------------------------------------------------------------------- Figure 4(a)


def _figure4a_cell(cfg: ZhaoConfig) -> tuple[str, dict[str, Any]]:
    return "figure4a", {**data_spec(cfg), "batch_size": cfg.batch_size, "eps": cfg.eps}


def figure4a_cells(run: Run, cfg: ZhaoConfig, ctx: Context) -> None:
    trained, x, y, _ = zhao_sources(cfg, ctx)
    record_model(run, cfg, trained, len(y))
    model = trained.model

    def measure() -> dict[str, Any]:
        def lam(xb: torch.Tensor, yb: torch.Tensor) -> dict[str, torch.Tensor]:
            res = FGM(eps=cfg.eps).run(model, xb, yb)
            return {
                "clean": fisher_spectrum(model, xb, k=1).top_eigenvalue,
                "adv": fisher_spectrum(model, res.x_adv, k=1).top_eigenvalue,
                "success": res.success.float(),
            }

        out = in_batches(lam, x, y, batch_size=cfg.batch_size)
        return {"clean": out["clean"].tolist(), "adv": out["adv"].tolist(),
                "fgm_success_rate": float(out["success"].mean()),
                "median_clean": float(out["clean"].median()), "median_adv": float(out["adv"].median())}

    name, spec = _figure4a_cell(cfg)
    run.cell(name, measure, spec=spec)


def figure4a_report(cfg: ZhaoConfig, results: Results) -> list[Block]:
    import matplotlib.pyplot as plt

    facts = _facts(results, cfg)
    r = results.cell(*_figure4a_cell(cfg))
    fig, ax = plt.subplots(figsize=(6, 4))
    clean = np.log10(np.clip(r["clean"], 1e-30, None))
    adv = np.log10(np.clip(r["adv"], 1e-30, None))
    bins = np.linspace(min(clean.min(), adv.min()), max(clean.max(), adv.max()), 60)
    ax.hist(clean, bins=list(bins), alpha=0.6, label="clean")
    ax.hist(adv, bins=list(bins), alpha=0.6, label=f"FGM (L2 {cfg.eps})")
    ax.set_xlabel("log10 λ_max")
    ax.set_ylabel("count")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = save_figure(fig, results.figures_dir / "zhao_figure4a.png")
    return [
        Heading("Zhao et al. Figure 4(a): λ_max of clean and FGM images"),
        model_blurb(cfg, facts, facts["n_images"]),
        Table(["", "median λ_max", ], [["clean", r["median_clean"]], [f"FGM L2 {cfg.eps}", r["median_adv"]]],
              caption=f"FGM fooled {100 * r['fgm_success_rate']:.1f}% of the images (all test images, as in the paper)."),
        Figure(path, "Histogram of log10 λ_max for clean and FGM test images."),
    ]


register("zhao_figure4a", ZhaoConfig, "Zhao Figure 4(a): histogram of λ_max for clean vs FGM test images.",
         report=figure4a_report)(figure4a_cells)
