"""Adaptive evaluation of detectors: the attacker knows the fitted detector and its threshold.

:func:`~fisherscope.evaluation.evaluate_detectors` with ``adaptive=True`` calls
:func:`adaptive_evaluation` for every fitted detector and every attack whose budget can be
reused (a budgeted L∞ or L2 attack: FGM, BIM, PGD, APGD, OSSA, ...). The attacker gets

- the detector's score as a differentiable torch function of the images
  (:func:`detector_torch_score`: the torch mirrors of its features,
  :data:`~fisherscope.features.TORCH_FEATURES`, and its head,
  :meth:`~fisherscope.detectors.Detector.decision_torch`); where the head has no gradient (a
  random forest) a :class:`~fisherscope.detectors.LogisticSurrogate` fitted on the very rows
  the detector was fitted on, thresholded at the same false-positive rate on the same clean
  calibration rows;
- the fitted threshold, and a scale (the standard deviation of the calibration clean scores)
  in which the attack measures its safety margin;
- the same ε and norm as the oblivious attack (``steps`` iterations of
  :class:`~fisherscope.attacks.DetectorAwarePGD` per mode), and the oblivious adversarial
  itself as one more candidate (an attacker who knows the detector can check whether the
  plain attack already passes it); per sample the best candidate is kept: one that evades,
  else a misclassified one with the lowest real score.

Success is judged by the **real** detector on the real (numpy) features: an adaptive
adversarial *evades* when it is misclassified and its real score is at most the threshold
(``predict`` flags scores strictly above it). ``evasion_rate`` is the fraction of the
correctly classified test images whose adversarial evades. The row also says how the torch
score was made (``mirror``: ``"exact"``, ``"eot"`` for a randomised feature such as BU's
dropout masks, ``"surrogate"``) and how often the attacker's flag agreed with the real one on
the test clean rows and the adaptive adversarials (``mirror_agreement``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from .._batching import chunks, predict
from .._validation import NON_NEGATIVE, POSITIVE, POSITIVE_INT, check_params, one_of, real
from ..attacks import DetectorAwarePGD
from ..attacks.base import Attack
from ..exceptions import NoTorchMirrorError

__all__ = ["AdaptiveSettings", "adaptable", "adaptive_evaluation", "detector_torch_score"]

#: modes of :class:`~fisherscope.attacks.DetectorAwarePGD`
MODES = ("penalty", "orthogonal")


@dataclass(frozen=True)
class AdaptiveSettings:
    """How :func:`~fisherscope.evaluation.evaluate_detectors` attacks each fitted detector.

    Parameters
    ----------
    steps : int
        Iterations of :class:`~fisherscope.attacks.DetectorAwarePGD` per mode and restart.
    modes : tuple of {"penalty", "orthogonal"}
        The modes run; per sample the adversarial that evades the real detector (else the
        misclassified one with the lowest real score) is kept.
    restarts : int
        Random restarts per mode (for the samples not yet successful under the torch score).
    margin : float
        Safety margin below the threshold, in standard deviations of the clean calibration
        scores.
    kappa : float
        Classifier logit margin after which the classifier term rests.
    eot_iter : int
        Draws of a randomised score averaged per gradient. One draw of BU's torch mirror is
        already the variance over the feature's ``n`` dropout masks (50 in Feinman et al.'s
        setting), each with its gradient, so the default is one draw.
    penalty_weight : float
        λ of the penalty mode.
    attacks : tuple of str, optional
        Names of the oblivious attacks whose budget (ε, norm) is reused; default every
        budgeted L∞ / L2 attack.
    """

    steps: int = 100
    modes: tuple[str, ...] = MODES
    restarts: int = 1
    margin: float = 0.1
    kappa: float = math.inf
    eot_iter: int = 1
    penalty_weight: float = 1.0
    attacks: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_params("AdaptiveSettings", self, {
            "steps": POSITIVE_INT, "restarts": POSITIVE_INT, "margin": NON_NEGATIVE, "kappa": real(ge=0, finite=False),
            "eot_iter": POSITIVE_INT, "penalty_weight": POSITIVE,
        })
        modes = tuple(self.modes)
        if not modes or len(set(modes)) != len(modes):
            raise ValueError(f"AdaptiveSettings: modes must be distinct names from {list(MODES)}; got {modes!r}.")
        for m in modes:
            check_params("AdaptiveSettings", {"modes": m}, {"modes": one_of(*MODES)})
        object.__setattr__(self, "modes", modes)
        if self.attacks is not None:
            object.__setattr__(self, "attacks", tuple(str(a) for a in self.attacks))


def adaptable(attack: Any) -> bool:
    """Whether an attack's budget can be reused by the adaptive attack (budgeted, L∞ or L2)."""
    return (isinstance(attack, Attack) and attack.budgeted and getattr(attack, "eps", None) is not None
            and attack.norm in ("linf", "l2"))


