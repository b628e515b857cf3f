"""Torch in, numpy out: the features the detectors of :mod:`fisherscope.detectors` work on.

Every feature function takes a model (inputs in ``bounds`` to logits) and a batch ``x``,
runs the model in eval mode (each module's mode is restored; a model left in training
mode gets one :class:`~fisherscope.exceptions.ModelModeWarning`), never touches parameter
gradients or modifies ``x``, works through ``x`` in chunks of ``batch_size`` and returns a
float64 numpy array of shape (n_samples, n_features).

Feature function (columns) -> detector key:

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
"""

from __future__ import annotations

from .activations import dropout_modules, join_kdbu, kdbu_features, mc_dropout, penultimate
from .fisher import PARAM_FISHER_SCORES, fisher_eigenvalues, param_fisher_scores
from .layers import layer_activations, layer_sizes
from .pca import PCAWhitening, TrailingVarianceScore, fit_pca_whitening, pca_coefficients, pixels
from .reconstruction import RECONSTRUCTION_KINDS, reconstruction_error
from .softmax import SOFTMAX_STATS, softmax_stats, softmax_stats_from_logits

__all__ = [
    "PARAM_FISHER_SCORES",
    "PCAWhitening",
    "RECONSTRUCTION_KINDS",
    "SOFTMAX_STATS",
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
