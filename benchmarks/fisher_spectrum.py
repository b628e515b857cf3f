"""Input-space Fisher spectrum: ours against the floor, Algorithm 1 and Zhao's Table 1.

Run: ``python benchmarks/fisher_spectrum.py [--quick]``. Prints ratios measured in one
process (interleaved repeats); docs/BENCHMARKS.md records them. Timings use random
weights: the cost does not depend on the values.

1. floor = one batched forward + one input-gradient backward (batch 64), against the
   full ``exact`` spectrum (all K − 1 eigenpairs), on mnist_cnn and vgg_small (3×32×32).
2. Algorithm 1 in its best reading for 10 classes (per sample: the K gradients g_y once,
   then power iteration η ← Σ p_y (g_yᵀη) g_y until ‖η_{k+1} − η_k‖ < 1e-6) against our
   batched exact top eigenpair.
3. Zhao's Table 1 methods (seconds per sample ± std): dense eigendecomposition, Lanczos,
   alias + Lanczos, power iteration, alias + power iteration, plus exact.
4. A synthetic 1000-class head: ``lanczos`` with exact products to 1e-3 relative error
   against Algorithm 1 as written (alias sampling of K/5 classes redrawn every iteration).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import header, interleaved, med, spread  # noqa: E402

from fisherscope.fisher import alias_sample, alias_table, fisher_spectrum  # noqa: E402
from fisherscope.models import build_model  # noqa: E402


def floor_fn(model: nn.Module, x: torch.Tensor):
    def run():
        xr = x.clone().requires_grad_(True)
        out = model(xr)
        torch.autograd.grad(out.logsumexp(1).sum(), xr)

    return run


def algorithm1_top(model: nn.Module, x: torch.Tensor, tol: float = 1e-6, max_iter: int = 10_000,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Zhao's Algorithm 1 (exact expectation, best reading), one sample at a time."""
    g = torch.Generator().manual_seed(seed)
    lams, vecs = [], []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        logp = torch.log_softmax(model(xi), 1)[0]
        k = logp.shape[0]
        grads = torch.autograd.grad(logp, xi, torch.eye(k), is_grads_batched=True)[0].reshape(k, -1)
        p = logp.detach().exp()
        eta = torch.randn(grads.shape[1], generator=g)
        eta /= eta.norm()
        for _ in range(max_iter):
            new = (p * (grads @ eta)) @ grads
            new /= new.norm()
            done = (new - eta).norm() < tol
            eta = new
            if done:
                break
        lams.append((p * (grads @ eta) ** 2).sum())
        vecs.append(eta)
    return torch.stack(lams), torch.stack(vecs)


def algorithm1_alias(model: nn.Module, x: torch.Tensor, m: int, iters: int, tol: float = 1e-3,
                     seed: int = 0) -> torch.Tensor:
    """Algorithm 1 as written: alias table once, m classes redrawn and their gradients
    recomputed every iteration (vectorised over the m classes), per sample."""
    g = torch.Generator().manual_seed(seed)
    lams = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        logp = torch.log_softmax(model(xi), 1)[0]
        p = logp.detach().exp()
        prob, alias = alias_table(p.unsqueeze(0))
        eta = torch.randn(xi.numel(), generator=g)
        eta /= eta.norm()
        lam = torch.tensor(0.0)
        for _ in range(iters):
            ys = alias_sample(prob, alias, m, generator=g)[0]
            onehot = torch.nn.functional.one_hot(ys, p.shape[0]).to(logp.dtype)
            gy = torch.autograd.grad(logp, xi, onehot, is_grads_batched=True, retain_graph=True)[0].reshape(m, -1)
            new = ((gy @ eta) @ gy) / m
            lam = ((gy @ eta) ** 2).mean()
            new /= new.norm()
            done = (new - eta).norm() < tol
            eta = new
            if done:
                break
        lams.append(lam)
    return torch.stack(lams)


