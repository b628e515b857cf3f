"""The demo's "attack" section: OSSA on digits — eigenvectors, adversarials, fooling curves."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..attacks import FGM, OSSA
from ..fisher import fisher_spectrum
from ..plotting import to_display
from .kit import DemoConfig, DemoSection, DemoState, add_demo_section
from .report import Block, Figure, Heading, Paragraph, Table, pct, save_figure
from .runner import Artifact, Results, Run

__all__ = ["ossa_cells", "ossa_report"]

N_CURVE = 200
BUDGETS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0]
EPS_SHOW = 1.5


N_SHOW = 6


def ossa_cells(run: Run, state: DemoState) -> None:
    model, test = state.model, state.test
    x, y = test.x[:N_CURVE], test.y[:N_CURVE]

    def measure() -> dict[str, Any]:
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        out: dict[str, Any] = {"budgets": BUDGETS, "n_correct": int(correct.sum())}
        for name, cls in (("fgm", FGM), ("ossa", OSSA)):
            atk = cls(eps=1.0)
            state_ = atk.prepare(model, x[correct], y[correct])
            rates = []
            for eps in BUDGETS:
                xa = atk.step(model, x[correct], y[correct], state_, torch.full((int(correct.sum()),), eps))
                with torch.no_grad():
                    rates.append(float((model(xa).argmax(1) != y[correct]).float().mean()))
            out[f"{name}_fooling_rate"] = rates
        spec = fisher_spectrum(model, x, k=3)
        out["lambda_max_median"] = float(spec.eigenvalues[:, 0].median())
        out["lambda_2_over_1_median"] = float((spec.eigenvalues[:, 1] / spec.eigenvalues[:, 0]).median())
        return out

    run.cell("ossa", measure)

    def examples() -> dict[str, Any]:
        xs, ys = test.x[:N_SHOW], test.y[:N_SHOW]
        spec = fisher_spectrum(model, xs, k=1)
        res = OSSA(eps=EPS_SHOW).run(model, xs, ys)
        with torch.no_grad():
            clean_pred = model(xs).argmax(1)
        return {"eps": EPS_SHOW, "x": Artifact(xs), "y": ys.tolist(), "clean_pred": clean_pred.tolist(),
                "top_eigenvector": Artifact(spec.top_eigenvector), "top_eigenvalue": spec.top_eigenvalue.tolist(),
                "x_adv": Artifact(res.x_adv), "adv_pred": res.logits_adv.argmax(1).tolist(),
                "adv_l2": res.norms["l2"].tolist()}

    run.cell("ossa/examples", examples)


def ossa_report(cfg: DemoConfig, results: Results) -> list[Block]:
    import matplotlib.pyplot as plt

    r, e = results.cell("ossa"), results.cell("ossa/examples")
    fig, axes = plt.subplots(3, N_SHOW, figsize=(9, 4.9))
    for i in range(N_SHOW):
        img, cmap = to_display(e["x"][i])
        axes[0, i].imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        axes[0, i].set_title(f"pred {e['clean_pred'][i]}", fontsize=8)
        v, _ = to_display(e["top_eigenvector"][i])
        m = float(np.abs(v).max()) or 1.0
        axes[1, i].imshow(v, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
        axes[1, i].set_title(f"λ_max {e['top_eigenvalue'][i]:.2g}", fontsize=8)
        adv, cmap = to_display(e["x_adv"][i])
        axes[2, i].imshow(adv, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        pred = e["adv_pred"][i]
        axes[2, i].set_title(f"pred {pred} (L2 {e['adv_l2'][i]:.2f})", fontsize=8,
                             color="red" if pred != e["y"][i] else "black")
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(f"clean (top), top eigenvector of G_x (middle), OSSA with L2 budget {e['eps']} (bottom)", fontsize=9)
    fig.tight_layout()
    ex_path = save_figure(fig, results.figures_dir / "ossa_examples.png")

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name in ("fgm", "ossa"):
        ax.plot(r["budgets"], [100 * v for v in r[f"{name}_fooling_rate"]], marker=".", label=name.upper())
    ax.set_xlabel("L2 budget")
    ax.set_ylabel("fooling rate (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    curve_path = save_figure(fig, results.figures_dir / "ossa_fooling_curve.png")

    rows = [[f"{b:g}", pct(f), pct(o)] for b, f, o in
            zip(r["budgets"], r["fgm_fooling_rate"], r["ossa_fooling_rate"], strict=True)]
    return [
        Heading("Attack: the One-Step Spectral Attack (Zhao et al. 2019)"),
        Paragraph(
            "G_x = E_y[∇x log p(y|x) ∇x log p(y|x)ᵀ] is the Fisher information of the input. Its top "
            "eigenvector is the direction in which the prediction changes fastest (in KL divergence); "
            "OSSA steps along it, choosing the sign that raises the loss. fisherscope computes all K − 1 "
            "eigenpairs exactly from K batched vector-Jacobian products, without the D × D matrix. "
            f"Median λ_max over {N_CURVE} test digits: {r['lambda_max_median']:.3g}; median λ₂/λ₁: "
            f"{r['lambda_2_over_1_median']:.3f}."
        ),
        Figure(ex_path, "Clean digits, the top eigenvector of G_x (red +, blue −) and the OSSA adversarial, "
               "drawn exactly as the model sees it."),
        Table(["L2 budget", "FGM fooling %", "OSSA fooling %"], rows,
              caption=f"Fooling rate on the {r['n_correct']} correctly classified of the first {N_CURVE} test digits"),
        Figure(curve_path, "Fooling rate against the L2 budget for one-step FGM and OSSA."),
    ]


add_demo_section(DemoSection("ossa", 10.0, ossa_cells, ossa_report))
