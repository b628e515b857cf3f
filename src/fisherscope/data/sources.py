"""A user's data from whatever it comes in, streamed in batches: :func:`open_data`.

Sources (recognised by what they are, not by their names):

- a dataset name: ``"digits"``, ``"mnist"``, ``"cifar10"``, ... or a custom ``<name>.npz`` in the
  data folder (:func:`fisherscope.data.load_dataset`'s names; known files are verified);
- a ``.npz`` file in the documented layout (``x_train, y_train, x_test, y_test[, classes]``);
- an image folder, one subfolder per class (:mod:`fisherscope.data.imagefolder`);
- CIFAR-style python batches, a folder or one file (:mod:`fisherscope.data.batches`);
- in Python, an :class:`~fisherscope.data.ImageDataset` or a pair ``(x, y)`` of arrays / tensors.

The result, a :class:`DataSource`, iterates over ``(x, y)`` batches — float32 (B, C, H, W) in
[0, 1] and int64 (B,) — reading and decoding only one batch (one file for CIFAR batches, a
few MB of a ``.npz``) at a time, so memory does not grow with the dataset;
:meth:`DataSource.materialize` holds the whole selection in memory when wanted.

``limit=N`` keeps N samples: with ``seed`` (default 0) a uniformly random subset (kept in file
order), with ``seed=None`` the first N. The same arguments give the same samples in the same
order on every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._batching import check_batch_size
from .._validation import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    check_inputs,
    check_labels,
    check_param,
    one_of,
    param_error,
)
from ..exceptions import DatasetNotFoundError, ParameterTypeError
from ._dataset import ImageDataset, resolve_data_dir
from ._npz import check_dataset_file, file_sha256, load_arrays, read_layout
from .batches import CifarBatchesReader, looks_like_batches
from .imagefolder import ImageFolderReader
from .loaders import SPLITS, _check_name, _classes_of, load_dataset, missing_file_message
from .registry import get_spec

__all__ = ["DATA_KINDS", "DataSource", "open_data"]

_OWNER = "open_data"
DATA_KINDS = ("dataset", "npz", "imagefolder", "cifar_batches", "arrays")
_NPZ_CHUNK_BYTES = 2 << 20  # bytes of uint8 image rows decompressed per piece of a .npz


# ------------------------------------------------------------------------------ readers


class _TensorReader:
    """Samples already in memory (a loaded dataset, or arrays passed in Python)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, classes: tuple[str, ...], kind: str,
                 source: str, checksum: str | None, info: dict[str, Any]) -> None:
        self.x, self.y, self.classes, self.kind, self.source = x, y, classes, kind, source
        self.image_shape = tuple(int(s) for s in x.shape[1:])
        self.checksum = checksum
        self.info = info

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def pieces(self, indices: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.from_numpy(indices)
        for start in range(0, len(idx), 4096):
            sel = idx[start:start + 4096]
            yield self.x[sel], self.y[sel]

    def identity(self, indices: np.ndarray) -> list[str]:
        if self.checksum is not None:
            return [self.checksum]
        h = hashlib.sha256()
        for xb, yb in self.pieces(indices):
            h.update(xb.contiguous().numpy().tobytes())
            h.update(yb.numpy().astype("<i8").tobytes())
        return [h.hexdigest()]

    def describe(self) -> dict[str, Any]:
        return dict(self.info)


def _uint8_images_to_float(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    return t.contiguous().to(torch.float32).div_(255.0)


class _NpzReader:
    """One split of a dataset ``.npz``, its images decompressed a few MB at a time."""

    def __init__(self, path: Path, split: str, *, name: str, kind: str, checksum: str | None = None,
                 spec: Any = None) -> None:
        layout = read_layout(path)
        self.path, self.split, self.name, self.kind, self.checksum = path, split, name, kind, checksum
        keys = [f"y_{split}", *(["classes"] if layout.has_classes else ["y_train", "y_test"])]
        arrays = load_arrays(path, tuple(dict.fromkeys(keys)))
        self.classes = _classes_of(path, spec, arrays, layout.has_classes, (f"y_{split}",))
        self.labels = arrays[f"y_{split}"].astype(np.int64)
        self.image_shape = layout.image_shape
        self.member = f"x_{split}.npy"
        self.n = int(layout.shapes[f"x_{split}"][0])

    def __len__(self) -> int:
        return self.n

    def pieces(self, indices: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            if fortran:  # rare: column-major arrays cannot be read row by row
                x_all = load_arrays(self.path, (f"x_{self.split}",))[f"x_{self.split}"]
                for start in range(0, len(indices), 4096):
                    sel = indices[start:start + 4096]
                    yield _uint8_images_to_float(x_all[sel]), torch.from_numpy(self.labels[sel])
                return
            row = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
            rows_per_chunk = max(1, _NPZ_CHUNK_BYTES // max(row, 1))
            pos = 0  # rows read so far
            k = 0  # next entry of indices
            while k < len(indices):
                first = int(indices[k])
                if first >= pos + rows_per_chunk:  # skip whole chunks holding no selected row
                    skip = (first - pos) // rows_per_chunk * rows_per_chunk
                    _discard(f, skip * row)
                    pos += skip
                count = min(rows_per_chunk, self.n - pos)
                buf = f.read(count * row)
                if len(buf) != count * row:
                    raise ValueError(f"{_OWNER}: {self.path}: {self.member} is truncated (rows {pos}..{pos + count}).")
                chunk = np.frombuffer(buf, dtype=dtype).reshape(count, *shape[1:])
                end = int(np.searchsorted(indices, pos + count))
                local = indices[k:end] - pos
                yield _uint8_images_to_float(chunk[local]), torch.from_numpy(self.labels[indices[k:end]])
                k = end
                pos += count

    def identity(self, indices: np.ndarray) -> list[str]:
        return [self.checksum or file_sha256(self.path)]

    def describe(self) -> dict[str, Any]:
        return {"file": str(self.path), "split": self.split}


def _discard(f: Any, nbytes: int) -> None:
    while nbytes > 0:
        got = f.read(min(nbytes, _NPZ_CHUNK_BYTES))
        if not got:
            return
        nbytes -= len(got)


# --------------------------------------------------------------------------- the source


@dataclass(frozen=True, eq=False)
class DataSource:
    """A selection of images and labels, read in batches (see :func:`open_data`).

    Iterating gives ``(x, y)`` batches of at most ``batch_size`` samples: x float32
    (B, C, H, W) in [0, 1], y int64 (B,). Only one batch (plus one piece of the underlying
    file) is in memory at a time.

    Attributes
    ----------
    kind : str
        One of :data:`DATA_KINDS`.
    source : str
        The dataset name, file or folder.
    split : str or None
    classes : tuple of str
    image_shape : (C, H, W)
    indices : ndarray
        The selected samples' positions in the split (ascending).
    limit, seed : int or None
        As passed.
    batch_size : int
    n_available : int
        Samples in the split before ``limit``.
    """

    kind: str
    source: str
    split: str | None
    reader: Any = field(repr=False)
    indices: np.ndarray = field(repr=False)
    limit: int | None
    seed: int | None
    batch_size: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.reader.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.reader.image_shape
        return int(c), int(h), int(w)

    @property
    def n_available(self) -> int:
        return len(self.reader)

    def __len__(self) -> int:
        return int(len(self.indices))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def batches(self, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(x, y)`` batches of ``batch_size`` (default: the source's) samples, in order."""
        size = self.batch_size if batch_size is None else batch_size
        check_batch_size(size, "DataSource.batches")
        xs: list[torch.Tensor] = []
        ys: list[torch.Tensor] = []
        held = 0
        for xp, yp in self.reader.pieces(self.indices):
            xs.append(xp)
            ys.append(yp)
            held += int(xp.shape[0])
            while held >= size:
                x = xs[0] if len(xs) == 1 else torch.cat(xs)
                y = ys[0] if len(ys) == 1 else torch.cat(ys)
                rest = held - size
                yield (x[:size].clone(), y[:size].clone()) if rest else (x, y)
                xs, ys = ([x[size:]], [y[size:]]) if rest else ([], [])
                held = rest
            if xs and xs[0].untyped_storage().nbytes() > xs[0].nbytes:  # a remainder viewing a whole piece
                xs, ys = [xs[0].clone()], [ys[0].clone()]
        if held:
            yield (xs[0] if len(xs) == 1 else torch.cat(xs)), (ys[0] if len(ys) == 1 else torch.cat(ys))

    def first_batch(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` (default ``batch_size``) samples: the probe batch of the model check."""
        return next(iter(self.batches(n or self.batch_size)))

    def materialize(self) -> ImageDataset:
        """The whole selection in memory, as an :class:`~fisherscope.data.ImageDataset`.

        ``checksum`` is :meth:`fingerprint`; ``meta`` holds :meth:`describe`.
        """
        parts = list(self.batches())
        if parts:
            x = torch.cat([p[0] for p in parts])
            y = torch.cat([p[1] for p in parts])
        else:  # pragma: no cover - open_data refuses empty selections
            x, y = torch.empty(0, *self.image_shape), torch.empty(0, dtype=torch.int64)
        return ImageDataset(name=self.options.get("name", Path(self.source).name or self.source),
                            split=self.split or "all", x=x, y=y, classes=self.classes, source=self.source,
                            checksum=self.fingerprint, meta=self.describe())

    def labels(self) -> np.ndarray:
        """The selected samples' labels (int64); cheap where the reader knows them without decoding."""
        known = getattr(self.reader, "labels", None)
        if isinstance(known, np.ndarray):
            return known[self.indices]
        if isinstance(known, torch.Tensor):
            return known[torch.from_numpy(self.indices)].numpy()
        return np.concatenate([yb.numpy() for _, yb in self.batches()]) if len(self) else np.empty(0, np.int64)

    def subset(self, positions: Any) -> DataSource:
        """The samples at ``positions`` (ascending, 0 to ``len(self) - 1``) of this selection, read
        in batches like any source: only those images are decoded."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size and (pos[0] < 0 or pos[-1] >= len(self) or np.any(np.diff(pos) <= 0)):
            raise ValueError(f"DataSource.subset: positions must be ascending, distinct and in 0..{len(self) - 1}; "
                             f"got {pos.size} position(s) from {int(pos.min())} to {int(pos.max())}. "
                             "Sort them (np.unique) and keep them below the selection's length.")
        return replace(self, indices=self.indices[pos])

    def take(self, limit: int | None, seed: int | None = 0) -> DataSource:
        """The same source with another ``limit`` / ``seed`` (selection from the whole split)."""
        return replace(self, indices=_select(self.n_available, limit, seed), limit=limit, seed=seed)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 identifying this selection: the source's content digest or its files' sha256,
        with the split, the selected indices and the decoding options."""
        reader = self.reader
        if hasattr(reader, "identity"):
            parts = reader.identity(self.indices)
        else:  # image folders, CIFAR batches: each source file's relative path and sha256
            parts = [f"{rel}:{file_sha256(path)}" for rel, path in reader.source_files(self.indices)]
        h = hashlib.sha256(b"fisherscope.datasource.v1\n")
        h.update(json.dumps({"kind": self.kind, "split": self.split, "options": _jsonable(self.options),
                             "parts": parts}, sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.indices, dtype="<i8").tobytes())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """JSON values saying what was read: kind, source, split, counts, selection and options."""
        return {
            "kind": self.kind, "source": self.source, "split": self.split, "n": len(self),
            "n_available": self.n_available, "limit": self.limit, "seed": self.seed,
            "image_shape": list(self.image_shape), "classes": list(self.classes),
            "options": _jsonable(self.options), "reader": _jsonable(self.reader.describe()),
        }

    def __repr__(self) -> str:
        return (f"DataSource(kind={self.kind!r}, source={self.source!r}, split={self.split!r}, n={len(self)}"
                f"/{self.n_available}, shape={self.image_shape}, classes={self.num_classes})")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _select(n: int, limit: int | None, seed: int | None) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n, dtype=np.int64)
    if seed is None:
        return np.arange(limit, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=limit, replace=False)).astype(np.int64)


# ---------------------------------------------------------------------------- the entry


def _arrays_reader(source: Any) -> _TensorReader:
    x, y = source
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    if x.dtype == torch.uint8:
        raise param_error(_OWNER, "source", f"(x uint8 {tuple(x.shape)}, y)", "(x, y) with float images in [0, 1]",
                          "Convert with x.float() / 255 (and to (N, C, H, W)).", ParameterTypeError)
    check_inputs(x, y, name="x", image=True)
    if y.dtype != torch.int64 and not y.is_floating_point():
        y = y.long()
    check_labels(y, x.shape[0])
    k = int(y.max()) + 1 if y.numel() else 0
    return _TensorReader(x.float(), y, tuple(str(i) for i in range(k)), "arrays",
                         f"arrays {tuple(x.shape)}", None, {})


def open_data(
    source: Any,
    *,
    split: str | None = None,
    limit: int | None = None,
    seed: int | None = 0,
    batch_size: int = 256,
    resize: Any = None,
    center_crop: Any = None,
    channels: int | None = None,
    label_key: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> DataSource:
    """A user's images and labels, from whatever they come in, as a stream of batches.

    Parameters
    ----------
    source : str, path-like, ImageDataset or (x, y)
        A dataset name (``"digits"``, ``"mnist"``, a custom ``<name>.npz`` in ``data_dir``), a
        ``.npz`` file in the documented layout, an image folder (one subfolder per class), a
        CIFAR-style batch folder or file, an :class:`~fisherscope.data.ImageDataset`, or a pair
        ``(x, y)`` (float (N, C, H, W) in [0, 1], integer labels).
    split : str, optional
        ``"train"`` or ``"test"`` (default ``"test"``) for datasets, ``.npz`` files and CIFAR
        folders; for an image folder, the name of a subfolder holding class folders (default:
        the folder itself).
    limit : int, optional
        Keep this many samples (all when ``None`` or more than there are).
    seed : int or None
        ``limit`` picks a random subset with this seed (kept in file order); ``None`` takes the
        first ``limit``.
    batch_size : int
        Samples per batch when iterating.
    resize, center_crop, channels
        Image folders only: the shorter side (int) or (H, W) to resize to; the (H, W) (or side)
        to crop to; 1 (grey) or 3 (RGB). See :mod:`fisherscope.data.imagefolder`.
    label_key : str, optional
        CIFAR-style batches only: ``"labels"``, ``"fine_labels"`` or ``"coarse_labels"``.
    data_dir : path-like, optional
        Where dataset names are looked up (default ``$FISHERSCOPE_DATA``).

    Returns
    -------
    DataSource
        Iterate for ``(x, y)`` batches; ``materialize()`` for one ImageDataset.

    Raises
    ------
    ValueError
        A bad option, an unknown source, a malformed file, or an image folder with no images,
        unreadable files or mixed sizes (the files are named).
    DatasetNotFoundError
        A known dataset's file is missing (the message says how to get it).

    Examples
    --------
    >>> data = open_data("digits", split="test", limit=100, batch_size=32)
    >>> len(data), data.image_shape, [len(y) for _, y in data]
    (100, (1, 8, 8), [32, 32, 32, 4])
    """
    check_batch_size(batch_size, _OWNER)
    check_param(_OWNER, "limit", limit, POSITIVE_INT.or_none("every sample"))
    check_param(_OWNER, "seed", seed, NON_NEGATIVE_INT.or_none("the first `limit` samples"))
    if split is not None and not isinstance(split, str):
        raise param_error(_OWNER, "split", split, "None or a split name", "Pass e.g. 'test'.", ParameterTypeError)
    image_options = {"resize": resize, "center_crop": center_crop, "channels": channels}
    options: dict[str, Any] = {}
    name = None

    def no_image_options(kind: str) -> None:
        given = [k for k, v in image_options.items() if v is not None]
        if given:
            raise param_error(_OWNER, given[0], image_options[given[0]], f"None for {kind} data",
                              "resize, center_crop and channels apply to image folders, whose files differ in size "
                              "and mode; resize the model's input instead.")
        if label_key is not None and kind != "CIFAR-style batch":
            raise param_error(_OWNER, "label_key", label_key, f"None for {kind} data",
                              "label_key picks the labels of CIFAR-style batches.")

    def dataset_split() -> str:
        s = "test" if split is None else split
        check_param(_OWNER, "split", s, one_of(*SPLITS))
        return s

    reader: Any
    if isinstance(source, DataSource):
        no_image_options("already opened")
        return replace(source, indices=_select(source.n_available, limit, seed), limit=limit, seed=seed,
                       batch_size=batch_size)
    if isinstance(source, ImageDataset):
        no_image_options("in-memory")
        reader = _TensorReader(source.x, source.y, source.classes, "dataset", source.source, source.checksum,
                               {"name": source.name})
        kind, text, split = "dataset", source.name, source.split
        name = source.name
    elif isinstance(source, tuple) and len(source) == 2:
        no_image_options("in-memory")
        reader = _arrays_reader(source)
        kind, text = "arrays", reader.source
    elif isinstance(source, str | os.PathLike):
        text = os.fspath(source)
        path = Path(text).expanduser()
        if path.is_dir():
            if looks_like_batches(path):
                no_image_options("CIFAR-style batch")
                reader = CifarBatchesReader(path, split=split, label_key=label_key)
                kind, split = "cifar_batches", reader.split
            else:
                if label_key is not None:
                    no_image_options("image folder")
                reader = ImageFolderReader(path, split=split, resize=resize, center_crop=center_crop,
                                           channels=channels)
                kind = "imagefolder"
                options = {k: v for k, v in image_options.items() if v is not None}
        elif path.is_file():
            if zipfile.is_zipfile(path):
                no_image_options(".npz")
                s = dataset_split()
                reader = _NpzReader(path, s, name=path.stem, kind="npz")
                kind, split = "npz", s
            elif looks_like_batches(path):
                no_image_options("CIFAR-style batch")
                reader = CifarBatchesReader(path, split=split, label_key=label_key)
                kind = "cifar_batches"
            else:
                raise ValueError(
                    f"{_OWNER}: {path} is neither a dataset .npz (a zip archive) nor a CIFAR-style python batch "
                    "(a pickle). Pass a .npz in the documented layout, an image folder (one subfolder per "
                    "class) or a CIFAR batch folder."
                )
        else:
            no_image_options("named")
            if os.sep in text or "/" in text or path.suffix:
                raise param_error(_OWNER, "source", text, "an existing file or folder, or a dataset name",
                                  f"No such file or folder: {path}.")
            s = dataset_split()
            reader, kind = _named(text, s, data_dir), "dataset"
            split = s
            name = text
    else:
        raise param_error(_OWNER, "source", source, "a dataset name, a .npz file, an image folder, CIFAR "
                          "batches, an ImageDataset or a pair (x, y)", f"Got a {type(source).__name__}.",
                          ParameterTypeError)
    n = len(reader)
    if n == 0:
        raise ValueError(f"{_OWNER}: {text} holds no samples in split {split!r}.")
    if name is not None:
        options["name"] = name
    return DataSource(kind=kind, source=text, split=split, reader=reader, indices=_select(n, limit, seed),
                      limit=limit, seed=seed, batch_size=batch_size, options=options)


def _named(name: str, split: str, data_dir: str | os.PathLike[str] | None) -> Any:
    """A dataset name: digits in memory; file-backed datasets verified, then streamed."""
    name = _check_name(name)
    spec = get_spec(name)
    if spec is not None and spec.format == "sklearn":
        ds = load_dataset(name, split)
        return _TensorReader(ds.x, ds.y, ds.classes, "dataset", ds.source, ds.checksum, {"name": ds.name})
    root = resolve_data_dir(data_dir)
    if spec is not None:
        path = root / spec.filename
        if not path.is_file():
            raise DatasetNotFoundError(missing_file_message(spec, path, data_dir))
        _, identity, _ = check_dataset_file(path, spec)
        return _NpzReader(path, split, name=spec.name, kind="dataset", checksum=identity.content_sha256, spec=spec)
    path = root / f"{name}.npz"
    if not path.is_file():
        load_dataset(name, split, data_dir)  # raises the unknown-name message listing the choices
    return _NpzReader(path, split, name=name, kind="dataset")
