"""Robust-accuracy evaluation speed: APGD, Square and the AutoAttack ensemble, ours against floors and torchattacks.

Run: ``python benchmarks/robust.py [--quick] [--models mnist_cnn,vgg_small] [--parts apgd,square,ensemble]
[--ens-steps S --ens-targets T --ens-queries Q --ens-seeds S] [--no-checks] [--threads 1] [--json out.json]``.
``--quick`` is a smoke run (batch 16, few steps and queries): its timings mean nothing.

What is timed, per model, on CPU, batch 256, the same ``nn.Module`` for every library:

- **APGD-T steps** (T = 100 on digits_cnn): ours ``APGD(loss="ce")`` and torchattacks'
  ``APGD(steps=T)``, next to the floor T × (one forward + one input-gradient backward) of
  the same batch; ratio ours / floor (APGD spends one more forward-backward on its start)
  and ours / torchattacks. Interleaved repeats, median.
- **Square-Q** (Q = 1000 on digits_cnn): ours and torchattacks' Square; the floor is the
  forward passes ours actually made, replayed with the same batch sizes (Square queries
  only the samples not fooled yet, so its cost depends on the model): ratio ours / floor
  is the overhead of the window bookkeeping.
- **Ensemble**: ``robust_accuracy(..., attacks="standard", checks=None)`` (APGD-CE-100,
  APGD-T-100 over 9 targets, Square-5000) against torchattacks'
  ``MultiAttack([APGD(steps=100), APGDT(steps=100), Square(n_queries=5000)])`` — the same
  attacks and iterations (torchattacks' own ``AutoAttack`` uses 10 APGD steps and adds
  FAB-T, so it is not the like-for-like reference): images/second and robust accuracy of
  each (recomputed here from the returned images); plus the cost of ``checks="standard"``.
  Which images survive each attack depends on the random draws, and survivors cost the later
  attacks more, so on a few images one draw can tilt images/s either way: ``--ens-seeds S``
  runs both libraries with seeds 0 … S − 1 and compares the totals; the two alternate which
  runs first.

Models: ``mnist_cnn`` trained at its ``@paper`` preset (checkpoint cache; 256 MNIST test images,
L∞ ε = 0.1; ``digits_cnn`` on digits with ``--models digits_cnn``) and
``vgg_small`` with random weights at 3 × 32 × 32 (uniform images, labels = its
predictions, ε = 8/255). vgg_small costs ~2 s per forward-backward of 256 images on one
CPU thread, so it runs reduced: APGD-10, Square-20, and the ensemble with APGD-10,
APGD-T-10 and Square-100 on 32 images (``--vgg-ensemble-n``; 0 skips it); one repeat.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Clock, header, interleaved, med  # noqa: E402

from fisherscope.attacks import APGD, APGDTargeted, Square  # noqa: E402
from fisherscope.evaluation import robust_accuracy  # noqa: E402
from fisherscope.models import MODELS, build_model  # noqa: E402


class Recorder(nn.Module):
    """Passes through and records the batch size of every forward."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.inner(x)


def floor_fwd_bwd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int):
    def run():
        for _ in range(steps):
            xr = x.detach().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(xr), y, reduction="sum")
            torch.autograd.grad(loss, xr)
    return run


def replay_forwards(model: nn.Module, x: torch.Tensor, sizes: list[int]):
    def run():
        with torch.no_grad():
            for b in sizes:
                model(x[:b])
    return run


def robust_frac(model, x_adv, y, clean):
    with torch.no_grad():
        return float((clean & (model(x_adv).argmax(1) == y)).float().mean())


