"""How far apart are the weights of one training request at different CPU thread counts?

Trains the same request (``digits_cnn`` default preset on scikit-learn's digits, no
cache) with ``num_threads=a`` and ``num_threads=b`` for a few seeds and prints the largest
absolute weight difference, the largest relative one (to the tensor's max |w|) and the
test-accuracy difference. ``docs/training-measurements.md`` records the numbers and the
tolerance the checkpoint cache promises across thread counts.

    python benchmarks/thread_tolerance.py [--arch digits_cnn] [--seeds 0 1 2] [--threads 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from fisherscope.data import load_dataset
from fisherscope.training import train_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="digits_cnn")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, nargs=2, default=[1, 2])
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    train, test = load_dataset(args.dataset, "train"), load_dataset(args.dataset, "test")
    rows = []
    for seed in args.seeds:
        runs = {}
        for n in args.threads:
            t0 = time.perf_counter()
            runs[n] = train_model(args.arch, train, test_dataset=test, seed=seed, epochs=args.epochs,
                                  cache=False, progress=False, num_threads=n)
            runs[n].metrics["measured_s"] = time.perf_counter() - t0
        a, b = (runs[n] for n in args.threads)
        sa, sb = a.model.state_dict(), b.model.state_dict()
        abs_diff = max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())
        rel_diff = max(
            float((sa[k].double() - sb[k].double()).abs().max() / sa[k].double().abs().max().clamp_min(1e-30))
            for k in sa if sa[k].is_floating_point() and sa[k].numel()
        )
        identical = all(torch.equal(sa[k], sb[k]) for k in sa)
        row = {
            "arch": args.arch, "seed": seed, "threads": list(args.threads), "bitwise_identical": identical,
            "max_abs_weight_diff": abs_diff, "max_rel_weight_diff": rel_diff,
            "test_accuracy": [a.metrics["test_accuracy"], b.metrics["test_accuracy"]],
            "seconds": [round(a.metrics["measured_s"], 1), round(b.metrics["measured_s"], 1)],
            "key": a.key[:12],
        }
        rows.append(row)
        print(json.dumps(row))
    worst = max(r["max_abs_weight_diff"] for r in rows)
    print(f"worst max |w_{args.threads[0]} - w_{args.threads[1]}| over seeds {args.seeds}: {worst:.3g}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
