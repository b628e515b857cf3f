"""The networks and attacks an experiment config names, and running them (part of the kit).

- :class:`ModelSpec` one trained network (a row of a config's ``[[models]]``),
- :class:`AttackSpec` one attack (a row of ``[[attacks]]``), built by :func:`build_attack`,
- :func:`train_spec` / :func:`model_record` train (or load) a ModelSpec's network and say
  what a report needs about it,
- :func:`crafted` an attack's adversarial examples made through per-batch cells of the
  run (:class:`~fisherscope.experiments.runner.Artifact` values), so a killed run loses at
  most the batch that was running and a resumed one ends bit for bit where an unbroken
  one would.

Both spec classes carry the fields of every experiment that uses them; each experiment
reads the ones it needs. Fields added for one experiment are declared
``omit_if_default``, so the config hashes of the others do not change.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .._batching import check_batch_size
from ..attacks import ATTACKS, Attack
from ..evaluation import MinimalBudget
from .base import Context
from .common import predict, trained_model
from .config import config_to_dict
from .runner import Artifact, Run

__all__ = ["AttackSpec", "Distance", "ModelSpec", "attack_ident", "build_attack", "crafted", "model_record", "net_spec",
           "train_spec"]

Distance = Literal["linf", "l2", "l1", "l0"]

_OMIT = {"omit_if_default": True}


# ====================================================================== networks


@dataclass(frozen=True)
class ModelSpec:
    """One trained network of an experiment.

    Parameters
    ----------
    name : str, optional
        Row / column name in the report and part of the cell names (Shen, Zhao Table 3:
        required there).
    defense : dict, optional
        The ``defense=`` mapping of :func:`fisherscope.training.train_model` (None: plain
        cross-entropy).
    arch, preset : str, optional
        Architecture and training preset (default: the config's).
    model_kwargs : dict, optional
        Constructor keywords merged into the preset's (``{"activation": "elu"}``).
    overrides : dict, optional
        Training settings for this network only, applied after the config's ``training``.
    finetune : dict, optional
        Fine-tune this network from the plain network of the same seed, arch, preset and
        ``model_kwargs`` (trained with the config's ``training``) instead of training it from
        scratch: ``training`` updated by these settings (``{"epochs": 5, "lr": 5e-4}``), then
        ``overrides``. Overrides a config-wide ``finetune`` for this network; the report
        names the schedule. ``{}`` is rejected (say what to change).
    train_images : int, optional
        Train on a seeded draw (the training seed) of this many training images instead of
        the whole training split (a fine-tune on part of an epoch, where a whole epoch of an
        expensive defense costs too much); part of the checkpoint key through the data.
    dataset : str, optional
        The dataset (the accuracy table's rows; default: the config's).
    label : str, optional
        Row name of the accuracy table (default: ``name``, else the preset, else the arch).
    min_test_accuracy, max_test_accuracy : float, optional
        The accuracy table's target range of the test accuracy.
    """

    name: str | None = field(default=None, metadata=_OMIT)
    defense: dict[str, Any] | None = None
    arch: str | None = None
    preset: str | None = None
    model_kwargs: dict[str, Any] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] | None = field(default=None, metadata=_OMIT)
    train_images: int | None = field(default=None, metadata=_OMIT)
    dataset: str | None = field(default=None, metadata=_OMIT)
    label: str | None = field(default=None, metadata=_OMIT)
    min_test_accuracy: float | None = field(default=None, metadata=_OMIT)
    max_test_accuracy: float | None = field(default=None, metadata=_OMIT)

    def __post_init__(self) -> None:
        if self.finetune is not None and (not isinstance(self.finetune, dict) or not self.finetune):
            raise ValueError(
                f"model {self.row_name!r}: finetune must be a non-empty mapping of training settings such as "
                f"{{'epochs': 5, 'lr': 5e-4}}; got {self.finetune!r}. Leave it out to train from scratch."
            )
        if self.train_images is not None and (isinstance(self.train_images, bool) or not isinstance(
                self.train_images, int) or self.train_images < 1):
            raise ValueError(
                f"model {self.row_name!r}: train_images must be an integer >= 1 (a number of training images); "
                f"got {self.train_images!r}. Leave it out to train on the whole training split."
            )

    @property
    def row_name(self) -> str:
        """How a table names this network: ``label``, else ``name``, else the preset or arch."""
        return self.label or self.name or self.preset or self.arch or "model"


def train_spec(spec: ModelSpec, arch: str, dataset: str, ctx: Context, *, seed: int, preset: str | None,
               training: dict[str, Any]) -> Any:
    """Train (or load from the cache) the network ``spec`` describes; returns the TrainedModel.

    ``arch``, ``dataset`` and ``preset`` are the config's, used where ``spec`` leaves them
    out; ``training`` (the config's overrides) is applied first, then ``spec.overrides``,
    ``spec.model_kwargs`` and ``spec.defense``; ``spec.train_images`` draws the training images.
    """
    overrides = {**training, **spec.overrides}
    if spec.model_kwargs:
        overrides["model_kwargs"] = {**overrides.get("model_kwargs", {}), **spec.model_kwargs}
    if spec.defense is not None:
        overrides["defense"] = dict(spec.defense)
    return trained_model(spec.arch or arch, spec.dataset or dataset, ctx, seed=seed, preset=spec.preset or preset,
                         overrides=overrides, train_images=spec.train_images)


def model_record(tm: Any, x: Tensor, y: Tensor) -> dict[str, Any]:
    """What a report says about a network: accuracies (test split, and on ``x``), checkpoint,
    defense, epochs, training time and the fraction of capped penalty terms in its last epoch."""
    m = tm.metrics
    history = m.get("history") or []
    stats = (history[-1].get("defense_stats") or {}) if history else {}
    return {
        "test_accuracy": m["test_accuracy"],
        "sample_accuracy": float((predict(tm.model, x) == y.numpy()).mean()),
        "checkpoint_key": tm.key,
        "defense": tm.config.get("defense"),
        "epochs": tm.config["epochs"],
        "train_wall_time_s": m.get("wall_time_s", float("nan")),
        "last_epoch_capped": stats.get("capped", 0.0),
    }


# ====================================================================== attacks


@dataclass(frozen=True)
class AttackSpec:
    """One attack of an experiment (a table row).

    Shen's tables name rows with ``label`` and ``attack``, the detection experiments with
    ``name`` and ``key``; either pair works (:attr:`title`, :attr:`attack_key`).

    Parameters
    ----------
    label : str
        Row name (``"BIM-L2"``); ``name`` is the same thing.
    attack : str
        A key of :data:`fisherscope.attacks.ATTACKS`; ``key`` is the same thing.
    params : dict
        Its hyperparameters (without ``eps`` when ``search`` is on).
    distance : {"linf", "l2", "l1", "l0"}
        The norm the row is measured in (Shen Table 1).
    search : bool
        Minimal budget by per-sample binary search in [0, ``hi``] (tolerance ``tol``), a
        :class:`~fisherscope.evaluation.MinimalBudget`; otherwise the attack runs as
        configured (minimisation attacks, or a fixed budget).
    hi, tol : float
        The search interval's upper end and the final bracket's width.
    name, key : str, optional
        The detection experiments' spelling of ``label`` and ``attack``.
    """

    label: str | None = field(default=None, metadata=_OMIT)
    attack: str | None = field(default=None, metadata=_OMIT)
    params: dict[str, Any] = field(default_factory=dict)
    distance: Distance = "l2"
    search: bool = False
    hi: float = 6.0
    tol: float = 1e-3
    name: str | None = field(default=None, metadata=_OMIT)
    key: str | None = field(default=None, metadata=_OMIT)

    def __post_init__(self) -> None:
        for a, b, what in (("label", "name", "a row name"), ("attack", "key", "an ATTACKS key")):
            va, vb = getattr(self, a), getattr(self, b)
            if va is None and vb is None:
                raise ValueError(f"attack spec {self!r} needs {what}: set {a!r} (or {b!r}).")
            if va is not None and vb is not None and va != vb:
                raise ValueError(f"attack spec {self!r}: {a!r} = {va!r} and {b!r} = {vb!r} disagree; "
                                 f"set only one of them.")

    @property
    def title(self) -> str:
        """The row name (``label`` or ``name``)."""
        return self.label if self.label is not None else str(self.name)

    @property
    def attack_key(self) -> str:
        """The :data:`~fisherscope.attacks.ATTACKS` key (``attack`` or ``key``)."""
        return self.attack if self.attack is not None else str(self.key)


def attack_ident(spec: AttackSpec) -> dict[str, Any]:
    """Everything of ``spec`` that decides its adversarial examples (not the row name):
    for a cell's spec."""
    out = {k: v for k, v in config_to_dict(spec).items() if k not in ("label", "name", "key")}
    out["attack"] = spec.attack_key
    return out


def build_attack(spec: AttackSpec) -> Attack:
    """The attack of a row: ``ATTACKS[spec.attack_key](**params)``, wrapped in
    :class:`~fisherscope.evaluation.MinimalBudget` when ``spec.search`` (its inner attack
    built with ``eps = hi``). Lists in ``params`` become tuples (TOML has no tuples)."""
    key = spec.attack_key
    if key not in ATTACKS:
        raise ValueError(f"attack row {spec.title!r}: unknown attack {key!r}; valid keys are {sorted(ATTACKS)}.")
    cls = ATTACKS[key]
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.params.items()}
    if spec.search and not cls.budgeted:
        raise ValueError(f"attack row {spec.title!r}: {key!r} has no budget to search; set search=false.")
    if spec.search and "eps" in params:
        raise ValueError(f"attack row {spec.title!r}: drop 'eps' from params; search=true searches it in [0, hi].")
    cls_any: Any = cls
    try:
        inner = cls_any(**params) if not spec.search else cls_any(eps=spec.hi, **params)
    except TypeError as exc:
        raise ValueError(f"attack row {spec.title!r} ({key}): bad parameters {spec.params!r}: {exc}") from exc
    if not spec.search:
        return inner
    return MinimalBudget(attack=inner, hi=spec.hi, tol=spec.tol, bounds=inner.bounds)


def _digest(t: Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _outputs_of(res: Any) -> dict[str, Tensor]:
    out = {"x_adv": res.x_adv, "success": res.success}
    if "eps" in res.extras:
        out["eps"] = res.extras["eps"]
    return out


def crafted(run: Run, spec: AttackSpec, attack: Any, tm: Any, x: Tensor, y: Tensor, *, seed: int,
            batch_size: int) -> dict[str, Any]:
    """The adversarial examples of the row ``spec`` on the network ``tm``, made once per run.

    The attack runs on ``x`` in batches of ``batch_size``, from one generator seeded with
    ``seed`` and carried from batch to batch. Each batch is a cell of ``run``
    (``crafted/<row>/<checkpoint>/<i>``) whose spec is the network's checkpoint key,
    :func:`attack_ident` of the row, the seed, the batch size, the batch index and the
    sha256 of ``x`` and ``y``; it stores the batch's examples, success mask (and least
    budgets) as :class:`~fisherscope.experiments.runner.Artifact` s, its attack time, and
    the generator's state after it. A killed run therefore loses at most the batch that
    was running, and a resumed one continues from the next batch with the stored
    generator state: the result equals, bit for bit, that of a run never stopped.

    ``attack`` is the attack built from ``spec`` (:func:`build_attack`); anything with
    ``run(model, x, y, generator=...)`` returning an
    :class:`~fisherscope.attacks.AttackResult` works.

    Returns
    -------
    dict
        ``"x_adv"``, ``"success"`` (+ ``"eps"``, the least budget, for searched rows) as CPU
        tensors, and ``"seconds"``: the attack's own time summed over the batches (whichever
        run made them), not the time to load them.
    """
    check_batch_size(batch_size, "crafted")
    if len(y) == 0:
        raise ValueError(f"attack row {spec.title!r}: no images to attack (x is empty).")
    base = {"model": tm.key, "attack": attack_ident(spec), "seed": seed, "batch_size": batch_size,
            "x": _digest(x), "y": _digest(y)}
    dev = next(tm.model.parameters()).device
    state: np.ndarray | None = None
    batches = []
    for b, i in enumerate(range(0, len(y), batch_size)):

        def make(i: int = i, state: np.ndarray | None = state) -> dict[str, Any]:
            gen = torch.Generator()
            if state is None:
                gen.manual_seed(seed)
            else:
                gen.set_state(torch.from_numpy(state.copy()))
            t0 = time.perf_counter()
            res = attack.run(tm.model, x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev), generator=gen)
            out: dict[str, Any] = {k: Artifact(v.detach().cpu()) for k, v in _outputs_of(res).items()}
            out["seconds"] = time.perf_counter() - t0
            out["generator_state"] = Artifact(gen.get_state())
            return out

        done = run.cell(f"crafted/{spec.title}/{tm.key[:12]}/{b}", make, spec={**base, "batch": b})
        state = done["generator_state"]
        batches.append(done)
    keys = [k for k in ("x_adv", "success", "eps") if k in batches[0]]
    out: dict[str, Any] = {k: torch.cat([torch.from_numpy(np.asarray(d[k])) for d in batches]) for k in keys}
    out["seconds"] = float(sum(d["seconds"] for d in batches))
    return out


def net_spec(cfg: Any, spec: ModelSpec) -> dict[str, Any]:
    """Everything that decides the network ``spec`` of ``cfg`` trains to (a cell-spec part)."""
    from .config import config_to_dict

    return {"arch": cfg.arch, "dataset": cfg.dataset, "preset": cfg.preset, "training": cfg.training,
            "seed": cfg.seed, "model": config_to_dict(spec)}
