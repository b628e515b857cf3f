"""``robustness_defenses`` (issue 18): worst-case robust accuracy of defended networks, with the
gradient-masking flags, and OSSA at Shen et al.'s budgets beside the strong attacks.

For each network of ``models`` (the first is the plain reference): worst-case robust accuracy
over an ensemble of attacks (:class:`~fisherscope.experiments.robust_kit.EnsembleSpec`:
APGD-CE, APGD-T with the DLR loss, Square, each on the samples still robust) at every L∞
budget of ``linf_eps`` and L2 budget of ``l2_eps``, with the masking checks of
:func:`~fisherscope.evaluation.robust_accuracy` and their sentences; and OSSA's fooling ratio
(Zhao et al.'s one-step spectral attack, the attack of Shen et al.'s Figure 3) at
``ossa_budgets``. At the L2 budgets both measure, the report compares them per defense and
computes the answer to issue 18's question — is the Shen penalty's lower OSSA fooling ratio
robustness or gradient masking? — with
:func:`~fisherscope.experiments.robust_kit.masking_verdict`, never a fixed sentence.

Fooling ratios are over the sampled test images each network classifies correctly; robust
accuracy over all sampled images. OSSA's L2 budget is the norm before clipping to [0, 1]; the
ensemble's perturbations lie inside the budget after clipping, so the strong attacks are held
to at most the same budget.

The report reads the stored cells only; networks whose cells are missing (a run stopped early)
are listed as not measured, so a partial run still renders.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from ..attacks import OSSA
from ..evaluation import one_step_curve
from .base import Context, register
from .common import load_split, select_samples
from .config import ExperimentConfig, config_to_dict
from .report import Block, Figure, Heading, Paragraph, Table, pct, save_figure
from .robust_kit import EnsembleSpec, masking_verdict, train_network, worst_case
from .runner import Results, Run
from .specs import ModelSpec, model_record, net_spec

__all__ = ["RobustnessConfig"]


def _default_models() -> list[ModelSpec]:
    return [ModelSpec(name="plain"), ModelSpec(name="shen mu=0.02", defense={"kind": "fisher", "mu": 0.02})]


@dataclass(frozen=True)
class RobustnessConfig(ExperimentConfig):
    """Config of ``robustness_defenses`` (``configs/robustness-defenses.toml``).

    ``models``: the first is the plain reference; each may set ``finetune`` (fine-tuned from
    the plain network of the same seed) and ``train_images``. ``training`` applies to every
    network. ``ensemble``: the worst-case attacks (default AutoAttack's standard settings).
    OSSA (cheap: one spectrum per image) runs on the ``n_samples`` test images of the draw, the
    ensemble on ``robust_samples`` of them (a seeded sub-draw; all when None).
    """

    arch: str = "convnet_bn"
    training: dict[str, Any] = field(default_factory=dict)
    n_samples: int | None = 1000
    #: the ensemble's images: a seeded draw of this many of the ``n_samples`` (None: all of them)
    robust_samples: int | None = None
    batch_size: int = 250
    linf_eps: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3])
    l2_eps: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0])
    ossa_budgets: list[float] = field(default_factory=lambda: [0.5 * i for i in range(1, 13)])
    ensemble: EnsembleSpec = field(default_factory=EnsembleSpec)
    models: list[ModelSpec] = field(default_factory=_default_models)
    paper: dict[str, Any] = field(default_factory=dict)


# ====================================================================== cells (names and specs)


def _check(cfg: RobustnessConfig) -> None:
    names = [m.name for m in cfg.models]
    if len(names) < 2 or any(n is None for n in names) or len(set(names)) != len(names):
        raise ValueError(f"{cfg.name}: models must hold at least two networks with distinct names (the first is the "
                         f"plain reference); got {names}. Give every [[models]] entry a 'name'.")
    for m in cfg.models:
        if m.dataset not in (None, cfg.dataset):
            raise ValueError(f"{cfg.name}: model {m.name!r} sets dataset {m.dataset!r}, but every network is "
                             f"evaluated on the config's {cfg.dataset!r}; drop the model's 'dataset'.")
    for key in ("linf_eps", "l2_eps", "ossa_budgets"):
        v = getattr(cfg, key)
        if not v or any(isinstance(e, bool) or not isinstance(e, int | float) or not e > 0 for e in v):
            raise ValueError(f"{cfg.name}: {key} must be a non-empty list of budgets > 0; got {v!r}.")


def _draw(cfg: RobustnessConfig) -> dict[str, Any]:
    return {"dataset": cfg.dataset, "n_samples": cfg.n_samples, "seed": cfg.seed}


def _robust_draw(cfg: RobustnessConfig) -> dict[str, Any]:
    return {**_draw(cfg), "robust_samples": cfg.robust_samples}


def _sample_cell(cfg: RobustnessConfig) -> tuple[str, dict[str, Any]]:
    return "sample", _draw(cfg)


def _model_cell(cfg: RobustnessConfig, spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    return f"model/{spec.name}", {"net": net_spec(cfg, spec), "draw": _draw(cfg)}


def _robust_cell(cfg: RobustnessConfig, spec: ModelSpec, norm: str, eps: float) -> tuple[str, dict[str, Any]]:
    return f"robust/{spec.name}/{norm}/{eps:g}", {
        "net": net_spec(cfg, spec), "draw": _robust_draw(cfg), "norm": norm, "eps": float(eps),
        "ensemble": config_to_dict(cfg.ensemble), "attack_seed": cfg.seed, "batch_size": cfg.batch_size}


def _ossa_cell(cfg: RobustnessConfig, spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    return f"ossa/{spec.name}", {"net": net_spec(cfg, spec), "draw": _draw(cfg),
                                 "budgets": [float(b) for b in cfg.ossa_budgets], "batch_size": cfg.batch_size}


def _threats(cfg: RobustnessConfig) -> list[tuple[str, float]]:
    return [("linf", float(e)) for e in cfg.linf_eps] + [("l2", float(e)) for e in cfg.l2_eps]


def _schedule(cfg: RobustnessConfig, spec: ModelSpec) -> str:
    scratch = f"{cfg.training or 'the preset'}" + (f" + {spec.overrides}" if spec.overrides else "")
    images = f" on {spec.train_images} training images (seeded draw)" if spec.train_images else ""
    if spec.finetune is None:
        return f"from scratch, {scratch}{images}"
    return f"fine-tuned with {spec.finetune}{images} from the plain net ({scratch})"


def robustness_cells(run: Run, cfg: RobustnessConfig, ctx: Context) -> None:
    _check(cfg)
    test = load_split(cfg.dataset, "test", ctx)
    idx = select_samples(len(test), cfg.n_samples, cfg.seed)
    x, y = test.x[idx], test.y[idx]
    sub = select_samples(len(y), cfg.robust_samples, cfg.seed)
    xr, yr = x[sub], y[sub]
    name, spec = _sample_cell(cfg)
    sample: dict[str, Any] = {"n": int(len(y)), "n_robust": int(len(yr)), "classes": [str(c) for c in test.classes],
                              "image_shape": list(x.shape[1:])}
    run.cell(name, lambda: sample, spec=spec)
    for mspec in cfg.models:  # network by network: a stopped run has whole rows
        t0 = time.perf_counter()
        tm = train_network(mspec, arch=cfg.arch, dataset=cfg.dataset, preset=cfg.preset, training=cfg.training,
                           seed=cfg.seed, ctx=ctx)
        load_s = time.perf_counter() - t0
        def record(tm: Any = tm, load_s: float = load_s) -> dict[str, Any]:
            return {**model_record(tm, x, y), "from_cache": tm.from_cache, "train_or_load_s": load_s}

        name, spec = _model_cell(cfg, mspec)
        run.cell(name, record, spec=spec)

        def ossa(tm: Any = tm) -> dict[str, Any]:
            t0 = time.perf_counter()
            c = one_step_curve(OSSA(eps=1.0), tm.model, x, y, cfg.ossa_budgets, seed=cfg.seed,
                               batch_size=cfg.batch_size).as_dict()
            c.pop("lambda_max", None)
            return {**c, "seconds": time.perf_counter() - t0}

        name, spec = _ossa_cell(cfg, mspec)
        run.cell(name, ossa, spec=spec)
        for norm, eps in _threats(cfg):
            def evaluate(tm: Any = tm, norm: str = norm, eps: float = eps) -> dict[str, Any]:
                return worst_case(tm.model, xr, yr, norm=norm, eps=eps, ensemble=cfg.ensemble, seed=cfg.seed,
                                  batch_size=cfg.batch_size)

            name, spec = _robust_cell(cfg, mspec, norm, eps)
            run.cell(name, evaluate, spec=spec)


# ====================================================================== report


def _label(norm: str, eps: float) -> str:
    return f"{'L∞' if norm == 'linf' else 'L2'} {eps:g}"


def _shared_budgets(cfg: RobustnessConfig) -> list[float]:
    """The L2 budgets OSSA and the ensemble both measure."""
    return [float(b) for b in cfg.ossa_budgets if any(math.isclose(b, e) for e in cfg.l2_eps)]


def _at(curve: dict[str, Any], b: float) -> float:
    j = next(i for i, v in enumerate(curve["budgets"]) if math.isclose(v, b))
    return float(curve["fooling_ratio"][j])


def _measured(cfg: RobustnessConfig, results: Results, m: ModelSpec) -> dict[Any, Any] | None:
    """The stored cells of network ``m``, or None when any is missing (the run stopped before it)."""
    cells: dict[Any, tuple[str, dict[str, Any]]] = {"model": _model_cell(cfg, m), "ossa": _ossa_cell(cfg, m),
             **{(n, e): _robust_cell(cfg, m, n, e) for n, e in _threats(cfg)}}
    if not all(results.has(*c) for c in cells.values()):
        return None
    return {k: results.cell(*c) for k, c in cells.items()}


def robustness_report(cfg: RobustnessConfig, results: Results) -> list[Block]:
    import matplotlib.pyplot as plt

    _check(cfg)
    sample = results.cell(*_sample_cell(cfg))
    threats = _threats(cfg)
    names = [str(m.name) for m in cfg.models]
    measured = {str(m.name): _measured(cfg, results, m) for m in cfg.models}
    missing = [n for n in names if measured[n] is None]
    got: dict[str, dict[Any, Any]] = {n: v for n, v in measured.items() if v is not None}
    done = [n for n in names if n in got]
    specs = {str(m.name): m for m in cfg.models}
    ref = names[0]

    blocks: list[Block] = [
        Heading("Worst-case robust accuracy of the defenses, and OSSA beside the strong attacks"),
        Paragraph(
            f"`{cfg.arch}` on `{cfg.dataset}`, seed {cfg.seed}; {sample['n']} test images (seeded draw) for OSSA and "
            f"the sample accuracy, {sample['n_robust']} of them (seeded sub-draw) for the worst-case ensemble; the first "
            f"network, `{ref}`, is the reference. Worst-case attacks: {cfg.ensemble.describe()} Masking checks: "
            f"`{cfg.ensemble.checks}` on at most {cfg.ensemble.check_samples} samples "
            "(fisherscope.evaluation.robust_accuracy). " + str(cfg.paper.get("note", ""))),
    ]
    if missing:
        blocks.append(Paragraph(
            f"PARTIAL RUN: no results yet for {', '.join(f'`{n}`' for n in missing)} (the run stopped before these "
            "networks); resume it (`--resume`) to complete the tables."))
    if not done:
        return blocks

    net_rows = [[n, pct(got[n]["model"]["test_accuracy"]), pct(got[n]["model"]["sample_accuracy"]),
                 _schedule(cfg, specs[n]), got[n]["model"]["epochs"], got[n]["model"]["train_wall_time_s"]]
                for n in done]
    blocks.append(Table(["network", "test acc %", "sample acc %", "training", "epochs", "train time (s)"], net_rows,
                        caption="The networks"))

    ra_rows = [[n, pct(got[n][threats[0]]["clean_accuracy"]),
                *[pct(got[n][t]["robust_accuracy"]) for t in threats],
                ", ".join(sorted({f["code"] for t in threats for f in got[n][t]["flags"]})) or "none"] for n in done]
    blocks.append(Table(["network", "clean %", *[f"{_label(*t)} %" for t in threats], "masking flags"], ra_rows,
                        caption=f"Worst-case robust accuracy (% of all {sample['n_robust']} sampled images: correct on the "
                                "clean image and after every attack)"))

    attack_names = [a for a, _ in got[done[0]][threats[0]]["per_attack"]]
    step_rows = [[n, _label(*t), *[pct(acc) for _, acc in got[n][t]["per_attack"]], got[n][t]["seconds"]]
                 for n in done for t in threats]
    blocks.append(Table(["network", "threat", *[f"after {a} %" for a in attack_names], "seconds"], step_rows,
                        caption="Robust accuracy after each attack of the ensemble (cumulative), and the time of each "
                                "evaluation (checks included)"))

    flag_rows = [[n, _label(*t), f["code"], f["message"]] for n in done for t in threats for f in got[n][t]["flags"]]
    blocks.append(Table(["network", "threat", "flag", "finding"], flag_rows or [["–", "–", "none", "no masking flag "
                                                                                 "was raised"]],
                        caption="Gradient-masking flags and their sentences"))

    shared = _shared_budgets(cfg)
    ossa_rows = [[n, got[n]["ossa"]["n_correct"], *[pct(f) for f in got[n]["ossa"]["fooling_ratio"]]] for n in done]
    blocks.append(Table(["network", "attacked", *[f"OSSA {b:g}" for b in got[done[0]]["ossa"]["budgets"]]], ossa_rows,
                        caption="OSSA fooling ratio (%) at Shen et al.'s L2 budgets (before clipping), on the sampled "
                                "images each network classifies correctly"))

    if shared:
        cmp_rows = []
        for n in done:
            for b in shared:
                r = got[n][("l2", b)]
                cmp_rows.append([n, f"{b:g}", pct(_at(got[n]["ossa"], b)), pct(r["per_attack_fooling"][0]),
                                 pct(r["gradient_fooling_ratio"]), pct(r["fooling_ratio"])])
        blocks.append(Table(["network", "L2 budget", f"OSSA % ({sample['n']} images)", "APGD-CE %", "APGD-CE + APGD-T %", "worst case %"],
                            cmp_rows, caption="Fooling ratio at the same L2 budget: OSSA beside APGD and the whole "
                                              f"ensemble ({sample['n_robust']} images), of the correctly classified "
                                              "images"))
        blocks.append(Heading("Robustness or gradient masking?", 3))
        if ref not in done:
            blocks.append(Paragraph(f"No verdict: the reference `{ref}` has no results yet."))
        verdict_rows = []
        for n in done:
            if n == ref:
                continue
            flags = sorted({f["code"] for b in shared for f in got[n][("l2", b)]["flags"]})
            v = masking_verdict(
                f"`{n}`", f"`{ref}`", shared,
                [_at(got[ref]["ossa"], b) for b in shared], [_at(got[n]["ossa"], b) for b in shared],
                [got[ref][("l2", b)]["fooling_ratio"] for b in shared],
                [got[n][("l2", b)]["fooling_ratio"] for b in shared],
                (got[ref]["ossa"]["n_correct"], got[n]["ossa"]["n_correct"]),
                (got[ref][("l2", shared[0])]["n_correct"], got[n][("l2", shared[0])]["n_correct"]), flags=flags)
            blocks.append(Paragraph(f"**{n}** — {v.sentence}"))
            verdict_rows += [[n, f"{row[0]:g}", *row[1:]] for row in v.rows]  # budgets as set
        if ref in done and len(done) == 1:
            blocks.append(Paragraph(f"No verdict yet: only the reference `{ref}` has results."))
        if verdict_rows:
            blocks.append(Table(["network", "L2 budget", f"OSSA {ref} %", "OSSA network %", f"worst case {ref} %",
                                 "worst case network %", "finding"], verdict_rows,
                                caption="What each verdict is computed from: a lower OSSA ratio beyond two standard "
                                        "errors (plus one image) counts; the strong attacks' gap then decides"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, n in enumerate(done):
        c = got[n]["ossa"]
        axes[0].plot(c["budgets"], [100 * f for f in c["fooling_ratio"]], color=f"C{i}", label=f"{n} OSSA")
        l2 = [e for nm, e in threats if nm == "l2"]
        axes[0].plot(l2, [100 * got[n][("l2", e)]["fooling_ratio"] for e in l2], "o--", color=f"C{i}", ms=5)
        linf = [e for nm, e in threats if nm == "linf"]
        axes[1].plot(linf, [100 * got[n][("linf", e)]["robust_accuracy"] for e in linf], "o-", color=f"C{i}", label=n)
    axes[0].set_xlabel("L2 budget")
    axes[0].set_ylabel("fooling ratio (%)")
    axes[0].set_title("OSSA (lines) and the worst case (dots)", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("L∞ budget")
    axes[1].set_ylabel("worst-case robust accuracy (%)")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = save_figure(fig, results.figures_dir / "robustness_defenses.png")
    blocks.append(Figure(path, "Left: OSSA fooling ratio against the L2 budget (lines) and the worst-case ensemble's "
                               "at the L2 budgets it was run at (dots). Right: worst-case robust accuracy against the "
                               "L∞ budget."))
    return blocks


register("robustness_defenses", RobustnessConfig,
         "Issue 18: worst-case robust accuracy (APGD-CE, APGD-T, Square) with masking flags for each defense, and "
         "OSSA beside the strong attacks: robustness or gradient masking?",
         report=robustness_report)(robustness_cells)
