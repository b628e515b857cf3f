"""Parameter-space Fisher trace, quadratic form and FIS: ours against the authors' approach.

Run: ``python benchmarks/param_fisher.py [--quick] [--json out.json]``. Prints per-sample
times and ratios measured in one process with interleaved repeats; docs/BENCHMARKS.md
records them. Model: ``mnist_cnn`` at Martin & Elster's operating point
(``mnist_cnn@paper`` from the checkpoint cache, trained if missing; random weights with
``--random-weights``), on MNIST test images (``$FISHERSCOPE_DATA``), CPU.

Reference: a re-implementation of the approach of the authors' public code
(joemrt/fisheradversarial), batch size 1, on a log-softmax copy of the model:

- trace: for every parameter tensor × class, two full backward passes (∂ log p_j and
  ∂ p_j), then Σ ⟨∂ log p_j, ∂ p_j⟩ over that tensor — the exact trace;
- direction: v = ∇θ max_j log p_j (one backward), not normalised;
- form: central finite differences (eps 1e-3) one parameter tensor at a time,
  Σ_tensors Σ_j Δlog p_j Δp_j / (2 eps)² — the block-diagonal sum Σ_b v_bᵀ F_bb v_b,
  which drops the cross-tensor terms of eq. 5;
- FIS (two-class, ``pred_approx=-1``): per tensor × {ŷ, not ŷ}, input gradients of
  log p_j and p_j at θ_b ± eps v_b (four backward passes), Σ_b Σ_j (Δ_b ∂x log p_j)
  (Δ_b ∂x p_j) / (2 eps)² — again a sum over tensors of products, not the product of
  the sums of eq. 13.

Ours: :func:`param_fisher_trace` (full), :func:`param_fisher_form` (jvp, unnormalised v,
full) and :func:`fisher_sensitivity` (two-class, unnormalised v, jvp), batched (``vmap``
over samples; the two ``nn.Linear`` layers, 98% of the parameters, in factored form).

The ratios depend strongly on the machine's load: the reference runs thousands of tiny
batch-1 kernels, which suffer far more than our batched ones when the cores are shared.
Report the load average with the numbers (``uptime``).

Accuracy: every value is compared with a float64 oracle written out naively (per sample,
per class, full parameter gradients; FIS from double backward in float64).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import header, interleaved, med  # noqa: E402

from fisherscope.attacks import MIFGSM  # noqa: E402
from fisherscope.fisher import fisher_sensitivity, param_fisher_form, param_fisher_trace  # noqa: E402
from fisherscope.models import build_model  # noqa: E402

# ------------------------------------------------------------------ the reference


class LogSoftmaxNet(nn.Module):
    """The authors' convention: the network outputs log-probabilities."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.model(x), dim=1)


def ref_trace(net: nn.Module, x1: torch.Tensor) -> torch.Tensor:
    """Exact trace, loops over parameter tensors × classes, two backward passes each."""
    k = net(x1).shape[1]
    total = torch.zeros(())
    for par in net.parameters():
        for j in range(k):
            net.zero_grad()
            net(x1)[0, j].backward()
            g_log = par.grad.clone()
            net.zero_grad()
            torch.softmax(net(x1), dim=1)[0, j].backward()
            total = total + (g_log * par.grad).sum()
    net.zero_grad()
    return total.detach()


def ref_direction(net: nn.Module, x1: torch.Tensor) -> list[torch.Tensor]:
    net.zero_grad()
    net(x1).max().backward()
    v = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    return v


@torch.no_grad()
def ref_form(net: nn.Module, x1: torch.Tensor, v: list[torch.Tensor], eps: float = 1e-3) -> torch.Tensor:
    """Central differences one parameter tensor at a time (block-diagonal sum)."""
    total = torch.zeros(())
    for par, vb in zip(net.parameters(), v, strict=True):
        old = par.data.clone()
        par.data += eps * vb
        lp_plus = net(x1)
        par.data -= 2 * eps * vb
        lp_minus = net(x1)
        par.data = old
        total = total + ((lp_plus - lp_minus) * (lp_plus.exp() - lp_minus.exp())).sum() / (2 * eps) ** 2
    return total