def setup(name: str, n: int):
    if name == "mnist_cnn":
        from fisherscope.data import load_dataset
        from fisherscope.training import train_model

        # Martin & Elster's operating point (2 epochs), from the checkpoint cache after the first run
        model = train_model("mnist_cnn@paper", "mnist", progress=False).model.eval()
        test = load_dataset("mnist", "test")
        return model, test.x[:n].clone(), test.y[:n].clone(), 0.1, "trained mnist_cnn (@paper preset), MNIST test images, labels = truth"
    if name == "digits_cnn":
        from fisherscope.data import load_dataset
        from fisherscope.training import train_model

        model = train_model("digits_cnn", "digits", progress=False).model.eval()
        test = load_dataset("digits", "test")
        return model, test.x[:n].clone(), test.y[:n].clone(), 0.1, "trained digits_cnn, digits test images, labels = truth"
    torch.manual_seed(0)
    model = build_model("vgg_small", in_channels=3, input_size=32).eval()
    x = torch.rand(n, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y, 8 / 255, "random-weight vgg_small 3x32x32, uniform images, labels = predictions"


def bench_model(name: str, args, ta) -> dict:
    quick = args.quick
    n = 16 if quick else args.batch
    model, x, y, eps, desc = setup(name, n)
    vgg = name == "vgg_small"
    steps = 3 if quick else (10 if vgg else 100)
    queries = 10 if quick else (20 if vgg else 1000)
    repeats = 1 if (quick or vgg) else 3
    warmup = 0 if (quick or vgg) else 1
    out: dict = {"model": name, "description": desc, "n": n, "eps": eps}
    print(f"\n== {name}: {desc}; batch {n}, eps {eps:.4g}")
    with torch.no_grad():
        clean = model(x).argmax(1) == y

    parts = set(args.parts.split(","))
    # APGD vs floor vs torchattacks
    ours_apgd = APGD(eps=eps, steps=steps, loss="ce")
    g = torch.Generator().manual_seed(0)
    if "apgd" in parts:
        _apgd(out, model, x, y, eps, steps, ours_apgd, g, repeats, warmup, ta)
    if "square" in parts:
        _square(out, model, x, y, eps, queries, repeats, clean, ta)
    _ensemble(out, model, x, y, eps, n, clean, vgg, quick, args, ta, parts)
    return out


def _apgd(out, model, x, y, eps, steps, ours_apgd, g, repeats, warmup, ta) -> None:
    fns = {"ours": lambda: ours_apgd(model, x, y, generator=g), "floor": floor_fwd_bwd(model, x, y, steps)}
    if ta is not None:
        ta_apgd = ta.APGD(model, eps=eps, steps=steps, loss="ce", seed=0)
        fns["torchattacks"] = lambda: ta_apgd(x, y)
    cpu: dict[str, list[float]] = {}
    t = {k: med(v) for k, v in interleaved(fns, repeats=repeats, warmup=warmup, cpu=cpu).items()}
    c = {k: med(v) for k, v in cpu.items()}
    out["apgd"] = {"steps": steps, **t, "cpu": c}
    line = (f"APGD-{steps}: ours {t['ours']:.2f}s, floor {steps}x(fwd+bwd) {t['floor']:.2f}s, ours/floor {t['ours'] / t['floor']:.2f}"
            f" (CPU s {c['ours']:.2f} / {c['floor']:.2f} = {c['ours'] / c['floor']:.2f})")
    if "torchattacks" in t:
        line += (f", torchattacks {t['torchattacks']:.2f}s, ours/torchattacks {t['ours'] / t['torchattacks']:.2f}"
                 f" (CPU {c['ours'] / c['torchattacks']:.2f})")
    print(line)


def _square(out, model, x, y, eps, queries, repeats, clean, ta) -> None:
    """Square vs its forwards replayed vs torchattacks."""
    rec = Recorder(model).eval()
    sq = Square(eps=eps, n_queries=queries)
    x_sq = sq(rec, x, y, generator=torch.Generator().manual_seed(0))  # records the forwards' batch sizes
    sizes = list(rec.sizes)
    # the same seed gives the same queries: ours and the replay of its forwards, interleaved
    cpu = {}
    ts = interleaved({"ours": lambda: sq(model, x, y, generator=torch.Generator().manual_seed(0)),
                      "floor": replay_forwards(model, x, sizes)}, repeats=repeats, warmup=0, cpu=cpu)
    t_sq, t_floor = med(ts["ours"]), med(ts["floor"])
    c_sq, c_floor = med(cpu["ours"]), med(cpu["floor"])
    out["square"] = {"queries": queries, "ours": t_sq, "floor": t_floor, "cpu_ours": c_sq, "cpu_floor": c_floor,
                     "forwards": len(sizes), "images_forwarded": sum(sizes),
                     "robust_ours": robust_frac(model, x_sq, y, clean)}
    line = (f"Square-{queries}: ours {t_sq:.2f}s, its {len(sizes)} forwards ({sum(sizes)} images) replayed {t_floor:.2f}s, "
            f"ours/floor {t_sq / t_floor:.2f} (CPU {c_sq / c_floor:.2f}), robust acc {out['square']['robust_ours']:.3f}")
    if ta is not None:
        ta_sq = ta.Square(model, eps=eps, n_queries=queries, seed=0)
        with torch.random.fork_rng(), Clock() as ck:
            x_ta = ta_sq(x, y)
        out["square"].update(torchattacks=ck.wall, cpu_torchattacks=ck.cpu,
                             robust_torchattacks=robust_frac(model, x_ta, y, clean))
        line += (f"; torchattacks {ck.wall:.2f}s (robust acc {out['square']['robust_torchattacks']:.3f}), "
                 f"ours/torchattacks {t_sq / ck.wall:.2f} (CPU {c_sq / ck.cpu:.2f})")
    print(line)


def _ensemble(out, model, x, y, eps, n, clean, vgg, quick, args, ta, parts) -> None:
    """robust_accuracy(..., 'standard' or a reduction) vs torchattacks' MultiAttack of the same attacks."""
    if "ensemble" not in parts:
        return
    if vgg:
        ne = min(args.vgg_ensemble_n, n)
        e_steps, e_queries = (3, 10) if quick else (10, 100)
    else:
        ne, e_steps, e_queries = n, (3 if quick else 100), (10 if quick else 5000)
    e_steps = args.ens_steps or e_steps
    e_queries = args.ens_queries or e_queries
    if ne == 0:
        return
    xe, ye, ce = x[:ne], y[:ne], clean[:ne]
    k = model(xe[:1]).shape[1]
    n_targets = min(args.ens_targets or 9, k - 1)
    attacks = [("apgd-ce", APGD(eps=eps, steps=e_steps, loss="ce")),
               ("apgd-t", APGDTargeted(eps=eps, steps=e_steps, n_target_classes=n_targets)),
               ("square", Square(eps=eps, n_queries=e_queries))]
    is_standard = e_steps == 100 and e_queries == 5000 and n_targets == min(9, k - 1)
    # Random starts and windows decide which images survive each attack, and survivors cost
    # the later attacks more, so one draw can make either library look faster; --ens-seeds S
    # runs both with seeds 0 … S − 1 and compares the totals.
    seeds = range(max(args.ens_seeds, 1))
    times = {"ours": [0.0, 0.0], "torchattacks": [0.0, 0.0]}
    robust: dict[str, list[float]] = {"ours": [], "torchattacks": []}

    def run_ours(s: int) -> None:
        with Clock() as ck:
            res = robust_accuracy(model, xe, ye, norm="linf", eps=eps, attacks="standard" if is_standard else attacks,
                                  generator=torch.Generator().manual_seed(s), checks=None)
        times["ours"][0] += ck.wall
        times["ours"][1] += ck.cpu
        robust["ours"].append(res.robust_accuracy)
        per_attack.append(res.per_attack)

    def run_ta(s: int) -> None:
        multi = ta.MultiAttack([ta.APGD(model, eps=eps, steps=e_steps, loss="ce", n_restarts=1, seed=s),
                                ta.APGDT(model, eps=eps, steps=e_steps, n_classes=n_targets + 1, n_restarts=1, seed=s),
                                ta.Square(model, eps=eps, n_queries=e_queries, n_restarts=1, seed=s)])
        with torch.random.fork_rng(), Clock() as ck:
            x_ta = multi(xe, ye)
        times["torchattacks"][0] += ck.wall
        times["torchattacks"][1] += ck.cpu
        robust["torchattacks"].append(robust_frac(model, x_ta, ye, ce))

    per_attack: list = []
    # the libraries alternate which goes first, so neither always meets cold caches (oneDNN
    # builds a primitive for each new batch size the attacks' shrinking subsets produce)
    for s in seeds:
        order = [run_ours] if ta is None else ([run_ours, run_ta] if s % 2 == 0 else [run_ta, run_ours])
        for run in order:
            run(s)
    t_ours, c_ours = times["ours"]
    mean_ours = sum(robust["ours"]) / len(robust["ours"])
    ens = {"n": ne, "apgd_steps": e_steps, "square_queries": e_queries, "n_target_classes": n_targets, "seeds": len(seeds),
           "ours": t_ours, "cpu_ours": c_ours, "robust_ours": mean_ours, "robust_ours_per_seed": robust["ours"],
           "per_attack": per_attack}
    total = ne * len(seeds)
    line = (f"ensemble (APGD-CE-{e_steps}, APGD-T-{e_steps}, Square-{e_queries}) on {ne} x {len(seeds)} seed(s): ours {t_ours:.1f}s "
            f"(CPU {c_ours:.1f}s) = {total / t_ours:.2f} img/s (robust {mean_ours:.3f}, per seed {[round(r, 3) for r in robust['ours']]})")
    if ta is not None:
        t_ta, c_ta = times["torchattacks"]
        mean_ta = sum(robust["torchattacks"]) / len(robust["torchattacks"])
        ens.update(torchattacks=t_ta, cpu_torchattacks=c_ta, robust_torchattacks=mean_ta,
                   robust_torchattacks_per_seed=robust["torchattacks"])
        line += (f"; torchattacks MultiAttack {t_ta:.1f}s (CPU {c_ta:.1f}s) = {total / t_ta:.2f} img/s (robust "
                 f"{mean_ta:.3f}, per seed {[round(r, 3) for r in robust['torchattacks']]}); ours/torchattacks images/s "
                 f"{t_ta / t_ours:.2f} (CPU {c_ta / c_ours:.2f})")
    if args.checks:
        with Clock() as ck:
            res_c = robust_accuracy(model, xe, ye, norm="linf", eps=eps, attacks="standard" if is_standard else attacks,
                                    generator=torch.Generator().manual_seed(0), checks="standard")
        ens.update(ours_with_checks=ck.wall, cpu_ours_with_checks=ck.cpu, flags=res_c.flag_codes)
        line += f"; ours with checks='standard' {ck.wall:.1f}s (CPU {ck.cpu:.1f}s, flags {res_c.flag_codes})"
    out["ensemble"] = ens
    print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="mnist_cnn,vgg_small", help="comma-separated: mnist_cnn, digits_cnn, vgg_small")
    ap.add_argument("--parts", default="apgd,square,ensemble", help="comma-separated: apgd, square, ensemble")
    ap.add_argument("--ens-steps", type=int, default=0, help="APGD steps in the ensemble (default: 100; vgg_small 10)")
    ap.add_argument("--ens-seeds", type=int, default=1, help="run the ensemble comparison with seeds 0 ... S-1 and compare totals")
    ap.add_argument("--ens-queries", type=int, default=0, help="Square queries in the ensemble (default: 5000; vgg_small 100)")
    ap.add_argument("--ens-targets", type=int, default=0, help="APGD-T target classes in the ensemble (default: 9)")
    ap.add_argument("--no-checks", dest="checks", action="store_false", help="skip timing checks='standard'")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vgg-ensemble-n", type=int, default=32)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import torchattacks as ta
    except ImportError:
        ta = None
        print("(torchattacks not installed: its rows are skipped)")
    print(header())
    results = []
    for name in args.models.split(","):
        if name not in MODELS:
            print(f"(skipping {name}: not in fisherscope.models.MODELS)")
            continue
        results.append(bench_model(name, args, ta))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
