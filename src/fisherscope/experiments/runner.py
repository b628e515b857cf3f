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
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .._progress import stage
from .config import config_hash, config_to_dict, to_toml
from .provenance import device_name, git_sha, versions
from .store import Artifact, ResultStore, StoreError, atomic_write_text, cell_key

__all__ = ["Artifact", "Results", "Run", "atomic_write_text", "cell_key", "find_latest_run"]

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

    def __init__(self, config: Any, out_dir: str | Path = "runs", *, resume: bool | str | Path = False):
        self.config = config
        self.config_dict = config_to_dict(config)
        self.config_hash = config_hash(config)
        self.seed = int(getattr(config, "seed", 0))
        out = Path(out_dir)
        run_dir: Path | None = None
        if resume is True:
            run_dir = find_latest_run(out, config.name)
            if run_dir is None:
                log.info("no earlier run of %r under %s; starting a new one", config.name, out)
        elif resume:
            run_dir = Path(resume)
            if not (run_dir / RESULTS_FILE).exists() and not (run_dir / CONFIG_FILE).exists():
                raise FileNotFoundError(
                    f"cannot resume {run_dir}: it holds no {CONFIG_FILE} or {RESULTS_FILE}. "
                    "Pass a run directory made by an earlier run, or drop --resume."
                )
        self.resumed = run_dir is not None
        if run_dir is None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            run_dir = out / f"{stamp}-{_slug(config.name)}"
            n = 1
            while run_dir.exists():
                n += 1
                run_dir = out / f"{stamp}-{_slug(config.name)}-{n}"
        self.dir = run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.figures_dir.mkdir(exist_ok=True)
        self._check_config()
        self.store = ResultStore(self.results_path, self.config_hash)
        self._provenance = {
            "seed": self.seed,
            "versions": versions(),
            "git_sha": git_sha(),
            "device": device_name(),
            "torch_threads": torch.get_num_threads(),
        }

    # ------------------------------------------------------------------ files
    @property
    def figures_dir(self) -> Path:
        return self.dir / "figures"

    @property
    def results_path(self) -> Path:
        return self.dir / RESULTS_FILE

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
             spec: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        """Run ``fn`` unless the cell already has results; return the cell's values.

        With ``spec`` the stored key is :func:`cell_key(cell, spec) <cell_key>`, so cells
        that differ in any setting never share a key, and the spec is stored beside them.
        Values wrapped in :class:`Artifact` are stored as verified ``.npy`` files.
        """
        key = cell_key(cell, spec)
        if self.done(key):
            log.info("cell %s already done; skipping", key)
            return self.results(key)
        with stage(f"cell {cell}", keep=True):  # a bar / log lines while progress is shown
            values = dict(fn())
        if spec:
            extra["spec"] = dict(spec)
        return self.record(key, values, **extra)


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
