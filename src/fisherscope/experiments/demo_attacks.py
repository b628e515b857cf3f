"""The demo's "attack suite" section: every registered attack at a standard budget on digits."""

from __future__ import annotations

import time
from typing import Any

import torch

from ..attacks import ATTACKS
from ..plotting import to_display
from .demo import DemoState, add_demo_section
from .report import Block, Figure, Heading, Paragraph, Table, save_figure
from .runner import Run

__all__ = ["attack_suite_section"]

N_ATTACK = 100
N_SHOW = 4


def attack_suite_section(run: Run, state: DemoState) -> list[Block]:
    import matplotlib.pyplot as plt

    model, test, seed = state.model, state.test, state.config.seed
    x, y = test.x[:N_ATTACK], test.y[:N_ATTACK]
    keys = list(ATTACKS)  # each attack carries its standard setting (Attack.standard)

    def measure(key: str) -> dict[str, Any]:
        params = dict(ATTACKS[key].standard)
        attack = ATTACKS[key](**params)
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        t0 = time.perf_counter()
        res = attack.run(model, x, y, generator=torch.Generator().manual_seed(seed))
        wall = time.perf_counter() - t0
        with torch.no_grad():
            wrong_after = model(res.x_adv).argmax(1) != y
        fooled = wrong_after & correct
        return {
            "params": params,
            "accuracy": float((~wrong_after).float().mean()),
            "fooling_ratio": float(fooled.sum() / correct.sum().clamp_min(1)),
            "mean_l2_fooled": float(res.norms["l2"][fooled].mean()) if fooled.any() else float("nan"),
            "mean_linf_fooled": float(res.norms["linf"][fooled].mean()) if fooled.any() else float("nan"),
            "mean_l0_fooled": float(res.norms["l0"][fooled].mean()) if fooled.any() else float("nan"),
            "images_per_s": len(x) / wall,
        }

    results = {key: run.cell(f"attacks/{key}", lambda key=key: measure(key)) for key in keys}
    with torch.no_grad():
        clean_acc = float((model(x).argmax(1) == y).float().mean())

    # grid: the first N_SHOW test digits (rows), clean and under each attack (columns), on [0, 1]
    xs, ys = x[:N_SHOW], y[:N_SHOW]
    cols = [("clean", xs, None)]
    for key in keys:
        attack = ATTACKS[key](**ATTACKS[key].standard)
        res = attack.run(model, xs, ys, generator=torch.Generator().manual_seed(seed))
        cols.append((key, res.x_adv, res))
    fig, axes = plt.subplots(N_SHOW, len(cols), figsize=(1.05 * len(cols), 1.2 * N_SHOW), squeeze=False)
    for c, (name, imgs, res) in enumerate(cols):
        with torch.no_grad():
            preds = model(imgs).argmax(1)
        for i in range(N_SHOW):
            img, cmap = to_display(imgs[i])
            ax = axes[i, c]
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            label = f"{int(preds[i])}"
            if res is not None:
                label += f" · {float(res.norms['l2'][i]):.2f}"
            ax.set_xlabel(label, fontsize=7, color="red" if int(preds[i]) != int(ys[i]) else "black", labelpad=1)
            if i == 0:
                ax.set_title(name, fontsize=7)
    fig.suptitle("Test digits (rows), clean and under each attack (columns), drawn exactly as the model sees "
                 "them; under each image: prediction · L2 of the perturbation (red: misclassified)", fontsize=8)
    fig.tight_layout()
    grid_path = save_figure(fig, run.figures_dir / "attack_suite_grid.png")

    table_rows = [["none (clean)", "", 100 * clean_acc, "", "", "", "", ""]]
    for key in keys:
        r = results[key]
        table_rows.append([
            key, ATTACKS[key].standard_description, 100 * r["accuracy"], 100 * r["fooling_ratio"],
            r["mean_l2_fooled"], r["mean_linf_fooled"], r["mean_l0_fooled"], r["images_per_s"],
        ])
    return [
        Heading("Attack suite"),
        Paragraph(
            f"Every attack in `fisherscope.attacks.ATTACKS` on the first {N_ATTACK} test digits, untargeted "
            "(targeted attacks draw a random wrong class), at the demo's standard setting. Accuracy is over all "
            "images; the fooling ratio is over the originally correct ones (Shen et al.'s definition); the "
            "distances are means over the fooled images. Every adversarial stays in [0, 1] and inside its budget."
        ),
        Table(["attack", "setting", "accuracy %", "fooling ratio %", "mean L2", "mean L∞", "mean L0", "images/s"],
              table_rows, caption="Accuracy under attack (digits_cnn, CPU)"),
        Figure(grid_path, "Clean and adversarial digits; red titles are misclassified."),
    ]


add_demo_section(attack_suite_section, order=20)
