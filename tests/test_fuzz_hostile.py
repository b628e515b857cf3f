"""Property-based fuzzing of the public API with hostile inputs (issue 17, "keep them out").

Every entry of :data:`HOSTILE_CASES` is one *class* of hostile input: a hypothesis
strategy draws concrete inputs of that class and the case states the documented outcome.
An input ends either

- in a documented exception (the case's ``raises``) whose message names what was
  expected, what arrived and the fix (the case's three regular expressions), or
- in a result that satisfies the invariants (shapes, bounds, budget, finite values,
  inputs untouched, every module's train/eval mode restored), checked in the case.

``docs/hostile-inputs.md`` holds the same table in words; ``test_the_docs_table_is_the_case_table``
keeps the two identical (regenerate it with ``python tests/test_fuzz_hostile.py --write-doc``).
Example counts are bounded (``derandomize=True``) so that the whole file runs in well under
a minute on two cores; ``FISHERSCOPE_FUZZ_SCALE=20`` multiplies them and
``FISHERSCOPE_FUZZ_RANDOM=1`` draws new examples each run, for a deep search.
"""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import tiny_cnn  # noqa: E402
from fisherscope import BudgetWarning, ModelModeWarning  # noqa: E402
from fisherscope.exceptions import NotFittedError, ParameterTypeError  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "hostile-inputs.md"
#: multiplies every case's example count (default 1: the bounded CI run); e.g.
#: FISHERSCOPE_FUZZ_SCALE=20 for a deep run, FISHERSCOPE_FUZZ_RANDOM=1 for new examples each run
SCALE = int(os.environ.get("FISHERSCOPE_FUZZ_SCALE", "1"))
DERANDOMIZE = os.environ.get("FISHERSCOPE_FUZZ_RANDOM", "0") != "1"
K = 5  # classes of the fuzzed model
SIDE = 8


# ----------------------------------------------------------------------- the case table


@dataclass(frozen=True)
class Hostile:
    """One class of hostile input and its documented outcome."""

    name: str
    area: str
    hostile: str  # what arrives, in words
    outcome: str  # what happens, in words
    fn: Callable[[Any], Callable[[], Any] | None]
    raises: type[BaseException] | tuple[type[BaseException], ...] | None = None
    expected: str = ""  # regex: the message names what was expected ...
    got: str = ""  # ... what arrived ...
    fix: str = ""  # ... and the fix
    examples: int = 12


HOSTILE_CASES: dict[str, Hostile] = {}


def case(name: str, area: str, hostile: str, outcome: str, *,
         raises: type[BaseException] | tuple[type[BaseException], ...] | None = None,
         expected: str = "", got: str = "", fix: str = "", examples: int = 12):
    """Register a case. With ``raises`` the function returns a thunk that must raise it;
    without, it checks the result's invariants itself and returns None."""

    def deco(fn):
        assert name not in HOSTILE_CASES, name
        if raises is not None:
            assert expected and got and fix, f"{name}: a rejection must name expected, got and fix"
        HOSTILE_CASES[name] = Hostile(name, area, hostile, outcome, fn, raises, expected, got, fix, examples)
        return fn

    return deco


# ------------------------------------------------------------------------------ shared


def _model() -> nn.Module:
    return tiny_cnn(c=1, side=SIDE, k=K, dtype=torch.float32, batchnorm=True)


MODEL = _model()


def _batch(data, *, n_max: int = 4, n_min: int = 1, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    n = data.draw(st.integers(n_min, n_max), label="n")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    x = torch.rand(n, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))
    return lo + (hi - lo) * x


def _pred(x: torch.Tensor, model: nn.Module = MODEL) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def _modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


#: cheap settings per attack for fuzzing (the standard ones, fewer steps / queries)
FAST: dict[str, dict[str, Any]] = {
    "bim": dict(steps=2), "mifgsm": dict(steps=2), "pgd": dict(steps=2), "apgd": dict(steps=2),
    "apgd_t": dict(steps=2, n_target_classes=2), "square": dict(n_queries=10), "otcm_iterative": dict(steps=2),
    "ossa_iterative": dict(steps=2), "deepfool": dict(steps=3), "deepfool_linf": dict(steps=3),
    "cw": dict(steps=3, binary_search_steps=1), "opt": dict(steps=3), "hg_targeted": dict(max_steps=3),
}
#: attacks for the generic rejection cases (one of each family; all share the base class checks)
FAMILY = ("fgsm", "fgm", "pgd", "ossa", "deepfool", "cw", "square", "jsma")
NORM_ORD = {"l2": 2, "linf": math.inf, "l1": 1}


def _attack(key: str, **over: Any):
    from fisherscope.attacks import ATTACKS

    cls = ATTACKS[key]
    return cls(**{**cls.standard, **FAST.get(key, {}), **over})


def _attack_name(data, keys=FAMILY) -> str:
    return data.draw(st.sampled_from(sorted(keys)), label="attack")


def _check_attack_result(atk, model, x, x_before, res, modes_before, eps=None):
    """The attack contract: shape / dtype, bounds, budget, finite, input untouched, modes restored."""
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
    lo, hi = atk.bounds
    assert float(res.x_adv.min()) >= lo and float(res.x_adv.max()) <= hi
    assert bool(torch.isfinite(res.x_adv).all()) and bool(torch.isfinite(res.logits_adv).all())
    budget = getattr(atk, "eps", None) if eps is None else eps
    if atk.budgeted and budget is not None and atk.norm in NORM_ORD:
        d = (res.x_adv - x).flatten(1).norm(p=NORM_ORD[atk.norm], dim=1)
        assert bool((d <= torch.as_tensor(budget, dtype=d.dtype) + 1e-5).all()), (d, budget)
    assert res.success.shape == (x.shape[0],) and res.success.dtype == torch.bool
    assert torch.equal(x, x_before)
    assert _modes(model) == modes_before


# ================================================================= attacks: the batch x


@case("x_non_finite", "attacks", "x with NaN or ±inf at random positions",
      "ValueError", raises=ValueError, expected=r"non-finite values", got=r"contains \d+ non-finite values .*samples \[",
      fix=r"remove or repair those samples")
def _x_non_finite(data):
    x = _batch(data)
    idx = data.draw(st.integers(0, x.numel() - 1), label="position")
    x.view(-1)[idx] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]), label="value")
    atk = _attack(_attack_name(data))
    return lambda: atk.run(MODEL, x)


@case("x_out_of_bounds", "attacks", "x outside bounds (normalised images, 0..255 pixels, negative values)",
      "ValueError", raises=ValueError, expected=r"outside bounds \(0\.0, 1\.0\)", got=r"has values in \[",
      fix=r"put the normalization inside the model")
