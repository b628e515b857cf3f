"""Torch in, numpy out: the features the detectors of :mod:`fisherscope.detectors` work on.

Every feature function takes a model (inputs in ``bounds`` to logits) and a batch ``x``,
runs the model in eval mode (each module's mode is restored; a model left in training
mode gets one :class:`~fisherscope.exceptions.ModelModeWarning`), never touches parameter
gradients or modifies ``x``, works through ``x`` in chunks of ``batch_size`` and returns a
float64 numpy array of shape (n_samples, n_features).

``FEATURES`` (a :class:`~fisherscope._registry.Registry`) maps each name below to its
function, with a one-line description (``FEATURES.describe(name)``); every detector's
``feature`` attribute is one of its keys. Feature function (columns) -> detector key:

- ``fisher_eigenvalues`` (top-k eigenvalues of G_x, zeros past K − 1) -> ``fisher_spectrum``
- ``param_fisher_scores`` (trace, form, normalized form of F_θ) -> ``fisher_score``
- ``penultimate`` (predicted class, last-hidden-layer activations) -> ``kd``
- ``mc_dropout`` (BU = softmax variance under MC dropout [, mean probabilities]) -> ``bu``
- ``kdbu_features`` (the ``penultimate`` columns, then BU) -> ``kdbu``
- ``softmax_stats`` (max probability, KL to uniform, entropy) -> ``softmax``
- ``pixels`` (flattened inputs; the detector fits its PCA whitening) -> ``pca_whitening``;
  ``fit_pca_whitening`` / ``pca_coefficients`` give the whitened coefficients themselves,
  ``PCAWhitening.trailing_variance_score`` the detector's score as a differentiable torch function
- ``reconstruction_error`` (signed mean and / or squared error of ``model.reconstruct``)
  -> ``reconstruction``
- ``layer_activations`` (named layers' outputs side by side; widths from ``layer_sizes``)
  -> ``lid``; with ``with_prediction=True`` -> ``mahalanobis`` (which also takes ``penultimate``)

:class:`ModelFeatures` wraps a model and one of these functions as a scikit-learn transformer,
so that ``Pipeline([("features", ModelFeatures(model, feature=...)), ("detector", ...)])``
works on images.

``TORCH_FEATURES`` maps the same names to differentiable torch mirrors returning the same
columns as float64 tensors with the autograd graph to ``x`` (:mod:`.torch_features`): what an
attacker who knows a detector differentiates.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from .._registry import Registry
from .activations import dropout_modules, join_kdbu, kdbu_features, mc_dropout, penultimate
from .fisher import PARAM_FISHER_SCORES, fisher_eigenvalues, param_fisher_scores
from .layers import layer_activations, layer_sizes
from .pca import PCAWhitening, TrailingVarianceScore, fit_pca_whitening, pca_coefficients, pixels
from .reconstruction import RECONSTRUCTION_KINDS, reconstruction_error
from .sklearn import ModelFeatures
from .softmax import SOFTMAX_STATS, softmax_stats, softmax_stats_from_logits
from .torch_features import TORCH_FEATURES


def _check_feature(key: str, fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"FEATURES[{key!r}] must be a feature function fn(model, x, ...) -> ndarray; got {fn!r}.")
    names = list(inspect.signature(fn).parameters)
    if "x" not in names:
        raise TypeError(
            f"FEATURES[{key!r}]: a feature function takes the batch as 'x' (fn(model, x, ...), or fn(x) for "
            f"model-free features such as pixels); {getattr(fn, '__name__', fn)!r} takes ({', '.join(names)})."
        )


FEATURES: Registry[Callable[..., np.ndarray]] = Registry("FEATURES", validate=_check_feature)
"""Feature name -> feature function ``fn(model, x, ...)`` (``pixels``: ``fn(x)``) -> float64
(n_samples, n_features)."""

for _name, _fn, _desc in (
    ("fisher_eigenvalues", fisher_eigenvalues, "top-k eigenvalues of the input-space Fisher G_x (zeros past K − 1)"),
    ("param_fisher_scores", param_fisher_scores, "trace, form and normalised form of the parameter-space Fisher F_θ"),
    ("penultimate", penultimate, "predicted class, then the last hidden layer's activations"),
    ("mc_dropout", mc_dropout, "BU: softmax variance under MC dropout [, the mean probabilities]"),
    ("kdbu_features", kdbu_features, "the penultimate columns, then BU (for the KD+BU detector)"),
    ("softmax_stats", softmax_stats, "max probability, KL to uniform and entropy of the softmax"),
    ("pixels", pixels, "the flattened inputs (the PCA-whitening detector fits its own whitening)"),
    ("reconstruction_error", reconstruction_error, "signed mean and / or squared error of model.reconstruct(x)"),
    ("layer_activations", layer_activations, "named layers' outputs side by side [, the predicted class first]"),
):
    FEATURES.register(_name, _fn, description=_desc)
del _name, _fn, _desc

__all__ = [
    "FEATURES",
    "ModelFeatures",
    "PARAM_FISHER_SCORES",
    "PCAWhitening",
    "RECONSTRUCTION_KINDS",
    "SOFTMAX_STATS",
    "TORCH_FEATURES",
    "TrailingVarianceScore",
    "dropout_modules",
    "fisher_eigenvalues",
    "fit_pca_whitening",
    "join_kdbu",
    "kdbu_features",
    "layer_activations",
    "layer_sizes",
    "mc_dropout",
    "param_fisher_scores",
    "pca_coefficients",
    "penultimate",
    "pixels",
    "reconstruction_error",
    "softmax_stats",
    "softmax_stats_from_logits",
]
