"""The maths: input-space Fisher information G_x, parameter-space F_θ and FIS maps."""

from __future__ import annotations

from .input_space import (
    MAX_DENSE_DIM,
    FisherSpectrum,
    alias_sample,
    alias_table,
    differentiable_eigenvalues,
    fisher_matrix,
    fisher_spectrum,
    fisher_trace,
    fisher_vector_product,
    helmert_basis,
    logits_jacobian,
    score_vectors,
)
from .parameter_space import (
    differentiable_param_fisher,
    param_direction,
    param_fisher_form,
    param_fisher_trace,
)
from .sensitivity import fisher_sensitivity

__all__ = [
    "MAX_DENSE_DIM",
    "FisherSpectrum",
    "alias_sample",
    "alias_table",
    "differentiable_eigenvalues",
    "differentiable_param_fisher",
    "fisher_matrix",
    "fisher_sensitivity",
    "fisher_spectrum",
    "fisher_trace",
    "fisher_vector_product",
    "helmert_basis",
    "logits_jacobian",
    "param_direction",
    "param_fisher_form",
    "param_fisher_trace",
    "score_vectors",
]
