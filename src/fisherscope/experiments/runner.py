"""Resumable experiment runs: a run directory, an append-only results store, cells.

A run lives in ``runs/<timestamp>-<name>/``:

- ``config.toml`` the resolved configuration (and ``config.json``),
- ``results.jsonl`` one JSON object per measured value, each carrying the seed, the
  config hash, package versions, git SHA and device; rewritten atomically (temp file +
  ``os.replace``) on every append so a kill never leaves a torn line,
- ``figures/`` PNG files, ``report.md`` and a self-contained ``report.html``.

Work is split into *cells* (a key per unit of work). ``Run.cell(key, fn)`` runs ``fn``
only if the cell has no results yet; ``--resume`` therefore continues a killed run
without redoing or losing finished cells.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .config import config_hash, config_to_dict, to_toml
from .provenance import device_name, git_sha, versions

__all__ = ["Run", "atomic_write_text", "find_latest_run"]

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "config.toml"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"


def find_latest_run(out_dir: Path, name: str) -> Path | None:
    """The most recent ``<timestamp>-<name>`` directory under ``out_dir``, if any."""
    if not out_dir.is_dir():
        return None
    suffix = "-" + _slug(name)
    runs = sorted(p for p in out_dir.iterdir() if p.is_dir() and p.name.endswith(suffix))
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
        self._records: list[dict[str, Any]] = self._read_results()
        self._check_config()
        self._provenance = {
            "seed": self.seed,
            "config_hash": self.config_hash,
            "versions": versions(),
            "git_sha": git_sha(),
            "device": device_name(),
        }

    # ------------------------------------------------------------------ files
    @property
    def figures_dir(self) -> Path:
        return self.dir / "figures"

    @property
    def results_path(self) -> Path:
        return self.dir / RESULTS_FILE

    def _read_results(self) -> list[dict[str, Any]]:
        if not self.results_path.exists():
            return []
        records = []
        for i, line in enumerate(self.results_path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{self.results_path} line {i + 1} is not valid JSON ({exc}); the file was "
                    "edited by hand or by another program. Restore it or start a new run."
                ) from exc
        return records

    def _check_config(self) -> None:
        cfg_path = self.dir / CONFIG_FILE
        json_path = self.dir / "config.json"
        if json_path.exists():
            old = json.loads(json_path.read_text(encoding="utf-8"))
            if old.get("config_hash") != self.config_hash:
                raise ValueError(
                    f"cannot resume {self.dir}: it was made with a different configuration "
                    f"(hash {old.get('config_hash')} vs {self.config_hash} now). Start a new "
                    "run without --resume, or resume with the original config."
                )
            return
        atomic_write_text(cfg_path, to_toml(self.config_dict))
        atomic_write_text(
            json_path,
            json.dumps({"config_hash": self.config_hash, "config": self.config_dict}, indent=2),
        )

    # ---------------------------------------------------------------- results
    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self._records)

    def done(self, cell: str) -> bool:
        return any(r["cell"] == cell for r in self._records)

    def results(self, cell: str | None = None) -> dict[str, Any]:
        """``{metric: value}`` of one cell (or ``{cell: {metric: value}}`` of all)."""
        if cell is not None:
            return {r["metric"]: r["value"] for r in self._records if r["cell"] == cell}
        out: dict[str, dict[str, Any]] = {}
        for r in self._records:
            out.setdefault(r["cell"], {})[r["metric"]] = r["value"]
        return out

    def record(self, cell: str, values: Mapping[str, Any], **extra: Any) -> None:
        """Append one record per metric of ``values`` for ``cell``, atomically."""
        now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        new = [
            {"cell": cell, "metric": k, "value": _jsonable(v), "time": now, **extra, **self._provenance}
            for k, v in values.items()
        ]
        records = self._records + new
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        atomic_write_text(self.results_path, text)
        self._records = records

    def cell(self, cell: str, fn: Callable[[], Mapping[str, Any]], **extra: Any) -> dict[str, Any]:
        """Run ``fn`` unless ``cell`` already has results; return the cell's values."""
        if self.done(cell):
            log.info("cell %s already done; skipping", cell)
            return self.results(cell)
        values = dict(fn())
        if not values:
            raise ValueError(f"cell {cell!r} produced no values; every cell must record something.")
        self.record(cell, values, **extra)
        return self.results(cell)


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, float | int | str | bool) or v is None:
        return v
    raise TypeError(f"cannot store a {type(v).__name__} in results.jsonl; convert it to numbers first.")
