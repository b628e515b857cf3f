"""Fetch the canonical distribution of a dataset, verify it, convert it to ``<name>.npz``.

The raw files are checked against their published md5 before they are parsed; the
converted arrays are checked against the registry (sample counts, image shape and, where
known, the content digest) before anything is written; the ``.npz`` and its sidecar
``<name>.json`` appear in the data directory atomically (temporary file + ``os.replace``).
On any failure nothing partial is left in the data directory.

Only ``urllib`` is used; a ``file://`` mirror or a local folder of raw files works offline.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import logging
import math
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..exceptions import DatasetNotFoundError
from ._dataset import resolve_data_dir
from ._npz import (
    ARRAY_KEYS,
    check_dataset_file,
    content_sha256,
    expected_layout,
    file_sha256,
    remember_identity,
)
from .registry import DATASETS, DatasetSpec, RawFile, get_spec

__all__ = ["download_dataset", "read_cifar_batch", "read_idx"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
ProgressCallback = Callable[[str, int, "int | None"], None]

# ----------------------------------------------------------------------------- idx

# idx type codes (third byte of the magic number) -> big-endian numpy dtype
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dimension


def read_idx(path: str | os.PathLike[str], *, magic: int | None = None) -> np.ndarray:
    """Parse an idx file (MNIST format), gzip-compressed when its name ends in ``.gz``.

    Header: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then
    each dimension as a big-endian uint32; the data follow in C order.

    Parameters
    ----------
    path : path-like
    magic : int, optional
        The expected magic number: 2051 for image files, 2049 for label files.

    Returns
    -------
    ndarray
        In native byte order; uint8 for the MNIST files.

    Shapes
    ------
    Images: (N, H, W); labels: (N,).

    Raises
    ------
    ValueError
        Not gzip, wrong magic number, truncated or oversized data.
    """
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(
            f"{path}: cannot decompress ({e}); expected a gzip-compressed idx file."
        ) from None
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: not an idx file (magic number {found}); expected {IDX_IMAGES_MAGIC} "
            f"(images) or {IDX_LABELS_MAGIC} (labels)."
        )
    if magic is not None and found != magic:
        raise ValueError(
            f"{path}: idx magic number {found}, expected {magic} "
            f"({'images' if magic == IDX_IMAGES_MAGIC else 'labels'}); is it the right file?"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated idx header ({len(data)} bytes).")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[data[2]]
    need = math.prod(dims) * dtype.itemsize
    got = len(data) - header
    if got != need:
        raise ValueError(
            f"{path}: idx header announces shape {dims} ({need} data bytes) but the file has "
            f"{got} data bytes; the file is truncated or corrupt."
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _convert_idx(spec: DatasetSpec, files: dict[str, Path]) -> dict[str, np.ndarray]:
    arrays = {
        "x_train": read_idx(files["train_images"], magic=IDX_IMAGES_MAGIC),
        "y_train": read_idx(files["train_labels"], magic=IDX_LABELS_MAGIC),
        "x_test": read_idx(files["test_images"], magic=IDX_IMAGES_MAGIC),
        "y_test": read_idx(files["test_labels"], magic=IDX_LABELS_MAGIC),
    }
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or y.dtype != np.uint8 or x.ndim != 3 or y.ndim != 1:
            raise ValueError(
                f"{spec.title} {split} idx files hold {x.dtype} {x.shape} images and {y.dtype} "
                f"{y.shape} labels; expected uint8 (N,H,W) images and uint8 (N,) labels."
            )
        if len(x) != len(y):
            raise ValueError(
                f"{spec.title} {split}: {len(x)} images but {len(y)} labels; the idx files do "
                f"not belong together."
            )
    return arrays


# ----------------------------------------------------------------------------- CIFAR


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR python batches: numpy arrays, lists, dicts, str/bytes only."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name}: a CIFAR batch holds only numpy arrays, "
                f"lists and strings"
            )
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def _unpickle(data: bytes, origin: str) -> dict[Any, Any]:
    try:
        obj = _BatchUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any decoding failure is the same user error
        raise ValueError(f"{origin}: not a CIFAR python batch ({type(e).__name__}: {e}).") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{origin}: expected a pickled dict, found {type(obj).__name__}.")
    return obj


def _get(d: dict[Any, Any], key: str, origin: str) -> Any:
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise ValueError(
        f"{origin}: key {key!r} missing; found {sorted(str(k) for k in d)} (CIFAR batches "
        f"hold 'data' and 'labels', batches.meta holds 'label_names')."
    )


def read_cifar_batch(data: bytes, origin: str = "batch") -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR-10 python batch (pickled dict with ``data`` and ``labels``).

    Rows of ``data`` are 3072 uint8 values in channel-major order (1024 red, 1024 green,
    1024 blue, each 32 x 32 row-major). Only numpy arrays, lists and strings are
    unpickled; any other global is refused.

    Parameters
    ----------
    data : bytes
        The file's bytes.
    origin : str
        Name used in error messages.

    Returns
    -------
    x : ndarray
        uint8 images, channels last.
    y : ndarray
        uint8 labels.

    Shapes
    ------
    ``x``: (N, 32, 32, 3); ``y``: (N,).
    """
    d = _unpickle(data, origin)
    raw = np.asarray(_get(d, "data", origin))
    labels = np.asarray(_get(d, "labels", origin))
    if raw.dtype != np.uint8 or raw.ndim != 2 or raw.shape[1] != 3072:
        raise ValueError(
            f"{origin}: data is {raw.dtype} {raw.shape}, expected uint8 (N, 3072) rows "
            f"(3 x 32 x 32, channel-major)."
        )
    if labels.ndim != 1 or len(labels) != len(raw) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{origin}: labels are {labels.dtype} {labels.shape}, expected {len(raw)} integers."
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"{origin}: labels outside 0..255.")
    x = np.ascontiguousarray(raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return x, labels.astype(np.uint8)


def _cifar_from_blobs(
    spec: DatasetSpec, read: Callable[[str], bytes]
) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    xs: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    ys: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    names: tuple[str, ...] = spec.classes
    for rf in spec.extracted_files:
        blob = read(rf.filename)
        if rf.role == "meta":
            meta = _unpickle(blob, rf.filename)
            label_names = _get(meta, "label_names", rf.filename)
            names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in label_names)
            continue
        split = "train" if rf.role == "train_batch" else "test"
        x, y = read_cifar_batch(blob, rf.filename)
        xs[split].append(x)
        ys[split].append(y)
    if not xs["train"] or not xs["test"]:
        raise ValueError(f"{spec.title}: the registry lists no train or no test batch.")
    arrays = {
        "x_train": np.concatenate(xs["train"]),
        "y_train": np.concatenate(ys["train"]),
        "x_test": np.concatenate(xs["test"]),
        "y_test": np.concatenate(ys["test"]),
    }
    return arrays, names