def _feature_part(feature: Any, model: nn.Module, generator: torch.Generator | None
                  ) -> tuple[Callable[[Tensor], Tensor], bool]:
    """(x -> torch features, randomised?) for one :class:`~fisherscope.evaluation.Feature`."""
    from ..features import TORCH_FEATURES

    name = feature.fn
    if not isinstance(name, str):
        raise NoTorchMirrorError(
            f"the feature {getattr(name, '__name__', name)!r} is a custom callable, which has no differentiable torch "
            "mirror; name a fisherscope feature (Feature('fisher_eigenvalues', ...)) or register a mirror in "
            "fisherscope.features.TORCH_FEATURES under the callable's name and pass that name."
        )
    if name not in TORCH_FEATURES:
        raise NoTorchMirrorError(f"feature {name!r} has no torch mirror; mirrored: {sorted(TORCH_FEATURES)}.")
    fn = TORCH_FEATURES[name]
    params = inspect.signature(fn).parameters
    kwargs = dict(feature.kwargs)
    random = "generator" in params
    if random:
        kwargs["generator"] = generator  # advances: a new draw of the randomness per call (EOT)
    first = next(iter(params))
    net = feature.model or model
    if first == "x":
        return (lambda x: fn(x, **kwargs)), random
    return (lambda x: fn(net, x, **kwargs)), random


def detector_torch_score(detector: Any, features: Sequence[Any], model: nn.Module, *,
                         generator: torch.Generator | None = None) -> tuple[Any, bool]:
    """A fitted detector's score as a :class:`~fisherscope.detectors.TorchScore` of the images.

    Parameters
    ----------
    detector : Detector
        Fitted, with a torch mirror (or a fitted :class:`~fisherscope.detectors.LogisticSurrogate`).
    features : sequence of Feature
        The parts of its feature matrix (``DetectorSpec.parts()``).
    model : nn.Module
        The attacked model (parts without a model of their own use it).
    generator : torch.Generator, optional
        Randomness of randomised features (MC dropout): advanced on every call.

    Returns
    -------
    (TorchScore, bool)
        The score, and whether it is randomised (its gradient needs EOT).
    """
    from ..detectors import TorchScore

    parts, random = [], False
    for f in features:
        part, r = _feature_part(f, model, generator)
        parts.append(part)
        random |= r
    return TorchScore(detector, parts), random


def _scale(values: np.ndarray) -> float:
    s = float(np.std(values)) if values.size else 0.0
    return s if s > 0 and math.isfinite(s) else 1.0


