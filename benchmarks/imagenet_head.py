"""ImageNet-size head: ResNet-50 (random weights), 3×224×224, K = 1000 classes.

Run: ``python benchmarks/imagenet_head.py [--n 2] [--max-iter 20] [--threads 1]``.
Each task runs in a fresh subprocess, so its peak resident set size (``ru_maxrss``, the
whole process: weights, activations, autograd buffers, allocator slack) is its own;
the ``model`` row is the process with the network built and one no-grad forward of the
batch, the floor every other row includes. docs/BENCHMARKS.md records the numbers.

Tasks (all on the same seeded weights and inputs):

- ``model``: build ResNet-50, one forward of the n samples (no grad);
- ``exact``: ``fisher_spectrum(method="exact")``, which must refuse K = 1000 at this D
  (the Jacobian rows would be 3.0 GB per sample) — the time to the error is printed;
- ``lanczos``: ``fisher_spectrum(k=5, method="lanczos", max_iter=M)``;
- ``ossa``: ``OSSA(eps=1.0, method="lanczos", max_iter=M)``, top eigenvector + the sign
  choice (three forwards of the candidates);
- ``eigen_features``: ``fisher_eigenvalues(k=5, method="lanczos", max_iter=M)``, the
  detector features of Zhao et al.;
- ``param_scores``: ``param_fisher_scores(reduction="two_class")`` (trace, form,
  normalised: Martin & Elster's eq. 7 reduction, one backward pass per score). The
  ``full`` trace needs K − 1 = 999 backward passes per sample; its cost is printed as an
  estimate (999 × the two-class trace), not measured.

Random weights: the cost does not depend on the values, but the spectrum does — the
convergence flags of Lanczos are printed with the timings.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

TASKS = ("model", "exact", "lanczos", "ossa", "eigen_features", "param_scores")


def _rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(task: str, n: int, max_iter: int, threads: int) -> dict:
    import warnings

    import torch

    torch.set_num_threads(threads)
    from fisherscope.attacks import OSSA
    from fisherscope.exceptions import ConvergenceWarning
    from fisherscope.features import fisher_eigenvalues, param_fisher_scores
    from fisherscope.fisher import fisher_spectrum
    from fisherscope.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet50").eval()
    x = torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    out: dict = {"task": task, "n": n, "max_iter": max_iter, "threads": threads}
    gen = torch.Generator().manual_seed(2)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if task == "exact":
            try:
                fisher_spectrum(model, x[:1], k=5, method="exact")
                out["refused"] = False
            except ValueError as err:
                out["refused"] = True
                out["message"] = str(err)
        elif task == "lanczos":
            spec = fisher_spectrum(model, x, k=5, method="lanczos", max_iter=max_iter, generator=gen)
            out["eigenvalues"] = spec.eigenvalues.tolist()
            out["converged"] = spec.converged.tolist()
            out["iterations"] = spec.iterations
        elif task == "ossa":
            res = OSSA(eps=1.0, method="lanczos", max_iter=max_iter).run(model, x, y, generator=gen)
            out["fooled"] = res.success.tolist()
            out["applied_l2"] = res.extras["applied_l2"].tolist()
        elif task == "eigen_features":
            out["features"] = fisher_eigenvalues(model, x, k=5, method="lanczos", max_iter=max_iter,
                                                 generator=gen).tolist()
        elif task == "param_scores":
            out["scores"] = param_fisher_scores(model, x, reduction="two_class").tolist()
            t1 = time.perf_counter()
            param_fisher_scores(model, x, scores=("trace",), reduction="two_class")
            out["two_class_trace_s_per_sample"] = (time.perf_counter() - t1) / n
    out["s_per_sample"] = (time.perf_counter() - t0) / n
    out["unconverged_warnings"] = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    out["peak_rss_mib"] = _rss_mib()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2, help="samples (2-4)")
    ap.add_argument("--max-iter", type=int, default=20, help="Lanczos iterations (matrix-vector products)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tasks", nargs="*", default=list(TASKS), choices=TASKS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.n, args.max_iter, args.threads)))
        return
    src = str(Path(__file__).resolve().parents[1] / "src")
    print(f"ResNet-50, random weights, 3x224x224, K = 1000; n = {args.n}, Lanczos max_iter = {args.max_iter}, "
          f"{args.threads} thread(s); one subprocess per task (peak RSS is per task)")
    rows = []
    for task in args.tasks:
        cmd = [sys.executable, __file__, "--child", task, "--n", str(args.n), "--max-iter", str(args.max_iter),
               "--threads", str(args.threads)]
        env = {**__import__("os").environ, "PYTHONPATH": src, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            print(f"{task}: failed\n{proc.stderr[-2000:]}")
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        extra = ""
        if task == "exact":
            extra = f"refused={row['refused']}: {row.get('message', '')[:160]}..."
        elif task == "lanczos":
            extra = (f"iterations={row['iterations']} converged={row['converged']} "
                     f"top eigenvalues={[round(v[0], 4) for v in row['eigenvalues']]}")
        elif task == "ossa":
            extra = f"fooled={row['fooled']} applied L2={[round(v, 3) for v in row['applied_l2']]}"
        elif task == "param_scores":
            est = 999 * row["two_class_trace_s_per_sample"]
            extra = (f"two-class trace alone {row['two_class_trace_s_per_sample']:.2f} s/sample; full trace "
                     f"(K - 1 = 999 backward passes) estimated {est / 60:.0f} min/sample")
        print(f"{task:15s} {row['s_per_sample']:8.2f} s/sample   peak RSS {row['peak_rss_mib']:8.0f} MiB   {extra}")
    print("JSON " + json.dumps(rows))


if __name__ == "__main__":
    main()
