"""C&W-L2 and DeepFool against foolbox 3.3.4 (dev-only peer, marker ``peer``).

Same trained model (the ``digits_model`` fixture), same correctly classified inputs,
same hyperparameters. Success is always recomputed from the model's predictions, never
read from foolbox; foolbox's C&W returns an all-zero image for a sample it failed on
(which the model usually misclassifies), so such outputs count as failures.
"""

from __future__ import annotations

import pytest
import torch

fb = pytest.importorskip("foolbox")

from fisherscope.attacks import CarliniWagnerL2, DeepFool, DeepFoolLinf  # noqa: E402

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def data(digits_model):
    from fisherscope.data import load_dataset

    model = digits_model.model.eval()
    test = load_dataset("digits", "test")
    x, y = test.x[:32], test.y[:32]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    return model, x[keep], y[keep], fb.PyTorchModel(model, bounds=(0.0, 1.0))


def recomputed(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def fb_cw(fmodel, x, y, **kw):
    kw["stepsize"] = kw.pop("learning_rate")
    adv = fb.attacks.L2CarliniWagnerAttack(**kw).run(fmodel, x, y)
    placeholder = adv.flatten(1).abs().amax(1) == 0  # foolbox's "no adversarial found"
    return adv, placeholder


@pytest.mark.parametrize("abort_early", [False, True])
def test_cw_l2_distances_and_success_match_foolbox(data, abort_early):
    model, x, y, fmodel = data
    kw = dict(binary_search_steps=4, steps=50, learning_rate=0.05, initial_const=0.1, abort_early=abort_early)
    ours = CarliniWagnerL2(**kw).run(model, x, y)
    adv, placeholder = fb_cw(fmodel, x, y, **kw)
    theirs = recomputed(model, adv, y) & ~placeholder
    assert ours.success.float().mean() >= theirs.float().mean() - 1 / len(y)
    both = ours.success & theirs
    assert both.sum() >= len(y) - 2
    d_ours = ours.norms["l2"][both]
    d_fb = (adv - x).flatten(1).norm(dim=1)[both]
    ratio = d_ours / d_fb
    if not abort_early:
        # the same algorithm step for step (float32 noise only); measured: max |ratio − 1| < 1e-4
        torch.testing.assert_close(d_ours, d_fb, rtol=2e-3, atol=1e-4)
    else:
        # our early stop is per sample (two stalled checks), foolbox's is batch-wide:
        # measured mean ratio 1.0005, max 1.008
        assert abs(d_ours.mean() / d_fb.mean() - 1) < 0.02, ratio
        assert ratio.median() < 1.02 and ratio.max() < 1.2, ratio


def test_cw_failures_are_x_not_zeros(data):
    """A hopeless C&W setting: foolbox returns zero images, we return the inputs."""
    model, x, y, fmodel = data
    x, y = x[:8], y[:8]
    kw = dict(binary_search_steps=1, steps=10, learning_rate=0.01, initial_const=1e-4)
    ours = CarliniWagnerL2(**kw).run(model, x, y)
    adv, placeholder = fb_cw(fmodel, x, y, **kw)
    assert placeholder.all()  # foolbox: all zeros, which the model may well misclassify
    assert not ours.success.any() and torch.equal(ours.x_adv, x)


@pytest.mark.parametrize(
    ("ours_cls", "theirs_cls", "norm"),
    [(DeepFool, "L2DeepFoolAttack", "l2"), (DeepFoolLinf, "LinfDeepFoolAttack", "linf")],
)
def test_deepfool_per_sample_distances_match_foolbox(data, ours_cls, theirs_cls, norm):
    model, x, y, fmodel = data
    ours = ours_cls(steps=50, candidates=10, overshoot=0.02).run(model, x, y)
    adv = getattr(fb.attacks, theirs_cls)(steps=50, candidates=10, overshoot=0.02).run(fmodel, x, y)
    theirs = recomputed(model, adv, y)
    assert torch.equal(ours.success, theirs) and ours.success.all()
    p = 2 if norm == "l2" else float("inf")
    d_fb = (adv - x).flatten(1).norm(p=p, dim=1)
    # same steps, same 1e-4 margin: measured max relative difference ~1e-4 (float32)
    torch.testing.assert_close(ours.norms[norm], d_fb, rtol=2e-3, atol=1e-4)
