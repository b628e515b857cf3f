"""Resumable experiment runs: a run directory, its results store, cells.

A run lives in ``runs/<timestamp>-<name>/``:

- ``config.toml`` the resolved configuration (and ``config.json`` with its hash),
- ``results.jsonl`` one JSON object per finished cell, each carrying the seed, the config
  hash, package versions, git SHA and device (see :mod:`fisherscope.experiments.store`:
  append-only, locked, strict JSON, safe with several writers),
- ``artifacts/`` arrays the cells stored (adversarial examples, maps), verified on read,
- ``figures/`` PNG files, ``report.md`` and a self-contained ``report.html``.

Work is split into *cells* (a key per unit of work, derived from the cell's full spec).
``Run.cell(key, fn)`` runs ``fn`` only if the cell has no results yet; ``--resume``
therefore continues a killed run without redoing or losing finished cells. Reports read a
:class:`Results` view of the store and never compute.

Under ``torchrun`` (:mod:`fisherscope.distributed`) every rank opens the same run directory
(rank 0 picks it) and every rank meets the same cells in the same order. The first rank to
meet a cell that is not stored yet claims it (:meth:`Run.claim`: a file made with
``O_EXCL`` under ``.claims/<launch>/`` in the run directory) and computes it; the others get it
as a :class:`PendingCell` read from the store. A rank that finishes a long cell therefore
takes the next unclaimed one instead of a fixed share, so the ranks stay busy until the end.
:meth:`Run.blocks` makes one cell per fixed-size image block, so the images of one experiment
shard over the ranks too. Which rank computes a cell never changes its values.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from .._progress import stage
from .._validation import NON_NEGATIVE_INT, POSITIVE_INT, check_param
from .config import config_hash, config_to_dict, to_toml
from .provenance import device_name, git_sha, versions
from .store import Artifact, ResultStore, StoreError, atomic_write_text, cell_key

__all__ = ["Artifact", "PendingCell", "Results", "Run", "atomic_write_text", "cell_key", "find_latest_run"]

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "config.toml"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"


def find_latest_run(out_dir: Path, name: str) -> Path | None:
    """The most recent ``<timestamp>-<name>`` directory under ``out_dir``, if any."""
    if not out_dir.is_dir():
        return None
    # <YYYYmmdd-HHMMSS>-<slug>[-n]: the exact name, not any name that merely ends like it
    pattern = re.compile(r"\d{8}-\d{6}-" + re.escape(_slug(name)) + r"(-\d+)?")
    runs = sorted(p for p in out_dir.iterdir() if p.is_dir() and pattern.fullmatch(p.name))
    return runs[-1] if runs else None


class Run:
    """One experiment run directory with its results store.

    Parameters
    ----------
    config : dataclass
        The resolved configuration; it must have ``name`` and ``seed`` fields.
    out_dir : path
        Parent folder of run directories (default ``runs``).
    resume : bool or path
        ``True`` continues the latest run of this config's name (its config must be
        identical); a path continues that run directory. ``False`` starts a new one.
    """

    def __init__(self, config: Any, out_dir: str | Path = "runs", *, resume: bool | str | Path = False,
                 world: distributed.World | None = None):
        self.config = config
        self.config_dict = config_to_dict(config)
        self.config_hash = config_hash(config)
        self.seed = int(getattr(config, "seed", 0))
        self.world = distributed.world() if world is None else world
        self._claims: dict[str, bool] = {}  # top-level cell key -> whether this rank computes it
        self._launch = ""  # under torchrun: the id the ranks of this launch share (their claims' folder)
        self._pending: dict[str, None] = {}  # cells other ranks compute, in the order met
        self._depth = 0  # > 0 while a cell's function runs (its inner cells stay on this rank)
        if self.world.distributed:
            self.dir, self.resumed = self._agree_on_dir(Path(out_dir), resume)
        else:
            self.dir, self.resumed = self._resolve_dir(Path(out_dir), resume)
            self._open()
        self._provenance = {
            "seed": self.seed,
            "versions": versions(),
            "git_sha": git_sha(),
            "device": device_name(),
            "torch_threads": torch.get_num_threads(),
        }
        if self.world.distributed:
            self._provenance.update(rank=self.world.rank, world_size=self.world.size)

    def _resolve_dir(self, out: Path, resume: bool | str | Path) -> tuple[Path, bool]:
        """The run directory to use, and whether it continues an earlier run."""
        run_dir: Path | None = None
        if resume is True:
            run_dir = find_latest_run(out, self.config.name)
            if run_dir is None:
                log.info("no earlier run of %r under %s; starting a new one", self.config.name, out)
        elif resume:
            run_dir = Path(resume)
            if not (run_dir / RESULTS_FILE).exists() and not (run_dir / CONFIG_FILE).exists():
                raise FileNotFoundError(
                    f"cannot resume {run_dir}: it holds no {CONFIG_FILE} or {RESULTS_FILE}. "
                    "Pass a run directory made by an earlier run, or drop --resume."
                )
        if run_dir is not None:
            return run_dir, True
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = out / f"{stamp}-{_slug(self.config.name)}"
        n = 1
        while run_dir.exists():
            n += 1
            run_dir = out / f"{stamp}-{_slug(self.config.name)}-{n}"
        return run_dir, False

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.figures_dir.mkdir(exist_ok=True)
        self._check_config()
        self.store = ResultStore(self.results_path, self.config_hash)

    def _agree_on_dir(self, out: Path, resume: bool | str | Path) -> tuple[Path, bool]:
        """Rank 0 picks (or creates) the run directory and writes its config; then every
        rank opens the same one. An error on rank 0 is raised on every rank."""
        answer: tuple[str, str, bool, str]
        if self.world.is_main:
            try:
                run_dir, resumed = self._resolve_dir(out, resume)
                self.dir = run_dir
                self._open()
            except Exception as exc:
                distributed.broadcast_object(("error", f"{type(exc).__name__}: {exc}", False, ""))
                raise
            answer = distributed.broadcast_object(("ok", str(run_dir), resumed, uuid.uuid4().hex))
        else:
            answer = distributed.broadcast_object(("", "", False, ""))
            if answer[0] != "ok":
                raise StoreError(f"rank 0 could not open the run directory, so rank {self.world.rank} "
                                 f"stops too: {answer[1]}")
            self.dir = Path(answer[1])
            self._open()
        self._launch = answer[3]
        self.claims_dir.mkdir(parents=True, exist_ok=True)
        return self.dir, answer[2]

    # ------------------------------------------------------------------ files
    @property
    def figures_dir(self) -> Path:
        return self.dir / "figures"

    @property
    def results_path(self) -> Path:
        return self.dir / RESULTS_FILE

    @property
    def claims_dir(self) -> Path:
        """Under torchrun: where this launch's ranks claim cells (one empty file per claimed cell,
        named by a hash of its key; a later launch, e.g. a resume, uses a folder of its own)."""
        return self.dir / ".claims" / (self._launch or "none")

    def _check_config(self) -> None:
        cfg_path = self.dir / CONFIG_FILE
        json_path = self.dir / "config.json"
        if json_path.exists():
            old = json.loads(json_path.read_text(encoding="utf-8"))
            if old.get("config_hash") != self.config_hash:
                raise StoreError(
                    f"cannot resume {self.dir}: it was made with a different configuration "
                    f"(hash {old.get('config_hash')} vs {self.config_hash} now). Start a new "
                    "run without --resume, or resume with the original config."
                )
            return
        # No config.json (new run, or deleted): the records' own hashes must match before
        # anything is (re)written; ResultStore raises on the first foreign record.
        ResultStore(self.results_path, self.config_hash)
        atomic_write_text(cfg_path, to_toml(self.config_dict))
        atomic_write_text(
            json_path,
            json.dumps({"config_hash": self.config_hash, "config": self.config_dict}, indent=2),
        )

    # ---------------------------------------------------------------- results
    @property
    def records(self) -> list[dict[str, Any]]:
        """Every stored cell record, in the order they were finished."""
        return [self.store.record(k) for k in self.store.keys()]

    def done(self, cell: str) -> bool:
        return cell in self.store

    def results(self, cell: str | None = None) -> dict[str, Any]:
        """``{name: value}`` of one cell (or ``{cell: {name: value}}`` of all)."""
        if cell is not None:
            return self.store.values(cell) if cell in self.store else {}
        return {k: self.store.values(k) for k in self.store.keys()}

    def view(self) -> Results:
        """The read-only view a report is rendered from."""
        return Results(self.store, self.dir)

    def record(self, cell: str, values: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
        """Append ``cell``'s values to the store (one line, atomically) and return them."""
        if not values:
            raise ValueError(f"cell {cell!r} produced no values; every cell must record something.")
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        return self.store.append(cell, values, {"time": now, **extra, **self._provenance})

    def cell(self, cell: str, fn: Callable[[], Mapping[str, Any]], *,
             spec: Mapping[str, Any] | None = None, **extra: Any) -> Mapping[str, Any]:
        """Run ``fn`` unless the cell already has results; return the cell's values.

        With ``spec`` the stored key is :func:`cell_key(cell, spec) <cell_key>`, so cells
        that differ in any setting never share a key, and the spec is stored beside them.
        Values wrapped in :class:`Artifact` are stored as verified ``.npy`` files.

        Under ``torchrun`` a cell that is not stored yet is computed by the rank that
        :meth:`claim` s it first; on the other ranks it comes back as a :class:`PendingCell`,
        a mapping that waits for that rank's record when it is first read (ignoring it costs
        nothing).
        """
        key = cell_key(cell, spec)
        if self.done(key):
            log.info("cell %s already done; skipping", key)
            return self.results(key)
        if not self.claim(key):
            self._pending.setdefault(key, None)
            return PendingCell(self, key)
        self._depth += 1
        try:
            with stage(f"cell {cell}", keep=True):  # a bar / log lines while progress is shown
                values = dict(fn())
        finally:
            self._depth -= 1
        if spec:
            extra["spec"] = dict(spec)
        return self.record(key, values, **extra)

    def blocks(self, cell: str, n: int, block_size: int, fn: Callable[[int, slice], Mapping[str, Any]], *,
               spec: Mapping[str, Any] | None = None, **extra: Any) -> list[Mapping[str, Any]]:
        """One cell per fixed-size block of ``n`` images: the unit of work that shards over ranks.

        Block ``b`` covers images ``b * block_size`` up to ``(b + 1) * block_size`` (the last
        one is shorter); its cell is ``<cell>/block<b>`` with ``spec`` plus the block index,
        the block size and ``n``, and ``fn(b, slice)`` computes it. The block size is a
        setting of the experiment, never derived from the number of processes, and ``fn``
        should draw its random numbers from
        :func:`fisherscope.distributed.block_generator(seed, b) <fisherscope.distributed.block_generator>`
        (a stream per block, not one carried from block to block), so every block's values
        are the same whichever rank computes it, on any number of ranks, and after a resume.

        Returns the blocks' values in order (:class:`PendingCell` s for blocks other ranks compute).
        """
        check_param("Run.blocks", "n", n, NON_NEGATIVE_INT)
        check_param("Run.blocks", "block_size", block_size, POSITIVE_INT)
        out: list[Mapping[str, Any]] = []
        for b, start in enumerate(range(0, n, block_size)):
            part = slice(start, min(start + block_size, n))
            block_spec = {**(spec or {}), "block": b, "block_size": block_size, "n": n}
            out.append(self.cell(f"{cell}/block{b}", functools.partial(fn, b, part), spec=block_spec, **extra))
        return out

    # ------------------------------------------------------------ sharding
    def claim(self, key: str) -> bool:
        """Whether this rank computes cell ``key`` (not stored yet): True in a single process and
        for a cell met while another cell's function runs (it stays with that cell's rank).
        Under torchrun a top-level cell goes to the first rank that meets it: its claim is a
        file created with ``O_EXCL`` in :attr:`claims_dir`, which exactly one rank of the launch
        can make. The answer is remembered, so asking again costs nothing.

        Every rank meets the cells in the same order and computes a cell as soon as it claims
        it, so a rank waiting for a cell (a :class:`PendingCell` read) waits for one that is
        being computed, and a cell's inputs come from cells met before it: no rank can wait
        for itself. A killed launch leaves claims only in its own folder; the next launch
        (``--resume``) claims afresh.
        """
        if not self.world.distributed or self._depth > 0:
            return True
        if key not in self._claims:
            path = self.claims_dir / hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._claims[key] = False
            else:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(f"{self.world.rank} {key}\n")
                self._claims[key] = True
        return self._claims[key]

    @property
    def pending(self) -> list[str]:
        """The cells this rank met that other ranks compute and that are not stored yet."""
        return [k for k in self._pending if k not in self.store]

    def wait_for(self, keys: Iterable[str], *, poll_s: float = 0.02, timeout_s: float | None = None) -> None:
        """Wait until every cell in ``keys`` is in the store (written by whichever rank owns it).

        Polls the store (cheap: only appended bytes are read). ``timeout_s`` None waits as long
        as it takes: torchrun stops every rank when one fails.
        """
        keys = list(keys)
        start = last_log = time.monotonic()
        delay = poll_s
        while True:
            missing = [k for k in keys if k not in self.store]
            if not missing:
                return
            now = time.monotonic()
            if timeout_s is not None and now - start > timeout_s:
                raise TimeoutError(f"rank {self.world.rank}: {len(missing)} cell(s) other ranks compute were not "
                                   f"stored within {timeout_s:g} s (first: {missing[0]!r}) in {self.results_path}.")
            if now - last_log > 60:
                log.info("rank %d waits for %d cell(s) of other ranks (first: %s)", self.world.rank,
                         len(missing), missing[0])
                last_log = now
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def wait_for_pending(self, **kwargs: Any) -> None:
        """Wait for every cell this rank met that other ranks compute (:meth:`wait_for`)."""
        self.wait_for(list(self._pending), **kwargs)


