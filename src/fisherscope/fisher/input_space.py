"""The input-space Fisher information matrix G_x (Zhao et al. 2019; Shen et al.).

Treat the input x as the parameter of p(y|x) = softmax(z(x)). With J = ∂z/∂x (K × D per
sample), p the class probabilities and A = diag(p) − p pᵀ,

    G_x = E_{y~p}[∇x log p(y|x) ∇x log p(y|x)ᵀ] = Jᵀ A J = Bᵀ B,

where the K rows of B are √p_k · g_k and g_k = ∇x log p_k = J_k − Σ_j p_j J_j are the
score vectors. Since Σ_k √p_k B_k = Σ_k p_k g_k = 0, rank(G_x) ≤ K − 1.

- ``exact``: A annihilates 𝟙, so with H an orthonormal basis of 𝟙^⊥ (Helmert),
  G_x = B'ᵀB' with B' = (HᵀAH)^{1/2} HᵀJ: K − 1 batched vector-Jacobian products (one
  retained graph, a loop over classes) give
  HᵀJ, the (K − 1) × (K − 1) Gram matrix B'B'ᵀ (float64) has the non-zero eigenvalues and
  v_i = B'ᵀu_i / σ_i the eigenvectors. All K − 1 eigenpairs, per sample, batched, no
  D × D matrix.
- ``lanczos`` / ``power``: matrix-free, G_x v = Jᵀ (A (J v)) is one ``jvp`` and one
  ``vjp`` whatever K is (ImageNet-size heads).
- ``class_samples=m``: Zhao's Monte Carlo approximation, the expectation over y replaced
  by m classes drawn from p(y|x) with the alias method: Â = (1/m) Σ_s (e_{y_s} − p)(e_{y_s} − p)ᵀ.

Memory (ImageNet-size heads: K = 1000, D = 3 · 224 · 224 = 150528). Every path runs under
a byte budget, a module constant read at call time:

- :data:`EXACT_JACOBIAN_BYTES`: the exact methods hold (K − 1) × D rows per sample
  (:func:`exact_jacobian_bytes`, 3.0 GB for the sizes above in float32). Samples are
  chunked to fit; a sample that alone exceeds the budget is refused with a ``ValueError``
  pointing at ``method="lanczos"``. :data:`JACOBIAN_CHUNK_BYTES` additionally caps the
  activations of a chunk on CPU (speed, not memory).
- :data:`fisherscope.fisher._factored.VMAP_ROWS_BYTES`: a vmapped backward pass holds
  one copy of the activation gradients per cotangent row; the K − 1 rows are split into
  passes that fit.
- :data:`KRYLOV_CHUNK_BYTES`: the iterative methods hold the Krylov basis (``max_iter``
  × D), k Ritz vectors and the model's graph per sample (:func:`krylov_bytes`); nothing
  there scales with K (the alias method's Â is applied from the class frequencies, O(K)),
  so a K × D matrix is never formed.

Sign convention of eigenvectors: v is oriented so that moving along +v does not decrease
the cross-entropy of the predicted class ŷ, i.e. ⟨v, −∇x log p(ŷ|x)⟩ ≥ 0; when that
product vanishes (|⟨v, g_ŷ⟩| ≤ 1e-12 ‖g_ŷ‖), the entry of largest magnitude is positive.
Eigenvectors of (numerically) zero eigenvalues are zero vectors.

References
----------
Zhao, C., Fletcher, P. T., Yu, M., Peng, Y., Zhang, G., Shen, C. "The Adversarial Attack
and Detection under the Fisher Information Metric." AAAI 2019. arXiv:1810.03806.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .._batching import even_chunks
from .._random import rand, randn
from .._validation import (
    POSITIVE_INT,
    check_inputs,
    check_logits,
    check_model_dtype,
    check_param,
    check_params,
    eval_mode,
    one_of,
    real,
)
from ..exceptions import ConvergenceWarning
from ._factored import choose_strategy, rows_per_pass, vjp_rows
from ._func import jvp, vjp

__all__ = [
    "FisherSpectrum",
    "EXACT_JACOBIAN_BYTES",
    "KRYLOV_CHUNK_BYTES",
    "MAX_DENSE_DIM",
    "alias_sample",
    "alias_table",
    "differentiable_eigenvalues",
    "exact_jacobian_bytes",
    "fisher_factor",
    "fisher_matrix",
    "fisher_spectrum",
    "fisher_trace",
    "fisher_vector_product",
    "helmert_basis",
    "helmert_rows",
    "krylov_bytes",
    "logits_jacobian",
    "reduced_softmax_covariance",
    "score_vectors",
]

#: Largest input dimension D for which :func:`fisher_matrix` builds the D × D matrix.
MAX_DENSE_DIM = 4096

#: How the exact methods form the K − 1 rows of Hᵀ J: ``"loop"`` (K − 1 backward passes
#: on one retained graph), ``"vmap"`` (one backward pass with the K − 1 cotangents
#: vmapped) or ``"auto"``: the rule of :func:`fisherscope.fisher._factored.choose_strategy`
#: (vmap on CUDA; on CPU vmap for small backward passes, the loop otherwise), from the
#: model's multiply-adds per sample, measured once per model and input shape. Both give
#: the same rows up to round-off.
JACOBIAN_STRATEGY = "auto"

#: On CPU the exact methods process the batch in chunks whose activations take about
#: this many bytes: a batch much larger than the caches runs slower per sample than a
#: chunk that fits (see docs/BENCHMARKS.md). ``None``: the whole batch at once (as on CUDA).
JACOBIAN_CHUNK_BYTES: int | None = 96 * 2**20

#: Memory budget (bytes) of the exact methods' Jacobian rows, on every device. One sample
#: holds the K − 1 rows of Hᵀ J in the input's dtype and the float64 factor B (and its
#: float64 copy of Hᵀ J): (K − 1) · D · (itemsize + 16) bytes, see
#: :func:`exact_jacobian_bytes`. Samples are chunked so that a chunk stays within the
#: budget; a single sample over it is refused with a ``ValueError`` that points at
#: ``method="lanczos"`` (K = 1000, D = 3 · 224 · 224 in float32: 3.0 GB per sample).
#: ``None``: no limit (the whole batch, or the activation chunks of
#: :data:`JACOBIAN_CHUNK_BYTES`).
EXACT_JACOBIAN_BYTES: int | None = 2**30

#: Memory budget (bytes) of one chunk of samples for the iterative methods (``lanczos``,
#: ``power``), on every device: per sample the Krylov basis (``max_iter`` × D in the
#: input's dtype) or the block of k iterates (float64), the k float64 Ritz vectors and
#: about three copies of the model's activations (the graph kept for the vjp, the jvp's
#: tangents), see :func:`krylov_bytes`. Nothing scales with K: a chunk has at least one
#: sample. Random start vectors are drawn for the whole batch before chunking, so the
#: results do not depend on the budget. ``None``: the whole batch at once.
KRYLOV_CHUNK_BYTES: int | None = 2**30

Bounds = tuple[float, float] | None
Method = Literal["exact", "lanczos", "power"]


def exact_jacobian_bytes(num_classes: int, dim: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes per sample of the exact methods' Jacobian rows: (K − 1) · D · (itemsize + 16).

    The rows Hᵀ J in ``dtype``, the float64 factor B = (HᵀAH)^{1/2} HᵀJ and the float64
    copy of Hᵀ J it is computed from; compared with :data:`EXACT_JACOBIAN_BYTES`.
    """
    return (num_classes - 1) * dim * (torch.empty((), dtype=dtype).element_size() + 16)


