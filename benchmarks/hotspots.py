"""Hot spots of the robust-accuracy and audit paths, measured one at a time.

Run: ``FISHERSCOPE_DATA=<folder with mnist.npz> python benchmarks/hotspots.py PART [--threads 1]``
with PART one of:

- ``square-l2``: Square at L2 ε = 1 on trained lenet5 (300 MNIST test images, 1000 queries)
  against the forward passes it made, replayed with the same batch sizes (process CPU
  seconds, best of 3): the overhead of the L2 proposals.
- ``lid``: forward + backward of LID's torch mirror (``lid_mle_torch``, 120 query rows, 120
  reference rows, k = 20, float64, d = 3456 / 800 / 10) against the same estimate written with
  the (n, k, d) tensor of differences (the form the numpy ``lid_mle`` uses); the largest
  relative difference of values and gradients.
- ``apgd``: APGD-CE-100 on trained ``mnist_cnn`` (``@paper``), 256 MNIST images, L∞ 0.1: the
  PyTorch profiler's self CPU time of the operations outside the model (everything but
  convolution, pooling, ReLU, linear layers and their backward) as a share of the total.
- ``detect``: the audit's detection section (``experiments.audit._detect``, 300 MNIST test
  images, lenet5, L∞ 0.3, the audit's defaults) under cProfile, the 40 largest cumulative entries.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robust import Recorder, replay_forwards, setup  # noqa: E402


def _lenet5():
    from fisherscope.data import load_dataset
    from fisherscope.training import train_model

    return train_model("lenet5", "mnist", progress=False), load_dataset("mnist", "test")


def square_l2() -> None:
    from fisherscope.attacks import Square

    tm, test = _lenet5()
    model, x, y = tm.model.eval(), test.x[:300], test.y[:300]
    sq = Square(eps=1.0, norm="l2", n_queries=1000)
    rec = Recorder(model).eval()
    sq(rec, x, y, generator=torch.Generator().manual_seed(0))
    floor = replay_forwards(model, x, list(rec.sizes))
    cpu: dict[str, list[float]] = {"ours": [], "floor": []}
    for _ in range(3):
        for k, f in (("ours", lambda: sq(model, x, y, generator=torch.Generator().manual_seed(0))), ("floor", floor)):
            c = time.process_time()
            f()
            cpu[k].append(time.process_time() - c)
    o, f = min(cpu["ours"]), min(cpu["floor"])
    print(f"Square L2-1000 on {len(x)} images ({sum(rec.sizes)} forwarded): ours {o:.2f} s, "
          f"forwards replayed {f:.2f} s, ours / floor {o / f:.2f} (CPU seconds, best of 3)")


def _lid_by_differences(q: torch.Tensor, r: torch.Tensor, k: int) -> torch.Tensor:
    """The LID estimate from the (n, k, d) differences to the k nearest rows (the reference form)."""
    d2 = (q.detach() ** 2).sum(1, keepdim=True) + (r ** 2).sum(1)[None] - 2.0 * (q.detach() @ r.T)
    idx = torch.topk(d2, k, dim=1, largest=False).indices
    dist = ((q[:, None, :] - r[idx]) ** 2).sum(-1).clamp_min(1e-300).sqrt().sort(dim=1).values
    return -1.0 / torch.log(dist / dist[:, -1:]).mean(1)


def lid() -> None:
    from fisherscope.detectors.lid import lid_mle_torch

    g = torch.Generator().manual_seed(0)
    for d in (3456, 800, 10):
        q = torch.rand(120, d, dtype=torch.float64, generator=g).requires_grad_(True)
        r = torch.rand(120, d, dtype=torch.float64, generator=g)
        cpu = {}
        out = {}
        for name, f in (("mirror", lid_mle_torch), ("differences", _lid_by_differences)):
            v = f(q, r, 20)
            (grad,) = torch.autograd.grad(v.sum(), q)
            out[name] = (v.detach(), grad)
            c = time.process_time()
            for _ in range(5):
                (grad,) = torch.autograd.grad(f(q, r, 20).sum(), q)
            cpu[name] = (time.process_time() - c) / 5
        (va, ga), (vb, gb) = out["mirror"], out["differences"]
        print(f"d = {d}: mirror {1e3 * cpu['mirror']:.1f} ms, by differences {1e3 * cpu['differences']:.1f} ms "
              f"({cpu['differences'] / cpu['mirror']:.1f}x); max relative difference: values "
              f"{((va - vb).abs() / vb.abs()).max():.1e}, gradients {((ga - gb).abs().max() / gb.abs().max()):.1e}")


MODEL_OPS = ("convolution", "pool", "relu", "threshold", "clamp_min", "addmm", "aten::mm", "linear",
             "ReluBackward", "ConvolutionBackward", "MaxPool", "AddmmBackward", "MmBackward", "evaluate_function")


def apgd() -> None:
    from torch.profiler import ProfilerActivity, profile

    from fisherscope.attacks import APGD

    model, x, y, eps, _ = setup("mnist_cnn", 256)
    atk = APGD(eps=eps, steps=100, loss="ce")
    atk(model, x[:16], y[:16], generator=torch.Generator().manual_seed(0))  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as p:
        atk(model, x, y, generator=torch.Generator().manual_seed(0))
    rows = p.key_averages()
    total = sum(e.self_cpu_time_total for e in rows)
    outside = sum(e.self_cpu_time_total for e in rows if not any(m in e.key for m in MODEL_OPS))
    print(f"APGD-CE-100, mnist_cnn, 256 images: operations outside the model {outside / 1e6:.2f} s of "
          f"{total / 1e6:.2f} s self CPU time ({100 * outside / total:.1f}%); the largest:")
    top = sorted((e for e in rows if not any(m in e.key for m in MODEL_OPS)), key=lambda e: -e.self_cpu_time_total)
    for e in top[:6]:
        print(f"  {e.key}: {e.self_cpu_time_total / 1e6:.2f} s ({e.count} calls)")


def detect() -> None:
    import cProfile
    import pstats

    from fisherscope.experiments.audit import AuditConfig, _detect
    from fisherscope.models import load_model

    tm, test = _lenet5()
    idx = torch.randperm(len(test.y), generator=torch.Generator().manual_seed(0))[:300]
    pr = cProfile.Profile()
    t0 = time.perf_counter()
    pr.enable()
    _detect(load_model(tm.model), test.x[idx], test.y[idx], 0.3, AuditConfig())
    pr.disable()
    print(f"detection section on 300 images: {time.perf_counter() - t0:.0f} s wall")
    pstats.Stats(pr).sort_stats("cumulative").print_stats(40)


PARTS = {"square-l2": square_l2, "lid": lid, "apgd": apgd, "detect": detect}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=sorted(PARTS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    PARTS[args.part]()


if __name__ == "__main__":
    main()
