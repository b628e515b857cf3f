"""Fisher information sensitivity (FIS): per-input-element maps of Martin & Elster (2019).

Perturb the input with noise x + ε ξ η (ξ ~ N(0, 1)); the quadratic form of the Fisher
information of the noisy input gains the term ηᵀ δ_v F_θ η with

    δ_v F_θ = Σ_c ∇x (v · ∇θ p_c(x)) ∇xᵀ (v · ∇θ log p_c(x))        (eq. 12)

and for η = e_i the diagonal entries

    FIS_i = Σ_c ∂_{x_i}(v · ∇θ p_c(x)) · ∂_{x_i}(v · ∇θ log p_c(x))   (eq. 13)

form a map shaped like x. The direction v is held fixed (it is not differentiated with
respect to x); by default v̄ = ∇θ log p(ŷ|x) / ‖·‖ evaluated at the same x.

Computation, per sample and batched with ``torch.func``: the class terms
a_c = v·∇θ p_c and b_c = v·∇θ log p_c are exact forward-mode products (``jvp`` in θ
over the whole v), and their input gradients come from one reverse pass over x
(``vjp``), vmapped over the terms' cotangents: 2K vector-Jacobian products for the
full sum, 2 for the two-class reduction of eq. 7, where a_{not ŷ} = −a_ŷ gives
FIS = ∂x a_ŷ ⊙ ∂x (b_ŷ − b_{not ŷ}) with b_ŷ − b_{not ŷ} = r_ŷ · J_θ v
(see :mod:`fisherscope.fisher.parameter_space` for r_ŷ). ``method="finite_difference"``
replaces the jvp by the paper's eq. 9 forward difference over the whole v (the authors'
code uses central differences one parameter tensor at a time, which drops the
cross-tensor terms of eq. 13).

References
----------
Martin, J., Elster, C. "Inspecting adversarial examples using the Fisher information."
Neurocomputing 382 (2020) 80–86; arXiv:1909.05527, §3.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import jvp, vjp, vmap

from .._batching import per_sample
from ._factored import vjp_rows
from .parameter_space import (
    Bounds,
    Direction,
    FormMethod,
    Reduction,
    _class_terms,
    _default_scale,
    _direction_factor,
    _directional,
    _fast_direction,
    _fast_jv,
    _fast_shifted,
    _Functional,
    _pick,
    _plan_gradient,
    _quiet_forward_ad,
    _reduced_log_probs,
    _reduced_log_probs_batch,
    _shift,
    _strategy,
    _take,
    _warn_zero_direction,
    check_direction_settings,
)

__all__ = ["fisher_sensitivity"]


def _jvp_terms(z: Tensor, u: Tensor, pred1: Tensor, reduction: str) -> Tensor:
    """[a_c, b_c] (full) or [a_ŷ, d] (two_class) from logits z and u = J v (see below)."""
    log_p, log1m_p, r = _class_terms(z)
    d = r @ u  # r_c · J v
    if reduction == "full":
        b = torch.exp(log1m_p) * d  # (1 − p_c) r_c · J v = v · ∇θ log p_c
        return torch.cat([torch.exp(log_p) * b, b])
    d1 = _pick(d, pred1)
    a1 = torch.exp(_pick(log_p, pred1) + _pick(log1m_p, pred1)) * d1  # p̂ (1 − p̂) d
    return torch.stack([a1, d1])


def _directional_terms(net: _Functional, reduction: str, method: str, fd_eps: float
                       ) -> Callable[[Tensor, Tensor, dict[str, Tensor]], Tensor]:
    """x1 ↦ the stacked class terms of eq. 13 for one sample.

    ``jvp``, ``full``: (2K,) = [a_1..a_K, b_1..b_K] with a_c = v·∇θ p_c, b_c = v·∇θ log p_c.
    ``jvp``, ``two_class``: (2,) = [a_ŷ, d], d = b_ŷ − b_{not ŷ}.
    ``finite_difference``: [Δp_c / ε′, Δlog p_c / ε′] over the classes of the reduction.
    """
    if method == "jvp":

        def terms(x1: Tensor, pred1: Tensor, v1: dict[str, Tensor]) -> Tensor:
            z, u = jvp(lambda p: net.logits1(p, x1), (net.params,), (v1,))
            return _jvp_terms(z, u, pred1, reduction)

        return terms

    def fd_terms(x1: Tensor, pred1: Tensor, v1: dict[str, Tensor]) -> Tensor:
        lp0 = _reduced_log_probs(net.logits1(net.params, x1), pred1, reduction)
        lp1 = _reduced_log_probs(net.logits1(_shift(net.params, v1, fd_eps), x1), pred1, reduction)
        return torch.cat([(torch.exp(lp1) - torch.exp(lp0)) / fd_eps, (lp1 - lp0) / fd_eps])

    return fd_terms


def _fis_chunk(net: _Functional, x: Tensor, pred: Tensor, vs: dict[str, Tensor], reduction: str,
               method: str, fd_eps: float) -> Tensor:
    terms = _directional_terms(net, reduction, method, fd_eps)

    def one(x1: Tensor, pred1: Tensor, v1: dict[str, Tensor]) -> Tensor:
        out, vjp_fn = vjp(lambda xx: terms(xx, pred1, v1), x1)
        m = out.shape[0]
        (grads,) = vmap(vjp_fn)(torch.eye(m, dtype=out.dtype, device=out.device))  # (m, *S)
        half = m // 2
        return (grads[:half] * grads[half:]).sum(0)

    with _quiet_forward_ad():
        return vmap(one)(x, pred, vs)


def _fis_default(net: _Functional, x: Tensor, pred: Tensor, normalized: bool, scale: float, reduction: str,
                 method: str, fd_eps: float, start: int) -> Tensor:
    """FIS along the default direction (factored form), one vmapped pass per chunk.

    ``jvp``: evaluated along g = Jᵀ r_ŷ and rescaled per sample (the map is quadratic in
    v). ``finite_difference``: eq. 9 with the step ε′ · v, v = c · g. In both, g is computed
    at the sample and held fixed while the terms are differentiated in x.
    """
    if net.plan is not None:
        return _plan_fis_default(net, x, pred, normalized, scale, reduction, method, fd_eps, start)

    def one(x1: Tensor, pred1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        _, _, log1m, g_gen, lin_dir, sq = _fast_direction(net, x1, pred1)
        if method == "jvp":

            def terms(xx: Tensor) -> Tensor:
                z, u = _fast_jv(net, xx, g_gen, lin_dir)
                return _jvp_terms(z, u, pred1, reduction)

        else:
            step = fd_eps * _direction_factor(log1m, sq, normalized, scale)

            def terms(xx: Tensor) -> Tensor:
                lp0 = _reduced_log_probs(net.logits1(net.params, xx), pred1, reduction)
                lp1 = _reduced_log_probs(_fast_shifted(net, xx, g_gen, lin_dir, step), pred1, reduction)
                return torch.cat([(torch.exp(lp1) - torch.exp(lp0)) / fd_eps, (lp1 - lp0) / fd_eps])

        out, vjp_fn = vjp(terms, x1)
        m = out.shape[0]
        (grads,) = vmap(vjp_fn)(torch.eye(m, dtype=out.dtype, device=out.device))
        half = m // 2
        return (grads[:half] * grads[half:]).sum(0), log1m, sq

    with _quiet_forward_ad():
        fis, log1m, sqnorm = vmap(one)(x, pred)
    if normalized:
        _warn_zero_direction(sqnorm, start, "∇θ log p(ŷ|x)")
    if method == "finite_difference":
        return fis
    factor = _default_scale(log1m, sqnorm, normalized, scale, start, warn=False)
    return fis * per_sample(factor, fis)


def _jvp_terms_batch(z: Tensor, u: Tensor, pred: Tensor, reduction: str) -> Tensor:
    """Batched :func:`_jvp_terms`: (N, 2K) or (N, 2)."""
    log_p, log1m_p, r = _class_terms(z)
    d = torch.einsum("nck,nk->nc", r, u)
    if reduction == "full":
        b = torch.exp(log1m_p) * d
        return torch.cat([torch.exp(log_p) * b, b], 1)
    d1 = _take(d, pred)
    a1 = torch.exp(_take(log_p, pred) + _take(log1m_p, pred)) * d1
    return torch.stack([a1, d1], 1)


def _plan_fis_default(net: _Functional, x: Tensor, pred: Tensor, normalized: bool, scale: float, reduction: str,
                      method: str, fd_eps: float, start: int) -> Tensor:
    """FIS along the default direction on the factored path, batched over the chunk.

    One backward pass gives g = Jᵀ r_ŷ (held fixed); one forward-mode pass (or one
    shifted forward) differentiable in x gives the class terms of eq. 13 for the whole
    chunk, and 2K (or 2) input-gradient backward passes give their maps.
    """
    plan = net.plan
    assert plan is not None
    _, states, _, dirs, log1m, sq = _plan_gradient(net, x, pred)
    if normalized:
        _warn_zero_direction(sq, start, "∇θ log p(ŷ|x)")
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        if method == "jvp":
            zx, ux = plan.jv(xr, states, dirs, differentiable=True)
            terms = _jvp_terms_batch(zx, ux, pred, reduction)
        else:
            step = fd_eps * _direction_factor(log1m, sq, normalized, scale)
            lp0 = _reduced_log_probs_batch(net.model(xr), pred, reduction)
            lp1 = _reduced_log_probs_batch(plan.shifted_logits(xr, states, dirs, step, differentiable=True), pred,
                                           reduction)
            terms = torch.cat([(torch.exp(lp1) - torch.exp(lp0)) / fd_eps, (lp1 - lp0) / fd_eps], 1)
        m = terms.shape[1]
        eye = torch.eye(m, dtype=terms.dtype, device=terms.device)
        cot = eye.unsqueeze(1).expand(m, x.shape[0], m)
        grads = torch.empty((m, *x.shape), dtype=terms.dtype, device=x.device)
        # vmapped cotangents cannot run through the generic units' vjp-of-vjp graph
        strategy = "loop" if plan.has_generic else _strategy(net, m, x.shape[0])
        for rows, (g,) in vjp_rows(terms, [xr], cot, strategy):  # type: ignore[arg-type]
            grads[rows] = 0.0 if g is None else g
    half = m // 2
    fis = (grads[:half] * grads[half:]).sum(0).detach()
    if method == "finite_difference":
        return fis
    factor = _default_scale(log1m, sq, normalized, scale, start, warn=False)
    return fis * per_sample(factor, fis)


def fisher_sensitivity(
    model: nn.Module,
    x: Tensor,
    v: Direction | None = None,
    *,
    normalized: bool = True,
    reduction: Reduction = "two_class",
    method: FormMethod = "jvp",
    fd_eps: float = 1e-4,
    scale: float = 1.0,
    chunk_size: int | None = None,
    bounds: Bounds = (0.0, 1.0),
) -> Tensor:
    """Fisher information sensitivity map (FIS, eq. 13), shaped like x, per sample.

    FIS_i = Σ_c ∂_{x_i}(v·∇θ p_c(x)) · ∂_{x_i}(v·∇θ log p_c(x)), the change of vᵀF_θv when
    input element i is perturbed by Gaussian noise (eq. 11 with η = e_i). Signed; the
    paper's figures show its absolute value.

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K); run in eval mode (every module's mode is restored).
    x : Tensor
        Inputs (N, C, H, W) or (N, D) within ``bounds``; never modified, no ``.grad``.
    v : mapping, optional
        Direction ``{param name: (N, *shape) or shape}``, held fixed. Default:
        ∇θ log p(ŷ|x) at the same x (eq. 6).
    normalized : bool
        Use v / ‖v‖ (default True, as the paper's Fig. 2). It only rescales each
        sample's map by 1/‖v‖² (the shape of the map does not depend on it).
    reduction : {"two_class", "full"}
        Default ``two_class`` (eq. 7): the paper's choice for CIFAR10 and Fruits-360 and
        the default of the authors' code (``pred_approx=-1``); we use it for MNIST too.
        ``full`` sums over all K classes.
    method : {"jvp", "finite_difference"}
        Exact forward-mode directional derivatives, or eq. 9's forward difference over
        the whole v with step ``fd_eps``.
    scale : float
        λ of the default, unnormalised direction.
    chunk_size : int, optional
        Samples per vmapped chunk (memory: about two parameter-sized vectors per sample
        plus 2K (or 2) input-sized gradients).

    Returns
    -------
    Tensor
        Shaped like x, dtype of the model's parameters.

    Shapes
    ------
    x: (N, *S) -> (N, *S).

    References
    ----------
    Martin & Elster (2019), eqs. 10–13 and Fig. 2.
    """
    check_direction_settings("fisher_sensitivity", normalized=normalized, reduction=reduction, method=method,
                             fd_eps=fd_eps, scale=scale, chunk_size=chunk_size)
    fd_eps, scale = float(fd_eps), float(scale)
    return _directional(
        model, x, v, bounds, chunk_size, normalized,
        lambda net, xs, ps, start: _fis_default(net, xs, ps, normalized, scale, reduction, method, fd_eps, start),
        lambda net, xs, ps, vs: _fis_chunk(net, xs, ps, vs, reduction, method, fd_eps),
    )