def adaptive_evaluation(
    *,
    model: nn.Module,
    fitted: Any,
    parts: Sequence[Any],
    attack: Attack,
    x: Tensor,
    y: Tensor,
    real_features: Callable[[Tensor], np.ndarray],
    fit_rows: tuple[np.ndarray, np.ndarray],
    calibration_clean: np.ndarray,
    settings: AdaptiveSettings,
    seed: int,
    batch_size: int,
    x_oblivious: Tensor | None = None,
) -> dict[str, Any]:
    """Attack one fitted detector adaptively on the images ``x`` (correctly classified sources).

    Parameters
    ----------
    model, fitted, parts
        The classifier, the fitted and calibrated real detector, its feature parts.
    attack : Attack
        The oblivious attack whose ε and norm are reused.
    x, y : Tensor
        Correctly classified test images and their labels.
    real_features : callable
        Rows -> the real (numpy) features of the detector (the protocol's feature cache).
    fit_rows : (X, y)
        The rows the real detector was fitted on (for a surrogate).
    calibration_clean : ndarray
        Real features of the clean calibration rows (the surrogate's threshold; the scale).
    settings : AdaptiveSettings
    seed : int
        Seeds the random starts and the EOT draws.
    batch_size : int
        Images per attack call.
    x_oblivious : Tensor, optional
        The oblivious attack's adversarials of ``x`` (same budget): one more candidate.

    Returns
    -------
    dict
        ``x_adv`` (the kept adversarial per image), ``score`` (real score), ``fooled``,
        ``evaded`` (N,) arrays; ``evaded_<mode>`` per mode; ``mirror``, ``mirror_agreement``,
        ``surrogate_agreement`` (NaN without a surrogate), ``threshold``, ``scale``.
    """
    from ..detectors import LogisticSurrogate

    g_attack = torch.Generator().manual_seed(seed)
    g_eot = torch.Generator().manual_seed(seed + 1)
    surrogate = None
    head = fitted
    if not fitted.has_torch_mirror():
        X_fit, y_fit = fit_rows
        if np.unique(y_fit).size < 2:
            raise NoTorchMirrorError(
                f"{type(fitted).__name__} has no torch mirror and its fitting rows hold one class only, so no "
                "surrogate can be fitted; fit it on clean and adversarial rows."
            )
        surrogate = LogisticSurrogate(fitted).set_params(target_fpr=fitted.target_fpr).fit(X_fit, y_fit)
        surrogate.calibrate(calibration_clean)
        head = surrogate
    score, random = detector_torch_score(head, parts, model, generator=g_eot)
    scale = _scale(head.decision_function(calibration_clean))
    thr = float(fitted.threshold_)
    n = x.shape[0]
    per_mode: dict[str, dict[str, Any]] = {}
    for mode in settings.modes:
        atk = DetectorAwarePGD(
            eps=float(attack.eps), norm=cast(Any, attack.norm), score=score, threshold=score.threshold, scale=scale,  # type: ignore[attr-defined]
            margin=settings.margin, steps=settings.steps, mode=mode, kappa=settings.kappa,  # type: ignore[arg-type]
            penalty_weight=settings.penalty_weight, restarts=settings.restarts,
            eot_iter=settings.eot_iter if random else 1, bounds=attack.bounds,
        )
        x_adv = x.clone()
        for sl in chunks(n, batch_size):
            x_adv[sl] = atk(model, x[sl], y[sl], generator=g_attack).to(x.dtype)
        fooled = (predict(model, x_adv, batch_size, warn=False) != y).cpu().numpy()
        s = fitted.decision_function(real_features(x_adv))
        per_mode[mode] = {"x_adv": x_adv, "fooled": fooled, "score": s, "evaded": fooled & (s <= thr)}
    if x_oblivious is not None:
        fooled = (predict(model, x_oblivious, batch_size, warn=False) != y).cpu().numpy()
        s = fitted.decision_function(real_features(x_oblivious))
        per_mode["oblivious"] = {"x_adv": x_oblivious, "fooled": fooled, "score": s, "evaded": fooled & (s <= thr)}
    # per sample: an evading adversarial first, else a misclassified one with the lowest score
    modes = list(per_mode)
    rank = np.stack([np.where(per_mode[m]["evaded"], 0, np.where(per_mode[m]["fooled"], 1, 2)) for m in modes])
    key = np.stack([per_mode[m]["score"] for m in modes])
    order = np.lexsort((key, rank), axis=0)[0] if len(modes) > 1 else np.zeros(n, dtype=int)
    pick = torch.as_tensor(order, device=x.device)
    x_best = per_mode[modes[0]]["x_adv"].clone()
    for j, m in enumerate(modes[1:], start=1):
        sel = torch.nonzero(pick == j).flatten()
        x_best[sel] = per_mode[m]["x_adv"][sel]
    idx = np.arange(n)
    out: dict[str, Any] = {
        "x_adv": x_best,
        "fooled": np.stack([per_mode[m]["fooled"] for m in modes])[order, idx],
        "score": key[order, idx],
        "evaded": np.stack([per_mode[m]["evaded"] for m in modes])[order, idx],
        **{f"evaded_{m}": per_mode[m]["evaded"] for m in modes},
        "candidate": np.asarray(modes)[order],
        "threshold": thr, "scale": scale,
        "mirror": "surrogate" if surrogate is not None else ("eot" if random else "exact"),
    }
    # agreement of the attacker's flag with the real one (clean calibration rows and the kept adversarials)
    with torch.no_grad():
        t_adv = torch.cat([score(x_best[sl]).detach() for sl in chunks(n, batch_size)]).cpu().numpy()
    real_flag = np.r_[fitted.decision_function(calibration_clean) > thr, out["score"] > thr]
    torch_flag = np.r_[head.decision_function(calibration_clean) > score.threshold, t_adv > score.threshold]
    out["mirror_agreement"] = float(np.mean(real_flag == torch_flag))
    out["surrogate_agreement"] = (surrogate.agreement(np.concatenate([calibration_clean, real_features(x_best)]))
                                  if surrogate is not None else math.nan)
    return out
