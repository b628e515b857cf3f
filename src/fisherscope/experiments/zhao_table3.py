"""Zhao et al. 2019, Table 3: cross-model OSSA fooling ratios on MNIST (``configs/zhao-table3.toml``).

Four networks: ``lenet5``, ``vgg_small`` with one input channel (preset ``vgg_small@mnist``)
and their "-adv" variants, every ReLU replaced by an ELU and trained adversarially with FGM
(Goodfellow et al.'s objective, L2 budget 2.0, mix 0.5 — the paper gives neither budget nor
mix). OSSA at L2 budget 2.0 is crafted on each network (the source) and every network
classifies the result; a cell counts only the examples that fool the source — the source
classifies the clean image correctly and the adversarial one wrongly — so the diagonal is
100% by construction (:func:`~fisherscope.evaluation.transfer_matrix`,
``count="fooled_source"``). The report uses the paper's orientation: rows = tested on,
columns = crafted from.

Training ``vgg_small`` on MNIST takes hours on 2 CPU cores. Every network is a cached
checkpoint written after each epoch, so a killed run resumes mid-training; the work after
training is one resumable cell per source network. Training and attacks use CUDA when it
is available (``Context.device``). The default test run uses tiny digits networks instead.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from ..attacks import OSSA
from ..evaluation import transfer_matrix
from .base import Context, register
from .common import load_split, predict, select_samples
from .config import ExperimentConfig
from .report import Block, Heading, Paragraph, Percent, Table, fmt_number, pct
from .runner import Results, Run
from .specs import ModelSpec, model_record, net_spec, train_spec

__all__ = ["ZhaoTable3Config"]

_FGM_ADV: dict[str, Any] = {"kind": "adversarial", "attack": "fgm", "params": {"eps": 2.0}, "mix": 0.5}


def _default_models() -> list[ModelSpec]:
    elu = {"activation": "elu"}
    return [
        ModelSpec(name="lenet", arch="lenet5"),
        ModelSpec(name="vgg", arch="vgg_small", preset="vgg_small@mnist"),
        ModelSpec(name="lenet-adv", arch="lenet5", model_kwargs=elu, defense=dict(_FGM_ADV)),
        ModelSpec(name="vgg-adv", arch="vgg_small", preset="vgg_small@mnist", model_kwargs=elu, defense=dict(_FGM_ADV)),
    ]


@dataclass(frozen=True)
class ZhaoTable3Config(ExperimentConfig):
    """Config of Zhao Table 3. ``paper`` maps tested-on name -> {crafted-from name: %}."""

    training: dict[str, Any] = field(default_factory=dict)  # overrides for every network
    n_samples: int | None = 1000
    batch_size: int = 250
    eps: float = 2.0
    models: list[ModelSpec] = field(default_factory=_default_models)
    paper: dict[str, Any] = field(default_factory=dict)


def _names(cfg: ZhaoTable3Config) -> list[str]:
    names = [m.name for m in cfg.models]
    if len(names) < 2 or any(n is None for n in names) or len(set(names)) != len(names):
        raise ValueError(f"{cfg.name}: 'models' needs at least two networks with distinct names; got {names}.")
    for m in cfg.models:
        if m.dataset not in (None, cfg.dataset):
            raise ValueError(f"{cfg.name}: model {m.name!r} sets dataset {m.dataset!r}, but every network is "
                             f"evaluated on the config's {cfg.dataset!r}; drop the model's 'dataset'.")
    return [str(n) for n in names]


def _draw(cfg: ZhaoTable3Config) -> dict[str, Any]:
    return {"dataset": cfg.dataset, "n_samples": cfg.n_samples, "seed": cfg.seed}


def _sample_cell(cfg: ZhaoTable3Config) -> tuple[str, dict[str, Any]]:
    return "sample", _draw(cfg)


def _model_cell(cfg: ZhaoTable3Config, spec: ModelSpec) -> tuple[str, dict[str, Any]]:
    return f"model/{spec.name}", {"net": net_spec(cfg, spec), "draw": _draw(cfg)}


def _transfer_cell(cfg: ZhaoTable3Config, src: ModelSpec) -> tuple[str, dict[str, Any]]:
    return f"transfer/{src.name}", {"source": net_spec(cfg, src), "targets": [net_spec(cfg, m) for m in cfg.models],
                                    "draw": _draw(cfg), "eps": cfg.eps, "batch_size": cfg.batch_size}


def table3_cells(run: Run, cfg: ZhaoTable3Config, ctx: Context) -> None:
    names = _names(cfg)
    test = load_split(cfg.dataset, "test", ctx)
    idx = select_samples(len(test), cfg.n_samples, cfg.seed)
    x, y = test.x[idx], test.y[idx]
    name, spec = _sample_cell(cfg)
    run.cell(name, lambda: {"n": int(len(y))}, spec=spec)
    trained = {}
    for mspec in cfg.models:  # one after the other: each checkpoint is written (and resumable) per epoch
        tm = train_spec(mspec, cfg.arch, cfg.dataset, ctx, seed=cfg.seed, preset=cfg.preset, training=cfg.training)
        trained[str(mspec.name)] = tm
        name, spec = _model_cell(cfg, mspec)
        run.cell(name, partial(model_record, tm, x, y), spec=spec)
    nets = {n: tm.model for n, tm in trained.items()}
    dev = next(nets[names[0]].parameters()).device
    xd, yd = x.to(dev), y.to(dev)
    attack = OSSA(eps=cfg.eps)
    for mspec in cfg.models:
        src = str(mspec.name)

        def measure(src: str = src) -> dict[str, Any]:
            t0 = time.perf_counter()
            tm = transfer_matrix(attack, {src: nets[src]}, nets, xd, yd, count="fooled_source",
                                 batch_size=cfg.batch_size)
            n_correct = int((torch.as_tensor(predict(nets[src], xd), device=dev) == yd).sum())
            return {**tm.as_dict(), "n_correct_source": n_correct, "seconds": time.perf_counter() - t0}

        name, spec = _transfer_cell(cfg, mspec)
        run.cell(name, measure, spec=spec)


def table3_report(cfg: ZhaoTable3Config, results: Results) -> list[Block]:
    names = _names(cfg)
    n = results.cell(*_sample_cell(cfg))["n"]
    records = {str(m.name): results.cell(*_model_cell(cfg, m)) for m in cfg.models}
    rows = {str(m.name): results.cell(*_transfer_cell(cfg, m)) for m in cfg.models}

    def rate(src: str, tgt: str) -> float:
        return float(rows[src]["rates"][0][rows[src]["targets"].index(tgt)])

    def count(src: str, tgt: str) -> str:
        r = rows[src]
        j = r["targets"].index(tgt)
        return f"{r['n_fooled'][0][j]}/{r['n_counted'][0][j]}"

    table = [[tgt, *[f"{fmt_number(pct(rate(src, tgt)))} ({count(src, tgt)})" for src in names]] for tgt in names]
    paper_rows = []
    for tgt in names:
        p = cfg.paper.get(tgt, {})
        paper_rows.append([tgt, *[Percent(p.get(src, math.nan)) for src in names]])  # the paper's %
    plain = [str(s.name) for s in cfg.models if s.defense is None]
    adv = [str(s.name) for s in cfg.models if s.defense is not None]

    def mean_rate(srcs: list[str], tgts: list[str], source: str) -> float:
        vals = [pct(rate(s, t)) if source == "ours" else float(cfg.paper.get(t, {}).get(s, math.nan))
                for s in srcs for t in tgts]
        return float(np.mean(vals)) if vals else math.nan

    summary = [
        ["crafted on plain, tested on -adv", mean_rate(plain, adv, "ours"), mean_rate(plain, adv, "paper")],
        ["crafted on -adv, tested on plain", mean_rate(adv, plain, "ours"), mean_rate(adv, plain, "paper")],
    ]
    acc_rows = [[n_, pct(records[n_]["test_accuracy"]), rows[n_]["n_correct_source"],
                 100 * rows[n_]["n_counted"][0][names.index(n_)] / max(rows[n_]["n_correct_source"], 1),
                 records[n_]["checkpoint_key"][:12], str(records[n_]["defense"] or "none")] for n_ in names]
    return [
        Heading("Zhao et al. Table 3: cross-model OSSA fooling ratios"),
        Paragraph(
            f"{n} test images of `{cfg.dataset}` (seeded draw, seed {cfg.seed}); OSSA with L2 budget {cfg.eps:g} "
            "crafted on each network. A cell counts the examples that fool the network they were crafted on and gives "
            "the fraction the tested network misclassifies (fooled/counted); the diagonal is 100% by construction. "
            "Rows: tested on; columns: crafted from (the paper's orientation)."
        ),
        Table(["network", "test accuracy %", "attacked (correct)", "white-box OSSA fooling %", "checkpoint",
               "defense"], acc_rows),
        Table(["tested on \\ crafted from", *names], table, caption="Fooling ratio % (fooled / counted)"),
        Table(["tested on \\ crafted from", *names], paper_rows, caption="The paper's Table 3 (MNIST)"),
        Table(["average", "ours %", "paper %"], summary,
              caption="The paper's averages: 22.51% (plain → adversarially trained) and 80.52% (the reverse)"),
    ]


register("zhao_table3", ZhaoTable3Config,
         "Zhao Table 3: cross-model OSSA fooling ratios between plain and FGM-adversarially-trained ELU networks.",
         report=table3_report)(table3_cells)
