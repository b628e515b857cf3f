"""Every detector against every attack on one model, one protocol (``configs/unified-detection.toml``).

The protocol, the config and the detector recipes live in the kit module
:mod:`.detection_kit` (shared with the Zhao et al. detection reproduction and the demo's
"detect" section). Cells: the model facts, one evaluation of every detector that applies
to the model (the reconstruction detector needs a decoder) and, when the model has none
and ``reconstruction_arch`` is set, the reconstruction detector (with max softmax beside
it) on that model under the same attacks and protocol. The report reads those cells only.
"""

from __future__ import annotations

from typing import Any

from .base import Context, register
from .detection_kit import (
    DETECTOR_LABELS,
    DetectionConfig,
    attack_rows,
    attack_table,
    auroc_heatmap,
    build_attacks,
    cross_rows,
    detection_tables,
    errors_paragraph,
    evaluate,
    evaluation_spec,
    main_detectors,
    model_cell,
    pct,
    reconstruction_cfg,
    record_model,
    sources,
    table_rows,
)
from .report import Block, Figure, Heading, Paragraph, Table, fmt_number, save_figure
from .runner import Results, Run

__all__ = ["unified_cells", "unified_report"]

#: the detectors run on the decoder model beside the main table
RECONSTRUCTION_DETECTORS = ["reconstruction", "softmax"]


def _main_cell(cfg: DetectionConfig) -> tuple[str, dict[str, Any]]:
    return "unified", evaluation_spec(cfg, attacks=cfg.attacks, detectors=cfg.detectors,
                                      cross_attack=cfg.cross_attack)


def _reconstruction_cell(rec_cfg: DetectionConfig) -> tuple[str, dict[str, Any]]:
    return f"reconstruction/{rec_cfg.arch}", evaluation_spec(
        rec_cfg, attacks=rec_cfg.attacks, detectors=RECONSTRUCTION_DETECTORS, cross_attack=False)


def unified_cells(run: Run, cfg: DetectionConfig, ctx: Context) -> None:
    trained, x, y = sources(cfg, ctx)
    facts = record_model(run, cfg, trained, len(y))
    main = main_detectors(cfg, facts["has_decoder"])
    name, spec = _main_cell(cfg)
    evaluate(run, name, spec, cfg, ctx, trained, x, y, build_attacks(cfg.attacks), main,
             cross_attack=cfg.cross_attack)
    rec_cfg = reconstruction_cfg(cfg, facts["has_decoder"])
    if rec_cfg is not None:
        rtrained, rx, ry = sources(rec_cfg, ctx)
        record_model(run, rec_cfg, rtrained, len(ry))
        name, spec = _reconstruction_cell(rec_cfg)
        evaluate(run, name, spec, rec_cfg, ctx, rtrained, rx, ry, build_attacks(cfg.attacks),
                 RECONSTRUCTION_DETECTORS, cross_attack=False)


def unified_report(cfg: DetectionConfig, results: Results) -> list[Block]:
    facts = results.cell(*model_cell(cfg))
    has_decoder = facts["has_decoder"]
    names = [s.name for s in cfg.attacks]
    main = main_detectors(cfg, has_decoder)
    r = results.cell(*_main_cell(cfg))
    blocks: list[Block] = [
        Heading(f"All detectors against all attacks on `{cfg.arch}` ({cfg.dataset})"),
        Paragraph(
            f"`{cfg.arch}` (test accuracy {fmt_number(pct(facts['test_accuracy']))}%, checkpoint "
            f"`{facts['checkpoint_key'][:12]}`), {facts['n_images']} random test images (seed {cfg.seed}), split "
            f"by source image into fit / calibrate / test = {cfg.splits}; thresholds at {100 * cfg.target_fpr:g}% "
            f"FPR on the calibration split; 95% intervals from {cfg.n_bootstrap} bootstrap draws of test images. "
            f"BU / KD+BU: the same weights with dropout {cfg.dropout} at {cfg.mc_samples} MC passes."
        ),
        attack_table(cfg.attacks, attack_rows(r["records"])),
        *detection_tables(r["records"], main, names, "AUROC % [95% interval], seen attack (trained and tested "
                          "on the same attack; unsupervised detectors fit on clean images only)"),
        *errors_paragraph(r["records"]),
    ]
    if "reconstruction" in cfg.detectors and not has_decoder:
        blocks.append(Paragraph(
            f"Reconstruction: n/a on `{cfg.arch}` (no decoder)"
            + (f"; run on `{cfg.reconstruction_arch}` below." if cfg.reconstruction_arch else ".")))
    heat = {DETECTOR_LABELS.get(d, d): [table_rows(r["records"]).get((d, a)) for a in names] for d in main}
    rec_cfg = reconstruction_cfg(cfg, has_decoder)
    if rec_cfg is not None:
        rfacts = results.cell(*model_cell(rec_cfg))
        rr = results.cell(*_reconstruction_cell(rec_cfg))
        blocks += [
            Heading(f"Reconstruction detector on `{rec_cfg.arch}`", 3),
            Paragraph(f"The reconstruction error needs a decoder: `{rec_cfg.arch}` (test accuracy "
                      f"{fmt_number(pct(rfacts['test_accuracy']))}%) attacked with the same attack settings, the same "
                      "images and protocol; max softmax beside it for reference."),
            attack_table(cfg.attacks, attack_rows(rr["records"])),
            *detection_tables(rr["records"], RECONSTRUCTION_DETECTORS, names, "AUROC % [95% interval]"),
        ]
        heat[f"reconstruction (H&G) on {rec_cfg.arch}"] = [
            table_rows(rr["records"]).get(("reconstruction", a)) for a in names]
    blocks.append(Figure(save_figure(auroc_heatmap(heat, names), results.figures_dir / "unified-detection-auroc.png"),
                         "AUROC % (left) and the noise control, AUROC % of adversarial vs noise with the same L2 "
                         "norm (right); test split."))
    for d, m in cross_rows(r["records"]).items():
        blocks.append(Table(["trained on \\ tested on", *names],
                            [[a, *[pct(m.get((a, b))) for b in names]] for a in names],
                            caption=f"{DETECTOR_LABELS.get(d, d)}: AUROC % trained on one attack, tested on each"))
    blocks.append(Paragraph(f"Evaluation wall time {r['wall_s']:.0f} s (when the cell was computed)."))
    return blocks


register("detection_unified", DetectionConfig,
         "Every detector against every attack on one model, one protocol (and reconstruction on a decoder model).",
         report=unified_report)(unified_cells)
