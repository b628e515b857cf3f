"""Metrics and protocols: least perturbation, fooling ratio, success rate, distances, transfer (and, later, detector splits)."""

from __future__ import annotations

from .least_perturbation import LeastPerturbation, least_perturbation
from .metrics import (
    DistanceSummary,
    FoolingRatio,
    SuccessRate,
    attack_success_rate,
    distance_summary,
    fooling_ratio,
)
from .transfer import COUNT_RULES, TransferMatrix, transfer_matrix

__all__ = [
    "COUNT_RULES",
    "DistanceSummary",
    "FoolingRatio",
    "LeastPerturbation",
    "SuccessRate",
    "TransferMatrix",
    "attack_success_rate",
    "distance_summary",
    "fooling_ratio",
    "least_perturbation",
    "transfer_matrix",
]
