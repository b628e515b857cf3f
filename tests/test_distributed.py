"""Sharding over torchrun ranks (fisherscope.distributed and the runner): two gloo processes
on CPU store exactly the values one process stores, for a real experiment through the command
line and for per-block random draws; a shard whose cells are lost is resumed alone; and the
helpers (world from the environment, owners, block seeds) on their own."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fisherscope import distributed
from fisherscope.experiments import Context, load_config, run_experiment

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# Zhao Figure 2 on digits at tiny settings: eight cells, OTCM's random targets among them.
TINY = {"name": "shard-tiny", "kind": "zhao_figure2", "arch": "digits_cnn", "dataset": "digits", "seed": 0,
        "n_samples": 24, "batch_size": 8, "attacks": ["fgm", "ossa", "otcm"], "budgets": [0.5, 2.0],
        "step_size": 0.1, "steps": 3}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    path = [str(REPO / "src"), str(HERE), env.get("PYTHONPATH", "")]
    env.update(PYTHONPATH=os.pathsep.join(p for p in path if p), OMP_NUM_THREADS="1", MPLBACKEND="Agg", COLUMNS="500")
    return env


def _torchrun(nproc: int, *args: str, cwd: Path) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _values(path: Path) -> dict[str, dict]:
    recs = _lines(path)
    assert len({r["cell"] for r in recs}) == len(recs), "a cell was stored twice"
    return {r["cell"]: r["values"] for r in recs}


def _one_dir(out: Path) -> Path:
    dirs = [d for d in out.iterdir() if d.is_dir()]
    assert len(dirs) == 1, f"the ranks made {len(dirs)} run directories, not one: {dirs}"
    return dirs[0]


# ------------------------------------------------------------- a real experiment


def test_two_gloo_ranks_store_what_one_process_stores(tmp_path, digits_model):
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY.items()) + "\n")
    one = run_experiment(load_config(cfg_path), tmp_path / "one", context=Context(progress=False, device="cpu"))
    out = _torchrun(2, "-m", "fisherscope", "reproduce", str(cfg_path), "--out", str(tmp_path / "two"),
                    "--quiet", "--device", "cpu", cwd=tmp_path)
    two = _one_dir(tmp_path / "two")
    assert out.count("report:") == 1 and str(two) in out  # rank 0 alone says where the run is
    expected, got = _values(one.results_path), _values(two / "results.jsonl")
    assert len(expected) == 8 and got.keys() == expected.keys()
    for key in expected:
        assert got[key] == expected[key], key  # bit for bit: JSON floats round-trip exactly
    ranks = {r["cell"]: (r["rank"], r["world_size"]) for r in _lines(two / "results.jsonl")}
    assert {r for r, _ in ranks.values()} <= {0, 1} and {n for _, n in ranks.values()} == {2}
    assert (two / "report.html").is_file() and (two / "report.md").read_text() != ""
    assert "rank" not in _lines(one.results_path)[0]  # a single process records no shard


def _timeless(v):
    """A cell's values without its wall-clock fields (the only ones that may differ)."""
    if isinstance(v, dict):
        return {k: _timeless(x) for k, x in v.items() if k not in ("wall_s", "seconds") and not k.endswith("_seconds")}
    if isinstance(v, list):
        return [_timeless(x) for x in v]
    return v


#: The built-in digits audit at tiny settings (a few dozen images, the quick ensemble).
AUDIT_ARGS = ["--limit", "24", "--ensemble", "quick", "--linf-eps", "0.1", "--l2-eps", "0.5", "--set", "detect_samples=24",
              "--set", "adaptive_steps=2", "--set", "minimal_samples=8", "--set", "cw_steps=5", "--set", "n_maps=1",
              "--set", "detectors=['softmax', 'pca_whitening']", "--set", "chunk=12", "--quiet"]


