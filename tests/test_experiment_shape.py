"""The shape every experiment module keeps: paper modules import the kit, never each other."""

from __future__ import annotations

import ast
from pathlib import Path

import fisherscope.experiments as experiments

PKG = Path(experiments.__file__).parent
#: The shared experiment kit: the only modules of experiments/ a paper module may import.
KIT = {"base", "common", "config", "detection_kit", "hendrycks_kit", "kit", "provenance", "report", "runner",
       "robust_kit", "specs", "store", "zhao_kit"}


def _internal_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(
                "fisherscope.experiments."):
            out.add(node.module.split(".")[2])
    return out


def test_paper_modules_import_only_the_kit():
    found = set()
    for path in sorted(PKG.glob("*.py")):
        name = path.stem
        if name in KIT or name == "__init__":
            continue
        for other in _internal_imports(path) - KIT:
            found.add((name, other))
    assert not found, (
        f"paper modules import other paper modules: {sorted(found)}; move what they share into a kit module "
        f"(listed in KIT) or into the library"
    )


def test_the_kit_imports_no_paper_module():
    for name in KIT:
        path = PKG / f"{name}.py"
        assert _internal_imports(path) <= KIT, f"{name}.py imports {sorted(_internal_imports(path) - KIT)}"


def test_demo_has_every_section_on_the_new_shape():
    from fisherscope.experiments.kit import DEMO_SECTIONS

    names = [s.name for s in DEMO_SECTIONS]
    assert names == ["accuracy", "ossa", "attacks", "inspect", "detect", "defend"]
    assert all(callable(s.cells) and callable(s.report) for s in DEMO_SECTIONS)


def test_every_kind_has_a_pure_report_and_every_config_names_one():
    from fisherscope.experiments import EXPERIMENTS
    from fisherscope.experiments.config import read_toml

    impure = sorted(kind for kind, exp in EXPERIMENTS.items() if not callable(exp.report))
    assert not impure, f"experiment kinds without a pure report (register(..., report=...)): {impure}"
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.toml"))
    assert configs, "no TOML configs found under configs/"
    bad = {}
    for path in configs:
        kind = read_toml(path).get("kind")
        if kind not in EXPERIMENTS:
            bad[path.name] = kind
    assert not bad, f"configs naming a kind that is unknown or has no pure report: {bad}"
