"""ImageNet-size heads (K = 1000): Lanczos, OSSA and the Fisher features under memory budgets.

A tiny convolutional net on 3 x 8 x 8 images with a 1000-way head stands in for
ResNet-50 at 224 x 224 (benchmarks/imagenet_head.py runs that): the code paths are the
same, the oracles are float64 dense computations.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fisherscope.attacks import OSSA
from fisherscope.features import fisher_eigenvalues, param_fisher_scores
from fisherscope.fisher import _factored, fisher_spectrum
from fisherscope.fisher import input_space as ins

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

K = 1000
SHAPE = (3, 8, 8)
D = math.prod(SHAPE)


def _tiny(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, K),
    )
    return net.to(dtype).eval()


def _x(n=2, dtype=torch.float64, lo=0.0, hi=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (lo + (hi - lo) * torch.rand(n, *SHAPE, generator=g)).to(dtype)


def _oracle(model, x):
    """Dense float64 G_x = Jᵀ (diag p − p pᵀ) J per sample and its eigh (descending)."""
    model = model.double()
    out = []
    for x1 in x.double():
        jac = torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0))[0], x1, vectorize=True)
        jac = jac.reshape(K, D)
        p = torch.softmax(model(x1.unsqueeze(0))[0], 0)
        g = (jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac).detach()
        w, v = torch.linalg.eigh(g)
        out.append((w.flip(0), v.flip(1)))
    return out


@pytest.fixture(scope="module")
def setup():
    model, x = _tiny(), _x(2)
    return model, x, _oracle(model, x)


def test_lanczos_top_k_matches_dense_oracle_without_the_jacobian(setup, monkeypatch):
    model, x, oracle = setup

    def no_rows(*a, **k):
        raise AssertionError("the iterative path must not form the K x D Jacobian rows")

    monkeypatch.setattr(ins, "helmert_rows", no_rows)
    monkeypatch.setattr(ins, "_centered_jacobian", no_rows)
    spec = fisher_spectrum(model, x, k=5, method="lanczos", tol=1e-9, max_iter=120,
                           generator=torch.Generator().manual_seed(0))
    assert spec.converged.all()
    for i, (w, v) in enumerate(oracle):
        torch.testing.assert_close(spec.eigenvalues[i], w[:5].detach(), rtol=1e-7, atol=1e-12 * float(w[0]))
        # separated eigenvalues: the vectors agree up to sign
        gaps = (w[:5] - w[1:6]) / w[0]
        cos = (spec.eigenvectors[i].reshape(5, D) @ v[:, :5]).diagonal().abs()
        assert (cos[gaps > 1e-3] > 1 - 1e-6).all()


def test_exact_refuses_over_budget_and_says_use_lanczos(setup, monkeypatch):
    model, x, _ = setup
    per = ins.exact_jacobian_bytes(K, D, torch.float64)
    assert per == (K - 1) * D * 24
    monkeypatch.setattr(ins, "EXACT_JACOBIAN_BYTES", per - 1)
    with pytest.raises(ValueError) as info:
        fisher_spectrum(model, x, k=5, method="exact")
    msg = str(info.value)
    for part in ("fisher_spectrum", "K - 1 = 999", "K = 1000", f"D = {D}", "expected at most",
                 "EXACT_JACOBIAN_BYTES", "method='lanczos'"):
        assert part in msg, part
    with pytest.raises(ValueError, match="method='lanczos'"):
        OSSA(eps=0.5)(model, x, model(x).argmax(1))  # the exact default
    with pytest.raises(ValueError, match="fisher_trace: the exact method"):
        ins.fisher_trace(model, x)


def test_default_budget_refuses_imagenet_size_and_admits_small_heads():
    """K = 1000 at 3 x 224 x 224 is over the default budget (3.0 GB per sample in float32)."""
    big = torch.empty(1, 3, 224, 224)
    assert ins.exact_jacobian_bytes(1000, big[0].numel()) == 999 * 150528 * 20 > ins.EXACT_JACOBIAN_BYTES
    with pytest.raises(ValueError, match=r"K = 1000 classes and D = 150528 .* method='lanczos'"):
        ins._check_exact_fits("fisher_spectrum", 1000, big)
    # ten classes at the same D (27 MB per sample), or 1000 classes at 3 x 8 x 8, fit
    assert ins._check_exact_fits("fisher_spectrum", 10, big) == 2**30 // (9 * 150528 * 20)
    assert ins._check_exact_fits("fisher_spectrum", 1000, torch.empty(1, *SHAPE)) >= 64


def test_exact_chunks_by_budget_and_still_matches_the_oracle(setup, monkeypatch):
    model, x, oracle = setup
    per = ins.exact_jacobian_bytes(K, D, torch.float64)
    monkeypatch.setattr(ins, "EXACT_JACOBIAN_BYTES", per + per // 2)  # one sample per chunk
    monkeypatch.setattr(ins, "JACOBIAN_STRATEGY", "vmap")
    ins._costs(model, x)  # the one-sample probe (K, activation bytes) is cached per model
    sizes = []
    handle = model[0].register_forward_hook(lambda m, a, o: sizes.append(a[0].shape[0]))
    try:
        spec = fisher_spectrum(model, x, k=5, method="exact")
    finally:
        handle.remove()
    assert sizes == [1, 1]  # the batch of 2 in two chunks, no extra forward for K
    for i, (w, _) in enumerate(oracle):
        torch.testing.assert_close(spec.eigenvalues[i], w[:5], rtol=1e-9, atol=1e-13 * float(w[0]))


def test_vmapped_rows_split_by_budget(setup, monkeypatch):
    """999 cotangent rows vmapped in passes that fit VMAP_ROWS_BYTES; same rows as unsplit."""
    model, x, _ = setup
    monkeypatch.setattr(ins, "JACOBIAN_STRATEGY", "vmap")
    whole = ins._centered_jacobian(model, x)[1]
    act = ins._costs(model, x)[1]
    monkeypatch.setattr(_factored, "VMAP_ROWS_BYTES", 250 * x.shape[0] * act)  # 250 rows per pass
    passes = []
    real = ins.vjp_rows

    def recording(*a, **kw):
        for sl, g in real(*a, **kw):
            passes.append(sl.stop - sl.start)
            yield sl, g

    monkeypatch.setattr(ins, "vjp_rows", recording)
    split = ins._centered_jacobian(model, x)[1]
    assert passes == [250, 250, 250, 249]
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-12)


def test_krylov_chunks_by_budget_with_the_same_result(setup, monkeypatch):
    model, x, _ = setup
    x3 = torch.cat([x, x[:1] * 0.5])
    kw = dict(k=3, method="lanczos", tol=1e-9, max_iter=60)
    whole = fisher_spectrum(model, x3, generator=torch.Generator().manual_seed(5), **kw)
    act = ins._costs(model, x3)[1]
    per = ins.krylov_bytes(D, 3, 60, act, "lanczos", torch.float64)
    assert per == 60 * D * 8 + 2 * 3 * D * 8 + 3 * act  # the basis dominates, nothing times K
    monkeypatch.setattr(ins, "KRYLOV_CHUNK_BYTES", per)  # one sample per chunk
    sizes = []
    real = ins._Products

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, model, x, *a, **k):
            sizes.append(x.shape[0])
            super().__init__(model, x, *a, **k)

    monkeypatch.setattr(ins, "_Products", Recording)
    chunked = fisher_spectrum(model, x3, generator=torch.Generator().manual_seed(5), **kw)
    assert sizes == [1, 1, 1]
    torch.testing.assert_close(chunked.eigenvalues, whole.eigenvalues, rtol=1e-10, atol=0)
    torch.testing.assert_close(chunked.eigenvectors, whole.eigenvectors, rtol=0, atol=1e-8)
    # power iteration and the alias approximation go through the same chunks
    alias = dict(k=2, method="power", class_samples=200, tol=1e-6, max_iter=40)
    a1 = fisher_spectrum(model, x3, generator=torch.Generator().manual_seed(6), **alias)
    monkeypatch.setattr(ins, "KRYLOV_CHUNK_BYTES", None)
    a2 = fisher_spectrum(model, x3, generator=torch.Generator().manual_seed(6), **alias)
    torch.testing.assert_close(a1.eigenvalues, a2.eigenvalues, rtol=1e-10, atol=0)


def test_matrix_free_alias_operator_equals_the_dense_one():
    g = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(3, K, generator=g, dtype=torch.float64) * 3, 1)
    w = ins._sampled_class_weights(p, 200, torch.Generator().manual_seed(4))
    dense = ins._sampled_a_matrix(p, 200, torch.Generator().manual_seed(4))
    u = torch.randn(3, K, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ins._a_operator(p, None, w)(u), torch.einsum("nij,nj->ni", dense, u),
                               rtol=1e-10, atol=1e-14)


def test_ossa_on_a_1000_class_head_steps_along_the_top_eigenvector(setup):
    model, _, _ = setup
    x = _x(2, lo=0.3, hi=0.7)  # no clipping at this budget
    oracle = _oracle(model, x)
    y = model(x).argmax(1)
    eps = 0.05
    res = OSSA(eps=eps, method="lanczos", tol=1e-9, max_iter=120).run(
        model, x, y, generator=torch.Generator().manual_seed(0))
    delta = (res.x_adv - x).reshape(2, D)
    assert (delta.norm(dim=1) <= eps * (1 + 1e-9)).all()
    for i, (_, v) in enumerate(oracle):
        if res.extras["sign"][i] != 0:
            cos = (delta[i] @ v[:, 0]).abs() / delta[i].norm()
            assert cos > 1 - 1e-6


def test_fisher_eigenvalue_features_on_a_1000_class_head(setup):
    model, x, oracle = setup
    feats = fisher_eigenvalues(model, x, k=5, method="lanczos", tol=1e-9, max_iter=120,
                               generator=torch.Generator().manual_seed(0))
    assert feats.shape == (2, 5)
    for i, (w, _) in enumerate(oracle):
        torch.testing.assert_close(torch.from_numpy(feats[i]), w[:5], rtol=1e-7, atol=1e-12 * float(w[0]))


def _param_oracle(model, x1):
    """Σ_c p_c ‖g_c‖², Σ_c p_c (g_c·v)² and the same along v/‖v‖, v = g_ŷ = ∇θ log p_ŷ.

    The K per-class parameter gradients g_c = ∇θ log p_c, 100 classes at a time (a vmap of
    the whole model's vjp: per-sample, per-class, parameter-sized rows), float64.
    """
    params = {n: p.detach() for n, p in model.named_parameters()}

    def logp(ps):
        return torch.log_softmax(torch.func.functional_call(model, ps, (x1.unsqueeze(0),))[0], 0)

    lp, vjp_fn = torch.func.vjp(logp, params)
    p = lp.exp()
    eye = torch.eye(K, dtype=lp.dtype)

    def rows(cots):
        g = torch.func.vmap(vjp_fn)(cots)[0]
        return torch.cat([t.flatten(1) for t in g.values()], 1)  # (C, P)

    v = rows(eye[int(p.argmax())].unsqueeze(0))[0]
    trace = form = 0.0
    for c0 in range(0, K, 100):
        gm = rows(eye[c0:c0 + 100])
        trace = trace + (p[c0:c0 + 100] * gm.pow(2).sum(1)).sum()
        form = form + (p[c0:c0 + 100] * (gm @ v).pow(2)).sum()
    return torch.stack([trace, form, form / v.dot(v)])


def test_param_fisher_scores_on_a_1000_class_head(setup, monkeypatch):
    model, x, _ = setup
    want = torch.stack([_param_oracle(model, x1) for x1 in x])
    got = param_fisher_scores(model, x)  # full reduction: K - 1 = 999 rows
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-8, atol=0)
    # the vmapped rows of the trace are split by the same budget, same numbers
    from fisherscope.fisher import parameter_space

    monkeypatch.setattr(parameter_space, "VJP_STRATEGY", "vmap")
    passes = []
    real = _factored.vjp_rows

    def recording(*a, **kw):
        passes.append(kw.get("max_rows"))
        yield from real(*a, **kw)

    monkeypatch.setattr(_factored, "vjp_rows", recording)
    monkeypatch.setattr(_factored, "VMAP_ROWS_BYTES", 1)  # one row per pass
    split = param_fisher_scores(model, x, scores=("trace",))
    assert passes == [1]
    torch.testing.assert_close(torch.from_numpy(split[:, 0]), want[:, 0], rtol=1e-8, atol=0)


@pytest.mark.slow
def test_resnet50_at_224_runs_lanczos_under_the_budget_and_refuses_exact():
    """The real size: ResNet-50, 3 x 224 x 224, K = 1000 (a minute or two on one CPU thread)."""
    import resource
    import warnings

    from fisherscope.exceptions import ConvergenceWarning
    from fisherscope.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet50").eval()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"K = 1000 classes and D = 150528 .* method='lanczos'"):
        fisher_spectrum(model, x, k=2, method="exact")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        spec = fisher_spectrum(model, x, k=2, method="lanczos", max_iter=3,
                               generator=torch.Generator().manual_seed(0))
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    act = ins._costs(model, x)[1]
    assert grown <= ins.krylov_bytes(x[0].numel(), 2, 3, act, "lanczos") + 2**30  # allocator slack
    w = spec.eigenvalues[0]
    assert torch.isfinite(w).all() and (w >= 0).all() and w[0] >= w[1] > 0
    torch.testing.assert_close(spec.eigenvectors.flatten(2).norm(dim=2), torch.ones(1, 2))