def krylov_bytes(dim: int, k: int, max_iter: int, act_bytes: int, method: str,
                 dtype: torch.dtype = torch.float32) -> int:
    """Bytes per sample of the iterative methods; compared with :data:`KRYLOV_CHUNK_BYTES`.

    ``lanczos``: the basis (min(max_iter, D) × D in ``dtype``) and k float64 Ritz vectors;
    ``power``: the k iterates, their products and the Ritz vectors (float64, plus the
    products in ``dtype``); both: three copies of the activations (``act_bytes``).
    """
    isz = torch.empty((), dtype=dtype).element_size()
    if method == "lanczos":
        vectors = min(max_iter, dim) * dim * isz + 2 * k * dim * 8
    else:
        vectors = k * dim * (3 * 8 + isz)
    return vectors + 3 * act_bytes


def _check_exact_fits(owner: str, num_classes: int, x: Tensor) -> int | None:
    """Samples per chunk under :data:`EXACT_JACOBIAN_BYTES` (None: no limit); refuses one over it."""
    if EXACT_JACOBIAN_BYTES is None:
        return None
    d = math.prod(x.shape[1:])
    per = exact_jacobian_bytes(num_classes, d, x.dtype)
    if per > EXACT_JACOBIAN_BYTES:
        raise ValueError(
            f"{owner}: the exact method needs the K - 1 = {num_classes - 1} Jacobian rows of each "
            f"sample, {per / 2**20:,.0f} MiB per sample for K = {num_classes} classes and "
            f"D = {d} (input shape {tuple(x.shape[1:])}, {x.dtype}); expected at most "
            f"EXACT_JACOBIAN_BYTES = {EXACT_JACOBIAN_BYTES / 2**20:,.0f} MiB per sample. Use "
            "method='lanczos' (matrix-free: one jvp and one vjp per product, memory independent "
            "of K; e.g. fisher_spectrum(model, x, k=5, method='lanczos'), OSSA(eps=..., "
            "method='lanczos')), or raise fisherscope.fisher.input_space.EXACT_JACOBIAN_BYTES if "
            "the memory is there."
        )
    return max(1, EXACT_JACOBIAN_BYTES // per)


@dataclass(frozen=True)
class FisherSpectrum:
    """Top eigenpairs of G_x for a batch.

    Attributes
    ----------
    eigenvalues : Tensor
        (N, k), descending, ≥ 0. Entries past the rank (K − 1) are exact zeros.
    eigenvectors : Tensor
        (N, k, *x.shape[1:]), unit L2 norm (zero for zero eigenvalues), oriented by the
        module's sign convention.
    method : str
        ``"exact"``, ``"lanczos"`` or ``"power"`` (``+alias`` with class sampling).
    converged : Tensor
        (N,) bool; always True for ``exact``.
    iterations : int
        Matrix-vector products per sample (0 for ``exact``).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    method: str
    converged: Tensor
    iterations: int = 0

    @property
    def top_eigenvalue(self) -> Tensor:
        """λ_max per sample, shape (N,)."""
        return self.eigenvalues[:, 0]

    @property
    def top_eigenvector(self) -> Tensor:
        """v_1 per sample, shaped like x."""
        return self.eigenvectors[:, 0]


# --------------------------------------------------------------------------- basics


def _prepare(model: nn.Module, x: Tensor, bounds: Bounds) -> None:
    if not isinstance(model, nn.Module) and not callable(model):
        raise TypeError(f"model must be a torch.nn.Module mapping x to logits; got {type(model).__name__}.")
    check_inputs(x, bounds=bounds)
    check_model_dtype(model, x)


def _probs(logits: Tensor) -> Tensor:
    return torch.softmax(logits, dim=1)


def logits_jacobian(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and their Jacobian with respect to the input, batched.

    One forward pass and K vector-Jacobian products vectorised with ``torch.func.vmap``,
    in eval mode (samples must not interact: BatchNorm uses its running statistics; a
    model in training mode warns with :class:`~fisherscope.exceptions.ModelModeWarning`
    and every module's mode is restored).

    Shapes
    ------
    x: (N, *S) -> logits (N, K), J (N, K, D) with D = prod(S).
    """
    check_inputs(x, bounds=None)
    n = x.shape[0]
    x = x.detach()
    with eval_mode(model):
        logits, vjp_fn = vjp(model, x)
        check_logits(logits)
        k = logits.shape[1]
        eye = torch.eye(k, dtype=logits.dtype, device=logits.device)
        cotangents = eye.unsqueeze(1).expand(k, n, k)  # (K, N, K): e_k for every sample
        (jac,) = torch.func.vmap(vjp_fn)(cotangents)  # (K, N, *S)
    return logits.detach(), jac.detach().movedim(0, 1).reshape(n, k, -1)


def score_vectors(logits: Tensor, jac: Tensor) -> Tensor:
    """Rows √p_k · ∇x log p_k, so that G_x = Bᵀ B.

    Shapes
    ------
    logits: (N, K), jac: (N, K, D) -> (N, K, D).
    """
    p = _probs(logits.to(jac.dtype))
    mean_row = torch.einsum("nk,nkd->nd", p, jac)
    return p.sqrt().unsqueeze(-1) * (jac - mean_row.unsqueeze(1))


def helmert_basis(k: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """An orthonormal basis H (K × (K − 1)) of the vectors orthogonal to 𝟙 (Helmert contrasts).

    A = diag(p) − ppᵀ annihilates 𝟙, so G_x = Jᵀ A J = (HᵀJ)ᵀ (HᵀAH) (HᵀJ): only the
    K − 1 rows of HᵀJ — K − 1 vector-Jacobian products — are needed.
    """
    h = torch.zeros(k, k - 1, dtype=dtype, device=device)
    for j in range(1, k):
        h[:j, j - 1] = 1.0
        h[j, j - 1] = -float(j)
        h[:, j - 1] /= math.sqrt(j * (j + 1))
    return h


_COSTS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[float, int, int]]] = weakref.WeakKeyDictionary()


