"""Hendrycks & Gimpel's softmax-statistic detector (§3.3)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from .._validation import check_param, one_of
from ..features.softmax import SOFTMAX_STATS
from .base import Detector
from .fisher import _named_column

__all__ = ["SoftmaxDetector"]

#: sign that makes each statistic "higher = more adversarial"
_ORIENTATION = {"max_prob": -1.0, "kl_uniform": -1.0, "entropy": 1.0}


class SoftmaxDetector(Detector):
    """A softmax statistic as the score: low confidence = adversarial (Hendrycks & Gimpel §3.3).

    Clean inputs tend to have a larger maximum softmax probability and a larger
    KL(p ‖ uniform) — equivalently a smaller entropy, KL = log K − H — than adversarial
    examples that stop once the target class passes ~50% (Hendrycks & Gimpel §3.3; their
    code uses the KL statistic). The decision is oriented so that higher means more
    adversarial:

    - ``"max_prob"``: −max_k p_k;
    - ``"kl_uniform"``: −KL(p ‖ u);
    - ``"entropy"``: H(p).

    Unsupervised: only the threshold is fitted, on clean rows. Attacks that push the
    target class to high confidence (e.g. large-ε one-step attacks) are *more* confident
    than clean inputs and score low here; AUROC below 0.5 then means that.

    X is either one column (the statistic) or the (N, 3) output of
    :func:`fisherscope.features.softmax_stats` with its default columns
    ``("max_prob", "kl_uniform", "entropy")``, of which ``statistic`` picks one; ``column``
    picks a column of any other matrix by index.

    Parameters
    ----------
    statistic : {"max_prob", "kl_uniform", "entropy"}
        Which statistic (and orientation).
    column : int, optional
        Index of that statistic's column in X; overrides its default position.
    target_fpr : float
        False-positive rate on clean fitting rows at which ``threshold_`` is set.

    References
    ----------
    Hendrycks, D., Gimpel, K. "Early Methods for Detecting Adversarial Images." ICLR
    Workshop 2017 (arXiv:1608.00530), §3.3.

    Examples
    --------
    >>> import numpy as np
    >>> clean = np.array([[0.99], [0.97], [0.995], [0.98]])
    >>> det = SoftmaxDetector(statistic="max_prob", target_fpr=0.0).fit(clean)
    >>> det.predict(np.array([[0.999], [0.55]])).tolist()
    [0, 1]
    """

    feature: ClassVar[str] = "softmax_stats"
    supervised: ClassVar[bool] = False

    def __init__(
        self, *, statistic: str = "max_prob", column: int | None = None, target_fpr: float = 0.05
    ) -> None:
        self.statistic = statistic
        self.column = column
        super().__init__(target_fpr=target_fpr)

    def _values(self, X: np.ndarray) -> np.ndarray:
        check_param(type(self).__name__, "statistic", self.statistic, one_of(*SOFTMAX_STATS))
        return _named_column(X, self.statistic, SOFTMAX_STATS, self.column, type(self).__name__,
                             "softmax_stats")

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self._values(X)

    def _decision(self, X: np.ndarray) -> np.ndarray:
        return _ORIENTATION[self.statistic] * self._values(X)

    def _decision_torch(self, X: torch.Tensor) -> torch.Tensor:
        col = self.column if self.column is not None else (0 if X.shape[1] == 1 else SOFTMAX_STATS.index(self.statistic))
        return _ORIENTATION[self.statistic] * X[:, col]
