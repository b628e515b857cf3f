"""Adversarial-example detectors behind one scikit-learn interface.

Every detector is a :class:`Detector`: ``fit(X, y)`` on feature matrices made by
:mod:`fisherscope.features` (0 = clean, 1 = adversarial), ``decision_function`` (higher
means more adversarial), ``predict`` at a threshold set for a target false-positive rate
on clean data, and ``score`` = AUROC. ``DETECTORS`` maps registry keys to classes.
"""

from __future__ import annotations

from .base import Detector, threshold_at_fpr

DETECTORS: dict[str, type[Detector]] = {}

__all__ = ["DETECTORS", "Detector", "threshold_at_fpr"]
