"""Attack wrappers: an attack with its randomness pinned to a seed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_param, integer
from .base import Attack

__all__ = ["FixedSeed"]


@dataclass(frozen=True, kw_only=True)
class FixedSeed(Attack):
    """``attack`` with a fresh generator seeded ``seed`` at every call.

    Every call makes the same random draws (PGD's random start, OTCM's random target)
    whatever the budget and whatever ``generator`` the caller passes (it is ignored), so
    the attack is a deterministic function of ``(x, y, eps)``: a budget search
    (:func:`~fisherscope.evaluation.least_perturbation`) searches one fixed function of
    the budget, and re-running at the budget it found reproduces the example it found.

    Parameters
    ----------
    attack : Attack
        The attack to run; its norm, budget, ``budgeted`` and ``supports_targeted`` are
        this wrapper's.
    seed : int
        Seed of the generator every call gets.
    bounds : (float, float)
        Input bounds (pass the inner attack's, ``bounds=attack.bounds``).

    Examples
    --------
    >>> from fisherscope.attacks import PGD
    >>> pgd = FixedSeed(attack=PGD(eps=0.3, steps=3), seed=7)
    >>> # pgd.run(model, x, y, eps=e) gives the same random start for every e
    """

    attack: Attack
    seed: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.attack, Attack):
            raise TypeError(f"FixedSeed wraps an Attack instance (e.g. PGD(eps=0.3)); got {self.attack!r}.")
        check_param("FixedSeed", "seed", self.seed, integer())

    @property
    def norm(self) -> str:  # type: ignore[override]
        return self.attack.norm

    @property
    def eps(self) -> Any:
        return getattr(self.attack, "eps", None)

    @property
    def budgeted(self) -> bool:  # type: ignore[override]
        return self.attack.budgeted

    @property
    def supports_targeted(self) -> bool:  # type: ignore[override]
        return self.attack.supports_targeted

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        res = self.attack.run(model, x, y, targeted=targeted, eps=eps,
                              generator=torch.Generator().manual_seed(self.seed))
        return res.x_adv, dict(res.extras)
