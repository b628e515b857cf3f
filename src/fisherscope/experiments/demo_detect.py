"""The demo's "detect" section: every applicable detector against FGM and OSSA on digits.

One call of :func:`~fisherscope.evaluation.evaluate_detectors` on the first
``N_DETECT`` test digits: positives are the successful adversarials of correctly
classified digits, the digits are split by source image into fit / calibrate / test, the
threshold is set at 5% FPR on the calibration split, and everything reported comes from
the test split. Cheap settings keep the section to a few seconds: 160 digits, 10
MC-dropout passes for BU, the eigenvalue detector fitted on clean negatives only (Zhao
add noisy ones; the noise rows are still scored as a control), 200 bootstrap draws.

Beside the oblivious numbers, every detector is attacked by an attacker who knows it
(``adaptive`` rows of the protocol: :class:`~fisherscope.attacks.DetectorAwarePGD` through the
detector's torch mirror, in FGM's L2 ball of 1.5, :data:`ADAPTIVE_STEPS` steps, success judged
by the real detector at its threshold); the section shows the evasion rates side by side and
ranks no detector.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .detection_kit import (
    AttackSpec,
    build_attacks,
    detection_tables,
    evaluate,
    evaluation_spec,
    roc_figure_from,
    settings_table,
)
from .kit import DemoConfig, DemoSection, DemoState, add_demo_section
from .report import Block, Figure, Heading, Paragraph, save_figure
from .runner import Results, Run

__all__ = ["detect_cells", "detect_report"]

N_DETECT = 160
EPS = 1.5
DETECTORS = ["fisher_spectrum", "fisher_score", "kd", "bu", "kdbu", "softmax", "pca_whitening", "lid",
             "mahalanobis", "reconstruction"]


@dataclass(frozen=True)
class _Settings:
    """The detector settings :func:`.detection_kit.detector_specs` reads."""

    seed: int
    dataset: str
    splits: list[float] = field(default_factory=lambda: [0.4, 0.2, 0.4])
    target_fpr: float = 0.05
    n_bootstrap: int = 200
    batch_size: int = 256
    noise_in_fit: list[str] = field(default_factory=list)  # clean negatives only (speed)
    dropout: float = 0.5
    mc_samples: int = 10
    eigenvalues: int = 9
    n_estimators: int = 50
    max_depth: int = 5
    lid_k: int = 10
    whitening_images: int | None = None


ATTACKS = [AttackSpec("FGM", "fgm", {"eps": EPS}), AttackSpec("OSSA", "ossa", {"eps": EPS})]
ROC_POINTS = 100
#: the adaptive attack: in the budget of these attacks, with these settings (cheap: one mode)
ADAPTIVE = ["FGM"]
ADAPTIVE_STEPS = 5
ADAPTIVE_SPEC: dict[str, Any] = {"adaptive": ADAPTIVE, "adaptive_steps": ADAPTIVE_STEPS, "adaptive_modes": ["penalty"],
                 "adaptive_eot": 1}


def _adaptive_settings() -> Any:
    from ..evaluation import AdaptiveSettings

    return AdaptiveSettings(steps=ADAPTIVE_STEPS, modes=tuple(ADAPTIVE_SPEC["adaptive_modes"]),
                            eot_iter=int(ADAPTIVE_SPEC["adaptive_eot"]))


def _cells(cfg: DemoConfig) -> dict[str, tuple[str, dict[str, Any]]]:
    """The section's cells (name, spec), from the demo config alone."""
    model = {"arch": cfg.arch, "dataset": cfg.dataset, "seed": cfg.seed}
    settings = _Settings(seed=cfg.seed, dataset=cfg.dataset)
    return {
        "setup": ("detect/setup", {**model, "detectors": DETECTORS}),
        "detect": ("detect", evaluation_spec(settings, attacks=ATTACKS, detectors=DETECTORS, cross_attack=False,
                                             roc_points=ROC_POINTS, arch=cfg.arch, n=N_DETECT, **ADAPTIVE_SPEC)),
    }


