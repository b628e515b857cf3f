"""Metrics and protocols: least perturbation (and, later, detector splits and transfer)."""

from __future__ import annotations

from .least_perturbation import LeastPerturbation, least_perturbation

__all__ = ["LeastPerturbation", "least_perturbation"]