def ref_fis(net: nn.Module, x1: torch.Tensor, v: list[torch.Tensor], eps: float = 1e-3) -> torch.Tensor:
    """Two-class FIS: per tensor × {ŷ, not ŷ}, four input-gradient backward passes."""
    k = net(x1).shape[1]
    pred = int(net(x1).argmax())
    keep = torch.arange(k) != pred

    def reduced(x: torch.Tensor) -> torch.Tensor:
        out = net(x)
        return torch.cat([out[:, pred : pred + 1], torch.logsumexp(out[:, keep], dim=1, keepdim=True)], 1)

    x = x1.detach().clone().requires_grad_(True)

    def x_grad(value: torch.Tensor) -> torch.Tensor:
        value.backward()
        g = x.grad.detach().clone()
        x.grad = None
        net.zero_grad()
        return g

    total = torch.zeros_like(x1)
    for par, vb in zip(net.parameters(), v, strict=True):
        for j in range(2):
            old = par.data.clone()
            par.data += eps * vb
            g_log_plus = x_grad(reduced(x)[0, j])
            g_p_plus = x_grad(torch.softmax(reduced(x), 1)[0, j])
            par.data -= 2 * eps * vb
            g_log_minus = x_grad(reduced(x)[0, j])
            g_p_minus = x_grad(torch.softmax(reduced(x), 1)[0, j])
            par.data = old
            total = total + (g_log_plus - g_log_minus) * (g_p_plus - g_p_minus) / (2 * eps) ** 2
    return total


def run_reference(net: nn.Module, x: torch.Tensor, what: str) -> torch.Tensor:
    out = []
    for i in range(x.shape[0]):
        x1 = x[i : i + 1]
        if what == "trace":
            out.append(ref_trace(net, x1))
        elif what == "form":
            out.append(ref_form(net, x1, ref_direction(net, x1)))
        else:
            out.append(ref_fis(net, x1, ref_direction(net, x1))[0])
    return torch.stack(out)


def run_ours(model: nn.Module, x: torch.Tensor, what: str) -> torch.Tensor:
    if what == "trace":
        return param_fisher_trace(model, x)
    if what == "form":
        return param_fisher_form(model, x)
    return fisher_sensitivity(model, x, normalized=False)


# ---------------------------------------------------------------------- oracles


