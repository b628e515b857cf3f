"""APGD: the DLR loss, the checkpoint schedule, the budget, and strength against PGD."""

from __future__ import annotations

import pytest
import torch

from fisherscope.attacks import APGD, PGD, APGDTargeted, dlr_loss
from fisherscope.attacks.apgd import apgd_checkpoints


def test_dlr_is_invariant_to_shifts_and_positive_scalings_of_the_logits():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (6,), generator=g)
    t = (y + 1) % 10
    for loss in (lambda v: dlr_loss(v, y), lambda v: dlr_loss(v, y, t)):
        torch.testing.assert_close(loss(3.0 * z + 7.0), loss(z))
        torch.testing.assert_close(loss(1e4 * z), loss(z))


def test_dlr_by_hand():
    z = torch.tensor([[3.0, 1.0, 0.5, -1.0]])
    y = torch.tensor([0])
    # -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3) = -(3 - 1) / (3 - 0.5)
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-2.0 / 2.5]))
    # targeted towards class 3: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    torch.testing.assert_close(dlr_loss(z, y, torch.tensor([3])), torch.tensor([-4.0 / (3 - (0.5 - 1.0) / 2)]))
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr_loss(torch.zeros(1, 2), torch.tensor([0]))


def test_checkpoints_follow_croce_hein():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_apgd_is_at_least_as_strong_as_pgd_within_the_budget(digits_model):
    from fisherscope.data import load_dataset

    te = load_dataset("digits", "test")
    x, y = te.x[:120], te.y[:120]
    model = digits_model.model
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    for norm, eps in (("linf", 0.08), ("l2", 0.6)):
        pgd = PGD(eps=eps, steps=50, norm=norm).run(model, x, y, generator=g())
        apgd = APGD(eps=eps, steps=50, norm=norm).run(model, x, y, generator=g())
        assert apgd.norms[norm].max() <= eps * (1 + 1e-5)
        assert apgd.success.sum() >= pgd.success.sum() - 2
        t = APGDTargeted(eps=eps, steps=20, norm=norm, n_target_classes=3).run(model, x, y, generator=g())
        assert t.success.float().mean() > 0 and t.norms[norm].max() <= eps * (1 + 1e-5)


def test_targeted_apgd_with_too_many_targets_names_the_fix(digits_model):
    from fisherscope.data import load_dataset

    te = load_dataset("digits", "test")
    with pytest.raises(ValueError, match="n_target_classes <= 9"):
        APGDTargeted(eps=0.1, n_target_classes=12, steps=2)(digits_model.model, te.x[:4], te.y[:4])


def test_checkpoint_rule_is_validated_and_the_paper_rule_still_attacks(digits_model):
    with pytest.raises(ValueError, match="checkpoint_rule"):
        APGD(eps=0.1, checkpoint_rule="text")
    from fisherscope.data import load_dataset

    te = load_dataset("digits", "test")
    model, x, y = digits_model.model.eval(), te.x[:64], te.y[:64]
    for rule in ("reference", "paper"):
        res = APGD(eps=0.1, steps=20, checkpoint_rule=rule).run(model, x, y, generator=torch.Generator().manual_seed(0))
        assert (res.x_adv - x).abs().amax() <= 0.1 + 1e-6
        assert res.success.float().mean() > 0.5, rule
