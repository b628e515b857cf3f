"""Declarative hyperparameter validation: the constraints, the one message template, and
the silently-wrong settings it now rejects (least_perturbation, fisher_spectrum)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from fisherscope._validation import (
    BOOL,
    BOUNDS,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    any_of,
    check_param,
    check_params,
    integer,
    one_of,
    real,
)
from fisherscope.exceptions import ParameterTypeError

# "<owner>: <parameter> must be <expected>; got <value!r>. <fix>"
TEMPLATE = re.compile(r"^(?P<owner>[\w.]+): (?P<name>\S+) must be (?P<expected>.+?); got (?P<got>.+?)\. (?P<fix>\S.*)$")


def _net(k: int = 3, d: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, k)).eval()


def _parts(exc: BaseException) -> dict[str, str]:
    m = TEMPLATE.match(str(exc))
    assert m, f"message does not follow the template: {exc}"
    return m.groupdict()


# ------------------------------------------------------------------ constraints


@pytest.mark.parametrize(
    "constraint, good, bad_type, bad_value",
    [
        (POSITIVE, [1, 0.5, np.float32(2.0), np.int64(3)], [True, "1", None, torch.tensor(1.0)],
         [0, -1.0, math.nan, math.inf, -math.inf]),
        (NON_NEGATIVE, [0, 0.0, 3], [False, [1]], [-1e-12, math.nan, math.inf]),
        (POSITIVE_INT, [1, 7, np.int32(2)], [1.0, 2.5, True, "3", None], [0, -4]),
        (integer(ge=0, le=5), [0, 5], [0.0], [-1, 6]),
        (real(gt=0, lt=1), [0.5, 1e-9], [True], [0, 1, math.nan, math.inf]),
        (real(ge=0, lt=1), [0, 0.999], [], [1.0, -0.1]),
        (real(gt=0, finite=False), [1.0, math.inf], [True], [0, math.nan, -math.inf]),
        (BOOL, [True, False, np.bool_(True)], [0, 1, "True", None], []),
        (one_of("l2", "linf"), ["l2", "linf"], [], ["L2", 2, None, True]),
        (BOUNDS, [(0.0, 1.0), [-1, 1]], [(0.0,), "01", (0.0, "1")], [(1.0, 0.0), (0.0, 0.0), (0.0, math.inf)]),
        (POSITIVE_INT.or_none(), [None, 3], [2.0], [0]),
        (any_of(POSITIVE, one_of("scott", "silverman")), [1.2, "scott"], [], ["Scott", -1.0]),
    ],
)
def test_constraints_accept_and_reject(constraint, good, bad_type, bad_value):
    for v in good:
        assert check_param("owner", "p", v, constraint) is v
    for v in bad_type:
        with pytest.raises(ParameterTypeError) as info:
            check_param("owner", "p", v, constraint)
        assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
        _parts(info.value)
    for v in bad_value:
        with pytest.raises(ValueError) as info:
            check_param("owner", "p", v, constraint)
        assert not isinstance(info.value, TypeError) or constraint is BOOL
        assert _parts(info.value)["expected"] == constraint.expected


def test_message_template_pieces_and_overrides():
    with pytest.raises(ValueError) as info:
        check_param("PGD", "steps", 0, POSITIVE_INT)
    assert str(info.value) == "PGD: steps must be an integer >= 1; got 0. Pass an integer >= 1."
    with pytest.raises(ParameterTypeError, match=r"got 3\.0\. Pass the integer 3, not the float 3\.0\.$"):
        check_param("PGD", "steps", 3.0, POSITIVE_INT)
    with pytest.raises(ParameterTypeError, match="True and False are not accepted as numbers"):
        check_param("FGM", "eps", True, NON_NEGATIVE)
    with pytest.raises(ValueError, match=r"got inf\. inf is not accepted here; pass a finite number > 0\.$"):
        check_param("X", "tol", math.inf, POSITIVE)
    with pytest.raises(ValueError, match=r"got nan\. NaN is not a setting"):
        check_param("X", "tol", math.nan, POSITIVE)
    with pytest.raises(ValueError, match=r"got 'L2'\. Did you mean 'l2'\?$"):
        check_param("PGD", "norm", "L2", one_of("linf", "l2"))
    with pytest.raises(ValueError, match=r"must be a step in \(0, 1\]; got 2\. The paper uses 0\.1\.$"):
        check_param("A", "gamma", 2, real(gt=0, le=1).but(expected="a step in (0, 1]", fix="The paper uses 0.1."))
    with pytest.raises(ValueError, match="must be an integer >= 1 or None \\(automatic\\); got 0"):
        check_param("f", "chunk_size", 0, POSITIVE_INT.or_none("automatic"))
    narrow = POSITIVE.where(lambda v: v < 2, expected="a number in (0, 2)", fix="Pick below 2.")
    with pytest.raises(ValueError, match=r"got 3\. Pick below 2\.$"):
        check_param("f", "t", 3, narrow)
    with pytest.raises(ValueError, match=r"got nan\. NaN is not a setting"):  # the base's fix for the base's failure
        check_param("f", "t", math.nan, narrow)
    long = torch.zeros(100)
    with pytest.raises(ParameterTypeError) as info:
        check_param("f", "eps", long, POSITIVE)
    assert len(_parts(info.value)["got"]) <= 80 and "\n" not in str(info.value)


def test_check_params_reads_mappings_and_attributes_in_order():
    spec = {"eps": NON_NEGATIVE, "steps": POSITIVE_INT}
    check_params("A", {"eps": 0.1, "steps": 3}, spec)

    class Obj:
        eps, steps = -1.0, 0

    with pytest.raises(ValueError, match="^A: eps must be"):
        check_params("A", Obj(), spec)


# ------------------------------------------------- the template across packages


def _x(n: int = 4, d: int = 4) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(0))


def _lid_fit(**kw):
    from fisherscope.detectors import LIDDetector

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), np.r_[np.zeros(20), np.ones(10)].astype(int)
    return LIDDetector(**kw).fit(X, y)


def _cases():
    from fisherscope.attacks import FGSM, JSMA, MIFGSM, OSSA, PGD, CarliniWagnerL2, DeepFool
    from fisherscope.data import load_dataset
    from fisherscope.defenses import FisherRegularizedLoss, fisher_penalty
    from fisherscope.detectors import threshold_at_fpr
    from fisherscope.evaluation import detection_metrics, distance_summary, least_perturbation
    from fisherscope.features import fit_pca_whitening, penultimate
    from fisherscope.fisher import fisher_spectrum, param_fisher_trace
    from fisherscope.models.hg_mlp import HGMLP
    from fisherscope.saliency import gradient

    net, x = _net(), _x()
    y = torch.zeros(4, dtype=torch.long)
    return [  # (call, owner, parameter, got, exception type, a piece of the expected text)
        (lambda: PGD(eps=0.1, steps=0), "PGD", "steps", "0", ValueError, "an integer >= 1"),
        (lambda: PGD(eps=True), "PGD", "eps", "True", ParameterTypeError, "a finite number >= 0"),
        (lambda: PGD(eps=0.1, norm="L2"), "PGD", "norm", "'L2'", ValueError, "one of 'linf', 'l2'"),
        (lambda: FGSM(eps=math.nan), "FGSM", "eps", "nan", ValueError, ">= 0"),
        (lambda: CarliniWagnerL2(learning_rate=math.inf), "CarliniWagnerL2", "learning_rate", "inf", ValueError, "> 0"),
        (lambda: JSMA(gamma=0), "JSMA", "gamma", "0", ValueError, "a fraction of pixels in (0, 1]"),
        (lambda: DeepFool(candidates=1), "DeepFool", "candidates", "1", ValueError, "or None (all classes)"),
        (lambda: OSSA(eps=1.0, eigen_index=-1), "OSSA", "eigen_index", "-1", ValueError, "0 = top eigenvector"),
        (lambda: MIFGSM(eps=0.1, decay="1"), "MIFGSM", "decay", "'1'", ParameterTypeError, "a finite number >= 0"),
        (lambda: PGD(eps=0.1, bounds=(1.0, 0.0)), "PGD", "bounds", "(1.0, 0.0)", ValueError, "low < high"),
        (lambda: threshold_at_fpr([0.1, 0.2], 1.5), "threshold_at_fpr", "target_fpr", "1.5", ValueError, "[0, 1)"),
        (lambda: _lid_fit(batch_size=0), "LIDDetector", "batch_size", "0", ValueError, "an integer >= 1"),
        (lambda: _lid_fit(k=25), "LIDDetector", "k", "25", ValueError, "[1, n_clean - 1] = [1, 19]"),
        (lambda: fisher_spectrum(net, x, method="power", tol=math.inf), "fisher_spectrum", "tol", "inf",
         ValueError, "a relative residual in (0, 1)"),
        (lambda: fisher_spectrum(net, x, method="lanczos", max_iter=0), "fisher_spectrum", "max_iter", "0",
         ValueError, "an integer >= 1"),
        (lambda: param_fisher_trace(net, x, reduction="two-class"), "param_fisher_trace", "reduction", "'two-class'",
         ValueError, "one of 'full', 'two_class'"),
        (lambda: fisher_penalty(torch.zeros(1, 3), max_log=-5), "fisher_penalty", "max_log", "-5", ValueError,
         "2·log K"),
        (lambda: FisherRegularizedLoss(mu=-1.0), "FisherRegularizedLoss", "mu", "-1.0", ValueError, ">= 0"),
        (lambda: least_perturbation(FGSM(eps=0.1), net, x, y, tol=math.nan), "least_perturbation", "tol", "nan",
         ValueError, "(0, hi - lo)"),
        (lambda: detection_metrics([0.1], [0.2], confidence=1.0), "detection_metrics", "confidence", "1.0",
         ValueError, "a number in (0, 1)"),
        (lambda: distance_summary(x, x, over="all", l0_tol=-1), "distance_summary", "l0_tol", "-1", ValueError,
         ">= 0"),
        (lambda: fit_pca_whitening(x, eps=-1.0), "fit_pca_whitening", "eps", "-1.0", ValueError, ">= 0"),
        (lambda: penultimate(net, x, batch_size=0), "penultimate", "batch_size", "0", ValueError, ">= 1"),
        (lambda: gradient(net, x, y=7), "gradient", "y", "7", ValueError, "a class index in [0, 3)"),
        (lambda: HGMLP(hidden=0), "hg_mlp", "hidden", "0", ValueError, "an integer >= 1"),
        (lambda: load_dataset("digits", "validation"), "load_dataset", "split", "'validation'", ValueError,
         "one of 'train', 'test'"),
    ]


@pytest.mark.parametrize("i", range(26))
def test_messages_follow_the_template_across_packages(i):
    call, owner, name, got, exc, expected = _cases()[i]
    with pytest.raises(exc) as info:
        call()
    parts = _parts(info.value)
    assert (parts["owner"], parts["name"], parts["got"]) == (owner, name, got)
    assert expected in parts["expected"], (expected, parts["expected"])
    assert parts["fix"].endswith((".", "?", ")")), parts["fix"]


def test_case_list_is_complete():
    assert len(_cases()) == 26


# ------------------------------------------- silently wrong results, now rejected


@pytest.fixture
def fgm_setup():
    from fisherscope.attacks import FGM

    net = _net(k=3, d=16, seed=1)
    x = _x(16, 16)
    with torch.no_grad():
        y = net(x).argmax(1)
    return FGM(eps=1.0), net, x, y


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(tol=math.nan), "tol"),
        (dict(tol=math.inf), "tol"),
        (dict(tol=6.0), "tol"),  # as wide as [0, 6]: no halving at all
        (dict(tol=-1e-3), "tol"),
        (dict(hi=math.inf), "hi"),
        (dict(hi=math.nan), "hi"),
        (dict(lo=2.0, hi=2.0), "hi"),
        (dict(lo=-1.0), "lo"),
        (dict(max_halvings=0), "max_halvings"),
        (dict(max_halvings=5), "max_halvings"),  # 6 / 2^5 > 1e-3: could not reach tol
        (dict(max_halvings=12.0), "max_halvings"),
        (dict(targeted=1), "targeted"),
    ],
)
def test_least_perturbation_rejects_settings_that_return_the_upper_bound(fgm_setup, kw, name):
    """Each of these used to return ``hi`` (or a bracket wider than tol) as the budget of
    every fooled sample instead of raising."""
    from fisherscope.evaluation import least_perturbation

    attack, net, x, y = fgm_setup
    with pytest.raises(ValueError) as info:
        least_perturbation(attack, net, x, y, **kw)
    parts = _parts(info.value)
    assert (parts["owner"], parts["name"]) == ("least_perturbation", name)


def test_least_perturbation_halvings_bound_is_what_the_search_needs(fgm_setup):
    from fisherscope.evaluation import least_perturbation

    attack, net, x, y = fgm_setup
    with pytest.raises(ValueError, match=r"max_halvings must be an integer >= 13 .*Raise max_halvings to at least 13"):
        least_perturbation(attack, net, x, y, hi=6.0, tol=1e-3, max_halvings=12)
    res = least_perturbation(attack, net, x, y, hi=6.0, tol=1e-3, max_halvings=13)
    assert bool(res.fooled.all())
    # every budget is resolved below hi (to within tol), not reported as hi itself
    assert bool((res.eps < 1.0).all()) and bool((res.eps > 0).all())


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(method="power", tol=math.inf), "tol"),
        (dict(method="lanczos", tol=math.inf), "tol"),
        (dict(method="power", tol=1.0), "tol"),
        (dict(method="power", tol=math.nan), "tol"),
        (dict(method="power", tol=0.0), "tol"),
        (dict(method="power", max_iter=0), "max_iter"),
        (dict(method="power", max_iter=10.0), "max_iter"),
        (dict(method="power", class_samples=0), "class_samples"),
        (dict(method="power", k=0), "k"),
        (dict(method="svd"), "method"),
    ],
)
def test_fisher_spectrum_rejects_solver_settings(kw, name):
    """tol=inf used to stop the power iteration after one step and mark every sample
    converged (no ConvergenceWarning)."""
    from fisherscope.fisher import fisher_spectrum

    with pytest.raises(ValueError) as info:
        fisher_spectrum(_net(k=4), _x(3), **kw)
    parts = _parts(info.value)
    assert (parts["owner"], parts["name"]) == ("fisher_spectrum", name)
