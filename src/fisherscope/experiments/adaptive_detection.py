"""Every detector against an attacker who knows it (``configs/adaptive-detection.toml``).

One protocol (:func:`~fisherscope.evaluation.evaluate_detectors`) and three settings side by
side, on the unified table's attacks and budgets:

- **oblivious**: the attacks of the unified table, which ignore the detectors;
- **κ-C&W**: Carlini & Wagner's L2 attack with confidence κ (``kappa_sweep``) — it does not
  know the detectors either, it only pushes the wrong class to a logit margin κ; supervised
  detectors are trained on that very attack;
- **adaptive**: :class:`~fisherscope.attacks.DetectorAwarePGD` against each fitted detector
  (its torch mirror, a logistic surrogate for the random forest, EOT over dropout masks for
  BU), inside the ε-ball of each oblivious attack named in ``adaptive_attacks``; success is
  judged by the real detector at its 5%-FPR threshold.

The reconstruction detector needs a decoder: with ``reconstruction_arch`` set, it runs with
max softmax and PCA whitening (Hendrycks & Gimpel's three detectors) on that model, under the
same attacks, settings and images. Cells: the model facts; per model one evaluation of the
oblivious attacks and the κ sweep, and one small evaluation per (adaptive budget, detector) —
the same seed gives the same adversarials, splits and fitted detector as the big one, and a
killed run loses at most one small cell. The report reads those cells only, and cites
published numbers as the config's ``[paper]`` table states them (facts beside ours, never a
ranking).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import Context, register
from .detection_kit import (
    DETECTOR_LABELS,
    DetectionConfig,
    attack_rows,
    attack_table,
    build_attacks,
    detection_tables,
    errors_paragraph,
    evaluate,
    evaluation_spec,
    main_detectors,
    model_cell,
    pct,
    reconstruction_cfg,
    record_model,
    settings_table,
    sources,
    table_rows,
)
from .report import Block, Heading, Paragraph, Table, fmt_number
from .runner import Results, Run

__all__ = ["AdaptiveDetectionConfig", "adaptive_cells", "adaptive_report"]

#: Hendrycks & Gimpel's detectors, run on the decoder model
DECODER_DETECTORS = ["reconstruction", "softmax", "pca_whitening"]


@dataclass(frozen=True)
class AdaptiveDetectionConfig(DetectionConfig):
    """:class:`~.detection_kit.DetectionConfig` plus the adaptive attack and the κ sweep."""

    adaptive_attacks: list[str] = field(default_factory=list)  # oblivious attacks whose budget is reused
    adaptive_steps: int = 100
    adaptive_modes: list[str] = field(default_factory=lambda: ["penalty", "orthogonal"])
    adaptive_restarts: int = 1
    adaptive_margin: float = 0.1  # in standard deviations of the clean calibration scores
    adaptive_eot: int = 1  # draws of the MC-dropout feature (n masks each) per gradient (BU, KD+BU)
    kappa_sweep: list[float] = field(default_factory=lambda: [5.0, 10.0, 20.0])


def _settings(cfg: AdaptiveDetectionConfig) -> Any:
    from ..evaluation import AdaptiveSettings

    return AdaptiveSettings(steps=cfg.adaptive_steps, modes=tuple(cfg.adaptive_modes), restarts=cfg.adaptive_restarts,
                            margin=cfg.adaptive_margin, eot_iter=cfg.adaptive_eot)


def _adaptive_spec(cfg: AdaptiveDetectionConfig) -> dict[str, Any]:
    return {"adaptive_attacks": list(cfg.adaptive_attacks), "adaptive_steps": cfg.adaptive_steps,
            "adaptive_modes": list(cfg.adaptive_modes), "adaptive_restarts": cfg.adaptive_restarts,
            "adaptive_margin": cfg.adaptive_margin, "adaptive_eot": cfg.adaptive_eot,
            "kappa_sweep": [float(k) for k in cfg.kappa_sweep]}


def _decoder_detectors(cfg: AdaptiveDetectionConfig) -> list[str]:
    return [d for d in DECODER_DETECTORS if d in cfg.detectors]


def _main_cell(cfg: AdaptiveDetectionConfig, prefix: str, detectors: list[str]) -> tuple[str, dict[str, Any]]:
    """The oblivious attacks and the κ sweep, every detector, one evaluation."""
    return prefix, evaluation_spec(cfg, attacks=cfg.attacks, detectors=detectors, cross_attack=False,
                                   kappa_sweep=[float(k) for k in cfg.kappa_sweep])


def _adaptive_cell(cfg: AdaptiveDetectionConfig, prefix: str, budget: str, detector: str
                   ) -> tuple[str, dict[str, Any]]:
    """One detector, fitted as in the main cell, attacked adaptively in the budget of one attack.

    Its own evaluation of the one attack (same seed: the same adversarials, splits and fits as
    the main cell) keeps every cell a few minutes long, so a killed run resumes with little lost.
    """
    spec = next(a for a in cfg.attacks if a.name == budget)
    return f"{prefix}/adaptive/{budget}/{detector}", evaluation_spec(
        cfg, attacks=[spec], detectors=[detector], cross_attack=False, **_adaptive_spec(cfg))


def _check(cfg: AdaptiveDetectionConfig) -> None:
    names = [a.name for a in cfg.attacks]
    unknown = [a for a in cfg.adaptive_attacks if a not in names]
    if unknown:
        raise ValueError(f"adaptive_attacks names {unknown}, which are not among the attacks {names}.")


def _evaluate(run: Run, cfg: AdaptiveDetectionConfig, ctx: Context, prefix: str, detectors: list[str]) -> None:
    trained, x, y = sources(cfg, ctx)
    record_model(run, cfg, trained, len(y))
    attacks = build_attacks(cfg.attacks)
    evaluate(run, *_main_cell(cfg, prefix, detectors), cfg, ctx, trained, x, y, attacks, detectors,
             cross_attack=False, kappa_sweep=tuple(cfg.kappa_sweep))
    for budget in cfg.adaptive_attacks:
        for d in detectors:
            evaluate(run, *_adaptive_cell(cfg, prefix, budget, d), cfg, ctx, trained, x, y, {budget: attacks[budget]},
                     [d], cross_attack=False, adaptive=[budget], adaptive_settings=_settings(cfg))


def adaptive_cells(run: Run, cfg: AdaptiveDetectionConfig, ctx: Context) -> None:
    _check(cfg)
    trained, _, y = sources(cfg, ctx)
    facts = record_model(run, cfg, trained, len(y))
    _evaluate(run, cfg, ctx, "adaptive", main_detectors(cfg, facts["has_decoder"]))
    dec = reconstruction_cfg(cfg, facts["has_decoder"])
    if dec is not None:
        _evaluate(run, dec, ctx, f"adaptive/{dec.arch}", _decoder_detectors(cfg))


def _records(cfg: AdaptiveDetectionConfig, results: Results, prefix: str, detectors: list[str]
             ) -> tuple[list[dict[str, Any]], float, list[str]]:
    """The main cell's records plus the adaptive rows of every stored (budget, detector) cell; the
    total wall time; and the (budget / detector) cells not stored yet (a run stopped early)."""
    main = results.cell(*_main_cell(cfg, prefix, detectors))
    recs, wall, missing = list(main["records"]), float(main["wall_s"]), []
    for budget in cfg.adaptive_attacks:
        for d in detectors:
            cell = _adaptive_cell(cfg, prefix, budget, d)
            if not results.has(*cell):
                missing.append(f"{DETECTOR_LABELS.get(d, d)} in the {budget} budget")
                continue
            c = results.cell(*cell)
            recs += [r for r in c["records"] if r["kind"] == "table" and r.get("setting") == "adaptive"]
            wall += float(c["wall_s"])
    return recs, wall, missing


# ------------------------------------------------------------------------------- report


def mirror_table(records: list[dict[str, Any]], detectors: list[str], cfg: AdaptiveDetectionConfig) -> Table:
    """How the attacker differentiated each detector, and the adaptive attack's own numbers."""
    ada = table_rows(records, "adaptive")
    rows = []
    for d in detectors:
        for a in cfg.adaptive_attacks:
            r = ada.get((d, a))
            if r is None or r.get("error"):
                rows.append([DETECTOR_LABELS.get(d, d), a, "error" if r else "n/a", "–", "–", "–", "–", "–"])
                continue
            modes = " / ".join(f"{pct(r.get(f'evasion_{m}')):.1f}" for m in (*cfg.adaptive_modes, "oblivious"))
            sur = r.get("surrogate_agreement")
            rows.append([DETECTOR_LABELS.get(d, d), a, r["mirror"], f"{pct(r['mirror_agreement']):.1f}",
                         "–" if sur is None else f"{pct(sur):.1f}", f"{pct(r['success_rate']):.1f}", modes,
                         fmt_number(r.get("mean_l2"))])
    return Table(["detector", "budget of", "gradient through", "attacker's flag = detector's flag %",
                  "surrogate agrees with the forest %", "misclassified %",
                  f"evasion % by candidate ({' / '.join((*cfg.adaptive_modes, 'oblivious'))})", "mean L2"], rows,
                 caption="The adaptive attack: exact mirror, EOT over dropout masks, or a logistic surrogate of the "
                         "random forest; agreement of the attacker's flag with the real detector's on the clean "
                         "calibration images and the adversarials; evasion of each candidate alone")


