"""Time ``fisherscope audit`` of lenet5 on MNIST test images, with a stage breakdown and peak memory.

Run: ``python benchmarks/audit.py [--sizes 250,1000] [--checkpoint CKPT] [--ensemble standard] [--threads 2]
[--nproc 2]``.

The model: ``--checkpoint`` (a fisherscope checkpoint of lenet5 on MNIST), or lenet5 trained once
with its preset into a temporary cache (``fisherscope train lenet5 --dataset mnist``; the training
time is printed but not counted). Data: ``mnist`` from ``$FISHERSCOPE_DATA``. For each N a fresh
interpreter runs ``fisherscope audit --model CKPT --data mnist --limit N --ensemble standard --json``
(the standard threat models for MNIST-like data: L∞ 0.1 and 0.3, L2 1 and 2) and reports the wall
time, the peak resident memory of that process (``ru_maxrss``) and the time per stage, taken from
the finish times of the run's cells in ``results.jsonl`` (each cell is charged the time since the
cell before it finished; the first one also carries loading the model and data). Issue 19's target:
N = 1000 in at most 10 minutes on 2 CPU cores.

``--nproc P`` runs it as ``fisherscope audit ... --workers P`` (the command relaunches itself as a
torchrun of P ranks, which claim the cells as they meet them; use ``--threads 1`` with ``--nproc 2``
on 2 cores). The peak memory is then that of the largest single process (``RUSAGE_CHILDREN``), so
the machine holds about P times it; the stage times come from the one store both ranks write,
whose cells finish interleaved, so they are shares of the wall time, not per-rank compute.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
t0 = time.time()
from fisherscope.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = 0
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"start": t0, "seconds": time.time() - t0, "cpu_seconds": ru.ru_utime + ru.ru_stime,
                  "peak_mib": ru.ru_maxrss / 1024, "code": code}), file=sys.stderr)
"""

# the same with --workers P: the ranks are grandchildren (torchrun's), waited for by the launcher
TORCHRUN = r"""
import json, resource, subprocess, sys, time
t0 = time.time()
res = subprocess.run([sys.executable, "-m", "fisherscope", *sys.argv[2:], "--workers", sys.argv[1]])
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"start": t0, "seconds": time.time() - t0, "cpu_seconds": ru.ru_utime + ru.ru_stime,
                  "peak_mib": ru.ru_maxrss / 1024, "code": res.returncode}), file=sys.stderr)
"""


def _stage(cell: str) -> str:
    head = cell.split("#")[0]
    parts = head.split("/")
    if parts[0] == "robust":
        return f"robust {parts[1]} {parts[2]}"
    return parts[0]


def _breakdown(run_dir: Path, start: float) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    prev = start
    for line in (run_dir / "results.jsonl").read_text().splitlines():
        rec = json.loads(line)
        t = dt.datetime.fromisoformat(rec["time"]).timestamp()
        out[_stage(rec["cell"])] += max(0.0, t - prev)
        prev = t
    return dict(out)


def _checkpoint(args: argparse.Namespace, cache: Path) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "fisherscope", "train", "lenet5", "--dataset", "mnist", "--quiet",
                          "--cache-dir", str(cache)], capture_output=True, text=True, check=True)
    print(f"trained lenet5 in {time.perf_counter() - t0:.0f} s (not counted): {' '.join(res.stdout.split())}")
    return next(cache.glob("lenet5-*.pt"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="250,1000")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--ensemble", default="standard")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nproc", type=int, default=1, help="processes: fisherscope audit --workers P (1: one process)")
    ap.add_argument("--extra", default="", help="more audit options, e.g. '--set detect_samples=200'")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MPLBACKEND": "Agg"}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _checkpoint(args, Path(tmp) / "cache")
        rows = []
        for n in [int(s) for s in args.sizes.split(",")]:
            out = Path(tmp) / f"runs{n}"
            audit = ["audit", "--model", str(ckpt), "--data", "mnist", "--limit", str(n),
                     "--ensemble", args.ensemble, "--quiet", "--json", "--out", str(out), *args.extra.split()]
            launch = [TORCHRUN, str(args.nproc)] if args.nproc > 1 else [CHILD]
            res = subprocess.run([sys.executable, "-c", *launch, *audit], capture_output=True, text=True, env=env)
            info = json.loads(res.stderr.strip().splitlines()[-1])
            if info["code"] not in (0, None):
                print(res.stderr[-3000:])
                raise SystemExit(f"audit of N={n} failed")
            (run_dir,) = out.iterdir()
            summary = json.loads((run_dir / "summary.json").read_text())
            stages = _breakdown(run_dir, info["start"])
            rows.append((n, info, stages, summary))
            print(f"N={n}, {args.nproc} process(es) x {args.threads} thread(s): {info['seconds']:.0f} s wall, {info['cpu_seconds']:.0f} s CPU, peak RSS "
                  f"{info['peak_mib']:.0f} MiB; {summary['headline']}")
            for k, v in sorted(stages.items(), key=lambda kv: -kv[1]):
                print(f"    {k:<22} {v:7.0f} s")
        print("\n| N | wall time (s) | CPU time (s) | peak RSS (MiB) | " + " | ".join(sorted(rows[-1][2])) + " |")
        print("|---|---|---|---|" + "---|" * len(rows[-1][2]))
        for n, info, stages, _ in rows:
            print(f"| {n} | {info['seconds']:.0f} | {info['cpu_seconds']:.0f} | {info['peak_mib']:.0f} | "
                  + " | ".join(f"{stages.get(k, 0):.0f}" for k in sorted(rows[-1][2])) + " |")


if __name__ == "__main__":
    main()
