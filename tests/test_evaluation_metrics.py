"""Evaluation metrics (fooling ratio, success rate, distances) and transfer matrices.

Oracles: hand-computed predictions of threshold classifiers, and numpy norms in float64.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import tiny_mlp  # noqa: E402
from fisherscope import ModelModeWarning  # noqa: E402
from fisherscope.attacks import FGM, Attack, AttackResult  # noqa: E402
from fisherscope.evaluation import (  # noqa: E402
    COUNT_RULES,
    attack_success_rate,
    distance_summary,
    fooling_ratio,
    transfer_from_examples,
    transfer_matrix,
)


class Threshold(nn.Module):
    """Class 1 iff x[0] > c (1-D inputs (N, 1)), with logits ±10 (x0 − c)."""

    def __init__(self, c: float):
        super().__init__()
        self.c = c
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        z = 10 * (x[:, 0] - self.c) + 0 * self.dummy
        return torch.stack([-z, z], 1)


@dataclass(frozen=True, kw_only=True)
class Reflect(Attack):
    """Test fixture: reflect x about the source model's threshold (x_adv = 2c − x), clipped."""

    budgeted = False

    def _run(self, model, x, y, eps, targeted, generator):
        return 2 * model.c - x, {}


X = torch.tensor([[0.15], [0.4], [0.6], [0.8], [0.55]], dtype=torch.float64)
Y = torch.tensor([0, 0, 1, 1, 0])
A, B = Threshold(0.5).double().eval(), Threshold(0.3).double().eval()


# ----------------------------------------------------------------- fooling ratio


def test_fooling_ratio_hand_computed():
    # clean predictions of A: [0, 0, 1, 1, 1] -> correct [T, T, T, T, F]
    x_adv = torch.tensor([[0.85], [0.2], [0.4], [0.9], [0.1]], dtype=torch.float64)  # preds [1, 0, 0, 1, 0]
    fr = fooling_ratio(A, X, x_adv, Y)
    assert (fr.n, fr.n_correct, fr.n_fooled) == (5, 4, 2)
    assert fr.ratio == 0.5
    assert fr.correct.tolist() == [True, True, True, True, False]
    assert fr.fooled.tolist() == [True, False, True, False, False]
    # the misclassified 5th sample (now correct) is neither fooled nor counted
    assert fr.accuracy_clean == 0.8 and fr.accuracy_adv == 2 / 5
    # chunked evaluation and an AttackResult give the same
    res = AttackResult(x_adv, torch.zeros(5, dtype=torch.bool), torch.zeros(5, 2), {})
    assert fooling_ratio(A, X, res, Y, batch_size=2).fooled.tolist() == fr.fooled.tolist()


def test_fooling_ratio_restores_mode_and_validates():
    model = tiny_mlp(d=4, k=3)
    model.train()
    x = torch.rand(6, 4, dtype=torch.float64)
    y = torch.zeros(6, dtype=torch.int64)
    with pytest.warns(ModelModeWarning):
        fooling_ratio(model, x, x, y)
    assert model.training
    model.eval()
    with pytest.raises(ValueError, match="x_adv must have the shape of x"):
        fooling_ratio(model, x, x[:, :3], y)
    with pytest.raises(ValueError, match="but y has"):
        fooling_ratio(model, x, x, y[:4])
    with pytest.raises(TypeError, match="int64"):
        fooling_ratio(model, x, x, y.int())
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1 or None \(one batch\); got 0"):
        fooling_ratio(model, x, x, y, batch_size=0)
    none_correct = fooling_ratio(model, x, x, (model(x).argmax(1) + 1) % 3)
    assert none_correct.n_correct == 0 and math.isnan(none_correct.ratio)


# ----------------------------------------------------------------- success rate


