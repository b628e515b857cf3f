"""One check shared by every experiment's tests: its report re-renders from the store alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from fisherscope.experiments.base import render_stored


def _no_model(*args, **kwargs):
    raise AssertionError("a model was run while rendering a report")


def assert_rerenders_from_the_store(run_dir: Path, tmp_path: Path, monkeypatch) -> str:
    """Delete the report and figures, empty the model cache, forbid every model call and
    re-render: report.md must come back byte for byte, with the same figure files.
    Returns the report text."""
    run_dir = Path(run_dir)
    before = (run_dir / "report.md").read_text()
    figures = sorted(p.name for p in (run_dir / "figures").glob("*"))
    for name in ("report.md", "report.html"):
        (run_dir / name).unlink()
    shutil.rmtree(run_dir / "figures")
    empty = tmp_path / "empty-model-cache"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("FISHERSCOPE_CACHE", str(empty))
    with monkeypatch.context() as m:
        m.setattr(torch.nn.Module, "__call__", _no_model)
        render_stored(run_dir)
    assert (run_dir / "report.md").read_text() == before
    assert (run_dir / "report.html").stat().st_size > 0
    assert sorted(p.name for p in (run_dir / "figures").glob("*")) == figures
    assert not any(empty.iterdir())  # nothing trained or loaded into the (empty) model cache
    return before
