"""The contract and oracle checks on CUDA (marker ``gpu``; skipped without a CUDA device).

Run on a machine with a GPU: ``pytest -m gpu tests/gpu``. Each check runs the same call on
the CPU and on CUDA in float64 (a CPU generator drives both: draws follow the generator's
device, fisherscope._random) and compares; CUDA kernels round differently from the CPU's,
so results agree to float64 rounding, not bit for bit, and a sign step that lands on a
near-zero gradient component may differ — the attacks are compared on their success and
budget, the Fisher quantities to 1e-9.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contract"))
from test_attacks import KEYS, NORM_ORD, make  # noqa: E402

from _models import tiny_cnn  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def pair():
    """The same float64 tiny CNN and batch on the CPU and on CUDA."""
    cpu = tiny_cnn(c=1, side=8, k=5, dtype=torch.float64, batchnorm=True).eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        y = cpu(x).argmax(1)
    gpu = copy.deepcopy(cpu).cuda()
    return (cpu, x, y), (gpu, x.cuda(), y.cuda())


@pytest.mark.parametrize("key", KEYS)
def test_every_attack_runs_on_cuda_with_a_cpu_generator(pair, key):
    (m0, x0, y0), (m1, x1, y1) = pair
    atk = make(key, deterministic=True)
    r0 = atk.run(m0, x0, y0, generator=torch.Generator().manual_seed(3))
    r1 = atk.run(m1, x1, y1, generator=torch.Generator().manual_seed(3))
    assert r1.x_adv.device.type == "cuda" and r1.success.device.type == "cuda"
    lo, hi = atk.bounds
    assert r1.x_adv.min() >= lo and r1.x_adv.max() <= hi
    eps = getattr(atk, "eps", None)
    if atk.budgeted and eps is not None:
        d = (r1.x_adv - x1).flatten(1).norm(p=NORM_ORD[atk.norm], dim=1)
        assert (d <= eps + 1e-6).all()
    agree = (r0.success == r1.success.cpu()).float().mean().item()
    assert agree >= 5 / 6, f"{key}: CPU and CUDA success agree on {agree:.0%} of the samples"


@pytest.mark.parametrize("method", ["exact", "lanczos", "power"])
def test_fisher_spectrum_on_cuda_matches_the_cpu(pair, method):
    from fisherscope.fisher import fisher_spectrum

    (m0, x0, _), (m1, x1, _) = pair
    k = 1 if method == "power" else 3
    s0 = fisher_spectrum(m0, x0, k=k, method=method, generator=torch.Generator().manual_seed(0))
    s1 = fisher_spectrum(m1, x1, k=k, method=method, generator=torch.Generator().manual_seed(0))
    assert s1.eigenvalues.device.type == "cuda"
    torch.testing.assert_close(s1.eigenvalues.cpu(), s0.eigenvalues, rtol=1e-6, atol=1e-12)


def test_sampled_class_spectrum_on_cuda_uses_the_cpu_generator(pair):
    """alias sampling of classes (Zhao's Algorithm 2) with a CPU generator and a CUDA model."""
    from fisherscope.fisher import fisher_spectrum

    (m0, x0, _), (m1, x1, _) = pair
    s0 = fisher_spectrum(m0, x0, k=1, class_samples=8, generator=torch.Generator().manual_seed(0))
    s1 = fisher_spectrum(m1, x1, k=1, class_samples=8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s1.eigenvalues.cpu(), s0.eigenvalues, rtol=1e-6, atol=1e-12)


def test_param_fisher_trace_on_cuda_matches_the_cpu(pair):
    from fisherscope.fisher import param_fisher_trace

    (m0, x0, _), (m1, x1, _) = pair
    torch.testing.assert_close(param_fisher_trace(m1, x1).cpu(), param_fisher_trace(m0, x0), rtol=1e-9, atol=1e-12)


def test_fisher_penalty_gradient_on_cuda_matches_the_cpu(pair):
    from fisherscope.defenses.penalties import fisher_penalty

    (m0, x0, _), (m1, x1, _) = pair
    grads = []
    for m, x in ((m0, x0), (m1, x1)):
        m.zero_grad()
        fisher_penalty(m(x)).mean().backward()
        grads.append(torch.cat([p.grad.flatten().cpu() for p in m.parameters()]))
        m.zero_grad()
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-8, atol=1e-12)


def test_robust_accuracy_on_cuda(pair):
    from fisherscope.evaluation import robust_accuracy

    (m0, x0, y0), (m1, x1, y1) = pair
    kw = dict(norm="linf", eps=0.1, checks=None, batch_size=4)
    r0 = robust_accuracy(m0, x0, y0, generator=torch.Generator().manual_seed(0), **kw)
    r1 = robust_accuracy(m1, x1, y1, generator=torch.Generator().manual_seed(0), **kw)
    assert r1.robust.device.type == "cuda"
    assert abs(r1.robust_accuracy - r0.robust_accuracy) <= 1 / 6
