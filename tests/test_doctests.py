"""Every docstring example of ``src/fisherscope`` runs, in the default suite.

One test per module whose source holds a ``>>>`` example: ``doctest`` runs the module's
examples with ELLIPSIS and NORMALIZE_WHITESPACE. Examples about a model and a batch may
use the names of :func:`_namespace` without defining them, as a user would with their own:

- ``torch``, ``nn``;
- ``model`` and ``b``: small ReLU MLPs trained for a few full-batch steps on
  scikit-learn's digits (8×8 images in [0, 1], 10 classes; about 95% test accuracy);
  ``a`` is ``model``;
- ``x``, ``y``: 64 test digits (1, 8, 8) and their labels; ``target``: a wrong class per
  image; ``x_train``: 256 training digits;
- ``attack``: ``FGM(eps=1.0)``; ``FGM``.

``fisherscope.models.training``'s example trains the demo's ``digits_cnn``; it runs
against the session's private checkpoint cache (see ``conftest.py``), where the
``digits_model`` fixture has trained the same request. An example that cannot run here
is marked ``# doctest: +SKIP`` in place with its reason
in a comment on the same line; a module that cannot run at all goes in
``SKIP_MODULES`` with its reason.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest
import torch
from torch import nn

import fisherscope

SRC = Path(fisherscope.__file__).resolve().parent

# module -> reason it is not run (none at present).
SKIP_MODULES: dict[str, str] = {}


def _modules_with_examples() -> list[str]:
    names = []
    for path in sorted(SRC.rglob("*.py")):
        if ">>>" not in path.read_text(encoding="utf-8"):
            continue
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = _modules_with_examples()


def _mlp(seed: int, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def namespace() -> dict[str, object]:
    from fisherscope.attacks import FGM
    from fisherscope.data import load_dataset

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    model = _mlp(0, train.x, train.y)
    x, y = test.x[:64], test.y[:64]
    return {
        "torch": torch,
        "nn": nn,
        "model": model,
        "a": model,
        "b": _mlp(1, train.x, train.y),
        "x": x,
        "y": y,
        "target": (y + 1) % 10,
        "x_train": train.x[:256],
        "attack": FGM(eps=1.0),
        "FGM": FGM,
    }


def test_the_namespace_model_is_a_reasonable_classifier(namespace):
    from fisherscope.data import load_dataset

    test = load_dataset("digits", "test")
    acc = (namespace["model"](test.x).argmax(1) == test.y).float().mean().item()
    assert acc > 0.9


def test_every_module_with_examples_is_collected():
    assert len(MODULES) >= 30
    assert "fisherscope.attacks.spectral" in MODULES and "fisherscope.results_summary" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, namespace, one_thread, request):
    if name in SKIP_MODULES:
        pytest.skip(SKIP_MODULES[name])
    if name == "fisherscope.models.training":
        # its example trains the demo's digits_cnn: the session fixture trains it once
        # into the session's private cache, so the example loads it from there.
        request.getfixturevalue("digits_model")
    module = importlib.import_module(name)
    runner_globs = {**vars(module), **namespace}
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, name, globs=runner_globs) if t.examples]
    assert tests, f"{name} has '>>>' in its source but doctest finds no example in it"
    failures: list[str] = []
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for test in sorted(tests, key=lambda t: t.name):
            test.globs = dict(runner_globs)
            result = runner.run(test, out=failures.append)
            test.globs.clear()
            del result
    summary = runner.summarize(verbose=False)
    assert summary.failed == 0, "".join(failures)