def _measure_costs(model: nn.Module, x1: Tensor) -> tuple[Tensor, tuple[float, int, int]]:
    """One forward of one sample: (logits, (multiply-adds, activation bytes, K) per sample).

    Multiply-adds are counted for convolutions and linear layers (one per output element
    for every other leaf module); activation bytes are the leaf modules' outputs. The
    result is cached per model, input shape, dtype and device.
    """
    macs = 0.0
    act = 0

    def hook(mod: nn.Module, args: tuple, out: object) -> None:
        nonlocal macs, act
        if not isinstance(out, Tensor):
            return
        act += out.numel() * out.element_size()
        if isinstance(mod, nn.modules.conv._ConvNd):
            macs += out.numel() * mod.in_channels // mod.groups * math.prod(mod.kernel_size)
        elif isinstance(mod, nn.Linear):
            macs += out.numel() * mod.in_features
        else:
            macs += out.numel()

    is_module = isinstance(model, nn.Module)
    leaves = [m for m in model.modules() if next(m.children(), None) is None] if is_module else []
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        logits = model(x1)
    finally:
        for h in handles:
            h.remove()
    check_logits(logits)
    costs = (max(macs, 1.0), max(act, 1), int(logits.shape[1]))
    if is_module:
        _COSTS.setdefault(model, {})[(tuple(x1.shape[1:]), x1.dtype, x1.device)] = costs
    return logits, costs


def _costs(model: nn.Module, x: Tensor) -> tuple[float, int, int]:
    cached = _COSTS.get(model, {}).get((tuple(x.shape[1:]), x.dtype, x.device)) if isinstance(model, nn.Module) else None
    if cached is not None:
        return cached
    with torch.no_grad():
        return _measure_costs(model, x[:1].detach())[1]


def _jacobian_chunk(model: nn.Module, x: Tensor) -> tuple[int, float, int]:
    """(samples per chunk, multiply-adds per sample, activation bytes per sample) for the exact methods."""
    macs, act, _ = _costs(model, x)
    n = x.shape[0]
    if x.device.type == "cuda" or JACOBIAN_CHUNK_BYTES is None:
        return max(n, 1), macs, act
    return max(1, min(n, JACOBIAN_CHUNK_BYTES // act)), macs, act


def _num_classes(model: nn.Module, x: Tensor) -> int:
    """K from the cached one-sample cost probe (no extra forward once measured)."""
    return _costs(model, x)[2]


def _centered_jacobian(model: nn.Module, x: Tensor, owner: str = "fisher_spectrum") -> tuple[Tensor, Tensor, Tensor]:
    """(logits (N, K), Hᵀ J (N, K − 1, D), H (K, K − 1)): one forward, K − 1 batched VJPs.

    Memory, three budgets: chunks of samples whose activations fit
    :data:`JACOBIAN_CHUNK_BYTES` (CPU) and whose Jacobian rows fit
    :data:`EXACT_JACOBIAN_BYTES` (a sample over that is refused, pointing at
    ``method="lanczos"``); a vmapped pass takes at most
    :data:`fisherscope.fisher._factored.VMAP_ROWS_BYTES` of activation gradients. Per
    chunk the K − 1 products share one graph: a loop of plain batched backward passes, or
    backward passes with the cotangents vmapped, as :data:`JACOBIAN_STRATEGY` decides
    (docs/BENCHMARKS.md has the measurements behind the rule). Nothing loops over samples.
    """
    x = x.detach()
    fits = _check_exact_fits(owner, _num_classes(model, x), x)
    chunk, macs, act = _jacobian_chunk(model, x)
    if fits is not None:
        chunk = min(chunk, fits)
    outs: list[tuple[Tensor, Tensor]] = []
    h = None
    with torch.enable_grad():
        for sl in even_chunks(x.shape[0], chunk):
            xr = x[sl].requires_grad_(True)
            logits = model(xr)
            check_logits(logits)
            strategy = choose_strategy(logits.shape[1] - 1, xr.shape[0], macs, x.device, JACOBIAN_STRATEGY)
            jc, h = helmert_rows(logits, xr, strategy=strategy, max_rows=rows_per_pass(xr.shape[0] * act))
            outs.append((logits.detach(), jc))
    assert h is not None
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]), h


def helmert_rows(logits: Tensor, xr: Tensor, *, create_graph: bool = False,
                 strategy: str = "loop", max_rows: int | None = None) -> tuple[Tensor, Tensor]:
    """The centred logit Jacobian ``Hᵀ J`` of ``logits = model(xr)``, and the Helmert basis H.

    K − 1 batched vector-Jacobian products on one graph (a loop of backward passes over the
    classes, or one pass with the cotangents vmapped), never a loop over samples.

    Parameters
    ----------
    logits : Tensor
        ``model(xr)``, still attached to the graph.
    xr : Tensor
        The input that requires grad.
    create_graph : bool
        Keep the rows differentiable for double backprop (the input-space penalties of
        :mod:`fisherscope.defenses`).
    strategy : {"loop", "vmap"}
        K − 1 backward passes on one retained graph, or one backward pass with the
        cotangents vmapped (see :data:`JACOBIAN_STRATEGY`).
    max_rows : int, optional
        With ``"vmap"``: cotangent rows per vmapped pass (memory: that many copies of the
        activation gradients; :func:`fisherscope.fisher._factored.rows_per_pass`).

    Returns
    -------
    (Tensor, Tensor)
        ``Hᵀ J`` of shape (N, K − 1, D) and H (:func:`helmert_basis`) of shape (K, K − 1).
    """
    n, k = logits.shape
    h = helmert_basis(k, dtype=logits.dtype, device=logits.device)
    cot = h.mT.unsqueeze(1).expand(k - 1, n, k)  # row j: the cotangent H[:, j] for every sample
    parts = []
    for sl, (g,) in vjp_rows(logits, [xr], cot, strategy, create_graph=create_graph,  # type: ignore[arg-type]
                             max_rows=max_rows):
        if g is None:
            g = torch.zeros((sl.stop - sl.start, *xr.shape), dtype=xr.dtype, device=xr.device)
        parts.append(g.reshape(g.shape[0], n, -1).movedim(0, 1))  # (N, rows, D)
    return (parts[0] if len(parts) == 1 else torch.cat(parts, 1)), h