def _x_out_of_bounds(data):
    x = _batch(data)
    kind = data.draw(st.sampled_from(["normalised", "pixels", "negative", "one_pixel"]), label="kind")
    if kind == "normalised":
        x = (x - 0.5) / 0.25
    elif kind == "pixels":
        x = x * 255
    elif kind == "negative":
        x = x - 1.0
    else:
        x.view(-1)[0] = 1.0 + data.draw(st.floats(1e-4, 10.0), label="excess")
    atk = _attack(_attack_name(data))
    return lambda: atk.run(MODEL, x)


@case("x_wrong_rank", "attacks", "x of rank 0, 1, 3 or 5 (a single image, a scalar, a video batch)",
      "ValueError", raises=ValueError, expected=r"must have shape \(N, C, H, W\)", got=r"got shape \(",
      fix=r"unsqueeze\(0\)|not a scalar|flatten\(0")
def _x_wrong_rank(data):
    rank = data.draw(st.sampled_from([0, 1, 3, 5]), label="rank")
    shape = {0: (), 1: (SIDE * SIDE,), 3: (1, SIDE, SIDE), 5: (2, 1, 1, SIDE, SIDE)}[rank]
    x = torch.rand(shape)
    atk = _attack(_attack_name(data))
    return lambda: atk.run(MODEL, x)


@case("x_integer_dtype", "attacks", "x as uint8 / int64 pixels", "TypeError", raises=TypeError,
      expected=r"floating-point tensor", got=r"got torch\.(uint8|int64|int32)", fix=r"\.float\(\) / 255")
def _x_integer_dtype(data):
    dtype = data.draw(st.sampled_from([torch.uint8, torch.int64, torch.int32]), label="dtype")
    x = (_batch(data) * 255).to(dtype)
    atk = _attack(_attack_name(data))
    return lambda: atk.run(MODEL, x)


@case("x_empty_batch", "attacks", "x with zero samples", "ValueError", raises=ValueError,
      expected=r"at least one sample", got=r"empty batch \(shape \(0,", fix=r"pass at least one sample")
def _x_empty_batch(data):
    x = torch.rand(0, 1, SIDE, SIDE)
    atk = _attack(_attack_name(data))
    return lambda: atk.run(MODEL, x)


@case("x_not_a_tensor", "attacks", "x as a NumPy array or a nested list", "TypeError", raises=TypeError,
      expected=r"must be a torch\.Tensor", got=r"got (ndarray|list)", fix=r"torch\.as_tensor")
def _x_not_a_tensor(data):
    x = _batch(data).numpy()
    if data.draw(st.booleans(), label="as_list"):
        x = x.tolist()
    atk = _attack(_attack_name(data))
    return lambda: atk.run(MODEL, x)


@case("x_wrong_float_dtype", "attacks", "float64 inputs for a float32 model (or float16)", "TypeError",
      raises=TypeError, expected=r"must have the model's dtype torch\.float32", got=r"got torch\.float(64|16)",
      fix=r"x\.to\(torch\.float32\)")
def _x_wrong_float_dtype(data):
    x = _batch(data).to(data.draw(st.sampled_from([torch.float64, torch.float16]), label="dtype"))
    atk = _attack(_attack_name(data))
    return lambda: atk.run(MODEL, x)


# ================================================================= attacks: the labels y


@case("y_float_labels", "attacks", "labels as floats or int32", "TypeError", raises=TypeError,
      expected=r"int64 tensor of shape \(N,\)", got=r"got dtype torch\.(float32|float64|int32)", fix=r"\.long\(\)")
def _y_float_labels(data):
    x = _batch(data)
    y = _pred(x).to(data.draw(st.sampled_from([torch.float32, torch.float64, torch.int32]), label="dtype"))
    atk = _attack(_attack_name(data))
    return lambda: atk.run(MODEL, x, y)


@case("y_one_hot", "attacks", "one-hot labels (N, K)", "ValueError", raises=ValueError,
      expected=r"int64 tensor of shape \(N,\)", got=r"looks one-hot", fix=r"argmax\(1\)")
def _y_one_hot(data):
    x = _batch(data)
    y = torch.nn.functional.one_hot(_pred(x), K)
    atk = _attack(_attack_name(data))
    return lambda: atk.run(MODEL, x, y)


@case("y_out_of_range", "attacks", "labels >= K or negative", "ValueError", raises=ValueError,
      expected=r"values in \[0, 5\)", got=r"got values in \[-?\d+, -?\d+\]", fix=r"belong to this model's classes")
def _y_out_of_range(data):
    x = _batch(data)
    y = _pred(x)
    y[data.draw(st.integers(0, len(y) - 1), label="sample")] = data.draw(
        st.one_of(st.integers(K, 10**6), st.integers(-10**6, -1)), label="label")
    atk = _attack(_attack_name(data))
    return lambda: atk.run(MODEL, x, y)


@case("y_wrong_length", "attacks", "more or fewer labels than samples", "ValueError", raises=ValueError,
      expected=r"one label per sample", got=r"has \d+ samples but y has \d+", fix=r"pass one label per sample")
def _y_wrong_length(data):
    x = _batch(data)
    extra = data.draw(st.sampled_from([-1, 1, 3]), label="extra")
    n = x.shape[0] + extra if x.shape[0] + extra > 0 else x.shape[0] + 1
    y = torch.zeros(n, dtype=torch.int64)
    atk = _attack(_attack_name(data))
    return lambda: atk.run(MODEL, x, y)


@case("target_is_the_prediction", "attacks",
      "targeted=True with targets equal to the clean prediction (the true labels as targets)",
      "ValueError (never a success without perturbation)", raises=ValueError,
      expected=r"a class other than the model's clean prediction", got=r"got \d+ of \d+ targets equal to it",
      fix=r"Pass other targets")
def _target_is_the_prediction(data):
    from fisherscope.attacks import ATTACKS

    x = _batch(data)
    y = _pred(x)
    other = (y + 1) % K
    keep = data.draw(st.lists(st.booleans(), min_size=len(y), max_size=len(y)), label="which")
    if all(keep):
        keep[0] = False
    t = torch.where(torch.tensor(keep), other, y)
    keys = [k for k, c in ATTACKS.items() if c.supports_targeted and k in FAMILY]
    atk = _attack(_attack_name(data, keys))
    return lambda: atk.run(MODEL, x, t, targeted=True)


# ========================================================== attacks: the hyperparameters


@case("eps_invalid", "attacks", "eps negative, NaN, inf, a string, a bool or a tensor",
      "ValueError / ParameterTypeError", raises=ValueError, expected=r": eps must be a finite number >= 0",
      got=r"; got ", fix=r"(?i)pass")
def _eps_invalid(data):
    bad = data.draw(st.one_of(st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
                              st.sampled_from([math.nan, math.inf, -math.inf, "0.1", True, torch.tensor(0.1)])),
                    label="eps")
    key = _attack_name(data, ("fgsm", "fgm", "pgd", "ossa", "square"))
    return lambda: _attack(key, eps=bad)


