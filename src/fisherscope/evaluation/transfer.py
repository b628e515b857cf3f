"""Black-box transfer tables: craft on each source model, evaluate on each target model.

The tables of Zhao et al. (Table 3) and Shen et al. (Table 2) report, for every
(source, target) pair, how often adversarial examples crafted on the source also fool
the target. Papers differ, often silently, in *which examples count*; here that is an
explicit argument, and every cell carries the counts behind its rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .._batching import check_batch_size, in_batches, predict
from .._validation import (
    POSITIVE_INT,
    check_inputs,
    check_labels,
    check_params,
    one_of,
    warns_once,
)
from ..attacks.base import Attack

__all__ = ["COUNT_RULES", "TransferMatrix", "transfer_from_examples", "transfer_matrix"]

CountRule = Literal["fooled_source", "all", "correct_target", "correct_pair", "correct_all"]

#: which examples a cell (source s, target t) counts, and what its rate means
COUNT_RULES: dict[str, str] = {
    "fooled_source": "examples that fool the source (s correct on x, wrong on x_adv); "
                     "rate = fraction of them that t misclassifies",
    "all": "every example; rate = fraction of x_adv that t misclassifies (t's clean errors included)",
    "correct_target": "examples t classifies correctly; rate = t's fooling ratio (Shen et al.)",
    "correct_pair": "examples s and t both classify correctly; rate = fraction t misclassifies after the attack",
    "correct_all": "examples every model (sources and targets) classifies correctly: the same set in every cell",
}


@dataclass(frozen=True)
class TransferMatrix:
    """Transfer rates, one row per source model and one column per target model.

    Attributes
    ----------
    sources, targets : tuple of str
        Row and column names.
    rates : Tensor
        (S, T) float64: ``n_fooled / n_counted`` (NaN where nothing is counted).
    n_fooled : Tensor
        (S, T) int64: counted examples whose adversarial (crafted on the row's model)
        the column's model misclassifies.
    n_counted : Tensor
        (S, T) int64: examples counted in the cell (see ``count``).
    count : str
        The counting rule, one of :data:`COUNT_RULES`.
    n : int
        Examples attacked.
    attack : str
        ``repr`` of the attack.
    """

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    rates: Tensor
    n_fooled: Tensor
    n_counted: Tensor
    count: str
    n: int
    attack: str

    def rate(self, source: str, target: str) -> float:
        """The rate of one cell, by model names."""
        for what, key, names in (("source", source, self.sources), ("target", target, self.targets)):
            if key not in names:
                raise KeyError(f"no {what} model named {key!r}; the {what}s are {list(names)}.")
        return float(self.rates[self.sources.index(source), self.targets.index(target)])

    def to_table(self, *, percent: bool = True, digits: int = 1, counts: bool = True) -> str:
        """A markdown table: rows = source (crafted on), columns = target (evaluated on).

        Each cell reads ``rate`` or, with ``counts=True``, ``rate (fooled/counted)``.
        """
        head = "| crafted on \\ evaluated on | " + " | ".join(self.targets) + " |"
        sep = "|---|" + "---|" * len(self.targets)
        lines = [head, sep]
        for i, s in enumerate(self.sources):
            cells = []
            for j in range(len(self.targets)):
                r = float(self.rates[i, j])
                if math.isnan(r):
                    txt = "–"
                else:
                    txt = f"{100 * r:.{digits}f}%" if percent else f"{r:.{digits + 2}f}"
                if counts:
                    txt += f" ({int(self.n_fooled[i, j])}/{int(self.n_counted[i, j])})"
                cells.append(txt)
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, object]:
        """Plain lists for JSON results."""
        return {
            "sources": list(self.sources),
            "targets": list(self.targets),
            "rates": self.rates.tolist(),
            "n_fooled": self.n_fooled.tolist(),
            "n_counted": self.n_counted.tolist(),
            "count": self.count,
            "n": self.n,
            "attack": self.attack,
        }


def _named(models: Mapping[str, nn.Module] | Sequence[nn.Module], what: str) -> dict[str, nn.Module]:
    if isinstance(models, nn.Module):
        raise TypeError(f"{what} must be a dict name -> model or a list of models; got a single "
                        f"{type(models).__name__}. Wrap it: {{'name': model}} or [model].")
    if isinstance(models, Mapping):
        named = dict(models)
    elif isinstance(models, Sequence) and not isinstance(models, str):
        named = {f"{i}:{type(m).__name__}": m for i, m in enumerate(models)}
    else:
        raise TypeError(f"{what} must be a dict name -> model or a list of models; got {type(models).__name__}.")
    if not named:
        raise ValueError(f"{what} is empty; pass at least one model.")
    for name, m in named.items():
        if not isinstance(name, str):
            raise TypeError(f"{what}: model names must be strings; got {name!r}.")
        if not isinstance(m, nn.Module):
            raise TypeError(f"{what}[{name!r}] must be an nn.Module mapping x to logits; got {type(m).__name__}.")
    return named


@warns_once
def transfer_matrix(
    attack: Attack,
    source_models: Mapping[str, nn.Module] | Sequence[nn.Module],
    target_models: Mapping[str, nn.Module] | Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    *,
    count: CountRule = "fooled_source",
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> TransferMatrix:
    """Black-box transfer rates of ``attack`` from each source model to each target model.

    For every source s, ``attack`` crafts x_adv on s (untargeted, against the true
    labels ``y``); every target t is evaluated on those x_adv with predictions
    recomputed here. Which examples a cell counts is ``count``:

    - ``"fooled_source"`` (default): the examples that fool s, i.e. s classifies x
      correctly and x_adv wrongly; the rate is the fraction of them t misclassifies
      (the diagonal is 1 by construction).
    - ``"all"``: every example; the rate is t's error on x_adv (its clean errors
      included).
    - ``"correct_target"``: the examples t classifies correctly (Shen et al.'s fooling
      ratio of t).
    - ``"correct_pair"``: the examples both s and t classify correctly.
    - ``"correct_all"``: the examples every model, sources and targets, classifies
      correctly — one common set for the whole table.

    On the diagonal (a model that is both source and target, by name) each rule gives
    the attack's own white-box rate under that rule.

    Parameters
    ----------
    attack : Attack
        Any attack; run with ``targeted=False`` on each source.
    source_models, target_models : dict name -> nn.Module, or list of nn.Module
        Lists get the names ``"<index>:<class name>"``. The same model may appear in both.
    x : Tensor
        Clean inputs within ``attack.bounds``.
    y : Tensor
        True labels, int64 (N,).
    count : str
        Counting rule, see above and :data:`COUNT_RULES`.
    generator : torch.Generator, optional
        Randomness of the attack; the sources draw from it one after the other.
    batch_size : int, optional
        Attack and evaluate in chunks of this size (default: the whole batch).

    Shapes
    ------
    x: (N, C, H, W) or (N, D); y: (N,) -> rates (S, T).

    References
    ----------
    Zhao, C. et al. "The adversarial attack and detection under the Fisher information
    metric." AAAI 2019, Table 3. Shen, C. et al. arXiv:1909.06137, Table 2.

    Examples
    --------
    >>> tm = transfer_matrix(FGM(eps=2.0), {"lenet": a, "cnn": b}, {"lenet": a, "cnn": b}, x, y)
    >>> print(tm.to_table())  # doctest: +ELLIPSIS
    | crafted on \\ evaluated on | lenet | cnn |
    |---|---|---|
    | lenet | 100.0% (.../...) | ...% (.../...) |
    | cnn | ...% (.../...) | 100.0% (.../...) |
    """
    if not isinstance(attack, Attack):
        raise TypeError(f"attack must be a fisherscope Attack instance (e.g. FGM(eps=2.0)); got {type(attack).__name__}.")
    _check_count("transfer_matrix", count, batch_size)
    sources = _named(source_models, "source_models")
    _named(target_models, "target_models")  # fail before the (long) attacks, not after
    check_inputs(x, y, bounds=attack.bounds)
    check_labels(y, x.shape[0])
    check_batch_size(batch_size, "transfer_matrix", allow_none=True)
    x, y = x.detach(), y.to(x.device)
    adversarial = {
        name: in_batches(lambda xb, yb, src=src: attack(src, xb, yb, generator=generator), x, y, batch_size=batch_size,
                         progress=f"transfer: attack on {name}")
        for name, src in sources.items()
    }
    return transfer_from_examples(adversarial, sources, target_models, x, y, count=count, batch_size=batch_size,
                                  attack=repr(attack))


def _check_count(owner: str, count: str, batch_size: int | None) -> None:
    check_params(owner, {"count": count, "batch_size": batch_size}, {
        "count": one_of(*sorted(COUNT_RULES)),
        "batch_size": POSITIVE_INT.or_none("one batch"),
    })


@warns_once
def transfer_from_examples(
    adversarial: Mapping[str, Tensor],
    source_models: Mapping[str, nn.Module],
    target_models: Mapping[str, nn.Module] | Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    *,
    count: CountRule = "fooled_source",
    batch_size: int | None = None,
    attack: str = "precomputed",
) -> TransferMatrix:
    """:func:`transfer_matrix` on adversarial examples crafted beforehand.

    ``adversarial[s]`` holds the examples crafted on ``source_models[s]`` from ``x``
    (same shape, same order); the counting rules are :func:`transfer_matrix`'s. Use it to
    reuse examples another measurement already made (Shen et al.'s Tables 1 and 2 share
    their minimal perturbations) instead of attacking again.

    Shapes
    ------
    adversarial[s], x: (N, ...); y: (N,) -> rates (S, T).
    """
    _check_count("transfer_from_examples", count, batch_size)
    sources = _named(source_models, "source_models")
    targets = _named(target_models, "target_models")
    if set(adversarial) != set(sources):
        raise ValueError(f"adversarial must hold one tensor per source model; sources {sorted(sources)}, "
                         f"adversarial {sorted(adversarial)}.")
    check_labels(y, x.shape[0])
    for name, xa in adversarial.items():
        if not isinstance(xa, Tensor) or xa.shape != x.shape:
            raise ValueError(f"adversarial[{name!r}] must be a tensor of x's shape {tuple(x.shape)}; got "
                             f"{tuple(xa.shape) if isinstance(xa, Tensor) else type(xa).__name__}.")
    check_batch_size(batch_size, "transfer_from_examples", allow_none=True)
    n = x.shape[0]
    y = y.to(x.device)
    models: dict[int, nn.Module] = {id(m): m for m in [*sources.values(), *targets.values()]}
    correct = {k: predict(m, x, batch_size) == y for k, m in models.items()}
    correct_all = torch.stack(list(correct.values())).all(0)

    s_n, t_n = len(sources), len(targets)
    n_fooled = torch.zeros(s_n, t_n, dtype=torch.int64)
    n_counted = torch.zeros(s_n, t_n, dtype=torch.int64)
    for i, (name, src) in enumerate(sources.items()):
        x_adv = adversarial[name].to(x.device)
        wrong_src = predict(src, x_adv, batch_size) != y
        fooled_src = correct[id(src)] & wrong_src
        for j, tgt in enumerate(targets.values()):
            wrong = wrong_src if tgt is src else predict(tgt, x_adv, batch_size) != y
            if count == "fooled_source":
                counted = fooled_src
            elif count == "all":
                counted = torch.ones_like(wrong)
            elif count == "correct_target":
                counted = correct[id(tgt)]
            elif count == "correct_pair":
                counted = correct[id(src)] & correct[id(tgt)]
            else:
                counted = correct_all
            n_counted[i, j] = int(counted.sum())
            n_fooled[i, j] = int((counted & wrong).sum())
    rates = torch.where(n_counted > 0, n_fooled.double() / n_counted.clamp_min(1).double(),
                        torch.full((s_n, t_n), float("nan"), dtype=torch.float64))
    return TransferMatrix(tuple(sources), tuple(targets), rates, n_fooled, n_counted, count, n, attack)