def _published(cfg: AdaptiveDetectionConfig) -> list[Block]:
    pub = cfg.paper.get("published", [])
    if not pub:
        return []
    rows = [[p.get("paper", ""), p.get("detector", ""), p.get("dataset", ""), p.get("setting", ""), p.get("result", "")]
            for p in pub]
    return [Heading("Published results on the same question", 3),
            Paragraph(cfg.paper.get("note", "As stated in the papers; their models, attacks and protocols differ "
                                             "from ours, so the numbers sit beside ours, not in one ranking.")),
            Table(["paper", "detector", "dataset", "setting", "reported"], rows)]


def _section(cfg: AdaptiveDetectionConfig, facts: dict[str, Any], recs: list[dict[str, Any]], wall: float,
             missing: list[str], detectors: list[str], title: str) -> list[Block]:
    names = [s.name for s in cfg.attacks]
    atk = attack_rows(recs)
    n_test = next((x["n_correct_test"] for x in recs if x["kind"] == "table" and x.get("n_correct_test")), 0)
    partial = [Paragraph(
        f"PARTIAL RUN: no adaptive attack yet on {', '.join(missing)} (the run stopped before these cells; "
        "their adaptive columns read n/a). Resume it (`--resume`) to complete the tables.")] if missing else []
    return [
        Heading(title, 3),
        *partial,
        Paragraph(f"`{cfg.arch}` (test accuracy {fmt_number(pct(facts['test_accuracy']))}%, checkpoint "
                  f"`{facts['checkpoint_key'][:12]}`), {facts['n_images']} random test images (seed {cfg.seed}) split "
                  f"fit / calibrate / test = {cfg.splits}; {n_test} correctly classified test images are the sources "
                  "of every evasion rate."),
        attack_table(cfg.attacks, atk),
        settings_table(recs, detectors, cfg.adaptive_attacks, cfg.kappa_sweep, "evasion_rate",
                       "Evasion rate %: of the correctly classified test images, the fraction whose adversarial is "
                       "misclassified and not flagged at the detector's 5%-FPR threshold (higher = the detector "
                       "stops fewer attacks)"),
        settings_table(recs, detectors, cfg.adaptive_attacks, cfg.kappa_sweep, "tpr",
                       "TPR % at the 5%-FPR threshold among the misclassified adversarials of each setting"),
        settings_table(recs, detectors, cfg.adaptive_attacks, cfg.kappa_sweep, "auroc",
                       "AUROC % (clean test images vs misclassified adversarials)"),
        mirror_table(recs, detectors, cfg),
        *detection_tables(recs, detectors, names, "Oblivious attacks, every attack of the unified table: AUROC % "
                                                  "[95% interval]")[:1],
        *errors_paragraph(recs),
        Paragraph(f"Evaluation wall time {wall:.0f} s in all (when the cells were computed)."),
    ]


