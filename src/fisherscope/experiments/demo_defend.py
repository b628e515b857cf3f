"""The demo's "defend" section: Shen et al.'s Fisher penalty on digits, plain vs penalised network.

The penalised ``digits_cnn`` is the demo network's training request plus
``defense={"kind": "fisher", "mu": 0.02}`` (cached like any model; about as fast to train
as the plain one). The section compares test accuracy, the distribution of λ_max(G_x)
over the test digits and the OSSA fooling ratio against the L2 budget; then, on a seeded draw of
:data:`ROBUST_IMAGES` test digits, the worst-case robust accuracy of both networks (a reduced
APGD-CE / APGD-T / Square ensemble, :data:`ENSEMBLE`) with the gradient-masking flags, and the
verdict computed from both (:func:`~fisherscope.experiments.robust_kit.masking_verdict`): is the
penalised network's lower OSSA fooling ratio robustness or gradient masking?
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..attacks import OSSA
from ..evaluation import one_step_curve
from .common import select_samples, trained_model
from .kit import DemoConfig, DemoSection, DemoState, add_demo_section
from .report import Block, Figure, Heading, Paragraph, Table, fmt_number, pct, save_figure
from .robust_kit import EnsembleSpec, masking_verdict, worst_case
from .runner import Results, Run

__all__ = ["ENSEMBLE", "MU", "ROBUST_IMAGES", "ROBUST_THREATS", "defend_cells", "defend_headline", "defend_report"]

#: The penalty weight of the demo's penalised network (Shen et al.'s Figure 5 value).
MU = 0.02
BUDGETS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
SHOW = (0.5, 1.0, 2.0)
#: The worst-case evaluation, kept small so that the demo stays fast: a seeded draw of this many
#: test digits, these threats (the L2 ones are OSSA budgets too, for the verdict) and a reduced
#: ensemble (AutoAttack: 100 steps, 9 target classes, 5000 queries, masking checks on 64 samples).
ROBUST_IMAGES = 100
ROBUST_THREATS = (("l2", 0.5), ("l2", 1.0))
ENSEMBLE = EnsembleSpec(apgd_steps=20, n_target_classes=3, square_queries=200, check_samples=16)


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

    def measure_robust() -> dict[str, Any]:
        t0 = time.perf_counter()
        pen = trained_model(cfg.arch, cfg.dataset, ctx, seed=cfg.seed,
                            overrides={"defense": {"kind": "fisher", "mu": MU}})
        idx = select_samples(len(test), ROBUST_IMAGES, cfg.seed)
        x, y = test.x[idx], test.y[idx]
        out: dict[str, Any] = {"n": int(len(y)), "threats": [[n, e] for n, e in ROBUST_THREATS],
                               "ensemble": ENSEMBLE.describe()}
        for name, tm in (("plain", state.trained), ("penalised", pen)):
            out[name] = [worst_case(tm.model, x, y, norm=n, eps=e, ensemble=ENSEMBLE, seed=cfg.seed, batch_size=128)
                         for n, e in ROBUST_THREATS]
        out["seconds"] = time.perf_counter() - t0
        return out

    run.cell("defend/robust", measure_robust, spec=_robust_spec(cfg))


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
    rows = [[labels[n], pct(r[n]["test_accuracy"]), r[n]["lambda_max_mean"], r[n]["lambda_max_median"],
             *[pct(r[n]["fooling_ratio"][r["budgets"].index(b)]) for b in show]] for n in names]
    p, q = r["plain"], r["penalised"]
    robust = _robust_blocks(cfg, results, r, labels)
    return [
        Heading("Defend: the Fisher penalty (Shen et al.)"),
        Paragraph(
            "Shen et al. retrain with cross-entropy + μ Σ_i 1/p_i: the trace of the Fisher matrix in softmax space, "
            "a bound on that matrix's top eigenvalue, not on λ_max(G_x) itself. Here "
            f"`{cfg.arch}` is retrained with "
            f"μ = {r['mu']:g} (same preset and seed, {r['penalised_train_wall_time_s']:.1f} s of training, checkpoint "
            f"`{r['penalised_key'][:12]}`). Test accuracy {fmt_number(pct(p['test_accuracy']))}% → "
            f"{fmt_number(pct(q['test_accuracy']))}%; OSSA fooling ratio at L2 budget 1.0 "
            f"{fmt_number(pct(p['fooling_ratio'][r['budgets'].index(1.0)]))}% → "
            f"{fmt_number(pct(q['fooling_ratio'][r['budgets'].index(1.0)]))}%; median λ_max "
            f"{fmt_number(p['lambda_max_median'])} → {fmt_number(q['lambda_max_median'])} (the penalty pulls p towards uniform, which need not lower λ_max)."
        ),
        Table(["network", "test accuracy %", "mean λ_max", "median λ_max", *[f"OSSA fooling % at {b:g}" for b in show]],
              rows, caption=f"λ_max and fooling ratios over the {p['n_correct']} / {q['n_correct']} of the {r['n_test']} "
                            "test digits each network classifies correctly"),
        Figure(path, "Left: λ_max of G_x over the correctly classified test digits. Right: OSSA fooling ratio against "
                     "the L2 budget."),
        *robust,
    ]


def defend_headline(cfg: DemoConfig, results: Results) -> list[Block]:
    """The demo's headline: the demo network's worst-case robust accuracy at the largest
    L2 budget of :data:`ROBUST_THREATS`, the threat model and the attacks stated."""
    w = results.cell("defend/robust", _robust_spec(cfg))
    threats = [(n, float(e)) for n, e in w["threats"]]
    j = max(range(len(threats)), key=lambda i: (threats[i][0] == "l2", threats[i][1]))
    norm, eps = threats[j]
    c = w["plain"][j]
    flags = ", ".join(f["code"] for f in c["flags"]) or "none"
    return [Paragraph(
        f"**Worst-case robust accuracy of `{cfg.arch}`: {fmt_number(pct(c['robust_accuracy']))}%** at "
        f"{'L∞' if norm == 'linf' else 'L2'} ε = {eps:g} (inputs in [0, 1]; APGD-CE, APGD-T and Square — "
        f"{ENSEMBLE.apgd_steps} steps, {ENSEMBLE.n_target_classes} target classes, {ENSEMBLE.square_queries} "
        f"queries, a reduced AutoAttack ensemble, so an upper bound — on {w['n']} seeded test digits, clean "
        f"accuracy {fmt_number(pct(c['clean_accuracy']))}% on them; gradient-masking flags: {flags}). "
        "Details: [worst-case robust accuracy](#worst-case-robust-accuracy-and-gradient-masking)."
    )]


def _threat(norm: str, eps: float) -> str:
    return f"{'L∞' if norm == 'linf' else 'L2'} {eps:g}"


def _robust_blocks(cfg: DemoConfig, results: Results, r: dict[str, Any], labels: dict[str, str]) -> list[Block]:
    """Worst-case robust accuracy with its flags, and the verdict beside the OSSA numbers."""
    w = results.cell("defend/robust", _robust_spec(cfg))
    threats = [(n, float(e)) for n, e in w["threats"]]
    rows = [[labels[n], _threat(*t), pct(c["clean_accuracy"]), pct(c["robust_accuracy"]),
             *[pct(acc) for _, acc in c["per_attack"]], ", ".join(f["code"] for f in c["flags"]) or "none"]
            for n in ("plain", "penalised") for t, c in zip(threats, w[n], strict=True)]
    flags = [f"{labels[n]}, {_threat(*t)}: {f['message']}" for n in ("plain", "penalised")
             for t, c in zip(threats, w[n], strict=True) for f in c["flags"]]
    shared = [t for t in threats if t[0] == "l2" and t[1] in r["budgets"]]
    blocks: list[Block] = [
        Heading("Worst-case robust accuracy and gradient masking", 3),
        Paragraph(f"On {w['n']} test digits (seeded draw; {w['seconds']:.0f} s for both networks): {w['ensemble']} "
                  f"Masking checks `{ENSEMBLE.checks}` on at most {ENSEMBLE.check_samples} samples."),
        Table(["network", "threat", "clean %", "robust %", *[f"after {a} %" for a, _ in w["plain"][0]["per_attack"]],
               "masking flags"], rows, caption="Worst-case robust accuracy (% of the sampled digits)"),
    ]
    if flags:
        blocks.append(Paragraph("Masking flags: " + " ".join(flags)))
    if shared:
        j = {t: threats.index(t) for t in shared}
        v = masking_verdict(
            f"the penalised network (μ = {r['mu']:g})", "the plain one", [e for _, e in shared],
            [r["plain"]["fooling_ratio"][r["budgets"].index(e)] for _, e in shared],
            [r["penalised"]["fooling_ratio"][r["budgets"].index(e)] for _, e in shared],
            [w["plain"][j[t]]["fooling_ratio"] for t in shared], [w["penalised"][j[t]]["fooling_ratio"] for t in shared],
            (r["plain"]["n_correct"], r["penalised"]["n_correct"]),
            (w["plain"][j[shared[0]]]["n_correct"], w["penalised"][j[shared[0]]]["n_correct"]),
            flags=sorted({f["code"] for t in shared for f in w["penalised"][j[t]]["flags"]}))
        blocks.append(Table(["L2 budget", "OSSA plain %", "OSSA penalised %", "worst case plain %",
                             "worst case penalised %", "finding"],
                            [[f"{row[0]:g}", *row[1:]] for row in v.rows],  # budgets as set
                            caption="OSSA (all test digits) beside the worst-case ensemble (the sampled digits) at "
                                    "the same L2 budget, fooling ratios of the correctly classified digits"))
        blocks.append(Paragraph(f"**Robustness or gradient masking?** {v.sentence}"))
    return blocks


def _robust_spec(cfg: DemoConfig) -> dict[str, Any]:
    """What decides the worst-case cell (the networks are the demo's, decided by the config)."""
    return {"images": ROBUST_IMAGES, "threats": [list(t) for t in ROBUST_THREATS], "ensemble": ENSEMBLE.describe(),
            "mu": MU, "seed": cfg.seed, "arch": cfg.arch, "dataset": cfg.dataset}


add_demo_section(DemoSection("defend", 50.0, defend_cells, defend_report, headline=defend_headline))
