"""Shen et al. (arXiv:1909.06137) on MNIST with ``convnet_bn``: Figures 1, 2–3 and 5 and
Tables 1–2 (``configs/shen-*.toml``), with label smoothing, the input-space trace penalty
and PGD adversarial training as extra rows.

Protocol notes (also in docs/RESULTS.md):

- Every network is trained with the same preset and seed; only the ``defense`` differs
  (``{"kind": "fisher", "mu": μ}`` is Shen's loss CE + μ Σ_i 1/p_i). Each is a cached
  checkpoint of :func:`fisherscope.training.train_model`, so a repeated or resumed run loads
  it, and a killed training resumes from its last finished epoch.
- Fooling ratio (Shen §4, item 3): of the test images a network classifies correctly, the
  fraction it misclassifies after the attack (predictions recomputed). L2 budgets are
  norms of the perturbation before clipping to [0, 1]; the norm applied after clipping is
  recorded beside them.
- Table 1 measures *minimal* perturbations, as the paper did with Foolbox's minimisation
  attacks: C&W, DeepFool and JSMA as they are; FGSM, FGM, BIM-L1/L2/L∞ and random-start PGD
  through a per-sample binary search of the smallest budget that fools
  (:func:`~fisherscope.evaluation.least_perturbation`). Means are over the correctly
  classified images the attack fooled. Both the paper's (Foolbox) units — L2 rows
  ‖δ‖₂²/D, L1 rows ‖δ‖₁/D, L∞ rows ‖δ‖∞, the L0 row a count of changed elements, D = 784 —
  and the plain norms are reported.
- Table 2 is :func:`~fisherscope.evaluation.transfer_from_examples` with
  ``count="fooled_source"`` on Table 1's minimal examples (made as Table 1 makes them, same
  seed and batches, and stored per batch in the run: :func:`~fisherscope.experiments.specs.crafted`):
  examples that fool the network they were crafted on, and the accuracy of the other
  network on them (1 − the transfer rate), the paper's "cross model classification
  accuracy" (its 97.47% "raises from 0% of the original network").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..attacks import FGM, FGSM, OSSA, OTCM, Attack, OneStepAttack, perturbation_norms
from ..evaluation import fooling_ratio, one_step_curve, transfer_from_examples
from ..plotting import to_display
from .base import Context, register
from .common import in_batches, load_split, predict, select_samples
from .config import ExperimentConfig, config_to_dict
from .report import Block, Figure, Heading, Paragraph, Table, fmt_number, pct, save_figure
from .runner import Artifact, Results, Run
from .specs import AttackSpec, ModelSpec, build_attack, crafted, model_record, train_spec

__all__ = ["ShenConfig", "TABLE1_ATTACKS", "paper_units"]


# ====================================================================== config


#: The nine rows of Shen et al.'s Table 1, minimal perturbations (see the module doc).
#: C&W and DeepFool use Foolbox 2's defaults (the paper's Foolbox), JSMA steers to the
#: runner-up class (the cheapest target), BIM takes 10 steps and PGD 40 from a random start.
TABLE1_ATTACKS: tuple[AttackSpec, ...] = (
    AttackSpec(label="FGSM", attack="fgsm", distance="linf", search=True, hi=1.0, tol=1e-3),
    AttackSpec(label="FGM", attack="fgm", distance="l2", search=True, hi=15.0, tol=1e-2),
    AttackSpec(label="BIM-L1", attack="bim", params={"norm": "l1", "steps": 10}, distance="l1", search=True,
               hi=150.0, tol=0.1),
    AttackSpec(label="BIM-L2", attack="bim", params={"norm": "l2", "steps": 10}, distance="l2", search=True,
               hi=15.0, tol=1e-2),
    AttackSpec(label="BIM-Linf", attack="bim", params={"norm": "linf", "steps": 10}, distance="linf", search=True,
               hi=1.0, tol=1e-3),
    AttackSpec(label="DeepFool", attack="deepfool", params={"steps": 100}, distance="l2"),
    AttackSpec(label="CW", attack="cw", params={"binary_search_steps": 5, "steps": 1000, "learning_rate": 5e-3,
                                                "initial_const": 1e-2}, distance="l2"),
    AttackSpec(label="JSMA", attack="jsma", params={"target": "most_likely"}, distance="l0"),
    AttackSpec(label="PGD-random", attack="pgd", params={"norm": "linf", "steps": 40, "random_start": True},
               distance="linf", search=True, hi=1.0, tol=1e-3),
)


def _default_models() -> list[ModelSpec]:
    return [ModelSpec(name="original"), ModelSpec(name="shen mu=0.024", defense={"kind": "fisher", "mu": 0.024})]


@dataclass(frozen=True)
class ShenConfig(ExperimentConfig):
    """Shared config of the Shen et al. reproductions (each kind reads what it needs).

    ``models`` (Tables 1–2): the first is the reference ("original network"), the one
    named ``paper_model`` (default: the second) is compared with the paper's numbers.
    """

    arch: str = "convnet_bn"
    training: dict[str, Any] = field(default_factory=dict)  # overrides for every network (e.g. epochs)
    #: None: every network is trained from scratch. A dict of training settings (e.g.
    #: ``{epochs = 3, lr = 5e-4}``): every *defended* network is instead fine-tuned from the
    #: plain network of the same seed (``train_model(init_from=...)``) with ``training``
    #: updated by these settings — the other reading of Shen's "the new model should be retrained".
    #: Caveat (docs/RESULTS.md): a confident plain net has Σ 1/p_i ~ 1e11+, the penalty then is
    #: the whole loss, and Adam's scale invariance makes μ irrelevant (μ = 0.005 and 0.01 gave
    #: the same network on MNIST).
    finetune: dict[str, Any] | None = field(default=None, metadata={"omit_if_default": True})
    n_samples: int | None = 1000  # test images used (None: all)
    batch_size: int = 500
    penalty: str = "softmax_trace"  # Fisher penalty of the μ sweep / Figures 1 and 5
    mu: float = 0.02  # the penalised network of Figures 1 and 5
    mus: list[float] = field(default_factory=lambda: [0.0, 0.005, 0.01, 0.015, 0.02, 0.022, 0.024, 0.025])
    baseline_seeds: list[int] = field(default_factory=list)  # extra μ = 0 seeds for Figure 2's baseline
    budgets: list[float] = field(default_factory=lambda: [0.5 * i for i in range(13)])  # L2
    linf_budgets: list[float] = field(default_factory=lambda: [0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3])
    eps: float = 2.0  # Figure 1's OSSA budget
    n_examples: int = 2
    models: list[ModelSpec] = field(default_factory=_default_models)
    paper_model: str | None = None
    attacks: list[AttackSpec] = field(default_factory=lambda: list(TABLE1_ATTACKS))
    paper: dict[str, Any] = field(default_factory=dict)


# ====================================================================== shared pieces
#
# Every kind: ``<kind>_cells(run, cfg, ctx)`` computes through ``run.cell`` (names and specs
# from the ``_*_cell`` functions below, which the reports call too), ``<kind>_report(cfg,
# results)`` renders from the stored cells only.


def _finetune(cfg: ShenConfig, spec: ModelSpec) -> dict[str, Any] | None:
    """The fine-tuning settings of ``spec`` (its own, else the config's for defended networks)."""
    if spec.finetune is not None:
        return spec.finetune
    return cfg.finetune if spec.defense is not None else None


def _schedule(cfg: ShenConfig, spec: ModelSpec) -> str:
    """How the report says ``spec`` was trained (from scratch, or fine-tuned and with what)."""
    scratch = f"{cfg.training or 'the preset'}" + (f" + {spec.overrides}" if spec.overrides else "")
    finetune = _finetune(cfg, spec)
    if finetune is None:
        return f"from scratch, {scratch}"
    return f"fine-tuned with {finetune} from the plain net ({scratch})"


def _train(cfg: ShenConfig, ctx: Context, spec: ModelSpec, seed: int | None = None) -> Any:
    seed = cfg.seed if seed is None else seed
    training = dict(cfg.training)
    finetune = _finetune(cfg, spec)
    if finetune is not None:
        plain = ModelSpec(name="original", arch=spec.arch, preset=spec.preset, model_kwargs=spec.model_kwargs)
        base = train_spec(plain, cfg.arch, cfg.dataset, ctx, seed=seed, preset=cfg.preset, training=training)
        training = {**training, **finetune, "init_from": base}
    return train_spec(spec, cfg.arch, cfg.dataset, ctx, seed=seed, preset=cfg.preset, training=training)


def _fisher(cfg: ShenConfig, mu: float) -> dict[str, Any] | None:
    return None if mu == 0 else {"kind": "fisher", "mu": mu, "penalty": cfg.penalty}


def _net(cfg: ShenConfig, spec: ModelSpec, seed: int | None = None) -> dict[str, Any]:
    """Everything that decides the network ``spec`` trains to (part of every cell spec using it)."""
    return {"arch": cfg.arch, "dataset": cfg.dataset, "preset": cfg.preset, "training": cfg.training,
            "finetune": _finetune(cfg, spec), "seed": cfg.seed if seed is None else seed,
            "model": config_to_dict(spec)}


def _draw(cfg: ShenConfig) -> dict[str, Any]:
    """What decides the test images used: the dataset, their number and the seed of the draw."""
    return {"dataset": cfg.dataset, "n_samples": cfg.n_samples, "seed": cfg.seed}


def _sample_cell(cfg: ShenConfig) -> tuple[str, dict[str, Any]]:
    return "sample", _draw(cfg)


def _model_cell(cfg: ShenConfig, spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    return f"model/{spec.name}", {"net": _net(cfg, spec), "draw": _draw(cfg)}


def _sample(run: Run, cfg: ShenConfig, ctx: Context) -> tuple[Any, Tensor, Tensor]:
    """The test split and the ``n_samples`` test images of the config (seeded draw, in test
    order); the ``sample`` cell records what the reports say about them."""
    test = load_split(cfg.dataset, "test", ctx)
    idx = select_samples(len(test), cfg.n_samples, cfg.seed)
    x, y = test.x[idx], test.y[idx]
    name, spec = _sample_cell(cfg)
    run.cell(name, lambda: {"n": int(len(y)), "input_size": int(x[0].numel()),
                            "classes": [str(c) for c in test.classes]}, spec=spec)
    return test, x, y


def _check_models(cfg: ShenConfig) -> None:
    names = [m.name for m in cfg.models]
    if any(n is None for n in names):
        raise ValueError(f"{cfg.name}: every entry of 'models' needs a 'name' (row and column name); got {names}.")
    for m in cfg.models:
        if m.dataset not in (None, cfg.dataset):
            raise ValueError(f"{cfg.name}: model {m.name!r} sets dataset {m.dataset!r}, but every network is "
                             f"evaluated on the config's {cfg.dataset!r}; drop the model's 'dataset'.")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _blurb(cfg: ShenConfig, n: int) -> Paragraph:
    return Paragraph(
        f"`{cfg.arch}` on `{cfg.dataset}`, preset `{cfg.preset or cfg.arch}`"
        + (f" with {cfg.training}" if cfg.training else "")
        + f", seed {cfg.seed}; {n} test images (seeded draw)."
        + (f" Defended networks are fine-tuned from the plain network of the same seed with {cfg.finetune}, "
           "not trained from scratch." if cfg.finetune else "")
    )


def paper_units(norms: dict[str, Tensor], distance: str, d: int) -> Tensor:
    """Foolbox's distance units, as Shen et al.'s Table 1 reports them.

    L2 rows: mean squared difference ‖δ‖₂² / D; L1 rows: mean absolute difference
    ‖δ‖₁ / D; L∞: ‖δ‖∞; L0: the number of changed elements (pixels, for one channel).
    ``d`` is D, the number of input elements (784 on MNIST).
    """
    if distance == "l2":
        return norms["l2"].double() ** 2 / d
    if distance == "l1":
        return norms["l1"].double() / d
    return norms[distance].double()


def _paper_model(cfg: ShenConfig) -> str:
    _check_models(cfg)
    names = [str(m.name) for m in cfg.models]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"{cfg.name}: 'models' needs at least two networks with distinct names (the first is the "
                         f"original network); got {names}.")
    name = cfg.paper_model or names[1]
    if name not in names:
        raise ValueError(f"{cfg.name}: paper_model {name!r} is not one of the models {names}.")
    return name


def _paper_pair(cfg: ShenConfig, label: str) -> list[float]:
    v = cfg.paper.get(label, [])
    v = list(v) if isinstance(v, list | tuple) else [v]
    return [float(a) for a in v] + [math.nan] * (2 - len(v))


# ====================================================================== Figure 1


def _figure1_specs(cfg: ShenConfig) -> dict[str, ModelSpec]:
    if cfg.mu <= 0:
        raise ValueError(f"{cfg.name}: Figure 1 compares with a penalised net; set mu > 0 (got {cfg.mu}).")
    return {"original": ModelSpec(name="original"), "penalised": ModelSpec(name="penalised", defense=_fisher(cfg, cfg.mu))}


def _figure1_cell(cfg: ShenConfig) -> tuple[str, dict[str, Any]]:
    specs = _figure1_specs(cfg)
    return "figure1", {"nets": {k: _net(cfg, s) for k, s in specs.items()}, "draw": _draw(cfg), "eps": cfg.eps,
                       "n_examples": cfg.n_examples, "batch_size": cfg.batch_size}


def _ossa_pair(orig: nn.Module, pen: nn.Module, x: Tensor, y: Tensor, eps: float) -> dict[str, Tensor]:
    a = OSSA(eps=eps).run(orig, x, y)
    b = OSSA(eps=eps).run(pen, x, y)
    with torch.no_grad():
        p_pen = pen(a.x_adv).softmax(1)
    return {
        "x_adv": a.x_adv, "applied_l2": a.norms["l2"], "p_orig": a.logits_adv.softmax(1),
        "orig_wrong": a.logits_adv.argmax(1) != y, "p_pen": p_pen, "pen_wrong": p_pen.argmax(1) != y,
        "p_pen_own": b.logits_adv.softmax(1), "pen_own_wrong": b.logits_adv.argmax(1) != y,
        "applied_l2_own": b.norms["l2"],
    }


def figure1_cells(run: Run, cfg: ShenConfig, ctx: Context) -> None:
    specs = _figure1_specs(cfg)
    test, x, y = _sample(run, cfg, ctx)

    def measure() -> dict[str, Any]:
        orig, pen = _train(cfg, ctx, specs["original"]).model, _train(cfg, ctx, specs["penalised"]).model
        dev = _device(orig)
        xd, yd = x.to(dev), y.to(dev)
        ok = torch.as_tensor(predict(orig, xd), device=dev) == yd
        ok &= torch.as_tensor(predict(pen, xd), device=dev) == yd
        res = in_batches(lambda xb, yb: _ossa_pair(orig, pen, xb, yb, cfg.eps), xd[ok], yd[ok],
                         batch_size=cfg.batch_size)
        fooled = res["orig_wrong"]
        survived = fooled & ~res["pen_wrong"]
        order = torch.cat([survived.nonzero().flatten(), (fooled & ~survived).nonzero().flatten()])
        pick = order[: cfg.n_examples]
        idx = ok.nonzero().flatten()[pick]
        test_idx = select_samples(len(test), cfg.n_samples, cfg.seed)[idx.cpu()]
        return {
            "n_both_correct": int(ok.sum()),
            "n_fooled_original": int(fooled.sum()),
            "n_survived": int(survived.sum()),
            "penalised_whitebox_fooling": float(res["pen_own_wrong"].double().mean()),
            "original_fooling": float(fooled.double().mean()),
            "test_indices": test_idx.tolist(),
            "labels": yd[idx].tolist(),
            "x_adv": Artifact(res["x_adv"][pick].cpu()),
            "applied_l2": res["applied_l2"][pick].tolist(),
            "p_original": res["p_orig"][pick].tolist(),
            "p_penalised": res["p_pen"][pick].tolist(),
            "p_penalised_own": res["p_pen_own"][pick].tolist(),
            "applied_l2_own": res["applied_l2_own"][pick].tolist(),
        }

    name, spec = _figure1_cell(cfg)
    run.cell(name, measure, spec=spec)


def figure1_report(cfg: ShenConfig, results: Results) -> list[Block]:
    import matplotlib.pyplot as plt

    sample = results.cell(*_sample_cell(cfg))
    r = results.cell(*_figure1_cell(cfg))
    n = len(r["test_indices"])
    classes = list(sample["classes"])
    path = None
    if n:
        fig, axes = plt.subplots(n, 4, figsize=(12, 2.4 * n), squeeze=False)
        for i in range(n):
            img, cmap = to_display(np.asarray(r["x_adv"][i]))
            true = r["labels"][i]
            axes[i, 0].imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            axes[i, 0].set_axis_off()
            axes[i, 0].set_title(f"OSSA on the original, L2 {r['applied_l2'][i]:.2f}", fontsize=8)
            for j, (key, title) in enumerate((("p_original", "original net"), ("p_penalised", f"penalised μ={cfg.mu:g}"),
                                              ("p_penalised_own", f"penalised, its own OSSA (L2 {r['applied_l2_own'][i]:.2f})"))):
                p = np.asarray(r[key][i])
                pred = int(p.argmax())
                colors = ["lightgray"] * len(p)
                colors[true] = "tab:blue"
                if pred != true:
                    colors[pred] = "tab:red"
                ax = axes[i, j + 1]
                ax.bar(range(len(p)), p, color=colors)
                ax.set_xticks(range(len(p)), classes, fontsize=7)
                ax.set_ylim(0, 1)
                ax.set_title(f"{title}: {classes[pred]}", fontsize=8, color="red" if pred != true else "black")
        fig.suptitle("Label distributions (blue: true label, red: wrong prediction)", fontsize=9)
        fig.tight_layout()
        path = save_figure(fig, results.figures_dir / "shen_figure1.png")
    blocks: list[Block] = [
        Heading("Shen et al. Figure 1: label distributions under OSSA"),
        _blurb(cfg, sample["n"]),
        Paragraph(
            f"OSSA with L2 budget {cfg.eps:g} crafted on the original net, on the {r['n_both_correct']} sampled test "
            f"images both nets classify correctly: it fools the original on {r['n_fooled_original']} "
            f"({100 * r['original_fooling']:.1f}%); the penalised net (μ = {cfg.mu:g}) still classifies "
            f"{r['n_survived']} of those correctly. OSSA crafted on the penalised net itself (white box, same budget) "
            f"fools it on {100 * r['penalised_whitebox_fooling']:.1f}% of the images. The examples shown fool the "
            "original and not the penalised net where such images exist (the paper's choice)."
        ),
    ]
    if path is not None:
        blocks.append(Figure(path, "Left: the OSSA example; then the softmax of the original net, of the penalised net on "
                                   "the same image, and of the penalised net on its own OSSA example."))
    return blocks


register("shen_figure1", ShenConfig,
         "Shen Figure 1: label distributions of the original and the penalised net on OSSA examples.",
         report=figure1_report)(figure1_cells)


# ====================================================================== Figures 2 and 3


def _mu_spec(cfg: ShenConfig, mu: float) -> ModelSpec:
    return ModelSpec(name=f"mu={mu:g}", defense=_fisher(cfg, mu))


def _curve_spec(cfg: ShenConfig, attack: str, budgets: list[float]) -> dict[str, Any]:
    """What decides a fooling curve beyond the network: the attack, its budgets, the images."""
    return {"attack": attack, "budgets": [float(b) for b in budgets], "draw": _draw(cfg),
            "attack_seed": cfg.seed, "batch_size": cfg.batch_size}


def _mu_cell(cfg: ShenConfig, mu: float) -> tuple[str, dict[str, Any]]:
    return f"mu/{mu:g}", {"net": _net(cfg, _mu_spec(cfg, mu)), **_curve_spec(cfg, "ossa", cfg.budgets)}


def _baseline_cell(cfg: ShenConfig, seed: int) -> tuple[str, dict[str, Any]]:
    return f"baseline/seed{seed}", {"net": _net(cfg, _mu_spec(cfg, 0.0), seed), **_curve_spec(cfg, "ossa", cfg.budgets)}


def figure2_3_cells(run: Run, cfg: ShenConfig, ctx: Context) -> None:
    if not cfg.mus:
        raise ValueError(f"{cfg.name}: 'mus' is empty; give the penalty weights to sweep (e.g. [0.0, 0.02]).")
    test, x, y = _sample(run, cfg, ctx)

    def measure(mu: float, seed: int) -> dict[str, Any]:
        tm = _train(cfg, ctx, _mu_spec(cfg, mu), seed=seed)
        out = one_step_curve(OSSA(eps=1.0), tm.model, x, y, cfg.budgets, seed=cfg.seed, batch_size=cfg.batch_size)
        return {"mu": mu, "seed": seed, **model_record(tm, x, y), **out.as_dict()}

    for mu in cfg.mus:
        name, spec = _mu_cell(cfg, mu)
        run.cell(name, partial(measure, mu, cfg.seed), spec=spec)
    for s in cfg.baseline_seeds:
        name, spec = _baseline_cell(cfg, s)
        run.cell(name, partial(measure, 0.0, s), spec=spec)


def figure2_3_report(cfg: ShenConfig, results: Results) -> list[Block]:
    import matplotlib.pyplot as plt

    if not cfg.mus:
        raise ValueError(f"{cfg.name}: 'mus' is empty; give the penalty weights to sweep (e.g. [0.0, 0.02]).")
    sample = results.cell(*_sample_cell(cfg))
    curves = {mu: results.cell(*_mu_cell(cfg, mu)) for mu in cfg.mus}
    baselines = [results.cell(*_baseline_cell(cfg, s)) for s in cfg.baseline_seeds]
    plain = [r for mu, r in curves.items() if mu == 0] + baselines
    base_acc = float(np.mean([r["test_accuracy"] for r in plain])) if plain else math.nan

    mus = list(curves)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(mus, [100 * curves[m]["test_accuracy"] for m in mus], marker="o", label="penalised (μ)")
    if plain:
        ax.axhline(100 * base_acc, ls=":", color="gray", label=f"baseline μ = 0 (mean of {len(plain)})")
    ax.set_xlabel("μ")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path2 = save_figure(fig, results.figures_dir / "shen_figure2.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in mus:
        c = curves[m]
        ax.plot(c["budgets"], [100 * v for v in c["fooling_ratio"]], marker=".", label=f"μ = {m:g}")
    ax.set_xlabel("L2 budget ε (OSSA)")
    ax.set_ylabel("fooling ratio (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path3 = save_figure(fig, results.figures_dir / "shen_figure3.png")

    show = [b for b in (1.0, 2.0, 4.0, 6.0) if b in cfg.budgets] or [cfg.budgets[-1]]
    rows = []
    for m in mus:
        c = curves[m]
        rows.append([f"{m:g}", pct(c["test_accuracy"]), c["lambda_max_median"],
                     *[pct(c["fooling_ratio"][c["budgets"].index(b)]) for b in show], c["n_correct"],
                     c["last_epoch_capped"], c["checkpoint_key"][:12]])
    p = cfg.paper
    blocks: list[Block] = [
        Heading("Shen et al. Figures 2 and 3: accuracy and OSSA fooling ratio against μ"),
        _blurb(cfg, sample["n"]),
        Paragraph(
            f"One network per μ (loss CE + μ Σ 1/p_i, penalty `{cfg.penalty}`), same preset and seed; OSSA on the "
            "sampled test images each network classifies correctly, L2 budgets before clipping. "
            + (f"Baseline (dotted): mean test accuracy of the μ = 0 networks, seeds "
               f"{[cfg.seed, *cfg.baseline_seeds] if 0.0 in curves else cfg.baseline_seeds}: {fmt_number(pct(base_acc))}%. "
               if plain else "")
            + ("Paper: " + str(p.get("note", "")) if p else "")
        ),
        Table(["μ", "test accuracy %", "median λ_max", *[f"fooling % at ε={b:g}" for b in show], "attacked",
               "capped (last epoch)", "checkpoint"], rows),
        Figure(path2, "Figure 2: test accuracy against μ (dotted: the μ = 0 baseline)."),
        Figure(path3, "Figure 3: OSSA fooling ratio against the L2 budget, one curve per μ."),
    ]
    if baselines:
        blocks.insert(4, Table(["seed", "test accuracy %", *[f"fooling % at ε={b:g}" for b in show]],
                               [[r["seed"], pct(r["test_accuracy"]),
                                 *[pct(r["fooling_ratio"][r["budgets"].index(b)]) for b in show]] for r in baselines],
                               caption="Extra μ = 0 networks (other seeds) for the baseline"))
    return blocks


register("shen_figure2_3", ShenConfig,
         "Shen Figures 2-3: test accuracy and OSSA fooling ratio against the penalty weight μ (one cached model per μ).",
         report=figure2_3_report)(figure2_3_cells)


# ====================================================================== Figure 5


def _figure5_specs(cfg: ShenConfig) -> list[ModelSpec]:
    if cfg.mu <= 0:
        raise ValueError(f"{cfg.name}: Figure 5 attacks a penalised net; set mu > 0 (got {cfg.mu}).")
    return [ModelSpec(name="original"), ModelSpec(name=f"mu={cfg.mu:g}", defense=_fisher(cfg, cfg.mu))]


def _curve_record(make: Callable[[], Any], tm: Any, x: Tensor, y: Tensor, budgets: list[float], seed: int,
                  batch_size: int) -> dict[str, Any]:
    return one_step_curve(make(), tm.model, x, y, budgets, seed=seed, batch_size=batch_size).as_dict()


def _figure5_attacks(cfg: ShenConfig) -> dict[str, tuple[Callable[[], OneStepAttack], list[float]]]:
    return {
        "fgm": (lambda: FGM(eps=1.0), list(cfg.budgets)),
        "otcm": (lambda: OTCM(eps=1.0), list(cfg.budgets)),
        "fgsm": (lambda: FGSM(eps=0.1), list(cfg.linf_budgets)),
    }


def _figure5_cell(cfg: ShenConfig, spec: ModelSpec, key: str) -> tuple[str, dict[str, Any]]:
    return f"figure5/{spec.name}/{key}", {"net": _net(cfg, spec),
                                          **_curve_spec(cfg, key, _figure5_attacks(cfg)[key][1])}


def figure5_cells(run: Run, cfg: ShenConfig, ctx: Context) -> None:
    specs = _figure5_specs(cfg)
    test, x, y = _sample(run, cfg, ctx)
    for spec in specs:
        tm = _train(cfg, ctx, spec)
        name, cell_spec = _model_cell(cfg, spec)
        run.cell(name, partial(model_record, tm, x, y), spec=cell_spec)
        for key, (make, budgets) in _figure5_attacks(cfg).items():
            name, cell_spec = _figure5_cell(cfg, spec, key)
            run.cell(name, partial(_curve_record, make, tm, x, y, budgets, cfg.seed, cfg.batch_size), spec=cell_spec)


def figure5_report(cfg: ShenConfig, results: Results) -> list[Block]:
    import matplotlib.pyplot as plt

    specs = _figure5_specs(cfg)
    attacks = _figure5_attacks(cfg)
    sample = results.cell(*_sample_cell(cfg))
    res = {s.name: {"model": results.cell(*_model_cell(cfg, s)),
                    **{key: results.cell(*_figure5_cell(cfg, s, key)) for key in attacks}} for s in specs}
    names = [str(s.name) for s in specs]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, key in zip(axes, attacks, strict=True):
        for name, style in zip(names, ("--", "-"), strict=True):
            c = res[name][key]
            ax.plot(c["budgets"], [100 * v for v in c["fooling_ratio"]], style, marker=".", label=name)
        ax.set_title(key.upper())
        ax.set_ylabel("fooling ratio (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_xlabel("L2 budget ε")
    axes[1].set_xlabel("L2 budget ε (random wrong-class target)")
    axes[2].set_xlabel("L∞ budget ε")
    fg = res[names[1]]["fgsm"]
    top = axes[2].secondary_xaxis("top")
    top.set_xticks(fg["budgets"][:: max(1, len(fg["budgets"]) // 5)],
                   [f"{v:.1f}" for v in fg["mean_applied_l2"][:: max(1, len(fg["budgets"]) // 5)]])
    top.set_xlabel("mean applied L2 (penalised net)", fontsize=8)
    fig.tight_layout()
    path = save_figure(fig, results.figures_dir / "shen_figure5.png")
    l2_rows = [[f"{b:g}", *[pct(res[n][k]["fooling_ratio"][i]) for k in ("fgm", "otcm") for n in names]]
               for i, b in enumerate(res[names[0]]["fgm"]["budgets"])]
    linf_rows = [[f"{b:g}", *[res[n]["fgsm"]["mean_applied_l2"][i] for n in names],
                  *[pct(res[n]["fgsm"]["fooling_ratio"][i]) for n in names]]
                 for i, b in enumerate(res[names[0]]["fgsm"]["budgets"])]
    acc = ", ".join(f"{n} {fmt_number(pct(res[n]['model']['test_accuracy']))}%" for n in names)
    return [
        Heading("Shen et al. Figure 5: FGM, OTCM and FGSM against the penalised net"),
        _blurb(cfg, sample["n"]),
        Paragraph(f"Test accuracy: {acc}. Fooling ratios on the sampled test images each net classifies correctly; "
                  "OTCM steers to one random wrong class per image (the same draw at every budget). "
                  + str(cfg.paper.get("note", ""))),
        Table(["L2 ε", *[f"{k.upper()} {n} %" for k in ("fgm", "otcm") for n in names]], l2_rows,
              caption="FGM and OTCM fooling ratios against the L2 budget (before clipping)"),
        Table(["L∞ ε", *[f"mean applied L2, {n}" for n in names], *[f"FGSM {n} %" for n in names]], linf_rows,
              caption="FGSM: fooling ratio against the L∞ budget, with the L2 norm it reaches after clipping"),
        Figure(path, "Fooling ratio against the budget; original dashed, penalised solid. FGSM on its L∞ axis; its top "
                     "axis gives the mean L2 norm the sign step reaches."),
    ]


register("shen_figure5", ShenConfig,
         "Shen Figure 5: FGM, OTCM and FGSM fooling ratios of the penalised net (and the original).",
         report=figure5_report)(figure5_cells)


# ====================================================================== Table 1

#: Table 1 hatches a ratio whose attack fooled fewer than this fraction of either network's images.
_FEW_FOOLED = 0.9


def _few_fooled(cells: dict[tuple[str, str], dict[str, Any]], ref: str) -> set[tuple[str, str]]:
    """The ``(network, attack)`` ratios of Table 1 whose two means cover different images: the
    attack fooled fewer than ``_FEW_FOOLED`` of the correctly classified images on that network
    or on the reference ``ref``."""
    return {(n, label) for (n, label), cell in cells.items()
            if n != ref and min(cell["fooling_ratio"], cells[ref, label]["fooling_ratio"]) < _FEW_FOOLED}


def _attack_cell_spec(cfg: ShenConfig, spec: AttackSpec) -> dict[str, Any]:
    """What decides a row's adversarial examples beyond the network (``crafted``'s inputs)."""
    return {"attack": config_to_dict(spec), "draw": _draw(cfg), "attack_seed": cfg.seed, "batch_size": cfg.batch_size}


def _table1_cell(cfg: ShenConfig, mspec: ModelSpec, spec: AttackSpec) -> tuple[str, dict[str, Any]]:
    return f"table1/{mspec.name}/{spec.title}", {"net": _net(cfg, mspec), **_attack_cell_spec(cfg, spec)}


def _distances(run: Run, spec: AttackSpec, attack: Attack, tm: Any, x: Tensor, y: Tensor, *, seed: int,
               batch_size: int) -> dict[str, Any]:
    """One cell of Table 1: the row's minimal examples on ``tm`` (:func:`crafted`), and the
    means of their distances over the correctly classified images they fool."""
    t0 = time.perf_counter()
    adv = crafted(run, spec, attack, tm, x, y, seed=seed, batch_size=batch_size)
    seconds = time.perf_counter() - t0
    dev = _device(tm.model)
    # batch_size: the model sees the examples in the batches the attack made them in
    fr = fooling_ratio(tm.model, x.to(dev), adv["x_adv"].to(dev), y.to(dev), batch_size=batch_size)
    ok = fr.fooled.cpu()
    d = x[0].numel()
    vals: dict[str, Any] = {"n": fr.n, "n_correct": fr.n_correct, "n_fooled": fr.n_fooled,
                            "fooling_ratio": fr.ratio,
                            # the attack's time, over every run that made the examples; wall_seconds: this call's
                            "seconds": adv["seconds"], "wall_seconds": seconds, "distance": spec.distance}
    norms = {k: v[ok] for k, v in perturbation_norms(adv["x_adv"] - x).items()}
    for k, v in norms.items():
        vals[f"mean_{k}"] = float(v.double().mean()) if len(v) else math.nan
    primary = norms[spec.distance].double()
    vals["median"] = float(primary.median()) if len(primary) else math.nan
    pu = paper_units(norms, spec.distance, d)
    vals["mean_paper_units"] = float(pu.mean()) if len(pu) else math.nan
    vals["per_sample"] = primary.tolist()
    if "eps" in adv:
        e = adv["eps"][ok].double()
        vals["mean_least_eps"] = float(e.mean()) if len(e) else math.nan
    return vals


def table1_cells(run: Run, cfg: ShenConfig, ctx: Context) -> None:
    _paper_model(cfg)
    attacks = [(spec, build_attack(spec)) for spec in cfg.attacks]
    test, x, y = _sample(run, cfg, ctx)
    for mspec in cfg.models:
        tm = _train(cfg, ctx, mspec)
        name, cell_spec = _model_cell(cfg, mspec)
        run.cell(name, partial(model_record, tm, x, y), spec=cell_spec)
        for spec, atk in attacks:
            name, cell_spec = _table1_cell(cfg, mspec, spec)
            run.cell(name, partial(_distances, run, spec, atk, tm, x, y, seed=cfg.seed, batch_size=cfg.batch_size),
                     spec=cell_spec)


def table1_report(cfg: ShenConfig, results: Results) -> list[Block]:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ref, cmp_name = str(cfg.models[0].name), _paper_model(cfg)
    sample = results.cell(*_sample_cell(cfg))
    specs = {spec.title: spec for spec in cfg.attacks}
    names = [str(m.name) for m in cfg.models]
    labels = list(specs)
    models = {str(m.name): results.cell(*_model_cell(cfg, m)) for m in cfg.models}
    cells = {(str(m.name), label): results.cell(*_table1_cell(cfg, m, spec))
             for m in cfg.models for label, spec in specs.items()}
    paper_rows = []
    for label in labels:
        a, b = cells[ref, label], cells[cmp_name, label]
        pa, pb = _paper_pair(cfg, label)
        paper_rows.append([label, specs[label].distance, a["mean_paper_units"], b["mean_paper_units"],
                           b["mean_paper_units"] / a["mean_paper_units"], pa, pb, pb / pa,
                           f"{a['n_fooled']}/{a['n_correct']}", f"{b['n_fooled']}/{b['n_correct']}"])
    plain_rows = [[label, specs[label].distance, *[cells[n, label][f"mean_{specs[label].distance}"] for n in names]]
                  for label in labels]
    schedule = {str(m.name): _schedule(cfg, m) for m in cfg.models}
    model_rows = [[n, pct(models[n]["test_accuracy"]), schedule[n],
                   *[cells[n, label]["mean_paper_units"] for label in labels]] for n in names]
    ratio_rows = [[n, *[cells[n, label]["mean_paper_units"] / cells[ref, label]["mean_paper_units"] for label in labels]]
                  for n in names[1:]]
    fooled_rows = [[n, *[f"{cells[n, label]['n_fooled']}/{cells[n, label]['n_correct']}" for label in labels]]
                   for n in names]

    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels)), 3.8))
    width = 0.8 / max(1, len(names) - 1)
    hatched = _few_fooled(cells, ref)
    for i, n in enumerate(names[1:]):
        pos = np.arange(len(labels)) + i * width
        ax.bar(pos, ratio_rows[i][1:], width=width, label=n, color=f"C{i}")
        few = [j for j, label in enumerate(labels) if (n, label) in hatched]
        ax.bar(pos[few], [ratio_rows[i][1 + j] for j in few], width=width, fill=False, hatch="///", edgecolor="black")
    ax.axhline(1.0, color="gray", lw=1)
    pr = [(_paper_pair(cfg, label)[1] / _paper_pair(cfg, label)[0]) for label in labels]
    if any(not math.isnan(v) for v in pr):
        ax.plot(np.arange(len(labels)), pr, "k*", label=f"paper ({cmp_name})")
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=30, fontsize=8)
    ax.set_ylabel(f"mean distance / {ref}")
    top = max([1.0, *[v for r in ratio_rows for v in r[1:] if math.isfinite(v)], *[v for v in pr if math.isfinite(v)]])
    ax.set_ylim(0, 1.3 * top)  # headroom: the legend sits above the bars and the stars
    handles, _ = ax.get_legend_handles_labels()
    if hatched:
        handles.append(Patch(fill=False, hatch="///", edgecolor="black",
                             label=f"fooled < {100 * _FEW_FOOLED:.0f}% of the images"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", ncol=2)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = save_figure(fig, results.figures_dir / "shen_table1_ratios.png")
    return [
        Heading("Shen et al. Table 1: mean minimal perturbation"),
        _blurb(cfg, sample["n"]),
        Paragraph(
            "Minimal adversarial perturbations on the sampled test images each network classifies correctly; means "
            "over the images the attack fooled (the counts are in the last columns). FGSM, FGM, BIM and PGD: the "
            "smallest budget that fools, by per-sample binary search; C&W, DeepFool, JSMA: the attacks' own minimal "
            "perturbations. Paper units (Foolbox): L2 rows ‖δ‖²/D, L1 rows ‖δ‖₁/D, L∞ rows ‖δ‖∞, L0 a count of "
            f"changed pixels, D = {sample['input_size']}. Paper ratios: 1.24 to 1.73. Hatched bars: the attack fooled "
            f"fewer than {100 * _FEW_FOOLED:.0f}% of the images on one of the two networks, so the two means cover "
            "different images and the ratio understates the harder network's true distance."
        ),
        Table(["attack", "norm", f"{ref}", f"{cmp_name}", "ratio", "paper original", "paper ours", "paper ratio",
               f"fooled {ref}", f"fooled {cmp_name}"], paper_rows,
              caption="The paper's layout, in the paper's units"),
        Table(["attack", "norm", *[f"{n} (plain norm)" for n in names]], plain_rows,
              caption="The same means as plain norms (‖δ‖₂, ‖δ‖₁, ‖δ‖∞, changed elements)"),
        Table(["network", "clean test accuracy %", "training", *labels], model_rows,
              caption="Every network (extra defenses as extra rows), paper units"),
        Table(["network", *labels], ratio_rows, caption=f"Ratio of the mean distance to the {ref} network's"),
        Table(["network", *labels], fooled_rows, caption="Fooled / attacked (correctly classified) images"),
        Figure(path, f"Mean minimal distance relative to the {ref} network (stars: the paper's {cmp_name} ratios; "
                     f"hatched: the attack fooled fewer than {100 * _FEW_FOOLED:.0f}% of the images)."),
    ]


register("shen_table1", ShenConfig,
         "Shen Table 1: mean minimal perturbation of nine attacks, original vs penalised (and other defenses).",
         report=table1_report)(table1_cells)


# ====================================================================== Table 2


def _table2_cell(cfg: ShenConfig, src: ModelSpec, spec: AttackSpec) -> tuple[str, dict[str, Any]]:
    return f"table2/{spec.title}/{src.name}", {"source": _net(cfg, src), "targets": [_net(cfg, m) for m in cfg.models],
                                               **_attack_cell_spec(cfg, spec)}


def table2_cells(run: Run, cfg: ShenConfig, ctx: Context) -> None:
    _paper_model(cfg)
    attacks = [(spec, build_attack(spec)) for spec in cfg.attacks]
    test, x, y = _sample(run, cfg, ctx)
    trained = {str(m.name): _train(cfg, ctx, m) for m in cfg.models}
    for m in cfg.models:
        name, cell_spec = _model_cell(cfg, m)
        run.cell(name, partial(model_record, trained[str(m.name)], x, y), spec=cell_spec)
    nets = {n: tm.model for n, tm in trained.items()}
    dev = _device(next(iter(nets.values())))
    xd, yd = x.to(dev), y.to(dev)
    for spec, atk in attacks:
        for m in cfg.models:
            src = str(m.name)

            def measure(spec: AttackSpec = spec, atk: Attack = atk, src: str = src) -> dict[str, Any]:
                t0 = time.perf_counter()
                adv = crafted(run, spec, atk, trained[src], x, y, seed=cfg.seed, batch_size=cfg.batch_size)
                tm = transfer_from_examples({src: adv["x_adv"]}, {src: nets[src]}, nets, xd, yd,
                                            count="fooled_source", batch_size=cfg.batch_size, attack=repr(atk))
                return {**tm.as_dict(), "seconds": time.perf_counter() - t0}

            name, cell_spec = _table2_cell(cfg, m, spec)
            run.cell(name, measure, spec=cell_spec)


def table2_report(cfg: ShenConfig, results: Results) -> list[Block]:
    ref, cmp_name = str(cfg.models[0].name), _paper_model(cfg)
    sample = results.cell(*_sample_cell(cfg))
    labels = [spec.title for spec in cfg.attacks]
    models = {str(m.name): results.cell(*_model_cell(cfg, m)) for m in cfg.models}
    rows = {(spec.title, str(m.name)): results.cell(*_table2_cell(cfg, m, spec))
            for spec in cfg.attacks for m in cfg.models}

    def acc(label: str, src: str, tgt: str) -> tuple[float, str]:
        r = rows[label, src]
        j = r["targets"].index(tgt)
        n_f, n_c = r["n_fooled"][0][j], r["n_counted"][0][j]
        return (1 - n_f / n_c if n_c else math.nan), f"{n_c - n_f}/{n_c}"

    paper_rows = []
    for label in labels:
        a, ca = acc(label, ref, cmp_name)
        b, cb = acc(label, cmp_name, ref)
        pa, pb = _paper_pair(cfg, label)
        paper_rows.append([label, pct(a), ca, pct(b), cb, pa, pb])
    others = [n for n in models if n != ref]
    schedule = {str(m.name): _schedule(cfg, m) for m in cfg.models}
    to_rows = [[n, pct(models[n]["test_accuracy"]), schedule[n], *[pct(acc(label, ref, n)[0]) for label in labels]]
               for n in others]
    from_rows = [[n, pct(models[n]["test_accuracy"]), schedule[n], *[pct(acc(label, n, ref)[0]) for label in labels]]
                 for n in others]
    return [
        Heading("Shen et al. Table 2: black-box transfer (cross-model classification accuracy)"),
        _blurb(cfg, sample["n"]),
        Paragraph(
            "For each attack and each source network, adversarial examples are crafted on the source (minimal "
            "perturbations as in Table 1; OSSA at its fixed budget) and every other network classifies them; a cell "
            "counts the examples that fool the source (the source classifies the clean image correctly and the "
            "adversarial one wrongly) and gives the target's accuracy on them, with 'correct/counted'. "
            "The examples are Table 1's (made the same way: same seed and batches), stored once per network and "
            "attack in this run; `transfer_from_examples(..., "
            "count=\"fooled_source\")`; the full matrices are in results.jsonl."
        ),
        Table(["attack", f"{ref} → {cmp_name} acc %", "count", f"{cmp_name} → {ref} acc %", "count",
               "paper: original → ours %", "paper: ours → original %"], paper_rows,
              caption="The paper's layout: generated on the first network, tested on the second"),
        Table(["network (target)", "clean test accuracy %", "training", *labels], to_rows,
              caption=f"Accuracy of each network on examples crafted on `{ref}` that fool it"),
        Table(["network (source)", "clean test accuracy %", "training", *labels], from_rows,
              caption=f"Accuracy of `{ref}` on examples crafted on each network that fool that network"),
    ]


register("shen_table2", ShenConfig,
         "Shen Table 2: black-box transfer accuracies between the original and the penalised net (and other defenses).",
         report=table2_report)(table2_cells)
