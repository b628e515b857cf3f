"""The demo's "defend" section: Shen et al.'s Fisher penalty on digits, plain vs penalised network.

The penalised ``digits_cnn`` is the demo network's training request plus
``defense={"kind": "fisher", "mu": 0.02}`` (cached like any model; about as fast to train
as the plain one). The section compares test accuracy, the distribution of λ_max(G_x)
over the test digits and the OSSA fooling ratio against the L2 budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..attacks import OSSA
from ..evaluation import one_step_curve
from .common import trained_model
from .kit import DemoConfig, DemoSection, DemoState, add_demo_section
from .report import Block, Figure, Heading, Paragraph, Table, save_figure
from .runner import Results, Run

__all__ = ["MU", "defend_cells", "defend_report"]

#: The penalty weight of the demo's penalised network (Shen et al.'s Figure 5 value).
MU = 0.02
BUDGETS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
SHOW = (0.5, 1.0, 2.0)


def defend_cells(run: Run, state: DemoState) -> None:
    cfg, ctx, test = state.config, state.context, state.test

    def measure() -> dict[str, Any]:
        pen = trained_model(cfg.arch, cfg.dataset, ctx, seed=cfg.seed,
                            overrides={"defense": {"kind": "fisher", "mu": MU}})
        out: dict[str, Any] = {"budgets": BUDGETS, "mu": MU, "penalised_key": pen.key,
                               "penalised_train_wall_time_s": pen.metrics["wall_time_s"]}
        for name, tm in (("plain", state.trained), ("penalised", pen)):
            # OSSA computes the spectrum of G_x anyway: λ_max comes from it (correctly classified digits)
            curve = one_step_curve(OSSA(eps=1.0), tm.model, test.x, test.y, BUDGETS, seed=cfg.seed, batch_size=512)
            c = curve.as_dict()
            out[name] = {"test_accuracy": tm.metrics["test_accuracy"], "fooling_ratio": c["fooling_ratio"],
                         "n_correct": c["n_correct"], "lambda_max": c["lambda_max"],
                         "lambda_max_mean": c["lambda_max_mean"], "lambda_max_median": c["lambda_max_median"]}
        out["n_test"] = len(test)
        return out

    run.cell("defend", measure)


def defend_report(cfg: DemoConfig, results: Results) -> list[Block]:
    import matplotlib.pyplot as plt

    r = results.cell("defend")
    names = ("plain", "penalised")
    labels = {"plain": "plain", "penalised": f"penalised, μ = {r['mu']:g}"}

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    logs = {n: np.log10(np.clip(np.asarray(r[n]["lambda_max"]), 1e-30, None)) for n in names}
    lo = min(v.min() for v in logs.values())
    hi = max(v.max() for v in logs.values())
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
    for n in names:
        ax1.hist(logs[n], bins=bins, alpha=0.6, label=labels[n])
    ax1.set_xlabel("log10 λ_max(G_x)")
    ax1.set_ylabel("correctly classified test digits")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    for n in names:
        ax2.plot(r["budgets"], [100 * v for v in r[n]["fooling_ratio"]], marker=".", label=labels[n])
    ax2.set_xlabel("OSSA L2 budget")
    ax2.set_ylabel("fooling ratio (%)")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path = save_figure(fig, results.figures_dir / "defend.png")

    show = [b for b in SHOW if b in r["budgets"]]
    rows = [[labels[n], 100 * r[n]["test_accuracy"], r[n]["lambda_max_mean"], r[n]["lambda_max_median"],
             *[100 * r[n]["fooling_ratio"][r["budgets"].index(b)] for b in show]] for n in names]
    p, q = r["plain"], r["penalised"]
    return [
        Heading("Defend: the Fisher penalty (Shen et al.)"),
        Paragraph(
            "Shen et al. retrain with cross-entropy + μ Σ_i 1/p_i: the trace of the Fisher matrix in softmax space, "
            "a bound on that matrix's top eigenvalue, not on λ_max(G_x) itself. Here "
            f"`{cfg.arch}` is retrained with "
            f"μ = {r['mu']:g} (same preset and seed, {r['penalised_train_wall_time_s']:.1f} s of training, checkpoint "
            f"`{r['penalised_key'][:12]}`). Test accuracy {100 * p['test_accuracy']:.2f}% → "
            f"{100 * q['test_accuracy']:.2f}%; OSSA fooling ratio at L2 budget 1.0 "
            f"{100 * p['fooling_ratio'][r['budgets'].index(1.0)]:.1f}% → "
            f"{100 * q['fooling_ratio'][r['budgets'].index(1.0)]:.1f}%; median λ_max {p['lambda_max_median']:.3g} → "
            f"{q['lambda_max_median']:.3g} (the penalty pulls p towards uniform, which need not lower λ_max)."
        ),
        Table(["network", "test accuracy %", "mean λ_max", "median λ_max", *[f"OSSA fooling % at {b:g}" for b in show]],
              rows, caption=f"λ_max and fooling ratios over the {p['n_correct']} / {q['n_correct']} of the {r['n_test']} "
                            "test digits each network classifies correctly"),
        Figure(path, "Left: λ_max of G_x over the correctly classified test digits. Right: OSSA fooling ratio against "
                     "the L2 budget."),
    ]


add_demo_section(DemoSection("defend", 50.0, defend_cells, defend_report))
