"""benchmarks/kernels.py's floor_method times the factored trace's own norm arithmetic.

The "norms" part of floor_method runs each plan layer's ``state`` and ``sqnorm`` on
random operands of the real shapes. With the real layer inputs and output gradients in
their place, the same function must give the per-sample squared norms whose weighted sum
is ``param_fisher_trace`` — in both row groupings the benchmark times, on a model whose
plan has a materialised convolution, a ghost-norm convolution, a BatchNorm and a linear
layer — and the random operands must have the shapes of the real ones.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

import fisherscope.fisher.parameter_space as ps
from fisherscope.fisher import param_fisher_trace

KERNELS = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"


def _kernels():
    spec = importlib.util.spec_from_file_location("kernels_bench", KERNELS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _model() -> nn.Module:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(),  # T = 100 positions, D_in = 9: materialised
        nn.Conv2d(4, 8, 3, stride=3), bn, nn.ReLU(),  # T = 9, D_in = 36: ghost norm
        nn.Flatten(), nn.Linear(72, 5),
    ).eval()


def _real_operands(model: nn.Module, x: torch.Tensor, units) -> tuple[list, torch.Tensor]:
    """Each unit's input (N, *in) and its output gradients (K − 1, N, *out) for the trace's
    cotangents, by plain hooks and autograd (not the plan's probes), and the cotangent weights."""
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = [u.module.register_forward_hook(lambda m, a, o: seen.__setitem__(id(m), (a[0].detach(), o)))
               for u in units]
    try:
        z = model(x)
    finally:
        for h in handles:
            h.remove()
    cot, w = ps._full_cotangents(z.detach())
    outs = [seen[id(u.module)][1] for u in units]
    rows = [torch.autograd.grad(z, outs, cot[j].to(z.dtype), retain_graph=True) for j in range(cot.shape[0])]
    return [(seen[id(u.module)][0], torch.stack([r[i] for r in rows])) for i, u in enumerate(units)], w


def test_norms_of_floor_method_are_the_trace_arithmetic(monkeypatch):
    k = _kernels()
    model = _model()
    x = torch.rand(7, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(ps, "FACTORED_MAX_CHUNK", 3)  # several chunks, as at batch 256
    units, sizes, rows = k.norm_plan(model, x)
    assert rows == 4 and sum(sizes) == 7 and max(sizes) <= 3 and len(sizes) > 1
    modes = {u.name: getattr(u, "mode", u.kind) for u in units}
    assert modes == {"0": "materialize", "2": "ghost", "3": "batchnorm", "6": "ghost"}

    real, w = _real_operands(model, x, units)
    want = param_fisher_trace(model, x)
    for per_call in (1, rows):
        sq = k.layer_sqnorms(units, real, per_call)
        assert sq.shape == (rows, 7)
        got = (w * sq.double()).sum(0).to(want.dtype)
        torch.testing.assert_close(got, want, rtol=2e-5, atol=0)

    # the timed operands: the real shapes, chunk by chunk, and the timing function runs on them
    fake = k.norm_operands(units, sizes, rows)
    assert set(fake) == set(sizes)
    for s, ops in fake.items():
        assert [(a.shape, d.shape) for a, d in ops] == \
               [((s, *a.shape[1:]), (rows, s, *d.shape[2:])) for a, d in real]
        assert all(d.is_contiguous() for _, d in ops)
    k.floor_trace_norms(units, fake, sizes, 1)
