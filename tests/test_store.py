"""The results store loses nothing: concurrent writers, kills, strict JSON, foreign configs.

Each test here failed on the store of 2a7b108 (rewrite-the-file-on-every-record, per-metric
lines, no lock, config hash only in config.json, bare NaN).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from fisherscope.experiments import Run
from fisherscope.experiments.runner import Artifact, Results, cell_key, find_latest_run
from fisherscope.experiments.store import ResultStore, StoreError


@dataclass(frozen=True)
class _Cfg:
    name: str = "store"
    kind: str = "_store_test"
    seed: int = 0
    n: int = 1
    extra: dict = field(default_factory=dict)


def _strict_lines(path: Path) -> list[dict]:
    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token} in {path}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_two_run_objects_on_one_directory_lose_nothing(tmp_path):
    r1 = Run(_Cfg(), tmp_path)
    r2 = Run(_Cfg(), tmp_path, resume=r1.dir)
    r1.cell("a", lambda: {"v": 1})
    r2.cell("b", lambda: {"v": 2})
    r1.cell("c", lambda: {"v": 3})
    assert [r["cell"] for r in _strict_lines(r1.results_path)] == ["a", "b", "c"]
    assert r1.results() == r2.results() == {"a": {"v": 1}, "b": {"v": 2}, "c": {"v": 3}}
    # r2 sees r1's later cell as done and does not recompute it
    r2.cell("c", lambda: pytest.fail("cell c was recomputed"))


def test_records_are_appended_not_rewritten(tmp_path):
    run = Run(_Cfg(), tmp_path)
    run.cell("a", lambda: {"v": 1})
    first = run.results_path.read_bytes()
    inode = run.results_path.stat().st_ino
    run.cell("b", lambda: {"v": 2})
    assert run.results_path.stat().st_ino == inode  # the same file, appended to
    assert run.results_path.read_bytes().startswith(first)


def _writer(run_dir: str, tag: str, n: int) -> None:
    run = Run(_Cfg(), Path(run_dir).parent, resume=run_dir)
    for i in range(n):
        run.cell(f"{tag}{i}", lambda i=i: {"i": i, "tag": tag, "pad": "x" * 500})


def test_two_processes_writing_one_run_directory_lose_nothing(tmp_path):
    run = Run(_Cfg(), tmp_path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(run.dir), tag, 60)) for tag in ("p", "q")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cells = [r["cell"] for r in _strict_lines(run.results_path)]
    assert sorted(cells) == sorted([f"p{i}" for i in range(60)] + [f"q{i}" for i in range(60)])
    assert len(run.results()) == 120


def test_nonfinite_numbers_are_strict_json_and_come_back(tmp_path):
    run = Run(_Cfg(), tmp_path)
    vals = {"nan": math.nan, "inf": math.inf, "list": [1.0, -math.inf, {"deep": math.nan}], "ok": 2.5}
    run.cell("x", lambda: vals)
    (rec,) = _strict_lines(run.results_path)
    assert rec["values"]["nan"] is None and rec["values"]["list"][1] is None
    assert rec["nonfinite"]
    back = Run(_Cfg(), tmp_path, resume=run.dir).results("x")
    assert math.isnan(back["nan"]) and back["inf"] == math.inf and back["list"][1] == -math.inf
    assert math.isnan(back["list"][2]["deep"]) and back["ok"] == 2.5


def test_resume_refuses_a_foreign_config_even_without_config_json(tmp_path):
    run = Run(_Cfg(n=1), tmp_path)
    run.cell("a", lambda: {"v": 1})
    (run.dir / "config.json").unlink()
    with pytest.raises(StoreError, match="config hash"):
        Run(_Cfg(n=2), tmp_path, resume=run.dir)
    # the original config still resumes (and config.json is written again)
    again = Run(_Cfg(n=1), tmp_path, resume=run.dir)
    assert again.results("a") == {"v": 1} and (run.dir / "config.json").exists()


def test_a_torn_tail_of_a_killed_writer_is_ignored_then_cut(tmp_path):
    run = Run(_Cfg(), tmp_path)
    run.cell("a", lambda: {"v": 1})
    with run.results_path.open("ab") as fh:
        fh.write(b'{"cell": "b", "values": {"v": ')  # killed mid-write
    other = Run(_Cfg(), tmp_path, resume=run.dir)
    assert other.results() == {"a": {"v": 1}} and not other.done("b")
    other.cell("b", lambda: {"v": 2})
    assert [r["cell"] for r in _strict_lines(run.results_path)] == ["a", "b"]


def test_a_line_edited_into_invalid_json_is_an_error_naming_the_line(tmp_path):
    run = Run(_Cfg(), tmp_path)
    run.cell("a", lambda: {"v": 1})
    with run.results_path.open("a") as fh:
        fh.write("not json\n")
    with pytest.raises(StoreError, match="line 2 is not valid JSON"):
        Run(_Cfg(), tmp_path, resume=run.dir)


def test_artifacts_round_trip_and_damage_is_detected(tmp_path):
    run = Run(_Cfg(), tmp_path)
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = run.cell("adv", lambda: {"x_adv": Artifact(arr), "n": 3})
    np.testing.assert_array_equal(out["x_adv"], arr)
    view = Results.open(run.dir)
    np.testing.assert_array_equal(view.cell("adv")["x_adv"], arr)
    (path,) = (run.dir / "artifacts").iterdir()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="sha256"):
        view.cell("adv")
    path.unlink()
    with pytest.raises(StoreError, match="missing"):
        view.cell("adv")


def test_cell_keys_carry_the_full_spec(tmp_path):
    run = Run(_Cfg(), tmp_path)
    a = run.cell("m@digits", lambda: {"acc": 0.9}, spec={"overrides": {"lr": 1e-3}})
    b = run.cell("m@digits", lambda: {"acc": 0.8}, spec={"overrides": {"lr": 2e-3}})
    assert a != b and len(run.results()) == 2
    assert cell_key("m", {"a": 1, "b": 2}) == cell_key("m", {"b": 2, "a": 1})
    assert cell_key("m", {"a": 1}) != cell_key("m", {"a": 2})
    rec = run.records[0]
    assert rec["spec"] == {"overrides": {"lr": 1e-3}}


def test_values_that_cannot_be_stored_are_rejected_with_the_fix(tmp_path):
    run = Run(_Cfg(), tmp_path)
    with pytest.raises(TypeError, match="wrap an array in Artifact"):
        run.cell("bad", lambda: {"obj": object()})
    assert not run.done("bad")


def test_latest_run_matches_the_exact_name(tmp_path):
    for name in ("20260101-000000-my-demo", "20260101-000001-demo", "20260101-000002-demo-2",
                 "20260101-000003-other-demo"):
        (tmp_path / name).mkdir()
    assert find_latest_run(tmp_path, "demo").name == "20260101-000002-demo-2"
    assert find_latest_run(tmp_path, "my-demo").name == "20260101-000000-my-demo"


def test_legacy_per_metric_lines_still_read(tmp_path):
    path = tmp_path / "results.jsonl"
    lines = [{"cell": "a", "metric": "x", "value": 1, "config_hash": "h"},
             {"cell": "a", "metric": "y", "value": 2, "config_hash": "h"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert ResultStore(path, "h").values("a") == {"x": 1, "y": 2}


def test_model_accuracy_rows_that_differ_in_overrides_get_their_own_cells(tmp_path):
    from fisherscope.experiments import load_config, run_experiment
    from fisherscope.experiments.base import Context

    rows = [{"arch": "digits_cnn", "dataset": "digits", "label": "m", "overrides": {"epochs": 1, "lr": lr}}
            for lr in (1e-3, 2e-3)]
    cfg = load_config({"name": "acc", "kind": "model_accuracy", "models": rows})
    run = run_experiment(cfg, tmp_path, context=Context(progress=False,
                                                        cache_dir=tmp_path / "cache"))
    res = list(run.results().values())
    assert len(res) == 2 and res[0]["checkpoint_key"] != res[1]["checkpoint_key"]


def test_override_seed_is_honoured(tmp_path):
    from fisherscope.experiments import load_config, run_experiment
    from fisherscope.experiments.base import Context

    rows = [{"arch": "digits_cnn", "dataset": "digits", "label": f"s{s}", "overrides": {"epochs": 1, "seed": s}}
            for s in (7, 8)]
    cfg = load_config({"name": "acc", "kind": "model_accuracy", "seed": 0, "models": rows})
    run = run_experiment(cfg, tmp_path, context=Context(progress=False, cache_dir=tmp_path / "cache"))
    keys = [v["checkpoint_key"] for v in run.results().values()]
    assert len(set(keys)) == 2  # with the config's seed overwriting both, they were one model


def test_report_renders_from_stored_results_without_running_a_model(tmp_path, monkeypatch):
    import torch

    from fisherscope.experiments import load_config, run_experiment
    from fisherscope.experiments.base import Context, render_stored

    rows = [{"arch": "digits_cnn", "dataset": "digits", "overrides": {"epochs": 1}}]
    cfg = load_config({"name": "acc", "kind": "model_accuracy", "models": rows})
    run = run_experiment(cfg, tmp_path, context=Context(progress=False, cache_dir=tmp_path / "cache"))
    before = (run.dir / "report.md").read_text()
    (run.dir / "report.md").unlink()
    import shutil

    shutil.rmtree(tmp_path / "cache")

    def no_model(*a, **k):
        raise AssertionError("a model was run while rendering a report")

    monkeypatch.setattr(torch.nn.Module, "__call__", no_model)
    render_stored(run.dir)
    assert (run.dir / "report.md").read_text() == before
    assert os.path.getsize(run.dir / "report.html") > 0
