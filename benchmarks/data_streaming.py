"""Peak memory of streaming a user's data with ``open_data``: 1k against 10k images.

Run: ``python benchmarks/data_streaming.py [--sizes 1000,10000] [--batch-size 256]``.

For each size N, a fresh interpreter writes (once, into a temporary folder) an image folder of N
28 × 28 grey PNGs in 10 class folders and a ``.npz`` of N 32 × 32 × 3 images, then iterates
``open_data(source, batch_size=256)`` to the end, summing the pixels (so every batch is decoded
and touched), and reports its peak resident memory (``ru_maxrss``) above the interpreter's
memory after the imports, and the time. Streaming means the peak does not grow with N; a
``materialize()`` of the same source is shown for contrast (it holds N images).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
from fisherscope.data import open_data
source, batch_size, materialize = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
data = open_data(source, batch_size=batch_size)
if materialize:
    ds = data.materialize()
    total, n = float(ds.x.sum()), len(ds)
else:
    total, n = 0.0, 0
    for x, y in data:
        total += float(x.sum()); n += len(y)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"n": n, "seconds": dt, "extra_mib": (peak - base) / 1024, "peak_mib": peak / 1024}))
"""


def _write(root: Path, n: int, kinds: str) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = root / f"folder{n}"
    for i in range(n if "imagefolder" in kinds else 0):
        d = folder / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(d / f"{i:06d}.png")
    npz = root / f"data{n}.npz"
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.uint8)
    np.savez_compressed(npz, x_train=x[:1], y_train=y[:1], x_test=x, y_test=y)
    return folder, npz


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--kinds", default="imagefolder,npz")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {"PYTHONPATH": src, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            folder, npz = _write(Path(tmp), n, args.kinds)
            for kind, source in (("imagefolder", folder), ("npz", npz)):
                if kind not in args.kinds.split(","):
                    continue
                for mat in ("0", "1"):
                    out = subprocess.run([sys.executable, "-c", CHILD, str(source), str(args.batch_size), mat],
                                         capture_output=True, text=True, env=env, check=True)
                    r = json.loads(out.stdout)
                    rows.append({"kind": kind, "mode": "materialize" if mat == "1" else "stream", **r})
    print(f"{'source':<12} {'mode':<12} {'images':>7} {'seconds':>8} {'extra MiB':>10} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['kind']:<12} {r['mode']:<12} {r['n']:>7} {r['seconds']:>8.2f} {r['extra_mib']:>10.1f} "
              f"{r['peak_mib']:>9.1f}")


if __name__ == "__main__":
    main()
