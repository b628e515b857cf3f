"""The attack contract, for every entry of ATTACKS (DESIGN.md §5).

A new attack gets all of these by adding its registry entry and one line to EXAMPLES.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _models import tiny_cnn  # noqa: E402
from fisherscope import ModelModeWarning  # noqa: E402
from fisherscope.attacks import ATTACKS, Attack  # noqa: E402

#: hyperparameters used to exercise each registered attack (generous budgets)
EXAMPLES: dict[str, dict] = {
    "fgm": dict(eps=1.5),
    "ossa": dict(eps=1.5),
    "ossa_iterative": dict(step_size=0.3, steps=4, eps=1.5),
    "mifgsm": dict(eps=0.2, steps=5),
    "fgsm": dict(eps=0.3),
    "bim": dict(eps=0.2, steps=5),
    # deterministic options here (random targets / starts are drawn in batch order, so batch != per-sample);
    # the random paths are covered in tests/test_gradient_attacks.py
    "pgd": dict(eps=0.2, steps=5, random_start=False),
    "otcm": dict(eps=2.5, target="least_likely"),
    "otcm_iterative": dict(step_size=0.5, steps=5, eps=2.5, target="least_likely"),
    "hg_targeted": dict(step_size=0.05, max_steps=100, target="most_likely"),
    "hg_fast": dict(eps=0.3, target="most_likely"),
    # minimal-perturbation attacks (no eps budget); JSMA with a deterministic target choice
    "cw": dict(steps=30, binary_search_steps=3, initial_const=1.0, learning_rate=0.05),
    "opt": dict(steps=50, learning_rate=0.05),
    "deepfool": dict(steps=20),
    "deepfool_linf": dict(steps=20),
    "jsma": dict(gamma=0.3, target="most_likely"),
}
NORM_ORD = {"l2": 2, "linf": float("inf"), "l1": 1}


def make(key: str, **over) -> Attack:
    if key not in EXAMPLES:
        pytest.fail(f"attack {key!r} is registered but tests/contract/test_attacks.py has no EXAMPLES entry for it")
    return ATTACKS[key](**{**EXAMPLES[key], **over})


@pytest.fixture(scope="module")
def setup():
    model = tiny_cnn(c=1, side=8, k=5, dtype=torch.float32, batchnorm=True)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


KEYS = sorted(ATTACKS)


@pytest.mark.parametrize("key", KEYS)
def test_shape_dtype_bounds_budget(setup, key):
    model, x, y = setup
    atk = make(key)
    res = atk.run(model, x, y, generator=torch.Generator().manual_seed(0))
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype and res.x_adv.device == x.device
    lo, hi = atk.bounds
    assert res.x_adv.min() >= lo and res.x_adv.max() <= hi
    eps = getattr(atk, "eps", None)
    if atk.budgeted and eps is not None:
        d = (res.x_adv - x).flatten(1).norm(p=NORM_ORD[atk.norm], dim=1)
        assert (d <= eps + 1e-5).all(), d.max()
    assert res.success.shape == (x.shape[0],) and res.success.dtype == torch.bool
    for name in ("l0", "l1", "l2", "linf"):
        assert res.norms[name].shape == (x.shape[0],)


@pytest.mark.parametrize("key", KEYS)
def test_input_untouched_mode_restored_param_grads_untouched(setup, key):
    model, x, y = setup
    x0 = x.clone()
    model.train()
    modes = [m.training for m in model.modules()]
    sentinel = {n: torch.full_like(p, 7.0) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = sentinel[n].clone()
    try:
        with pytest.warns(ModelModeWarning):
            make(key)(model, x, y, generator=torch.Generator().manual_seed(0))
        assert [m.training for m in model.modules()] == modes
        assert torch.equal(x, x0) and x.grad is None and not x.requires_grad
        for n, p in model.named_parameters():
            assert torch.equal(p.grad, sentinel[n])
    finally:
        model.eval()
        for p in model.parameters():
            p.grad = None


@pytest.mark.parametrize("key", KEYS)
def test_eps_zero_returns_x_exactly(setup, key):
    model, x, y = setup
    atk = make(key)
    if not (atk.budgeted and "eps" in {f.name for f in dataclasses.fields(atk)}):
        pytest.skip("not a budgeted attack")
    out = dataclasses.replace(atk, eps=0.0)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


@pytest.mark.parametrize("key", KEYS)
def test_deterministic_and_batch_equals_per_sample(setup, key):
    model, x, y = setup
    atk = make(key)
    a = atk(model, x, y, generator=torch.Generator().manual_seed(3))
    b = atk(model, x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    for i in range(x.shape[0]):
        one = atk(model, x[i : i + 1], y[i : i + 1], generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(one[0], a[i], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("key", KEYS)
def test_bad_inputs_rejected(setup, key):
    model, x, y = setup
    atk = make(key)
    with pytest.raises(ValueError, match="outside bounds"):
        atk(model, x + 1.5, y)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        atk(model, bad, y)
    with pytest.raises(ValueError, match="one-hot"):
        atk(model, x, torch.nn.functional.one_hot(y, 5))
    with pytest.raises(ValueError, match="but y has"):
        atk(model, x, y[:2])
    with pytest.raises(TypeError, match="floating-point"):
        atk(model, (x * 255).to(torch.uint8), y)
    prob_model = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    with pytest.raises(ValueError, match="looks like probabilities"):
        atk(prob_model, x, y)
    # labels are checked against the number of classes on the attack's own first forward
    for call in (atk, atk.run):
        with pytest.raises(ValueError, match=r"values in \[0, 5\)"):
            call(model, x, torch.full_like(y, 5))
        with pytest.raises(ValueError, match=r"values in \[0, 5\)"):
            call(model, x, torch.full_like(y, -1))
    assert not model._forward_hooks, "the validating hook must be removed, also after an error"


class _CountingModel(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.forwards = inner, 0

    def forward(self, x):
        self.forwards += 1
        return self.inner(x)


def test_one_step_call_costs_one_forward(setup):
    """attack(model, x, y) spends no forward on validation or on a success mask."""
    model, x, y = setup
    counting = _CountingModel(model)
    for key in ("fgsm", "fgm"):
        counting.forwards = 0
        make(key)(counting, x, y)
        assert counting.forwards == 1
    counting.forwards = 0
    make("pgd", steps=4)(counting, x, y)
    assert counting.forwards == 4
    counting.forwards = 0
    make("fgsm").run(counting, x, y)  # + the forward at x_adv for the success mask
    assert counting.forwards == 2


@pytest.mark.parametrize("key", KEYS)
def test_bad_hyperparameters_rejected(key):
    fields = {f.name for f in dataclasses.fields(ATTACKS[key])}
    if "eps" in fields:
        with pytest.raises(ValueError, match=r": eps must be a finite number >= 0; got -1"):
            make(key, eps=-1.0)
    if "steps" in fields:
        with pytest.raises(ValueError, match=r": steps must be an integer >= 1"):
            make(key, steps=0)


@pytest.mark.parametrize("key", KEYS)
def test_succeeds_on_a_trained_model(digits_model, key):
    from fisherscope.data import load_dataset

    test = load_dataset("digits", "test")
    x, y = test.x[:64], test.y[:64]
    model = digits_model.model
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelModeWarning)
        res = make(key).run(model, x, y, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean()
    robust = (~res.success).float().mean()
    assert robust < clean - 0.3, (clean, robust)
