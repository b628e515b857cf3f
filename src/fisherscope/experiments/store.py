"""The results store of a run: append-only JSON lines that lose nothing.

One line per finished *cell*::

    {"cell": KEY, "values": {...}, "config_hash": ..., "seed": ..., "time": ...,
     "versions": ..., "git_sha": ..., "device": ..., "torch_threads": ..., ["spec": {...}],
     ["nonfinite": [...]]}

Guarantees
----------
- **Append-only, one write per cell.** Lines are appended with ``O_APPEND`` under an
  exclusive ``flock`` of the file, flushed and ``fsync``'d, so concurrent writers (two
  :class:`~fisherscope.experiments.Run` objects, two processes, two machines on a local
  file system) never overwrite each other's cells, and a cost of O(1) per record (the old
  store rewrote the file on every record, O(n²)).
- **A kill never leaves a torn cell.** A line is only trusted once it ends in a newline;
  a torn tail left by a killed writer is ignored by readers and cut off (with a warning)
  by the next writer, under the lock.
- **Strict JSON.** NaN and ±inf are written as ``null`` and listed in the record's
  ``"nonfinite"`` marker (``[[path...], "nan" | "inf" | "-inf"]``), so strict JSON readers
  (``jq``, JavaScript, ``json.loads(..., parse_constant=...)``) accept the file and the
  values come back exactly when read through this module.
- **No foreign results.** Every record carries the config hash; a store whose records were
  made under another hash refuses to open for that config, even when ``config.json`` is gone.
- **Artifacts** (arrays a cell produces, e.g. adversarial examples) are ``.npy`` files in
  ``artifacts/``, written atomically before their cell's line and verified by sha256 when
  read back; a damaged or missing artifact is an error, never silently replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Artifact",
    "ResultStore",
    "StoreError",
    "atomic_write_bytes",
    "atomic_write_text",
    "cell_key",
    "decode_nonfinite",
    "encode_nonfinite",
]

log = logging.getLogger(__name__)


class StoreError(ValueError):
    """A results store or artifact that cannot be trusted (foreign, edited, damaged)."""


# --------------------------------------------------------------------------- files


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------ strict JSON


def encode_nonfinite(value: Any) -> tuple[Any, list[list[Any]]]:
    """``value`` with NaN / ±inf replaced by ``None``, and the marker listing where they were.

    The marker is a list of ``[path, kind]`` with ``path`` the list of keys and indices
    leading to the number and ``kind`` one of ``"nan"``, ``"inf"``, ``"-inf"``.
    """
    marks: list[list[Any]] = []

    def walk(v: Any, path: list[Any]) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            marks.append([list(path), "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")])
            return None
        if isinstance(v, dict):
            return {k: walk(x, [*path, k]) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x, [*path, i]) for i, x in enumerate(v)]
        return v

    return walk(value, []), marks


def decode_nonfinite(value: Any, marks: list[list[Any]]) -> Any:
    """Inverse of :func:`encode_nonfinite` (``value`` is modified in place and returned)."""
    numbers = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
    for path, kind in marks:
        if not path:
            return numbers[kind]
        node = value
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = numbers[kind]
    return value


def _jsonable(v: Any, where: str) -> Any:
    """Plain JSON types from numpy / torch scalars and arrays, dicts, lists and tuples."""
    if isinstance(v, bool | int | str) or v is None:
        return v
    if isinstance(v, float):
        return float(v)
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
        return _jsonable(v.item(), where)
    if hasattr(v, "tolist"):
        return _jsonable(v.tolist(), where)
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x, f"{where}.{k}") for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x, f"{where}[{i}]") for i, x in enumerate(v)]
    raise TypeError(
        f"{where}: cannot store a {type(v).__name__} in results.jsonl; convert it to numbers, "
        "strings or lists first, or wrap an array in Artifact(...) to store it as a file."
    )


def cell_key(name: str, spec: Mapping[str, Any] | None = None) -> str:
    """The key of a cell: ``name`` plus a digest of its full resolved ``spec``.

    Two cells whose specs differ in anything (an override, a seed, a budget) get different
    keys, so one never answers for the other; the same spec always gives the same key, so
    a report can find the cell from its config alone.
    """
    if not spec:
        return name
    blob = json.dumps(_jsonable(spec, name), sort_keys=True, separators=(",", ":"))
    return f"{name}#{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


# -------------------------------------------------------------------- artifacts


@dataclass(frozen=True)
class Artifact:
    """An array a cell returns to be stored as a file beside the results (not as JSON)."""

    array: Any

    def numpy(self) -> np.ndarray:
        a = self.array
        if hasattr(a, "detach"):
            a = a.detach().cpu().numpy()
        a = np.asarray(a)
        if a.dtype == object:
            raise TypeError("Artifact arrays must be numeric or boolean; got an object array.")
        return np.ascontiguousarray(a)


_ARTIFACT_TAG = "$artifact"


def _artifact_name(cell: str, name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{cell}-{name}").strip("-")[:80]
    digest = hashlib.sha256(f"{cell}\0{name}".encode()).hexdigest()[:12]
    return f"{slug}-{digest}.npy"


# ------------------------------------------------------------------------ store


class ResultStore:
    """The append-only ``results.jsonl`` of one run directory (see the module docstring).

    Parameters
    ----------
    path : path
        The JSON-lines file.
    config_hash : str or None
        The hash every record of this store must carry; ``None`` opens it read-only for
        whatever config made it (a report re-rendered from a run directory).
    """

    def __init__(self, path: str | Path, config_hash: str | None = None):
        self.path = Path(path)
        self.config_hash = config_hash
        self._cells: dict[str, dict[str, Any]] = {}
        self._order: list[str] = []
        self._offset = 0
        self._hashes: set[str] = set()
        self._n_lines = 0
        self._legacy: set[str] = set()
        self.refresh()

    @property
    def artifacts_dir(self) -> Path:
        return self.path.parent / "artifacts"

    # ------------------------------------------------------------------ reading
    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[io.BufferedRandom]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        fh = os.fdopen(fd, "rb+", buffering=0)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield fh  # type: ignore[misc]
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            fh.close()

    def refresh(self) -> None:
        """Read the lines other writers appended since the last look."""
        if not self.path.exists():
            return
        if self.path.stat().st_size == self._offset:
            return
        try:
            with self._locked(exclusive=False) as fh:
                fh.seek(self._offset)
                data = fh.read()
        except PermissionError:  # a read-only run directory: read without the lock
            with self.path.open("rb") as fh2:
                fh2.seek(self._offset)
                data = fh2.read()
        end = data.rfind(b"\n") + 1  # a tail without newline is a line still being written
        for raw in data[:end].splitlines():
            self._n_lines += 1
            if raw.strip():
                self._ingest(raw, self._n_lines)
        self._offset += end

    def _ingest(self, raw: bytes, line_no: int) -> None:
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(
                f"{self.path} line {line_no} is not valid JSON ({exc}); the file was edited by hand "
                "or by another program. Restore it from a backup or start a new run."
            ) from exc
        if not isinstance(rec, dict) or "cell" not in rec:
            raise StoreError(f"{self.path} line {line_no} is not a results record (no 'cell').")
        h = rec.get("config_hash")
        if self.config_hash is not None and h != self.config_hash:
            raise StoreError(
                f"cannot use {self.path}: line {line_no} (cell {rec['cell']!r}) was made with config "
                f"hash {h!r}, this run's config hashes to {self.config_hash!r}. Resume it with the "
                "config that made it, or start a new run without --resume."
            )
        self._hashes.add(str(h))
        cell = rec["cell"]
        if "metric" in rec:  # the line-per-metric layout of earlier versions: merge a cell's lines
            value = rec.pop("value", None)
            metric = rec.pop("metric")
            if cell in self._legacy:
                self._cells[cell]["values"][metric] = value
                return
            self._legacy.add(cell)
            rec["values"] = {metric: value}
        else:
            rec["values"] = decode_nonfinite(rec.get("values", {}), rec.get("nonfinite", []))
        if cell in self._cells:
            return  # a second writer finished the same cell too; the first record wins
        self._cells[cell] = rec
        self._order.append(cell)

    def hashes(self) -> set[str]:
        """The config hashes found in the store."""
        self.refresh()
        return set(self._hashes)

    def __contains__(self, cell: object) -> bool:
        self.refresh()
        return cell in self._cells

    def keys(self) -> list[str]:
        self.refresh()
        return list(self._order)

    def record(self, cell: str) -> dict[str, Any]:
        """The full stored record of ``cell`` (KeyError naming the known cells if absent)."""
        self.refresh()
        try:
            return self._cells[cell]
        except KeyError:
            raise KeyError(
                f"no cell {cell!r} in {self.path} ({len(self._cells)} cells stored). Run or resume "
                "the experiment to compute it."
            ) from None

    def values(self, cell: str, *, load_artifacts: bool = True) -> dict[str, Any]:
        """``{name: value}`` of one cell; artifacts are loaded (and verified) as arrays."""
        vals = dict(self.record(cell)["values"])
        if load_artifacts:
            for k, v in vals.items():
                if isinstance(v, dict) and _ARTIFACT_TAG in v:
                    vals[k] = self.load_artifact(v, where=f"cell {cell!r}, value {k!r}")
        return vals

    def load_artifact(self, ref: Mapping[str, Any], *, where: str = "artifact") -> np.ndarray:
        path = self.artifacts_dir / ref[_ARTIFACT_TAG]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(
                f"{where}: artifact {path} is missing. Restore it or delete the cell's line "
                "from results.jsonl and resume the run to recompute it."
            ) from None
        if hashlib.sha256(data).hexdigest() != ref["sha256"]:
            raise StoreError(
                f"{where}: artifact {path} does not match its recorded sha256 (damaged or edited). "
                "Restore it, or delete the cell's line from results.jsonl and resume to recompute it."
            )
        return np.load(io.BytesIO(data), allow_pickle=False)

    # ------------------------------------------------------------------ writing
    def append(self, cell: str, values: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
        """Store one finished cell (one line, one write) and return its values as read back."""
        if self.config_hash is None:
            raise StoreError(f"{self.path} is open read-only (no config hash); cannot record {cell!r}.")
        plain: dict[str, Any] = {}
        for k, v in values.items():
            if isinstance(v, Artifact):
                arr = v.numpy()
                buf = io.BytesIO()
                np.save(buf, arr, allow_pickle=False)
                data = buf.getvalue()
                name = _artifact_name(cell, str(k))
                atomic_write_bytes(self.artifacts_dir / name, data)
                plain[str(k)] = {_ARTIFACT_TAG: name, "sha256": hashlib.sha256(data).hexdigest(),
                                 "shape": list(arr.shape), "dtype": str(arr.dtype)}
            else:
                plain[str(k)] = _jsonable(v, f"cell {cell!r} value {k!r}")
        encoded, marks = encode_nonfinite(plain)
        rec: dict[str, Any] = {"cell": cell, "values": encoded, **_jsonable(dict(meta), "meta"),
                               "config_hash": self.config_hash}
        if marks:
            rec["nonfinite"] = marks
        line = (json.dumps(rec, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
        with self._locked(exclusive=True) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":  # torn tail of a killed writer: cut it off
                    fh.seek(0)
                    keep = fh.read().rfind(b"\n") + 1
                    log.warning("%s: dropping an unfinished line left by a killed writer (%d bytes)",
                                self.path, size - keep)
                    os.ftruncate(fh.fileno(), keep)
            os.write(fh.fileno(), line)
            os.fsync(fh.fileno())
        self.refresh()
        return self.values(cell)