def test_audit_on_two_gloo_ranks_stores_what_one_process_stores(tmp_path, digits_model):
    """``fisherscope audit --workers 2`` (a torchrun of 2 ranks): the ranks share one run, rank 0
    alone writes the report and prints the summary, and the cells hold the values one process
    stores."""
    from typer.testing import CliRunner

    from fisherscope.cli import app

    res = CliRunner().invoke(app, ["audit", *AUDIT_ARGS, "--out", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output
    one = _one_dir(tmp_path / "one")
    # --workers 2: the command relaunches itself as a torchrun of 2 ranks
    proc = subprocess.run([sys.executable, "-m", "fisherscope", "audit", *AUDIT_ARGS, "--out", str(tmp_path / "two"),
                           "--json", "--workers", "2"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"--workers 2 failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    out = proc.stdout
    two = _one_dir(tmp_path / "two")
    assert json.loads(out)["clean_accuracy"] == json.loads((one / "summary.json").read_text())["clean_accuracy"]
    expected, got = _values(one / "results.jsonl"), _values(two / "results.jsonl")
    assert len(expected) >= 6 and got.keys() == expected.keys()
    for key in expected:
        assert _timeless(got[key]) == _timeless(expected[key]), key
    assert {r["rank"] for r in _lines(two / "results.jsonl")} <= {0, 1}
    assert (two / "report.html").is_file() and (two / "summary.json").is_file()


# ------------------------------------------------------- per-block random draws


def test_a_lost_shard_is_resumed_alone_with_the_values_one_process_stores(tmp_path):
    """The block job (random starts, targets and noise per image block, a bootstrap over
    every block, a nested cell) made by one process; the cells of one rank are lost (killed
    before it stored anything; with claims left behind by the dead launch); a 2-rank --resume
    recomputes exactly those to the values the one process stored."""
    import shutil

    from _shard_job import job

    one = job(tmp_path / "one")
    expected = _values(one.results_path)
    names = [k.split("#")[0] for k in expected]
    assert names == [*(f"draws/block{b}" for b in range(7)), "summary/detail", "summary", "after"]
    targets = [tuple(v["target"][:4]) for k, v in expected.items() if k.startswith("draws/")]
    assert len(set(targets)) == len(targets)  # a stream per block, not copies of one
    lost = {k for k in expected if k.split("#")[0] in ("draws/block1", "draws/block3", "draws/block5",
                                                       "summary", "summary/detail")}
    run_dir = tmp_path / "two" / one.dir.name
    shutil.copytree(one.dir, run_dir)
    stale = run_dir / ".claims" / "killed-launch"  # what a killed launch leaves: claims of every cell
    stale.mkdir(parents=True)
    for k in expected:
        (stale / hashlib.sha256(k.encode()).hexdigest()[:32]).write_text(f"1 {k}\n")
    results = run_dir / "results.jsonl"
    kept = [r for r in _lines(results) if r["cell"] not in lost]
    results.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    _torchrun(2, str(HERE / "_shard_job.py"), str(tmp_path / "two"), str(run_dir), cwd=tmp_path)
    after = _lines(results)
    assert after[: len(kept)] == kept  # nothing finished was redone or touched
    new = after[len(kept):]
    assert {r["cell"] for r in new} == lost and len(new) == len(lost)
    assert {r["world_size"] for r in new} == {2}
    summary = {r["cell"].split("#")[0]: r["rank"] for r in new if r["cell"].startswith("summary")}
    assert summary["summary/detail"] == summary["summary"]  # a nested cell stays with its parent's rank
    assert _values(results) == expected  # bit for bit, on 2 processes as on 1
    assert [d.name for d in (tmp_path / "two").iterdir()] == [run_dir.name]  # resumed there


def test_a_rank_busy_with_a_long_cell_does_not_hold_back_the_quick_ones(tmp_path):
    """Cells go to the first rank that meets them, not in fixed shares: while one rank computes
    the slow first cell (3 s), the other claims every quick cell after it, so the launch takes
    about the slow cell's time. Round robin would have left half the quick cells queued behind
    the slow one."""
    _torchrun(2, str(HERE / "_shard_job.py"), str(tmp_path / "out"), "--uneven", cwd=tmp_path)
    recs = _lines(_one_dir(tmp_path / "out") / "results.jsonl")
    rank = {r["cell"].split("#")[0]: r["rank"] for r in recs}
    assert len(rank) == 7 and {r["world_size"] for r in recs} == {2}
    quick = {rank[f"quick/{i}"] for i in range(6)}
    assert quick == {1 - rank["slow"]}, rank  # all on the rank not busy with the slow cell
    claims = list((_one_dir(tmp_path / "out") / ".claims").iterdir())
    assert len(claims) == 1 and len(list(claims[0].iterdir())) == 7  # one claim per cell, one launch


# ----------------------------------------------------------------------- helpers


def test_workers_is_refused_inside_torchrun_and_stripped_from_the_relaunch(monkeypatch):
    from typer.testing import CliRunner

    from fisherscope import cli

    assert cli._strip_workers(["audit", "--workers", "2", "-n", "5", "--workers=3", "--json"]) == [
        "audit", "-n", "5", "--json"]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = CliRunner().invoke(cli.app, ["audit", "--workers", "2"])
    assert res.exit_code == 2 and "already a torchrun rank" in res.output
    res = CliRunner().invoke(cli.app, ["reproduce", "demo", "--workers", "0"])
    assert res.exit_code == 2 and "--workers" in res.output


def test_world_comes_from_torchruns_environment():
    assert distributed.world({}) == distributed.World(0, 1, 0)
    w = distributed.world({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (w.rank, w.size, w.local_rank, w.is_main, w.distributed) == (3, 4, 1, False, True)
    with pytest.raises(ValueError, match="RANK must be in"):
        distributed.world({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        distributed.world({"WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="WORLD_SIZE must be"):
        distributed.world({"WORLD_SIZE": "0"})


def test_owners_cover_every_item_once_in_round_robin():
    items = list(range(11))
    shards = [distributed.shard(items, distributed.World(r, 3)) for r in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(i for s in shards for i in s) == items
    assert distributed.shard(items) == items  # one process: everything


def test_block_seeds_depend_on_seed_and_block_only():
    import torch

    seeds = {distributed.block_seed(s, b) for s in range(4) for b in range(50)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)
    a = torch.rand(5, generator=distributed.block_generator(7, 2))
    assert torch.equal(a, torch.rand(5, generator=distributed.block_generator(7, 2)))
    assert not torch.equal(a, torch.rand(5, generator=distributed.block_generator(7, 3)))
    with pytest.raises(ValueError, match="block_seed: block must be"):
        distributed.block_seed(0, -1)


def test_a_single_process_initialises_nothing(monkeypatch):
    import torch.distributed as dist

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.init() == distributed.World()
    assert not dist.is_initialized()
    assert distributed.broadcast_object("x") == "x"
    distributed.barrier()
    distributed.finish()
    assert distributed.device_for("cuda") == "cuda" and distributed.device_for(None) is None


def test_exclusive_makes_ranks_take_turns_and_is_free_in_one_process(tmp_path, monkeypatch):
    import threading
    import time

    lock = tmp_path / "locks" / "m.lock"
    with distributed.exclusive(lock):  # one process: nothing is made or held
        pass
    assert not lock.parent.exists()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    order = []

    def rank(name: str, hold: float) -> None:
        with distributed.exclusive(lock):
            order.append(f"{name} in")
            time.sleep(hold)
            order.append(f"{name} out")

    first = threading.Thread(target=rank, args=("a", 0.3))
    first.start()
    while not order:
        time.sleep(0.01)
    second = threading.Thread(target=rank, args=("b", 0.0))
    second.start()
    first.join()
    second.join()
    assert order == ["a in", "a out", "b in", "b out"]
