"""Fisher kernels at every batch size: ours against stock ``torch.func`` and the faithful references.

Run: ``python benchmarks/kernels.py [--quick] [--threads 1] [--json out.json]`` (parts:
``--parts table tune alloc``; table rows: ``--models mnist_cnn vgg_small``, ``--kernels
spectrum trace``, ``--batches 1 20 256``). Models: ``mnist_cnn`` (1×28×28) and ``vgg_small``
(3×32×32), random weights, uniform inputs, 10 classes; costs do not depend on the
values, except the iteration count of Algorithm 1 (noted in the output).

``table`` — per model and batch size (1, 20, 256), per-sample milliseconds, medians of
interleaved repeats (every method once per round, A B C A B C …):

- exact top eigenpair: ours = ``fisher_spectrum(model, x, k=1)``; **stock** =
  ``vmap(jacrev(f))(x)`` for the K × D logit Jacobian, then the top eigenpair of
  Jᵀ A J from the K × K matrix A^{1/2} J Jᵀ A^{1/2} (what one writes with no thought);
  **Alg. 1** = Zhao's Algorithm 1 in its best reading (per sample: the K gradients once,
  vectorised over classes, then power iteration to ‖Δη‖ < 1e-6; ``fisher_spectrum.py``);
  **floor** = one forward and K − 1 input-gradient backward passes of the same batch (the
  better of a loop and vmapped cotangents): the work of any exact method that forms the
  K − 1 independent rows of the input Jacobian.
- parameter-space trace (eq. 4, full): ours = ``param_fisher_trace(model, x)``;
  **before** = the same function on the whole-model ``vmap`` path (``FACTOR_LAYERS =
  False``: what main shipped before the factored path); **stock** = ``vmap`` over
  samples of ``jacrev`` of the log-softmax with respect to the parameters
  (``functional_call``), Σ_c p_c ‖∇θ log p_c‖², with ``vmap(chunk_size=…)`` keeping the
  per-sample Jacobians under 1 GiB (the whole batch of 256 would need 12–42 GB);
  **loop** = per sample, K backward passes of log p_c with respect to the parameters
  (``autograd.grad``); **floor** = one forward and K − 1 ordinary backward passes of the
  batch (input gradients and batch-summed weight gradients): the arithmetic of K − 1
  per-sample weight-gradient norms in materialised form — not a floor for the factored
  path, which forms no weight gradient; **floor_act** = one forward and K − 1 backward
  passes that form only the gradients at the outputs of the layers that own parameters
  (no weight gradient, no input gradient; the better of a loop and vmapped cotangents on
  the whole batch, and our chunks with our strategy): what autograd must deliver to any
  method that forms the K − 1 per-sample gradients through the network, the factored
  path included (it adds the per-layer norms on top). ``loop / floor_act`` < 5 means
  that 5× the loop lies below this floor. **floor_method** = floor_act + **norms**, the
  measured time of the per-layer norm arithmetic alone: for every layer of the factored
  plan that ``param_fisher_trace`` builds for the batch (same layers, same ghost or
  materialised mode per layer, same chunks), the layer's own ``state`` (the unfold of U,
  and in ghost mode the Gram U Uᵀ; BatchNorm: x̂) and ``sqnorm`` (the products
  ``dc.mT @ u`` or ``<D, (U Uᵀ) D>`` and their squared sums) on random inputs (s, *in)
  and K − 1 = 9 random output gradients (9, s, *out) of the real shapes (s: the chunk
  size), made before the timing; the better of one row per call (as the loop of backward passes hands them over)
  and all nine in one call (as the vmapped cotangents do), timed in the same interleaved
  rounds as the others (wall and CPU). It is a floor for the factored method and for any
  exact method of its form: such a method must form the K − 1 per-sample gradients at
  the layer outputs (floor_act) and then reduce each layer's input and output gradients
  to these per-sample squared norms, by the ghost or the materialised identity, and
  those two pieces of work are disjoint (the norms start from the output gradients that
  floor_act ends with), so their sum is a lower bound; ours also pays the validation
  forward, the probes and the cotangents' K × K eigenproblems (and the norms here reuse
  one set of operands for every chunk of a size, where ours gets fresh ones from each
  backward pass). It does not prove that nothing faster exists: an exact identity for
  these norms cheaper than both the ghost and the materialised form (or a method that
  avoids the per-layer output gradients altogether) would lie below it.
  ``loop / floor_method`` < 5 (CPU time, ``five_x_loop_below_floor_method``) means that
  5× the loop is out of reach for methods of this form with these two identities.

The per-sample references (Alg. 1, loop) are timed on the first ``--n-ref`` samples of the
batch; at batch 256 "before" and "stock" are timed on the first 64 (both already work in
chunks of at most ~15 samples, so their per-sample cost does not depend on the batch
size beyond that); ``--full-refs`` times everything on the whole batch.

``tune`` — the measurements behind the automatic rules: the K − 1 input-gradient rows by
a loop of backward passes vs vmapped cotangents across batch sizes
(``JACOBIAN_STRATEGY``, ``VMAP_MAX_WORK``), per-sample time against the chunk size at
batch 256 (``JACOBIAN_CHUNK_BYTES``, ``FACTORED_CHUNK_BYTES``), and the trace's loop vs
vmap (``VJP_STRATEGY``).

``alloc`` — where the run-to-run instability of large per-sample-gradient chunks comes
from: minor page faults per call, and the same calls in fresh processes with glibc's
default allocator settings vs ``mallopt`` settings that keep freed blocks (no mmap for
large blocks, no trimming), alone and right after a large cell.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import med, spread  # noqa: E402
from fisher_spectrum import algorithm1_top  # noqa: E402

import fisherscope.fisher._factored as fa  # noqa: E402
import fisherscope.fisher.input_space as ins  # noqa: E402
import fisherscope.fisher.parameter_space as ps  # noqa: E402
from fisherscope._batching import even_chunks  # noqa: E402
from fisherscope.fisher import fisher_spectrum, helmert_basis, param_fisher_trace  # noqa: E402
from fisherscope.models import build_model  # noqa: E402

GiB = 2**30


def models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    return {
        "mnist_cnn": (build_model("mnist_cnn").eval(), (1, 28, 28)),
        "vgg_small": (build_model("vgg_small", in_channels=3, input_size=32).eval(), (3, 32, 32)),
    }


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# -------------------------------------------------------------------- references


def stock_top(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """vmap(jacrev) logit Jacobian, then the top eigenpair of Jᵀ A J via the K × K Gram."""
    jac = vmap(jacrev(lambda x1: model(x1.unsqueeze(0)).squeeze(0)))(x).flatten(2)  # (N, K, D)
    with torch.no_grad():
        p = torch.softmax(model(x), 1).double()
    a = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    w, u = torch.linalg.eigh(a)
    root = (u * w.clamp_min(0).sqrt().unsqueeze(1)) @ u.mT  # A^{1/2}
    b = root @ jac.double()  # (N, K, D), G = bᵀ b
    lam, vec = torch.linalg.eigh(b @ b.mT)
    top = vec[:, :, -1]
    v = torch.einsum("nk,nkd->nd", top, b) / lam[:, -1:].sqrt()
    return lam[:, -1], v


def floor_spectrum(model: nn.Module, x: torch.Tensor, strategy: str, chunk: int | None = None) -> None:
    """One forward and K − 1 input-gradient backward passes, on the whole batch or in chunks."""
    for start in range(0, x.shape[0], chunk or x.shape[0]):
        xr = x[start : start + (chunk or x.shape[0])].detach().requires_grad_(True)
        z = model(xr)
        k = z.shape[1]
        cot = helmert_basis(k, dtype=z.dtype).mT.unsqueeze(1).expand(k - 1, xr.shape[0], k)
        for _ in fa.vjp_rows(z, [xr], cot, strategy):  # type: ignore[arg-type]
            pass


def stock_trace(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    params = {n: p.detach() for n, p in model.named_parameters()}
    n_params = sum(p.numel() for p in params.values())

    def one(x1: torch.Tensor) -> torch.Tensor:
        def logp(ps_: dict) -> torch.Tensor:
            return torch.log_softmax(functional_call(model, ps_, (x1.unsqueeze(0),)).squeeze(0), 0)

        jac = jacrev(logp)(params)  # {name: (K, *shape)}
        sq = sum(t.flatten(1).pow(2).sum(1) for t in jac.values())
        return (logp(params).exp() * sq).sum()

    k = 10
    chunk = max(1, GiB // (k * n_params * x.element_size()))
    return vmap(one, chunk_size=chunk)(x)


def loop_trace(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(x.shape[0]):
        logp = torch.log_softmax(model(x[i : i + 1]), 1)[0]
        total = torch.zeros(())
        for c in range(logp.shape[0]):
            g = torch.autograd.grad(logp[c], params, retain_graph=c < logp.shape[0] - 1)
            total = total + logp[c].detach().exp() * sum(t.pow(2).sum() for t in g)
        out.append(total)
    return torch.stack(out)


def floor_trace(model: nn.Module, x: torch.Tensor, chunk: int | None = None) -> None:
    """One forward and K − 1 ordinary backward passes, on the whole batch or in chunks."""
    params = [p for p in model.parameters() if p.requires_grad]
    for start in range(0, x.shape[0], chunk or x.shape[0]):
        xr = x[start : start + (chunk or x.shape[0])].detach().requires_grad_(True)
        z = model(xr)
        k = z.shape[1]
        h = helmert_basis(k, dtype=z.dtype)
        for j in range(k - 1):
            torch.autograd.grad(z, [xr, *params], h[:, j].expand(xr.shape[0], k), retain_graph=j < k - 2)


def param_owners(model: nn.Module) -> list[nn.Module]:
    """The modules that own trainable parameters directly (the layers of the factored path)."""
    return [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]


def floor_trace_act(model: nn.Module, x: torch.Tensor, strategy: str, chunk: int | None = None) -> None:
    """One forward and K − 1 backward passes that form only the gradients at the outputs of
    the layers that own parameters, on the whole batch or in chunks.

    What the ghost-norm / outer-product identities of the factored path need from autograd
    (δ at every layer's output; the layers' inputs come from the forward): no weight
    gradient and no input gradient is formed (the autograd engine computes only what the
    requested outputs need; x does not require grad). The loop of backward passes or the
    vmapped cotangents (``strategy``), as in :func:`fisherscope.fisher._factored.vjp_rows`.
    """
    outs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda mod, a, o: outs.append(o)) for m in param_owners(model)]
    try:
        for start in range(0, x.shape[0], chunk or x.shape[0]):
            xr = x[start : start + (chunk or x.shape[0])].detach()
            outs.clear()
            z = model(xr)
            k = z.shape[1]
            cot = helmert_basis(k, dtype=z.dtype).mT.unsqueeze(1).expand(k - 1, xr.shape[0], k)
            for _ in fa.vjp_rows(z, list(outs), cot, strategy):  # type: ignore[arg-type]
                pass
    finally:
        for h in handles:
            h.remove()


def trace_arith(model: nn.Module, x: torch.Tensor, rows: int = 9) -> dict[str, float]:
    """Multiply-adds per sample of floor_act and of the factored trace, from the plan's layers.

    Convolutions and linear layers only (BatchNorm, biases, activations and the unfold are
    left out): ``fwd`` = one forward, ``bwd_row`` = one backward pass that forms the output
    gradients (all layers' input gradients but the first's), ``norms`` = the per-layer
    squared norms of ``rows`` output gradients in the form the plan chose (materialised
    rows·T·C_out·D_in, ghost T²(D_in + rows·C_out)). floor_act = fwd + rows·bwd_row; ours
    adds the validation forward and the norms.
    """
    net, _, _ = ps._prepare(model, x[:1], (0.0, 1.0))
    assert net.plan is not None
    net.plan.prepare(rows, tangent=False)
    fwd = bwd = norms = 0.0
    for u in net.plan.units:
        if not isinstance(u, fa._MatUnit):
            continue
        m = u.t * u.c_out * u.d_in / u.groups
        bwd += m if fwd else 0.0
        fwd += m
        if u.has_w:
            norms += rows * m if u.mode == "materialize" else u.t * u.t * (u.d_in + rows * u.c_out)
    floor = fwd + rows * bwd
    ours = 2 * fwd + rows * bwd + norms
    return {"fwd": fwd, "bwd_row": bwd, "norms": norms, "floor_act": floor, "ours": ours,
            "ours_vs_floor_act": ours / floor}


def norm_plan(model: nn.Module, x: torch.Tensor) -> tuple[list[fa._Unit], list[int], int]:
    """The layers of the factored plan that ``param_fisher_trace(model, x)`` builds, prepared
    as there for its K − 1 output gradients (each matrix layer's ghost or materialised
    mode), the sizes of the chunks it runs the batch in, and K − 1."""
    net, logits, _ = ps._prepare(model, x, (0.0, 1.0))
    assert net.plan is not None, "the model takes the whole-model vmap path: no factored norms"
    rows = logits.shape[1] - 1
    net.plan.prepare(rows, tangent=False)
    chunk = ps._auto_chunk(None, net, rows)
    return net.plan.units, [sl.stop - sl.start for sl in even_chunks(x.shape[0], chunk)], rows


def norm_operands(units: list[fa._Unit], sizes: list[int], rows: int, dtype: torch.dtype = torch.float32,
                  seed: int = 0) -> dict[int, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per chunk size s, per layer: a random input (s, *in) and ``rows`` random output
    gradients (rows, s, *out), contiguous as autograd delivers them (the arithmetic does not
    depend on the values)."""
    g = torch.Generator().manual_seed(seed)
    return {s: [(torch.rand(s, *u.in_shape, generator=g, dtype=dtype),
                 torch.randn(rows, s, *u.out_shape, generator=g, dtype=dtype)) for u in units]
            for s in sorted(set(sizes))}


