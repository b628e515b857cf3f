"""The attack contract (see the README's "Model contract"): frozen hyperparameters, model and data at call time.

``attack(model, x, y)`` returns ``x_adv``; ``attack.run(...)`` returns an
:class:`AttackResult` with the per-sample success mask, the perturbation norms and
attack-specific extras. The base class validates inputs, runs the model in eval mode
(restoring every module's mode), and enforces the post-conditions itself: the
perturbation is projected onto the ``eps`` ball of the attack's norm and clamped to
``bounds``, so a returned example is always admissible. Inputs are never modified and
parameter gradients are never touched (``torch.autograd.grad`` with respect to the
input only).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from .._batching import per_sample
from .._random import rand, randn
from .._validation import (
    BOUNDS,
    NON_NEGATIVE,
    POSITIVE_INT,
    check_inputs,
    check_labels,
    check_logits,
    check_model_dtype,
    check_param,
    eval_mode,
    sample_list,
    user_stacklevel,
)
from ..exceptions import BudgetWarning

__all__ = ["Attack", "AttackResult", "Budget", "OneStepAttack", "Norm", "perturbation_norms", "project",
           "project_l1_ball"]

Norm = Literal["linf", "l2", "l1", "l0"]
#: how an attack's ``eps`` bounds its perturbation: ``"required"`` (always a hard budget),
#: ``"optional"`` (``eps=None`` means no projection, only the clip to ``bounds``) or
#: ``"none"`` (minimal-perturbation attacks: no ``eps`` at all)
Budget = Literal["required", "optional", "none"]
NORMS: tuple[Norm, ...] = get_args(Norm)
BUDGETS: tuple[Budget, ...] = get_args(Budget)


@dataclass(frozen=True)
class AttackResult:
    """What an attack produced for a batch.

    Attributes
    ----------
    x_adv : Tensor
        Adversarial inputs, shaped like x, inside ``bounds`` (and the budget).
    success : Tensor
        (N,) bool: misclassified (untargeted) or classified as the target (targeted),
        recomputed on ``x_adv``. Targets never equal the clean prediction (checked), so a
        targeted success always means the prediction changed to the target.
    logits_adv : Tensor
        (N, K) logits at ``x_adv``.
    norms : dict
        ``"l0", "l1", "l2", "linf"`` -> (N,) norms of the perturbation actually applied.
    extras : dict
        Attack-specific per-sample tensors (e.g. OSSA's sign and eigenvalue).
    """

    x_adv: Tensor
    success: Tensor
    logits_adv: Tensor
    norms: dict[str, Tensor]
    extras: dict[str, Tensor] = field(default_factory=dict)


def perturbation_norms(delta: Tensor) -> dict[str, Tensor]:
    """L0 / L1 / L2 / L∞ norms per sample of a perturbation (N, ...)."""
    flat = delta.flatten(1)
    return {
        "l0": (flat != 0).sum(1).to(delta.dtype),
        "l1": flat.abs().sum(1),
        "l2": flat.norm(dim=1),
        "linf": flat.abs().amax(1),
    }


def project_l1_ball(delta: Tensor, eps: Tensor) -> Tensor:
    """Euclidean projection of each sample of ``delta`` (N, ...) onto the L1 ball of radius ``eps`` (N,).

    Exact, sort-based (Duchi, Shalev-Shwartz, Singer, Chandra, ICML 2008, Fig. 1), batched:
    with u the sorted magnitudes (descending) and ρ the largest j with
    u_j > (Σ_{i≤j} u_i − eps) / j, the projection soft-thresholds every coordinate at
    θ = (Σ_{i≤ρ} u_i − eps) / ρ. Samples already inside the ball are returned unchanged.
    """
    flat = delta.flatten(1)
    mag = flat.abs()
    inside = mag.sum(1) <= eps
    u = mag.sort(dim=1, descending=True).values
    css = u.cumsum(1)
    j = torch.arange(1, u.shape[1] + 1, dtype=u.dtype, device=u.device)
    cond = u * j > css - eps.unsqueeze(1)
    rho = torch.where(cond, j, torch.zeros_like(j)).amax(1).clamp_min(1)
    theta = (css.gather(1, rho.long().unsqueeze(1) - 1).squeeze(1) - eps) / rho
    out = flat.sign() * (mag - theta.clamp_min(0).unsqueeze(1)).clamp_min(0)
    return torch.where(inside.unsqueeze(1), flat, out).reshape(delta.shape)


def random_in_ball(x: Tensor, eps: Tensor, norm: Norm, bounds: tuple[float, float],
                   generator: torch.Generator | None) -> Tensor:
    """A point drawn uniformly from the ``eps`` ball of ``norm`` around each sample of ``x``,
    clipped to ``bounds`` (the random start of PGD and of the detector-aware PGD).

    L∞: uniform in the cube; L2: a uniform direction and radius eps·r^(1/d) (uniform in the
    ball's volume). Drawn on ``generator``'s device (:mod:`fisherscope._random`).
    """
    shape = (x.shape[0], x[0].numel())
    if norm == "linf":
        u = rand(shape, generator=generator, like=x)
        delta = (2 * u - 1) * eps[:, None]
    elif norm == "l2":
        g = randn(shape, generator=generator, like=x)
        r = rand((x.shape[0],), generator=generator, like=x)
        radius = eps * r.pow(1.0 / shape[1])
        delta = g * (radius / g.norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny))[:, None]
    else:
        raise ValueError(f"random_in_ball: norm must be 'linf' or 'l2'; got {norm!r}.")
    return (x + delta.reshape(x.shape)).clamp(*bounds)


def project(x: Tensor, x_adv: Tensor, eps: Tensor, norm: Norm) -> Tensor:
    """Project ``x_adv`` onto the ``eps`` ball of ``norm`` around ``x`` (eps per sample).

    L∞: coordinate clipping; L2: radial rescaling; L1: the exact Euclidean projection
    (:func:`project_l1_ball`; a radial rescaling would stay in the ball but is not the
    nearest point). Samples with ``eps == 0`` come back as ``x`` exactly.
    """
    delta = x_adv - x
    if norm == "linf":
        e = per_sample(eps, x)
        delta = torch.maximum(torch.minimum(delta, e), -e)
    elif norm == "l2":
        n = delta.flatten(1).norm(p=2, dim=1)
        scale = torch.where(n > eps, eps / n.clamp_min(torch.finfo(n.dtype).tiny), torch.ones_like(n))
        delta = delta * per_sample(scale, x)
    elif norm == "l1":
        delta = project_l1_ball(delta, eps)
    elif norm == "l0":
        pass  # L0 attacks bound the number of pixels themselves
    else:  # pragma: no cover - guarded by the classes
        raise ValueError(f"unknown norm {norm!r}")
    out = x + delta
    return torch.where(per_sample(eps == 0, x), x, out)


def _fmt_num(v: float) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else f"{f:.6g}"


def _as_eps(value: float | Tensor, x: Tensor) -> Tensor:
    """A budget as a fresh (N,) tensor in x's dtype and device, checked finite and >= 0."""
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],) or not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        got = f"shape {tuple(t.shape)}" if t.shape != (x.shape[0],) else "negative or non-finite values"
        raise ValueError(
            f"eps must be a number >= 0 or a tensor of shape ({x.shape[0]},) of such numbers; got {got}. "
            f"Pass one finite budget >= 0 per sample, e.g. torch.full(({x.shape[0]},), 0.1)."
        )
    return t.clone()


