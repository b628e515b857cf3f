"""fisherscope._random: draws follow the generator's device, and give torch's own numbers."""

from __future__ import annotations

import pytest
import torch

from fisherscope._random import generator_device, rand, randint, randn, randperm
from fisherscope.attacks.base import random_in_ball


def test_draws_are_torchs_own_for_a_cpu_generator():
    like = torch.zeros(1, dtype=torch.float64)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(rand((3, 4), generator=g1, like=like), torch.rand((3, 4), generator=g2, dtype=torch.float64))
    assert torch.equal(randn((7,), generator=g1, like=like), torch.randn((7,), generator=g2, dtype=torch.float64))
    assert torch.equal(randint(2, 9, (5,), generator=g1, like=like), torch.randint(2, 9, (5,), generator=g2))
    assert torch.equal(randperm(6, generator=g1, like=like), torch.randperm(6, generator=g2))
    assert rand((2,), generator=None, like=like, dtype=torch.float32).dtype == torch.float32
    assert generator_device(None) == torch.device("cpu") == generator_device(g1)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_in_ball_stays_in_the_ball_and_the_box(norm):
    x = torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = torch.full((64,), 0.3, dtype=torch.float64)
    out = random_in_ball(x, eps, norm, (0.0, 1.0), torch.Generator().manual_seed(1))
    d = (out - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= 0.3 + 1e-12).all() and out.min() >= 0 and out.max() <= 1
    assert (size > 0).all()
    again = random_in_ball(x, eps, norm, (0.0, 1.0), torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_random_in_ball_refuses_other_norms():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="norm must be 'linf' or 'l2'; got 'l1'"):
        random_in_ball(x, torch.ones(2), "l1", (0.0, 1.0), None)