def _convert_cifar_archive(
    spec: DatasetSpec, archive: Path
) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    try:
        tar = tarfile.open(archive, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"{archive}: not a gzip-compressed tar archive ({e}).") from None
    with tar:
        members: dict[str, tarfile.TarInfo] = {}
        for m in tar.getmembers():
            base = m.name.rsplit("/", 1)[-1]
            if m.isfile() and base not in members:
                members[base] = m
        missing = [rf.filename for rf in spec.extracted_files if rf.filename not in members]
        if missing:
            raise ValueError(
                f"{archive}: the archive lacks {', '.join(missing)}; expected the folder "
                f"cifar-10-batches-py with {', '.join(rf.filename for rf in spec.extracted_files)}."
            )

        def read(filename: str) -> bytes:
            f = tar.extractfile(members[filename])
            if f is None:  # pragma: no cover - isfile() members always have data
                raise ValueError(f"{archive}: cannot read {filename}.")
            with f:
                return f.read()

        return _cifar_from_blobs(spec, read)


def _convert_cifar_folder(
    spec: DatasetSpec, files: dict[str, Path]
) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    return _cifar_from_blobs(spec, lambda filename: files[filename].read_bytes())


# ----------------------------------------------------------------------------- fetching


@dataclass
class _Fetched:
    filename: str
    path: Path
    origin: str  # URL or local path
    md5: str
    sha256: str
    size: int


def _hashes(path: Path) -> tuple[str, str, int]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return md5.hexdigest(), sha.hexdigest(), size


def _join_url(base: str, filename: str) -> str:
    return base.rstrip("/") + "/" + urllib.parse.quote(filename)


def _mirror_base(mirror: str | os.PathLike[str]) -> str:
    text = os.fspath(mirror)
    if "://" in text:
        return text
    return Path(text).expanduser().resolve().as_uri()  # a plain local folder


