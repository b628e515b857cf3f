"""Layers that only point down: the import contracts of pyproject.toml ([tool.importlinter]),
what ``import fisherscope.models`` pulls in, and no private name used across packages.

Each check is also run on a copy of the source tree with one violation written into it,
so a check that could never fail would show up here.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

LINT = (
    "import sys\n"
    "from importlinter.cli import lint_imports\n"
    "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))\n"
)
LOADED = (
    "import fisherscope.models, sys; print([m for m in sys.modules if 'fisherscope.attacks' in m "
    "or 'fisherscope.defenses' in m or 'fisherscope.training' in m])"
)


def _python(code: str, src: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that imports fisherscope from ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def importlinter():
    try:
        import importlinter
    except ImportError:  # pragma: no cover - a dev install has it
        pytest.fail("import-linter is not installed; install the dev extras: pip install -e '.[dev]' "
                    "(-c constraints.txt).")
    return importlinter


def _tree_copy(tmp_path: Path) -> Path:
    """A copy of src/fisherscope and pyproject.toml under tmp_path; returns its src folder."""
    src = tmp_path / "src"
    shutil.copytree(SRC / "fisherscope", src / "fisherscope",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return src


def _append(src: Path, module: str, code: str) -> None:
    path = src / "fisherscope" / module
    path.write_text(path.read_text() + "\n\n" + code)


# ------------------------------------------------------------------ import-linter contracts


def test_import_contracts_hold(importlinter):
    res = _python(LINT, SRC, REPO)
    assert res.returncode == 0, (
        "an import breaks a layer contract of pyproject.toml [tool.importlinter]; move the code "
        "to the right layer or pass what it needs down as an argument:\n" + res.stdout + res.stderr
    )
    assert "3 kept, 0 broken" in res.stdout, res.stdout


VIOLATIONS = {
    # a lazy import inside a function counts as much as one at the top
    "models imports training lazily": (
        "models/architectures.py",
        "def _late():\n    from ..training import train_model\n\n    return train_model\n",
        ["models (architectures, checkpoint I/O) imports no training", "layers (high to low) BROKEN"],
    ),
    "models re-exports training through __getattr__": (
        "models/__init__.py",
        "def __getattr__(name):\n    from .. import training\n\n    return getattr(training, name)\n",
        ["models (architectures, checkpoint I/O) imports no training"],
    ),
    "attacks import features": (
        "attacks/base.py",
        "from ..features.pca import PCAWhitening\n",
        ["attacks import no features or detectors", "layers (high to low) BROKEN"],
    ),
    "fisher imports a layer above it": (
        "fisher/input_space.py",
        "def _late():\n    from ..attacks import FGSM\n\n    return FGSM\n",
        ["layers (high to low) BROKEN"],
    ),
    "two independent siblings": (
        "data/registry.py",
        "def _late():\n    from ..models import MODELS\n\n    return MODELS\n",
        ["layers (high to low) BROKEN"],
    ),
}


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_import_contracts_catch_a_violation(importlinter, tmp_path, case):
    module, code, broken = VIOLATIONS[case]
    src = _tree_copy(tmp_path)
    _append(src, module, code)
    res = _python(LINT, src, tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    out = " ".join((res.stdout + res.stderr).split())  # rich wraps long lines
    for text in broken:
        assert text in out, out


# ------------------------------------------------------------------------- what models loads


def test_importing_models_loads_no_training_defenses_or_attacks():
    res = _python(LOADED, SRC, REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", (
        "import fisherscope.models loaded modules of a layer above it: " + res.stdout
    )


def test_importing_models_check_sees_an_eager_import(tmp_path):
    src = _tree_copy(tmp_path)
    _append(src, "models/__init__.py", "from .. import training  # noqa: E402\n")
    res = _python(LOADED, src, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "fisherscope.training" in res.stdout and "fisherscope.defenses" in res.stdout


# --------------------------------------------------------------- private names across packages


def _module_name(path: Path, root: Path) -> tuple[list[str], bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return (parts[:-1] if is_package else parts), is_package


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _unit(parts: list[str]) -> str:
    """The package a module belongs to: ``fisherscope.<unit>`` ('' for the root package)."""
    return parts[1] if len(parts) > 1 else ""


def private_name_uses(root: Path) -> list[str]:
    """Private names that one fisherscope package takes from another, found by an AST scan.

    ``root`` holds the ``fisherscope`` package. Reported: ``from X import _name`` and imports
    of a private module inside another package (``fisherscope.data._dataset``), where X is in
    another package (``fisherscope.<unit>``); and ``obj._name`` on anything but ``self`` /
    ``cls`` / ``super()`` where ``_name`` is defined only in other packages (a method or
    attribute of one of their classes, e.g. ``attack._descend`` from the experiments). The
    top-level private modules (``fisherscope._validation``) are shared internals: importing
    them is fine, their private names are not.
    """
    files = sorted((root / "fisherscope").rglob("*.py"))
    trees = {f: ast.parse(f.read_text(), filename=str(f)) for f in files}
    defined: dict[str, set[str]] = {}
    for f, tree in trees.items():
        unit = _unit(_module_name(f, root)[0])
        names = defined.setdefault(unit, set())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    top_level = {f.stem for f in (root / "fisherscope").glob("*.py")} | {
        d.name for d in (root / "fisherscope").iterdir() if (d / "__init__.py").is_file()
    }

    found = []
    for f, tree in trees.items():
        parts, is_package = _module_name(f, root)
        unit = _unit(parts)
        where = f"{f.relative_to(root)}"
        for node in ast.walk(tree):
            targets: list[tuple[list[str], list[str]]] = []  # (module parts, imported names)
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = parts if is_package else parts[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = base + (node.module.split(".") if node.module else [])
                else:
                    mod = (node.module or "").split(".")
                targets.append((mod, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                targets.extend((a.name.split("."), []) for a in node.names)
            for mod, names in targets:
                if mod[0] != "fisherscope":
                    continue
                for name in names:
                    full = mod + [name] if mod == ["fisherscope"] and name in top_level else mod
                    if _unit(full) == unit:
                        continue
                    if full is mod and _is_private(name):
                        found.append(f"{where}:{node.lineno}: from {'.'.join(mod)} import {name}")
                if names == [] or mod != ["fisherscope"]:
                    if _unit(mod) != unit and any(_is_private(p) for p in mod[2:]):
                        found.append(f"{where}:{node.lineno}: imports private module {'.'.join(mod)}")
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                v = node.value
                if isinstance(v, ast.Name) and v.id in ("self", "cls"):
                    continue
                if isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == "super":
                    continue
                owners = sorted(u for u, names in defined.items() if node.attr in names)
                if owners and unit not in owners:
                    found.append(f"{where}:{node.lineno}: {ast.unparse(node)} (defined in {owners})")
    return found


def test_no_private_name_is_used_across_packages():
    found = private_name_uses(SRC)
    assert not found, (
        "private names used outside their package; make them public in their owning module "
        "(no leading underscore, with a docstring) or keep the use inside that package:\n"
        + "\n".join(found)
    )


def test_private_name_scan_sees_each_kind_of_use(tmp_path):
    pkg = tmp_path / "fisherscope"
    for d in ("", "fisher", "defenses", "attacks", "experiments", "data"):
        (pkg / d).mkdir(parents=True, exist_ok=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "_validation.py").write_text("def _sample_list():\n    pass\n\n\ndef check_inputs():\n    pass\n")
    (pkg / "fisher" / "input_space.py").write_text("def _factor():\n    pass\n\n\ndef _inner():\n    pass\n")
    (pkg / "fisher" / "sensitivity.py").write_text("from .input_space import _inner\n")  # same package: fine
    (pkg / "data" / "_dataset.py").write_text("class ImageDataset:\n    pass\n")
    (pkg / "attacks" / "hendrycks.py").write_text(
        "class HG:\n    def _descend(self):\n        return self._descend\n"
    )
    (pkg / "defenses" / "penalties.py").write_text(
        "from .._validation import _sample_list, check_inputs\n"
        "from ..fisher.input_space import _factor\n"
        "from fisherscope.data._dataset import ImageDataset\n"
        "from .. import _validation\n"
        "from fisherscope import __version__\n"
    )
    (pkg / "experiments" / "hg.py").write_text(
        "import fisherscope.data._dataset\n\n\ndef trace(attack):\n    return attack._descend()\n"
    )
    found = private_name_uses(tmp_path)
    assert [line.split(": ", 1)[1] for line in found] == [
        "from fisherscope._validation import _sample_list",
        "from fisherscope.fisher.input_space import _factor",
        "imports private module fisherscope.data._dataset",
        "imports private module fisherscope.data._dataset",
        "attack._descend (defined in ['attacks'])",
    ], found
