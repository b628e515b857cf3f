"""The shared batching helpers: per-sample broadcasting, slices, batched predict / apply."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fisherscope import ModelModeWarning
from fisherscope._batching import (
    check_batch_size,
    chunks,
    even_chunks,
    in_batches,
    per_sample,
    predict,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Dropout(0.5), nn.BatchNorm1d(16), nn.Linear(16, 5))


def _x(n: int = 11) -> torch.Tensor:
    return torch.rand(n, 3, 2, 2, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------- per_sample


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (4, 7), (4,)])
def test_per_sample_scales_each_sample_by_its_own_value(shape):
    like = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    v = torch.tensor([1.0, -2.0, 0.0, 3.5])
    out = per_sample(v, like) * like
    assert per_sample(v, like).shape == (4, *([1] * (len(shape) - 1)))
    for i in range(4):
        torch.testing.assert_close(out[i], v[i] * like[i], rtol=0, atol=0)


def test_per_sample_masks_select_whole_samples():
    like = torch.zeros(3, 2, 2)
    mask = torch.tensor([True, False, True])
    out = torch.where(per_sample(mask, like), torch.ones_like(like), like)
    assert out.flatten(1).all(1).tolist() == [True, False, True]


# -------------------------------------------------------------------------- slices


@pytest.mark.parametrize(("n", "bs"), [(10, 3), (9, 3), (1, 5), (7, 1), (5, None)])
def test_chunks_cover_range_in_order(n, bs):
    slices = list(chunks(n, bs))
    idx = np.concatenate([np.arange(n)[sl] for sl in slices])
    assert idx.tolist() == list(range(n))
    step = n if bs is None else bs
    assert all(sl.stop - sl.start == step for sl in slices[:-1])
    assert 1 <= slices[-1].stop - slices[-1].start <= step


def test_chunks_of_nothing_is_empty():
    assert list(chunks(0, 4)) == []
    assert list(chunks(0, None)) == []


@pytest.mark.parametrize(("n", "m"), [(10, 4), (9, 3), (9, 8), (1, 5), (7, 1), (100, 33), (5, 5)])
def test_even_chunks_use_the_smallest_size_that_needs_no_extra_slice(n, m):
    slices = even_chunks(n, m)
    sizes = [sl.stop - sl.start for sl in slices]
    k = len(list(chunks(n, m)))
    assert len(slices) == k
    assert np.concatenate([np.arange(n)[sl] for sl in slices]).tolist() == list(range(n))
    size = sizes[0]
    assert size <= m and all(s == size for s in sizes[:-1]) and 1 <= sizes[-1] <= size
    assert (size - 1) * k < n  # one row less per slice would need another slice


def test_even_chunks_examples():
    assert [sl.stop - sl.start for sl in even_chunks(9, 8)] == [5, 4]  # not [8, 1]
    assert [sl.stop - sl.start for sl in even_chunks(100, 33)] == [25, 25, 25, 25]
    assert even_chunks(0, 3) == []


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "8"])
def test_check_batch_size_names_what_it_wants(bad):
    with pytest.raises(ValueError, match=rf"batch_size must be an integer >= 1; got {re.escape(repr(bad))}"):
        check_batch_size(bad)
    with pytest.raises(ValueError, match=r"an integer >= 1 or None \(one batch\)"):
        check_batch_size(bad, allow_none=True)
    check_batch_size(None, allow_none=True)
    with pytest.raises(ValueError, match="got None"):
        check_batch_size(None)


# ---------------------------------------------------------------------- in_batches


def test_in_batches_tensor_dict_and_tuple_results():
    a, b = torch.arange(10.0), torch.arange(10.0) * 10
    calls = []

    def fn(x, y):
        calls.append(x.shape[0])
        return x + y

    torch.testing.assert_close(in_batches(fn, a, b, batch_size=4), a + b)
    assert calls == [4, 4, 2]
    d = in_batches(lambda x: {"s": x * 2, "n": x[:, None].expand(-1, 3)}, a, batch_size=3)
    torch.testing.assert_close(d["s"], a * 2)
    assert d["n"].shape == (10, 3)
    t = in_batches(lambda x: (x, -x), a, batch_size=None)
    torch.testing.assert_close(t[1], -a)


def test_in_batches_rejects_misaligned_or_empty_inputs():
    with pytest.raises(ValueError, match=r"same length; got lengths \[4, 3\]"):
        in_batches(lambda x, y: x, torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match="0 rows"):
        in_batches(lambda x: x, torch.zeros(0, 2))
    with pytest.raises(ValueError, match="at least one tensor"):
        in_batches(lambda: torch.zeros(1))
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1 or None"):
        in_batches(lambda x: x, torch.zeros(3), batch_size=0)


# -------------------------------------------------------------- predict / logits


@pytest.mark.parametrize("bs", [1, 4, 11, None])
def test_predict_equals_argmax_of_one_eval_forward(bs):
    model, x = _net().eval(), _x()
    with torch.no_grad():
        want = model(x)
    got = predict(model, x, bs)
    assert torch.equal(got, want.argmax(1))
    assert got.dtype == torch.int64 and not got.requires_grad


def test_predict_runs_eval_mode_restores_modes_and_warns():
    model, x = _net(), _x()
    model.train()
    model[2].eval()  # one module in its own mode
    with torch.no_grad():
        want = model.eval()(x).argmax(1)
    model.train()
    model[2].eval()
    with pytest.warns(ModelModeWarning):
        got = predict(model, x, 3)
    assert torch.equal(got, want)  # dropout off, running BatchNorm statistics
    assert model.training and model[1].training and not model[2].training
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predict(model, x, 3, warn=False)


def test_predict_checks_logits_unless_told_not_to():
    probs = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Softmax(dim=1)).eval()
    x = _x()
    with pytest.raises(ValueError, match="looks like probabilities"):
        predict(probs, x)
    with torch.no_grad():
        assert torch.equal(predict(probs, x, 5, check=False), probs(x).argmax(1))


def test_predict_works_for_a_model_without_parameters():
    x = torch.randn(6, 4)
    assert torch.equal(predict(nn.Identity().eval(), x, 4), x.argmax(1))


def test_predict_rejects_bad_batch_size():
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1 or None \(one batch\); got 0"):
        predict(_net().eval(), _x(), 0)


# --------------------------------- the helpers replace experiments.common's copies


def test_same_results_as_experiments_common():
    common = pytest.importorskip("fisherscope.experiments.common")
    if not hasattr(common, "predict") or not hasattr(common, "in_batches"):
        pytest.skip("experiments.common no longer has predict / in_batches")
    model, x = _net().eval(), _x(13)
    assert np.array_equal(common.predict(model, x, 5), predict(model, x, 5, check=False, warn=False).numpy())
    a, b = torch.arange(13.0), torch.rand(13, 2)
    for fn in (lambda p, q: p[:, None] * q, lambda p, q: {"a": p, "b": q}, lambda p, q: (q, p)):
        old, new = common.in_batches(fn, a, b, batch_size=4), in_batches(fn, a, b, batch_size=4)
        if isinstance(old, dict):
            assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
        elif isinstance(old, tuple):
            assert all(torch.equal(o, n) for o, n in zip(old, new, strict=True))
        else:
            assert torch.equal(old, new)