class PendingCell(Mapping[str, Any]):
    """The values of a cell another rank computes: a read-only mapping that waits for the
    cell's record the first time it is read (:meth:`Run.wait_for`)."""

    def __init__(self, run: Run, key: str):
        self._run, self.key = run, key
        self._values: dict[str, Any] | None = None

    def _resolve(self) -> dict[str, Any]:
        if self._values is None:
            self._run.wait_for([self.key])
            self._values = self._run.results(self.key)
        return self._values

    def __getitem__(self, name: str) -> Any:
        return self._resolve()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._resolve())

    def __len__(self) -> int:
        return len(self._resolve())

    def copy(self) -> dict[str, Any]:
        return dict(self._resolve())

    def __repr__(self) -> str:
        state = "pending" if self._values is None else "ready"
        return f"PendingCell({self.key!r}, {state})"


class Results:
    """What a report reads: the stored cells of one run, never computing anything.

    ``results.cell(name, spec)`` mirrors :meth:`Run.cell`'s key rule; a missing cell is a
    ``KeyError`` saying to run or resume the experiment.
    """

    def __init__(self, store: ResultStore, run_dir: Path):
        self.store = store
        self.dir = Path(run_dir)

    @classmethod
    def open(cls, run_dir: str | Path) -> Results:
        run_dir = Path(run_dir)
        return cls(ResultStore(run_dir / RESULTS_FILE), run_dir)

    @property
    def figures_dir(self) -> Path:
        path = self.dir / "figures"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def __contains__(self, key: object) -> bool:
        return key in self.store

    def has(self, name: str, spec: Mapping[str, Any] | None = None) -> bool:
        return cell_key(name, spec) in self.store

    def cell(self, name: str, spec: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.store.values(cell_key(name, spec))

    def get(self, name: str, spec: Mapping[str, Any] | None = None, default: Any = None) -> Any:
        key = cell_key(name, spec)
        return self.store.values(key) if key in self.store else default

    def keys(self, prefix: str = "") -> list[str]:
        return [k for k in self.store.keys() if k.startswith(prefix)]

    def provenance(self) -> dict[str, str]:
        """What the stored cells were computed with, for the report's provenance panel.

        One entry per recorded field (config hash, seed, git commit, device, thread count,
        package versions); where cells differ (a run resumed after an upgrade), every value
        is listed with the number of cells it holds for.
        """
        from collections import Counter

        counts: dict[str, Counter[str]] = {}
        for key in self.store.keys():
            rec = self.store.record(key)
            fields = {"config hash": rec.get("config_hash"), "seed": rec.get("seed"),
                      "git commit": rec.get("git_sha"), "device": rec.get("device"),
                      "torch threads": rec.get("torch_threads")}
            fields.update({f"version: {k}": v for k, v in sorted((rec.get("versions") or {}).items())})
            for name, value in fields.items():
                if value is not None:
                    counts.setdefault(name, Counter())[str(value)] += 1
        out = {"cells": str(len(self.store.keys()))}
        for name, c in counts.items():
            out[name] = (next(iter(c)) if len(c) == 1
                         else "; ".join(f"{v} ({n} cells)" for v, n in sorted(c.items())))
        return out

    def all(self) -> dict[str, dict[str, Any]]:
        """``{cell: values}`` of every stored cell (artifacts loaded)."""
        return {k: self.store.values(k) for k in self.store.keys()}