@case("steps_invalid", "attacks", "steps 0, negative, fractional or a bool", "ValueError / ParameterTypeError",
      raises=ValueError, expected=r": steps must be an integer >= 1", got=r"; got ", fix=r"Pass")
def _steps_invalid(data):
    bad = data.draw(st.one_of(st.integers(max_value=0), st.sampled_from([2.5, 3.0, True, "3"])), label="steps")
    key = _attack_name(data, ("bim", "pgd", "mifgsm", "deepfool", "cw"))
    return lambda: _attack(key, steps=bad)


@case("bounds_invalid", "attacks", "bounds reversed, equal, non-finite, of the wrong length or a string",
      "ValueError / ParameterTypeError", raises=ValueError,
      expected=r"bounds must be a pair \(low, high\) of finite numbers with low < high", got=r"; got ",
      fix=r"\(0\.0, 1\.0\)")
def _bounds_invalid(data):
    bad = data.draw(st.sampled_from([(1.0, 0.0), (0.5, 0.5), (0.0, math.nan), (-math.inf, 1.0), (0.0,),
                                     (0.0, 1.0, 2.0), "01", None]), label="bounds")
    key = _attack_name(data)
    return lambda: _attack(key, bounds=bad)


@case("norm_unknown", "attacks", "an unknown norm name ('l3', 'Linf', 'inf', '')", "ValueError",
      raises=ValueError, expected=r": norm must be one of ", got=r"; got ", fix=r"Did you mean|Pass one of")
def _norm_unknown(data):
    bad = data.draw(st.sampled_from(["l3", "Linf", "inf", "", "L2", "linfinity"]), label="norm")
    key = _attack_name(data, ("pgd", "bim", "apgd", "square"))
    return lambda: _attack(key, norm=bad)


@case("per_call_eps_invalid", "attacks", "run(..., eps=...) with a wrong-shaped, negative or NaN budget tensor",
      "ValueError", raises=ValueError, expected=r"eps must be a number >= 0 or a tensor of shape \(\d+,\)",
      got=r"got (shape|negative or non-finite)", fix=r"one finite budget >= 0 per sample")
def _per_call_eps_invalid(data):
    x = _batch(data)
    kind = data.draw(st.sampled_from(["shape", "negative", "nan"]), label="kind")
    eps = {"shape": torch.full((x.shape[0] + 1,), 0.1), "negative": torch.full((x.shape[0],), -0.1),
           "nan": torch.full((x.shape[0],), math.nan)}[kind]
    atk = _attack(data.draw(st.sampled_from(["fgsm", "pgd", "fgm"]), label="attack"))
    return lambda: atk.run(MODEL, x, _pred(x), eps=eps)


@case("linf_eps_beyond_the_range", "attacks", "an L∞ eps larger than the input range (eps=8 meant as 8/255)",
      "BudgetWarning naming 8/255; the result still satisfies the contract", examples=6)
def _linf_eps_beyond_the_range(data):
    eps = data.draw(st.floats(1.0001, 255.0), label="eps")
    key = data.draw(st.sampled_from(["fgsm", "pgd", "bim"]), label="attack")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        atk = _attack(key, eps=eps)
    budget = [w for w in caught if issubclass(w.category, BudgetWarning)]
    assert len(budget) == 1 and "larger than the whole input range" in str(budget[0].message)
    assert "/255" in str(budget[0].message)
    x = _batch(data)
    before = x.clone()
    res = atk.run(MODEL, x, _pred(x), generator=torch.Generator().manual_seed(0))
    _check_attack_result(atk, MODEL, x, before, res, _modes(MODEL))


# ============================================================== attacks: hostile models


class _Wrap(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], Any]):
        super().__init__()
        self.net = _model()
        self.fn = fn

    def forward(self, x):
        return self.fn(self.net(x))


@case("model_returns_probabilities", "attacks", "a model ending in softmax, or a scaled softmax (0.999·p) on "
      "two or more samples",
      "ValueError pointing at as_logits", raises=ValueError, expected=r"logits are expected",
      got=r"looks like probabilities", fix=r"as_logits\(model, output='probs'\)")
def _model_returns_probabilities(data):
    scale = data.draw(st.sampled_from([1.0, 0.999, 0.9, 0.7]), label="scale")
    model = _Wrap(lambda z: scale * torch.softmax(z, 1)).eval()
    x = _batch(data, n_min=1 if scale == 1.0 else 2)
    atk = _attack(_attack_name(data))
    return lambda: atk.run(model, x)


@case("model_returns_non_finite", "attacks", "a model whose logits hold NaN or inf", "ValueError",
      raises=ValueError, expected=r"logits", got=r"non-finite logits for \d+ samples", fix=r"check the inputs and the model")
def _model_returns_non_finite(data):
    bad = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]), label="value")

    def poison(z):
        z = z.clone()
        z[0, 0] = bad
        return z

    model = _Wrap(poison).eval()
    x = _batch(data)
    atk = _attack(_attack_name(data))
    return lambda: atk.run(model, x)


@case("model_returns_wrong_shape", "attacks", "a model returning (N,), (N, 1), (N, K, 1) or a tuple",
      "ValueError / TypeError", raises=(ValueError, TypeError), expected=r"logits (of shape|with shape) \(N, K\)|K >= 2",
      got=r"got (shape|tuple)", fix=r"Flatten or squeeze|torch\.cat|single tensor")
def _model_returns_wrong_shape(data):
    kind = data.draw(st.sampled_from(["flat", "one", "three_d", "tuple"]), label="kind")
    fn = {"flat": lambda z: z[:, 0], "one": lambda z: z[:, :1], "three_d": lambda z: z[..., None],
          "tuple": lambda z: (z, z)}[kind]
    model = _Wrap(fn).eval()
    x = _batch(data)
    atk = _attack(_attack_name(data, ("fgsm", "pgd", "fgm")))
    return lambda: atk.run(model, x)


@case("model_in_training_mode", "attacks", "a model (with BatchNorm) left in training mode",
      "one ModelModeWarning per call; run in eval mode; every module's mode restored; contract holds", examples=8)
