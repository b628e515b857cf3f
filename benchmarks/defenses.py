"""Defensive training: time per epoch of each defense against plain training.

Run: ``FISHERSCOPE_DATA=<folder with mnist.npz> python benchmarks/defenses.py [--quick]
[--arch convnet_bn] [--n 4096] [--repeats 5] [--threads 2] [--json out.json]``.

Every variant is a real :func:`fisherscope.training.train_model` call (``epochs=1``,
``cache=False``) on the same fixed subset of MNIST training images (the first ``--n``),
from the same seed; the time is the epoch time the training loop itself records
(``metrics["history"][0]["time_s"]``: shuffling, augmentation, forward, objective,
backward, optimiser step — not the data hashing or the final accuracy pass). Variants
run interleaved (A B C … A B C …) so that drifting machine load hits all alike; the
table gives medians and the ratio to plain training measured in the same process.

Variants: plain cross-entropy; ``softmax_trace`` (Shen et al., μ = 0.02; target
overhead ≤ 5%); ``log_softmax_trace``; label smoothing (α = 0.1); ``input_trace`` and
``top_eigenvalue`` (double backprop through K − 1 input-gradient products); FGSM
adversarial training (Goodfellow, ε = 0.3, mix 0.5) and PGD-7 (Madry, ε = 0.3, 7 steps
of 2.5ε/7, random start, mix 1). The adversarial rows need the ``fgsm`` / ``pgd``
attacks in the registry and are skipped otherwise.

Report the machine load (``uptime``) with the numbers: the script prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import header, interleaved, med, spread  # noqa: E402

from fisherscope.attacks import ATTACKS  # noqa: E402
from fisherscope.data import load_dataset  # noqa: E402
from fisherscope.training import train_model  # noqa: E402

VARIANTS: dict[str, dict | None] = {
    "plain": None,
    "softmax_trace (mu 0.02)": {"kind": "fisher", "mu": 0.02, "penalty": "softmax_trace"},
    "log_softmax_trace (mu 0.02)": {"kind": "fisher", "mu": 0.02, "penalty": "log_softmax_trace"},
    "label smoothing (alpha 0.1)": {"kind": "label_smoothing", "alpha": 0.1},
    "input_trace (mu 0.02)": {"kind": "fisher", "mu": 0.02, "penalty": "input_trace"},
    "top_eigenvalue (mu 0.02)": {"kind": "fisher", "mu": 0.02, "penalty": "top_eigenvalue"},
    "FGSM adv. (eps 0.3, mix 0.5)": {"kind": "adversarial", "attack": "fgsm", "params": {"eps": 0.3}, "mix": 0.5},
    "PGD-7 adv. (eps 0.3, mix 1)": {"kind": "adversarial", "attack": "pgd", "params": {"eps": 0.3, "steps": 7}, "mix": 1.0},
}


def _subset(n: int):
    train = load_dataset("mnist", "train")
    n = min(n, len(train))
    return dataclasses.replace(train, x=train.x[:n].clone(), y=train.y[:n].clone())


def loss_only(batch: int, k: int = 10, repeats: int = 30) -> dict[str, float]:
    """Seconds for the loss alone (logits -> loss, forward + backward), CE vs CE + Σ 1/p.

    Isolates what the softmax-trace penalty adds to a training step, a number that stays
    meaningful on a loaded machine where whole-epoch ratios drown in noise.
    """
    from fisherscope.defenses import FisherRegularizedLoss

    g = torch.Generator().manual_seed(0)
    z = torch.randn(batch, k, generator=g) * 3
    y = torch.randint(0, k, (batch,), generator=g)
    pen = FisherRegularizedLoss(mu=0.02)

    def run(fn):
        def call():
            zz = z.clone().requires_grad_(True)
            fn(zz).backward()
        return call

    t = interleaved({"ce": run(lambda zz: torch.nn.functional.cross_entropy(zz, y)),
                     "ce+penalty": run(lambda zz: pen(zz, y))}, repeats=repeats, warmup=3)  # fmt: skip
    return {name: med(ts) for name, ts in t.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="512 images, 2 repeats, batch 128 (a smoke run)")
    ap.add_argument("--arch", default="convnet_bn", help="convnet_bn (Shen's ConvNet) or mnist_cnn")
    ap.add_argument("--n", type=int, default=4096, help="training images per epoch")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="substrings of the variant names to run (plain always runs)")
    ap.add_argument("--json", type=Path, help="write the raw times here")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 512, 2
    torch.set_num_threads(args.threads)
    data = _subset(args.n)
    variants = {k: v for k, v in VARIANTS.items()
                if v is None or v.get("attack") in (None, *ATTACKS)}  # fmt: skip
    missing = sorted(set(VARIANTS) - set(variants))
    if args.only:
        variants = {k: v for k, v in variants.items() if v is None or any(s in k for s in args.only)}

    def epoch(defense) -> float:
        tm = train_model(args.arch, data, epochs=1, batch_size=args.batch_size, lr=1e-3,
                         defense=defense, cache=False, progress=False, seed=0)  # fmt: skip
        return tm.metrics["history"][0]["time_s"]

    for d in variants.values():  # warm-up (allocator, first-call costs)
        epoch(d)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, d in variants.items():
            times[name].append(epoch(d))

    load = os.getloadavg()
    print(f"# {header()}; {args.arch} on the first {args.n} MNIST training images, batch "
          f"{args.batch_size}, {args.repeats} interleaved repeats; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    base = med(times["plain"])
    print("| variant | s / epoch (median ± std) | vs plain |")
    print("|---|---|---|")
    for name, ts in times.items():
        ratio = med(ts) / base
        print(f"| {name} | {med(ts):.3f} ± {spread(ts):.3f} | {ratio:.3f}× |")
    for name in missing:
        print(f"| {name} | not run: attack {VARIANTS[name]['attack']!r} not in the registry | |")
    overhead = med(times["softmax_trace (mu 0.02)"]) / base - 1 if "softmax_trace (mu 0.02)" in times else None
    if overhead is not None:
        paired = [a / b - 1 for a, b in zip(times["softmax_trace (mu 0.02)"], times["plain"], strict=True)]
        print(f"softmax_trace overhead: {100 * overhead:+.1f}% (median of paired repeats "
              f"{100 * statistics.median(paired):+.1f}%; target <= 5%)")  # fmt: skip
    lo = loss_only(args.batch_size)
    steps = -(-args.n // args.batch_size)
    print(f"loss alone, batch {args.batch_size}: CE {1e3 * lo['ce']:.3f} ms, CE + softmax_trace "
          f"{1e3 * lo['ce+penalty']:.3f} ms: the penalty adds {1e3 * (lo['ce+penalty'] - lo['ce']):.3f} ms "
          f"per step = {100 * (lo['ce+penalty'] - lo['ce']) * steps / base:.2f}% of a plain epoch")  # fmt: skip
    out = {"arch": args.arch, "loss_only": lo, "n": args.n, "batch_size": args.batch_size, "threads": args.threads,
           "load": load, "times": times}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
