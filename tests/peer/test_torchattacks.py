"""FGSM, BIM, PGD (L∞, L2), MI-FGSM and least-likely OTCM against torchattacks 3.5.1 (marker ``peer``).

Same weights (the trained ``digits_cnn`` of the session), same inputs (64 digits test
images in [0, 1]), deterministic settings (no random start). What torchattacks computes,
read from its source:

- the loss is ``CrossEntropyLoss()`` with mean reduction, ours the per-sample sum: the
  gradient differs by the factor 1/N (N = 64, a power of two, so exactly), which changes
  neither a sign nor a normalised gradient;
- BIM clips with ``max(x − ε, 0)`` / ``min(x + ε, 1)`` in a different order, PGD
  projects then clips: the same set for x in [0, 1], the same point up to rounding;
- MIFGSM normalises by the *mean* |g| per sample, we by the L1 sum: its momentum is D
  times ours, the signs agree;
- PGDL2 divides by ‖g‖₂ + 1e-10 (we by ‖g‖₂), with g the gradient of the *mean* CE: on
  confident samples ‖g‖ is ~1e-8 and its steps are measurably shorter (up to 2.4e-3 per
  pixel after 10 steps here), so it is compared with ``eps_for_division=0``;
- ``set_mode_targeted_least_likely`` takes the least likely class other than the label,
  as :class:`~fisherscope.attacks.OTCM` does.

The iterative attacks run on a float64 copy of the model, so that rounding differences
(~1e-16) cannot flip the sign of a gradient coordinate between the two libraries; FGSM
runs in float32 as is. Success is compared on predictions recomputed here.
"""

from __future__ import annotations

import copy

import pytest
import torch

torchattacks = pytest.importorskip("torchattacks")

from fisherscope.attacks import BIM, FGSM, MIFGSM, OTCM, PGD  # noqa: E402

pytestmark = pytest.mark.peer

N = 64


@pytest.fixture(scope="module")
def data(digits_model):
    from fisherscope.data import load_dataset

    test = load_dataset("digits", "test")
    model32 = digits_model.model.eval()
    model64 = copy.deepcopy(model32).double().eval()
    return model32, model64, test.x[:N].clone(), test.y[:N].clone()


def _pred(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def _compare(model, ours, theirs, x, atol):
    diff = (ours - theirs).abs()
    assert diff.max() <= atol, f"max |ours − torchattacks| = {float(diff.max()):.3g}"
    assert (ours - x).abs().max() > 0  # the attacks did something
    assert torch.equal(_pred(model, ours), _pred(model, theirs))


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm(data, targeted):
    model, _, x, y = data
    label = (y + 3) % 10 if targeted else y
    atk = torchattacks.FGSM(model, eps=0.1)
    if targeted:
        atk.set_mode_targeted_by_label(quiet=True)
    theirs = atk(x, label)
    ours = FGSM(eps=0.1)(model, x, label, targeted=targeted)
    _compare(model, ours, theirs, x, atol=1e-6)  # one float32 ulp from our projection onto the ball


def test_bim_linf(data):
    _, model, x, y = data
    x = x.double()
    theirs = torchattacks.BIM(model, eps=0.1, alpha=0.02, steps=8)(x, y)
    ours = BIM(eps=0.1, step_size=0.02, steps=8)(model, x, y)
    _compare(model, ours, theirs, x, atol=1e-12)


@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_linf_without_random_start(data, targeted):
    _, model, x, y = data
    x = x.double()
    label = (y + 1) % 10 if targeted else y
    atk = torchattacks.PGD(model, eps=0.15, alpha=0.02, steps=12, random_start=False)
    if targeted:
        atk.set_mode_targeted_by_label(quiet=True)
    theirs = atk(x, label)
    ours = PGD(eps=0.15, step_size=0.02, steps=12, random_start=False)(model, x, label, targeted=targeted)
    _compare(model, ours, theirs, x, atol=1e-12)


def test_pgd_l2_without_random_start_and_bim_l2(data):
    _, model, x, y = data
    x = x.double()
    # PGDL2 divides by ‖∇ mean CE‖₂ + 1e-10; on confident samples that norm is ~1e-8 and the
    # 1e-10 shortens their steps by up to a few per cent, so compare with the plain normalisation
    theirs = torchattacks.PGDL2(model, eps=1.5, alpha=0.3, steps=10, random_start=False, eps_for_division=0.0)(x, y)
    ours = PGD(eps=1.5, step_size=0.3, steps=10, norm="l2", random_start=False)(model, x, y)
    _compare(model, ours, theirs, x, atol=1e-12)
    torch.testing.assert_close(BIM(eps=1.5, step_size=0.3, steps=10, norm="l2")(model, x, y), ours, rtol=0, atol=0)


def test_mifgsm(data):
    _, model, x, y = data
    x = x.double()
    theirs = torchattacks.MIFGSM(model, eps=0.1, alpha=0.01, steps=10, decay=1.0)(x, y)
    ours = MIFGSM(eps=0.1, steps=10, decay=1.0)(model, x, y)  # default step ε/T = 0.01
    _compare(model, ours, theirs, x, atol=1e-12)


def test_otcm_least_likely_sign_step_is_targeted_fgsm(data):
    model, _, x, y = data
    atk = torchattacks.FGSM(model, eps=0.1)
    atk.set_mode_targeted_least_likely(quiet=True)
    theirs = atk(x, y)
    res = OTCM(eps=0.1, norm="linf", target="least_likely").run(model, x, y)
    _compare(model, res.x_adv, theirs, x, atol=1e-6)
    assert torch.equal(res.extras["target"], atk.get_target_label(x, y))