def layer_sqnorms(units: list[fa._Unit], operands: list[tuple[torch.Tensor, torch.Tensor]],
                  rows_per_call: int) -> torch.Tensor:
    """Σ over the layers of the per-sample squared parameter-gradient norms, (rows, s).

    Exactly the factored trace's arithmetic after its backward passes, by its own code: per
    layer, ``state`` of the layer's input (the unfold of U and, in ghost mode, the Gram
    U Uᵀ, as in ``Plan.probe_forward``; BatchNorm: x̂), then ``sqnorm`` of the output
    gradients ``rows_per_call`` rows at a time (1: the loop of backward passes, which hands
    over one row per pass; all rows: the vmapped cotangents), summed over the layers as in
    ``Plan.sqnorms``. With the real inputs and output gradients this gives ‖Jᵀ c_j‖² per
    cotangent row j and sample.
    """
    rows, s = operands[0][1].shape[:2]
    out = torch.zeros(rows, s, dtype=operands[0][1].dtype)
    for u, (a, d) in zip(units, operands, strict=True):
        st = u.state(a)
        for start in range(0, rows, rows_per_call):
            out[start : start + rows_per_call] += u.sqnorm(st, d[start : start + rows_per_call])
    return out


def floor_trace_norms(units: list[fa._Unit], operands: dict[int, list[tuple[torch.Tensor, torch.Tensor]]],
                      sizes: list[int], rows_per_call: int) -> None:
    """The per-layer norms alone for a whole batch, in the plan's chunks (see :func:`layer_sqnorms`)."""
    with torch.no_grad():
        for s in sizes:
            layer_sqnorms(units, operands[s], rows_per_call)


