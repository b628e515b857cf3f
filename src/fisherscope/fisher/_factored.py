"""Per-sample parameter gradients in factored form, batched over samples (no ``vmap`` over them).

For a layer whose output is linear in its parameters, the gradient of any scalar of one
sample with respect to the layer's weight is a product of two small per-sample tensors:
the layer's (unfolded) input and the gradient at its output. With, per sample and group,

    U ∈ R^{T × D_in}   the input rows (``nn.Linear``: the T rows of a (…, in) input;
                       convolutions: the T output positions of the unfolded input,
                       D_in = C_in / groups · k₁ · k₂),
    D ∈ R^{T × C_out}  the output gradient at the same T rows,

the weight gradient is G = Dᵀ U (C_out × D_in) and the bias gradient Σ_t D_t, so

    ‖G‖² = Σ_{t,t'} (D_t · D_t')(U_t · U_t')          ("ghost norm": two T × T Gram matrices)
         = ‖Dᵀ U‖²                                     (materialised, C_out · D_in entries)

cost T²(D_in + C·C_out) and C·T·C_out·D_in multiply-adds per sample for C output
gradients (the U Gram is shared by all of them). Each layer takes the cheaper of the two
(:data:`CONV_NORM`): ``nn.Linear`` on (N, in) inputs (T = 1) is the outer product
‖δ‖²‖a‖²; the first convolutions of an image net, with few input channels and many
positions, are cheaper materialised; deep convolutions on small maps are cheaper as
ghost norms. Products with a direction v (the forward-mode part J v) use the same two
forms: the output shift of a direction G at input rows U_a is U_a Gᵀ, or (U_a U₀ᵀ) D₀
when G = D₀ᵀ U₀ is kept factored.

``nn.BatchNorm*`` in eval mode (running statistics, affine): the output γ x̂ + β is linear
in (γ, β) with x̂ fixed by the running statistics, so the per-sample gradients are
Σ_positions δ x̂ and Σ_positions δ.

Any other module that owns trainable parameters directly (and no module below it does)
takes the generic path *locally*: its per-sample parameter gradients come from
``torch.func.vmap`` over samples of the module's own ``vjp`` at its recorded input, which
is exact and costs a vmapped pass through that module only. Models this does not cover
(a parameter used outside its module, tied or shared parameters, a module called more
than once, a module with several inputs, parameters on a module whose children also have
parameters) are handled by :mod:`fisherscope.fisher.parameter_space`'s whole-model
``vmap`` path.

Everything runs on the whole chunk of samples: one forward (a zero "probe" added to each
layer's output, so that the gradient there is the gradient with respect to the probe),
then one batched backward per output cotangent, which computes input gradients only (no
weight gradient is ever formed for the batch), then the per-layer factored quantities.
Several cotangents are either a loop of backward passes on one retained graph or one
backward pass with the cotangents vmapped (``is_grads_batched``), see :func:`vjp_rows`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import forward_ad as fwAD
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode

from ._func import vjp

__all__ = [
    "CONV_NORM",
    "Plan",
    "VMAP_ROWS_BYTES",
    "choose_strategy",
    "rows_per_pass",
    "vjp_rows",
]

#: How a convolution's (or a multi-row linear layer's) per-sample weight-gradient norms
#: and direction products are formed: ``"auto"`` (per layer, the form with fewer
#: multiply-adds, see the module docstring), ``"ghost"`` or ``"materialize"``.
CONV_NORM: Literal["auto", "ghost", "materialize"] = "auto"

Strategy = Literal["loop", "vmap"]


# ------------------------------------------------------------------ several VJPs on one graph


def choose_strategy(rows: int, n: int, flops_per_sample: float, device: torch.device,
                    setting: str, *, max_rows: int | None = None) -> Strategy:
    """``"loop"`` or ``"vmap"`` for ``rows`` cotangents on a graph of ``n`` samples.

    ``setting`` is ``"loop"``, ``"vmap"`` or ``"auto"``. The automatic rule, measured with
    ``benchmarks/kernels.py --parts tune`` (docs/BENCHMARKS.md): on CUDA, one vmapped
    backward pass (fewer, larger kernels). On CPU, vmapping the cotangents folds them
    into the batch, which pays while the batch is small — up to
    :data:`VMAP_MAX_ROWS` sample-rows (``n · rows``; one to four samples of ten classes) —
    and for tiny models, whose backward passes are all call overhead (under
    :data:`VMAP_MAX_WORK` multiply-adds per pass, ``n · flops_per_sample``). Past that the
    loop of plain backward passes on the retained graph wins (vmap's batching rules move
    and copy every activation gradient): for ``mnist_cnn`` and ``vgg_small`` alike from
    about 20 samples on, for the input-space rows and the parameter-space trace alike
    (process CPU time; wall time on the shared machine was too noisy to tell). ``max_rows``
    replaces :data:`VMAP_MAX_ROWS`. One row: always the loop.
    """
    if setting in ("loop", "vmap"):
        return setting  # type: ignore[return-value]
    if rows <= 1:
        return "loop"
    if device.type == "cuda":
        return "vmap"
    limit = VMAP_MAX_ROWS if max_rows is None else max_rows
    return "vmap" if n * rows <= limit or n * flops_per_sample <= VMAP_MAX_WORK else "loop"


#: CPU: vmapped cotangents while the batch has at most this many sample-rows (n · rows).
VMAP_MAX_ROWS = 64

#: CPU: vmapped cotangents for passes of at most this many multiply-adds (tiny models).
VMAP_MAX_WORK = 2e6


#: Memory budget (bytes) of one vmapped backward pass: it holds every activation gradient
#: once per cotangent row, so :func:`vjp_rows` splits C rows into passes of at most
#: ``VMAP_ROWS_BYTES // row_bytes`` rows (``row_bytes``: the activation gradients of one
#: row for the whole batch, estimated by the caller). With K = 1000 classes on an
#: ImageNet-size network (about 0.1 GB of activations per sample) the 999 rows of the
#: exact methods would otherwise be some 100 GB in one pass. ``None``: no cap.
VMAP_ROWS_BYTES: int | None = 2**30


def rows_per_pass(row_bytes: float) -> int | None:
    """Cotangent rows per vmapped pass under :data:`VMAP_ROWS_BYTES` (at least one)."""
    if VMAP_ROWS_BYTES is None:
        return None
    return max(1, int(VMAP_ROWS_BYTES // max(row_bytes, 1)))


def vjp_rows(outputs: Tensor, inputs: list[Tensor], cotangents: Tensor, strategy: Strategy, *,
             create_graph: bool = False, retain_last: bool = False,
             max_rows: int | None = None) -> Iterator[tuple[slice, list[Tensor | None]]]:
    """The vector-Jacobian products of ``outputs`` for ``C`` cotangents, one graph.

    ``cotangents`` has shape (C, *outputs.shape). Yields ``(rows, grads)``: ``grads[i]`` is
    the gradient with respect to ``inputs[i]`` for the cotangents ``rows``, with a leading
    dimension of length ``len(rows)`` (``None`` where an input does not affect the
    outputs). ``"loop"``: C backward passes on one retained graph, one row at a time (one
    row of gradients alive at a time). ``"vmap"``: backward passes with the cotangents
    vmapped (``is_grads_batched``), ``max_rows`` rows per pass (all C when ``None``; see
    :func:`rows_per_pass`), so a pass never holds more than ``max_rows`` copies of the
    activation gradients.
    """
    c = cotangents.shape[0]
    if strategy == "vmap" and c > 1:
        step = c if max_rows is None else max(1, min(c, max_rows))
        for start in range(0, c, step):
            stop = min(c, start + step)
            last = stop == c
            sub = cotangents[start:stop]
            if stop - start == 1:
                grads = torch.autograd.grad(outputs, inputs, sub[0], retain_graph=create_graph or retain_last or not last,
                                            create_graph=create_graph, allow_unused=True)
                yield slice(start, stop), [None if g is None else g.unsqueeze(0) for g in grads]
                continue
            grads = torch.autograd.grad(outputs, inputs, sub, retain_graph=create_graph or retain_last or not last,
                                        create_graph=create_graph, allow_unused=True, is_grads_batched=True)
            yield slice(start, stop), list(grads)
        return
    for j in range(c):
        grads = torch.autograd.grad(outputs, inputs, cotangents[j], retain_graph=create_graph or retain_last or j < c - 1,
                                    create_graph=create_graph, allow_unused=True)
        yield slice(j, j + 1), [None if g is None else g.unsqueeze(0) for g in grads]


# ------------------------------------------------------------------------------- units


def _primal(t: Tensor) -> Tensor:
    """``t`` without its forward-mode tangent (the reverse-mode graph is kept)."""
    return fwAD.unpack_dual(t).primal


class _Unit:
    """A module that owns trainable parameters, with per-sample gradient maths for it.

    ``roles`` maps the module's own parameter names (``"weight"``) to the model's names
    (``"features.0.weight"``), trainable ones only.
    """

    kind = "unit"

    def __init__(self, name: str, module: nn.Module, roles: dict[str, str], in_shape: tuple[int, ...],
                 out_shape: tuple[int, ...]):
        self.name = name
        self.module = module
        self.roles = roles
        self.in_shape = in_shape  # per sample
        self.out_shape = out_shape

    def prepare(self, rows: int, tangent: bool) -> None:
        """Choose the cheapest forms for ``rows`` output gradients (and a direction product)."""

    def state(self, a: Tensor) -> Any:
        """What the gradient maths needs from the layer's input (N, *in)."""
        return a

    def sqnorm(self, st: Any, d: Tensor) -> Tensor:
        """Per-sample squared gradient norms, d (C, N, *out) -> (C, N)."""
        raise NotImplementedError

    def grads(self, st: Any, d: Tensor) -> dict[str, Tensor]:
        """Materialised per-sample gradients, d (N, *out) -> {model name: (N, *shape)}."""
        raise NotImplementedError

    def direction(self, st: Any, d: Tensor) -> Any:
        """The per-sample gradient for the output gradient d (N, *out), in the form :meth:`tangent` takes."""
        return self.grads(st, d)

    def tangent(self, st: Any, dirn: Any, a: Tensor | None) -> Tensor:
        """The layer's output change along the direction, at input a (None: the state's input)."""
        raise NotImplementedError

    def elements_per_sample(self, rows: int) -> int:
        """Workspace estimate (tensor elements) per sample for ``rows`` output gradients."""
        return math.prod(self.in_shape) + (rows + 2) * math.prod(self.out_shape)