def detect_cells(run: Run, state: DemoState) -> None:
    cfg = _Settings(seed=state.config.seed, dataset=state.config.dataset)
    cells = _cells(state.config)
    model, test = state.model, state.test
    x, y = test.x[:N_DETECT], test.y[:N_DETECT]
    has_decoder = callable(getattr(model, "reconstruct", None))
    dets = [d for d in DETECTORS if d != "reconstruction" or has_decoder]
    name, spec = cells["setup"]
    run.cell(name, lambda: {"detectors": dets, "has_decoder": has_decoder}, spec=spec)
    evaluate(run, *cells["detect"], cfg, state.context, state.trained, x, y, build_attacks(ATTACKS), dets,
             cross_attack=False, roc_points=ROC_POINTS, adaptive=ADAPTIVE, adaptive_settings=_adaptive_settings())


def detect_report(cfg: DemoConfig, results: Results) -> list[Block]:
    cells = _cells(cfg)
    setup = results.cell(*cells["setup"])
    dets, has_decoder = setup["detectors"], setup["has_decoder"]
    attacks = [a.name for a in ATTACKS]
    r = results.cell(*cells["detect"])
    figs = []
    for a in attacks:
        fig = roc_figure_from(r, dets, a, title=f"{a}, L2 budget {EPS}: test split")
        figs.append(Figure(save_figure(fig, results.figures_dir / f"detect_roc_{a.lower()}.png"),
                           f"ROC curves of the detectors against {a} (AUROC in the legend)."))
    atk = {rec["attack"]: rec for rec in r["records"] if rec["kind"] == "attack"
           and rec.get("setting", "oblivious") == "oblivious"}
    n_split = r["settings"]["n_per_split"]
    missing = "" if has_decoder else (" The reconstruction detector needs a model with a decoder "
                                      "(`hg_mlp`), so it is not run here.")
    return [
        Heading("Detect: every detector under one protocol, oblivious and adaptive attacks"),
        Paragraph(
            f"The first {N_DETECT} test digits are split by source image into fit / calibrate / test "
            f"({n_split[0]} / {n_split[1]} / {n_split[2]} digits): detectors learn on the first part, the "
            "threshold is set at 5% false positives on the clean digits of the second, and every number "
            "below comes from the third. Positives are only the successful adversarials of correctly "
            f"classified digits (FGM: {atk['FGM']['n_success']} of {atk['FGM']['n_correct']}, OSSA: "
            f"{atk['OSSA']['n_success']} of {atk['OSSA']['n_correct']}); a noise control with the same L2 "
            "norms shows which detectors flag any perturbation. FGM and OSSA ignore the detectors "
            "(oblivious); the adaptive attack knows each fitted detector and its threshold and searches "
            f"FGM's L2 ball of {EPS} for an image that is misclassified and not flagged ({ADAPTIVE_STEPS} "
            "steps through the detector's differentiable mirror; the random forest of the eigenvalue "
            "detector through a logistic surrogate). The evasion rate is the fraction of the correctly "
            "classified test digits whose adversarial is misclassified and not flagged: these numbers rank "
            "no detector as robust — a detector that flags the noise control is not detecting attacks, and "
            "one the adaptive attack evades does not stop an attacker who knows it."
            + missing
        ),
        settings_table(r["records"], dets, ADAPTIVE, [], "evasion_rate",
                       f"Evasion rate % in FGM's L2 budget {EPS}: the oblivious FGM beside the adaptive attack "
                       "(test split; higher = the detector stops fewer attacks)"),
        settings_table(r["records"], dets, ADAPTIVE, [], "tpr",
                       "TPR % at the 5%-FPR threshold among the misclassified adversarials, oblivious and adaptive"),
        *detection_tables(r["records"], dets, attacks, "AUROC % [95% bootstrap interval], test split, oblivious "
                                                       "attacks"),
        *figs,
    ]


add_demo_section(DemoSection("detect", 40.0, detect_cells, detect_report))
