"""The maths: input-space Fisher information G_x (and, later, parameter-space F_θ and FIS)."""

from __future__ import annotations

from .input_space import (
    MAX_DENSE_DIM,
    FisherSpectrum,
    alias_sample,
    alias_table,
    fisher_matrix,
    fisher_spectrum,
    fisher_trace,
    fisher_vector_product,
    logits_jacobian,
    score_vectors,
)

__all__ = [
    "MAX_DENSE_DIM",
    "FisherSpectrum",
    "alias_sample",
    "alias_table",
    "fisher_matrix",
    "fisher_spectrum",
    "fisher_trace",
    "fisher_vector_product",
    "logits_jacobian",
    "score_vectors",
]
