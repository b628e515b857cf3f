"""Sharding over torchrun ranks (fisherscope.distributed and the runner): two gloo processes
on CPU store exactly the values one process stores, for a real experiment through the command
line and for per-block random draws; a shard whose cells are lost is resumed alone; and the
helpers (world from the environment, owners, block seeds) on their own."""

from __future__ import annotations

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
    assert {r for r, _ in ranks.values()} == {0, 1} and {n for _, n in ranks.values()} == {2}
    assert (two / "report.html").is_file() and (two / "report.md").read_text() != ""
    assert "rank" not in _lines(one.results_path)[0]  # a single process records no shard


# ------------------------------------------------------- per-block random draws


@pytest.fixture(scope="module")
def block_runs(tmp_path_factory):
    """The block job on one process (here) and on two (torchrun), in fresh folders."""
    from _shard_job import job

    tmp = tmp_path_factory.mktemp("blocks")
    one = job(tmp / "one")
    _torchrun(2, str(HERE / "_shard_job.py"), str(tmp / "two"), cwd=tmp)
    return one.results_path, _one_dir(tmp / "two")


def test_block_draws_do_not_depend_on_the_number_of_processes(block_runs):
    one, two = block_runs
    expected, got = _values(one), _values(two / "results.jsonl")
    names = sorted(k.split("#")[0] for k in expected)
    assert names == sorted([*(f"draws/block{b}" for b in range(7)), "summary", "summary/detail", "after"])
    assert got == expected
    recs = _lines(two / "results.jsonl")
    rank = {r["cell"].split("#")[0]: r["rank"] for r in recs}
    # round robin over the top-level cells in the order met; the nested cell stays with its parent
    assert [rank[f"draws/block{b}"] for b in range(7)] == [0, 1, 0, 1, 0, 1, 0]
    assert rank["summary"] == 1 == rank["summary/detail"] and rank["after"] == 0
    # the blocks' streams differ (a generator per block, not a copy of one)
    targets = [tuple(v["target"][:4]) for k, v in expected.items() if k.startswith("draws/")]
    assert len(set(targets)) == len(targets)


def test_a_lost_shard_is_resumed_alone(block_runs, tmp_path):
    one, two = block_runs
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(two, run_dir)
    results = run_dir / "results.jsonl"
    recs = _lines(results)
    kept = [r for r in recs if r["rank"] == 0]  # rank 1 was killed before it stored anything
    lost = {r["cell"] for r in recs if r["rank"] == 1}
    assert kept and lost
    results.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    _torchrun(2, str(HERE / "_shard_job.py"), str(tmp_path), str(run_dir), cwd=tmp_path)
    after = _lines(results)
    assert after[: len(kept)] == kept  # nothing of the finished shard was redone or touched
    assert {r["cell"] for r in after[len(kept):]} == lost and len(after) == len(recs)
    assert _values(results) == _values(one)
    assert [d.name for d in tmp_path.iterdir() if d.is_dir()] == ["run"]  # resumed there, no new run


# ----------------------------------------------------------------------- helpers


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