def test_attack_success_rate():
    s = torch.tensor([True, False, True, True])
    r = attack_success_rate(s)
    assert (r.rate, r.n_success, r.n) == (0.75, 3, 4)
    r = attack_success_rate(s, among=torch.tensor([True, True, False, False]))
    assert (r.rate, r.n_success, r.n) == (0.5, 1, 2)
    res = AttackResult(torch.zeros(4, 1), s, torch.zeros(4, 2), {})
    assert attack_success_rate(res).rate == 0.75
    assert math.isnan(attack_success_rate(s, among=torch.zeros(4, dtype=torch.bool)).rate)
    with pytest.raises(TypeError, match="bool tensor"):
        attack_success_rate(s.float())
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        attack_success_rate(s, among=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        attack_success_rate(s[None])


# ----------------------------------------------------------------- distances


def test_distance_summary_against_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(7, 1, 4, 4, generator=g, dtype=torch.float64)
    delta = torch.randn(7, 1, 4, 4, generator=g, dtype=torch.float64) * 0.1
    delta[delta.abs() < 0.05] = 0.0  # sparse perturbations: L0 is informative
    x_adv = x + delta
    success = torch.tensor([True, False, True, True, False, True, False])
    d = distance_summary(x, x_adv, success=success)
    dn = delta.reshape(7, -1).numpy()
    ref = {"l0": (dn != 0).sum(1), "l1": np.abs(dn).sum(1), "l2": np.sqrt((dn ** 2).sum(1)), "linf": np.abs(dn).max(1)}
    sel = success.numpy()
    assert d.over == "success" and d.n == 4 and d.selected.tolist() == success.tolist()
    for k, v in ref.items():
        np.testing.assert_allclose(d.per_sample[k].numpy(), v, rtol=1e-12, atol=0)
        assert d.mean[k] == pytest.approx(v[sel].mean(), rel=1e-12)
        assert d.median[k] == pytest.approx(np.median(v[sel]), rel=1e-12)  # even count: mean of the middle two
    a = distance_summary(x, x_adv, over="all")
    assert a.n == 7 and a.mean["l2"] == pytest.approx(ref["l2"].mean(), rel=1e-12)
    assert a.median["l2"] == pytest.approx(np.median(ref["l2"]), rel=1e-12)
    m = distance_summary(x, x_adv, over=torch.tensor([True] + [False] * 6))
    assert m.over == "mask" and m.n == 1 and m.median["linf"] == pytest.approx(ref["linf"][0])
    assert distance_summary(x, x_adv, over="all", l0_tol=0.08).per_sample["l0"].tolist() == (np.abs(dn) > 0.08).sum(1).tolist()
    flat = d.as_dict()
    assert flat["n"] == 4 and flat["median_l2"] == d.median["l2"]


def test_distance_summary_uses_attack_result_and_validates():
    x = torch.zeros(3, 2, dtype=torch.float64)
    x_adv = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    res = AttackResult(x_adv, torch.tensor([True, False, False]), torch.zeros(3, 2), {})
    d = distance_summary(x, res)
    assert d.n == 1 and d.mean["l2"] == 5.0 and d.mean["l1"] == 7.0 and d.mean["linf"] == 4.0 and d.mean["l0"] == 2.0
    none = distance_summary(x, x_adv, success=torch.zeros(3, dtype=torch.bool))
    assert none.n == 0 and math.isnan(none.mean["l2"]) and math.isnan(none.median["l2"])
    with pytest.raises(ValueError, match="over='success' needs the success mask"):
        distance_summary(x, x_adv)
    with pytest.raises(ValueError, match="x_adv must have the shape of x"):
        distance_summary(x, x_adv[:2], over="all")
    with pytest.raises(ValueError, match="over must be"):
        distance_summary(x, x_adv, over="fooled")
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        distance_summary(x, x_adv, over=torch.ones(2, dtype=torch.bool))


# ----------------------------------------------------------------- transfer


# Hand-computed (see the comments): clean A preds [0,0,1,1,1], B preds [0,1,1,1,1];
# crafted on A (x_adv = 1 − x): A wrong [T,T,T,T,F], B wrong [T,T,F,T,T];
# crafted on B (x_adv = clip(0.6 − x)): B wrong [T,F,T,T,F], A wrong [F,F,T,T,F].
HAND = {
    "all": [[(4, 5), (4, 5)], [(2, 5), (3, 5)]],
    "fooled_source": [[(4, 4), (3, 4)], [(2, 3), (3, 3)]],
    "correct_target": [[(4, 4), (2, 3)], [(2, 4), (3, 3)]],
    "correct_pair": [[(4, 4), (2, 3)], [(2, 3), (3, 3)]],
    "correct_all": [[(3, 3), (2, 3)], [(2, 3), (3, 3)]],
}


@pytest.mark.parametrize("count", sorted(HAND))
def test_transfer_matrix_hand_computed(count):
    models = {"A": A, "B": B}
    tm = transfer_matrix(Reflect(), models, models, X, Y, count=count)
    got = [[(int(tm.n_fooled[i, j]), int(tm.n_counted[i, j])) for j in range(2)] for i in range(2)]
    assert got == HAND[count]
    for i in range(2):
        for j in range(2):
            f, c = HAND[count][i][j]
            assert tm.rates[i, j].item() == f / c
    assert tm.sources == ("A", "B") and tm.targets == ("A", "B") and tm.count == count and tm.n == 5
    assert tm.rate("B", "A") == HAND[count][1][0][0] / HAND[count][1][0][1]


def test_transfer_table_and_names():
    tm = transfer_matrix(Reflect(), [A, B], {"only_B": B}, X, Y, count="fooled_source", batch_size=2)
    assert tm.sources == ("0:Threshold", "1:Threshold") and tm.targets == ("only_B",)
    table = tm.to_table()
    assert table.splitlines()[0] == "| crafted on \\ evaluated on | only_B |"
    assert "| 0:Threshold | 75.0% (3/4) |" in table and "| 1:Threshold | 100.0% (3/3) |" in table
    assert "| 0.750 |" in tm.to_table(percent=False, counts=False)
    assert tm.as_dict()["n_counted"] == [[4], [3]]
    assert set(COUNT_RULES) == set(HAND)
    with pytest.raises(KeyError, match="no target model named 'A'"):
        tm.rate("0:Threshold", "A")


def test_transfer_diagonal_is_the_white_box_rate():
    """Real tiny models and FGM: the diagonal equals the source's own rate under each rule."""
    g = torch.Generator().manual_seed(0)
    models = {f"m{s}": tiny_mlp(d=10, k=4, seed=s) for s in range(3)}
    x = torch.rand(60, 10, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = models["m0"](x).argmax(1)  # m0 is always right; the others are sometimes wrong
    attack = FGM(eps=0.6)
    tables = {c: transfer_matrix(attack, models, models, x, y, count=c) for c in COUNT_RULES}
    for i, m in enumerate(models.values()):
        x_adv = attack(m, x, y)
        fr = fooling_ratio(m, x, x_adv, y)
        with torch.no_grad():
            wrong = m(x_adv).argmax(1) != y
        assert tables["correct_target"].rates[i, i].item() == pytest.approx(fr.ratio)
        assert tables["correct_pair"].rates[i, i].item() == pytest.approx(fr.ratio)
        assert tables["all"].rates[i, i].item() == pytest.approx(wrong.double().mean().item())
        assert tables["fooled_source"].rates[i, i].item() == 1.0
        assert int(tables["fooled_source"].n_counted[i, i]) == fr.n_fooled
    # rules differ off the diagonal as defined: correct_all counts one common set everywhere
    ca = tables["correct_all"].n_counted
    assert bool((ca == ca[0, 0]).all())
    assert not torch.equal(tables["all"].rates, tables["correct_target"].rates)
    # transfer is partial: some off-diagonal cell below 1
    assert bool((tables["fooled_source"].rates < 1).any())


@pytest.mark.parametrize("count", sorted(HAND))
def test_transfer_from_examples_equals_transfer_matrix(count):
    """Examples crafted beforehand give the same table as crafting inside transfer_matrix."""
    models = {"A": A, "B": B}
    adversarial = {name: Reflect()(m, X, Y) for name, m in models.items()}
    tm = transfer_from_examples(adversarial, models, models, X, Y, count=count, batch_size=2)
    ref = transfer_matrix(Reflect(), models, models, X, Y, count=count)
    assert torch.equal(tm.n_fooled, ref.n_fooled) and torch.equal(tm.n_counted, ref.n_counted)
    assert tm.attack == "precomputed" and tm.n == 5


def test_transfer_from_examples_validates():
    models = {"A": A, "B": B}
    with pytest.raises(ValueError, match=r"one tensor per source model; sources \['A', 'B'\]"):
        transfer_from_examples({"A": X}, models, models, X, Y)
    with pytest.raises(ValueError, match=r"adversarial\['B'\] must be a tensor of x's shape"):
        transfer_from_examples({"A": X, "B": X[:3]}, models, models, X, Y)
    with pytest.raises(ValueError, match="count must be one of"):
        transfer_from_examples({"A": X, "B": X}, models, models, X, Y, count="fooled")


def test_transfer_validates():
    with pytest.raises(ValueError, match="count must be one of"):
        transfer_matrix(Reflect(), [A], [B], X, Y, count="fooled")
    with pytest.raises(TypeError, match="Wrap it"):
        transfer_matrix(Reflect(), A, [B], X, Y)
    with pytest.raises(ValueError, match="source_models is empty"):
        transfer_matrix(Reflect(), {}, [B], X, Y)
    with pytest.raises(TypeError, match="must be a fisherscope Attack"):
        transfer_matrix(lambda m, x, y: x, [A], [B], X, Y)
    with pytest.raises(ValueError, match="outside bounds"):
        transfer_matrix(Reflect(), [A], [B], X + 2, Y)
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1 or None \(one batch\); got 0"):
        transfer_matrix(Reflect(), [A], [B], X, Y, batch_size=0)


# ------------------------------------------------------------------ expected calibration error


def test_expected_calibration_error_matches_a_hand_computation():
    from fisherscope.evaluation import expected_calibration_error

    # confidences sigmoid(2) = 0.881 (correct), sigmoid(1) = 0.731 (correct), sigmoid(3) = 0.953 (wrong),
    # sigmoid(0.5) = 0.622 (wrong): one per bin of ten; ECE = mean |acc - conf| over the four bins
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    s = [1 / (1 + math.exp(-v)) for v in (2.0, 1.0, 3.0, 0.5)]
    hand = ((1 - s[0]) + (1 - s[1]) + s[2] + s[3]) / 4
    cal = expected_calibration_error(logits, y, n_bins=10)
    assert cal.ece == pytest.approx(hand, abs=1e-12)
    assert cal.mce == pytest.approx(s[2], abs=1e-12)
    assert cal.bin_counts == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1] and cal.n == 4
    # two samples in one bin: |mean acc - mean conf| weighted by 2/3, plus a third alone
    logits = torch.tensor([[2.0, 0.0], [2.1, 0.0], [0.0, 0.2]], dtype=torch.float64)
    cal = expected_calibration_error(logits, torch.tensor([0, 1, 1]), n_bins=5)
    p = [1 / (1 + math.exp(-v)) for v in (2.0, 2.1, 0.2)]
    assert cal.ece == pytest.approx(2 / 3 * abs(0.5 - (p[0] + p[1]) / 2) + 1 / 3 * abs(1 - p[2]), abs=1e-12)
    # perfectly confident and right: 0; a confidence of exactly 1/K lands in the first non-empty bin
    assert expected_calibration_error(torch.tensor([[50.0, 0.0]]), torch.tensor([0])).ece == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="probabilities"):
        expected_calibration_error(torch.tensor([[0.3, 0.7], [0.6, 0.4]]), torch.tensor([0, 1]))