#: The activation floor also tries vmapped cotangents on whole batches up to this size (the
#: factored path vmaps them only on small chunks, see ``choose_strategy``).
ACT_VMAP_MAX_BATCH = 32


def trace_chunk(model: nn.Module, x: torch.Tensor) -> int:
    net, _, _ = ps._prepare(model, x, (0.0, 1.0))
    net.plan.prepare(9, tangent=False)
    return ps._auto_chunk(None, net, 9)


def before_trace(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    old = ps.FACTOR_LAYERS
    ps.FACTOR_LAYERS = False
    try:
        return param_fisher_trace(model, x)
    finally:
        ps.FACTOR_LAYERS = old


# ------------------------------------------------------------------------ timing


CPU_TIMES: dict[str, list[float]] = {}


def interleaved(fns: dict, repeats: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Wall seconds per call and median minor page faults per call, interleaved repeats after
    one warm-up. The process CPU seconds of the same calls go to :data:`CPU_TIMES` (on a
    machine shared with other jobs they are much steadier than wall time)."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    flts: dict[str, list[int]] = {k: [] for k in fns}
    CPU_TIMES.clear()
    for k in fns:
        CPU_TIMES[k] = []
    for _ in range(repeats):
        for k, f in fns.items():
            f0 = faults()
            c0 = time.process_time()
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
            CPU_TIMES[k].append(time.process_time() - c0)
            flts[k].append(faults() - f0)
    return times, {k: med(v) for k, v in flts.items()}  # type: ignore[arg-type]


def cpu_ms(key: str, n: int) -> float:
    return med(CPU_TIMES[key]) / n * 1e3


def part_table(args: argparse.Namespace, results: dict) -> None:
    print("\n== exact top eigenpair and parameter trace: ms per sample (median of interleaved repeats) ==")
    rows = results.setdefault("table", {})
    for name, (model, shape) in models().items():
        if name not in args.models:
            continue
        for n in args.batches:
            torch.manual_seed(1)
            x = torch.rand(n, *shape)
            reps = args.repeats if n < 256 else max(2, args.repeats - 2)
            nr = min(n, args.n_ref)
            nb = n if (args.full_refs or n < 256) else 64
            xr, xb = x[:nr], x[:nb]
            if "spectrum" in args.kernels:
                part_spectrum_cell(name, model, x, xr, reps, rows)
            if "trace" in args.kernels:
                part_trace_cell(name, model, x, xr, xb, reps, rows)


def part_spectrum_cell(name: str, model: nn.Module, x: torch.Tensor, xr: torch.Tensor, reps: int, rows: dict) -> None:
    """One row of the exact top eigenpair (see the module docstring)."""
    n, nr = x.shape[0], xr.shape[0]
    ours_s = fisher_spectrum(model, x, k=1)
    lam_st, vec_st = stock_top(model, x)
    lam_a1, _ = algorithm1_top(model, xr)
    lam_st, vec_st = lam_st.detach(), vec_st.detach()
    rel_st = float(((ours_s.top_eigenvalue.double() - lam_st).abs() / lam_st).max())
    cos_st = float((ours_s.top_eigenvector.flatten(1).double() * vec_st).sum(1).abs().min())
    rel_a1 = float(((ours_s.top_eigenvalue[:nr].double() - lam_a1.double()).abs() / lam_a1.double()).max())
    jchunk = ins._jacobian_chunk(model, x)[0]
    fns = {
        "ours": lambda m=model, xx=x: fisher_spectrum(m, xx, k=1),
        "stock": lambda m=model, xx=x: stock_top(m, xx),
        "alg1": lambda m=model, xx=xr: algorithm1_top(m, xx),
        "floor_loop": lambda m=model, xx=x: floor_spectrum(m, xx, "loop"),
        "floor_vmap": lambda m=model, xx=x: floor_spectrum(m, xx, "vmap"),
    }
    if jchunk < n:  # the floor on our chunks too: a whole batch of 256 runs slower per sample
        fns["floor_loop_chunked"] = lambda m=model, xx=x, c=jchunk: floor_spectrum(m, xx, "loop", c)
    t, fl = interleaved(fns, reps)
    per = {k: med(v) / (nr if k == "alg1" else n) * 1e3 for k, v in t.items()}
    cpu = {k: cpu_ms(k, nr if k == "alg1" else n) for k in t}
    floors = [k for k in per if k.startswith("floor")]
    floor = min(per[k] for k in floors)
    cfloor = min(cpu[k] for k in floors)
    spec = {**{f"{k}_ms": v for k, v in per.items()}, "floor_ms": floor,
            "vs_stock": per["stock"] / per["ours"], "vs_alg1": per["alg1"] / per["ours"],
            "ours_vs_floor": per["ours"] / floor, "stock_vs_floor": per["stock"] / floor,
            "faults_per_call": fl, "max_rel_eig_vs_stock": rel_st, "min_abs_cos_vs_stock": cos_st,
            "max_rel_eig_vs_alg1": rel_a1, "n_ref": nr,
            "strategy": fa.choose_strategy(9, min(n, ins._jacobian_chunk(model, x)[0]),
                                           ins._costs(model, x)[0], x.device, ins.JACOBIAN_STRATEGY),
            "chunk": ins._jacobian_chunk(model, x)[0], "cpu_ms": cpu, "cpu_floor_ms": cfloor,
            "cpu_vs_stock": cpu["stock"] / cpu["ours"], "cpu_vs_alg1": cpu["alg1"] / cpu["ours"],
            "cpu_ours_vs_floor": cpu["ours"] / cfloor}
    rows[f"spectrum/{name}/{n}"] = spec
    print(f"spectrum {name:9s} N={n:3d}  ours {per['ours']:8.2f}  stock {per['stock']:8.2f}  Alg.1 {per['alg1']:8.2f}"
          f"  floor {floor:8.2f} ({', '.join(f'{k[6:]} {per[k]:.2f}' for k in floors)})"
          f"  | x stock {spec['vs_stock']:.2f}  x Alg.1 {spec['vs_alg1']:.2f}  ours/floor {spec['ours_vs_floor']:.2f}"
          f"  stock/floor {spec['stock_vs_floor']:.2f}  [{spec['strategy']}, chunk {spec['chunk']}]"
          f"  (λ rel. {rel_st:.1e}, |cos| {cos_st:.6f}; Alg.1 λ rel. {rel_a1:.1e})", flush=True)
    print(f"         CPU ms: ours {cpu['ours']:.2f} stock {cpu['stock']:.2f} Alg.1 {cpu['alg1']:.2f} floor {cfloor:.2f}"
          f"  | x stock {spec['cpu_vs_stock']:.2f}  x Alg.1 {spec['cpu_vs_alg1']:.2f}  ours/floor {spec['cpu_ours_vs_floor']:.2f}",
          flush=True)


def part_trace_cell(name: str, model: nn.Module, x: torch.Tensor, xr: torch.Tensor, xb: torch.Tensor, reps: int,
                    rows: dict) -> None:
    """One row of the parameter-space trace (see the module docstring)."""
    n, nr, nb = x.shape[0], xr.shape[0], xb.shape[0]
    ours_t = param_fisher_trace(model, x)
    st = stock_trace(model, xb)
    rel_t = float(((ours_t[:nb].double() - st.double()).abs() / st.double()).max())
    tchunk = trace_chunk(model, x)
    fns = {
        "ours": lambda m=model, xx=x: param_fisher_trace(m, xx),
        "before": lambda m=model, xx=xb: before_trace(m, xx),
        "stock": lambda m=model, xx=xb: stock_trace(m, xx),
        "loop": lambda m=model, xx=xr: loop_trace(m, xx),
        "floor_whole": lambda m=model, xx=x: floor_trace(m, xx),
    }
    strategy = ps._strategy(ps._prepare(model, x[:1], (0.0, 1.0))[0], 9, min(n, tchunk))
    fns["act_loop"] = lambda m=model, xx=x: floor_trace_act(m, xx, "loop")
    if n <= ACT_VMAP_MAX_BATCH:
        fns["act_vmap"] = lambda m=model, xx=x: floor_trace_act(m, xx, "vmap")
    if tchunk < n:
        fns["floor_chunked"] = lambda m=model, xx=x, c=tchunk: floor_trace(m, xx, c)
        fns["act_chunked"] = lambda m=model, xx=x, c=tchunk, s=strategy: floor_trace_act(m, xx, s, c)
    units, csizes, nrows = norm_plan(model, x)
    operands = norm_operands(units, csizes, nrows, dtype=x.dtype)
    for label, per_call in (("row1", 1), ("rows", nrows)):
        fns[f"norms_{label}"] = lambda u=units, o=operands, c=csizes, r=per_call: floor_trace_norms(u, o, c, r)
    t, fl = interleaved(fns, reps)
    sizes = {"ours": n, "before": nb, "stock": nb, "loop": nr}
    per = {k: med(v) / sizes.get(k, n) * 1e3 for k, v in t.items()}
    cpu = {k: cpu_ms(k, sizes.get(k, n)) for k in t}
    for d in (per, cpu):
        d["floor"] = min(v for k, v in d.items() if k.startswith("floor_"))
        d["floor_act"] = min(v for k, v in d.items() if k.startswith("act_"))
        d["norms"] = min(v for k, v in d.items() if k.startswith("norms_"))
        d["floor_method"] = d["floor_act"] + d["norms"]
    spread_ours = spread(t["ours"]) / med(t["ours"])
    tr = {**{f"{k}_ms": v for k, v in per.items()}, "vs_stock": per["stock"] / per["ours"],
          "vs_loop": per["loop"] / per["ours"], "vs_before": per["before"] / per["ours"],
          "ours_vs_floor": per["ours"] / per["floor"], "stock_vs_floor": per["stock"] / per["floor"],
          "loop_vs_floor": per["loop"] / per["floor"], "faults_per_call": fl,
          "ours_rel_spread": spread_ours, "max_rel_vs_stock": rel_t, "n_ref": nr, "n_batched_refs": nb,
          "cpu_ms": cpu, "cpu_vs_stock": cpu["stock"] / cpu["ours"], "cpu_vs_loop": cpu["loop"] / cpu["ours"],
          "cpu_vs_before": cpu["before"] / cpu["ours"], "cpu_ours_vs_floor": cpu["ours"] / cpu["floor"],
          "ours_vs_floor_act": per["ours"] / per["floor_act"], "loop_vs_floor_act": per["loop"] / per["floor_act"],
          "stock_vs_floor_act": per["stock"] / per["floor_act"],
          "cpu_ours_vs_floor_act": cpu["ours"] / cpu["floor_act"], "cpu_loop_vs_floor_act": cpu["loop"] / cpu["floor_act"],
          "cpu_stock_vs_floor_act": cpu["stock"] / cpu["floor_act"],
          # "5× the loop lies below the floor" holds when loop / floor_act < 5
          "five_x_loop_below_floor_act": cpu["loop"] / cpu["floor_act"] < 5,
          "ours_vs_floor_method": per["ours"] / per["floor_method"],
          "loop_vs_floor_method": per["loop"] / per["floor_method"],
          "cpu_ours_vs_floor_method": cpu["ours"] / cpu["floor_method"],
          "cpu_loop_vs_floor_method": cpu["loop"] / cpu["floor_method"],
          # in CPU time, as for floor_act
          "five_x_loop_below_floor_method": cpu["loop"] / cpu["floor_method"] < 5,
          "norm_chunks": csizes, "norm_modes": {u.name: getattr(u, "mode", u.kind) for u in units},
          "chunk": tchunk, "strategy": strategy}
    tr["arith"] = trace_arith(model, x)
    rows[f"trace/{name}/{n}"] = tr
    print(f"trace    {name:9s} N={n:3d}  ours {per['ours']:8.2f}  before {per['before']:8.2f}  stock {per['stock']:8.2f}"
          f"  loop {per['loop']:8.2f}  floor {per['floor']:8.2f}  floor_act {per['floor_act']:8.2f}"
          f" ({', '.join(f'{k[4:]} {per[k]:.2f}' for k in t if k.startswith('act_'))})  | x stock {tr['vs_stock']:.2f}  x loop {tr['vs_loop']:.2f}"
          f"  x before {tr['vs_before']:.2f}  ours/floor {tr['ours_vs_floor']:.2f}  stock/floor {tr['stock_vs_floor']:.2f}"
          f"  ours/floor_act {tr['ours_vs_floor_act']:.2f}  loop/floor_act {tr['loop_vs_floor_act']:.2f}  [{tr['strategy']}, chunk {tchunk}]"
          f"  (rel. diff vs stock {rel_t:.1e}; faults/call ours {fl['ours']:.0f} before {fl['before']:.0f}"
          f" stock {fl['stock']:.0f})", flush=True)
    print(f"         CPU ms: ours {cpu['ours']:.2f} before {cpu['before']:.2f} stock {cpu['stock']:.2f} loop {cpu['loop']:.2f}"
          f" floor {cpu['floor']:.2f} floor_act {cpu['floor_act']:.2f}  | x stock {tr['cpu_vs_stock']:.2f}"
          f"  x loop {tr['cpu_vs_loop']:.2f}  x before {tr['cpu_vs_before']:.2f}  ours/floor {tr['cpu_ours_vs_floor']:.2f}"
          f"  ours/floor_act {tr['cpu_ours_vs_floor_act']:.2f}  loop/floor_act {tr['cpu_loop_vs_floor_act']:.2f}"
          f"  stock/floor_act {tr['cpu_stock_vs_floor_act']:.2f}", flush=True)
    print(f"         floor_method {per['floor_method']:.2f} = floor_act + norms {per['norms']:.2f}"
          f" ({', '.join(f'{k[6:]} {per[k]:.2f}' for k in t if k.startswith('norms_'))})"
          f"  | ours/floor_method {tr['ours_vs_floor_method']:.2f}  loop/floor_method {tr['loop_vs_floor_method']:.2f}"
          f"  CPU ms: floor_method {cpu['floor_method']:.2f} = {cpu['floor_act']:.2f} + {cpu['norms']:.2f}"
          f"  ours/floor_method {tr['cpu_ours_vs_floor_method']:.2f}  loop/floor_method {tr['cpu_loop_vs_floor_method']:.2f}"
          f"  5x loop below floor_method: {tr['five_x_loop_below_floor_method']}", flush=True)
    ar = tr["arith"]
    print(f"         multiply-adds per sample: floor_act {ar['floor_act'] / 1e6:.0f} M, ours {ar['ours'] / 1e6:.0f} M"
          f" (of which norms {ar['norms'] / 1e6:.0f} M): ours/floor_act {ar['ours_vs_floor_act']:.2f}", flush=True)


def part_tune(args: argparse.Namespace, results: dict) -> None:
    out = results.setdefault("tune", {})
    print("\n== tune: K − 1 input-gradient rows, loop vs vmapped cotangents (ms per sample) ==")
    for name, (model, shape) in models().items():
        macs = None
        for n in (1, 4, 20, 64):
            x = torch.rand(n, *shape)
            macs = ins._costs(model, x)[0]
            t, _ = interleaved({"loop": lambda m=model, xx=x: floor_spectrum(m, xx, "loop"),
                                "vmap": lambda m=model, xx=x: floor_spectrum(m, xx, "vmap")}, args.repeats)
            loop, vm = med(t["loop"]) / n * 1e3, med(t["vmap"]) / n * 1e3
            cl, cv = cpu_ms("loop", n), cpu_ms("vmap", n)
            out[f"rows/{name}/{n}"] = {"loop_ms": loop, "vmap_ms": vm, "loop_cpu_ms": cl, "vmap_cpu_ms": cv,
                                       "work_per_pass": n * macs}
            print(f"  {name:9s} N={n:3d} (N·MACs {n * macs:.2e})  loop {loop:8.2f}  vmap {vm:8.2f}  (CPU {cl:8.2f} / {cv:8.2f})"
                  f"  -> {'vmap' if cv < cl else 'loop'}  (rule: {fa.choose_strategy(9, n, macs, x.device, 'auto')})", flush=True)
        print(f"  chunk size at N=128 (whole batch of 128, activations {ins._costs(model, x)[1] / 2**20:.2f} MiB per sample):")
        x = torch.rand(128, *shape)
        act = ins._costs(model, x)[1]
        fns = {}
        for c in (4, 16, 32, 64, 128):
            def run(m=model, xx=x, c=c, a=act):
                old = ins.JACOBIAN_CHUNK_BYTES
                ins.JACOBIAN_CHUNK_BYTES = c * a
                try:
                    fisher_spectrum(m, xx, k=1)
                finally:
                    ins.JACOBIAN_CHUNK_BYTES = old
            fns[c] = run
        t, fl = interleaved(fns, max(2, args.repeats - 2))
        for c in fns:
            out[f"chunk/{name}/{c}"] = {"ms": med(t[c]) / 128 * 1e3, "cpu_ms": cpu_ms(c, 128), "faults": fl[c]}
            print(f"    chunk {c:4d} samples ({c * act / 2**20:6.1f} MiB)  {med(t[c]) / 128 * 1e3:8.2f} ms/sample"
                  f"  (CPU {cpu_ms(c, 128):8.2f})  faults/call {fl[c]:.0f}", flush=True)
    print("\n== tune: parameter trace, loop vs vmap for the K − 1 backward passes, and chunk size ==")
    for name, (model, shape) in models().items():
        for n in (1, 20):
            x = torch.rand(n, *shape)
            fns = {}
            for strat in ("loop", "vmap"):
                def run(m=model, xx=x, s=strat):
                    old = ps.VJP_STRATEGY
                    ps.VJP_STRATEGY = s
                    try:
                        param_fisher_trace(m, xx)
                    finally:
                        ps.VJP_STRATEGY = old
                fns[strat] = run
            t, _ = interleaved(fns, args.repeats)
            out[f"trace_rows/{name}/{n}"] = {**{k: med(v) / n * 1e3 for k, v in t.items()},
                                             **{f"{k}_cpu": cpu_ms(k, n) for k in t}}
            print(f"  {name:9s} N={n:3d}  loop {med(t['loop']) / n * 1e3:8.2f}  vmap {med(t['vmap']) / n * 1e3:8.2f} ms/sample"
                  f"  (CPU {cpu_ms('loop', n):8.2f} / {cpu_ms('vmap', n):8.2f})", flush=True)
        x = torch.rand(64, *shape)
        fns = {c: (lambda m=model, xx=x, c=c: param_fisher_trace(m, xx, chunk_size=c)) for c in (2, 4, 8, 16, 64)}
        net, _, _ = ps._prepare(model, x, (0.0, 1.0))
        net.plan.prepare(9, tangent=False)
        per_mib = net.plan.elements_per_sample(9) * 4 / 2**20
        t, fl = interleaved(fns, max(2, args.repeats - 2))
        for c in fns:
            out[f"trace_chunk/{name}/{c}"] = {"ms": med(t[c]) / 64 * 1e3, "cpu_ms": cpu_ms(c, 64), "faults": fl[c]}
            print(f"    chunk {c:3d} samples (~{c * per_mib:6.1f} MiB workspace)  {med(t[c]) / 64 * 1e3:8.2f} ms/sample"
                  f"  (CPU {cpu_ms(c, 64):8.2f})  faults/call {fl[c]:.0f}", flush=True)
        print(f"    automatic: {ps._auto_chunk(None, net, 9)} samples (FACTORED_CHUNK_BYTES = {ps.FACTORED_CHUNK_BYTES / 2**20:.0f} MiB)")


# ----------------------------------------------------------------------- alloc


def _mallopt_keep() -> None:
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)  # largest value glibc accepts for the fixed threshold is HEAP_MAX/2
    libc.mallopt(m_trim_threshold, 1 << 62)


def alloc_child(cfg: str, threads: int) -> None:
    """Run one allocator configuration and print one JSON line."""
    torch.set_num_threads(threads)
    malloc, before, what = cfg.split(",")
    if malloc == "keep":
        _mallopt_keep()
    model, shape = models()["vgg_small"]
    if before == "big":  # a large cell first, as in a full benchmark run
        stock_trace(model, torch.rand(24, *shape))
        before_trace(model, torch.rand(64, *shape))
    x = torch.rand(20, *shape)
    fn = {"before": lambda: before_trace(model, x), "stock": lambda: stock_trace(model, x),
          "ours": lambda: param_fisher_trace(model, x)}[what]
    fn()
    ts, fs = [], []
    for _ in range(5):
        f0 = faults()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
        fs.append(faults() - f0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(json.dumps({"cfg": cfg, "ms_per_sample": [t / 20 * 1e3 for t in ts], "faults": fs, "max_rss_mib": rss}))


def fresh_pages() -> dict[str, float]:
    """Seconds to fill 1 GiB that was just allocated (fresh pages: one fault per 4 KiB) vs refilled."""
    ts_new, ts_old = [], []
    keep = torch.empty(GiB // 4)
    for _ in range(3):
        t0 = time.perf_counter()
        torch.ones(GiB // 4)
        ts_new.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        keep.fill_(1.0)
        ts_old.append(time.perf_counter() - t0)
    return {"fresh_s_per_gib": med(ts_new), "reused_s_per_gib": med(ts_old)}


def part_alloc(args: argparse.Namespace, results: dict) -> None:
    out = results.setdefault("alloc", {})
    fp = fresh_pages()
    out["pages"] = fp
    print(f"\n== alloc: filling 1 GiB of fresh pages {fp['fresh_s_per_gib'] * 1e3:.0f} ms, of reused memory"
          f" {fp['reused_s_per_gib'] * 1e3:.0f} ms ==")
    print("== vgg_small trace at batch 20 in fresh processes (ms per sample: median [min, max] of 5; faults/call) ==")
    for what in ("before", "stock", "ours"):
        for malloc in ("default", "keep"):
            for before in ("fresh", "big"):
                cfg = f"{malloc},{before},{what}"
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or 1)}
                proc = subprocess.run([sys.executable, __file__, "--alloc-child", cfg, "--threads", str(args.threads or 1)],
                                      capture_output=True, text=True, env=env, timeout=3600)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
                if not line:
                    print(f"  {cfg}: failed\n{proc.stderr[-2000:]}")
                    continue
                r = json.loads(line[-1])
                out[cfg] = r
                ms = r["ms_per_sample"]
                print(f"  {what:6s} malloc={malloc:7s} {before:5s}: {med(ms):8.2f} [{min(ms):7.2f}, {max(ms):7.2f}]"
                      f"  faults/call {med(r['faults']):9.0f}  max RSS {r['max_rss_mib']:.0f} MiB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", nargs="+", default=["table"], choices=["table", "tune", "alloc"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 20, 256])
    ap.add_argument("--models", nargs="+", default=["mnist_cnn", "vgg_small"], choices=["mnist_cnn", "vgg_small"])
    ap.add_argument("--kernels", nargs="+", default=["spectrum", "trace"], choices=["spectrum", "trace"],
                    help="table rows: top eigenpair, parameter trace")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n-ref", type=int, default=8, help="samples the per-sample references are timed on")
    ap.add_argument("--full-refs", action="store_true", help="time the batched references on the whole batch")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--alloc-child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.alloc_child:
        alloc_child(args.alloc_child, args.threads or 1)
        return
    if args.quick:
        args.batches, args.repeats, args.n_ref = [1, 8], 2, 2
    load = os.getloadavg()
    results: dict = {"argv": sys.argv[1:], "torch": torch.__version__, "threads": torch.get_num_threads(), "load_average": load,
                     "cpus": os.cpu_count()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {load[0]:.2f}")
    for part in args.parts:
        {"table": part_table, "tune": part_tune, "alloc": part_alloc}[part](args, results)
    results["load_average_end"] = os.getloadavg()
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=lambda o: None if isinstance(o, float) and math.isnan(o) else o))


if __name__ == "__main__":
    main()