def _fetch(
    rf: RawFile,
    bases: Iterable[str],
    dest_dir: Path,
    *,
    timeout: float,
    progress: ProgressCallback | None,
    offline_hint: str,
) -> _Fetched:
    errors: list[str] = []
    final = dest_dir / rf.filename
    part = dest_dir / (rf.filename + ".part")
    for base in bases:
        url = _join_url(base, rf.filename)
        md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        size = 0
        logger.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    md5.update(chunk)
                    sha.update(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress(rf.filename, size, total)
        except (
            urllib.error.URLError,
            http.client.HTTPException,
            TimeoutError,
            ConnectionError,
        ) as e:
            part.unlink(missing_ok=True)
            reason = getattr(e, "reason", e)
            errors.append(f"  {url}: {reason}")
            logger.warning("download of %s failed: %s", url, reason)
            continue
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        actual = md5.hexdigest()
        if actual != rf.md5:
            part.unlink(missing_ok=True)
            raise ValueError(
                f"checksum mismatch for {rf.filename} downloaded from {url}: md5 {actual}, "
                f"expected {rf.md5} (the published checksum). The download was deleted and "
                f"nothing was written to the data directory. Retry, or fetch it from another "
                f"mirror (mirror=... / --mirror URL)."
            )
        os.replace(part, final)
        return _Fetched(rf.filename, final, url, actual, sha.hexdigest(), size)
    raise ConnectionError(
        f"could not download {rf.filename}; tried:\n" + "\n".join(errors) + "\n" + offline_hint
    )


def offline_instructions(spec: DatasetSpec, folder: Path | str) -> str:
    """Which raw files to put in which folder to convert ``spec`` without network."""
    base = spec.urls[0] if spec.urls else ""
    lines = [f"Offline: put these raw file(s) into one folder, e.g. {folder}:"]
    width = max(len(rf.filename) for rf in spec.raw_files)
    for rf in spec.raw_files:
        lines.append(f"  {rf.filename:<{width}}  {_join_url(base, rf.filename)}  (md5 {rf.md5})")
    if spec.extracted_files:
        lines.append(
            "  (or the extracted folder cifar-10-batches-py with "
            + ", ".join(rf.filename for rf in spec.extracted_files)
            + ")"
        )
    lines.append(
        f"then run `fisherscope data download {spec.name} --raw-dir {folder}` "
        f"(Python: fisherscope.data.download_dataset({spec.name!r}, raw_dir=...))."
    )
    return "\n".join(lines)


def _local_file(rf: RawFile, path: Path, spec: DatasetSpec) -> _Fetched:
    md5, sha, size = _hashes(path)
    if md5 != rf.md5:
        url = _join_url(spec.urls[0], rf.filename) if spec.urls else "the publisher"
        raise ValueError(
            f"checksum mismatch for {path}: md5 {md5}, expected {rf.md5} (the published "
            f"checksum of {rf.filename}). The file is truncated, corrupt or another version; "
            f"replace it with a fresh copy from {url}. Nothing was written."
        )
    return _Fetched(rf.filename, path, str(path), md5, sha, size)


def _collect_local(spec: DatasetSpec, raw_dir: Path) -> tuple[str, list[_Fetched]]:
    """Find and verify the raw files in ``raw_dir``; returns (mode, files)."""
    if not raw_dir.is_dir():
        raise DatasetNotFoundError(
            f"raw_dir {raw_dir} is not a folder. " + offline_instructions(spec, raw_dir)
        )
    if all((raw_dir / rf.filename).is_file() for rf in spec.raw_files):
        return "raw", [_local_file(rf, raw_dir / rf.filename, spec) for rf in spec.raw_files]
    if spec.extracted_files:
        candidates = [raw_dir, *sorted(p for p in raw_dir.iterdir() if p.is_dir())]
        for folder in candidates:
            if all((folder / rf.filename).is_file() for rf in spec.extracted_files):
                return "extracted", [
                    _local_file(rf, folder / rf.filename, spec) for rf in spec.extracted_files
                ]
    missing = [rf.filename for rf in spec.raw_files if not (raw_dir / rf.filename).is_file()]
    raise DatasetNotFoundError(
        f"raw_dir {raw_dir} lacks {', '.join(missing)}. " + offline_instructions(spec, raw_dir)
    )


# ----------------------------------------------------------------------------- writing


def _check_converted(spec: DatasetSpec, arrays: dict[str, np.ndarray], origin: str) -> None:
    c, h, w = spec.image_shape
    want = (h, w) if c == 1 else (h, w, c)
    got_train, got_test = arrays["x_train"].shape, arrays["x_test"].shape
    if (
        got_train != (spec.n_train, *want)
        or got_test != (spec.n_test, *want)
        or arrays["y_train"].shape != (spec.n_train,)
        or arrays["y_test"].shape != (spec.n_test,)
    ):
        raise ValueError(
            f"{origin} converted to x_train {got_train}, x_test {got_test}, but {spec.title} "
            f"has {expected_layout(spec)}; the raw files are incomplete or another dataset. "
            f"Nothing was written."
        )
    k = len(spec.classes)
    for key in ("y_train", "y_test"):
        y = arrays[key]
        if len(y) and int(y.max()) >= k:
            raise ValueError(
                f"{origin}: {key} contains label {int(y.max())}, expected labels 0..{k - 1}. "
                f"Nothing was written."
            )


def _write_temp(tmp_dir: Path, name: str, write: Callable[[Any], None], mode: str) -> Path:
    """Write a file inside ``tmp_dir`` (same filesystem as the target) and fsync it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=tmp_dir)
    with os.fdopen(fd, mode) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return Path(tmp)


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("fisherscope")
    except Exception:  # noqa: BLE001 - not installed (source checkout)
        return "unknown"


def download_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    mirror: str | os.PathLike[str] | None = None,
    raw_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    timeout: float = 60.0,
    progress: ProgressCallback | None = None,
) -> Path:
    """Fetch, verify and convert a known dataset into ``<data_dir>/<name>.npz``.

    The canonical distribution files (MNIST and Fashion-MNIST: the four idx ``.gz``
    files; CIFAR-10: ``cifar-10-python.tar.gz``) are downloaded from the publisher (with
    fallbacks, see ``DATASETS[name].urls``), or from ``mirror``, or taken from ``raw_dir``
    without network, and checked against their published md5. They are converted to the
    layout of ``shared/datasets/MANIFEST.md`` (uint8 images (N,H,W) or (N,H,W,3), uint8
    labels, ``classes``), checked against the registry (sample counts, image shape, and
    the known content digest where there is one), and written atomically with a sidecar
    ``<name>.json`` that records source URLs, raw-file md5 and sha256, the npz sha256, the
    content digest and the date. Downloads go to a temporary folder inside ``data_dir``
    which is removed afterwards; on any error nothing partial is left.

    Parameters
    ----------
    name : str
        ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"`` (``DATASETS`` entries whose
        format is downloadable).
    data_dir : path-like, optional
        Target folder; default as in :func:`resolve_data_dir` (argument, then
        ``$FISHERSCOPE_DATA``, then ``~/.cache/fisherscope/data``). Created if missing.
    mirror : str or path-like, optional
        Base URL (``https://...``, ``file:///...``) or local folder serving the raw files
        under their published names; replaces the built-in URLs.
    raw_dir : path-like, optional
        Folder that already holds the raw files (for CIFAR-10 also the extracted
        ``cifar-10-batches-py`` folder); converts them without network.
    force : bool
        Re-create ``<name>.npz`` even if a valid one exists. Without it an existing valid
        file is returned untouched and an invalid one is an error.
    timeout : float
        Seconds per network operation.
    progress : callable, optional
        ``progress(filename, bytes_done, bytes_total_or_None)`` during downloads (for the
        CLI's progress bar).

    Returns
    -------
    Path
        The ``.npz`` file.

    Raises
    ------
    ValueError
        Unknown or non-downloadable name, both ``mirror`` and ``raw_dir``, a checksum
        mismatch (message names the file, expected and actual hash), malformed raw files,
        an existing invalid ``<name>.npz`` without ``force``.
    DatasetNotFoundError
        ``raw_dir`` lacks the raw files (the message lists them with their URLs).
    ConnectionError
        No URL could be reached (the message lists the attempts and the offline route).

    Shapes
    ------
    Stored: ``x_train`` (N, H, W) or (N, H, W, 3) uint8; ``y_train`` (N,) uint8; same for test.

    References
    ----------
    Sources and citations per dataset are in ``DATASETS[name].homepage`` and
    ``.reference``: LeCun et al. (1998) for MNIST; Xiao, Rasul & Vollgraf (2017),
    arXiv:1708.07747 for Fashion-MNIST; Krizhevsky (2009) for CIFAR-10.
    """
    spec = get_spec(name)
    if spec is None or not spec.downloadable:
        choices = ", ".join(k for k, s in DATASETS.items() if s.downloadable)
        if spec is None:
            why = "is not a known dataset"
        elif spec.local_only:
            why = f"({spec.title}) is {spec.note}; there is no published source to download"
        else:
            why = "ships with scikit-learn; there is nothing to download"
        raise ValueError(f"dataset {name!r} {why}; downloadable datasets: {choices}.")
    if mirror is not None and raw_dir is not None:
        raise ValueError(
            "pass either mirror (download from another URL) or raw_dir (convert local files), "
            "not both."
        )
    root = resolve_data_dir(data_dir)
    target = root / spec.filename
    if target.exists() and not force:
        try:
            check_dataset_file(target, spec)
        except ValueError as e:
            raise ValueError(
                f"{target} already exists but is not valid: {e} Pass force=True "
                f"(`fisherscope data download {spec.name} --force`) to replace it."
            ) from None
        logger.info("%s already present and valid", target)
        return target

    root.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{spec.name}-download-", dir=root))
    try:
        if raw_dir is not None:
            mode, fetched = _collect_local(spec, Path(raw_dir).expanduser())
        else:
            bases = (_mirror_base(mirror),) if mirror is not None else spec.urls
            hint = offline_instructions(spec, root / "raw" / spec.name)
            if data_dir is not None:
                hint = hint.replace(
                    f"download {spec.name} --raw-dir",
                    f"download {spec.name} --data-dir {root} --raw-dir",
                )
            mode = "raw"
            fetched = [
                _fetch(rf, bases, tmp_dir, timeout=timeout, progress=progress, offline_hint=hint)
                for rf in spec.raw_files
            ]
        by_name = {f.filename: f.path for f in fetched}
        if spec.format == "idx":
            arrays = _convert_idx(spec, {rf.role: by_name[rf.filename] for rf in spec.raw_files})
            classes = spec.classes
        elif mode == "raw":
            arrays, classes = _convert_cifar_archive(spec, by_name[spec.raw_files[0].filename])
        else:
            arrays, classes = _convert_cifar_folder(spec, by_name)
        if len(classes) != len(spec.classes):
            raise ValueError(
                f"{spec.title}: the raw files name {len(classes)} classes {classes}, expected "
                f"{len(spec.classes)}. Nothing was written."
            )
        origin = f"{spec.title} raw files ({', '.join(f.origin for f in fetched)})"
        _check_converted(spec, arrays, origin)
        digest = content_sha256(*(arrays[k] for k in ARRAY_KEYS))
        if spec.content_sha256 is not None and digest != spec.content_sha256:
            raise ValueError(
                f"{origin} converted to content sha256 {digest}, expected "
                f"{spec.content_sha256} (the known {spec.title} digest). The raw files passed "
                f"their md5 check, so this is a converter bug: please report it. Nothing was written."
            )

        def write_npz(f: Any) -> None:
            np.savez_compressed(f, **arrays, classes=np.array(classes, dtype=str))  # type: ignore[arg-type]  # numpy stubs type **kwds by allow_pickle

        npz_tmp = _write_temp(tmp_dir, target.name, write_npz, "wb")
        npz_sha = file_sha256(npz_tmp)
        record = {
            "name": spec.name,
            "title": spec.title,
            "file": target.name,
            "npz_sha256": npz_sha,
            "content_sha256": digest,
            "content_verified": spec.content_sha256 is not None,
            "n_train": int(len(arrays["y_train"])),
            "n_test": int(len(arrays["y_test"])),
            "image_shape": list(spec.image_shape),
            "classes": list(classes),
            "sources": [
                {
                    "file": f.filename,
                    "from": f.origin,
                    "md5": f.md5,
                    "sha256": f.sha256,
                    "bytes": f.size,
                }
                for f in fetched
            ],
            "homepage": spec.homepage,
            "reference": spec.reference,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "converter": f"fisherscope {_package_version()} (numpy {np.__version__})",
        }
        sidecar = target.with_suffix(".json")
        json_tmp = _write_temp(
            tmp_dir, sidecar.name, lambda f: f.write(json.dumps(record, indent=2) + "\n"), "w"
        )
        # Both files are complete; move them in (atomic renames on one filesystem).
        os.replace(npz_tmp, target)
        os.replace(json_tmp, sidecar)
        remember_identity(target, npz_sha, digest)
        logger.info("wrote %s (content sha256 %s)", target, digest)
        return target
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