class _MatUnit(_Unit):
    """``nn.Linear`` (any number of rows per sample) and ``nn.Conv1d`` / ``nn.Conv2d``."""

    kind = "matrix"

    def __init__(self, name: str, module: nn.Module, roles: dict[str, str], in_shape: tuple[int, ...],
                 out_shape: tuple[int, ...]):
        super().__init__(name, module, roles, in_shape, out_shape)
        m: Any = module  # duck-typed over nn.Linear / nn.Conv1d / nn.Conv2d
        self.conv = isinstance(m, nn.Conv1d | nn.Conv2d)
        if self.conv:
            self.groups = m.groups
            self.d_in = m.in_channels // m.groups * math.prod(m.kernel_size)
            self.c_out = m.out_channels
            self.t = math.prod(out_shape[1:])
        else:
            self.groups = 1
            self.d_in = m.in_features
            self.c_out = m.out_features
            self.t = math.prod(in_shape[:-1])  # rows per sample (1 for (N, in) inputs)
        self.mode = "materialize"
        self.has_w = "weight" in roles
        self.has_b = "bias" in roles and getattr(m, "bias", None) is not None

    # ------------------------------------------------------------------ layouts
    def rows(self, a: Tensor) -> Tensor:
        """Input rows U: (N, g, T, D_in) (a view where possible)."""
        m: Any = self.module
        n = a.shape[0]
        if not self.conv:
            return a.reshape(n, 1, self.t, self.d_in)
        if isinstance(m, nn.Conv1d):
            a = a.unsqueeze(2)
            kernel, dilation, stride = (1, *m.kernel_size), (1, *m.dilation), (1, *m.stride)
            padding: Any = m.padding if isinstance(m.padding, str) else (0, *m.padding)
            pad_tw = [*m._reversed_padding_repeated_twice, 0, 0]
        else:
            kernel, dilation, stride = m.kernel_size, m.dilation, m.stride
            padding = m.padding
            pad_tw = list(m._reversed_padding_repeated_twice)
        if isinstance(padding, str) or m.padding_mode != "zeros":
            mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
            a = F.pad(a, pad_tw, mode=mode)
            padding = 0
        u = F.unfold(a, kernel, dilation=dilation, padding=padding, stride=stride)  # (N, C_in k, T)
        g = self.groups
        return u.reshape(n, g, self.d_in, -1).transpose(-1, -2)

    def out_rows(self, d: Tensor) -> Tensor:
        """Output gradient rows D: (..., N, *out) -> (..., N, g, T, C_out / g)."""
        lead = d.shape[: d.ndim - 1 - len(self.out_shape)]
        n = d.shape[len(lead)]
        g = self.groups
        if not self.conv:
            return d.reshape(*lead, n, 1, self.t, self.c_out)
        return d.reshape(*lead, n, g, self.c_out // g, self.t).transpose(-1, -2)

    def from_rows(self, y: Tensor) -> Tensor:
        """(N, g, T, C_out / g) -> (N, *out)."""
        n = y.shape[0]
        if not self.conv:
            return y.reshape(n, *self.out_shape)
        return y.transpose(-1, -2).reshape(n, *self.out_shape)

    # -------------------------------------------------------------------- costs
    def prepare(self, rows: int, tangent: bool) -> None:
        t, di, co, g = self.t, self.d_in, self.c_out, self.groups
        mat = rows * t * co * di / g + (2 * t * co * di / g if tangent else 0)
        ghost = t * t * (di + rows * co + (co if tangent else 0))
        self.mode = CONV_NORM if CONV_NORM != "auto" else ("ghost" if ghost < mat else "materialize")
        if not self.has_w:
            self.mode = "materialize"  # only the bias: nothing to form

    def elements_per_sample(self, rows: int) -> int:
        t, di, co, g = self.t, self.d_in, self.c_out, self.groups
        base = math.prod(self.in_shape) + (rows + 2) * math.prod(self.out_shape) + g * t * di
        if self.mode == "ghost":
            return base + g * t * t + rows * t * co
        return base + rows * co * di

    # ------------------------------------------------------------------- maths
    def state(self, a: Tensor) -> dict[str, Tensor]:
        st: dict[str, Tensor] = {}
        if self.has_w:
            u = self.rows(a)
            st["u"] = u
            if self.mode == "ghost":
                st["gram"] = u @ u.mT  # (N, g, T, T)
        return st

    def sqnorm(self, st: dict[str, Tensor], d: Tensor) -> Tensor:
        dr = self.out_rows(d)  # (C, N, g, T, C_out/g)
        c, n, g, t, co = dr.shape
        total = torch.zeros(c, n, dtype=d.dtype, device=d.device)
        if self.has_w:
            # the C rows share the sample's U: fold them into the output channels, one
            # batched product per (sample, group) instead of broadcasting U over the rows
            dc = dr[0] if c == 1 else dr.permute(1, 2, 3, 0, 4).reshape(n, g, t, c * co)  # (N, g, T, C·C_out/g)
            if self.mode == "ghost":
                # Σ_{t,t'} (D_t·D_t')(U_t·U_t') = <D, (U Uᵀ) D>: no (T × T) temporary per row
                prod = (dc * (st["gram"] @ dc)).reshape(n, g, t, c, co).sum((1, 2, 4))  # (N, C)
            else:
                gw = dc.mT @ st["u"]  # (N, g, C·C_out/g, D_in)
                prod = gw.reshape(n, g, c, co, -1).square().sum((1, 3, 4))  # (N, C)
            total = total + prod.mT
        if self.has_b:
            total = total + torch.linalg.vector_norm(dr.sum(-2).flatten(2), dim=-1).square()
        return total

    def grads(self, st: dict[str, Tensor], d: Tensor) -> dict[str, Tensor]:
        dr = self.out_rows(d)  # (N, g, T, C_out/g)
        n = dr.shape[0]
        out = {}
        w: Tensor = self.module.weight  # type: ignore[assignment]  # nn.Module attributes are typed Tensor | Module
        if self.has_w:
            out[self.roles["weight"]] = (dr.mT @ st["u"]).reshape(n, *w.shape)
        if self.has_b:
            out[self.roles["bias"]] = dr.sum(-2).reshape(n, self.c_out)
        return out

    def direction(self, st: dict[str, Tensor], d: Tensor) -> dict[str, Tensor]:
        dr = self.out_rows(d)
        dirn: dict[str, Tensor] = {}
        if self.has_w:
            if self.mode == "ghost":
                dirn["d0"], dirn["u0"] = dr, st["u"]
                dirn["gram0"] = st["gram"]
            else:
                dirn["g"] = dr.mT @ st["u"]  # (N, g, C_out/g, D_in)
        if self.has_b:
            dirn["b"] = dr.sum(-2)  # (N, g, C_out/g)
        return dirn

    def tangent(self, st: Any, dirn: dict[str, Tensor], a: Tensor | None) -> Tensor:
        y: Tensor | None = None
        if self.has_w:
            if self.mode == "ghost":
                cross = dirn["gram0"] if a is None else self.rows(a) @ dirn["u0"].mT  # (N, g, T, T)
                y = cross @ dirn["d0"]
            else:
                u = st["u"] if a is None else self.rows(a)
                y = u @ dirn["g"].mT  # (N, g, T, C_out/g)
        if self.has_b:
            b = dirn["b"].unsqueeze(-2)
            y = b.expand(b.shape[0], b.shape[1], self.t, b.shape[-1]) if y is None else y + b
        assert y is not None
        return self.from_rows(y)


class _BNUnit(_Unit):
    """``nn.BatchNorm1d/2d/3d`` in eval mode with running statistics: y = γ x̂ + β."""

    kind = "batchnorm"

    def _xhat(self, a: Tensor) -> Tensor:
        m: Any = self.module  # a BatchNorm in eval mode
        shape = (1, -1) + (1,) * (a.ndim - 2)
        return (a - m.running_mean.reshape(shape)) * torch.rsqrt(m.running_var.reshape(shape) + m.eps)

    def state(self, a: Tensor) -> Tensor:
        return self._xhat(a)

    def _parts(self, xhat: Tensor, d: Tensor) -> dict[str, Tensor]:
        nd = xhat.ndim
        dims = tuple(range(d.ndim - nd + 2, d.ndim))
        out = {}
        if "weight" in self.roles:
            out["weight"] = (d * xhat).sum(dims) if dims else d * xhat
        if "bias" in self.roles:
            out["bias"] = d.sum(dims) if dims else d
        return out

    def sqnorm(self, st: Tensor, d: Tensor) -> Tensor:
        parts = self._parts(st, d)
        return sum(t.square().sum(-1) for t in parts.values())  # type: ignore[return-value]

    def grads(self, st: Tensor, d: Tensor) -> dict[str, Tensor]:
        return {self.roles[k]: v for k, v in self._parts(st, d).items()}

    def direction(self, st: Tensor, d: Tensor) -> dict[str, Tensor]:
        return self._parts(st, d)

    def tangent(self, st: Tensor, dirn: dict[str, Tensor], a: Tensor | None) -> Tensor:
        xhat = st if a is None else self._xhat(a)
        shape = (xhat.shape[0], -1) + (1,) * (xhat.ndim - 2)
        y = torch.zeros_like(xhat)
        if "weight" in dirn:
            y = y + xhat * dirn["weight"].reshape(shape)
        if "bias" in dirn:
            y = y + dirn["bias"].reshape(shape)
        return y


class _GenericUnit(_Unit):
    """Any other module owning trainable parameters: ``vmap`` over samples of its own vjp / jvp."""

    kind = "generic"

    def __init__(self, name: str, module: nn.Module, roles: dict[str, str], in_shape: tuple[int, ...],
                 out_shape: tuple[int, ...], plan: Plan):
        super().__init__(name, module, roles, in_shape, out_shape)
        self.plan = plan

    def _local(self, ps: Mapping[str, Tensor], a1: Tensor) -> Tensor:
        with self.plan.local():
            return functional_call(self.module, dict(ps), (a1.unsqueeze(0),)).squeeze(0)

    def _params(self) -> dict[str, Tensor]:
        own = dict(self.module.named_parameters(recurse=False))
        return {k: own[k].detach() for k in self.roles}

    def sqnorm(self, st: Tensor, d: Tensor) -> Tensor:
        params = self._params()

        def one(a1: Tensor, d1: Tensor) -> Tensor:
            _, fn = vjp(lambda ps: self._local(ps, a1), params)
            (g,) = vmap(fn)(d1)
            return sum(torch.linalg.vector_norm(t.flatten(1), dim=-1).square() for t in g.values())

        return vmap(one, in_dims=(0, 1))(st, d).mT  # (C, N)

    def direction(self, st: Tensor, d: Tensor) -> dict[str, Tensor]:
        """{own parameter name: (N, *shape)}."""
        params = self._params()

        def one(a1: Tensor, d1: Tensor) -> dict[str, Tensor]:
            _, fn = vjp(lambda ps: self._local(ps, a1), params)
            return fn(d1)[0]

        return vmap(one)(st, d)

    def grads(self, st: Tensor, d: Tensor) -> dict[str, Tensor]:
        return {self.roles[k]: v for k, v in self.direction(st, d).items()}

    def tangent(self, st: Tensor, dirn: dict[str, Tensor], a: Tensor | None) -> Tensor:
        params = self._params()
        a = st if a is None else a

        # J v as the vjp of a vjp (linear in the cotangent u): a forward-mode jvp here would
        # nest inside the forward-mode pass of Plan.jv, which torch does not support
        def one(a1: Tensor, v1: dict[str, Tensor]) -> Tensor:
            out, fn = vjp(lambda ps: self._local(ps, a1), params)
            _, fn2 = vjp(lambda u: fn(u)[0], torch.zeros_like(out))
            return fn2(v1)[0]

        return vmap(one)(a, dirn)

    def shifted(self, dirn: dict[str, Tensor], a: Tensor, step: Tensor) -> Tensor:
        """The module's output at θ + step_n · v_n per sample (finite differences)."""
        params = self._params()

        def one(a1: Tensor, v1: dict[str, Tensor], s1: Tensor) -> Tensor:
            return self._local({k: p + s1 * v1[k] for k, p in params.items()}, a1)

        return vmap(one)(a, dirn, step)


_FACTORED_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# ------------------------------------------------------------------------------ census


class Census(TorchFunctionMode):
    """During one forward, record how every parameter-owning module is called and used.

    A module qualifies as a unit when it is called exactly once, with one tensor input
    of batch size N and a tensor output of batch size N, and each of its trainable
    parameters is used only while that module runs (no tied, shared or functional reuse
    elsewhere). :meth:`plan` builds the :class:`Plan` when every trainable parameter
    belongs to a qualifying unit, and returns None otherwise.
    """

    def __init__(self, model: nn.Module, params: Mapping[str, Tensor], batch: int):
        super().__init__()
        self.model = model
        self.batch = batch
        self.params = params
        self.ok = True
        self.reasons: list[str] = []
        all_ids = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
        named = dict(model.named_modules())
        self.owners: dict[str, dict[str, str]] = {}
        for mname, mod in named.items():
            roles = {}
            for pname, p in mod.named_parameters(recurse=False):
                full = f"{mname}.{pname}" if mname else pname
                if full in params:
                    roles[pname] = full
                    if all_ids[id(p)] != 1:
                        self._fail(f"{full} is shared")
            if roles:
                self.owners[mname] = roles
        for mname in self.owners:
            mod = named[mname]
            for cname, child in mod.named_modules():
                if cname and any(p.requires_grad for p in child.parameters(recurse=False)):
                    self._fail(f"{mname or 'the model'} owns parameters and so does its submodule {cname}")
        self.param_owner = {id(self.model.get_parameter(full)): mname
                            for mname, roles in self.owners.items() for full in roles.values()}
        self.calls: Counter[str] = Counter()
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self.uses: Counter[int] = Counter()
        self.stack: list[str] = []
        self._handles: list[Any] = []

    def _fail(self, why: str) -> None:
        self.ok = False
        self.reasons.append(why)

    def __enter__(self) -> Census:
        named = dict(self.model.named_modules())
        for mname in self.owners:
            mod = named[mname]

            def pre(module: nn.Module, args: tuple, kwargs: dict, mname: str = mname) -> None:
                self.stack.append(mname)
                self.calls[mname] += 1
                if kwargs or len(args) != 1 or not isinstance(args[0], Tensor) or args[0].ndim == 0 or \
                        args[0].shape[0] != self.batch:
                    self._fail(f"{mname} is not called with one (N, ...) tensor")

            def post(module: nn.Module, args: tuple, out: Any, mname: str = mname) -> None:
                if self.stack and self.stack[-1] == mname:
                    self.stack.pop()
                if not isinstance(out, Tensor) or out.ndim == 0 or out.shape[0] != self.batch:
                    self._fail(f"{mname} does not return one (N, ...) tensor")
                    return
                self.shapes[mname] = (tuple(args[0].shape[1:]), tuple(out.shape[1:]))

            self._handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
            self._handles.append(mod.register_forward_hook(post))
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        super().__exit__(*exc)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        for a in (*args, *kwargs.values()):
            for t in (a if isinstance(a, list | tuple) else (a,)):
                if isinstance(t, Tensor) and id(t) in self.param_owner:
                    owner = self.param_owner[id(t)]
                    self.uses[id(t)] += 1
                    if owner not in self.stack:
                        self._fail(f"a parameter of {owner or 'the model'} is used outside its module")
        return func(*args, **kwargs)

    def plan(self) -> Plan | None:
        """The factored plan, or None when the model needs the whole-model generic path."""
        named = dict(self.model.named_modules())
        for mname in self.owners:
            if self.calls[mname] != 1:
                self._fail(f"{mname or 'the model'} is called {self.calls[mname]} times")
            elif mname not in self.shapes:
                self._fail(f"{mname or 'the model'} has no recorded output")
        if not self.ok:
            return None
        plan = Plan(self.model)
        for mname, roles in self.owners.items():
            mod = named[mname]
            in_shape, out_shape = self.shapes[mname]
            once = all(self.uses[id(self.model.get_parameter(f))] == 1 for f in roles.values())
            unit: _Unit
            if type(mod) in _FACTORED_TYPES and once and set(roles) <= {"weight", "bias"} and (
                    type(mod) is nn.Linear or len(in_shape) == (2 if type(mod) is nn.Conv1d else 3)):
                unit = _MatUnit(mname, mod, roles, in_shape, out_shape)
            elif type(mod) in _BN_TYPES and once and not mod.training and mod.running_mean is not None \
                    and mod.running_var is not None and set(roles) <= {"weight", "bias"}:
                unit = _BNUnit(mname, mod, roles, in_shape, out_shape)
            else:
                unit = _GenericUnit(mname, mod, roles, in_shape, out_shape, plan)
            plan.units.append(unit)
        return plan


# -------------------------------------------------------------------------------- plan


class Plan:
    """The factored units of a model and the batched passes over them (see the module docstring)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.units: list[_Unit] = []
        self._fn: Callable[[_Unit, Tensor, Tensor], Tensor | None] | None = None
        self._local_depth = 0

    @contextlib.contextmanager
    def local(self) -> Iterator[None]:
        """Our hooks stand aside (a generic unit calling its own module)."""
        self._local_depth += 1
        try:
            yield
        finally:
            self._local_depth -= 1

    @contextlib.contextmanager
    def hooked(self, fn: Callable[[_Unit, Tensor, Tensor], Tensor | None]) -> Iterator[None]:
        handles = []
        for u in self.units:
            def hook(module: nn.Module, args: tuple, out: Tensor, u: _Unit = u) -> Tensor | None:
                if self._local_depth or self._fn is None:
                    return None
                return self._fn(u, args[0], out)
            handles.append(u.module.register_forward_hook(hook))
        self._fn = fn
        try:
            yield
        finally:
            self._fn = None
            for h in handles:
                h.remove()

    @property
    def has_generic(self) -> bool:
        return any(isinstance(u, _GenericUnit) for u in self.units)

    def prepare(self, rows: int, tangent: bool) -> None:
        for u in self.units:
            u.prepare(rows, tangent)

    def elements_per_sample(self, rows: int) -> int:
        """Workspace estimate (tensor elements) per sample (after :meth:`prepare`)."""
        return sum(u.elements_per_sample(rows) for u in self.units)

    def flops_per_sample(self) -> float:
        """Multiply-adds of one backward pass of one sample (matrix units; a rough size)."""
        total = 0.0
        for u in self.units:
            if isinstance(u, _MatUnit):
                total += u.t * u.c_out * u.d_in / u.groups
            else:
                total += math.prod(u.out_shape)
        return total

    # ------------------------------------------------------------------- passes
    def probe_forward(self, x: Tensor) -> tuple[Tensor, dict[str, Any], list[Tensor]]:
        """(logits (N, K) attached to the probes, {unit: state}, probes in unit order)."""
        states: dict[str, Any] = {}
        probes: dict[str, Tensor] = {}

        def fn(u: _Unit, a: Tensor, out: Tensor) -> Tensor:
            states[u.name] = u.state(a.detach())
            p = torch.zeros_like(out, requires_grad=True)
            probes[u.name] = p
            return out + p

        with torch.enable_grad(), self.hooked(fn):
            z = self.model(x)
        return z, states, [probes[u.name] for u in self.units]

    def sqnorms(self, z: Tensor, states: Mapping[str, Any], probes: list[Tensor], cotangents: Tensor,
                strategy: Strategy) -> Tensor:
        """‖Jᵀ c‖² per cotangent and sample: cotangents (C, N, K) -> (C, N)."""
        c, n = cotangents.shape[:2]
        out = torch.zeros(c, n, dtype=z.dtype, device=z.device)
        # one cotangent row costs the output gradients of every unit (and their forms)
        row_bytes = n * (self.elements_per_sample(1) - self.elements_per_sample(0)) * z.element_size()
        for rows, grads in vjp_rows(z, probes, cotangents.to(z.dtype), strategy, max_rows=rows_per_pass(row_bytes)):
            for u, d in zip(self.units, grads, strict=True):
                if d is not None:
                    out[rows] += u.sqnorm(states[u.name], d)
        return out

    def gradient(self, z: Tensor, states: Mapping[str, Any], probes: list[Tensor], cot: Tensor, *,
                 directions: bool = True) -> tuple[dict[str, Tensor], dict[str, Any], Tensor]:
        """For one cotangent (N, K): (output grads {unit: δ}, directions {unit: ...}, ‖Jᵀc‖² (N,))."""
        grads = torch.autograd.grad(z, probes, cot.to(z.dtype), allow_unused=True)
        deltas, dirs = {}, {}
        sq = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for u, d in zip(self.units, grads, strict=True):
            if d is None:
                d = torch.zeros((z.shape[0], *u.out_shape), dtype=z.dtype, device=z.device)
            deltas[u.name] = d
            if directions:
                dirs[u.name] = u.direction(states[u.name], d)
            sq = sq + u.sqnorm(states[u.name], d.unsqueeze(0))[0]
        return deltas, dirs, sq

    def materialize(self, states: Mapping[str, Any], deltas: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for u in self.units:
            out.update(u.grads(states[u.name], deltas[u.name]))
        return out

    def jv(self, x: Tensor, states: Mapping[str, Any], dirs: Mapping[str, Any], *,
           differentiable: bool = False) -> tuple[Tensor, Tensor]:
        """(logits, J v) for the direction ``dirs`` (from :meth:`gradient`), one forward-mode pass.

        ``differentiable``: x requires grad and both outputs stay differentiable in x (the
        direction itself is held fixed); the tangents are then recomputed from each
        layer's input instead of the recorded state.
        """
        def fn(u: _Unit, a: Tensor, out: Tensor) -> Tensor:
            t = u.tangent(states[u.name], dirs[u.name], _primal(a) if differentiable else None)
            return out + s * t

        ctx = torch.enable_grad() if differentiable else torch.no_grad()
        with ctx, warnings.catch_warnings(), fwAD.dual_level():
            # torch's forward-mode AD scripts a helper on first use and warns that
            # torch.jit.script is deprecated; that is torch's business, not the user's.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)
            s = fwAD.make_dual(torch.zeros((), dtype=x.dtype, device=x.device),
                               torch.ones((), dtype=x.dtype, device=x.device))
            with self.hooked(fn):
                z = self.model(x)
            zp, zt = fwAD.unpack_dual(z)
        return zp, zt

    def shifted_logits(self, x: Tensor, states: Mapping[str, Any], dirs: Mapping[str, Any], step: Tensor, *,
                       differentiable: bool = False) -> Tensor:
        """Logits at θ + step_n · v_n per sample (exact for every unit; finite differences)."""
        def fn(u: _Unit, a: Tensor, out: Tensor) -> Tensor:
            if isinstance(u, _GenericUnit):
                return u.shifted(dirs[u.name], a, step)
            t = u.tangent(states[u.name], dirs[u.name], a)
            return out + step.reshape(-1, *([1] * (out.ndim - 1))).to(out.dtype) * t

        ctx = torch.enable_grad() if differentiable else torch.no_grad()
        with ctx, self.hooked(fn):
            return self.model(x)
