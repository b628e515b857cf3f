"""The demo's "attack suite" section: every registered attack at a standard budget on digits."""

from __future__ import annotations

import functools
import time
from typing import Any

import torch

from .._batching import even_chunks
from ..attacks import ATTACKS
from ..plotting import to_display
from .kit import DemoConfig, DemoSection, DemoState, add_demo_section
from .report import Block, Figure, Heading, Paragraph, Table, pct, save_figure
from .runner import Artifact, Results, Run

__all__ = ["attack_suite_cells", "attack_suite_report"]

N_ATTACK = 100
N_SHOW = 4


def _keys() -> list[str]:
    return list(ATTACKS)  # each attack carries its standard setting (Attack.standard)


def attack_suite_cells(run: Run, state: DemoState) -> None:
    model, test, seed = state.model, state.test, state.config.seed
    x, y = test.x[:N_ATTACK], test.y[:N_ATTACK]

    def measure(key: str) -> dict[str, Any]:
        params = dict(ATTACKS[key].standard)
        attack = ATTACKS[key](**params)
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        t0 = time.perf_counter()
        res = attack.run(model, x, y, generator=torch.Generator().manual_seed(seed))
        wall = time.perf_counter() - t0
        with torch.no_grad():
            pred_after = model(res.x_adv).argmax(1)
        wrong_after = pred_after != y
        fooled = wrong_after & correct
        return {
            "params": params,
            "accuracy": float((~wrong_after).float().mean()),
            "fooling_ratio": float(fooled.sum() / correct.sum().clamp_min(1)),
            "mean_l2_fooled": float(res.norms["l2"][fooled].mean()) if fooled.any() else float("nan"),
            "mean_linf_fooled": float(res.norms["linf"][fooled].mean()) if fooled.any() else float("nan"),
            "mean_l0_fooled": float(res.norms["l0"][fooled].mean()) if fooled.any() else float("nan"),
            "images_per_s": len(x) / wall,
            # the first N_SHOW adversarials, for the grid (the same run, not a recomputation)
            "shown_x_adv": Artifact(res.x_adv[:N_SHOW]),
            "shown_pred": pred_after[:N_SHOW].tolist(),
            "shown_l2": res.norms["l2"][:N_SHOW].tolist(),
        }

    def clean() -> dict[str, Any]:
        with torch.no_grad():
            pred = model(x).argmax(1)
        return {"accuracy": float((pred == y).float().mean()), "shown_x": Artifact(x[:N_SHOW]),
                "shown_y": y[:N_SHOW].tolist(), "shown_pred": pred[:N_SHOW].tolist()}

    run.cell("attacks/clean", clean)
    for key in _keys():
        run.cell(f"attacks/{key}", functools.partial(measure, key))


#: attack columns per grid figure (plus the clean column): at :data:`GRID_DPI` a figure stays
#: under the report's 940-px column, so it is shown at 1:1 and its 9-pt labels are ~14 px
GRID_ATTACKS = 5
GRID_DPI = 110
GRID_FONT = 9


def _grid_figure(cols: list[tuple[str, Any, list[int], list[float] | None]], ys: list[int], title: str) -> Any:
    """One grid: rows are the shown test digits, columns clean and some attacks."""
    import matplotlib.pyplot as plt

    n_show = len(ys)
    fig, axes = plt.subplots(n_show, len(cols), figsize=(1.3 * len(cols), 1.45 * n_show + 0.4), squeeze=False)
    for c, (name, imgs, preds, l2) in enumerate(cols):
        for i in range(n_show):
            img, cmap = to_display(imgs[i])
            ax = axes[i, c]
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            label = f"{preds[i]}"
            if l2 is not None:
                label += f" · {l2[i]:.2f}"
            ax.set_xlabel(label, fontsize=GRID_FONT, color="red" if preds[i] != ys[i] else "black", labelpad=2)
            if i == 0:
                ax.set_title(name, fontsize=GRID_FONT)
    fig.suptitle(title, fontsize=GRID_FONT + 1)
    fig.tight_layout()
    return fig


def attack_suite_report(cfg: DemoConfig, results: Results) -> list[Block]:
    keys = _keys()
    clean = results.cell("attacks/clean")
    res = {key: results.cell(f"attacks/{key}") for key in keys}
    ys = clean["shown_y"]
    clean_col = ("clean", clean["shown_x"], clean["shown_pred"], None)
    attack_cols = [(key, r["shown_x_adv"], r["shown_pred"], r["shown_l2"]) for key, r in res.items()]
    groups = even_chunks(len(attack_cols), GRID_ATTACKS)
    grids = []
    for g, sl in enumerate(groups):
        cols = [clean_col, *attack_cols[sl]]
        fig = _grid_figure(cols, ys, f"Attacks {sl.start + 1}–{sl.stop} of {len(attack_cols)}")
        grids.append(save_figure(fig, results.figures_dir / f"attack_suite_grid_{g + 1}.png", dpi=GRID_DPI))

    table_rows = [["none (clean)", "", pct(clean["accuracy"]), None, None, None, None, None]]
    for key in keys:
        r = res[key]
        table_rows.append([
            key, ATTACKS[key].standard_description, pct(r["accuracy"]), pct(r["fooling_ratio"]),
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
        *[Figure(path, f"Test digits (rows), clean and under {', '.join(keys[sl])} (columns), drawn exactly as "
                       "the model sees them; under each image: prediction · L2 of the perturbation (red: "
                       "misclassified).")
          for path, sl in zip(grids, groups, strict=True)],
    ]


add_demo_section(DemoSection("attacks", 20.0, attack_suite_cells, attack_suite_report))