def dense_top(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Dense eigendecomposition of G_x per sample (Table 1, first column)."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_(True)
        logp = torch.log_softmax(model(xi), 1)[0]
        k = logp.shape[0]
        grads = torch.autograd.grad(logp, xi, torch.eye(k), is_grads_batched=True)[0].reshape(k, -1)
        p = logp.detach().exp()
        gmat = grads.T @ (p.unsqueeze(1) * grads)
        out.append(torch.linalg.eigvalsh(gmat)[-1])
    return torch.stack(out)


class ThousandHead(nn.Module):
    """A small conv net with a 1000-class head (ImageNet-size output, CIFAR-size input)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        )
        self.head = nn.Linear(32 * 8 * 8, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and samples (smoke run)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--parts", default="1234", help="which parts to run, e.g. 12")
    ap.add_argument("--table1-vgg", action="store_true", help="part 3 also on random-weight vgg_small (slow)")
    args = ap.parse_args()
    torch.manual_seed(0)
    rep = 2 if args.quick else 5
    results: dict[str, object] = {"env": header()}
    print(header())

    models = {
        "mnist_cnn": (build_model("mnist_cnn").eval(), torch.rand(64, 1, 28, 28)),
        "vgg_small": (build_model("vgg_small", in_channels=3, input_size=32).eval(), torch.rand(64, 3, 32, 32)),
    }
    parts = set(args.parts)
    if "1" in parts:
        _part1(models, rep, results)
    if "2" in parts:
        _part2(models, rep, results, args.quick)
    if "3" in parts:
        _part3(models, rep, results, args.quick)
    if "4" in parts:
        _part4(results, args.quick)
    print("\nGPU rows (vgg_small 32x32x3 per sample vs the paper's 0.25 s): not measured here (no GPU).")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=lambda o: None if isinstance(o, float) and math.isnan(o) else o))


def backward_floor_fn(model: nn.Module, x: torch.Tensor):
    """One forward plus K − 1 input-gradient backward passes on one graph: what any exact
    method that forms the K − 1 independent rows of the Jacobian has to pay."""

    def run():
        xr = x.clone().requires_grad_(True)
        out = model(xr)
        k = out.shape[1]
        for j in range(k - 1):
            torch.autograd.grad(out[:, j].sum(), xr, retain_graph=j < k - 2)

    return run


def _part1(models, rep, results):
    print("\n1. exact spectrum (all K-1 eigenpairs) vs floor (forward + input-gradient backward), batch 64")
    for name, (model, x) in models.items():
        t = interleaved({"floor": floor_fn(model, x), "fwd+(K-1)bwd": backward_floor_fn(model, x),
                         "exact": lambda m=model, xx=x: fisher_spectrum(m, xx)}, repeats=rep)
        ratio = med(t["exact"]) / med(t["floor"])
        kfloor = med(t["fwd+(K-1)bwd"]) / med(t["floor"])
        results[f"floor/{name}"] = {"floor_s": med(t["floor"]), "fwd_k1_bwd_s": med(t["fwd+(K-1)bwd"]),
                                    "exact_s": med(t["exact"]), "multiple": ratio, "k1_backward_multiple": kfloor}
        print(f"  {name:10s} floor {med(t['floor']) * 1e3:8.1f} ms   fwd+(K-1) bwd {med(t['fwd+(K-1)bwd']) * 1e3:8.1f} ms ({kfloor:4.2f}x)"
              f"   exact {med(t['exact']) * 1e3:8.1f} ms   multiple {ratio:5.2f}x")


def _part2(models, rep, results, quick):
    print("\n2. top eigenpair: batched exact vs Algorithm 1 (best reading, per sample, K gradients once), batch 64")
    for name, (model, x) in models.items():
        xs = x[:16] if quick else x
        ours = fisher_spectrum(model, xs, k=1)
        lam_ref, vec_ref = algorithm1_top(model, xs)
        rel = ((ours.top_eigenvalue - lam_ref).abs() / lam_ref).max().item()
        cos = (ours.top_eigenvector.flatten(1) * vec_ref).sum(1).abs().min().item()
        t = interleaved({"alg1": lambda m=model, xx=xs: algorithm1_top(m, xx),
                         "ours": lambda m=model, xx=xs: fisher_spectrum(m, xx, k=1)}, repeats=max(2, rep - 2))
        ratio = med(t["alg1"]) / med(t["ours"])
        results[f"alg1/{name}"] = {"alg1_s_per_sample": med(t["alg1"]) / len(xs), "ours_s_per_sample": med(t["ours"]) / len(xs),
                                   "speedup": ratio, "max_rel_eig_diff": rel, "min_abs_cos": cos}
        print(f"  {name:10s} Algorithm 1 {med(t['alg1']) / len(xs) * 1e3:7.2f} ms/sample   ours {med(t['ours']) / len(xs) * 1e3:7.2f} ms/sample"
              f"   speed-up {ratio:5.1f}x   (eigenvalue rel. diff {rel:.1e}, |cos| >= {1 - cos:.1e} from 1)")



def _trained_mnist_cnn(n: int):
    """The trained mnist_cnn (checkpoint cache) on MNIST test images; None without MNIST."""
    from fisherscope.data import load_dataset
    from fisherscope.exceptions import DatasetNotFoundError
    from fisherscope.training import train_model

    try:
        test = load_dataset("mnist", split="test")
    except DatasetNotFoundError:
        return None
    print("  (loading or training the cached mnist_cnn)")
    model = train_model("mnist_cnn", "mnist").model.eval()
    return model, test.x[:n].float()


def _part3(models, rep, results, quick):
    import warnings

    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    trained = _trained_mnist_cnn(16 if quick else 32)
    setups = {}
    if trained is not None:
        setups["mnist_cnn (trained, MNIST test images)"] = trained
    else:
        print("\n3. (MNIST not found under FISHERSCOPE_DATA: the trained-model table is skipped)")
    if trained is None or "--table1-vgg" in sys.argv:
        # iteration counts depend on the weights' eigengaps: random weights are not
        # representative (power iteration needs 80-300 products here), so opt-in only
        model, x = models["vgg_small"]
        setups["vgg_small (random weights, 3x32x32)"] = (model, x[:16] if quick else x[:32])
    results["table1"] = {}
    for title, (model, xb) in setups.items():
        print(f"\n3. Zhao Table 1, top eigenpair, {title}: seconds per sample (median ± std over repeats),"
              " iterative methods to a residual of 1e-4 (at most 300 products)")
        exact = fisher_spectrum(model, xb, k=1).top_eigenvalue
        m = 2  # about K/5 classes, as Zhao
        runs = {
            "dense eigendecomposition": (lambda md=model, xx=xb: dense_top(md, xx[:2]), 2, None),
            "Lanczos": (lambda md=model, xx=xb: fisher_spectrum(md, xx, k=1, method="lanczos", tol=1e-4, max_iter=300, generator=gen()), len(xb), None),
            f"alias + Lanczos (m={m})": (lambda md=model, xx=xb, m=m: fisher_spectrum(md, xx, k=1, method="lanczos", class_samples=m, tol=1e-4, max_iter=300, generator=gen()), len(xb), None),
            "power iteration": (lambda md=model, xx=xb: fisher_spectrum(md, xx, k=1, method="power", tol=1e-4, max_iter=300, generator=gen()), len(xb), None),
            f"alias + power (m={m})": (lambda md=model, xx=xb, m=m: fisher_spectrum(md, xx, k=1, method="power", class_samples=m, tol=1e-4, max_iter=300, generator=gen()), len(xb), None),
            "exact (ours)": (lambda md=model, xx=xb: fisher_spectrum(md, xx, k=1), len(xb), None),
        }
        table = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = interleaved({k: f for k, (f, _, _) in runs.items()}, repeats=max(2, rep - 2))
            for k, (f, n, _) in runs.items():
                out = f()
                if isinstance(out, torch.Tensor):
                    lam, iters, conv = out, None, None
                    ref = exact[: len(out)]
                else:
                    lam, iters, conv = out.top_eigenvalue, out.iterations, out.converged.float().mean().item()
                    ref = exact
                err = ((lam - ref).abs() / ref).max().item()
                per = [s / n for s in t[k]]
                table[k] = {"s_per_sample": med(per), "std": spread(per), "products": iters,
                            "converged_fraction": conv, "max_rel_eig_err": err, "batch": n}
                extra = "" if iters is None else f", {iters} products, {conv:.0%} converged"
                print(f"  {k:28s} {med(per):.5f} ± {spread(per):.5f} s   (batch {n}{extra}; max rel. error vs exact {err:.1e})")
        print("  paper (CIFAR-10, their GPU): 1.49 / 0.30 / 0.15 / 0.28 / 0.25 s")
        results["table1"][title] = table


def _part4(results, quick):
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    print("\n4. 1000-class head: lanczos (exact products, tol for 1e-3 rel. error) vs Algorithm 1 as written"
          " (alias m=200 = K/5, redrawn every iteration, at most 50 iterations)")
    print("   The sampled method's error depends on how spread the softmax is, so three head scales:"
          " near-uniform (random init), spread, and peaked like a trained ImageNet head.")
    rows = {}
    for scale in (1.0, 8.0, 32.0):
        torch.manual_seed(0)
        big = ThousandHead().eval()
        with torch.no_grad():
            big.head.weight.mul_(scale)
        xk = torch.rand(8 if quick else 16, 3, 32, 32)
        with torch.no_grad():
            p = big(xk).softmax(1)
        entropy = -(p * p.clamp_min(1e-30).log()).sum(1).mean().item()
        pmax = p.max(1).values.mean().item()
        exact = fisher_spectrum(big, xk, k=1).top_eigenvalue
        t0 = time.perf_counter()
        ours = fisher_spectrum(big, xk, k=1, method="lanczos", tol=1e-3, max_iter=300, generator=gen())
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = algorithm1_alias(big, xk, m=200, iters=50)
        t_ref = time.perf_counter() - t0
        err_ours = ((ours.top_eigenvalue - exact).abs() / exact).max().item()
        err_ref = (ref - exact).abs() / exact
        rows[f"scale{scale:g}"] = {
            "mean_max_prob": pmax, "mean_entropy_nats": entropy,
            "lanczos_s_per_sample": t_ours / len(xk), "alg1_alias_s_per_sample": t_ref / len(xk),
            "speedup": t_ref / t_ours, "lanczos_max_rel_err": err_ours,
            "alg1_alias_mean_rel_err": err_ref.mean().item(), "alg1_alias_max_rel_err": err_ref.max().item(),
            "lanczos_iterations": ours.iterations,
        }
        print(f"  head x{scale:<4g} mean max p {pmax:.3f}, entropy {entropy:.2f} nats:  lanczos {t_ours / len(xk):.4f} s/sample"
              f" ({ours.iterations} products, max rel. err {err_ours:.1e})   Algorithm 1 + alias {t_ref / len(xk):.4f} s/sample"
              f" (mean rel. err {err_ref.mean():.1%}, max {err_ref.max():.1%})   speed-up {t_ref / t_ours:.1f}x")
    results["k1000"] = rows


if __name__ == "__main__":
    main()
