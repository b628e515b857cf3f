"""Metrics and protocols: least perturbation (and the minimal-budget attack), fooling ratio and its curve
against the budget, success rate, distances, transfer, detector evaluation, worst-case robust accuracy
with gradient-masking checks, adaptive attacks against fitted detectors."""

from __future__ import annotations

from .adaptive import AdaptiveSettings, adaptive_evaluation, detector_torch_score
from .curves import FoolingCurve, one_step_curve
from .detection import (
    DetectionMetrics,
    DetectionResult,
    DetectorSpec,
    Feature,
    detection_metrics,
    evaluate_detectors,
    matched_noise,
    source_splits,
)
from .least_perturbation import LeastPerturbation, MinimalBudget, least_perturbation
from .metrics import (
    CalibrationError,
    DistanceSummary,
    FoolingRatio,
    SuccessRate,
    attack_success_rate,
    distance_summary,
    expected_calibration_error,
    fooling_ratio,
)
from .robust import (
    MaskingFlag,
    RobustAccuracy,
    RobustAccuracyCurve,
    robust_accuracy,
    robust_accuracy_curve,
    standard_attacks,
)
from .transfer import COUNT_RULES, TransferMatrix, transfer_from_examples, transfer_matrix

__all__ = [
    "AdaptiveSettings",
    "COUNT_RULES",
    "CalibrationError",
    "DetectionMetrics",
    "DetectionResult",
    "DetectorSpec",
    "DistanceSummary",
    "Feature",
    "FoolingCurve",
    "FoolingRatio",
    "LeastPerturbation",
    "MinimalBudget",
    "MaskingFlag",
    "RobustAccuracy",
    "RobustAccuracyCurve",
    "SuccessRate",
    "TransferMatrix",
    "adaptive_evaluation",
    "attack_success_rate",
    "detection_metrics",
    "detector_torch_score",
    "distance_summary",
    "evaluate_detectors",
    "expected_calibration_error",
    "fooling_ratio",
    "least_perturbation",
    "matched_noise",
    "one_step_curve",
    "robust_accuracy",
    "robust_accuracy_curve",
    "source_splits",
    "standard_attacks",
    "transfer_from_examples",
    "transfer_matrix",
]
