"""Saliency maps against captum (dev-only peer, marker ``peer``).

captum's ``GuidedBackprop`` hooks ``nn.ReLU`` modules only, so the comparison uses a
model whose ReLUs are all modules (not in place: captum's hooks need out-of-place ReLUs).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

captum_attr = pytest.importorskip("captum.attr")

from fisherscope.saliency import gradient, guided_backprop  # noqa: E402

pytestmark = pytest.mark.peer


@pytest.fixture(scope="module")
def model_and_x():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 5),
    ).double().eval()  # fmt: skip
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    return model, x, y


def _captum(method, model, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum warns about setting requires_grad and hooks
        return method(model).attribute(x.clone(), **kw).detach()


def test_guided_backprop_matches_captum(model_and_x):
    model, x, y = model_and_x
    ours = guided_backprop(model, x, y)
    theirs = _captum(captum_attr.GuidedBackprop, model, x, target=y)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    assert ours.abs().max() > 0


def test_gradient_matches_captum_saliency(model_and_x):
    model, x, y = model_and_x
    torch.testing.assert_close(gradient(model, x, y), _captum(captum_attr.Saliency, model, x, target=y, abs=False),
                               rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gradient(model, x, y, absolute=True),
                               _captum(captum_attr.Saliency, model, x, target=y), rtol=1e-12, atol=1e-14)