def adaptive_report(cfg: AdaptiveDetectionConfig, results: Results) -> list[Block]:
    facts = results.cell(*model_cell(cfg))
    main = main_detectors(cfg, facts["has_decoder"])
    blocks: list[Block] = [
        Heading(f"Detectors against attackers who know them, `{cfg.arch}` ({cfg.dataset})"),
        Paragraph(
            "Threat model: the attacker knows the classifier, the fitted detector and its threshold, and has the "
            "ε-ball of the oblivious attack (same norm, same ε); an adversarial counts against a detector only if "
            "it is misclassified **and** the real detector does not flag it. The adaptive attack "
            f"(`DetectorAwarePGD`, {cfg.adaptive_steps} steps per mode, modes {', '.join(cfg.adaptive_modes)}, "
            f"{cfg.adaptive_restarts} restart(s), margin {cfg.adaptive_margin:g} clean-score standard deviations, "
            f"{cfg.adaptive_eot} draw(s) of the {cfg.mc_samples} dropout masks per gradient for BU) differentiates each "
            "detector through its torch "
            "mirror; the oblivious adversarial is one more candidate per image. κ-C&W knows no detector: it only "
            "asks for a confident wrong class. An evasion rate is an upper bound on what the detector stops only "
            "for the attacks tried: a stronger attacker can do better, never worse."),
        *_section(cfg, facts, *_records(cfg, results, "adaptive", main), main, f"`{cfg.arch}`: every detector"),
    ]
    dec = reconstruction_cfg(cfg, facts["has_decoder"])
    if dec is not None:
        dets = _decoder_detectors(cfg)
        title = f"`{dec.arch}` (a decoder): Hendrycks & Gimpel's detectors"
        if results.has(*model_cell(dec)) and results.has(*_main_cell(dec, f"adaptive/{dec.arch}", dets)):
            blocks += _section(dec, results.cell(*model_cell(dec)),
                               *_records(dec, results, f"adaptive/{dec.arch}", dets), dets, title)
        else:
            blocks += [Heading(title, 3), Paragraph(
                f"PARTIAL RUN: nothing stored yet for `{dec.arch}` (the run stopped before it); resume it "
                "(`--resume`) to add this section.")]
    blocks += _published(cfg)
    return blocks


register("adaptive_detection", AdaptiveDetectionConfig,
         "Every detector against oblivious, confident (κ-C&W) and adaptive attacks in the same budgets.",
         report=adaptive_report)(adaptive_cells)