def reduced_softmax_covariance(logits: Tensor, h: Tensor) -> Tensor:
    """The softmax covariance in the Helmert basis: ``M = Hᵀ (diag p − p pᵀ) H``.

    Parameters
    ----------
    logits : Tensor
        (N, K); p = softmax(logits), computed in float64.
    h : Tensor
        The Helmert basis (K, K − 1) from :func:`helmert_basis`.

    Returns
    -------
    Tensor
        (N, K − 1, K − 1) float64, symmetric positive semi-definite, differentiable in the
        logits.
    """
    p = _probs(logits.to(torch.float64))
    hd = h.to(torch.float64)
    a = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    return hd.mT @ a @ hd


def fisher_factor(logits: Tensor, jc: Tensor, h: Tensor) -> Tensor:
    """A square-root factor of the input-space Fisher: ``B = (HᵀAH)^{1/2} HᵀJ``, ``G_x = BᵀB``.

    Parameters
    ----------
    logits : Tensor
        (N, K).
    jc : Tensor
        ``Hᵀ J`` (N, K − 1, D) from :func:`helmert_rows`.
    h : Tensor
        The Helmert basis (K, K − 1).

    Returns
    -------
    Tensor
        (N, K − 1, D) float64.
    """
    a_r = reduced_softmax_covariance(logits, h)  # (N, K-1, K-1), symmetric PSD
    w, u = torch.linalg.eigh((a_r + a_r.mT) / 2)
    root = (u * w.clamp_min(0).sqrt().unsqueeze(1)) @ u.mT
    return root @ jc.to(torch.float64)


def fisher_matrix(model: nn.Module, x: Tensor, *, bounds: Bounds = (0.0, 1.0)) -> Tensor:
    """The dense input-space Fisher matrix, for tests and tiny inputs only.

    Shapes
    ------
    x: (N, *S) -> (N, D, D), D = prod(S).

    Raises
    ------
    ValueError
        D > :data:`MAX_DENSE_DIM` (use :func:`fisher_spectrum` or
        :func:`fisher_vector_product`, which never build the D × D matrix).
    """
    _prepare(model, x, bounds)
    d = math.prod(x.shape[1:])
    if d > MAX_DENSE_DIM:
        raise ValueError(
            f"fisher_matrix builds a dense D x D matrix per sample and is meant for tiny inputs "
            f"(D <= {MAX_DENSE_DIM}); got D = {d} for input shape {tuple(x.shape[1:])}. Use "
            "fisher_spectrum(model, x) for eigenpairs or fisher_vector_product(model, x, v) for "
            "products; neither forms the matrix."
        )
    with eval_mode(model):
        b = fisher_factor(*_centered_jacobian(model, x, "fisher_matrix"))
    return (b.mT @ b).to(x.dtype)


def fisher_trace(model: nn.Module, x: Tensor, *, bounds: Bounds = (0.0, 1.0)) -> Tensor:
    """tr G_x = E_{y~p}‖∇x log p(y|x)‖², exact, per sample.

    Shapes
    ------
    x: (N, *S) -> (N,).
    """
    _prepare(model, x, bounds)
    with eval_mode(model):
        b = fisher_factor(*_centered_jacobian(model, x, "fisher_trace"))
    return b.pow(2).sum(dim=(1, 2)).to(x.dtype)


def differentiable_eigenvalues(model: nn.Module, x: Tensor, k: int | None = None, *,
                               bounds: Bounds = (0.0, 1.0)) -> Tensor:
    """Top-k eigenvalues of G_x per sample as a differentiable function of x (exact spectrum).

    The same numbers as ``fisher_spectrum(model, x, k, method="exact").eigenvalues`` (in
    float64), with the autograd graph kept so that an attacker can differentiate them with
    respect to the input (double backprop through the K − 1 vector-Jacobian products of
    :func:`helmert_rows`). The non-zero eigenvalues of G_x = Bᵀ B are those of the K × K
    matrix B Bᵀ with B = P D H (HᵀJ), D = diag(√p), P = I − √p √pᵀ (then D P D = diag p − p pᵀ
    and D·𝟙 = √p is annihilated by P, so J enters only through HᵀJ). ``eigvalsh`` of that
    matrix has a gradient that needs no eigenvalue gaps (unlike eigenvectors), and nothing
    takes a matrix square root, so the gradient stays finite at repeated eigenvalues.

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K); call it in eval mode (the caller's job, e.g. inside
        :func:`~fisherscope.eval_mode`): this function leaves module modes alone.
    x : Tensor
        Inputs (N, C, H, W) or (N, D). If ``x.requires_grad``, the result is differentiable
        in ``x``; otherwise a detached copy of ``x`` is the leaf.
    k : int, optional
        Number of eigenvalues (default K − 1); columns past K − 1 are exact zeros.

    Returns
    -------
    Tensor
        (N, k) float64, each row descending and ≥ 0; numerically zero eigenvalues (below
        (K) · 2.2e-16 · λ_max, the rule of ``fisher_spectrum``) are set to 0 (zero gradient).

    Shapes
    ------
    x: (N, *S) -> (N, k).

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).double().eval()
    >>> x = torch.rand(2, 4, dtype=torch.float64, requires_grad=True)
    >>> lam = differentiable_eigenvalues(net, x)
    >>> lam.shape, lam.requires_grad
    (torch.Size([2, 2]), True)
    """
    _prepare(model, x, bounds)
    with torch.enable_grad():
        xr = x if x.requires_grad else x.detach().requires_grad_(True)
        logits = model(xr)
        check_logits(logits)
        n, num_classes = logits.shape
        if k is None:
            k = num_classes - 1
        check_param("differentiable_eigenvalues", "k", k,
                    POSITIVE_INT.but(expected="an integer >= 1 (the number of eigenvalues)"))
        _check_exact_fits("differentiable_eigenvalues", num_classes, xr)  # one sample's rows must fit
        jc, h = helmert_rows(logits, xr, create_graph=True)  # (N, K-1, D)
        jc = jc.to(torch.float64)
        s = torch.exp(0.5 * torch.log_softmax(logits.to(torch.float64), dim=1))  # √p, (N, K)
        dh = s.unsqueeze(2) * h.to(torch.float64).unsqueeze(0)  # D H, (N, K, K-1)
        c = dh - s.unsqueeze(2) * (s.unsqueeze(1) @ dh)  # P D H
        gram = c @ (jc @ jc.mT) @ c.mT  # B Bᵀ, (N, K, K)
        w = torch.linalg.eigvalsh((gram + gram.mT) / 2).flip(-1)[:, : num_classes - 1].clamp_min(0.0)
        tiny = torch.finfo(torch.float64).tiny
        zero = w.detach() <= num_classes * torch.finfo(torch.float64).eps * w.detach()[:, :1].clamp_min(tiny)
        w = w.masked_fill(zero, 0.0)
    r = min(k, num_classes - 1)
    w = w[:, :r]
    if k > r:
        w = torch.cat([w, w.new_zeros(n, k - r)], dim=1)
    return w


