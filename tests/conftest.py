"""Shared fixtures: a private model cache for the whole session, the demo model, one thread.

No test writes into the user's ``~/.cache``: the session gets its own checkpoint cache
(``$FISHERSCOPE_CACHE``), so a model trained once (e.g. the demo's ``digits_cnn``) is
reused by every test that asks for the same training request.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def session_model_cache(tmp_path_factory):
    old = os.environ.get("FISHERSCOPE_CACHE")
    path = tmp_path_factory.mktemp("model-cache")
    os.environ["FISHERSCOPE_CACHE"] = str(path)
    os.environ.setdefault("MPLBACKEND", "Agg")
    yield path
    if old is None:
        os.environ.pop("FISHERSCOPE_CACHE", None)
    else:
        os.environ["FISHERSCOPE_CACHE"] = old


@pytest.fixture(scope="session")
def digits_model(session_model_cache):
    """The demo's ``digits_cnn`` (default preset, seed 0), trained once per session."""
    from fisherscope.experiments import Context
    from fisherscope.experiments.common import trained_model

    return trained_model("digits_cnn", "digits", Context(progress=False), seed=0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (restored after): tiny models and tensors run fastest,
    and steadiest, single-threaded on a shared 2-core machine, where a second thread only
    spins. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