def oracle(model64: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """float64, per sample and class, full parameter gradients; FIS by double backward."""
    params = list(model64.parameters())
    traces, forms, fis = [], [], []
    for i in range(x.shape[0]):
        x1 = x[i : i + 1].double().clone().requires_grad_(True)
        z = model64(x1)[0]
        log_p = torch.log_softmax(z, 0)
        p = log_p.exp()
        grads = []
        for c in range(z.shape[0]):
            g = torch.autograd.grad(log_p[c], params, retain_graph=True)
            grads.append(torch.cat([t.reshape(-1) for t in g]))
        g = torch.stack(grads)  # (K, P)
        pred = int(p.argmax())
        v = g[pred]
        traces.append((p.detach() * g.pow(2).sum(1)).sum())
        forms.append((p.detach() * (g @ v).pow(2)).sum())
        # FIS, two classes: Σ_j ∂x (v·∇θ p_j) ⊙ ∂x (v·∇θ log p_j), v fixed
        v_list = [t.detach() for t in torch.split(v, [q.numel() for q in params])]
        p_hat = torch.softmax(z, 0)[pred]
        log_pair = torch.stack([torch.log(p_hat), torch.logsumexp(z[torch.arange(z.shape[0]) != pred], 0) - torch.logsumexp(z, 0)])
        total = torch.zeros_like(x1)
        for j in range(2):
            terms = []
            for f in (log_pair[j].exp(), log_pair[j]):
                gp = torch.autograd.grad(f, params, retain_graph=True, create_graph=True)
                dv = sum((a * b.reshape(a.shape)).sum() for a, b in zip(gp, v_list, strict=True))
                (gx,) = torch.autograd.grad(dv, x1, retain_graph=True)
                terms.append(gx)
            total = total + terms[0] * terms[1]
        fis.append(total[0].detach())
    return {"trace": torch.stack(traces), "form": torch.stack(forms), "fis": torch.stack(fis)}


def rel_errors(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sample relative error (max over elements, relative to the sample's largest |ref|)."""
    a, ref = a.double().reshape(len(a), -1), ref.double().reshape(len(ref), -1)
    return (a - ref).abs().amax(1) / ref.abs().amax(1)


# -------------------------------------------------------------------------- main


def load_model_and_data(random_weights: bool, n: int) -> tuple[nn.Module, torch.Tensor, str]:
    torch.manual_seed(0)
    if random_weights:
        return build_model("mnist_cnn").eval(), torch.rand(n, 1, 28, 28), "mnist_cnn, random weights, uniform noise inputs"
    from fisherscope.data import load_dataset
    from fisherscope.experiments import Context
    from fisherscope.experiments.common import trained_model

    ctx = Context(progress=False)
    trained = trained_model("mnist_cnn", "mnist", ctx, seed=0, preset="mnist_cnn@paper")
    test = load_dataset("mnist", "test", data_dir=ctx.data_dir)
    return trained.model.eval(), test.x[:n].clone(), f"mnist_cnn@paper (test acc {trained.metrics['test_accuracy']:.4f}), MNIST test images"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and samples (smoke run)")
    ap.add_argument("--random-weights", action="store_true", help="skip the checkpoint: random weights, noise inputs")
    ap.add_argument("--batch", type=int, default=32, help="batch size of ours (per-sample time = time / batch)")
    ap.add_argument("--only", nargs="+", choices=["trace", "form", "fis"], default=["trace", "form", "fis"],
                    help="time only these quantities")
    ap.add_argument("--no-accuracy", action="store_true", help="skip the float64-oracle accuracy part")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    rep = 2 if args.quick else 3
    n_ref = 2 if args.quick else 3
    model, x, what_model = load_model_and_data(args.random_weights, max(args.batch, 8))
    for p in model.parameters():
        p.requires_grad_(True)
    net = LogSoftmaxNet(model).eval()
    results: dict[str, object] = {"env": header(), "load_average_1min": os.getloadavg()[0], "model": what_model, "batch_ours": args.batch, "n_ref": n_ref,
                                  "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}
    print(header(), f"| load average {os.getloadavg()[0]:.2f}")
    print(what_model)
    print(f"ours: batch {args.batch}; reference: batch 1, {n_ref} samples per repeat; per-sample medians over {rep} interleaved repeats\n")

    xb, xr = x[: args.batch], x[:n_ref]
    print(f"{'quantity':8s} {'reference ms/sample':>20s} {'ours ms/sample':>15s} {'speed-up':>9s}   target")
    targets = {"trace": 20, "form": 20, "fis": 10}
    for what in args.only:
        t = interleaved({"ref": lambda w=what: run_reference(net, xr, w), "ours": lambda w=what: run_ours(model, xb, w)},
                        repeats=rep)
        ref_s, ours_s = med(t["ref"]) / len(xr), med(t["ours"]) / len(xb)
        ratio = ref_s / ours_s
        results[what] = {"ref_ms_per_sample": ref_s * 1e3, "ours_ms_per_sample": ours_s * 1e3, "speedup": ratio,
                         "target": targets[what]}
        print(f"{what:8s} {ref_s * 1e3:20.1f} {ours_s * 1e3:15.2f} {ratio:8.1f}x   >= {targets[what]}x")

    if args.no_accuracy:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return
    # accuracy against the float64 oracle, clean and MI-FGSM adversarial images
    n_acc = 4 if args.quick else 8
    xc = x[:n_acc]
    with torch.no_grad():
        y = model(xc).argmax(1)
    xa = MIFGSM(eps=0.1, steps=10, decay=1.0)(model, xc, y)
    model64 = build_model("mnist_cnn").double().eval()
    model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    print("\nrelative error against the float64 oracle (median / max over samples)")
    print(f"{'quantity':8s} {'images':12s} {'reference':>22s} {'ours':>22s}")
    acc: dict[str, object] = {}
    for label, xs in (("clean", xc), ("MI-FGSM 0.1", xa)):
        orc = oracle(model64, xs)
        ref64 = LogSoftmaxNet(model64).eval()
        for what in ("trace", "form", "fis"):
            e_ref = rel_errors(run_reference(net, xs, what), orc[what])
            e_ours = rel_errors(run_ours(model, xs, what), orc[what])
            e_ref64 = rel_errors(run_reference(ref64, xs.double(), what), orc[what]) if what != "trace" else None
            row = {"ref_median": float(e_ref.median()), "ref_max": float(e_ref.max()),
                   "ours_median": float(e_ours.median()), "ours_max": float(e_ours.max())}
            if e_ref64 is not None:
                row.update(ref_float64_median=float(e_ref64.median()), ref_float64_max=float(e_ref64.max()))
            acc[f"{what}/{label}"] = row
            extra = f"   (reference in float64: {row['ref_float64_median']:.1e} / {row['ref_float64_max']:.1e})" if e_ref64 is not None else ""
            print(f"{what:8s} {label:12s} {row['ref_median']:10.1e} / {row['ref_max']:9.1e} {row['ours_median']:10.1e} / {row['ours_max']:9.1e}{extra}")
    results["accuracy"] = acc
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
