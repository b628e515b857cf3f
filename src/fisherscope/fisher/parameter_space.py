"""The parameter-space Fisher information F_θ(x) of a classifier (Martin & Elster 2019).

For one input x, logits z = z_θ(x) and p = softmax(z), with g_c = ∇θ log p_c(x),

    F_θ(x) = Σ_c p_c g_c g_cᵀ                                   (eq. 3)

is a P × P matrix (P = number of parameters); it is never formed here. What is computed,
per sample and batched with ``torch.func`` (``vmap`` over samples of ``vjp`` / ``jvp``
through ``functional_call``; no Python loop over samples or parameter tensors):

- the trace tr F_θ = Σ_c p_c ‖g_c‖² (eq. 4), from K per-sample parameter gradients;
- the quadratic form vᵀ F_θ v = Σ_c p_c (g_c · v)² (eq. 5) along v = λ ∇θ log p_ŷ(x)
  (eq. 6, ŷ the predicted class), and its normalised version v̄ᵀ F_θ v̄ with v̄ = v / ‖v‖
  (eq. 8). ``method="jvp"``: the K directional derivatives J_θ v are one forward-mode
  product (exact). ``method="finite_difference"``: the paper's eq. 9, a forward
  difference (f(θ + ε′v) − f(θ)) / ε′ over the whole v.

Two-class reduction (eq. 7): the K classes collapse to {ŷ, not ŷ} with probabilities
(p̂, 1 − p̂). The short form of the reduced trace, p̂ / (1 − p̂) · ‖∇θ log p̂‖², loses
all precision for confident inputs: 1 − p̂ and ∇θ log p̂ = (1 − p̂)·(…) both underflow to
round-off. Everything here is written with

    r_c = e_c − q⁽ᶜ⁾,   q⁽ᶜ⁾ = softmax of the logits other than c (q⁽ᶜ⁾_c = 0),

so that e_c − p = (1 − p_c) r_c exactly, with log(1 − p_c) = logsumexp(z_{−c}) −
logsumexp(z) computed in log space. Then, with Jᵀ r_c = ∇θ (r_c · z):

    g_c            = (1 − p_c) Jᵀ r_c
    tr F_θ         = Σ_c p_c (1 − p_c)² ‖Jᵀ r_c‖²                 (full)
    tr F_θ^{2-cl.} = p̂ (1 − p̂) ‖Jᵀ r_ŷ‖²                         (two_class, eq. 7)
    vᵀ F_θ v       = Σ_c p_c (1 − p_c)² (r_c · J v)²   or   p̂ (1 − p̂) (r_ŷ · J v)²

The two-class expressions equal (1 − p̂)/p̂ · ‖∇θ log(1 − p̂)‖² (the precise form, see
``reference/peer-libraries-and-paper-code.md`` §6) and keep full relative precision for
p̂ → 1. The default direction v = λ (1 − p̂) Jᵀ r_ŷ is exact in the same way, so the
normalised form stays defined for inputs whose p̂ rounds to 1.

Memory and speed: the default path is the batched factored one of
:mod:`fisherscope.fisher._factored`. One forward pass of the chunk and one backward pass
per cotangent (K − 1 for the full trace: tr F_θ = tr(Jᵀ A J) with A = diag p − p pᵀ of
rank K − 1; one for the two-class trace and for the default direction) give the gradient
at every layer's output; the per-sample weight-gradient norms of ``nn.Linear``,
``nn.Conv1d`` / ``nn.Conv2d`` (ghost norm or materialised, whichever is cheaper per
layer) and eval-mode BatchNorm follow from those and the layers' inputs, and J v is one
forward-mode pass in which each layer's output is shifted by its part of v. No
per-sample parameter-sized tensor is formed for those layers; other modules that own
parameters get theirs from a ``vmap`` over their own vjp. Models the census of
:func:`_prepare` does not accept (tied or shared parameters, a module called twice, a
parameter used outside its module) take the whole-model ``vmap`` path, where per-sample
parameter-sized tensors are materialised except for eligible ``nn.Linear`` layers (outer
products δ aᵀ, see :class:`_Functional`). Chunks: :data:`FACTORED_CHUNK_BYTES` of
workspace on the factored path, :data:`CHUNK_BUDGET_BYTES` of per-sample gradients on the
whole-model path. User-given directions v always take the whole-model path.

Parameters are those of ``model.named_parameters()`` with ``requires_grad=True``; a
direction ``v`` is a mapping from those names to tensors shaped ``(N, *param.shape)`` (one
direction per sample) or ``param.shape`` (shared by all samples).

References
----------
Martin, J., Elster, C. "Inspecting adversarial examples using the Fisher information."
Neurocomputing 382 (2020) 80–86; arXiv:1909.05527.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode

from .._batching import even_chunks, per_sample
from .._validation import (
    BOOL,
    POSITIVE,
    POSITIVE_INT,
    check_inputs,
    check_logits,
    check_model_dtype,
    check_params,
    eval_mode,
    one_of,
)
from ._factored import Census, Plan, choose_strategy
from ._func import jvp, vjp

__all__ = [
    "differentiable_param_fisher",
    "param_direction",
    "param_fisher_form",
    "param_fisher_trace",
]

Bounds = tuple[float, float] | None
Reduction = Literal["full", "two_class"]
FormMethod = Literal["jvp", "finite_difference"]
Direction = Mapping[str, Tensor]

#: Memory (bytes) the per-sample parameter-sized tensors of one vmapped chunk may take
#: when ``chunk_size`` is not given.
CHUNK_BUDGET_BYTES = 2**30

#: Use the batched factored path of :mod:`fisherscope.fisher._factored` (convolutions,
#: linear layers and BatchNorm factored, other parameter-owning modules vmapped locally)
#: wherever the model qualifies; False forces the whole-model ``vmap`` path below.
FACTOR_LAYERS = True

#: In the whole-model ``vmap`` path, factor eligible ``nn.Linear`` layers (see
#: :class:`_Functional`); False (with ``FACTOR_LAYERS = False``) forces the generic ``vmap``
#: path everywhere (same results up to round-off, more memory and time).
FACTOR_LINEAR = True

#: How the factored path runs its K − 1 (trace) or 2K (FIS) backward passes on one graph:
#: ``"loop"``, ``"vmap"`` (cotangents vmapped) or ``"auto"`` (the rule of
#: :func:`fisherscope.fisher._factored.choose_strategy`, as for the input space).
VJP_STRATEGY = "auto"

#: Working set (bytes) of one chunk of the factored path when ``chunk_size`` is not given
#: (estimated from the layers: inputs, unfolded inputs, Gram matrices, output gradients),
#: and at most :data:`FACTORED_MAX_CHUNK` samples. On CPU, chunks of some 4–32 samples
#: ran fastest per sample; larger ones churn fresh pages (docs/BENCHMARKS.md). On CUDA
#: the budget is :data:`CHUNK_BUDGET_BYTES` and there is no sample cap.
FACTORED_CHUNK_BYTES = 384 * 2**20
FACTORED_MAX_CHUNK = 32


# --------------------------------------------------------------------------- helpers


#: samples per vmapped chunk, or None for the automatic size
_CHUNK = POSITIVE_INT.but(expected="an integer >= 1 (samples per vmapped chunk)").or_none("automatic")


def check_direction_settings(owner: str, **values: Any) -> None:
    """The settings shared by :func:`param_fisher_form` and ``fisher_sensitivity``."""
    check_params(owner, values, {
        "normalized": BOOL,
        "reduction": one_of("full", "two_class"),
        "method": one_of("jvp", "finite_difference"),
        "fd_eps": POSITIVE,
        "scale": POSITIVE,
        "chunk_size": _CHUNK,
    })


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            "model must be a torch.nn.Module mapping x to logits (the parameter-space Fisher "
            f"differentiates with respect to its parameters); got {type(model).__name__}."
        )


class _Functional:
    """A functional view of ``model``: logits of one sample as a function of (params, x).

    Factored ``nn.Linear`` layers. For a linear layer used once per forward on inputs of
    shape (1, in), the per-sample gradient of its weight is the outer product δ aᵀ (δ: the
    gradient at the layer's output, a: its input). :meth:`probe_logits1` returns δ (as the
    gradient of a zero "probe" added to the output) and a, so ‖∇W‖² = ‖δ‖²‖a‖² and the
    weight gradient is never materialised; :meth:`shift_logits1` applies a direction
    (δ₀ a₀ᵀ, δ₀) to such a layer as the output shift s · δ₀ (a₀ · a + 1), whose derivative in
    s is the layer's part of J v. Exact; it only avoids the (out × in) tensor per sample
    (98% of the parameters of ``mnist_cnn``). Which layers qualify is decided on the first
    forward (:func:`_prepare`): exact type ``nn.Linear``, trainable weight (and bias, if
    any), called once, input of shape (N, in) (one row per sample), and weight and bias used
    by no other operation (no tied or functional reuse). All other parameters take the
    generic ``vmap`` path.
    """

    def __init__(self, model: nn.Module):
        _check_model(model)
        self.model = model
        self.params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError(
                f"{type(model).__name__} has no parameters with requires_grad=True; the "
                "parameter-space Fisher needs at least one trainable parameter."
            )
        self.n_params = sum(p.numel() for p in self.params.values())
        self.dtype = next(iter(self.params.values())).dtype
        self.lins: dict[str, tuple[str, str | None]] = {}  # module name -> (weight name, bias name)
        self.plan: Plan | None = None  # the batched factored path, when the model qualifies
        self._state: tuple[Any, ...] | None = None

    # ------------------------------------------------------------ parameter split
    @property
    def fixed(self) -> dict[str, Tensor]:
        """The factored layers' weights and biases (constants of the generic path)."""
        names = [n for w, b in self.lins.values() for n in (w, b) if n is not None]
        return {n: self.params[n] for n in names}

    @property
    def generic(self) -> dict[str, Tensor]:
        fixed = self.fixed
        return {n: p for n, p in self.params.items() if n not in fixed}

    def n_generic(self) -> int:
        return sum(p.numel() for p in self.generic.values())

    def model_device(self) -> torch.device:
        return next(iter(self.params.values())).device

    # --------------------------------------------------------------- forwards
    def logits1(self, params: Mapping[str, Tensor], x1: Tensor) -> Tensor:
        """Logits (K,) of one sample x1 (shape S) under ``params`` (no factored layers)."""
        return functional_call(self.model, dict(params), (x1.unsqueeze(0),)).squeeze(0)

    def _call(self, generic: Mapping[str, Tensor], x1: Tensor, state: tuple[Any, ...]) -> Tensor:
        self._state = state
        try:
            return functional_call(self.model, {**generic, **self.fixed}, (x1.unsqueeze(0),)).squeeze(0)
        finally:
            self._state = None

    def probe_logits1(self, generic: Mapping[str, Tensor], probes: Mapping[str, Tensor], x1: Tensor
                      ) -> tuple[Tensor, dict[str, Tensor]]:
        """(logits, {layer: input a}); each factored layer's output gets ``probes[layer]`` added."""
        inputs: dict[str, Tensor] = {}
        z = self._call(generic, x1, ("probe", probes, inputs))
        return z, inputs

    def shift_logits1(self, s: Tensor, generic: Mapping[str, Tensor], x1: Tensor,
                      lin_dir: Mapping[str, tuple[Tensor, Tensor]]) -> Tensor:
        """Logits with each factored layer's output shifted by s · δ₀ (a₀ · a + 1[bias])."""
        return self._call(generic, x1, ("shift", s, lin_dir))

    def _hook(self, name: str, has_bias: bool) -> Any:
        def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
            st = self._state
            if st is None:
                return None
            a = args[0]
            if st[0] == "probe":
                st[2][name] = a
                return out + st[1][name]
            delta0, a0 = st[2][name]
            coef = (a * a0).sum(-1, keepdim=True) + (1.0 if has_bias else 0.0)
            return out + st[1] * coef * delta0

        return hook

    @contextlib.contextmanager
    def hooked(self) -> Iterator[None]:
        """Install the factored layers' forward hooks for the duration (removed on exit)."""
        modules = dict(self.model.named_modules())
        handles = [modules[n].register_forward_hook(self._hook(n, b is not None)) for n, (_, b) in self.lins.items()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self._state = None


class _LinearCensus(TorchFunctionMode):
    """During one forward, count how each candidate ``nn.Linear`` is used (see :class:`_Functional`)."""

    def __init__(self, net: _Functional):
        super().__init__()
        self.net = net
        params = dict(net.model.named_parameters())
        all_ids = Counter(id(p) for _, p in net.model.named_parameters(remove_duplicate=False))
        self.candidates: dict[str, tuple[str, str | None]] = {}
        for mname, mod in net.model.named_modules():
            if type(mod) is not nn.Linear:
                continue
            w, b = f"{mname}.weight" if mname else "weight", (f"{mname}.bias" if mname else "bias")
            if w not in net.params or all_ids[id(params[w])] != 1:
                continue
            if mod.bias is not None and (b not in net.params or all_ids[id(params[b])] != 1):
                continue
            self.candidates[mname] = (w, b if mod.bias is not None else None)
        self.tensor_ids = {id(params[n]): n for w, b in self.candidates.values() for n in (w, b) if n is not None}
        self.uses: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.ndim_ok: dict[str, bool] = {}
        self.batch: int | None = None  # batch size of the census forward
        self._handles: list[Any] = []

    def __enter__(self) -> _LinearCensus:
        modules = dict(self.net.model.named_modules())
        for mname in self.candidates:
            def hook(module: nn.Module, args: tuple, out: Tensor, mname: str = mname) -> None:
                self.calls[mname] += 1
                # one row per sample: (N, in), so that a sample's weight gradient is one outer product
                ok = args[0].ndim == 2 and args[0].shape[0] == self.batch
                self.ndim_ok[mname] = self.ndim_ok.get(mname, True) and ok
            self._handles.append(modules[mname].register_forward_hook(hook))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        super().__exit__(*exc)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        for a in (*args, *kwargs.values()):
            for t in (a if isinstance(a, list | tuple) else (a,)):
                if isinstance(t, Tensor) and id(t) in self.tensor_ids:
                    self.uses[self.tensor_ids[id(t)]] += 1
        return func(*args, **kwargs)

    def factored(self) -> dict[str, tuple[str, str | None]]:
        out = {}
        for mname, (w, b) in self.candidates.items():
            if self.calls[mname] == 1 and self.ndim_ok.get(mname, False) and self.uses[w] == 1 and (
                    b is None or self.uses[b] == 1):
                out[mname] = (w, b)
        return out


def _prepare(model: nn.Module, x: Tensor, bounds: Bounds) -> tuple[_Functional, Tensor, Tensor]:
    """Validate, then (functional view, logits (N, K), predictions (N,)); call in eval mode.

    The validation forward also decides whether the batched factored path applies
    (:class:`fisherscope.fisher._factored.Census`) and, for the whole-model path, which
    ``nn.Linear`` layers are factored.
    """
    net = _Functional(model)
    check_inputs(x, bounds=bounds)
    check_model_dtype(model, x)
    census = _LinearCensus(net)
    census.batch = x.shape[0]
    layers = Census(model, net.params, x.shape[0])
    with torch.no_grad(), census, layers:
        logits = model(x.detach())
    net.plan = layers.plan() if FACTOR_LAYERS else None
    net.lins = census.factored() if FACTOR_LINEAR and net.plan is None else {}
    check_logits(logits)
    return net, logits.detach(), logits.argmax(1)


def _class_terms(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """log p, log(1 − p) and the rows r_c = e_c − q⁽ᶜ⁾, all in log space.

    Shapes
    ------
    z: (..., K) -> log_p (..., K), log1m_p (..., K), r (..., K, K) (row c is r_c).
    """
    k = z.shape[-1]
    eye = torch.eye(k, dtype=torch.bool, device=z.device)
    lse = torch.logsumexp(z, dim=-1, keepdim=True)
    log_p = z - lse
    others = z.unsqueeze(-2).masked_fill(eye, -torch.inf)  # row c: z without z_c
    log1m_p = torch.logsumexp(others, dim=-1) - lse
    q = torch.softmax(others, dim=-1)
    r = eye.to(z.dtype) - q
    return log_p, log1m_p, r


def _pick(t: Tensor, idx: Tensor) -> Tensor:
    """t[..., idx, ...] along dim 0 for a 0-d index tensor (vmap-friendly)."""
    return torch.index_select(t, 0, idx.reshape(1)).squeeze(0)


def _sqnorm(tree: Mapping[str, Tensor], lead: int) -> Tensor:
    """Σ over tensors of the squared entries, keeping ``lead`` leading dims.

    One fused reduction per tensor (``vector_norm``), no squared temporary: for the
    per-sample gradients this is a memory-bound pass over the largest tensors.
    """
    return sum(torch.linalg.vector_norm(g.flatten(lead), dim=-1).square() for g in tree.values())


def _auto_chunk(chunk_size: int | None, net: _Functional, vectors_per_sample: int) -> int:
    if chunk_size is not None:
        return chunk_size
    if net.plan is not None:
        cuda = net.model_device().type == "cuda"
        budget = CHUNK_BUDGET_BYTES if cuda else FACTORED_CHUNK_BYTES
        per = max(1, net.plan.elements_per_sample(vectors_per_sample)) * torch.finfo(net.dtype).bits // 8
        return max(1, budget // per) if cuda else max(1, min(FACTORED_MAX_CHUNK, budget // per))
    numel = net.n_generic() + sum(_in_out_features(net, n) for n in net.lins)
    per_sample = max(1, vectors_per_sample) * max(numel, 1) * torch.finfo(net.dtype).bits // 8
    return max(1, CHUNK_BUDGET_BYTES // per_sample)


@contextlib.contextmanager
def _quiet_forward_ad() -> Iterator[None]:
    """torch's forward-mode AD scripts a helper on first use and warns that
    torch.jit.script is deprecated; that is torch's business, not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)
        yield


def _grad_r_pred(net: _Functional, x1: Tensor, pred1: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """(log p̂, log(1 − p̂), logits, Jᵀ r_ŷ) for one sample; Jᵀ r_ŷ = ∇θ log p̂ / (1 − p̂)."""
    z, vjp_fn = vjp(lambda p: net.logits1(p, x1), net.params)
    log_p, log1m_p, r = _class_terms(z)
    (g,) = vjp_fn(_pick(r, pred1))
    return _pick(log_p, pred1), _pick(log1m_p, pred1), z, g


def _fvjp(net: _Functional, x1: Tensor) -> tuple[Tensor, Any, dict[str, Tensor]]:
    """Factored forward of one sample: (z, vjp_fn, {layer: input a}).

    ``vjp_fn(r)`` returns (generic parameter gradients, {layer: δ}) of r · z, where δ is the
    gradient at the factored layer's output (its weight gradient is δ aᵀ).
    """
    probes = {n: torch.zeros(1, _out_features(net, n), dtype=net.dtype, device=x1.device) for n in net.lins}
    res: Any = torch.func.vjp(lambda g, pr: net.probe_logits1(g, pr, x1), net.generic, probes, has_aux=True)
    return res[0], res[1], res[2]


def _out_features(net: _Functional, name: str) -> int:
    lin: Any = net.model.get_submodule(name)  # an nn.Linear
    return int(lin.out_features)


def _in_out_features(net: _Functional, name: str) -> int:
    lin: Any = net.model.get_submodule(name)
    return int(lin.in_features) + int(lin.out_features)


def _lin_sqnorm(net: _Functional, deltas: Mapping[str, Tensor], inputs: Mapping[str, Tensor], lead: int) -> Tensor:
    """Σ over factored layers of ‖δ aᵀ‖² + ‖δ‖² (bias) = ‖δ‖² (‖a‖² + 1[bias])."""
    total: Any = 0.0
    for n, (_, b) in net.lins.items():
        d2 = torch.linalg.vector_norm(deltas[n].flatten(lead), dim=-1).square()
        total = total + d2 * (inputs[n].pow(2).sum() + (1.0 if b is not None else 0.0))
    return total


def _full_sqnorm(net: _Functional, g_gen: Mapping[str, Tensor], deltas: Mapping[str, Tensor],
                 inputs: Mapping[str, Tensor], lead: int) -> Tensor:
    """‖Jᵀ r‖² over all trainable parameters, factored layers included."""
    return _sqnorm(g_gen, lead) + _lin_sqnorm(net, deltas, inputs, lead)


LinDir = dict[str, tuple[Tensor, Tensor]]


def _fast_direction(net: _Functional, x1: Tensor, pred1: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor], LinDir, Tensor]:
    """g = Jᵀ r_ŷ for one sample in factored form.

    Returns (z, log p̂, log(1 − p̂), generic part of g, {layer: (δ₀, a₀)}, ‖g‖²); the default
    direction is v = λ (1 − p̂) g (eq. 6) or g / ‖g‖ (eq. 8).
    """
    z, vjp_fn, inputs = _fvjp(net, x1)
    log_p, log1m_p, r = _class_terms(z)
    g_gen, deltas = vjp_fn(_pick(r, pred1))
    lin_dir = {n: (deltas[n], inputs[n]) for n in net.lins}
    sq = _full_sqnorm(net, g_gen, deltas, inputs, 0)
    return z, _pick(log_p, pred1), _pick(log1m_p, pred1), g_gen, lin_dir, sq


def _fast_jv(net: _Functional, x1: Tensor, g_gen: Mapping[str, Tensor], lin_dir: LinDir) -> tuple[Tensor, Tensor]:
    """(z, J g) at x1 for g in factored form: one forward-mode product (s is the factored layers' scale)."""
    zero = torch.zeros((), dtype=net.dtype, device=x1.device)
    one = torch.ones((), dtype=net.dtype, device=x1.device)
    return jvp(lambda s, gg: net.shift_logits1(s, gg, x1, lin_dir), (zero, net.generic), (one, dict(g_gen)))


def _fast_shifted(net: _Functional, x1: Tensor, g_gen: Mapping[str, Tensor], lin_dir: LinDir, step: Tensor) -> Tensor:
    """Logits at θ + step · g (g in factored form), for the finite difference of eq. 9."""
    shifted = {k: p + step * g_gen[k] for k, p in net.generic.items()}
    return net.shift_logits1(step, shifted, x1, lin_dir)


# ------------------------------------------------- the batched factored path (fisher._factored)


def _take(t: Tensor, idx: Tensor) -> Tensor:
    """t[n, idx[n]] for t (N, K, ...) and idx (N,)."""
    return t[torch.arange(t.shape[0], device=t.device), idx]


def _full_cotangents(z: Tensor) -> tuple[Tensor, Tensor]:
    """Cotangents C_j (K − 1, N, K) and weights λ_j (K − 1, N) with Σ_j λ_j C_j C_jᵀ = diag p − p pᵀ.

    tr F_θ = Σ_c p_c ‖∇θ log p_c‖² = tr(Jᵀ A J) with A = diag p − p pᵀ (J: the K × P
    parameter Jacobian of the logits), and A = H M Hᵀ with the Helmert basis H of 𝟙^⊥
    and M = Hᵀ A H = V Λ Vᵀ, so tr F_θ = Σ_j λ_j ‖Jᵀ (H v_j)‖²: K − 1 backward passes
    with unit cotangents, the weights applied afterwards in float64. A is built in
    float64 with its diagonal p_c (1 − p_c) from log space (exact for confident inputs).
    """
    from .input_space import helmert_basis

    log_p, log1m_p, _ = _class_terms(z.to(torch.float64))
    p = log_p.exp()
    a = -p.unsqueeze(2) * p.unsqueeze(1)
    a.diagonal(dim1=1, dim2=2).copy_(torch.exp(log_p + log1m_p))
    h = helmert_basis(z.shape[1], dtype=torch.float64, device=z.device)
    m = h.mT @ a @ h
    lam, vec = torch.linalg.eigh((m + m.mT) / 2)  # (N, K-1), (N, K-1, K-1)
    cot = torch.einsum("kj,njr->rnk", h, vec)  # (K-1, N, K): column r of H V per sample
    return cot, lam.clamp_min(0.0).mT


def _strategy(net: _Functional, rows: int, n: int) -> str:
    assert net.plan is not None
    return choose_strategy(rows, n, net.plan.flops_per_sample(), net.model_device(), VJP_STRATEGY)


def _plan_trace(net: _Functional, x: Tensor, reduction: str) -> Tensor:
    """tr F_θ of a chunk on the factored path (K − 1 or one backward pass)."""
    plan = net.plan
    assert plan is not None
    z, states, probes = plan.probe_forward(x)
    zd = z.detach()
    if reduction == "full":
        cot, w = _full_cotangents(zd)
    else:
        log_p, log1m_p, r = _class_terms(zd)
        pred = zd.argmax(1)
        cot = _take(r, pred).unsqueeze(0)
        w = torch.exp(_take(log_p, pred) + _take(log1m_p, pred)).to(torch.float64).unsqueeze(0)  # p̂ (1 − p̂)
    sq = plan.sqnorms(z, states, probes, cot, _strategy(net, cot.shape[0], x.shape[0]))  # type: ignore[arg-type]
    return (w * sq.to(torch.float64)).sum(0).to(net.dtype)


def _plan_gradient(net: _Functional, x: Tensor, pred: Tensor, *, directions: bool = True
                   ) -> tuple[Tensor, dict[str, Any], dict[str, Tensor], dict[str, Any], Tensor, Tensor]:
    """g = Jᵀ r_ŷ for a chunk: (logits, states, output grads, directions, log(1 − p̂), ‖g‖²)."""
    plan = net.plan
    assert plan is not None
    z, states, probes = plan.probe_forward(x)
    zd = z.detach()
    _, log1m_p, r = _class_terms(zd)
    deltas, dirs, sq = plan.gradient(z, states, probes, _take(r, pred), directions=directions)
    return zd, states, deltas, dirs, _take(log1m_p, pred), sq


def _form_terms_batch(z: Tensor, u: Tensor, pred: Tensor, reduction: str) -> Tensor:
    """vᵀ F v per sample from logits z (N, K) and u = J v (N, K)."""
    log_p, log1m_p, r = _class_terms(z)
    d = torch.einsum("nck,nk->nc", r, u)  # r_c · u
    if reduction == "full":
        return (torch.exp(log_p + 2 * log1m_p) * d.pow(2)).sum(1)
    return torch.exp(_take(log_p, pred) + _take(log1m_p, pred)) * _take(d, pred).pow(2)


def _reduced_log_probs_batch(z: Tensor, pred: Tensor, reduction: str) -> Tensor:
    """(N, K) log-probabilities, or (N, 2) = (log p̂, log(1 − p̂))."""
    if reduction == "full":
        return torch.log_softmax(z, dim=-1)
    log_p, log1m_p, _ = _class_terms(z)
    return torch.stack([_take(log_p, pred), _take(log1m_p, pred)], 1)


def _plan_form_default(net: _Functional, x: Tensor, pred: Tensor, normalized: bool, scale: float, method: str,
                       fd_eps: float, reduction: str, start: int) -> Tensor:
    """The form along the default direction on the factored path: one backward pass for g,
    then one forward-mode pass (``jvp``) or one shifted forward (``finite_difference``)."""
    plan = net.plan
    assert plan is not None
    z, states, _, dirs, log1m, sq = _plan_gradient(net, x, pred)
    if method == "jvp":
        z0, u = plan.jv(x, states, dirs)
        return _form_terms_batch(z0, u, pred, reduction) * _default_scale(log1m, sq, normalized, scale, start)
    if normalized:
        _warn_zero_direction(sq, start, "∇θ log p(ŷ|x)")
    c = _direction_factor(log1m, sq, normalized, scale)
    lp0 = _reduced_log_probs_batch(z, pred, reduction)
    lp1 = _reduced_log_probs_batch(plan.shifted_logits(x, states, dirs, fd_eps * c), pred, reduction)
    return ((torch.exp(lp1) - torch.exp(lp0)) * (lp1 - lp0)).sum(1) / fd_eps**2


def _direction_factor(log1m: Tensor, sqnorm: Tensor, normalized: bool, scale: float) -> Tensor:
    """c with v = c · g: λ (1 − p̂), or 1 / ‖g‖ (NaN where g = 0)."""
    if normalized:
        return torch.where(sqnorm > 0, torch.rsqrt(torch.where(sqnorm > 0, sqnorm, torch.ones_like(sqnorm))),
                           torch.full_like(sqnorm, torch.nan))
    return scale * torch.exp(log1m)


def _normalize_tree(tree: Mapping[str, Tensor], lead: int) -> tuple[dict[str, Tensor], Tensor]:
    """tree / ‖tree‖ per leading index (zero where the norm is zero) and the norms."""
    norm = _sqnorm(tree, lead).sqrt()
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    out = {}
    for k, g in tree.items():
        shape = norm.shape + (1,) * (g.ndim - lead)
        out[k] = torch.where((norm > 0).reshape(shape), g / safe.reshape(shape), torch.zeros_like(g))
    return out, norm


def _unit(tree: Mapping[str, Tensor], start: int, what: str) -> dict[str, Tensor]:
    """Per-sample tree / ‖tree‖; samples with a zero vector get NaN and a warning."""
    out, norm = _normalize_tree(tree, 1)
    _warn_zero_direction(norm, start, what)
    zero = norm == 0
    return {k: t.masked_fill(per_sample(zero, t), torch.nan) for k, t in out.items()}


def _warn_zero_direction(norm: Tensor, start: int, what: str) -> None:
    bad = torch.nonzero(norm == 0).flatten().tolist()
    if bad:
        shown = ", ".join(str(start + i) for i in bad[:10]) + (", ..." if len(bad) > 10 else "")
        warnings.warn(
            f"{what} is the zero vector for samples [{shown}] (their parameter gradient vanishes); "
            "v / ‖v‖ is undefined there and those samples get NaN.",
            RuntimeWarning,
            stacklevel=4,
        )


def _check_direction(v: object, net: _Functional, n: int) -> dict[str, Tensor]:
    """Validate a user direction; returns {name: (N, *shape)} (shared entries expanded)."""
    if not isinstance(v, Mapping):
        raise TypeError(
            "v must be a mapping {parameter name: tensor} covering the model's trainable parameters "
            f"(see fisherscope.fisher.param_direction); got {type(v).__name__}."
        )
    missing = sorted(set(net.params) - set(v))
    extra = sorted(set(v) - set(net.params))
    if missing or extra:
        raise ValueError(
            "v must have exactly one entry per trainable parameter of the model "
            f"(names as in model.named_parameters()); missing {missing[:5]}, unexpected {extra[:5]}."
        )
    out = {}
    for name, p in net.params.items():
        t = v[name]
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"v[{name!r}] must be a floating-point tensor; got {type(t).__name__ if not isinstance(t, Tensor) else t.dtype}.")
        if tuple(t.shape) == tuple(p.shape):
            t = t.unsqueeze(0).expand(n, *p.shape)
        elif tuple(t.shape) != (n, *p.shape):
            raise ValueError(
                f"v[{name!r}] must have shape {(n, *p.shape)} (one direction per sample) or "
                f"{tuple(p.shape)} (shared); got {tuple(t.shape)}."
            )
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"v[{name!r}] contains non-finite values; pass a finite direction.")
        out[name] = t.detach().to(dtype=p.dtype, device=p.device)
    return out


# ----------------------------------------------------------------------- public API


def param_direction(
    model: nn.Module,
    x: Tensor,
    *,
    normalized: bool = False,
    scale: float = 1.0,
    chunk_size: int | None = None,
    bounds: Bounds = (0.0, 1.0),
) -> dict[str, Tensor]:
    """The default direction of the quadratic form: v = λ ∇θ log p(ŷ|x), per sample.

    ŷ is the predicted class (eq. 6 with the prediction in place of the unknown label).
    Computed as λ (1 − p̂) Jᵀ r_ŷ, which keeps full relative precision when p̂ → 1.

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K); run in eval mode (every module's mode is restored).
    x : Tensor
        Inputs (N, C, H, W) or (N, D) within ``bounds``.
    normalized : bool
        Return v̄ = v / ‖v‖ (eq. 8); ``scale`` is then irrelevant.
    scale : float
        λ > 0 (e.g. the learning rate, which makes vᵀFv ≈ 2 KL of one SGD step).
    chunk_size : int, optional
        Samples per chunk (memory: one parameter-sized vector per sample).

    Returns
    -------
    dict
        ``{name: (N, *param.shape)}`` for every trainable parameter.

    Shapes
    ------
    x: (N, *S) -> {name: (N, *param.shape)}.

    References
    ----------
    Martin & Elster (2019), eqs. 6 and 8.
    """
    check_params("param_direction", {"normalized": normalized, "scale": scale, "chunk_size": chunk_size},
                 {"normalized": BOOL, "scale": POSITIVE, "chunk_size": _CHUNK})
    scale = float(scale)
    _check_model(model)
    with eval_mode(model):
        net, _, pred = _prepare(model, x, bounds)
        net.lins = {}  # the direction is returned materialised: no factored linear layers
        if net.plan is not None:
            net.plan.prepare(1, tangent=False)
        chunk = _auto_chunk(chunk_size, net, 1)
        x = x.detach()
        parts: list[dict[str, Tensor]] = []
        for sl in even_chunks(x.shape[0], chunk):
            if net.plan is not None:
                parts.append(_plan_direction_chunk(net, x[sl], pred[sl], normalized, scale, sl.start))
            else:
                parts.append(_direction_chunk(net, x[sl], pred[sl], normalized, scale, sl.start))
    return {k: torch.cat([p[k] for p in parts]) for k in net.params}


def _plan_direction_chunk(net: _Functional, x: Tensor, pred: Tensor, normalized: bool, scale: float,
                          start: int) -> dict[str, Tensor]:
    assert net.plan is not None
    _, states, deltas, _, log1m, _ = _plan_gradient(net, x, pred, directions=False)
    g = {k: t.detach() for k, t in net.plan.materialize(states, deltas).items()}
    g = {k: g[k] for k in net.params}
    if normalized:
        return _unit(g, start, "∇θ log p(ŷ|x)")
    w = scale * torch.exp(log1m)  # λ (1 − p̂)
    return {k: t * per_sample(w, t) for k, t in g.items()}


def _direction_chunk(net: _Functional, x: Tensor, pred: Tensor, normalized: bool, scale: float,
                     start: int) -> dict[str, Tensor]:
    def one(x1: Tensor, pred1: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        _, log1m, _, g = _grad_r_pred(net, x1, pred1)
        return log1m, g

    log1m, g = vmap(one)(x, pred)
    if normalized:
        return _unit(g, start, "∇θ log p(ŷ|x)")
    w = scale * torch.exp(log1m)  # λ (1 − p̂)
    return {k: t * per_sample(w, t) for k, t in g.items()}


def param_fisher_trace(
    model: nn.Module,
    x: Tensor,
    reduction: Reduction = "full",
    *,
    chunk_size: int | None = None,
    bounds: Bounds = (0.0, 1.0),
) -> Tensor:
    """Trace of the parameter-space Fisher information, tr F_θ(x), per sample (eq. 4).

    ``full``: Σ_c p_c ‖∇θ log p_c‖² = tr(Jᵀ (diag p − p pᵀ) J), from K − 1 batched
    backward passes (the rank of diag p − p pᵀ) and the per-layer factored norms of
    :mod:`fisherscope.fisher._factored`. ``two_class``: the reduction of eq. 7 to
    {ŷ, not ŷ}, p̂ (1 − p̂) ‖Jᵀ r_ŷ‖² (= (1 − p̂)/p̂ · ‖∇θ log(1 − p̂)‖²), one backward pass.
    Both are exact (no sampling, no finite differences). Models the factored path does
    not accept take the whole-model ``vmap`` path (K per-sample gradients per sample).

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K); run in eval mode (every module's mode is restored). The
        model must treat samples independently (BatchNorm in eval mode is fine).
    x : Tensor
        Inputs (N, C, H, W) or (N, D) within ``bounds``; never modified.
    reduction : {"full", "two_class"}
        Sum over all K classes (eq. 4) or over {ŷ, not ŷ} (eq. 7).
    chunk_size : int, optional
        Samples per chunk. Default: :data:`FACTORED_CHUNK_BYTES` of workspace (at most
        :data:`FACTORED_MAX_CHUNK` samples on CPU) on the factored path; as many as fit
        in :data:`CHUNK_BUDGET_BYTES` with K (full) or 1 (two_class) parameter-sized
        gradients per sample on the whole-model path.
    bounds : (float, float) or None
        Admissible input range (``None`` skips the check).

    Returns
    -------
    Tensor
        (N,) traces, dtype of the model's parameters.

    Shapes
    ------
    x: (N, *S) -> (N,).

    References
    ----------
    Martin & Elster (2019), eqs. 3, 4 and 7.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    >>> param_fisher_trace(net, torch.rand(2, 4)).shape
    torch.Size([2])
    """
    check_params("param_fisher_trace", {"reduction": reduction, "chunk_size": chunk_size},
                 {"reduction": one_of("full", "two_class"), "chunk_size": _CHUNK})
    _check_model(model)
    with eval_mode(model):
        net, logits, pred = _prepare(model, x, bounds)
        k = logits.shape[1]
        rows = k - 1 if reduction == "full" else 1
        if net.plan is not None:
            net.plan.prepare(rows, tangent=False)
            chunk = _auto_chunk(chunk_size, net, rows)
            x = x.detach()
            return torch.cat([_plan_trace(net, x[sl], reduction) for sl in even_chunks(x.shape[0], chunk)]).detach()
        chunk = _auto_chunk(chunk_size, net, k if reduction == "full" else 1)
        x = x.detach()

        def full(x1: Tensor) -> Tensor:
            z, vjp_fn, inputs = _fvjp(net, x1)
            log_p, log1m_p, r = _class_terms(z)
            g_gen, deltas = vmap(vjp_fn)(r)  # Jᵀ r_c for the K rows
            w = torch.exp(log_p + 2 * log1m_p)  # p_c (1 − p_c)²
            return (w * _full_sqnorm(net, g_gen, deltas, inputs, 1)).sum()

        def two_class(x1: Tensor, pred1: Tensor) -> Tensor:
            _, log_p, log1m_p, _, _, sq = _fast_direction(net, x1, pred1)
            return torch.exp(log_p + log1m_p) * sq

        out = []
        with net.hooked():
            for sl in even_chunks(x.shape[0], chunk):
                if reduction == "full":
                    out.append(vmap(full)(x[sl]))
                else:
                    out.append(vmap(two_class)(x[sl], pred[sl]))
    return torch.cat(out).detach()


#: The quantities :func:`differentiable_param_fisher` returns, by name.
DIFFERENTIABLE_SCORES = ("trace", "form", "normalized")


def _gram_factored(net: _Functional, g_gen: Mapping[str, Tensor], deltas: Mapping[str, Tensor],
                   inputs: Mapping[str, Tensor]) -> Tensor:
    """Q_cd = (Jᵀ r_c) · (Jᵀ r_d) over all trainable parameters, (K, K), for one sample.

    Generic parameters: the (K, P) gradient rows multiplied out; factored ``nn.Linear``
    layers: (δ_c aᵀ) · (δ_d aᵀ) + δ_c · δ_d = (δ_c · δ_d)(‖a‖² + 1[bias]).
    """
    q: Any = 0.0
    for g in g_gen.values():
        rows = g.flatten(1)
        q = q + rows @ rows.mT
    for n, (_, b) in net.lins.items():
        d = deltas[n].flatten(1)
        q = q + (d @ d.mT) * (inputs[n].pow(2).sum() + (1.0 if b is not None else 0.0))
    return q


def differentiable_param_fisher(
    model: nn.Module,
    x: Tensor,
    scores: tuple[str, ...] = DIFFERENTIABLE_SCORES,
    *,
    reduction: Reduction = "full",
    scale: float = 1.0,
    chunk_size: int | None = None,
    bounds: Bounds = (0.0, 1.0),
) -> Tensor:
    """Martin & Elster's trace, form and normalised form as differentiable functions of x.

    The numbers of :func:`param_fisher_trace` and :func:`param_fisher_form` (default
    direction, ``method="jvp"``) with the autograd graph to ``x`` kept, for attackers: the
    K per-sample parameter gradients Jᵀ r_c (one vmapped vjp per sample, as the trace
    uses) give the K × K Gram matrix Q_cd = (Jᵀ r_c)·(Jᵀ r_d), and with
    w_c = p_c (1 − p_c)²

        tr F_θ = Σ_c w_c Q_cc,   vᵀF_θv = λ² (1 − p̂)² Σ_c w_c Q_cŷ²,   v̄ᵀF_θv̄ = Σ_c w_c Q_cŷ² / Q_ŷŷ

    (two_class: p̂(1 − p̂) Q_ŷŷ, p̂(1 − p̂) Q_ŷŷ² times the same factors), since
    r_c · J v = (Jᵀ r_c) · v and the default direction is v = λ (1 − p̂) Jᵀ r_ŷ. Reverse
    mode only: the outer gradient in x is a double backprop through the vmapped vjp.

    Parameters
    ----------
    model : nn.Module
        Maps x to logits; run in eval mode (modes restored).
    x : Tensor
        Inputs (N, C, H, W) or (N, D); differentiable in x when ``x.requires_grad``.
    scores : tuple of {"trace", "form", "normalized"}
        Which columns, in order.
    reduction : {"full", "two_class"}
        As in :func:`param_fisher_trace`.
    scale : float
        λ of the unnormalised form.
    chunk_size : int, optional
        Samples per vmapped chunk (default: the trace's memory rule).

    Returns
    -------
    Tensor
        (N, len(scores)) in the parameters' dtype, attached to the graph of ``x``. The
        normalised form is NaN where ∇θ log p̂ vanishes (as in ``param_fisher_form``).

    Shapes
    ------
    x: (N, *S) -> (N, len(scores)).

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).double().eval()
    >>> x = torch.rand(2, 4, dtype=torch.float64, requires_grad=True)
    >>> differentiable_param_fisher(net, x).shape
    torch.Size([2, 3])
    """
    if isinstance(scores, str):
        scores = (scores,)
    names = tuple(scores)
    bad = [s for s in names if s not in DIFFERENTIABLE_SCORES]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(
            f"differentiable_param_fisher: scores must be distinct names from {list(DIFFERENTIABLE_SCORES)}; "
            f"got {list(names)!r}."
        )
    check_params("differentiable_param_fisher", {"reduction": reduction, "chunk_size": chunk_size, "scale": scale},
                 {"reduction": one_of("full", "two_class"), "chunk_size": _CHUNK, "scale": POSITIVE})
    _check_model(model)
    with eval_mode(model):
        net, logits, pred = _prepare(model, x, bounds)
        chunk = _auto_chunk(chunk_size, net, logits.shape[1])

        def one(x1: Tensor, pred1: Tensor) -> Tensor:
            z, vjp_fn, inputs = _fvjp(net, x1)
            log_p, log1m_p, r = _class_terms(z)
            g_gen, deltas = vmap(vjp_fn)(r)  # Jᵀ r_c for the K rows
            q = _gram_factored(net, g_gen, deltas, inputs)  # (K, K)
            q_pred = _pick(q, pred1)  # (K,): Q_{c ŷ}
            q_pp = _pick(q_pred, pred1)
            lp, l1m = _pick(log_p, pred1), _pick(log1m_p, pred1)
            if reduction == "full":
                w = torch.exp(log_p + 2 * log1m_p)
                trace, raw = (w * torch.diagonal(q)).sum(), (w * q_pred.pow(2)).sum()
            else:
                w1 = torch.exp(lp + l1m)
                trace, raw = w1 * q_pp, w1 * q_pp.pow(2)
            safe = torch.where(q_pp > 0, q_pp, torch.ones_like(q_pp))
            cols = {"trace": trace, "form": raw * (scale * torch.exp(l1m)).pow(2),
                    "normalized": torch.where(q_pp > 0, raw / safe, torch.full_like(raw, torch.nan))}
            return torch.stack([cols[s] for s in names])

        out = []
        with net.hooked():
            for sl in even_chunks(x.shape[0], chunk):
                out.append(vmap(one)(x[sl], pred[sl]))
    return torch.cat(out)


def _form_terms(z: Tensor, u: Tensor, pred1: Tensor, reduction: str) -> Tensor:
    """vᵀ F v from logits z (K,) and directional derivatives u = J v (K,)."""
    log_p, log1m_p, r = _class_terms(z)
    d = r @ u  # (K,): r_c · u
    if reduction == "full":
        return (torch.exp(log_p + 2 * log1m_p) * d.pow(2)).sum()
    return torch.exp(_pick(log_p, pred1) + _pick(log1m_p, pred1)) * _pick(d, pred1).pow(2)


def _reduced_log_probs(z: Tensor, pred1: Tensor, reduction: str) -> Tensor:
    """log-probabilities of the classes the sum runs over: (K,) or (log p̂, log(1 − p̂))."""
    if reduction == "full":
        return torch.log_softmax(z, dim=-1)
    log_p, log1m_p, _ = _class_terms(z)
    return torch.stack([_pick(log_p, pred1), _pick(log1m_p, pred1)])


def _shift(params: Mapping[str, Tensor], v: Mapping[str, Tensor], eps: float) -> dict[str, Tensor]:
    return {k: params[k] + eps * v[k] for k in params}


def param_fisher_form(
    model: nn.Module,
    x: Tensor,
    v: Direction | None = None,
    *,
    normalized: bool = False,
    method: FormMethod = "jvp",
    fd_eps: float = 1e-4,
    reduction: Reduction = "full",
    scale: float = 1.0,
    chunk_size: int | None = None,
    bounds: Bounds = (0.0, 1.0),
) -> Tensor:
    """Quadratic form vᵀ F_θ(x) v of the parameter-space Fisher, per sample (eqs. 5, 8, 9).

    vᵀ F_θ v = Σ_c p_c (g_c · v)² with g_c = ∇θ log p_c(x) (or the two-class sum of eq. 7).

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K); run in eval mode (every module's mode is restored).
    x : Tensor
        Inputs (N, C, H, W) or (N, D) within ``bounds``; never modified.
    v : mapping, optional
        Direction ``{param name: (N, *shape) or shape}``. Default: v = λ ∇θ log p(ŷ|x)
        per sample (eq. 6), see :func:`param_direction`.
    normalized : bool
        Use v̄ = v / ‖v‖ (eq. 8); samples with v = 0 get NaN and a warning.
    method : {"jvp", "finite_difference"}
        ``jvp``: exact forward-mode directional derivatives J_θ v over the whole v.
        ``finite_difference``: the paper's eq. 9, (f(θ + ε′v) − f(θ)) / ε′ for f = p and
        log p, over the whole v (error O(ε′), plus round-off ~ machine-eps / ε′).
    fd_eps : float
        ε′ of the finite difference (paper: 1e-4). Applied to v as given (after
        normalisation when ``normalized``), so it is relative to ‖v‖.
    reduction : {"full", "two_class"}
        Sum over all K classes or over {ŷ, not ŷ} (eq. 7).
    scale : float
        λ > 0 of the default direction; ignored when ``v`` is given (scale v yourself).
    chunk_size : int, optional
        Samples per chunk (memory on the whole-model path: about two parameter-sized
        vectors per sample; the factored path needs no parameter-sized ones).

    Returns
    -------
    Tensor
        (N,), dtype of the model's parameters.

    Shapes
    ------
    x: (N, *S), v: {name: (N, *param.shape)} -> (N,).

    References
    ----------
    Martin & Elster (2019), eqs. 5–9.
    """
    check_direction_settings("param_fisher_form", normalized=normalized, reduction=reduction, method=method,
                             fd_eps=fd_eps, scale=scale, chunk_size=chunk_size)
    fd_eps, scale = float(fd_eps), float(scale)
    return _directional(
        model, x, v, bounds, chunk_size, normalized,
        lambda net, xs, ps, start: _form_default(net, xs, ps, normalized, scale, method, fd_eps, reduction, start),
        lambda net, xs, ps, vs: _form_chunk(net, xs, ps, vs, method, fd_eps, reduction),
    )


def _directional(
    model: nn.Module,
    x: Tensor,
    v: Any,
    bounds: Any,
    chunk_size: Any,
    normalized: bool,
    default: Callable[[Any, Tensor, Tensor, int], Tensor],
    given: Callable[[Any, Tensor, Tensor, dict[str, Tensor]], Tensor],
) -> Tensor:
    """Shared driver of the quantities along a parameter direction v (form, FIS).

    Validates, runs in eval mode, and evaluates chunk by chunk either the default
    direction (``default(net, x, pred, start)``) or the caller's ``v`` (``given(net, x,
    pred, v_chunk)``, normalised first when asked).
    """
    _check_model(model)
    with eval_mode(model):
        net, _, pred = _prepare(model, x, bounds)
        n = x.shape[0]
        user_v = _check_direction(v, net, n) if v is not None else None
        if user_v is not None:
            net.lins, net.plan = {}, None  # an arbitrary direction has no factored form: generic path
        if net.plan is not None:
            net.plan.prepare(1, tangent=True)
        chunk = _auto_chunk(chunk_size, net, 2)
        x = x.detach()
        out = []
        with net.hooked():
            for sl in even_chunks(n, chunk):
                if user_v is None:
                    out.append(default(net, x[sl], pred[sl], sl.start))
                    continue
                vs = {k: t[sl] for k, t in user_v.items()}
                if normalized:
                    vs = _unit(vs, sl.start, "v")
                out.append(given(net, x[sl], pred[sl], vs))
    return torch.cat(out).detach()


def _default_scale(log1m: Tensor, sqnorm: Tensor, normalized: bool, scale: float, start: int,
                   warn: bool = True) -> Tensor:
    """Per-sample factor turning a quadratic quantity in g = Jᵀ r_ŷ into the one in v.

    v = λ (1 − p̂) g gives λ² (1 − p̂)²; v̄ = g / ‖g‖ gives 1 / ‖g‖² (NaN where g = 0).
    """
    if normalized:
        if warn:
            _warn_zero_direction(sqnorm, start, "∇θ log p(ŷ|x)")
        return torch.where(sqnorm > 0, 1.0 / torch.where(sqnorm > 0, sqnorm, torch.ones_like(sqnorm)),
                           torch.full_like(sqnorm, torch.nan))
    return (scale * torch.exp(log1m)).pow(2)


def _form_default(net: _Functional, x: Tensor, pred: Tensor, normalized: bool, scale: float, method: str,
                  fd_eps: float, reduction: str, start: int) -> Tensor:
    """The form along the default direction, in one vmapped pass per chunk.

    ``jvp``: the form is quadratic in v, so it is evaluated at g = Jᵀ r_ŷ and rescaled per
    sample. ``finite_difference``: eq. 9 with the step ε′ · v, v = c · g.
    """
    if net.plan is not None:
        return _plan_form_default(net, x, pred, normalized, scale, method, fd_eps, reduction, start)

    def one(x1: Tensor, pred1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z, _, log1m, g_gen, lin_dir, sq = _fast_direction(net, x1, pred1)
        if method == "jvp":
            z, u = _fast_jv(net, x1, g_gen, lin_dir)
            return _form_terms(z, u, pred1, reduction), log1m, sq
        c = _direction_factor(log1m, sq, normalized, scale)
        lp0 = _reduced_log_probs(z, pred1, reduction)
        lp1 = _reduced_log_probs(_fast_shifted(net, x1, g_gen, lin_dir, fd_eps * c), pred1, reduction)
        value = ((torch.exp(lp1) - torch.exp(lp0)) * (lp1 - lp0)).sum() / fd_eps**2
        return value, log1m, sq

    with _quiet_forward_ad():
        q, log1m, sqnorm = vmap(one)(x, pred)
    if normalized:
        _warn_zero_direction(sqnorm, start, "∇θ log p(ŷ|x)")
    if method == "jvp":
        return q * _default_scale(log1m, sqnorm, normalized, scale, start, warn=False)
    return q


def _form_chunk(net: _Functional, x: Tensor, pred: Tensor, vs: dict[str, Tensor], method: str,
                fd_eps: float, reduction: str) -> Tensor:
    if method == "jvp":

        def one(x1: Tensor, pred1: Tensor, v1: dict[str, Tensor]) -> Tensor:
            z, u = jvp(lambda p: net.logits1(p, x1), (net.params,), (v1,))
            return _form_terms(z, u, pred1, reduction)

        with _quiet_forward_ad():
            return vmap(one)(x, pred, vs)

    def fd(x1: Tensor, pred1: Tensor, v1: dict[str, Tensor]) -> Tensor:
        lp0 = _reduced_log_probs(net.logits1(net.params, x1), pred1, reduction)
        lp1 = _reduced_log_probs(net.logits1(_shift(net.params, v1, fd_eps), x1), pred1, reduction)
        d_log = (lp1 - lp0) / fd_eps
        d_p = (torch.exp(lp1) - torch.exp(lp0)) / fd_eps
        return (d_p * d_log).sum()

    return vmap(fd)(x, pred, vs)
