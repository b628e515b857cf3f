"""Fisher penalties for defensive training (Shen et al.): softmax-space and input-space.

Shen et al. suppress the largest eigenvalue of the input-space Fisher matrix
G_x = Jᵀ (diag p − p pᵀ) J by adding μ · tr G_s to the loss, where G_s is the Fisher
matrix of the softmax output and tr G_s = Σ_i 1/p_i (their eq. 4). This module gives that
penalty and the two direct forms the paper's bound stands in for:

- :func:`fisher_penalty` — ``"softmax_trace"``: Σ_i 1/p_i per sample, evaluated in log
  space, Σ_i 1/p_i = Σ_i exp(lse(z) − z_i) = exp(lse(z) + lse(−z)) (lse = logsumexp),
  never by dividing by a probability; ``"log_softmax_trace"``: its logarithm
  lse(z) + lse(−z), finite for every finite z.
- :func:`input_fisher_penalty` — ``"input_trace"``: tr G_x = E_y ‖∇x log p(y|x)‖²,
  differentiable in the parameters by double backpropagation; ``"top_eigenvalue"``:
  λ_max(G_x) from the exact spectrum, differentiated by the envelope theorem.

References
----------
Shen, C., Peng, Y., Zhang, G., Fan, J. "Defending Against Adversarial Attacks by
Suppressing the Largest Eigenvalue of Fisher Information Matrix." arXiv:1909.06137.

Zhao, C., Fletcher, P. T., Yu, M., Peng, Y., Zhang, G., Shen, C. "The Adversarial Attack
and Detection under the Fisher Information Metric." AAAI 2019. arXiv:1810.03806.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from .._validation import check_inputs, check_logits, check_param, one_of, real, sample_list
from ..fisher.input_space import fisher_factor, helmert_rows, reduced_softmax_covariance

__all__ = [
    "INPUT_PENALTIES",
    "SOFTMAX_PENALTIES",
    "default_max_log",
    "fisher_penalty",
    "input_fisher_penalty",
    "log_fisher_penalty",
]

SoftmaxPenalty = Literal["softmax_trace", "log_softmax_trace"]
InputPenalty = Literal["input_trace", "top_eigenvalue"]

#: Penalties computed from the logits alone.
SOFTMAX_PENALTIES: tuple[str, ...] = ("softmax_trace", "log_softmax_trace")
#: Penalties that need the model and the input (double backpropagation).
INPUT_PENALTIES: tuple[str, ...] = ("input_trace", "top_eigenvalue")

# Head-room below the dtype's largest finite number left by the default cap: past the cap
# the value grows like exp(c) · (1 + log1p(L − c)), and 1 + log1p(L − c) < e^7 for every
# L a float64 can hold, so the capped value never overflows.
_CAP_HEADROOM = 7.0


# ----------------------------------------------------------------- softmax space


def _result_dtype(logits: Tensor) -> torch.dtype:
    """float32 or wider: half-precision logits (autocast) get a float32 penalty."""
    return torch.promote_types(logits.dtype, torch.float32)


def default_max_log(dtype: torch.dtype = torch.float32) -> float:
    """The default cap of :func:`fisher_penalty` on log Σ 1/p_i for a result dtype.

    ``log(finfo(dtype).max) − 7``: 81.72 for float32 (Σ 1/p_i up to 3.4e35) and 702.78
    for float64 — the largest values for which the capped continuation still cannot
    overflow. Half-precision dtypes use float32's (the penalty is returned in float32).
    """
    dt = torch.promote_types(dtype, torch.float32)
    return math.log(torch.finfo(dt).max) - _CAP_HEADROOM


def _check_logits_arg(logits: Tensor, fn: str) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{fn}: logits must be a tensor of shape (N, K); got {type(logits).__name__}.")
    if not logits.is_floating_point():
        raise TypeError(f"{fn}: logits must be a floating-point tensor; got {logits.dtype}.")
    if logits.ndim != 2 or logits.shape[1] < 2 or logits.shape[0] == 0:
        raise ValueError(
            f"{fn}: logits must have shape (N, K) with N >= 1 and K >= 2 classes; got shape "
            f"{tuple(logits.shape)}. Pass the model's raw outputs (no softmax), one row per sample."
        )


def _log_trace(logits: Tensor, fn: str) -> Tensor:
    """L = lse(z) + lse(−z) = log Σ_i 1/p_i per sample, in float64, checked finite."""
    z = logits.to(torch.float64)
    log_t = torch.logsumexp(z, dim=1) + torch.logsumexp(-z, dim=1)
    finite = torch.isfinite(log_t)
    if not bool(finite.all()):
        bad = ~finite
        raise ValueError(
            f"{fn}: non-finite logits (NaN or inf) for {int(bad.sum())} samples "
            f"{sample_list(bad)}; the penalty is defined for finite logits only. Check the "
            "model and its inputs (a diverging run: lower the learning rate)."
        )
    # float64 logits beyond ~1e307 could still overflow the sum; keep it finite.
    return log_t.clamp(max=torch.finfo(torch.float64).max)


def _check_max_log(max_log: float | None, dtype: torch.dtype, num_classes: int, fn: str) -> float:
    """The cap c on L = log Σ 1/p_i: in [2 log K, default_max_log(dtype)], or the default.

    L ≥ 2 log K for every input (Σ 1/p_i ≥ K², equality at the uniform distribution), so
    a cap below 2 log K would replace *every* sample's penalty by the capped continuation:
    silently wrong values (e.g. 0.02 for an exact 9), not a cap on outliers.
    """
    limit = default_max_log(dtype)
    if max_log is None:
        return limit
    floor = 2.0 * math.log(num_classes)
    dt = torch.promote_types(dtype, torch.float32)
    check_param(fn, "max_log", max_log, real(ge=floor, le=limit).but(
        expected=f"None (the default) or a number in [2·log K, {limit:.2f}] = [{floor:.4g}, {limit:.2f}] "
                 f"for K = {num_classes} classes and a {dt} penalty",
        fix=f"log Σ 1/p_i is never below 2·log K = {floor:.4g} (its value at the uniform distribution), so a "
            f"lower cap would cap every sample; above {limit:.2f} a {dt} penalty can overflow. Pass None, or "
            f"a cap in [{floor:.4g}, {limit:.2f}]."))
    return float(max_log)


def _capped_exp(log_t: Tensor, cap: float) -> Tensor:
    """exp(L) for L ≤ c; exp(c) · (1 + log1p(L − c)) past it (C¹ at c, never overflows).

    Both branches are evaluated on clamped arguments, so neither produces inf and the
    gradient of the branch ``torch.where`` discards is an exact zero (no NaN).
    """
    inside = torch.exp(log_t.clamp(max=cap))
    beyond = math.exp(cap) * (1.0 + torch.log1p((log_t - cap).clamp(min=0.0)))
    return torch.where(log_t > cap, beyond, inside)


def log_fisher_penalty(logits: Tensor) -> Tensor:
    """log Σ_i 1/p_i = logsumexp(z) + logsumexp(−z) per sample: exact for all finite logits.

    The logarithm of Shen's penalty never overflows (it is at most 2 max|z| + log K), and
    its gradient softmax(z) − softmax(−z) is bounded (L1 norm ≤ 2). It is scale-free: a
    multiplicative change of Σ 1/p_i costs the same whatever its size, so on confident
    samples it pushes far less than the penalty itself. Its minimum, 2 log K, is at the
    uniform distribution.

    Parameters
    ----------
    logits : Tensor
        Raw model outputs z (N, K), any floating dtype.

    Returns
    -------
    Tensor
        (N,), in ``logits``' dtype (float32 for half precision), computed in float64.

    Shapes
    ------
    logits: (N, K) -> (N,).

    Raises
    ------
    ValueError
        Non-finite logits (the samples are named) or a wrong shape.

    Examples
    --------
    >>> z = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, -2.0]])
    >>> log_fisher_penalty(z).exp()  # Σ 1/p_i; 9 = K² at the uniform distribution
    tensor([ 9.0000, 72.6653])
    """
    _check_logits_arg(logits, "log_fisher_penalty")
    return _log_trace(logits, "log_fisher_penalty").to(_result_dtype(logits))


def _softmax_penalty(
    logits: Tensor, kind: str, max_log: float | None, fn: str
) -> tuple[Tensor, Tensor]:
    """(penalty (N,), capped (N,) bool) for a softmax-space kind."""
    _check_logits_arg(logits, fn)
    check_param(fn, "kind", kind, one_of(*SOFTMAX_PENALTIES), fix=(
        f"The input-space kinds {list(INPUT_PENALTIES)} need the model and x: use input_fisher_penalty."
        if kind in INPUT_PENALTIES else None))
    out = _result_dtype(logits)
    log_t = _log_trace(logits, fn)
    if kind == "log_softmax_trace":
        return log_t.to(out), torch.zeros_like(log_t, dtype=torch.bool)
    cap = _check_max_log(max_log, logits.dtype, logits.shape[1], fn)
    return _capped_exp(log_t, cap).to(out), log_t > cap


def fisher_penalty(
    logits: Tensor, kind: SoftmaxPenalty = "softmax_trace", *, max_log: float | None = None
) -> Tensor:
    """Shen et al.'s penalty tr G_s = Σ_i 1/p_i per sample, computed in log space.

    With z the logits and lse the logsumexp, Σ_i 1/p_i = Σ_i exp(lse(z) − z_i)
    = exp(lse(z) + lse(−z)). The log value L = lse(z) + lse(−z) is evaluated in float64
    (an (N, K) operation, negligible next to the network) and never divides by a
    probability, so the result is exact — to the rounding of the result dtype — wherever
    it is representable, including logits of ±30 (p_i ≈ 1e-26) in float64 and ±15 in
    float32. The minimum, K², is at the uniform distribution.

    **Overflow: a documented cap, not an error.** Confident networks reach p_i < 1e-30
    (L ≈ 70) and float32's exp overflows past L ≈ 88.7; logits of ±1e4 give L ≈ 2e4,
    beyond any dtype. Past the cap c (``max_log``) the value continues as

        exp(c) · (1 + log1p(L − c)),

    which meets exp(L) at L = c with the same slope (C¹), keeps growing with L, and stays
    finite for every finite L. The gradient with respect to the logits is
    dP/dL · (softmax(z) − softmax(−z)): the same direction as the exact penalty's (it still
    lowers the largest logit and raises the smallest), with the magnitude exp(c)/(1 + L − c)
    — finite, never NaN, and never zero. Why a cap rather than an error: a training run
    that meets one over-confident sample after hours should keep going with a bounded
    push in the right direction rather than die; the training loop reports how many
    samples were capped (``metrics["history"][i]["defense_stats"]["capped"]``), so the
    event is visible, not silently repaired. Callers who want an error can check
    ``log_fisher_penalty(logits) > max_log`` themselves.

    Parameters
    ----------
    logits : Tensor
        Raw model outputs z (N, K), any floating dtype (half precision is evaluated and
        returned in float32).
    kind : {"softmax_trace", "log_softmax_trace"}
        ``softmax_trace``: Σ_i 1/p_i (Shen's eq. 4), capped as above.
        ``log_softmax_trace``: log Σ_i 1/p_i (:func:`log_fisher_penalty`), never capped.
    max_log : float, optional
        The cap c on L = log Σ 1/p_i. Default :func:`default_max_log` of the result dtype
        (81.7 in float32, 702.8 in float64): the value is exact wherever it is
        representable. Training uses a lower cap (see
        :class:`~fisherscope.defenses.FisherRegularizedLoss`).

    Returns
    -------
    Tensor
        (N,) penalty per sample, in ``logits``' dtype (float32 for half precision).

    Shapes
    ------
    logits: (N, K) -> (N,).

    Raises
    ------
    ValueError
        Wrong shape, unknown ``kind``, an invalid ``max_log``, or non-finite logits (the
        samples are named).

    References
    ----------
    Shen, C., Peng, Y., Zhang, G., Fan, J. arXiv:1909.06137, §3.2, eq. (4).

    Examples
    --------
    >>> z = torch.tensor([[1.0, 2.0, 3.0]])
    >>> fisher_penalty(z)
    tensor([16.6967])
    >>> (1 / torch.softmax(z.double(), dim=1)).sum(1)  # the naive form agrees here
    tensor([16.6967], dtype=torch.float64)
    >>> torch.isfinite(fisher_penalty(torch.tensor([[1e4, -1e4, 0.0]]))).item()
    True
    """
    value, _ = _softmax_penalty(logits, kind, max_log, "fisher_penalty")
    return value


# ------------------------------------------------------------------- input space


def _input_penalty(logits: Tensor, xr: Tensor, kind: str) -> Tensor:
    """The input-space penalty (N,) of a forward pass ``logits = model(xr)``.

    G_x = Jᵀ A J = (HᵀJ)ᵀ M (HᵀJ) with M = Hᵀ A H, since A annihilates 𝟙.
    - input_trace: tr G_x = ⟨M, (HᵀJ)(HᵀJ)ᵀ⟩ — no matrix root, every factor differentiable.
    - top_eigenvalue: λ₁ and v₁ from the exact (K − 1) × (K − 1) problem (as
      ``fisher_spectrum``), then λ₁ = v₁ᵀ G_x v₁ = (HᵀJ v₁)ᵀ M (HᵀJ v₁) with v₁ held fixed:
      by the envelope theorem its gradient is ∇θ λ_max wherever λ_max is simple.
    """
    jc, h = helmert_rows(logits, xr, create_graph=True)
    m = reduced_softmax_covariance(logits, h)
    if kind == "input_trace":
        gram = (jc @ jc.mT).to(torch.float64)  # (N, K-1, K-1)
        return (m * gram).sum(dim=(1, 2)).to(xr.dtype)
    with torch.no_grad():
        b = fisher_factor(logits.detach(), jc.detach(), h)  # G_x = bᵀb, float64
        w, u = torch.linalg.eigh(b @ b.mT)
        top, u1 = w[:, -1].clamp_min(0.0), u[:, :, -1]
        nonzero = top > torch.finfo(torch.float64).tiny
        v1 = torch.einsum("nk,nkd->nd", u1, b) / top.sqrt().clamp_min(1e-300).unsqueeze(1)
        v1 = torch.where(nonzero.unsqueeze(1), v1, torch.zeros_like(v1))
    proj = torch.einsum("nkd,nd->nk", jc.to(torch.float64), v1)  # HᵀJ v₁, graph through J
    return torch.einsum("nk,nkl,nl->n", proj, m, proj).to(xr.dtype)


def input_fisher_penalty(
    model: nn.Module,
    x: Tensor,
    kind: InputPenalty = "input_trace",
    *,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> Tensor:
    """The input-space Fisher penalty per sample, differentiable in the parameters.

    With z = f_θ(x), J = ∂z/∂x, p = softmax(z) and A = diag(p) − ppᵀ,
    G_x = E_{y~p}[∇x log p(y|x) ∇x log p(y|x)ᵀ] = Jᵀ A J.

    - ``"input_trace"``: tr G_x = E_y ‖∇x log p(y|x)‖². One forward pass and K − 1
      batched vector-Jacobian products along the Helmert contrasts (A annihilates 𝟙, so
      K − 1 suffice) with ``create_graph=True``; backpropagating the result is double
      backpropagation. Equals :func:`fisherscope.fisher.fisher_trace` in eval mode.
    - ``"top_eigenvalue"``: λ_max(G_x), the quantity Shen et al. want to suppress (their
      eq. 2) and bound by the softmax trace. λ₁ and v₁ come from the exact spectrum (the
      same (K − 1) × (K − 1) eigenproblem as :func:`fisherscope.fisher.fisher_spectrum`);
      the gradient uses the envelope theorem, ∇θ λ_max = ∇θ (v₁ᵀ G_x v₁) with v₁ held
      fixed = ∇θ E_y (g_yᵀ v₁)², obtained from the same K − 1 products — no derivative
      of the eigenvector. It is exact where λ_max is a simple eigenvalue; at a repeated
      top eigenvalue λ_max is not differentiable and the result is the gradient along
      the eigenvector ``eigh`` returned (a valid one-sided derivative).

    The model runs in its **current mode** and is not switched: in eval mode the result
    is the per-sample quantity above. In training mode BatchNorm's batch statistics
    couple the samples, and the products include those cross-sample terms — what a
    training step that backpropagates through its own forward pass needs. The K × K
    algebra is done in float64 (A loses all accuracy in float32 for confident
    predictions); the result has ``x``'s dtype. Parameter ``.grad`` is never touched
    (``torch.autograd.grad``) and ``x`` is not modified; if ``x`` requires grad, the
    result is differentiable in ``x`` too.

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K); must be twice differentiable in the sense of autograd
        (ReLU networks are fine: their second derivative in x is zero, but the penalty's
        gradient in θ is not).
    x : Tensor
        Inputs (N, C, H, W) or (N, D).
    kind : {"input_trace", "top_eigenvalue"}
    bounds : (float, float) or None
        Admissible range of x (checked); None skips the check.

    Returns
    -------
    Tensor
        (N,), differentiable with respect to the model's parameters.

    Shapes
    ------
    x: (N, *S) -> (N,).

    Raises
    ------
    ValueError
        Unknown ``kind``, invalid inputs, or a model output that is not (N, K) logits.

    References
    ----------
    Shen et al. arXiv:1909.06137, eqs. (1)–(2); Zhao et al. AAAI 2019, §3.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Tanh())
    >>> x = torch.rand(2, 1, 2, 2)
    >>> pen = input_fisher_penalty(model, x, "input_trace")
    >>> pen.shape, pen.requires_grad
    (torch.Size([2]), True)
    """
    check_param("input_fisher_penalty", "kind", kind, one_of(*INPUT_PENALTIES), fix=(
        f"The softmax-space kinds {list(SOFTMAX_PENALTIES)} need only the logits: use fisher_penalty(logits)."
        if kind in SOFTMAX_PENALTIES else None))
    if not isinstance(model, nn.Module) and not callable(model):
        raise TypeError(f"model must be a torch.nn.Module mapping x to logits; got {type(model).__name__}.")
    check_inputs(x.detach(), bounds=bounds)
    xr = x if x.requires_grad else x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xr)
        check_logits(logits)
        return _input_penalty(logits, xr, kind)
