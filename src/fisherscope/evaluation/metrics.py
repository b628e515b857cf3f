"""Attack-evaluation metrics: fooling ratio, success rate and perturbation-size summaries.

Each function takes tensors (or an :class:`~fisherscope.attacks.AttackResult`) and
returns a small frozen dataclass whose fields say what was counted over what: the
number of samples behind every rate is part of the result, never implicit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .._batching import predict
from .._validation import (
    NON_NEGATIVE,
    POSITIVE_INT,
    check_inputs,
    check_labels,
    check_param,
    param_error,
    warns_once,
)
from ..attacks.base import AttackResult

__all__ = [
    "CalibrationError",
    "DistanceSummary",
    "FoolingRatio",
    "SuccessRate",
    "attack_success_rate",
    "distance_summary",
    "expected_calibration_error",
    "fooling_ratio",
]

NORMS = ("l0", "l1", "l2", "linf")


def _check_mask(mask: Tensor, n: int | None, name: str) -> Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a bool tensor of shape (N,); got {type(mask).__name__}.")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor of shape (N,); got dtype {mask.dtype}. Use {name}.bool().")
    if mask.ndim != 1:
        raise ValueError(f"{name} must be a bool tensor of shape (N,); got shape {tuple(mask.shape)}.")
    if n is not None and mask.shape[0] != n:
        raise ValueError(f"{name} must have one entry per sample, shape ({n},); got shape {tuple(mask.shape)}.")
    return mask


def _rate(num: int, den: int) -> float:
    return num / den if den else float("nan")


# ------------------------------------------------------------------ fooling ratio


@dataclass(frozen=True)
class FoolingRatio:
    """Fooling ratio (Shen et al.): of the originally correct samples, the fraction now wrong.

    Attributes
    ----------
    ratio : float
        ``n_fooled / n_correct`` (NaN when no sample was classified correctly).
    n_fooled : int
        Originally correct samples misclassified after the attack.
    n_correct : int
        Samples classified correctly before the attack (the denominator).
    n : int
        All samples.
    correct, fooled : Tensor
        (N,) bool masks behind the counts (``fooled`` implies ``correct``).
    """

    ratio: float
    n_fooled: int
    n_correct: int
    n: int
    correct: Tensor
    fooled: Tensor

    @property
    def accuracy_clean(self) -> float:
        return _rate(self.n_correct, self.n)

    @property
    def accuracy_adv(self) -> float:
        """Accuracy on the attacked inputs, over all ``n`` samples."""
        return _rate(self.n_correct - self.n_fooled, self.n)


@warns_once
def fooling_ratio(model: nn.Module, x: Tensor, x_adv: Tensor | AttackResult, y: Tensor, *,
                  batch_size: int | None = None) -> FoolingRatio:
    """Fraction of the correctly classified samples that the attack makes misclassified.

    Following Shen et al., samples the model already gets wrong are left out of the
    denominator (they are neither fooled nor robust); ``n_correct`` says how many
    samples the ratio is over. Predictions are recomputed here (eval mode, the model's
    modes restored), never taken from an attack's own success flag.

    Parameters
    ----------
    model : nn.Module
        Maps inputs to logits (N, K).
    x : Tensor
        Clean inputs (N, ...).
    x_adv : Tensor or AttackResult
        Attacked inputs, shaped like ``x`` (an AttackResult's ``x_adv`` is used).
    y : Tensor
        True labels, int64 (N,).
    batch_size : int, optional
        Evaluate the model in chunks of this size (default: one batch).

    Shapes
    ------
    x, x_adv: (N, C, H, W) or (N, D); y: (N,) -> masks (N,).

    References
    ----------
    Shen, C., Peng, Y., Zhang, G., Fan, J. "Defending against adversarial attacks by
    suppressing the largest eigenvalue of Fisher information matrix." arXiv:1909.06137.

    Examples
    --------
    >>> fr = fooling_ratio(model, x, attack(model, x, y), y)
    >>> print(f"fooled: {fr.ratio:.1%} of {fr.n_correct} correctly classified samples")  # doctest: +ELLIPSIS
    fooled: ...% of ... correctly classified samples
    """
    if isinstance(x_adv, AttackResult):
        x_adv = x_adv.x_adv
    check_inputs(x, y, bounds=None)
    check_inputs(x_adv, y, bounds=None, name="x_adv")
    if x_adv.shape != x.shape:
        raise ValueError(
            f"x_adv must have the shape of x, {tuple(x.shape)}; got {tuple(x_adv.shape)}. "
            "Pass the attacked version of each clean sample, in the same order."
        )
    check_param("fooling_ratio", "batch_size", batch_size, POSITIVE_INT.or_none("one batch"))
    check_labels(y, x.shape[0])
    pred = predict(model, x, batch_size)
    pred_adv = predict(model, x_adv, batch_size)
    y = y.to(pred.device)
    correct = pred == y
    fooled = correct & (pred_adv != y)
    n_c, n_f = int(correct.sum()), int(fooled.sum())
    return FoolingRatio(_rate(n_f, n_c), n_f, n_c, int(x.shape[0]), correct, fooled)


# ------------------------------------------------------------------ success rate


@dataclass(frozen=True)
class SuccessRate:
    """Fraction of successful attacks among the samples counted.

    Attributes
    ----------
    rate : float
        ``n_success / n`` (NaN when ``n`` is 0).
    n_success : int
        Successful samples among those counted.
    n : int
        Samples counted (all, or those selected by ``among``).
    """

    rate: float
    n_success: int
    n: int


def attack_success_rate(result_or_mask: AttackResult | Tensor, *, among: Tensor | None = None) -> SuccessRate:
    """Success rate of an attack, from its result or a (N,) bool success mask.

    The success flag is the attack's own definition (misclassified, classified as the
    target, or a keep rule such as Hendrycks & Gimpel's p_target > 0.5; see each
    attack). For the fooling ratio on recomputed predictions use :func:`fooling_ratio`.

    Parameters
    ----------
    result_or_mask : AttackResult or Tensor
        An attack's result (its ``success`` is used) or a bool tensor (N,).
    among : Tensor, optional
        (N,) bool: count only these samples (e.g. the originally correct ones).

    Shapes
    ------
    result_or_mask: (N,) bool; among: (N,) bool.

    Examples
    --------
    >>> r = attack_success_rate(attack.run(model, x, y))
    >>> r.n_success <= r.n == len(x)
    True
    """
    if isinstance(result_or_mask, AttackResult):
        success = result_or_mask.success
    else:
        success = result_or_mask
    success = _check_mask(success, None, "success")
    if among is not None:
        among = _check_mask(among, success.shape[0], "among").to(success.device)
        success = success[among]
    n, k = int(success.shape[0]), int(success.sum())
    return SuccessRate(_rate(k, n), k, n)


# ------------------------------------------------------------------ distances


@dataclass(frozen=True)
class DistanceSummary:
    """Perturbation sizes: per sample, and their mean and median over the selected samples.

    Attributes
    ----------
    per_sample : dict
        ``"l0", "l1", "l2", "linf"`` -> (N,) norms of ``x_adv − x`` for every sample
        (L0 counts input elements, i.e. channels separately, with ``|δ| > l0_tol``).
    selected : Tensor
        (N,) bool: the samples the statistics are over.
    over : str
        ``"success"``, ``"all"`` or ``"mask"``: how ``selected`` was chosen.
    n : int
        Number of selected samples.
    mean, median : dict
        Norm name -> statistic over the selected samples (NaN when none is selected).
        The median of an even count is the mean of the two middle values.
    """

    per_sample: Mapping[str, Tensor]
    selected: Tensor
    over: str
    n: int
    mean: Mapping[str, float]
    median: Mapping[str, float]

    def as_dict(self) -> dict[str, float | int | str]:
        """Flat ``{"mean_l2": ..., "median_l2": ..., "n": ..., "over": ...}`` for reports."""
        out: dict[str, float | int | str] = {"over": self.over, "n": self.n}
        for k in NORMS:
            out[f"mean_{k}"] = self.mean[k]
            out[f"median_{k}"] = self.median[k]
        return out


def distance_summary(
    x: Tensor,
    x_adv: Tensor | AttackResult,
    *,
    over: Literal["success", "all"] | Tensor = "success",
    success: Tensor | None = None,
    l0_tol: float = 0.0,
) -> DistanceSummary:
    """L0 / L1 / L2 / L∞ size of ``x_adv − x`` per sample, with mean and median.

    By default the statistics are over the *successful* samples only — a failed attack's
    perturbation says nothing about how much it takes to fool the model — so the
    success mask must come from somewhere: pass an :class:`AttackResult` as ``x_adv``
    (its ``success`` is used) or ``success=``. ``over="all"`` uses every sample; a bool
    tensor selects the samples explicitly.

    Parameters
    ----------
    x : Tensor
        Clean inputs (N, ...).
    x_adv : Tensor or AttackResult
        Attacked inputs shaped like ``x``, or an attack's result.
    over : {"success", "all"} or Tensor
        Which samples the mean and median are over (default ``"success"``).
    success : Tensor, optional
        (N,) bool success mask; overrides the one of an AttackResult.
    l0_tol : float
        An element counts in L0 when ``|x_adv − x| > l0_tol`` (default 0: any change).

    Shapes
    ------
    x, x_adv: (N, C, H, W) or (N, D); masks (N,) -> every per-sample norm (N,).

    Examples
    --------
    >>> res = attack.run(model, x, y)
    >>> d = distance_summary(x, res)  # over the successful samples
    >>> print(f"mean L2 {d.mean['l2']:.2f} over {d.n} successful samples")  # doctest: +ELLIPSIS
    mean L2 ... over ... successful samples
    """
    if isinstance(x_adv, AttackResult):
        if success is None:
            success = x_adv.success
        x_adv = x_adv.x_adv
    check_inputs(x, bounds=None)
    check_inputs(x_adv, bounds=None, name="x_adv")
    if x_adv.shape != x.shape:
        raise ValueError(
            f"x_adv must have the shape of x, {tuple(x.shape)}; got {tuple(x_adv.shape)}. "
            "Pass the attacked version of each clean sample, in the same order."
        )
    check_param("distance_summary", "l0_tol", l0_tol, NON_NEGATIVE)
    n = x.shape[0]
    if isinstance(over, torch.Tensor):
        selected, how = _check_mask(over, n, "over"), "mask"
    elif over == "success":
        if success is None:
            raise ValueError(
                "over='success' needs the success mask: pass the AttackResult as x_adv, or success=<(N,) bool>, "
                "or choose over='all'."
            )
        selected, how = _check_mask(success, n, "success"), "success"
    elif over == "all":
        selected, how = torch.ones(n, dtype=torch.bool, device=x.device), "all"
    else:
        raise param_error("distance_summary", "over", over, "'success', 'all' or a (N,) bool tensor",
                          "Pass over='success' (needs the success mask), over='all', or a mask.")
    selected = selected.to(x.device)
    flat = (x_adv.detach() - x.detach()).flatten(1)
    mag = flat.abs()
    per = {
        "l0": (mag > l0_tol).sum(1).to(flat.dtype),
        "l1": mag.sum(1),
        "l2": flat.norm(dim=1),
        "linf": mag.amax(1),
    }
    k = int(selected.sum())
    mean: dict[str, float] = {}
    median: dict[str, float] = {}
    for name, v in per.items():
        s = v[selected].double()
        mean[name] = float(s.mean()) if k else float("nan")
        median[name] = float(torch.quantile(s, 0.5)) if k else float("nan")
    return DistanceSummary(per, selected, how, k, mean, median)


# ------------------------------------------------------------------ calibration


@dataclass(frozen=True)
class CalibrationError:
    """Expected calibration error (Guo et al. 2017) and its reliability diagram.

    Attributes
    ----------
    ece : float
        ``Σ_b (n_b / n) · |accuracy_b − confidence_b|`` over the non-empty bins (NaN for n = 0).
    mce : float
        Maximum calibration error: the largest ``|accuracy_b − confidence_b|`` of a non-empty bin.
    n : int
        Samples.
    bin_edges : list of float
        ``n_bins + 1`` equal-width edges on [0, 1]; bin b holds confidences in
        ``(edges[b], edges[b + 1]]`` (the first bin also holds 0).
    bin_counts : list of int
    bin_accuracy, bin_confidence : list of float
        Per bin: the fraction correct and the mean confidence (NaN for an empty bin).
    """

    ece: float
    mce: float
    n: int
    bin_edges: list[float]
    bin_counts: list[int]
    bin_accuracy: list[float]
    bin_confidence: list[float]

    def as_dict(self) -> dict[str, object]:
        return {"ece": self.ece, "mce": self.mce, "n": self.n, "bin_edges": list(self.bin_edges),
                "bin_counts": list(self.bin_counts), "bin_accuracy": list(self.bin_accuracy),
                "bin_confidence": list(self.bin_confidence)}


def expected_calibration_error(logits: Tensor, y: Tensor, *, n_bins: int = 15) -> CalibrationError:
    """Expected calibration error of the top-class confidence, with equal-width bins.

    The confidence of a sample is its largest softmax probability, its prediction the
    argmax of the logits; the samples are binned by confidence into ``n_bins`` equal-width
    bins of [0, 1] (right-closed: ``(b/n_bins, (b+1)/n_bins]``, the first bin closed), and
    the ECE is the count-weighted mean gap between each bin's accuracy and its mean
    confidence (Naeini et al. 2015; Guo et al. 2017, eq. 3). Computed in float64.

    Parameters
    ----------
    logits : Tensor
        (N, K) logits (not probabilities).
    y : Tensor
        (N,) int64 true labels.
    n_bins : int
        Number of bins (default 15, as Guo et al.).

    Returns
    -------
    CalibrationError

    References
    ----------
    Guo, Pleiss, Sun, Weinberger. "On calibration of modern neural networks." ICML 2017.
    Naeini, Cooper, Hauskrecht. "Obtaining well calibrated probabilities using Bayesian
    binning." AAAI 2015.

    Examples
    --------
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.5]])
    >>> round(expected_calibration_error(logits, torch.tensor([0, 1, 1, 0]), n_bins=10).ece, 4)
    0.4908
    """
    check_param("expected_calibration_error", "n_bins", n_bins, POSITIVE_INT)
    from .._validation import check_logits

    check_logits(logits, name="logits")
    check_labels(y, logits.shape[0], logits.shape[1])
    p = torch.softmax(logits.detach().double(), dim=1)
    conf, pred = p.max(dim=1)
    correct = (pred == y.to(pred.device)).double()
    n = int(conf.shape[0])
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    idx = (torch.bucketize(conf.cpu(), edges[1:-1], right=False)).clamp_(0, n_bins - 1)
    counts = torch.bincount(idx, minlength=n_bins)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct.cpu())
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf.cpu())
    nonempty = counts > 0
    acc = torch.where(nonempty, acc_sum / counts.clamp(min=1), torch.nan)
    mean_conf = torch.where(nonempty, conf_sum / counts.clamp(min=1), torch.nan)
    gaps = (acc - mean_conf).abs()
    ece = float((counts[nonempty].double() / n * gaps[nonempty]).sum()) if n else float("nan")
    mce = float(gaps[nonempty].max()) if bool(nonempty.any()) else float("nan")
    return CalibrationError(ece=ece, mce=mce, n=n, bin_edges=edges.tolist(), bin_counts=counts.tolist(),
                            bin_accuracy=acc.tolist(), bin_confidence=mean_conf.tolist())
