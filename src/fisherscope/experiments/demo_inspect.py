"""The demo's "inspect" section: FIS and saliency maps of clean and MI-FGSM digits."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..attacks import MIFGSM
from ..plotting_maps import fis_figure, saliency_figure
from .common import inspect_maps, saliency_rows
from .kit import DemoConfig, DemoSection, DemoState, add_demo_section
from .report import Block, Figure, Heading, Paragraph, save_figure
from .runner import Artifact, Results, Run

__all__ = ["inspect_cells", "inspect_report"]

DEMO_INSPECT_N = 4
DEMO_INSPECT_EPS = 0.15


def inspect_cells(run: Run, state: DemoState) -> None:
    model, test = state.model, state.test
    attack = MIFGSM(eps=DEMO_INSPECT_EPS, steps=10, decay=1.0)

    def measure() -> dict[str, Any]:
        with torch.no_grad():
            ok = torch.nonzero(model(test.x[:64]).argmax(1) == test.y[:64]).flatten()
        x, y = test.x[ok], test.y[ok]
        res = attack.run(model, x, y)
        fooled, kept = torch.nonzero(res.success).flatten(), torch.nonzero(~res.success).flatten()
        n_kept = min(1, len(kept))  # one failed attack when there is one, as in Fig. 2
        sel = torch.cat([fooled[: DEMO_INSPECT_N - n_kept], kept[:n_kept]])
        x, xa, y = x[sel], res.x_adv[sel], y[sel]
        maps = inspect_maps(model, x, xa)
        with torch.no_grad():
            pc, pa = model(x).argmax(1), model(xa).argmax(1)
        out: dict[str, Any] = {"x": Artifact(x), "x_adv": Artifact(xa), "y": y.tolist(), "pred_clean": pc.tolist(),
                               "pred_adv": pa.tolist(), "fooling_rate_first64": float(res.success.float().mean())}
        out.update({k: Artifact(v) for k, v in maps.items()})
        ratio = maps["fis/adv"].abs().flatten(1).amax(1) / maps["fis/clean"].abs().flatten(1).amax(1)
        out["max_fis_ratio"] = ratio.tolist()
        return out

    run.cell("inspect", measure)


def inspect_report(cfg: DemoConfig, results: Results) -> list[Block]:
    r = results.cell("inspect")
    arr = {k: np.asarray(v, dtype=float) for k, v in r.items()}
    x, xa = arr["x"], arr["x_adv"]
    titles = [f"true {int(t)}, adv pred {int(p)}" for t, p in zip(arr["y"], arr["pred_adv"], strict=True)]
    fis_path = save_figure(fis_figure(xa, arr["fis/adv"], x, arr["fis/clean"], shared_scale=False, row_titles=titles,
                                      cell_size=1.3),
                           results.figures_dir / "inspect_fis.png")
    images, cols, stitles = saliency_rows(x, xa, arr, [f"clean, pred {int(p)}" for p in arr["pred_clean"]],
                                          [f"adv, pred {int(p)}" for p in arr["pred_adv"]])
    sal_path = save_figure(saliency_figure(images, cols, row_titles=stitles, cell_size=1.2),
                           results.figures_dir / "inspect_saliency.png")
    ratio = ", ".join(f"{v:.3g}" for v in r["max_fis_ratio"])
    return [
        Heading("Inspect: Fisher information sensitivity and saliency maps"),
        Paragraph(
            "The Fisher information sensitivity (Martin & Elster 2019, eq. 13) says how much each pixel moves "
            "the Fisher information of the weights, vᵀF_θv, when it is perturbed by noise; fisherscope "
            "computes it exactly with one forward-mode product in parameter space and one batched backward "
            "pass in input space. Shown for test digits and their MI-FGSM adversarials "
            f"(L∞ ε = {DEMO_INSPECT_EPS}, T = 10, μ = 1; it fooled the model on "
            f"{100 * r['fooling_rate_first64']:.0f}% of the correctly classified of the first 64 test digits), "
            "beside the gradient, guided-backprop and Hendrycks & Gimpel saliency maps. Images are drawn "
            f"exactly as the model saw them. max|FIS adv| / max|FIS clean| per row: {ratio}."
        ),
        Figure(fis_path, "Adversarial digit, |FIS| of the adversarial and of the clean digit (each on its own "
               "colour scale, drawn over its image), and x_adv − x."),
        Figure(sal_path, "Clean and adversarial digits with their signed saliency maps (red +, blue −)."),
    ]


add_demo_section(DemoSection("inspect", 30.0, inspect_cells, inspect_report))
