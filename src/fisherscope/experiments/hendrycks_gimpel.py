"""Hendrycks & Gimpel 2017, §2–3 on MNIST: their targeted attacks, measured and drawn
(``configs/hendrycks-gimpel-attack.toml``).

Protocol (also in docs/RESULTS.md):

- Sources: ``n_samples`` test images the model classifies correctly (the paper attacks
  correctly classified images only), a seeded random draw.
- Iterative attack (:class:`~fisherscope.attacks.HGTargeted`): raw-gradient descent on
  CE(t) + λ‖x − x0‖² towards a random wrong class t, step 1/255, clipped to [0, 1] after
  every step, stopped per sample once p_t > 0.5, at most 1000 steps, λ = 1e-3.
- Fast attack (:class:`~fisherscope.attacks.HGFast`): one targeted sign step of 10/255
  towards a random wrong class.
- Success is the paper's keep rule (p_target > 0.5); beside it the fooling ratio
  (misclassified after the attack, recomputed predictions). Distances are over the
  successful samples: L2 (and the squared L2 the authors' code prints), L1, L∞, L0.
- Figures draw the images exactly as the model received them (fixed [0, 1] range, no
  rescaling: the paper's §2 point), and the perturbations as signed maps.

The kit's shape: :func:`hg_attack_cells` stores the model facts, each attack's numbers and
the ``figure/examples`` cell (the first ``n_examples`` sources and their adversarials as
artifacts); :func:`hg_attack_report` draws the tables and figures from those cells only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from ..attacks import HGFast, HGTargeted
from ..evaluation import distance_summary, fooling_ratio
from ..plotting import image_grid
from .base import Context, register
from .common import predict
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

__all__ = ["HGAttackConfig", "HGConfig"]


@dataclass(frozen=True)
class HGAttackConfig(HGConfig):
    """Config of the Hendrycks & Gimpel attack reproduction."""

    fast_eps: float = 10 / 255
    n_examples: int = 8
    paper: dict[str, Any] = field(default_factory=dict)


ATTACK_NAMES = ("iterative", "fast")


def _attacks(cfg: HGAttackConfig) -> dict[str, Any]:
    return {
        "iterative": HGTargeted(step_size=cfg.step_size, l2_reg=cfg.l2_reg, threshold=cfg.threshold,
                                max_steps=cfg.max_steps),
        "fast": HGFast(eps=cfg.fast_eps, threshold=cfg.threshold),
    }


def _attack_specs(cfg: HGAttackConfig) -> dict[str, dict[str, Any]]:
    """The settings that decide each attack's numbers (the same as :func:`_attacks` builds)."""
    return {"iterative": iterative_spec(cfg), "fast": fast_spec(cfg)}


def _attack_cell(cfg: HGAttackConfig, name: str) -> tuple[str, dict[str, Any]]:
    return f"attack/{name}", {**data_spec(cfg), "batch_size": cfg.batch_size, **_attack_specs(cfg)[name]}


def _examples_cell(cfg: HGAttackConfig) -> tuple[str, dict[str, Any]]:
    return "figure/examples", {**data_spec(cfg), "batch_size": cfg.batch_size, "n_examples": cfg.n_examples,
                               "attacks": _attack_specs(cfg)}


