"""fisherscope.features: Fisher eigenvalues and scores, penultimate, MC dropout, softmax statistics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.special import expit
from torch import nn

from _models import tiny_cnn, tiny_mlp
from fisherscope.exceptions import ModelModeWarning
from fisherscope.features import (
    fisher_eigenvalues,
    join_kdbu,
    kdbu_features,
    mc_dropout,
    param_fisher_scores,
    penultimate,
    softmax_stats,
    softmax_stats_from_logits,
)
from fisherscope.fisher import fisher_matrix, fisher_spectrum, param_fisher_form, param_fisher_trace


def _x(n=7, seed=0, shape=(1, 8, 8)):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rank_warnings(record):
    return [w for w in record if issubclass(w.category, UserWarning) and "rank" in str(w.message)]


# --------------------------------------------------------------------------- Fisher eigenvalues


def test_fisher_eigenvalues_equal_spectrum_and_pad_zeros_with_one_warning():
    net, x = tiny_cnn(), _x()  # K = 6 -> rank <= 5
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ev = fisher_eigenvalues(net, x, k=20, batch_size=3)  # 3 chunks, one warning
    assert len(_rank_warnings(rec)) == 1
    assert ev.shape == (7, 20) and ev.dtype == np.float64
    assert np.all(ev[:, 5:] == 0.0)
    ref = fisher_spectrum(net, x).eigenvalues.numpy()
    scale = ref[:, :1]  # batched eigh: chunks agree with one call to round-off of λ_max
    assert np.all(np.abs(ev[:, :5] - ref) <= 1e-13 * scale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(fisher_eigenvalues(net, x, k=20)[:, :5], ref)  # one chunk
    # the eigenvalues themselves: the dense G_x of each sample (float64 oracle)
    dense = np.linalg.eigvalsh(fisher_matrix(net, x).numpy())[:, ::-1][:, :5]
    assert np.all(np.abs(ev[:, :5] - dense) <= 1e-12 * scale)


def test_fisher_eigenvalues_below_rank_no_warning_and_kwargs_forwarded():
    net, x = tiny_cnn(), _x(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev = fisher_eigenvalues(net, x, k=3)
    np.testing.assert_array_equal(ev, fisher_spectrum(net, x, 5).eigenvalues.numpy()[:, :3])
    g = torch.Generator().manual_seed(1)
    lan = fisher_eigenvalues(net, x[:2], k=2, method="lanczos", tol=1e-10, max_iter=16, generator=g)
    assert np.all(np.abs(lan - ev[:2, :2]) <= 1e-9 * ev[:2, :1])
    with pytest.raises(TypeError, match="unexpected keyword"):
        fisher_eigenvalues(net, x, k=2, bogus=1)
    with pytest.raises(ValueError, match="fisher_eigenvalues: k must be an integer >= 1"):
        fisher_eigenvalues(net, x, k=0)


def test_fisher_eigenvalues_training_mode_warns_once_and_restores():
    net, x = tiny_cnn(), _x(5)
    net.train()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fisher_eigenvalues(net, x, k=5, batch_size=2)
    assert sum(issubclass(w.category, ModelModeWarning) for w in rec) == 1
    assert all(m.training for m in net.modules())


# --------------------------------------------------------------------------- param Fisher scores


def test_param_fisher_scores_columns_match_the_fisher_functions():
    net, x = tiny_mlp(), torch.rand(5, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = param_fisher_scores(net, x)
    assert out.shape == (5, 3) and out.dtype == np.float64
    np.testing.assert_allclose(out[:, 0], param_fisher_trace(net, x).numpy(), rtol=1e-12)
    np.testing.assert_allclose(out[:, 1], param_fisher_form(net, x).numpy(), rtol=1e-12)
    np.testing.assert_allclose(out[:, 2], param_fisher_form(net, x, normalized=True).numpy(), rtol=1e-12)
    two = param_fisher_scores(net, x, ("normalized", "trace"), reduction="two_class", batch_size=2)
    np.testing.assert_allclose(two[:, 1], param_fisher_trace(net, x, "two_class").numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        two[:, 0], param_fisher_form(net, x, normalized=True, reduction="two_class").numpy(), rtol=1e-12
    )
    assert param_fisher_scores(net, x, "trace").shape == (5, 1)
    with pytest.raises(ValueError, match="unknown score"):
        param_fisher_scores(net, x, ("trace", "hessian"))
    with pytest.raises(ValueError, match="twice"):
        param_fisher_scores(net, x, ("trace", "trace"))


def test_param_fisher_trace_column_against_per_sample_autograd_loop():
    """Float64 oracle: tr F = Σ_c p_c ‖∇θ log p_c‖², one backward pass per (sample, class)."""
    net, x = tiny_mlp(k=4), torch.rand(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    params = [p for p in net.parameters()]
    ref = []
    for i in range(3):
        log_p = torch.log_softmax(net(x[i : i + 1]), 1)[0]
        total = 0.0
        for c in range(4):
            g = torch.autograd.grad(log_p[c], params, retain_graph=True)
            total += log_p[c].exp().item() * sum(float((t * t).sum()) for t in g)
        ref.append(total)
    np.testing.assert_allclose(param_fisher_scores(net, x, "trace")[:, 0], ref, rtol=1e-10)
    assert all(p.grad is None for p in params)


# --------------------------------------------------------------------------- penultimate


def test_penultimate_is_the_input_of_the_last_linear():
    net, x = tiny_mlp(), torch.rand(6, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x0 = x.clone()
    out = penultimate(net, x, batch_size=4)
    with torch.no_grad():
        hidden, logits = net[:-1](x), net(x)
    assert out.shape == (6, 1 + 16)
    np.testing.assert_array_equal(out[:, 0], logits.argmax(1).numpy())
    np.testing.assert_allclose(out[:, 1:], hidden.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(penultimate(net, x, with_prediction=False), hidden.numpy(), rtol=1e-12,
                               atol=1e-14)
    # a named layer gives that module's output
    with torch.no_grad():
        first = net[:3](x)
    np.testing.assert_allclose(penultimate(net, x, False, layer="2"), first.numpy(), rtol=1e-12,
                               atol=1e-14)
    assert torch.equal(x, x0)


def test_penultimate_cnn_flattens_and_errors_are_clear():
    net, x = tiny_cnn(), _x(3)
    with torch.no_grad():
        ref = net[:-1](x).reshape(3, -1)
    np.testing.assert_allclose(penultimate(net, x, False), ref.numpy(), rtol=1e-12, atol=1e-14)
    no_linear = nn.Sequential(nn.Conv2d(1, 3, 8), nn.Flatten()).double()
    with pytest.raises(ValueError, match="layer="):
        penultimate(no_linear, x)
    with pytest.raises(ValueError, match="no submodule named"):
        penultimate(net, x, layer="classifier")

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4).double()

        def forward(self, x):
            return self.fc(self.fc(x))

    twice = Twice().eval()

    with pytest.raises(ValueError, match="exactly once"):
        penultimate(twice, torch.rand(2, 4, dtype=torch.float64))


# --------------------------------------------------------------------------- MC dropout


class DropNet(nn.Module):
    """Linear - BatchNorm - ELU - Dropout - Linear; BatchNorm has non-trivial running stats."""

    def __init__(self, p: float = 0.5, k: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc1 = nn.Linear(6, 16)
        self.bn = nn.BatchNorm1d(16)
        self.act = nn.ELU()
        self.drop = nn.Dropout(p)
        self.fc2 = nn.Linear(16, k)
        with torch.no_grad():
            for q in self.parameters():
                q.copy_(torch.randn(q.shape, generator=g))
            self.bn.running_mean.copy_(torch.randn(16, generator=g))
            self.bn.running_var.copy_(torch.rand(16, generator=g) + 0.5)
        self.double().eval()

    def forward(self, x):
        return self.fc2(self.drop(self.act(self.bn(self.fc1(x)))))


def _bu_oracle(net, x, n, seed_generator):
    """Feinman's BU with numpy: the same masks (documented seeding), np.var over passes."""
    seed = int(torch.randint(0, 2**62, (1,), generator=seed_generator))
    net.eval()
    net.drop.train()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        probs = np.stack([torch.softmax(net(x), 1).numpy() for _ in range(n)])
    net.eval()
    return np.var(probs, axis=0).mean(1), probs.mean(0)


