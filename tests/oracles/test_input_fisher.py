"""float64 oracles for the input-space Fisher matrix and its spectrum (DESIGN §4, §5)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _models import LinearSoftmax, tiny_cnn, tiny_mlp  # noqa: E402
from fisherscope import ConvergenceWarning  # noqa: E402
from fisherscope.fisher import (  # noqa: E402
    MAX_DENSE_DIM,
    alias_sample,
    alias_table,
    fisher_matrix,
    fisher_spectrum,
    fisher_trace,
    fisher_vector_product,
    logits_jacobian,
)

F64 = torch.float64


def _naive_fisher(model, x):
    """Independent oracle: autograd.functional.jacobian per sample + explicit Σ_y p_y g_y g_yᵀ."""
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        logp = lambda z: torch.log_softmax(model(z), 1)[0]  # noqa: E731
        jac = torch.autograd.functional.jacobian(logp, xi).reshape(-1, xi.numel())  # (K, D): g_y rows
        p = torch.softmax(model(xi), 1)[0].detach()
        out.append(sum(p[y] * torch.outer(jac[y], jac[y]) for y in range(len(p))))
    return torch.stack(out)


CASES = {
    "mlp": lambda: (tiny_mlp(d=12, k=5), torch.rand(5, 12, dtype=F64, generator=torch.Generator().manual_seed(1))),
    "cnn": lambda: (tiny_cnn(side=8, k=6), torch.rand(4, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(2))),
    "cnn_rgb": lambda: (tiny_cnn(c=3, side=8, k=7, act=torch.nn.Tanh), torch.rand(3, 3, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(3))),
}


@pytest.fixture(params=sorted(CASES))
def case(request):
    return CASES[request.param]()


def _dense_eigh(g):
    w, v = torch.linalg.eigh(g)
    return w.flip(-1), v.flip(-1)


def test_dense_matrix_matches_naive_oracle(case):
    model, x = case
    g = fisher_matrix(model, x)
    torch.testing.assert_close(g, _naive_fisher(model, x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, g.mT)  # symmetric
    assert torch.linalg.eigvalsh(g).min() > -1e-12 * torch.linalg.eigvalsh(g).max()  # PSD


def test_linear_softmax_closed_form():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(4, 9, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    model = LinearSoftmax(w, b).eval()
    x = torch.rand(6, 9, dtype=F64, generator=g)
    p = torch.softmax(x @ w.T + b, 1)
    a = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    expected = w.T @ a @ w
    torch.testing.assert_close(fisher_matrix(model, x), expected, rtol=1e-12, atol=1e-14)
    # trace: Σ_k p_k ‖W_k − W̄_p‖²
    wbar = p @ w
    tr = (p * ((w.unsqueeze(0) - wbar.unsqueeze(1)) ** 2).sum(-1)).sum(1)
    torch.testing.assert_close(fisher_trace(model, x), tr, rtol=1e-12, atol=0)


def _check_against_dense(spec, g, k, eig_tol, vec_tol=1e-6):
    w, v = _dense_eigh(g)
    lam_max = w[:, :1]
    assert spec.eigenvalues.shape == (g.shape[0], k)
    assert (spec.eigenvalues[:, :-1] >= spec.eigenvalues[:, 1:]).all()  # descending
    err = (spec.eigenvalues - w[:, :k]).abs()
    assert (err <= eig_tol * lam_max).all(), (err / lam_max).max()
    vecs = spec.eigenvectors.reshape(g.shape[0], k, -1)
    # eigenvectors: |cos| >= 1 - vec_tol wherever the eigenvalue is separated from its neighbours
    wk = w[:, : k + 1]
    for n in range(g.shape[0]):
        for i in range(k):
            gap_lo = wk[n, i] - wk[n, i + 1] if i + 1 < wk.shape[1] else wk[n, i]
            gap_hi = wk[n, i - 1] - wk[n, i] if i > 0 else torch.inf
            if min(gap_lo, gap_hi) > 1e-3 * lam_max[n, 0] and wk[n, i] > 1e-3 * lam_max[n, 0]:
                cos = (vecs[n, i] @ v[n, :, i]).abs()
                assert cos >= 1 - vec_tol, (n, i, cos)
                assert abs(vecs[n, i].norm() - 1) < 1e-6


def test_exact_spectrum_matches_dense_eigh(case):
    model, x = case
    g = fisher_matrix(model, x)
    kmax = model(x).shape[1] - 1
    spec = fisher_spectrum(model, x)
    assert spec.method == "exact" and spec.converged.all()
    _check_against_dense(spec, g, kmax, 1e-8)
    # rank <= K - 1: the dense matrix has nothing past K - 1
    w, _ = _dense_eigh(g)
    assert (w[:, kmax:].abs() <= 1e-10 * w[:, :1]).all()
    # trace = sum of eigenvalues
    torch.testing.assert_close(spec.eigenvalues.sum(1), fisher_trace(model, x), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_iterative_spectrum_matches_dense_eigh(case, method):
    model, x = case
    g = fisher_matrix(model, x)
    spec = fisher_spectrum(model, x, k=2, method=method, tol=1e-9, max_iter=2000,
                           generator=torch.Generator().manual_seed(0))
    assert spec.converged.all()
    _check_against_dense(spec, g, 2, 1e-4)


def test_eigenvectors_are_eigenvectors_and_oriented(case):
    model, x = case
    g = fisher_matrix(model, x)
    spec = fisher_spectrum(model, x)
    v = spec.eigenvectors.reshape(x.shape[0], spec.eigenvalues.shape[1], -1)
    gv = torch.einsum("nde,nke->nkd", g, v)
    resid = (gv - spec.eigenvalues.unsqueeze(-1) * v).norm(dim=-1)
    assert (resid <= 1e-8 * spec.eigenvalues[:, :1]).all()
    # sign convention: moving along +v never lowers the CE of the predicted class (first order)
    xr = x.clone().requires_grad_(True)
    logp = torch.log_softmax(model(xr), 1)
    pred = logp.argmax(1)
    (grad,) = torch.autograd.grad(-logp[torch.arange(len(x)), pred].sum(), xr)
    dots = torch.einsum("nkd,nd->nk", v, grad.reshape(len(x), -1))
    nonzero = spec.eigenvalues > 0
    assert (dots[nonzero] >= -1e-12).all()


def test_power_and_lanczos_agree_on_orientation(case):
    model, x = case
    exact = fisher_spectrum(model, x, k=1)
    for method in ("lanczos", "power"):
        it = fisher_spectrum(model, x, k=1, method=method, tol=1e-10, max_iter=3000,
                             generator=torch.Generator().manual_seed(5))
        cos = torch.einsum("nd,nd->n", exact.top_eigenvector.flatten(1), it.top_eigenvector.flatten(1))
        assert (cos > 1 - 1e-6).all()


def test_fisher_vector_product_equals_dense_product(case):
    model, x = case
    g = fisher_matrix(model, x)
    v = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(7))
    got = fisher_vector_product(model, x, v).reshape(x.shape[0], -1)
    torch.testing.assert_close(got, torch.einsum("nde,ne->nd", g, v.flatten(1)), rtol=1e-10, atol=1e-12)


def test_k_beyond_rank_gives_explicit_zeros_and_one_warning():
    model, x = CASES["mlp"]()
    with pytest.warns(UserWarning, match=r"rank at most K - 1 = 4.*6 eigenvalues past that are returned as exact zeros"):
        spec = fisher_spectrum(model, x, k=10)
    assert spec.eigenvalues.shape == (5, 10)
    assert (spec.eigenvalues[:, 4:] == 0).all() and (spec.eigenvectors[:, 4:] == 0).all()
    assert (spec.eigenvalues[:, :4] > 0).all()


@pytest.mark.parametrize("strategy", ["auto", "loop", "vmap"])
def test_batched_equals_per_sample(case, strategy, monkeypatch):
    import fisherscope.fisher.input_space as ins

    monkeypatch.setattr(ins, "JACOBIAN_STRATEGY", strategy)
    model, x = case
    full = fisher_spectrum(model, x)
    for i in range(x.shape[0]):
        one = fisher_spectrum(model, x[i : i + 1])
        lam = full.eigenvalues[i]
        torch.testing.assert_close(one.eigenvalues[0], lam, rtol=1e-10, atol=1e-14)
        # an eigenvector is known to about eps · λ_max / gap: tight where that is small; the
        # tiny eigenpairs (λ ~ 1e-10 λ_max here) agree in direction only (their sign follows
        # from a ⟨v, ∇ log p_ŷ⟩ at round-off level)
        tight = lam >= 1e-6 * lam[0]
        torch.testing.assert_close(one.eigenvectors[0][tight], full.eigenvectors[i][tight], rtol=1e-6, atol=1e-7)
        a, b = one.eigenvectors[0][~tight].flatten(1), full.eigenvectors[i][~tight].flatten(1)
        assert bool(((a * b).sum(1).abs() >= 1 - 1e-4 * (a.norm(dim=1) * b.norm(dim=1))).all())


def test_class_sampling_is_unbiased_and_converges():
    # moderate logits, so every class carries weight (MC cannot see classes of p ~ 1e-12)
    gen = torch.Generator().manual_seed(4)
    model = LinearSoftmax(torch.randn(6, 10, generator=gen, dtype=F64) * 0.5,
                          torch.zeros(6, dtype=F64)).eval()
    x = torch.rand(4, 10, dtype=F64, generator=gen)
    g = fisher_matrix(model, x)
    from fisherscope.fisher.input_space import _Products, _sampled_a_matrix

    logits, _ = logits_jacobian(model, x)
    p = torch.softmax(logits, 1)
    v = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    exact = torch.einsum("nde,ne->nd", g, v.flatten(1))
    errs = {}
    for m in (2, 64, 8192):
        gen = torch.Generator().manual_seed(m)
        prods = [_Products(model, x, _sampled_a_matrix(p, m, gen))(v).flatten(1) for _ in range(8)]
        errs[m] = torch.stack([(q - exact).norm() / exact.norm() for q in prods]).mean()
    assert errs[8192] < errs[64] < errs[2]
    assert errs[8192] < 0.05
    # unbiased: the mean of many small-m estimates approaches the exact product
    gen = torch.Generator().manual_seed(0)
    mean = torch.stack([_Products(model, x, _sampled_a_matrix(p, 3, gen))(v).flatten(1) for _ in range(400)]).mean(0)
    assert (mean - exact).norm() / exact.norm() < 0.1


def test_alias_tables_sample_the_distribution():
    p = torch.softmax(torch.randn(3, 7, generator=torch.Generator().manual_seed(0)) * 2, 1)
    prob, alias = alias_table(p)
    draws = alias_sample(prob, alias, 100_000, generator=torch.Generator().manual_seed(1))
    freq = torch.stack([(draws == c).double().mean(1) for c in range(7)], 1)
    assert (freq - p.double()).abs().max() < 0.01


def test_class_sampled_spectrum_runs_with_both_solvers():
    model, x = CASES["mlp"]()
    for method in ("lanczos", "power"):
        spec = fisher_spectrum(model, x, k=1, method=method, class_samples=200, tol=1e-8, max_iter=500,
                               generator=torch.Generator().manual_seed(0))
        assert spec.method == f"{method}+alias" and (spec.eigenvalues >= 0).all()


def test_convergence_warning_names_samples():
    model, x = CASES["cnn"]()
    with pytest.warns(ConvergenceWarning, match=r"power did not reach tol=1e-14 within max_iter=2 for \d+ of 4 samples: \[0"):
        spec = fisher_spectrum(model, x, k=1, method="power", tol=1e-14, max_iter=2,
                               generator=torch.Generator().manual_seed(0))
    assert not spec.converged.all()


def test_dense_refuses_large_inputs():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(MAX_DENSE_DIM + 1, 3))
    with pytest.raises(ValueError, match=r"D = 4097.*fisher_spectrum\(model, x\)"):
        fisher_matrix(model, torch.rand(1, MAX_DENSE_DIM + 1))


def test_probability_outputs_rejected():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4), torch.nn.Softmax(dim=1)).double().eval()
    x = torch.rand(2, 12, dtype=F64)
    for fn in (lambda: fisher_spectrum(model, x), lambda: fisher_trace(model, x),
               lambda: fisher_vector_product(model, x, x)):
        with pytest.raises(ValueError, match="looks like probabilities"):
            fn()


def test_bad_inputs_rejected():
    model, x = CASES["mlp"]()
    with pytest.raises(ValueError, match="outside bounds"):
        fisher_spectrum(model, x + 2)
    with pytest.raises(ValueError, match="non-finite"):
        fisher_spectrum(model, x * float("nan"))
    with pytest.raises(ValueError, match="method must be"):
        fisher_spectrum(model, x, method="arnoldi")
    with pytest.raises(ValueError, match="class_samples approximates"):
        fisher_spectrum(model, x, class_samples=3)
    with pytest.raises(ValueError, match="v must be a tensor shaped like x"):
        fisher_vector_product(model, x, x[:1])


def test_no_side_effects_on_model_and_inputs():
    model, x = CASES["cnn"]()
    model.train()
    before_modes = [m.training for m in model.modules()]
    x0 = x.clone()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fisher_spectrum(model, x)
        fisher_spectrum(model, x, k=1, method="lanczos")
        fisher_trace(model, x)
    assert [m.training for m in model.modules()] == before_modes
    assert torch.equal(x, x0) and not x.requires_grad and x.grad is None
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in model.parameters())


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_float32_iterative_solvers_on_confident_predictions(method):
    """Trained nets give p_ŷ = 1 − δ with δ ~ 1e-6; in float32, diag(p)u − p pᵀu then
    cancels to noise and the Krylov solvers converge to the wrong operator (seen on the
    trained mnist_cnn: 17% error on Lanczos "converged" in 5 products). The float64
    class-space step keeps them at the float32 oracle's accuracy."""
    g = torch.Generator().manual_seed(4)
    bias = torch.zeros(6, dtype=F64)
    bias[0] = 15.0  # class 0 wins by ~15 logits: δ ≈ 5 e^-15 ≈ 1e-6
    model = LinearSoftmax(torch.randn(6, 20, generator=g, dtype=F64) * 0.3, bias).eval()
    x64 = torch.rand(6, 20, dtype=F64, generator=torch.Generator().manual_seed(5))
    p = torch.softmax(model(x64), 1)
    delta = 1 - p.max(1).values
    assert (delta < 1e-5).all() and (delta > 1e-12).all()  # confident, yet representable in float64
    top64 = torch.linalg.eigvalsh(_naive_fisher(model, x64))[:, -1]
    model32, x32 = model.float(), x64.float()
    spec = fisher_spectrum(model32, x32, k=1, method=method, tol=1e-5, max_iter=200,
                           generator=torch.Generator().manual_seed(0))
    rel = (spec.top_eigenvalue.double() - top64).abs() / top64
    assert rel.max() < 1e-3, rel


def test_chunks_of_the_exact_methods_agree(case, monkeypatch):
    """JACOBIAN_CHUNK_BYTES only changes how many samples share a graph, not the results."""
    import fisherscope.fisher.input_space as ins

    model, x = case
    whole = fisher_spectrum(model, x)
    tr = fisher_trace(model, x)
    monkeypatch.setattr(ins, "JACOBIAN_CHUNK_BYTES", 1)  # one sample per chunk
    assert ins._jacobian_chunk(model, x)[0] == 1
    chunked = fisher_spectrum(model, x)
    torch.testing.assert_close(chunked.eigenvalues, whole.eigenvalues, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(fisher_trace(model, x), tr, rtol=1e-10, atol=1e-14)
    monkeypatch.setattr(ins, "JACOBIAN_CHUNK_BYTES", None)
    assert ins._jacobian_chunk(model, x)[0] == x.shape[0]