def _a_operator(p: Tensor, a_matrix: Tensor | None, class_weights: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """u ↦ A u with A = diag(p) − p pᵀ, a given (N, K, K) matrix, or sampled class weights.

    ``class_weights`` w (N, K), the empirical frequencies of the drawn classes (Σ w = 1):
    Â = Σ_k w_k (e_k − p)(e_k − p)ᵀ = diag(w) − w pᵀ − p wᵀ + p pᵀ is applied matrix-free,
    O(N K) memory instead of the (N, K, K) matrix (8 MB per sample for K = 1000).

    Evaluated in float64 and returned in u's dtype. For a confident prediction
    (p_ŷ = 1 − δ) the ŷ entry p_ŷ(u_ŷ − pᵀu) is a difference of two numbers that agree
    to within δ: in float32 it loses all accuracy once δ ≲ 1e-5, and the Krylov solvers
    then converge to the wrong operator. The cost is O(N K), nothing next to the jvp.
    """
    p = p.to(torch.float64)
    if class_weights is not None:
        w = class_weights.to(torch.float64)

        def apply_sampled(u: Tensor) -> Tensor:
            u64 = u.to(torch.float64)
            pu = (p * u64).sum(dim=1, keepdim=True)
            wu = (w * u64).sum(dim=1, keepdim=True)
            return (w * u64 - w * pu - p * wu + w.sum(1, keepdim=True) * p * pu).to(u.dtype)

        return apply_sampled
    if a_matrix is not None:
        a64 = a_matrix.to(torch.float64)
        return lambda u: torch.einsum("nij,nj->ni", a64, u.to(torch.float64)).to(u.dtype)

    def apply(u: Tensor) -> Tensor:
        u64 = u.to(torch.float64)
        return (p * (u64 - (p * u64).sum(dim=1, keepdim=True))).to(u.dtype)

    return apply


class _Products:
    """Matrix-free G_x v for one batch: a jvp and a vjp per product, independent of K."""

    def __init__(self, model: nn.Module, x: Tensor, a_matrix: Tensor | None = None,
                 class_weights: Tensor | None = None):
        self.model = model
        self.x = x.detach()
        logits, self._vjp = vjp(model, self.x)
        check_logits(logits)
        self.logits = logits.detach()
        self.p = _probs(self.logits.to(torch.float64))  # float64: see _a_operator
        self._a = _a_operator(self.p, a_matrix, class_weights)
        self.count = 0

    def __call__(self, v: Tensor) -> Tensor:
        """v: (N, *S) -> G_x v: (N, *S)."""
        with warnings.catch_warnings():
            # torch's forward-mode AD scripts a helper on first use and warns that
            # torch.jit.script is deprecated; that is torch's internal business.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)
            _, jv = jvp(self.model, (self.x,), (v.to(self.x.dtype),))
        (g,) = self._vjp(self._a(jv.detach()))
        self.count += 1
        return g.detach()

    def grad_log_prob(self, classes: Tensor) -> Tensor:
        """∇x log p(c|x) for one class per sample; (N,) -> (N, *S)."""
        onehot = torch.nn.functional.one_hot(classes, self.p.shape[1]).to(self.p.dtype)
        (g,) = self._vjp((onehot - self.p).to(self.logits.dtype))
        return g.detach()


def fisher_vector_product(
    model: nn.Module, x: Tensor, v: Tensor, *, bounds: Bounds = (0.0, 1.0)
) -> Tensor:
    """G_x v per sample, with one ``jvp`` and one ``vjp`` (no Jacobian, any K).

    Shapes
    ------
    x, v: (N, *S) -> (N, *S).
    """
    _prepare(model, x, bounds)
    if not isinstance(v, Tensor) or v.shape != x.shape:
        raise ValueError(
            f"v must be a tensor shaped like x {tuple(x.shape)} (one direction per sample); "
            f"got {tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}."
        )
    with eval_mode(model):
        return _Products(model, x)(v)


# ------------------------------------------------------------------- alias method


def alias_table(p: Tensor) -> tuple[Tensor, Tensor]:
    """Walker/Vose alias tables for a batch of discrete distributions.

    Built in K vectorised steps over the batch (no per-sample loop). Draws then cost
    O(1) each: pick a column uniformly, keep it with probability ``prob`` or take its
    ``alias``.

    Shapes
    ------
    p: (N, K) -> prob (N, K) float64 in [0, 1], alias (N, K) int64.
    """
    p = p.detach().to(torch.float64)
    n, k = p.shape
    scaled = p / p.sum(dim=1, keepdim=True) * k
    prob = torch.ones(n, k, dtype=torch.float64, device=p.device)
    alias = torch.arange(k, device=p.device).expand(n, k).clone()
    active = torch.ones(n, k, dtype=torch.bool, device=p.device)
    rows = torch.arange(n, device=p.device)
    for _ in range(k - 1):
        small = active & (scaled < 1.0)
        large = active & (scaled >= 1.0)
        has_pair = small.any(1) & large.any(1)
        if not bool(has_pair.any()):
            break
        s = torch.where(small, scaled, torch.inf).argmin(1)  # any small column
        g = torch.where(large, scaled, -torch.inf).argmax(1)  # the largest column
        r = rows[has_pair]
        s, g = s[has_pair], g[has_pair]
        prob[r, s] = scaled[r, s]
        alias[r, s] = g
        scaled[r, g] = scaled[r, g] - (1.0 - scaled[r, s])
        active[r, s] = False
    # leftovers (numerical round-off) keep prob 1 and alias to themselves
    return prob, alias


def alias_sample(
    prob: Tensor, alias: Tensor, m: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """m draws per row from alias tables; (N, K) -> (N, m) int64."""
    check_param("alias_sample", "m", m, POSITIVE_INT)
    n, k = prob.shape
    u = rand((n, m), generator=generator, like=prob, dtype=torch.float64)
    col = (u * k).floor().long().clamp_(max=k - 1)
    frac = u * k - col
    keep = frac < prob.gather(1, col)
    return torch.where(keep, col, alias.gather(1, col))


def _sampled_class_weights(p: Tensor, m: int, generator: torch.Generator | None) -> Tensor:
    """Empirical frequencies w (N, K) of m classes per sample drawn by the alias method."""
    prob, alias = alias_table(p)
    draws = alias_sample(prob, alias, m, generator=generator)  # (N, m)
    k = p.shape[1]
    counts = torch.zeros(p.shape[0], k, dtype=p.dtype, device=p.device)
    counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=p.dtype))
    return counts / m


