"""Attacks: ours against torchattacks, IBM ART and foolbox, in one process on CPU.

Run: ``python benchmarks/attacks.py [--quick] [--json out.json] [--models mnist_cnn]
[--attacks pgd,deepfool] [--libraries ours,torchattacks] [--art-cap 16]``.
``--quick`` is a smoke run (batch 8, one call each, no warm-up): its timings mean nothing.
The real numbers need an idle machine: batch 256, five interleaved repeats after a warm-up
for the fixed-step attacks, three for C&W and DeepFool (median of three, no warm-up).
docs/BENCHMARKS.md records them.

What is compared, for each model (``mnist_cnn`` 1×28×28 and ``vgg_small`` 3×32×32, the
same ``nn.Module`` object handed to every library, eval mode):

- FGSM, PGD-40 (no random start), MI-FGSM-10: images/second of ours, torchattacks, ART
  (``PyTorchClassifier``, numpy in and out: the conversion is part of what a user pays)
  and foolbox 3, next to the **floor** T × (one batched forward + one input-gradient
  backward) of the same model and batch, timed in the same run, interleaved with the
  attacks (T = 1, 40, 10). Targets: ours ≥ torchattacks and ≥ ART, and within 15% of the
  floor.
- C&W-100 (one binary-search step, c = 10, step size 0.01) and DeepFool-50 (10
  candidates, overshoot 0.02): images/second. Targets: ≥ 3× ART, DeepFool ≥ 10×
  torchattacks. ART's C&W and DeepFool run on the first ``--art-cap`` images only (ART's
  C&W would take hours on a full batch), torchattacks' DeepFool, a Python loop over
  images, on the first ``--ta-deepfool-cap``; their images/second is compared with ours on
  the full batch and, like for like, with ours on the same capped images ("same n").
  c = 10 because with one binary-search step and 100 Adam steps c = 1 fools only about
  25-30% of the trained mnist_cnn's test images (ours and torchattacks alike), c = 10
  about 60%, so the speed is measured on an attack that mostly works (``--cw-const``).

Every row also reports the success rate and the mean / median L2 and mean L∞ of the
successful perturbations, recomputed here from each library's returned images with the
model (never a library's own success flag), so a fast but failing library cannot look
good. C&W and DeepFool stop per sample, so their cost depends on the weights: on
``mnist_cnn`` every attack uses the trained model from the checkpoint cache
(``train_model("mnist_cnn", "mnist")``, ``$FISHERSCOPE_CACHE``) on correctly classified
MNIST test images (``$FISHERSCOPE_DATA``) when they are available, random weights and
uniform images otherwise (``--random-weights`` forces it); ``vgg_small`` has random
weights (no trained 3×32×32 model here) and labels = its own predictions. The output says
which was used. L∞ budget: 0.3 on mnist_cnn (PGD step 0.01), 16/255 on vgg_small (PGD
step 2/255): the random vgg_small is confident (it gives most uniform images one class)
and 8/255 fooled none of them, so the success columns could not tell a working library
from a broken one; C&W-100 at c = 10 still fools none of them (its speed row then measures
100 full steps for every library).

Our attacks come from ``fisherscope.attacks.ATTACKS`` (keys fgsm, pgd, mifgsm, cw,
deepfool); a key that is not registered is skipped with a note, and the hyperparameters
are mapped onto whatever fields the class has (the built attack is printed).

Hyperparameters and the differences that cannot be removed (read from the peers' sources):

- FGSM: identical everywhere (x + eps · sign ∇CE, clipped to [0, 1]).
- PGD: step size alpha, eps-ball then box projection, start at x: identical in all four.
- MI-FGSM: ours and ART divide the gradient by its L1 norm before accumulating;
  torchattacks divides by the mean |g| (the same up to the constant D, so the same signs);
  foolbox accumulates sign(∇) instead of ∇ / ‖∇‖₁ (different iterates, same cost).
- C&W (the same c for all): torchattacks (``CW(c, steps=100, lr=0.01)``, Adam, no binary
  search, stops the *whole batch* when the summed loss rose at a multiple of steps/10) and
  foolbox (Adam, one binary-search step at ``initial_const=c``, ``abort_early`` for the
  whole batch; an all-zero image where it failed, which shows up as a large L2) are close
  to ours (Adam, per-sample abort); ART's ``CarliniL2Method`` uses plain gradient steps
  with a line search (up to 5 halvings and 5 doublings of the learning rate per
  iteration), which cannot be made equal.
- DeepFool: torchattacks loops over images and uses all classes, overshoot applied to each
  step; ART (``nb_grads=10`` = all classes here) recomputes every class gradient for the
  whole batch each iteration and applies the overshoot (its ``epsilon``) once at the end;
  foolbox (``candidates=10``, logits loss) applies it to the running total.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import header, interleaved, med, spread  # noqa: E402

from fisherscope.attacks import ATTACKS  # noqa: E402
from fisherscope.models import build_model  # noqa: E402

ATTACK_KEYS = ("fgsm", "pgd", "mifgsm", "cw", "deepfool")
LIBRARIES = ("ours", "torchattacks", "art", "foolbox")
#: T of the floor (forward + input-gradient backward passes); None: no floor (early stopping
#: with several backward passes per step)
FLOOR_STEPS = {"fgsm": 1, "pgd": 40, "mifgsm": 10, "cw": 100, "deepfool": None}
LINF = {"fgsm", "pgd", "mifgsm"}
EARLY_STOPPING = {"cw", "deepfool"}
PGD_STEPS, MIFGSM_STEPS, CW_STEPS, CW_LR, DF_STEPS, DF_CANDIDATES, DF_OVERSHOOT = 40, 10, 100, 0.01, 50, 10, 0.02

Runner = Callable[[], torch.Tensor]


# ---------------------------------------------------------------------- models and data


@dataclasses.dataclass
class Setup:
    name: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    eps: float
    step_size: float
    description: str


def _trained_mnist(n: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor] | None:
    """The trained mnist_cnn (checkpoint cache) and n correctly classified MNIST test images."""
    from fisherscope.data import load_dataset
    from fisherscope.exceptions import DatasetNotFoundError
    from fisherscope.training import train_model

    try:
        test = load_dataset("mnist", split="test")
    except DatasetNotFoundError:
        return None
    print("(loading or training the cached mnist_cnn)")
    model = train_model("mnist_cnn", "mnist", progress=False).model.eval()
    x, y = test.x[: 4 * n].float(), test.y[: 4 * n].long()
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok][:n].contiguous(), y[ok][:n].contiguous()


def _random(name: str, n: int, shape: tuple[int, ...], **kw) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(name, **kw).eval()
    x = torch.rand(n, *shape)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def make_setup(name: str, n: int, random_weights: bool) -> Setup:
    if name == "mnist_cnn":
        trained = None if random_weights else _trained_mnist(n)
        if trained is not None:
            model, x, y = trained
            desc = f"trained mnist_cnn (checkpoint cache), {len(x)} correctly classified MNIST test images, labels = truth"
        else:
            model, x, y = _random("mnist_cnn", n, (1, 28, 28))
            why = "--random-weights" if random_weights else "MNIST not found under FISHERSCOPE_DATA"
            desc = f"random-weight mnist_cnn ({why}), uniform images, labels = predictions"
        return Setup(name, model, x, y, 0.3, 0.01, desc)
    if name == "vgg_small":
        model, x, y = _random("vgg_small", n, (3, 32, 32), in_channels=3, input_size=32)
        desc = ("random-weight vgg_small (3x32x32), uniform images, labels = predictions "
                "(C&W / DeepFool early stopping not representative of a trained model)")
        return Setup(name, model, x, y, 16 / 255, 2 / 255, desc)
    raise ValueError(f"unknown model {name!r}; expected one of mnist_cnn, vgg_small.")


def floor_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> Runner:
    """``steps`` × (one batched forward + one input-gradient backward of the summed CE)."""

    def run():
        for _ in range(steps):
            xr = x.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)

    return run


# ---------------------------------------------------------------------- the libraries


def _ours(key: str, s: Setup, c: float, x: torch.Tensor, y: torch.Tensor) -> tuple[Runner | None, str]:
    cls = ATTACKS.get(key)
    if cls is None:
        return None, f"'{key}' is not registered in fisherscope.attacks.ATTACKS yet"
    eps, step = s.eps, s.step_size
    wanted = {
        "fgsm": [(("eps",), eps)],
        "pgd": [(("eps",), eps), (("step_size", "alpha"), step), (("steps",), PGD_STEPS),
                (("random_start",), False)],
        "mifgsm": [(("eps",), eps), (("step_size", "alpha"), eps / MIFGSM_STEPS), (("steps",), MIFGSM_STEPS),
                   (("decay", "momentum"), 1.0)],
        "cw": [(("steps", "max_iter"), CW_STEPS), (("binary_search_steps",), 1),
               (("initial_const", "c", "const"), c), (("step_size", "lr", "learning_rate"), CW_LR),
               (("confidence", "kappa"), 0.0)],
        "deepfool": [(("steps", "max_iter"), DF_STEPS), (("candidates", "nb_grads"), DF_CANDIDATES),
                     (("overshoot",), DF_OVERSHOOT)],
    }[key]
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs, unmapped = {}, []
    for aliases, value in wanted:
        hit = next((a for a in aliases if a in names), None)
        if hit is None:
            unmapped.append(aliases[0])
        else:
            kwargs[hit] = value
    try:
        atk = cls(**kwargs)
    except (TypeError, ValueError) as e:
        return None, f"could not build {cls.__name__}({kwargs}): {e}"
    note = repr(atk) + (f"  [no field for: {', '.join(unmapped)}]" if unmapped else "")
    return (lambda: atk(s.model, x, y)), note  # like the peers: images only, no success mask


def _torchattacks(key: str, s: Setup, c: float, x: torch.Tensor, y: torch.Tensor) -> tuple[Runner | None, str]:
    import torchattacks as ta

    m, eps = s.model, s.eps
    atk = {
        "fgsm": lambda: ta.FGSM(m, eps=eps),
        "pgd": lambda: ta.PGD(m, eps=eps, alpha=s.step_size, steps=PGD_STEPS, random_start=False),
        "mifgsm": lambda: ta.MIFGSM(m, eps=eps, alpha=eps / MIFGSM_STEPS, steps=MIFGSM_STEPS, decay=1.0),
        "cw": lambda: ta.CW(m, c=c, kappa=0, steps=CW_STEPS, lr=CW_LR),
        "deepfool": lambda: ta.DeepFool(m, steps=DF_STEPS, overshoot=DF_OVERSHOOT),
    }[key]()
    return (lambda: atk(x, y)), repr(atk)


def _art(key: str, s: Setup, c: float, x: torch.Tensor, y: torch.Tensor) -> tuple[Runner | None, str]:
    import numpy as np
    from art.attacks.evasion import (
        CarliniL2Method,
        DeepFool,
        FastGradientMethod,
        MomentumIterativeMethod,
        ProjectedGradientDescent,
    )
    from art.estimators.classification import PyTorchClassifier

    with torch.no_grad():
        k = int(s.model(x[:1]).shape[1])
    clf = PyTorchClassifier(model=s.model, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=k, clip_values=(0.0, 1.0), device_type="cpu")
    n, eps = len(x), s.eps
    atk = {
        "fgsm": lambda: FastGradientMethod(clf, norm=np.inf, eps=eps, batch_size=n),
        "pgd": lambda: ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=s.step_size, max_iter=PGD_STEPS,
                                                num_random_init=0, batch_size=n, verbose=False),
        "mifgsm": lambda: MomentumIterativeMethod(clf, norm=np.inf, eps=eps, eps_step=eps / MIFGSM_STEPS, decay=1.0,
                                                  max_iter=MIFGSM_STEPS, batch_size=n, verbose=False),
        "cw": lambda: CarliniL2Method(clf, confidence=0.0, learning_rate=CW_LR, binary_search_steps=1,
                                      max_iter=CW_STEPS, initial_const=c, batch_size=n, verbose=False),
        "deepfool": lambda: DeepFool(clf, max_iter=DF_STEPS, epsilon=DF_OVERSHOOT, nb_grads=DF_CANDIDATES,
                                     batch_size=n, verbose=False),
    }[key]()
    y_np = y.numpy()
    # numpy in, numpy out, back to torch: what a user of a torch model pays
    return (lambda: torch.from_numpy(atk.generate(x.numpy(), y_np))), type(atk).__name__


def _foolbox(key: str, s: Setup, c: float, x: torch.Tensor, y: torch.Tensor) -> tuple[Runner | None, str]:
    import foolbox as fb

    fmodel = fb.PyTorchModel(s.model, bounds=(0.0, 1.0), device="cpu")
    eps = s.eps
    atk, epsilons = {
        "fgsm": lambda: (fb.attacks.LinfFastGradientAttack(random_start=False), eps),
        "pgd": lambda: (fb.attacks.LinfPGD(abs_stepsize=s.step_size, steps=PGD_STEPS, random_start=False), eps),
        "mifgsm": lambda: (fb.attacks.LinfMomentumIterativeFastGradientMethod(
            momentum=1.0, abs_stepsize=eps / MIFGSM_STEPS, steps=MIFGSM_STEPS, random_start=False), eps),
        "cw": lambda: (fb.attacks.L2CarliniWagnerAttack(binary_search_steps=1, steps=CW_STEPS, stepsize=CW_LR,
                                                        confidence=0, initial_const=c, abort_early=True), None),
        "deepfool": lambda: (fb.attacks.L2DeepFoolAttack(steps=DF_STEPS, candidates=DF_CANDIDATES,
                                                         overshoot=DF_OVERSHOOT, loss="logits"), None),
    }[key]()

    def run():
        _, clipped, _ = atk(fmodel, x, y, epsilons=epsilons)
        return clipped

    return run, type(atk).__name__


FACTORIES = {"ours": _ours, "torchattacks": _torchattacks, "art": _art, "foolbox": _foolbox}
PEER_MODULES = {"torchattacks": "torchattacks", "art": "art", "foolbox": "foolbox"}


# ---------------------------------------------------------------------- measuring


def quality(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, eps: float | None) -> dict:
    """Success from recomputed predictions; norms over the successful samples."""
    x_adv = x_adv.detach().to(x.dtype).reshape(x.shape)
    with torch.no_grad():
        ok = model(x_adv).argmax(1) != y
    d = (x_adv - x).flatten(1)
    l2, linf = d.norm(dim=1), d.abs().amax(1)
    out = {"success": ok.float().mean().item(), "mean_l2": None, "median_l2": None, "mean_linf": None,
           "out_of_bounds": int(((x_adv < -1e-6) | (x_adv > 1 + 1e-6)).flatten(1).any(1).sum()),
           "over_budget": int((linf > eps * (1 + 1e-5) + 1e-6).sum()) if eps is not None else 0}
    if ok.any():
        out.update(mean_l2=l2[ok].mean().item(), median_l2=l2[ok].median().item(), mean_linf=linf[ok].mean().item())
    return out


def caps_for(key: str, args, n: int) -> dict[str, int]:
    """Images given to each library (fewer than the batch only for the slow peers)."""
    caps = {lib: n for lib in LIBRARIES}
    if key in EARLY_STOPPING:
        caps["art"] = min(args.art_cap, n)
    if key == "deepfool":  # torchattacks loops over images: its images/s does not depend on n
        caps["torchattacks"] = min(args.ta_deepfool_cap, n)
    return caps


def bench_attack(key: str, s: Setup, args, libs: list[str], results: dict) -> None:
    n = len(s.x)
    caps = caps_for(key, args, n)
    runners: dict[str, tuple[Runner, int]] = {}
    notes: dict[str, str] = {}
    for lib in libs:
        sub = caps[lib]
        try:
            fn, note = FACTORIES[lib](key, s, args.cw_const, s.x[:sub], s.y[:sub])
        except Exception as e:  # a peer that cannot build the attack is reported, not fatal
            fn, note = None, f"failed to build: {type(e).__name__}: {e}"
        notes[lib] = note
        if fn is None:
            print(f"  [{key}] {lib}: skipped: {note}")
            continue
        runners[lib] = (fn, sub)
    if "ours" in runners:  # ours on the same images as each capped peer, like for like
        for sub in sorted({caps[lib] for lib in runners if caps[lib] < n}):
            fn_cap, _ = _ours(key, s, args.cw_const, s.x[:sub], s.y[:sub])
            runners[f"ours@{sub}"] = (fn_cap, sub)
        runners = dict(sorted(runners.items(), key=lambda kv: not kv[0].startswith("ours")))
    steps = FLOOR_STEPS[key]
    fns: dict[str, Callable[[], object]] = {}
    if steps is not None:
        fns["floor"] = floor_fn(s.model, s.x, s.y, steps)
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str, fn: Runner) -> Callable[[], None]:
        def run():
            outputs[name] = fn()
        return run

    for name, (fn, _) in runners.items():
        fns[name] = keep(name, fn)
    slow = key in EARLY_STOPPING
    reps, warm = (args.repeats_slow, 0) if slow else (args.repeats, args.warmup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = interleaved(fns, repeats=reps, warmup=warm)

    floor_s = med(t["floor"]) if steps is not None else None
    rows: dict[str, dict] = {}
    for name, (_, sub) in runners.items():
        ts = t[name]
        row = {"n_images": sub, "median_s": med(ts), "spread_s": spread(ts), "images_per_s": sub / med(ts),
               "config": notes[name.split("@")[0]]}
        row["floor_multiple"] = (med(ts) / sub) / (floor_s / n) if floor_s else None
        row.update(quality(s.model, s.x[:sub], s.y[:sub], outputs[name], s.eps if key in LINF else None))
        rows[name] = row
    ours = rows.get("ours")
    for name, row in rows.items():
        peer = not name.startswith("ours")
        row["ours_over_lib"] = ours["images_per_s"] / row["images_per_s"] if ours and peer else None
        like = rows.get(f"ours@{row['n_images']}")
        row["ours_over_lib_same_n"] = like["images_per_s"] / row["images_per_s"] if like and peer else None
    results[key] = {"floor_steps": steps, "floor_s": floor_s, "repeats": reps, "warmup": warm, "rows": rows,
                    "skipped": {lib: notes[lib] for lib in libs if lib not in runners}}
    _print_rows(key, steps, floor_s, n, rows)


def _fmt(v: float | None, spec: str, width: int) -> str:
    return f"{'—':>{width}s}" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:{width}{spec}}"


def _print_rows(key: str, steps: int | None, floor_s: float | None, n: int, rows: dict[str, dict]) -> None:
    fl = f"floor {steps} x (fwd + input-grad bwd) = {floor_s * 1e3:.1f} ms ({n / floor_s:.1f} img/s)" if floor_s else "no floor"
    print(f"\n  {key}: {fl}")
    print(f"  {'library':14s} {'n':>4s} {'img/s':>9s} {'±%':>5s} {'ours÷lib':>9s} {'same n':>7s} {'÷floor':>7s}"
          f" {'succ%':>6s} {'L2 mean':>8s} {'L2 med':>7s} {'Linf mean':>9s}")
    for name, r in rows.items():
        pct = 100 * r["spread_s"] / r["median_s"] if r["median_s"] else 0.0
        print(f"  {name:14s} {r['n_images']:4d} {r['images_per_s']:9.1f} {pct:5.1f} {_fmt(r['ours_over_lib'], '.2f', 9)} "
              f"{_fmt(r['ours_over_lib_same_n'], '.2f', 7)} {_fmt(r['floor_multiple'], '.2f', 7)} "
              f"{100 * r['success']:6.1f} {_fmt(r['mean_l2'], '.3f', 8)} "
              f"{_fmt(r['median_l2'], '.3f', 7)} {_fmt(r['mean_linf'], '.4f', 9)}")
        if r["out_of_bounds"] or r["over_budget"]:
            print(f"  {'':14s} !! {r['out_of_bounds']} images outside [0, 1], {r['over_budget']} over the eps budget")


def targets(res: dict) -> dict[str, bool | None]:
    """The issue's targets, evaluated on a model's results (None: not measurable here)."""

    def ratio(key: str, lib: str) -> float | None:
        row = res.get(key, {}).get("rows", {}).get(lib)
        return None if row is None else row["ours_over_lib"]

    out: dict[str, bool | None] = {}
    for key in ("fgsm", "pgd", "mifgsm"):
        ours = res.get(key, {}).get("rows", {}).get("ours")
        for lib in ("torchattacks", "art"):
            r = ratio(key, lib)
            out[f"{key}: ours >= {lib}"] = None if r is None else r >= 1.0
        out[f"{key}: within 15% of floor"] = None if ours is None else ours["floor_multiple"] <= 1.15
    for key in ("cw", "deepfool"):
        r = ratio(key, "art")
        out[f"{key}: ours >= 3x art"] = None if r is None else r >= 3.0
    r = ratio("deepfool", "torchattacks")
    out["deepfool: ours >= 10x torchattacks"] = None if r is None else r >= 10.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: batch 8, one timed call, no warm-up, smaller caps")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--models", default="mnist_cnn,vgg_small", help="comma-separated: mnist_cnn,vgg_small")
    ap.add_argument("--attacks", default=",".join(ATTACK_KEYS), help=f"comma-separated subset of {','.join(ATTACK_KEYS)}")
    ap.add_argument("--libraries", default=",".join(LIBRARIES), help=f"comma-separated subset of {','.join(LIBRARIES)}")
    ap.add_argument("--batch", type=int, help="images per batch (default 256; 8 with --quick)")
    ap.add_argument("--repeats", type=int, help="timed repeats of the fixed-step attacks (default 5; 1 with --quick)")
    ap.add_argument("--repeats-slow", type=int,
                    help="timed repeats of C&W and DeepFool, no warm-up call (default 3; 1 with --quick)")
    ap.add_argument("--art-cap", type=int, help="images given to ART's C&W and DeepFool (default 16; 2 with --quick)")
    ap.add_argument("--ta-deepfool-cap", type=int,
                    help="images given to torchattacks' DeepFool, a loop over images (default 32; 2 with --quick)")
    ap.add_argument("--cw-const", type=float, default=10.0, help="C&W trade-off constant c for every library (default 10)")
    ap.add_argument("--random-weights", action="store_true", help="random-weight mnist_cnn even if MNIST is available")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's); 1 on a shared machine")
    args = ap.parse_args()
    args.batch = args.batch or (8 if args.quick else 256)
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.repeats_slow = args.repeats_slow or (1 if args.quick else 3)
    args.art_cap = args.art_cap or (2 if args.quick else 16)
    args.ta_deepfool_cap = args.ta_deepfool_cap or (2 if args.quick else 32)
    args.warmup = 0 if args.quick else 1  # the smoke run times its only call
    models = [m for m in args.models.split(",") if m]
    keys = [k for k in args.attacks.split(",") if k]
    libs = [lib for lib in args.libraries.split(",") if lib]
    for k in keys:
        if k not in ATTACK_KEYS:
            ap.error(f"unknown attack {k!r}; expected a subset of {','.join(ATTACK_KEYS)}")
    for lib in libs:
        if lib not in LIBRARIES:
            ap.error(f"unknown library {lib!r}; expected a subset of {','.join(LIBRARIES)}")
    for lib in [lib for lib in libs if lib in PEER_MODULES]:
        try:
            __import__(PEER_MODULES[lib])
        except ImportError as e:
            print(f"note: {lib} is not installed ({e}); its rows are skipped")
            libs.remove(lib)
    logging.getLogger("art").setLevel(logging.ERROR)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()
    print(header() + f", load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"batch {args.batch}, repeats {args.repeats} after {args.warmup} warm-up (C&W/DeepFool: "
          f"{args.repeats_slow}, no warm-up), ART C&W/DeepFool on {args.art_cap} images, torchattacks DeepFool on "
          f"{args.ta_deepfool_cap}, C&W c = {args.cw_const}")
    missing = [k for k in keys if k not in ATTACKS]
    if missing:
        print(f"note: not registered in fisherscope.attacks.ATTACKS yet, 'ours' rows skipped: {', '.join(missing)}")
    print("columns: img/s = images / median seconds; ±% = spread of the repeats; ours÷lib = our img/s (full batch) "
          "÷ the row's (> 1: ours faster); same n = the same with ours on the row's n images; ÷floor = seconds per "
          "image ÷ those of T x (fwd + input-grad bwd) at the full batch; succ% from recomputed predictions; "
          "norms over the successful images")
    results: dict[str, object] = {"env": header(), "load_average": load, "args": {k: (str(v) if isinstance(v, Path) else v)
                                                                                 for k, v in vars(args).items()},
                                  "models": {}}
    for name in models:
        s = make_setup(name, args.batch, args.random_weights)
        print(f"\n=== {name}: {s.description}; eps {s.eps:.4g} (L∞ attacks), PGD step {s.step_size:.4g}, "
              f"MI-FGSM step eps/{MIFGSM_STEPS}")
        res: dict[str, dict] = {}
        for key in keys:
            bench_attack(key, s, args, libs, res)
        tg = targets(res)
        print(f"\n  targets ({name}){': smoke run, timings mean nothing' if args.quick else ''}:")
        for k, v in tg.items():
            print(f"    {k:40s} {'—' if v is None else ('met' if v else 'NOT met')}")
        results["models"][name] = {"setup": s.description, "eps": s.eps, "step_size": s.step_size,
                                   "attacks": res, "targets": tg}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