def test_mc_dropout_matches_feinman_formula_and_keeps_batchnorm_in_eval():
    net, x = DropNet(), torch.rand(9, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out = mc_dropout(net, x, n=20, generator=torch.Generator().manual_seed(7), with_mean_probs=True)
    bu, mean = _bu_oracle(net, x, 20, torch.Generator().manual_seed(7))
    assert out.shape == (9, 1 + 4)
    np.testing.assert_allclose(out[:, 0], bu, rtol=1e-10, atol=1e-18)
    np.testing.assert_allclose(out[:, 1:], mean, rtol=1e-12)
    assert np.all(out[:, 0] > 0)
    np.testing.assert_allclose(out[:, 1:].sum(1), 1.0, rtol=1e-12)


def test_mc_dropout_deterministic_global_rng_untouched_and_modes_restored():
    net, x = DropNet(), torch.rand(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    state = torch.get_rng_state()
    a = mc_dropout(net, x, n=10, generator=torch.Generator().manual_seed(1))
    b = mc_dropout(net, x, n=10, generator=torch.Generator().manual_seed(1))
    c = mc_dropout(net, x, n=10, generator=torch.Generator().manual_seed(2))
    assert torch.equal(state, torch.get_rng_state())
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    net.train()
    x0 = x.clone()
    with pytest.warns(ModelModeWarning):
        mc_dropout(net, x, n=3, generator=torch.Generator().manual_seed(1))
    assert all(m.training for m in net.modules()) and torch.equal(x, x0)
    net.eval()
    mc_dropout(net, x, n=3)
    assert not any(m.training for m in net.modules())


def test_mc_dropout_rate_zero_has_zero_variance_and_no_dropout_raises():
    x = torch.rand(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    with pytest.warns(UserWarning, match="rate 0"):
        out = mc_dropout(DropNet(p=0.0), x, n=10, generator=torch.Generator().manual_seed(0))
    assert np.all(out == 0.0)
    with pytest.raises(ValueError, match="dropout="):
        mc_dropout(tiny_mlp(d=6), x, n=5)
    with pytest.raises(ValueError, match=">= 2"):
        mc_dropout(DropNet(), x, n=1)


def test_kdbu_features_layout():
    net, x = DropNet(), torch.rand(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    out = kdbu_features(net, x, n=8, generator=torch.Generator().manual_seed(3))
    pen = penultimate(net, x)
    bu = mc_dropout(net, x, n=8, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(out, np.c_[pen, bu])
    np.testing.assert_array_equal(join_kdbu(pen, np.c_[bu, bu]), out)
    with pytest.raises(ValueError, match="bu_features"):
        join_kdbu(pen, bu[:3])
    with pytest.raises(ValueError, match="with_prediction=True"):
        join_kdbu(pen[:, :1], bu)


# --------------------------------------------------------------------------- softmax statistics


def test_softmax_stats_closed_forms():
    k = 5
    out = softmax_stats_from_logits(torch.zeros(2, k, dtype=torch.float64))
    np.testing.assert_allclose(out, [[1 / k, 0.0, math.log(k)]] * 2, atol=1e-15)
    # one logit a above K-1 zeros
    a = 2.5
    z = torch.tensor([[a] + [0.0] * (k - 1)], dtype=torch.float64)
    p1 = math.exp(a) / (math.exp(a) + k - 1)
    q = (1 - p1) / (k - 1)
    h = -(p1 * math.log(p1) + (k - 1) * q * math.log(q))
    np.testing.assert_allclose(softmax_stats_from_logits(z), [[p1, math.log(k) - h, h]], rtol=1e-13)


@pytest.mark.parametrize("d", [30.0, 200.0, 745.0, 5000.0])
def test_softmax_stats_from_log_softmax_far_tail(d):
    """Two classes, logits (0, -d): p2 = σ(-d) underflows but the statistics stay exact."""
    z = torch.tensor([[0.0, -d]], dtype=torch.float64)
    h = math.log1p(math.exp(-d)) + d * float(expit(-d))
    out = softmax_stats_from_logits(z)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0], [float(expit(d)), math.log(2) - h, h], rtol=1e-13, atol=1e-300)


def test_softmax_stats_model_order_and_chunks():
    net, x = tiny_cnn(), _x(7)
    with torch.no_grad():
        ref = softmax_stats_from_logits(net(x))
    np.testing.assert_allclose(softmax_stats(net, x, batch_size=3), ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(softmax_stats(net, x, ("entropy", "max_prob")), ref[:, [2, 0]],
                               rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="unknown statistic"):
        softmax_stats(net, x, ("confidence",))
    with pytest.raises(ValueError, match="probabilities"):
        softmax_stats_from_logits(torch.full((2, 4), 0.25))


def test_common_input_validation():
    net, x = tiny_cnn(), _x(3)
    for fn in (penultimate, softmax_stats, mc_dropout):
        with pytest.raises(ValueError, match="batch_size"):
            fn(net, x, batch_size=0)
        with pytest.raises(TypeError, match="nn.Module"):
            fn(lambda t: t, x)
        with pytest.raises(ValueError, match="outside bounds"):
            fn(net, x + 2.0)
    with pytest.raises(ValueError, match="shape"):
        penultimate(net, x[0])