def _sampled_a_matrix(p: Tensor, m: int, generator: torch.Generator | None) -> Tensor:
    """Â = (1/m) Σ_s (e_{y_s} − p)(e_{y_s} − p)ᵀ with y_s drawn by the alias method (dense, tests)."""
    w = _sampled_class_weights(p, m, generator)
    k = p.shape[1]
    eye = torch.eye(k, dtype=p.dtype, device=p.device)
    d = eye.unsqueeze(0) - p.unsqueeze(1)  # (N, K, K): rows e_k − p
    return torch.einsum("nkc,nk,nkd->ncd", d, w, d)


# ----------------------------------------------------------------- eigen-solvers


def _orient(vecs: Tensor, g_pred: Tensor) -> Tensor:
    """Apply the sign convention: ⟨v, −g_ŷ⟩ ≥ 0, else the largest |entry| positive.

    vecs: (N, k, D); g_pred: (N, D) = ∇x log p(ŷ|x).
    """
    dots = -torch.einsum("nkd,nd->nk", vecs, g_pred)
    scale = g_pred.norm(dim=1, keepdim=True) * vecs.norm(dim=2)
    idx = vecs.abs().argmax(dim=2, keepdim=True)
    fallback = vecs.gather(2, idx).squeeze(2)
    ref = torch.where(dots.abs() > 1e-12 * scale, dots, fallback)
    sign = torch.where(ref < 0, -1.0, 1.0).to(vecs.dtype)
    return vecs * sign.unsqueeze(-1)


def _exact(model: nn.Module, x: Tensor, k: int, parts: tuple[Tensor, Tensor, Tensor] | None = None) -> FisherSpectrum:
    logits, jc, h = _centered_jacobian(model, x) if parts is None else parts
    n, r_full, d = jc.shape  # r_full = K - 1
    b = fisher_factor(logits, jc, h)  # (N, K-1, D) float64, G = bᵀb
    gram = b @ b.mT  # (N, K-1, K-1)
    w, u = torch.linalg.eigh(gram)
    w, u = w.flip(-1), u.flip(-1)  # descending
    r = min(k, r_full)
    w, u = w[:, :r].clamp_min(0.0), u[:, :, :r]
    # numerically zero eigenvalues -> exact zeros, zero eigenvectors
    tiny = torch.finfo(torch.float64).tiny
    zero = w <= (r_full + 1) * torch.finfo(torch.float64).eps * w[:, :1].clamp_min(tiny)
    sigma = w.sqrt().masked_fill(zero, 1.0)
    vecs = torch.einsum("nkr,nkd->nrd", u, b) / sigma.unsqueeze(-1)
    vecs = vecs.masked_fill(zero.unsqueeze(-1), 0.0)
    w = w.masked_fill(zero, 0.0)
    # g_ŷ = Jᵀ(e_ŷ − p) = (HᵀJ)ᵀ Hᵀ(e_ŷ − p)
    p = _probs(logits.to(torch.float64))
    c = torch.nn.functional.one_hot(p.argmax(1), p.shape[1]).to(torch.float64) - p
    g_pred = torch.einsum("nk,nkd->nd", c @ h.to(torch.float64), jc.to(torch.float64))
    vecs = _orient(vecs, g_pred)
    return FisherSpectrum(
        eigenvalues=w.to(x.dtype),
        eigenvectors=vecs.to(x.dtype).reshape(n, r, *x.shape[1:]),
        method="exact",
        converged=torch.ones(n, dtype=torch.bool, device=x.device),
    )


def _random_start(x: Tensor, generator: torch.Generator | None, cols: int = 1) -> Tensor:
    n, d = x.shape[0], math.prod(x.shape[1:])
    v = randn((n, cols, d), generator=generator, like=x)
    return v / v.norm(dim=2, keepdim=True)


def _warn_unconverged(converged: Tensor, method: str, max_iter: int, tol: float) -> None:
    bad = torch.nonzero(~converged).flatten().tolist()
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        warnings.warn(
            f"{method} did not reach tol={tol:g} within max_iter={max_iter} for {len(bad)} of "
            f"{converged.numel()} samples: [{shown}]; their eigenpairs are the last iterates. "
            "Raise max_iter or loosen tol.",
            ConvergenceWarning,
            stacklevel=4,
        )