def _measure(attack: Any, model: Any, x: torch.Tensor, y: torch.Tensor, cfg: HGAttackConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = run_attack(attack, model, x, y, cfg.seed, cfg.batch_size)
    seconds = time.perf_counter() - t0
    success = out["success"]
    fr = fooling_ratio(model, x, out["x_adv"], y)
    d = distance_summary(x, out["x_adv"], success=success)
    d_all = distance_summary(x, out["x_adv"], over="all")
    l2 = d.per_sample["l2"]
    values: dict[str, Any] = {
        "n": int(len(y)),
        "n_success": int(success.sum()),
        "success_rate": float(success.float().mean()),
        "fooling_ratio": fr.ratio,
        "pred_is_target": float((out["pred"] == out["target"]).float().mean()),
        **{f"{k}_success": v for k, v in d.as_dict().items() if k not in ("over", "n")},
        "mean_sq_l2_success": float((l2[success].double() ** 2).mean()) if bool(success.any()) else float("nan"),
        "mean_l2_all": d_all.mean["l2"],
        "mean_linf_all": d_all.mean["linf"],
        "mean_p_target": float(out["p_target"].double().mean()),
        "l2": l2.tolist(),
        "success": success.tolist(),
        "seconds": seconds,
    }
    if "steps" in out:
        steps = out["steps"].double()
        values.update({
            "steps": out["steps"].tolist(),
            "mean_steps_success": float(steps[success].mean()) if bool(success.any()) else float("nan"),
            "median_steps_success": float(torch.quantile(steps[success], 0.5)) if bool(success.any()) else float("nan"),
            "n_max_steps": int((out["steps"] == cfg.max_steps).sum()),
        })
    return values


def _blurb(cfg: HGAttackConfig, facts: dict[str, Any]) -> Paragraph:
    return Paragraph(
        f"Model `{cfg.arch}` on `{cfg.dataset}` (test accuracy {fmt_number(pct(facts['test_accuracy']))}%, "
        f"checkpoint `{facts['checkpoint_key'][:12]}`); {facts['n']} of the {facts['n_correct']} correctly classified "
        f"test images (seeded draw, seed {cfg.seed}); random wrong-class targets drawn with seed {cfg.seed}."
    )


def _signed_maps(deltas: dict[str, np.ndarray], titles: dict[str, list[str]], cell: float = 1.3) -> Any:
    """Rows of signed perturbation maps (red +, blue −), one symmetric colour scale per row."""
    import matplotlib.pyplot as plt

    rows = list(deltas)
    n = deltas[rows[0]].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(cell * n + 0.9, cell * len(rows) + 0.4), squeeze=False)
    for r, name in enumerate(rows):
        d = np.asarray(deltas[name]).sum(1)  # (N, H, W): channels summed
        top = float(np.abs(d).max()) or 1.0
        im: Any = None
        for i in range(n):
            ax = axes[r, i]
            im = ax.imshow(d[i], cmap="RdBu_r", vmin=-top, vmax=top, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(titles[name][i], fontsize=7)
        fig.colorbar(im, ax=list(axes[r]), fraction=0.02, pad=0.01)
    return fig


def hg_attack_cells(run: Run, cfg: HGAttackConfig, ctx: Context) -> None:
    """The model facts, both attacks on the sources, and the examples the figures draw."""
    trained, x, y, test, n_correct = hg_sources(cfg, ctx)
    record_model(run, cfg, trained, test, len(y), n_correct)
    model = trained.model.eval()
    attacks = _attacks(cfg)
    for name, atk in attacks.items():
        cell, spec = _attack_cell(cfg, name)
        run.cell(cell, partial(_measure, atk, model, x, y, cfg), spec=spec)

    xe, ye = x[: cfg.n_examples], y[: cfg.n_examples]

    def examples() -> dict[str, Any]:
        out: dict[str, Any] = {"clean_pred": predict(model, xe).tolist(), "x": Artifact(xe)}
        for name, atk in attacks.items():
            o = run_attack(atk, model, xe, ye, cfg.seed, cfg.batch_size)
            out[name] = {"pred": o["pred"].tolist(), "target": o["target"].tolist(),
                         "p_target": o["p_target"].tolist(), "success": o["success"].tolist(),
                         "l2": (o["x_adv"] - xe).flatten(1).norm(dim=1).tolist()}
            out[f"x_adv/{name}"] = Artifact(o["x_adv"])  # the images the figures draw
        return out

    name, spec = _examples_cell(cfg)
    run.cell(name, examples, spec=spec)


def hg_attack_report(cfg: HGAttackConfig, results: Results) -> list[Block]:
    """Tables and figures of ``hg_attack`` from the stored cells alone."""
    import matplotlib.pyplot as plt

    facts = results.cell(*model_cell(cfg))
    res = {name: results.cell(*_attack_cell(cfg, name)) for name in ATTACK_NAMES}
    ex = results.cell(*_examples_cell(cfg))

    # ------------------------------------------------------------- examples figure
    xe = np.asarray(ex["x"])
    adv = {name: np.asarray(ex[f"x_adv/{name}"]) for name in ATTACK_NAMES}
    classes = facts["classes"]
    titles = [f"{classes[p]}" for p in ex["clean_pred"]]
    colors = ["black"] * len(xe)
    for name in ATTACK_NAMES:
        e = ex[name]
        titles += [f"{classes[p]} (t={classes[t]}, {pt:.2f})" for p, t, pt in zip(e["pred"], e["target"], e["p_target"],
                                                                                   strict=True)]
        colors += ["red" if s else "black" for s in e["success"]]
    fig = image_grid(
        torch.as_tensor(np.concatenate([xe, adv["iterative"], adv["fast"]])), titles, title_colors=colors,
        ncols=len(xe),
        suptitle=(f"Rows: clean (prediction); iterative attack ({cfg.step_size * 255:g}/255 steps, λ={cfg.l2_reg:g}); "
                  f"fast sign step {cfg.fast_eps * 255:g}/255.\nTitles: prediction (t=target, p_target); red: kept "
                  f"(p_target > {cfg.threshold:g}). Drawn on the fixed [0, 1] range, no rescaling."),
    )
    path_ex = save_figure(fig, results.figures_dir / "hg_examples.png")
    fig = _signed_maps(
        {name: adv[name] - xe for name in ATTACK_NAMES},
        {name: [f"{name} L2 {v:.2f}" for v in ex[name]["l2"]] for name in ATTACK_NAMES},
    )
    fig.suptitle("x_adv − x (red +, blue −), one symmetric scale per row", fontsize=9)
    path_delta = save_figure(fig, results.figures_dir / "hg_perturbations.png")

    # ------------------------------------------------------------- distance / steps figure
    it = res["iterative"]
    succ = np.asarray(it["success"], dtype=bool)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.hist(np.asarray(it["l2"])[succ], bins=40, alpha=0.7, label="iterative (kept)")
    fs = np.asarray(res["fast"]["success"], dtype=bool)
    if fs.any():
        ax1.hist(np.asarray(res["fast"]["l2"])[fs], bins=40, alpha=0.7, label="fast (kept)")
    ax1.set_xlabel("L2 of x_adv − x")
    ax1.set_ylabel("count")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.hist(np.asarray(it["steps"])[succ], bins=40, color="C2")
    ax2.set_xlabel("steps until p_target > 0.5 (iterative)")
    ax2.set_ylabel("count")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    path_hist = save_figure(fig, results.figures_dir / "hg_distances.png")

    rows = []
    for name, label in (("iterative", f"iterative, α = {cfg.step_size * 255:g}/255, λ = {cfg.l2_reg:g}"),
                        ("fast", f"fast sign step {cfg.fast_eps * 255:g}/255")):
        r = res[name]
        rows.append([label, pct(r["success_rate"]), pct(r["fooling_ratio"]), r["mean_l2_success"],
                     r["median_l2_success"], r["mean_sq_l2_success"], r["mean_l1_success"], r["mean_linf_success"],
                     r["mean_l0_success"], r.get("mean_steps_success", float("nan")), r["seconds"]])
    paper = cfg.paper.get("note", "")
    return [
        Heading(f"Hendrycks & Gimpel §2–3: targeted attacks on {cfg.dataset}"),
        _blurb(cfg, facts),
        Paragraph(
            f"Success = the paper's keep rule, p_target > {cfg.threshold:g} at the returned image (the iterative "
            f"attack stops there, at most {cfg.max_steps} steps); fooling ratio = misclassified after the attack "
            "(recomputed). Distances are means / medians over the kept (successful) samples; 'mean L2²' is the "
            "squared L2 that the authors' code reports as 'L2'."
        ),
        Table(["attack", "success %", "fooling ratio %", "mean L2", "median L2", "mean L2²", "mean L1",
               "mean L∞", "mean L0", "mean steps", "seconds"], rows),
        Paragraph(
            f"Iterative: {it.get('n_max_steps', 0)} of {it['n']} samples ran out of steps; median steps "
            f"{it.get('median_steps_success', float('nan')):g} for the kept ones. Fast: the prediction is the "
            f"target for {100 * res['fast']['pred_is_target']:.1f}% of the images. {paper}"
        ),
        Figure(path_ex, "Clean images and their adversarial versions, drawn exactly as the model saw them."),
        Figure(path_delta, "The perturbations x_adv − x as signed maps."),
        Figure(path_hist, "L2 distance of the kept adversarial images, and the iterative attack's steps."),
    ]


register("hg_attack", HGAttackConfig,
         "Hendrycks & Gimpel §2–3: iterative and fast targeted attacks on correctly classified MNIST images.",
         report=hg_attack_report)(hg_attack_cells)
