"""The benchmark scripts import only names fisherscope still has.

They are not run by the suite (they time things), so a renamed or moved function would
otherwise surface only when someone runs a benchmark; every ``from fisherscope… import …``
in them, also those inside functions, must resolve.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCH.glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_every_fisherscope_import_of_a_benchmark_resolves(script):
    missing = []
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fisherscope":
            module = importlib.import_module(node.module)
            missing += [f"{node.module}.{a.name} (line {node.lineno})" for a in node.names
                        if not hasattr(module, a.name)]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "fisherscope":
                    importlib.import_module(a.name)
    assert not missing, f"{script.name} imports names fisherscope no longer has: {missing}"