def _lanczos(prod: _Products, x: Tensor, k: int, tol: float, max_iter: int,
             start: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """Batched Lanczos with full reorthogonalisation; returns (θ (N,k), V (N,k,D), conv, steps).

    ``start``: unit start vectors (N, 1, D) from :func:`_random_start`.
    """
    n, d = x.shape[0], math.prod(x.shape[1:])
    m = min(max_iter, d)
    q = start[:, 0]  # (N, D)
    basis = torch.zeros(n, m, d, dtype=x.dtype, device=x.device)
    alpha = torch.zeros(n, m, dtype=torch.float64, device=x.device)
    beta = torch.zeros(n, m, dtype=torch.float64, device=x.device)
    done = torch.zeros(n, dtype=torch.bool, device=x.device)  # invariant subspace found
    converged = torch.zeros(n, dtype=torch.bool, device=x.device)
    theta = torch.zeros(n, k, dtype=torch.float64, device=x.device)
    s_top = None
    steps = 0
    for j in range(m):
        steps = j + 1
        basis[:, j] = q
        w = prod(q.reshape(x.shape)).reshape(n, d)
        a = (w * q).sum(1)
        w = w - a.unsqueeze(1) * q
        if j > 0:
            w = w - beta[:, j - 1].to(w.dtype).unsqueeze(1) * basis[:, j - 1]
        for _ in range(2):  # full reorthogonalisation, twice is enough
            coef = torch.einsum("nmd,nd->nm", basis[:, : j + 1], w)
            w = w - torch.einsum("nm,nmd->nd", coef, basis[:, : j + 1])
        bnorm = w.norm(dim=1)
        alpha[:, j] = a.to(torch.float64)
        # breakdown: the Krylov space is invariant (G_x has rank <= K - 1)
        scale = alpha[:, : j + 1].abs().amax(1).clamp_min(torch.finfo(torch.float64).tiny)
        breakdown = (bnorm.to(torch.float64) <= 1e3 * torch.finfo(x.dtype).eps * scale) | done
        beta[:, j] = torch.where(breakdown, torch.zeros_like(scale), bnorm.to(torch.float64))
        done = breakdown
        q = torch.where(breakdown.unsqueeze(1), torch.zeros_like(w), w / bnorm.clamp_min(1e-300).unsqueeze(1))
        if j + 1 >= min(k, m) or j + 1 == m:
            t = torch.diag_embed(alpha[:, : j + 1]) + torch.diag_embed(beta[:, :j], 1) + torch.diag_embed(beta[:, :j], -1)
            ev, evec = torch.linalg.eigh(t)
            ev, evec = ev.flip(-1), evec.flip(-1)
            kk = min(k, j + 1)
            resid = beta[:, j].unsqueeze(1) * evec[:, -1, :kk].abs()
            top = ev[:, :1].clamp_min(torch.finfo(torch.float64).tiny)
            ok = (resid <= tol * top).all(1) | done
            if j + 1 >= k:
                converged = ok
            theta = torch.zeros(n, k, dtype=torch.float64, device=x.device)
            theta[:, :kk] = ev[:, :kk]
            s_top = evec[:, :, :kk]
            if bool(converged.all()):
                break
    assert s_top is not None
    used = s_top.shape[1]
    vecs = torch.zeros(n, k, d, dtype=torch.float64, device=x.device)
    vecs[:, : s_top.shape[2]] = torch.einsum("nmr,nmd->nrd", s_top, basis[:, :used].to(torch.float64))
    return theta.clamp_min(0.0), vecs, converged, steps


def _power(prod: _Products, x: Tensor, k: int, tol: float, max_iter: int,
           start: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
    """Batched block power (subspace) iteration with Rayleigh–Ritz; k = 1 is plain power iteration.

    ``start``: unit start vectors (N, k, D) from :func:`_random_start`.
    """
    n, d = x.shape[0], math.prod(x.shape[1:])
    v = start.to(torch.float64)  # (N, k, D)
    v = torch.linalg.qr(v.mT).Q.mT
    converged = torch.zeros(n, dtype=torch.bool, device=x.device)
    theta = torch.zeros(n, k, dtype=torch.float64, device=x.device)
    steps = 0
    for it in range(max_iter):
        steps = it + 1
        gv = torch.stack([prod(v[:, c].to(x.dtype).reshape(x.shape)).reshape(n, d) for c in range(k)], 1)
        gv = gv.to(torch.float64)
        h = v @ gv.mT  # (N, k, k) Rayleigh quotient matrix
        h = (h + h.mT) / 2
        ev, evec = torch.linalg.eigh(h)
        ev, evec = ev.flip(-1), evec.flip(-1)
        ritz = evec.mT @ v  # (N, k, D)
        g_ritz = evec.mT @ gv
        resid = (g_ritz - ev.unsqueeze(-1) * ritz).norm(dim=2)
        top = ev[:, :1].abs().clamp_min(torch.finfo(torch.float64).tiny)
        converged = (resid <= tol * top).all(1)
        theta, v = ev, ritz
        if bool(converged.all()):
            break
        v = torch.linalg.qr(g_ritz.mT).Q.mT
    return theta.clamp_min(0.0), v, converged, steps


def _krylov_chunk(model: nn.Module, x: Tensor, k: int, max_iter: int, method: str) -> int:
    """Samples per chunk of the iterative methods under :data:`KRYLOV_CHUNK_BYTES` (≥ 1)."""
    if KRYLOV_CHUNK_BYTES is None:
        return max(1, x.shape[0])
    act = _costs(model, x)[1]
    per = krylov_bytes(math.prod(x.shape[1:]), k, max_iter, act, method, x.dtype)
    return max(1, min(x.shape[0], KRYLOV_CHUNK_BYTES // per))


def _iterative(model: nn.Module, x: Tensor, r: int, method: str, class_samples: int | None, tol: float,
               max_iter: int, generator: torch.Generator | None) -> FisherSpectrum:
    """Lanczos / block power for the top r pairs, in chunks of :data:`KRYLOV_CHUNK_BYTES`.

    The random draws (alias classes, then start vectors) are made for the whole batch in
    that order before chunking, so the result does not depend on the chunk size.
    """
    n = x.shape[0]
    x = x.detach()
    chunk = _krylov_chunk(model, x, r, max_iter, method)
    slices = list(even_chunks(n, chunk))
    weights = None
    name = method
    if class_samples is not None:
        with torch.no_grad():
            z = torch.cat([model(x[sl]) for sl in slices])
        weights = _sampled_class_weights(_probs(z.detach().to(torch.float64)), class_samples, generator)
        name = f"{method}+alias"
    start = _random_start(x, generator, cols=1 if method == "lanczos" else r)
    solver = _lanczos if method == "lanczos" else _power
    vals, vecs_all, convs = [], [], []
    steps = 0
    for sl in slices:
        xs = x[sl]
        prod = _Products(model, xs, class_weights=None if weights is None else weights[sl])
        theta, vecs, conv, st = solver(prod, xs, r, tol, max_iter, start[sl])
        steps = max(steps, st)
        norms = vecs.norm(dim=2, keepdim=True)
        zero = (theta <= 0) | (norms.squeeze(-1) == 0)
        vecs = torch.where(zero.unsqueeze(-1), torch.zeros_like(vecs), vecs / norms.clamp_min(1e-300))
        g_pred = prod.grad_log_prob(prod.p.argmax(1)).reshape(xs.shape[0], -1).to(torch.float64)
        vals.append(theta.masked_fill(zero, 0.0).to(x.dtype))
        vecs_all.append(_orient(vecs, g_pred).to(x.dtype).reshape(xs.shape[0], r, *x.shape[1:]))
        convs.append(conv)
        del prod, vecs, theta
    conv_all = torch.cat(convs)
    _warn_unconverged(conv_all, name, max_iter, tol)
    return FisherSpectrum(eigenvalues=torch.cat(vals), eigenvectors=torch.cat(vecs_all), method=name,
                          converged=conv_all, iterations=steps)


def fisher_spectrum(
    model: nn.Module,
    x: Tensor,
    k: int | None = None,
    method: Method = "exact",
    *,
    class_samples: int | None = None,
    tol: float = 1e-6,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
    bounds: Bounds = (0.0, 1.0),
) -> FisherSpectrum:
    """Top-k eigenpairs of the input-space Fisher matrix G_x, per sample, batched.

    Parameters
    ----------
    model : nn.Module
        Maps x to logits (N, K); run in eval mode (every module's mode is restored).
    x : Tensor
        Inputs (N, C, H, W) or (N, D).
    k : int, optional
        Number of eigenpairs; default K − 1 (all non-zero ones). For k > K − 1 the rest
        are explicit zeros (G_x has rank ≤ K − 1) and a warning says so once.
    method : {"exact", "lanczos", "power"}
        ``exact``: K batched VJPs + a K × K eigenproblem, all K − 1 eigenpairs exactly.
        ``lanczos`` / ``power``: matrix-free (one jvp + one vjp per product), for large K.
    class_samples : int, optional
        With ``lanczos`` / ``power``: replace the expectation over y by m classes drawn
        once per sample from p(y|x) with the alias method (Zhao §3.2; they use ≈ K/5).
    tol : float
        Convergence: residual ‖G v − θ v‖ ≤ tol · θ_max for each of the k pairs; in (0, 1)
        (tol ≥ 1 would accept the first iterate).
    max_iter : int
        Matrix-vector products per sample at most (Lanczos: the Krylov dimension).
    generator : torch.Generator, optional
        Random start vectors and class draws.

    Returns
    -------
    FisherSpectrum

    Raises
    ------
    ValueError
        ``method="exact"`` when the K − 1 Jacobian rows of one sample exceed
        :data:`EXACT_JACOBIAN_BYTES` (e.g. K = 1000 at 224 × 224): use ``"lanczos"``.

    Notes
    -----
    Memory is bounded by byte budgets (module docstring): the exact method chunks samples
    under :data:`EXACT_JACOBIAN_BYTES`, the iterative ones under
    :data:`KRYLOV_CHUNK_BYTES` (at least one sample per chunk, results independent of the
    chunking: the random draws are made for the whole batch first).

    Shapes
    ------
    x: (N, *S) -> eigenvalues (N, k), eigenvectors (N, k, *S).

    Warns
    -----
    ConvergenceWarning
        Samples whose eigenpairs did not reach ``tol`` (named by index).
    """
    _prepare(model, x, bounds)
    owner = "fisher_spectrum"
    check_params(owner, {"method": method, "class_samples": class_samples, "tol": tol, "max_iter": max_iter}, {
        "method": one_of("exact", "lanczos", "power"),
        "class_samples": POSITIVE_INT.or_none("the exact expectation over classes"),
        # tol >= 1 accepts the first iterate: residual <= tol * theta_max always holds then
        "tol": real(gt=0, lt=1).but(
            expected="a relative residual in (0, 1)",
            fix="Use e.g. 1e-6 (the default); tol >= 1 or inf would accept the first iterate as converged."),
        "max_iter": POSITIVE_INT,
    })
    if class_samples is not None:
        if method == "exact":
            raise ValueError(
                "class_samples approximates the expectation over classes and applies to "
                "method='lanczos' or 'power'; method='exact' sums over all classes. Drop "
                "class_samples or choose an iterative method."
            )
    if k is not None:
        check_param(owner, "k", k, POSITIVE_INT.but(expected="an integer >= 1 (the number of eigenpairs)"))
    with eval_mode(model), torch.enable_grad():
        parts = None
        if method == "exact":  # K comes with the Jacobian rows
            parts = _centered_jacobian(model, x, owner)
            num_classes = parts[0].shape[1]
        else:
            num_classes = _num_classes(model, x)
        if k is None:
            k = num_classes - 1
        r = min(k, num_classes - 1)
        if k > num_classes - 1:
            warnings.warn(
                f"G_x has rank at most K - 1 = {num_classes - 1} for K = {num_classes} classes; "
                f"the {k - r} eigenvalues past that are returned as exact zeros.",
                UserWarning,
                stacklevel=2,
            )
        if method == "exact":
            spec = _exact(model, x, r, parts)
        else:
            spec = _iterative(model, x, r, method, class_samples, tol, max_iter, generator)
    if k > r:
        n = x.shape[0]
        pad_vals = torch.zeros(n, k - r, dtype=spec.eigenvalues.dtype, device=x.device)
        pad_vecs = torch.zeros(n, k - r, *x.shape[1:], dtype=spec.eigenvectors.dtype, device=x.device)
        spec = FisherSpectrum(
            torch.cat([spec.eigenvalues, pad_vals], 1),
            torch.cat([spec.eigenvectors, pad_vecs], 1),
            spec.method, spec.converged, spec.iterations,
        )
    return spec