def _model_in_training_mode(data):
    from fisherscope.attacks import ATTACKS

    key = data.draw(st.sampled_from(sorted(ATTACKS)), label="attack")
    model = _model()
    ref = _model()  # the same weights, in eval mode
    x = _batch(data, n_max=3)
    y = _pred(x, ref)
    model.train()
    modes = _modes(model)
    before = x.clone()
    atk = _attack(key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = atk.run(model, x, y, generator=torch.Generator().manual_seed(1))
    assert sum(issubclass(w.category, ModelModeWarning) for w in caught) == 1
    _check_attack_result(atk, model, x, before, res, modes)
    expected = atk.run(ref, x, y, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(res.x_adv, expected.x_adv)  # eval mode was used


@case("valid_extremes", "attacks", "in-bounds x at the edges: all 0, all 1, a single sample, random budgets",
      "result: the attack contract (shape, bounds, budget, finite, x untouched, mode restored)", examples=20)
def _valid_extremes(data):
    from fisherscope.attacks import ATTACKS

    key = data.draw(st.sampled_from(sorted(ATTACKS)), label="attack")
    kind = data.draw(st.sampled_from(["zeros", "ones", "random", "one_sample"]), label="x")
    x = _batch(data, n_max=1 if kind == "one_sample" else 3)
    if kind == "zeros":
        x = torch.zeros_like(x)
    elif kind == "ones":
        x = torch.ones_like(x)
    over = {}
    cls = ATTACKS[key]
    if "eps" in cls.standard and cls.budget == "required":
        norm = cls.norms[0]
        over["eps"] = data.draw(st.floats(0.0, 1.0 if norm == "linf" else 3.0), label="eps")
    atk = _attack(key, **over)
    before, modes = x.clone(), _modes(MODEL)
    res = atk.run(MODEL, x, _pred(x), generator=torch.Generator().manual_seed(0))
    _check_attack_result(atk, MODEL, x, before, res, modes)


# ======================================================================= fisher_*


FISHER_FUNCTIONS = ("fisher_spectrum", "fisher_trace", "param_fisher_trace", "fisher_sensitivity",
                    "param_fisher_form", "logits_jacobian")


def _fisher(name: str):
    from fisherscope import fisher

    return getattr(fisher, name)


@case("fisher_x_hostile", "fisher", "fisher_* on x with NaN, out of bounds or of the wrong rank", "ValueError",
      raises=ValueError, expected=r"outside bounds|non-finite values|must have shape", got=r"values in \[|contains \d+|got shape",
      fix=r"normalization inside the model|remove or repair|unsqueeze\(0\)|flatten\(0")
def _fisher_x_hostile(data):
    name = data.draw(st.sampled_from(FISHER_FUNCTIONS[:-1]), label="function")
    x = _batch(data)
    kind = data.draw(st.sampled_from(["nan", "bounds", "rank"]), label="kind")
    if kind == "nan":
        x.view(-1)[0] = math.nan
    elif kind == "bounds":
        x = x * 255
    else:
        x = x[0]
    return lambda: _fisher(name)(MODEL, x)


@case("fisher_model_probabilities", "fisher", "fisher_* on a model that returns probabilities",
      "ValueError pointing at as_logits", raises=ValueError, expected=r"logits are expected",
      got=r"looks like probabilities", fix=r"as_logits")
def _fisher_model_probabilities(data):
    name = data.draw(st.sampled_from(FISHER_FUNCTIONS), label="function")
    model = _Wrap(lambda z: torch.softmax(z, 1)).eval()
    x = _batch(data)
    return lambda: _fisher(name)(model, x)


@case("fisher_spectrum_settings", "fisher", "fisher_spectrum with k < 1, k > K, an unknown method, tol NaN/inf/<=0, "
      "max_iter 0", "ValueError / ParameterTypeError", raises=ValueError,
      expected=r"fisher_spectrum: (k|method|tol|max_iter) must be", got=r"; got ",
      fix=r"Pass an integer|Pass a Python int|Did you mean 'power'|Use e\.g\. 1e-6")
def _fisher_spectrum_settings(data):
    from fisherscope.fisher import fisher_spectrum

    bad = data.draw(st.sampled_from([dict(k=0), dict(k=-1), dict(k=1.5), dict(method="powr"),
                                     dict(method="power", tol=math.inf), dict(method="power", tol=math.nan),
                                     dict(method="lanczos", tol=0.0), dict(method="power", max_iter=0)]),
                    label="settings")
    x = _batch(data)
    return lambda: fisher_spectrum(MODEL, x, **bad)


@case("fisher_spectrum_valid", "fisher", "fisher_spectrum on random in-bounds batches, exact and iterative",
      "result: eigenvalues finite, >= 0, descending; unit eigenvectors shaped like x; x untouched; mode restored",
      examples=6)
def _fisher_spectrum_valid(data):
    from fisherscope.fisher import fisher_spectrum, fisher_trace

    x = _batch(data)
    method = data.draw(st.sampled_from(["exact", "power", "lanczos"]), label="method")
    k = data.draw(st.integers(1, K - 1), label="k") if method == "exact" else 1
    before, modes = x.clone(), _modes(MODEL)
    spec = fisher_spectrum(MODEL, x, k=k, method=method)
    ev, vec = spec.eigenvalues, spec.eigenvectors
    assert ev.shape == (x.shape[0], k) and vec.shape == (x.shape[0], k, *x.shape[1:])
    assert bool(torch.isfinite(ev).all()) and bool((ev >= -1e-6).all())
    assert bool((ev[:, :-1] >= ev[:, 1:] - 1e-6).all())
    norms = vec.flatten(2).norm(dim=2)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-4, rtol=0)
    if method == "exact" and k == K - 1:  # all eigenvalues: their sum is the trace
        torch.testing.assert_close(ev.sum(1), fisher_trace(MODEL, x), rtol=1e-4, atol=1e-6)
    assert torch.equal(x, before) and _modes(MODEL) == modes


@case("param_fisher_valid", "fisher", "param_fisher_trace / param_fisher_form / fisher_sensitivity on random batches",
      "result: finite, >= 0 (traces and forms), maps shaped like x; x untouched; parameter .grad untouched", examples=8)
def _param_fisher_valid(data):
    from fisherscope.fisher import fisher_sensitivity, param_fisher_form, param_fisher_trace

    x = _batch(data)
    reduction = data.draw(st.sampled_from(["full", "two_class"]), label="reduction")
    before = x.clone()
    tr = param_fisher_trace(MODEL, x, reduction)
    form = param_fisher_form(MODEL, x, reduction=reduction)
    fis = fisher_sensitivity(MODEL, x, reduction=reduction)
    assert tr.shape == form.shape == (x.shape[0],) and fis.shape == x.shape
    for t in (tr, form, fis):
        assert bool(torch.isfinite(t).all())
    assert bool((tr >= 0).all()) and bool((form >= -1e-6).all())
    assert torch.equal(x, before) and all(p.grad is None for p in MODEL.parameters())


@case("fisher_penalty_settings", "fisher", "fisher_penalty with max_log below 2 log K, NaN, or an unknown kind",
      "ValueError", raises=ValueError, expected=r"fisher_penalty: (max_log|kind) must be", got=r"; got ",
      fix=r"Pass None, or a cap in \[|Did you mean 'softmax_trace'")
def _fisher_penalty_settings(data):
    from fisherscope.defenses import fisher_penalty

    z = torch.randn(4, K, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99), label="seed")))
    bad = data.draw(st.sampled_from([dict(max_log=-5.0), dict(max_log=2 * math.log(K) - 0.01),
                                     dict(max_log=math.nan), dict(kind="softmax")]), label="settings")
    return lambda: fisher_penalty(z, **bad)


