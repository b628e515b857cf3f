"""Saliency maps: plain functions returning maps shaped like x.

- :func:`gradient` — ∂z_y/∂x, the gradient of a logit with respect to the input.
- :func:`guided_backprop` — Springenberg et al. 2015: at every ReLU the backward signal
  is R_l = (f_l > 0)(R_{l+1} > 0) R_{l+1}.
- :func:`hendrycks_saliency` — Hendrycks & Gimpel 2017 §4: R_l = (f_l > 0)(R_{l+1} > 0),
  and for GELU (their footnote 2) R_l = g′(x) g′(R_{l+1}).

None of them touches the inputs' or the parameters' ``.grad``; the model runs in eval mode
and every module's mode is restored.
"""

from __future__ import annotations

from .maps import UnmodifiedActivationWarning, gradient, guided_backprop, hendrycks_saliency

__all__ = ["UnmodifiedActivationWarning", "gradient", "guided_backprop", "hendrycks_saliency"]