class _validate_first_forward:
    """Context manager: check the model output and the labels on the model's first forward.

    A one-shot forward hook runs :func:`check_logits` and :func:`check_labels` (the number
    of classes is only known from the output) and removes itself, so validation costs no
    forward pass of its own. Modules that refuse hooks get one validating forward at
    ``x`` up front instead; an attack that never called the model gets it on exit.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, *, eager: bool = True) -> None:
        self.model, self.x, self.y = model, x, y
        self.eager = eager  # False: check only if the model runs (no forward of its own)
        self.done = False
        self.handle: Any = None

    def _check(self, out: Any) -> None:
        self.done = True
        check_logits(out)
        check_labels(self.y, self.x.shape[0], out.shape[1])

    def _hook(self, module: nn.Module, args: Any, out: Any) -> None:
        if not self.done:
            self.handle.remove()
            self._check(out)

    def _eager(self) -> None:
        with torch.no_grad():
            self._check(self.model(self.x))

    def __enter__(self) -> _validate_first_forward:
        try:
            self.handle = self.model.register_forward_hook(self._hook)
        except (RuntimeError, AttributeError):  # pragma: no cover - modules without hooks
            if self.eager:
                self._eager()
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.done:
            if self.handle is not None:
                self.handle.remove()
            if exc[0] is None and self.eager:
                self._eager()


@dataclass(frozen=True, kw_only=True)
class Attack(ABC):
    """Base class of every attack: subclasses are frozen dataclasses of hyperparameters.

    Subclasses implement :meth:`_run`; budgeted attacks have an ``eps`` field in the
    units of their ``norm`` and the base class enforces it.

    Class-level metadata, declared the same way by every attack (and checked when the
    attack is registered in :data:`~fisherscope.attacks.ATTACKS`):

    - ``norms``: the norms the attack supports, default first. A fixed-norm attack
      declares one (``norms = ("linf",)``) and its ``norm`` is derived from it; an attack
      whose norm is a hyperparameter also has a ``norm`` dataclass field (default
      ``norms[0]``), so ``attack.norm`` is always the norm of that instance.
    - ``budget``: a :data:`Budget` (``"required"``, ``"optional"``, ``"none"``);
      ``budgeted`` is derived from it (``budget != "none"``), a bool on the class.
    - ``standard`` and ``standard_description``: the attack's standard hyperparameters
      on [0, 1] images at digit / MNIST scale (``cls(**cls.standard)`` builds it; the
      demo and the contract tests use it) and a one-line description of that setting.
    """

    bounds: tuple[float, float] = (0.0, 1.0)

    #: supported norms, default first (see the class docstring)
    norms: ClassVar[tuple[Norm, ...]]
    norm: ClassVar[Norm] = "l2"
    #: how ``eps`` bounds the perturbation (see :data:`Budget`)
    budget: ClassVar[Budget]
    #: whether the attack has an ``eps`` budget that the base class projects onto
    #: (``budget != "none"``; an instance with ``eps=None`` is not projected)
    budgeted: ClassVar[bool] = True
    supports_targeted: ClassVar[bool] = True
    #: standard hyperparameters on [0, 1] images at digit / MNIST scale
    standard: ClassVar[Mapping[str, Any]]
    #: one line saying what the standard setting is, e.g. "L∞ ε = 0.1, one step"
    standard_description: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Derive ``norm`` from ``norms`` and ``budgeted`` from ``budget``; freeze ``standard``."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if "norms" in own and "norm" not in own and "norm" not in own.get("__annotations__", {}):
            cls.norm = own["norms"][0]
        if "budget" in own and "budgeted" not in own:
            cls.budgeted = own["budget"] != "none"
        if isinstance(own.get("standard"), dict):
            cls.standard = MappingProxyType(dict(own["standard"]))

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_param(owner, "bounds", self.bounds, BOUNDS)
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            if f.name in ("eps", "step_size"):
                check_param(owner, f.name, v, NON_NEGATIVE)
            elif f.name == "steps":
                check_param(owner, f.name, v, POSITIVE_INT)
        self._warn_budget()

    def _warn_budget(self) -> None:
        """:class:`BudgetWarning` for an L∞ ``eps`` larger than the whole input range.

        Only for an ``eps`` field of this attack (a wrapper's ``eps`` is its inner
        attack's, which warned when it was built)."""
        if "eps" not in {f.name for f in fields(self)}:
            return
        eps = self.eps  # type: ignore[attr-defined]
        if not self.budgeted or self.norm != "linf" or eps is None:
            return
        lo, hi = float(self.bounds[0]), float(self.bounds[1])
        width = hi - lo
        if float(eps) > width:
            hint = (f" If you meant {_fmt_num(eps)}/255 on images in [0, 1], pass eps={_fmt_num(eps)}/255 "
                    f"(= {float(eps) / 255:.4g})." if width == 1.0 and float(eps) >= 1 else "")
            warnings.warn(
                f"{type(self).__name__}: the L∞ budget eps={_fmt_num(eps)} is larger than the whole input "
                f"range of bounds ({_fmt_num(lo)}, {_fmt_num(hi)}) (width {_fmt_num(width)}): every "
                f"coordinate may take any value, so the attack is not budgeted at all.{hint}",
                BudgetWarning,
                stacklevel=user_stacklevel(),
            )

    # ------------------------------------------------------------------ public
    def __call__(self, model: nn.Module, x: Tensor, y: Tensor | None = None, *, targeted: bool = False,
                 generator: torch.Generator | None = None) -> Tensor:
        """Adversarial examples for ``x`` (shape and dtype of ``x``).

        Same ``x_adv`` as :meth:`run`, without the forward pass at ``x_adv`` that ``run``
        spends on the success mask: with ``y`` given, FGSM costs exactly one forward and
        one input-gradient backward. Unlike ``run`` (and ``prepare``), a targeted call does
        not check that the targets differ from the current prediction: no success is
        counted here, and pushing an input further into its target class is a valid step
        of an iterated targeted attack.
        """
        x, y, x_adv, _, _ = self._generate(model, x, y, targeted, generator, None, check_targets=False)
        return x_adv

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor | None = None,
        *,
        targeted: bool = False,
        generator: torch.Generator | None = None,
        eps: float | Tensor | None = None,
    ) -> AttackResult:
        """Attack a batch and return an :class:`AttackResult`.

        Parameters
        ----------
        model : nn.Module
            Maps x to logits (N, K).
        x : Tensor
            Inputs (N, C, H, W) or (N, D) within ``bounds``; never modified.
        y : Tensor, optional
            True labels (untargeted; default: the model's predictions) or target labels
            (``targeted=True``, required), int64 (N,). A target equal to the model's clean
            prediction is a ValueError (it would be a success without any perturbation).
        generator : torch.Generator, optional
            Randomness (random starts, random targets), for reproducibility.
        eps : float or Tensor (N,), optional
            Per-call budget overriding the attack's ``eps`` (used by
            :func:`~fisherscope.evaluation.least_perturbation`).
        """
        with eval_mode(model):  # one mode switch (and at most one ModelModeWarning) per call
            x, y, x_adv, extras, _ = self._generate(model, x, y, targeted, generator, eps)
            with torch.no_grad():
                logits_adv = model(x_adv)
        pred = logits_adv.argmax(1)
        success = pred == y if targeted else pred != y
        return AttackResult(x_adv, success, logits_adv, perturbation_norms(x_adv - x), extras)

    # -------------------------------------------------------------- internals
    def _generate(self, model: nn.Module, x: Tensor, y: Tensor | None, targeted: bool,
                  generator: torch.Generator | None, eps: float | Tensor | None, *,
                  check_targets: bool = True,
                  ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor], Tensor | None]:
        """Validate, run the attack in eval mode, project and clamp: (x, y, x_adv, extras, eps).

        With ``y`` given no forward pass is spent on validation: the model output and the
        labels are checked by a one-shot forward hook on the attack's own first forward
        (before any loss sees them). Only ``y=None`` costs a forward, for the predictions.
        """
        self._check_call(x, y, targeted)
        check_model_dtype(model, x)
        x = x.detach()
        with eval_mode(model):
            eps_t = self._eps_tensor(eps, x)
            if y is None:
                y = self._predictions(model, x, targeted)
                x_adv, extras = self._run(model, x, y, eps_t, targeted, generator)
            else:
                with _validate_first_forward(model, x, y):
                    if targeted and check_targets:
                        self._check_targets(model, x, y)
                    x_adv, extras = self._run(model, x, y, eps_t, targeted, generator)
            x_adv = self._enforce(x, x_adv.detach(), eps_t)
        return x, y, x_adv, extras, eps_t

    def _check_call(self, x: Tensor, y: Tensor | None, targeted: bool) -> None:
        """The checks of every public entry point on the batch (model checks come on its forward)."""
        check_inputs(x, y, bounds=self.bounds)
        if targeted and not self.supports_targeted:
            raise ValueError(f"{type(self).__name__} is untargeted only; call it with targeted=False.")

    def _check_targets(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        """Targeted calls: every target must differ from the model's clean prediction.

        A target that already is the predicted class would count as a success with no
        perturbation at all (a silent 100% success rate), so it is an error. Costs one
        forward pass at ``x`` (which also validates the output and the labels).
        """
        with torch.no_grad():
            pred = model(x).argmax(1)
        same = pred == y
        if bool(same.any()):
            raise ValueError(
                f"{type(self).__name__}: y (the targets of a targeted=True call) must be a class other "
                f"than the model's clean prediction for every sample; got {int(same.sum())} of "
                f"{x.shape[0]} targets equal to it (samples {sample_list(same)}). Such a sample is "
                "already classified as its target, so it would count as a success without any "
                "perturbation. Pass other targets, e.g. (model(x).argmax(1) + 1) % K, or drop those "
                "samples; for an untargeted attack call with targeted=False and y the true labels."
            )

    @staticmethod
    def _predictions(model: nn.Module, x: Tensor, targeted: bool) -> Tensor:
        """The labels used when ``y`` is None: the model's predictions (untargeted only)."""
        if targeted:
            raise ValueError("targeted=True needs y: the target class of each sample (int64, shape (N,)).")
        with torch.no_grad():
            logits = model(x)
        check_logits(logits)
        return logits.argmax(1)

    # -------------------------------------------------------------- internals
    def _eps_tensor(self, eps: float | Tensor | None, x: Tensor) -> Tensor | None:
        """The per-sample budget (N,) to project onto, or None for no projection.

        None when the attack has no budget, or an optional one left unset (``eps=None``
        on the instance: a per-call ``eps`` is then ignored, as documented by those attacks).
        """
        if not self.budgeted or getattr(self, "eps", None) is None:
            return None
        return _as_eps(self.eps if eps is None else eps, x)  # type: ignore[attr-defined]

    def _enforce(self, x: Tensor, x_adv: Tensor, eps: Tensor | None) -> Tensor:
        if eps is not None:
            x_adv = project(x, x_adv, eps, self.norm)
        lo, hi = self.bounds
        out = x_adv.clamp(lo, hi)
        if eps is not None:
            out = torch.where(per_sample(eps == 0, x), x, out)
        return out

    @abstractmethod
    def _run(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor | None, targeted: bool,
             generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        """Return (x_adv, extras); the base class projects and clamps afterwards."""


class OneStepAttack(Attack):
    """An attack whose expensive part (a direction) does not depend on ``eps``.

    :meth:`prepare` computes it once; :meth:`step` applies a (per-sample) budget. A
    budget search (:func:`~fisherscope.evaluation.least_perturbation`) therefore pays
    for the direction once. Both validate their inputs as ``attack(model, x, y)`` does:
    bounds, finiteness, shapes and dtypes of ``x`` and ``y``, targeted support, the model
    run in eval mode (a model in training mode warns and is restored); ``prepare`` checks
    the model output and the labels against it on its first forward, ``step`` whenever it
    runs the model (a step that does not, e.g. FGSM's, does not use the labels).
    """

    def prepare(self, model: nn.Module, x: Tensor, y: Tensor | None = None, targeted: bool = False,
                generator: torch.Generator | None = None) -> Any:
        """The budget-independent state (the direction) for the batch ``x`` with labels ``y``.

        ``y=None`` uses the model's predictions (untargeted only), as ``__call__`` does;
        pass the same ``x``, ``y`` and ``targeted`` to :meth:`step`.
        """
        self._check_call(x, y, targeted)
        check_model_dtype(model, x)
        x = x.detach()
        with eval_mode(model):
            if y is None:
                y = self._predictions(model, x, targeted)
                return self._prepare(model, x, y, targeted, generator)
            with _validate_first_forward(model, x, y):
                if targeted:
                    self._check_targets(model, x, y)
                return self._prepare(model, x, y, targeted, generator)

    def step(self, model: nn.Module, x: Tensor, y: Tensor, state: Any, eps: float | Tensor,
             targeted: bool = False) -> Tensor:
        """x_adv for budget ``eps`` (a number or (N,)) from :meth:`prepare`'s state, projected and clamped."""
        self._check_call(x, y, targeted)
        if y is None:
            raise ValueError(f"{type(self).__name__}.step needs y: the labels the state was prepared with.")
        check_labels(y, x.shape[0])  # the range against the model's classes: on its first forward
        x = x.detach()
        eps_t = _as_eps(eps, x)
        with eval_mode(model), _validate_first_forward(model, x, y, eager=False):
            x_adv, _ = self._step(model, x, y, state, eps_t, targeted)
        return self._enforce(x, x_adv.detach(), eps_t)

    @abstractmethod
    def _prepare(self, model: nn.Module, x: Tensor, y: Tensor, targeted: bool,
                 generator: torch.Generator | None) -> Any: ...

    @abstractmethod
    def _step(self, model: nn.Module, x: Tensor, y: Tensor, state: Any, eps: Tensor,
              targeted: bool) -> tuple[Tensor, dict[str, Tensor]]: ...

    def _run(self, model, x, y, eps, targeted, generator):
        state = self._prepare(model, x, y, targeted, generator)
        return self._step(model, x, y, state, eps, targeted)


def input_gradient(model: nn.Module, x: Tensor, y: Tensor, *, targeted: bool = False) -> tuple[Tensor, Tensor]:
    """(logits, ∇x loss) with loss = CE(y) (untargeted) or −CE(y) (targeted), per sample.

    The batch-sum of per-sample losses gives per-sample gradients because samples do
    not interact in eval mode. Parameter gradients are untouched.
    """
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xr)
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        if targeted:
            loss = -loss
        (grad,) = torch.autograd.grad(loss, xr)
    return logits.detach(), grad.detach()