@case("least_perturbation_settings", "fisher", "least_perturbation with tol NaN/inf/too wide, hi inf or <= lo, "
      "max_halvings too few", "ValueError", raises=ValueError,
      expected=r"least_perturbation: (tol|hi|max_halvings|lo) must be", got=r"; got ",
      fix=r"(?i)pass |raise max_halvings|a tolerance as wide")
def _least_perturbation_settings(data):
    from fisherscope.evaluation import least_perturbation

    bad = data.draw(st.sampled_from([dict(tol=math.nan), dict(tol=math.inf), dict(tol=6.0), dict(hi=math.inf),
                                     dict(hi=0.0), dict(max_halvings=0), dict(lo=-1.0)]), label="settings")
    x = _batch(data)
    return lambda: least_perturbation(_attack("fgm"), MODEL, x, _pred(x), **{"hi": 6.0, **bad})


# ======================================================================= detectors


DETECTOR_KEYS = ("softmax", "pca_whitening", "reconstruction", "lid")


def _detector(key: str, **kw):
    from fisherscope.detectors import DETECTORS

    extra = {"lid": {"k": 5}, "softmax": {"column": 0}}.get(key, {})
    return DETECTORS[key](**extra, **kw)


def _features(data, n_per: int = 20, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    shift = data.draw(st.floats(0.0, 5.0), label="shift")
    X = np.r_[rng.normal(0, 1, (n_per, d)), rng.normal(shift, 1, (n_per, d))]
    y = np.r_[np.zeros(n_per), np.ones(n_per)].astype(int)
    return X, y


def _fit(det, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return det.fit(X, y) if det.supervised else det.fit(X[y == 0])


@case("detector_features_non_finite", "detectors", "fit / predict on features with NaN or inf", "ValueError",
      raises=ValueError, expected=r"Input X", got=r"contains (NaN|infinity)", fix=r"Remove or repair the rows")
def _detector_features_non_finite(data):
    key = data.draw(st.sampled_from(DETECTOR_KEYS), label="detector")
    X, y = _features(data)
    X[data.draw(st.integers(0, len(X) - 1), label="row"), 0] = data.draw(st.sampled_from([np.nan, np.inf]), label="v")
    det = _detector(key)
    return lambda: det.fit(X, y)


@case("detector_labels_not_binary", "detectors", "fit with labels other than 0/1 (multiclass, -1, continuous)",
      "ValueError", raises=ValueError, expected=r"y must hold 0 \(clean\) and 1 \(adversarial\)",
      got=r"got labels \[", fix=r"Map your labels to 0/1")
def _detector_labels_not_binary(data):
    key = data.draw(st.sampled_from([k for k in DETECTOR_KEYS]), label="detector")
    X, y = _features(data)
    kind = data.draw(st.sampled_from(["multiclass", "minus_one", "continuous"]), label="kind")
    y = {"multiclass": y * 2, "minus_one": y * 2 - 1, "continuous": y + 0.5}[kind]
    return lambda: _detector(key).fit(X, y)


@case("detector_no_clean_rows", "detectors", "fit on adversarial rows only", "ValueError", raises=ValueError,
      expected=r"needs clean rows \(y == 0\)", got=r"got none", fix=r"to set the threshold")
def _detector_no_clean_rows(data):
    key = data.draw(st.sampled_from(DETECTOR_KEYS), label="detector")
    X, y = _features(data)
    return lambda: _detector(key).fit(X, np.ones_like(y))


@case("detector_not_fitted", "detectors", "predict / decision_function before fit", "NotFittedError",
      raises=NotFittedError, expected=r"not fitted yet", got=r"This \w+ is", fix=r"call fit\(X, y\)")
def _detector_not_fitted(data):
    key = data.draw(st.sampled_from(DETECTOR_KEYS), label="detector")
    X, _ = _features(data)
    det = _detector(key)
    return lambda: det.predict(X)


@case("detector_feature_count_changes", "detectors", "predict with another number of features than fit",
      "ValueError", raises=ValueError, expected=r"is expecting \d+ features", got=r"X has \d+ features",
      fix=r"Pass features made the same way")
def _detector_feature_count_changes(data):
    key = data.draw(st.sampled_from(DETECTOR_KEYS), label="detector")
    X, y = _features(data)
    det = _fit(_detector(key), X, y)
    d = data.draw(st.sampled_from([1, 3, 6]), label="d")
    return lambda: det.predict(np.zeros((3, d)))


@case("detector_target_fpr_invalid", "detectors", "target_fpr outside [0, 1), NaN or a string",
      "ValueError / ParameterTypeError", raises=ValueError, expected=r"target_fpr must be a number in \[0, 1\)",
      got=r"; got ", fix=r"(?i)pass a (value|number)")
def _detector_target_fpr_invalid(data):
    key = data.draw(st.sampled_from(DETECTOR_KEYS), label="detector")
    bad = data.draw(st.sampled_from([1.0, 1.5, -0.1, math.nan, "0.05"]), label="target_fpr")
    X, y = _features(data)
    return lambda: _fit(_detector(key, target_fpr=bad), X, y)


@case("detector_wrong_rank", "detectors", "1-D or 3-D feature arrays", "ValueError", raises=ValueError,
      expected=r"Expected 2D array|dim <= 2 is required", got=r"got 1D array|Found array with dim 3",
      fix=r"[Rr]eshape")
def _detector_wrong_rank(data):
    key = data.draw(st.sampled_from(DETECTOR_KEYS), label="detector")
    X, y = _features(data)
    if data.draw(st.booleans(), label="one_d"):
        X = X[:, 0]
    else:
        X = X[:, :, None]
    return lambda: _detector(key).fit(X, y)


@case("detector_layout_violated", "detectors", "features breaking a detector's layout (negative Fisher scores, "
      "a class column of non-integers)", "ValueError", raises=ValueError,
      expected=r"non-negative by construction|must hold (the model's )?predicted class", got=r"minimum -|got values such as|\(an integer",
      fix=r"check the columns of X|fisherscope\.features\.penultimate|as made by|Make X with", examples=6)
def _detector_layout_violated(data):
    from fisherscope.detectors import DETECTORS

    # not fisher_spectrum: with log_transform="auto" (its default) it takes negative, e.g.
    # standardised, eigenvalue features as they are (tests/test_model_features.py)
    key = data.draw(st.sampled_from(["fisher_score", "kd", "mahalanobis"]), label="detector")
    X, y = _features(data)
    X[0, 0] = -abs(X[0, 0]) - 0.5  # negative (and not an integer class)
    X[:, 0] += 0.25
    return lambda: _fit(DETECTORS[key](), X, y)


@case("detector_valid", "detectors", "fit / predict / score on random separable or inseparable features",
      "result: decision_function finite (N,), predict in {0, 1}, clean FPR <= target_fpr on the fit rows, "
      "score in [0, 1], X untouched", examples=10)
def _detector_valid(data):
    key = data.draw(st.sampled_from(DETECTOR_KEYS), label="detector")
    X, y = _features(data)
    before = X.copy()
    det = _fit(_detector(key), X, y)
    s = det.decision_function(X)
    p = det.predict(X)
    assert s.shape == (len(X),) and np.isfinite(s).all() and set(np.unique(p)) <= {0, 1}
    fpr = float(p[y == 0].mean())
    assert fpr <= det.target_fpr + 1e-9, fpr
    assert 0.0 <= det.score(X, y) <= 1.0
    assert np.array_equal(X, before)


# ====================================================================== load_dataset


def _npz_arrays(data, *, n=(2, 6), side=(2, 6)) -> dict[str, np.ndarray]:
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    h = data.draw(st.integers(*side), label="h")
    w = data.draw(st.integers(*side), label="w")
    c = data.draw(st.sampled_from([None, 1, 3]), label="channels")
    k = data.draw(st.integers(2, 4), label="k")
    out = {}
    for split in ("train", "test"):
        m = data.draw(st.integers(max(n[0], k), n[1] + k), label=f"n_{split}")
        shape = (m, h, w) if c is None else (m, h, w, c)
        out[f"x_{split}"] = rng.integers(0, 256, shape, dtype=np.uint8)
        out[f"y_{split}"] = (np.arange(m) % k).astype(np.int64)
    return out


def _write_npz(tmp: Path, arrays: dict[str, Any], name: str = "fuzz") -> Path:
    path = tmp / f"{name}.npz"
    np.savez(path, **arrays)
    return path


def _load(tmp: Path, split: str = "train", name: str = "fuzz"):
    from fisherscope.data import load_dataset

    return load_dataset(name, split, data_dir=tmp)


_TMP: list[Path] = []


def _tmp() -> Path:
    """A fresh folder per example (hypothesis examples cannot take function-scoped fixtures)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="fisherscope-fuzz-"))
    _TMP.append(d)
    return d


@case("npz_not_an_archive", "data", "a .npz file of random bytes (or empty)", "ValueError", raises=ValueError,
      expected=r"expected a file written by numpy\.savez_compressed", got=r"is not a \.npz archive", fix=r"write it with numpy\.savez_compressed")
def _npz_not_an_archive(data):
    tmp = _tmp()
    (tmp / "fuzz.npz").write_bytes(data.draw(st.binary(max_size=64), label="bytes"))
    return lambda: _load(tmp)


@case("npz_missing_key", "data", "an archive without x_train, y_train, x_test or y_test", "ValueError",
      raises=ValueError, expected=r"holds x_train, y_train, x_test, y_test", got=r"lacks the key\(s\) .*; found", fix=r"write it with")
def _npz_missing_key(data):
    arrays = _npz_arrays(data)
    drop = data.draw(st.lists(st.sampled_from(sorted(arrays)), min_size=1, max_size=4, unique=True), label="drop")
    tmp = _tmp()
    _write_npz(tmp, {k: v for k, v in arrays.items() if k not in drop} or {"other": np.zeros(1)})
    return lambda: _load(tmp)


@case("npz_float_images", "data", "float or int64 images instead of uint8", "ValueError", raises=ValueError,
      expected=r"expected uint8 images", got=r"has dtype (float|int)", fix=r"\(x \* 255\)\.round\(\)\.astype\(np\.uint8\)")
def _npz_float_images(data):
    arrays = _npz_arrays(data)
    dtype = data.draw(st.sampled_from([np.float32, np.float64, np.int64]), label="dtype")
    key = data.draw(st.sampled_from(["x_train", "x_test"]), label="key")
    arrays[key] = arrays[key].astype(dtype) / (255 if dtype != np.int64 else 1)
    tmp = _tmp()
    _write_npz(tmp, arrays)
    return lambda: _load(tmp)


@case("npz_channels_first", "data", "images stored channels-first (N, C, H, W)", "ValueError", raises=ValueError,
      expected=r"expected \(N,H,W\) or \(N,H,W,C\) with C = 1 or 3", got=r"has shape \(", fix=r"channels-last|transpose")
def _npz_channels_first(data):
    arrays = _npz_arrays(data, side=(5, 7))
    c = data.draw(st.sampled_from([1, 3]), label="c")
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        arrays[f"x_{split}"] = np.zeros((x.shape[0], c, x.shape[1], x.shape[2]), dtype=np.uint8) if c == 3 else \
            np.zeros((x.shape[0], 1, 5, 5), dtype=np.uint8)
    tmp = _tmp()
    _write_npz(tmp, arrays)
    return lambda: _load(tmp)


@case("npz_label_dtype_or_count", "data", "float labels, or a label count unlike the image count", "ValueError",
      raises=ValueError, expected=r"expected integer class labels|expected \(\d+,\) to match", got=r"has (dtype|shape)",
      fix=r"astype\(np\.uint8\)|to match x_")
def _npz_label_dtype_or_count(data):
    arrays = _npz_arrays(data)
    key = data.draw(st.sampled_from(["y_train", "y_test"]), label="key")
    if data.draw(st.booleans(), label="float"):
        arrays[key] = arrays[key].astype(np.float32)
    else:
        arrays[key] = np.r_[arrays[key], [0]]
    tmp = _tmp()
    _write_npz(tmp, arrays)
    return lambda: _load(tmp)


@case("npz_stray_label", "data", "labels that are not 0..K-1 without a classes array (one label of 3,000,000)",
      "ValueError", raises=ValueError, expected=r"contiguous integers 0\.\.K-1", got=r"\d{3,}|missing|negative|holds",
      fix=r"classes=")
def _npz_stray_label(data):
    arrays = _npz_arrays(data)
    key = data.draw(st.sampled_from(["y_train", "y_test"]), label="key")
    arrays[key][0] = data.draw(st.sampled_from([3_000_000, 10**9, 50]), label="label")
    tmp = _tmp()
    _write_npz(tmp, arrays)
    split = key.removeprefix("y_")
    return lambda: _load(tmp, split)


@case("npz_labels_beyond_classes", "data", "labels beyond the classes array", "ValueError", raises=ValueError,
      expected=r"classes array names \d+ classes \(labels 0\.\.\d+", got=r"holds labels \d+\.\.\d+.*e\.g\. \[\d+\]",
      fix=r"Fix the labels or the classes array")
def _npz_labels_beyond_classes(data):
    arrays = _npz_arrays(data)
    k = int(arrays["y_train"].max()) + 1
    arrays["classes"] = np.array([f"c{i}" for i in range(k)])
    key = data.draw(st.sampled_from(["y_train", "y_test"]), label="key")
    arrays[key][0] = k + data.draw(st.integers(0, 5), label="excess")
    tmp = _tmp()
    _write_npz(tmp, arrays)
    return lambda: _load(tmp, key.removeprefix("y_"))


@case("npz_split_shapes_differ", "data", "train and test images of different sizes", "ValueError",
      raises=ValueError, expected=r"both splits must have the same image shape", got=r"train images are .* but test images are",
      fix=r"same image shape")
def _npz_split_shapes_differ(data):
    arrays = _npz_arrays(data)
    x = arrays["x_test"]
    arrays["x_test"] = np.zeros((x.shape[0], x.shape[1] + 1, *x.shape[2:]), dtype=np.uint8)
    tmp = _tmp()
    _write_npz(tmp, arrays)
    return lambda: _load(tmp)


@case("npz_pickled_classes", "data", "a classes array of Python objects (needs pickle)", "ValueError, nothing unpickled",
      raises=ValueError, expected=r"expected a non-empty 1-D array of str", got=r"classes has dtype object",
      fix=r"np\.array\(\['cat', 'dog'")
def _npz_pickled_classes(data):
    arrays = _npz_arrays(data)
    k = int(arrays["y_train"].max()) + 1
    arrays["classes"] = np.array([object()] * k + [{"x": 1}], dtype=object)[:k]
    tmp = _tmp()
    _write_npz(tmp, arrays)
    return lambda: _load(tmp)


@case("npz_empty_split", "data", "a split with zero images", "ValueError", raises=ValueError,
      expected=r"expected a non-empty \(N,H,W\)", got=r"has shape \(0,", fix=r"C = 1 or 3")
def _npz_empty_split(data):
    arrays = _npz_arrays(data)
    key = data.draw(st.sampled_from(["train", "test"]), label="split")
    arrays[f"x_{key}"] = arrays[f"x_{key}"][:0]
    arrays[f"y_{key}"] = arrays[f"y_{key}"][:0]
    tmp = _tmp()
    _write_npz(tmp, arrays)
    return lambda: _load(tmp)


@case("dataset_name_is_a_path", "data", "a dataset name with a path, a leading dot, a .npz suffix, or empty",
      "ValueError", raises=ValueError, expected=r"must be a plain name|non-empty str|drop the \.npz suffix",
      got=r"dataset name ", fix=r"pass the folder as data_dir|drop the \.npz suffix|non-empty")
def _dataset_name_is_a_path(data):
    from fisherscope.data import load_dataset

    name = data.draw(st.sampled_from(["../etc/passwd", "a/b", ".hidden", "mine.npz", "", "  ", "C:\\x"]), label="name")
    return lambda: load_dataset(name, "train", data_dir=_tmp())


@case("dataset_split_unknown", "data", "a split other than 'train' / 'test'", "ValueError", raises=ValueError,
      expected=r"load_dataset: split must be one of 'train', 'test'", got=r"; got ", fix=r"Did you mean|Pass one of")
def _dataset_split_unknown(data):
    from fisherscope.data import load_dataset

    split = data.draw(st.sampled_from(["training", "Train", "val", "tset", ""]), label="split")
    return lambda: load_dataset("digits", split)


@case("npz_valid", "data", "random well-formed archives (grey or RGB, any small size, classes or not)",
      "result: x float32 in [0, 1] (N, C, H, W), y int64 in [0, K), K right, the file untouched", examples=10)
def _npz_valid(data):
    arrays = _npz_arrays(data)
    if data.draw(st.booleans(), label="classes"):
        arrays["classes"] = np.array([f"c{i}" for i in range(int(arrays["y_train"].max()) + 1)])
    tmp = _tmp()
    path = _write_npz(tmp, arrays)
    raw = path.read_bytes()
    split = data.draw(st.sampled_from(["train", "test"]), label="split")
    ds = _load(tmp, split)
    x = arrays[f"x_{split}"]
    c = 1 if x.ndim == 3 else x.shape[3]
    assert ds.x.dtype == torch.float32 and tuple(ds.x.shape) == (x.shape[0], c, x.shape[1], x.shape[2])
    assert float(ds.x.min()) >= 0.0 and float(ds.x.max()) <= 1.0
    assert ds.y.dtype == torch.int64 and ds.num_classes == int(arrays["y_train"].max()) + 1
    assert int(ds.y.min()) >= 0 and int(ds.y.max()) < ds.num_classes
    assert path.read_bytes() == raw


# =========================================================== the config loader and --set


def _config_path() -> Path:
    from fisherscope.cli import find_config

    return find_config("model-accuracy")


def _load_config(overrides):
    from fisherscope.experiments import load_config

    return load_config(_config_path(), overrides)


@case("set_without_equals", "config", "--set items without '=' ('seed', 'models.0.epochs 2')", "ValueError",
      raises=ValueError, expected=r"must look like key=value", got=r"override ['\"]", fix=r"e\.g\. seed=3")
def _set_without_equals(data):
    item = data.draw(st.text(st.characters(blacklist_characters="=", codec="ascii"), min_size=0, max_size=12),
                     label="item")
    return lambda: _load_config([item])


@case("set_list_index_invalid", "config", "--set models.<i>.x with i out of range, negative or not a number",
      "ValueError", raises=ValueError, expected=r"needs an index 0\.\.\d+|indices 0\.\.\d+", got=r"got index|not '",
      fix=r"index 0\.\.\d+|indices 0\.\.\d+")
def _set_list_index_invalid(data):
    idx = data.draw(st.one_of(st.integers(100, 10**6), st.integers(-10**6, -1).map(str), st.sampled_from(["x", "first", "one"])),
                    label="index")
    return lambda: _load_config([f"models.{idx}.min_test_accuracy=0.5"])


@case("set_unknown_key", "config", "--set of a key the config does not have (top level or nested)",
      "ValueError", raises=ValueError, expected=r"Valid keys: \[|keys there: \[", got=r"Unknown keys in .*\['|no key '",
      fix=r"Remove or rename them|keys there")
def _set_unknown_key(data):
    key = data.draw(st.sampled_from(["learning_rate", "sed", "models.0.epochz", "models.0.learning_rate",
                                     "nope.deeper"]), label="key")
    return lambda: _load_config([f"{key}=1"])


@case("set_wrong_type", "config", "--set values of the wrong type (seed='abc', seed=1.5, seed=True, name=3)",
      "TypeError", raises=TypeError, expected=r"must be (an integer|a string|a number|true or false)",
      got=r"; got ", fix=r"Write ")
def _set_wrong_type(data):
    item = data.draw(st.sampled_from(["seed=abc", "seed=1.5", "seed=True", "seed=[1]", "name=3", "name=None",
                                      "models.0.min_test_accuracy='high'", "seed=1e999"]), label="item")
    return lambda: _load_config([item])


@case("set_into_a_scalar", "config", "--set descending into a scalar (name.x=1, seed.a.b=2)", "ValueError",
      raises=ValueError, expected=r"not a table", got=r"holds a (str|int) value", fix=r"Set \S+ itself \(--set ")
def _set_into_a_scalar(data):
    item = data.draw(st.sampled_from(["name.x=1", "seed.a.b=2", "models.0.arch.x=1"]), label="item")
    return lambda: _load_config([item])


@case("set_value_is_code", "config", "--set values that are Python code (__import__('os').system(...))",
      "never executed: a string, then a type error where a number is expected", raises=TypeError,
      expected=r"must be an integer", got=r"got [\"'](__import__|open\()", fix=r"Write a whole number")
def _set_value_is_code(data):
    marker = _tmp() / "pwned"
    code = data.draw(st.sampled_from([f"__import__('os').system('touch {marker}')",
                                      f"open('{marker}', 'w').write('x')"]), label="code")

    def call():
        try:
            _load_config([f"seed={code}"])
        finally:
            assert not marker.exists()  # nothing ran

    return call


@case("config_file_hostile", "config", "a TOML file of random text, a bad kind, or a missing required key",
      "ValueError", raises=ValueError, expected=r"is not valid TOML|'kind' must be one of|Missing required key",
      got=r"valid TOML: .*\(at (line|end)|got '\w+'|required key \S+\.name", fix=r"Fix the file there|Did you mean|Set kind to one of|Add name = ")
def _config_file_hostile(data):
    from fisherscope.experiments import load_config

    kind = data.draw(st.sampled_from(["garbage", "kind", "missing"]), label="kind")
    path = _tmp() / "c.toml"
    if kind == "garbage":
        path.write_text("name = \n" + data.draw(st.text(max_size=30), label="text"), encoding="utf-8")
    elif kind == "kind":
        path.write_text(f'name = "x"\nkind = "{data.draw(st.sampled_from(["nope", "demos", "Model_Accuracy"]))}"\n')
    else:
        path.write_text('kind = "model_accuracy"\n')
    return lambda: load_config(path)


@case("overrides_unknown_train_keyword", "config", "a model's overrides with a key train_model does not take "
      "(learning_rate, epoch)", "ValueError", raises=ValueError, expected=r"valid keys: \['augment'",
      got=r"unknown training setting\(s\) \['", fix=r"Did you mean '\w+' -> '\w+'|train_model's keyword names")
def _overrides_unknown_train_keyword(data):
    from fisherscope.experiments.common import check_overrides

    key = data.draw(st.sampled_from(["learning_rate", "epoch", "lrr", "batchsize"]), label="key")
    return lambda: check_overrides({key: 1}, where="models[0].overrides")


@case("set_valid", "config", "--set of valid values (seed=<n>, models.<i>.min_test_accuracy=<p>)",
      "result: the config holds exactly the value given, the file is untouched", examples=10)
def _set_valid(data):
    seed = data.draw(st.integers(0, 2**31), label="seed")
    i = data.draw(st.integers(0, 3), label="i")
    p = data.draw(st.floats(0.0, 1.0), label="p")
    path = _config_path()
    raw = path.read_bytes()
    cfg = _load_config([f"seed={seed}", f"models.{i}.min_test_accuracy={p!r}"])
    assert cfg.seed == seed and cfg.models[i].min_test_accuracy == p
    assert path.read_bytes() == raw


# ============================================================================ runner


@pytest.fixture(scope="module", autouse=True)
def _cleanup_tmp():
    yield
    import shutil

    for d in _TMP:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _message_ok(c: Hostile, exc: BaseException) -> None:
    msg = str(exc)
    for part in ("expected", "got", "fix"):
        pattern = getattr(c, part)
        assert re.search(pattern, msg, flags=re.S), f"{c.name}: the message does not name the {part} ({pattern!r}):\n{msg}"


@pytest.mark.parametrize("name", sorted(HOSTILE_CASES))
def test_hostile_inputs_end_in_a_documented_outcome(name):
    c = HOSTILE_CASES[name]

    @settings(max_examples=c.examples * SCALE, deadline=None, derandomize=DERANDOMIZE, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data):
        thunk = c.fn(data)
        if c.raises is None:
            assert thunk is None
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BudgetWarning)
            with pytest.raises(c.raises) as info:
                thunk()
        _message_ok(c, info.value)

    run()


def test_there_are_at_least_40_hostile_classes_over_every_area():
    assert len(HOSTILE_CASES) >= 40
    areas = {c.area for c in HOSTILE_CASES.values()}
    assert areas == {"attacks", "fisher", "detectors", "data", "config"}
    assert all(c.examples <= 20 for c in HOSTILE_CASES.values())


def test_parameter_type_errors_are_also_value_errors():
    """The cases above expect ValueError for wrong types too: ParameterTypeError is both."""
    assert issubclass(ParameterTypeError, ValueError) and issubclass(ParameterTypeError, TypeError)


# ================================================================= the table in the docs


def render_table() -> str:
    rows = ["| # | case | area | hostile input | outcome | message must match (expected · got · fix) |",
            "|---|---|---|---|---|---|"]
    order = ["attacks", "fisher", "detectors", "data", "config"]
    cases = sorted(HOSTILE_CASES.values(), key=lambda c: (order.index(c.area), c.name))
    for i, c in enumerate(cases, 1):
        words = "result invariants (checked in the case)" if c.raises is None else \
            " · ".join(f"`{getattr(c, p)}`".replace("|", "\\|") for p in ("expected", "got", "fix"))
        rows.append(f"| {i} | `{c.name}` | {c.area} | {c.hostile} | {c.outcome} | {words} |")
    return "\n".join(rows) + "\n"


BEGIN, END = "<!-- hostile-cases:begin -->", "<!-- hostile-cases:end -->"


def test_the_docs_table_is_the_case_table():
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"{DOC} lacks the {BEGIN} ... {END} markers"
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip() + "\n"
    assert table == render_table(), (
        f"{DOC} is out of date with HOSTILE_CASES; regenerate it with `python tests/test_fuzz_hostile.py --write-doc`"
    )


def _write_doc() -> None:
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{BEGIN}\n{render_table()}{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    if "--write-doc" in sys.argv:
        _write_doc()
        print(f"wrote {DOC} ({len(HOSTILE_CASES)} cases)")
