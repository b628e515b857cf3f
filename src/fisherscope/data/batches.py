"""CIFAR-style python batches: pickled dicts of ``data`` rows and labels, read one file at a time.

Layouts recognised (a folder, or the ``cifar-10-batches-py`` / ``cifar-100-python`` folder
inside it, or one batch file):

- CIFAR-10: ``data_batch_1`` ... ``data_batch_5`` (train), ``test_batch`` (test), ``batches.meta``
  (``label_names``); labels under ``labels``.
- CIFAR-100: ``train``, ``test``, ``meta`` (``fine_label_names``, ``coarse_label_names``);
  labels under ``fine_labels`` (default) or ``coarse_labels`` (``label_key=``).

``data`` is uint8, either (N, 3·S·S) rows in channel-major order (S × S red, then green, then
blue, each row-major: CIFAR's layout, any square size S) or (N, 3, H, W).

**Safety.** These files are pickles, and unpickling an arbitrary pickle runs code. They are
read with the restricted unpickler of :func:`fisherscope.data.read_cifar_batch`, which admits
only numpy arrays, dtypes, lists, dicts and strings: a file that references anything else
(a class, a function) is refused with its name, before anything in it runs. So no opt-in is
needed to read them; files from an unknown source are as safe to open as the published ones.

Memory: one batch file (10,000 CIFAR images, 30 MB) at a time, whatever the number of files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import param_error
from .download import _get, _unpickle

__all__ = ["CifarBatchesReader", "LABEL_KEYS", "find_batch_files", "looks_like_batches"]

LABEL_KEYS = ("labels", "fine_labels", "coarse_labels")
_NAMES_KEY = {"labels": "label_names", "fine_labels": "fine_label_names", "coarse_labels": "coarse_label_names"}
_TRAIN = re.compile(r"^data_batch_(\d+)$")
_SUBFOLDERS = ("cifar-10-batches-py", "cifar-100-python")


def _pickle_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(1) == b"\x80"
    except OSError:
        return False


def find_batch_files(folder: Path) -> tuple[Path, dict[str, list[Path]], Path | None] | None:
    """(folder, split -> batch files, meta file) of a CIFAR-style folder, or None if it is not one."""
    for candidate in (folder, *(folder / s for s in _SUBFOLDERS)):
        if not candidate.is_dir():
            continue
        names = {p.name: p for p in candidate.iterdir() if p.is_file()}
        train = sorted((p for n, p in names.items() if _TRAIN.match(n)),
                       key=lambda p: int(_TRAIN.match(p.name).group(1)))  # type: ignore[union-attr]
        if train or "test_batch" in names:
            split_files = {"train": train, "test": [names["test_batch"]] if "test_batch" in names else []}
            return candidate, split_files, names.get("batches.meta")
        if ("train" in names or "test" in names) and "meta" in names and _pickle_file(names["meta"]):
            split_files = {s: [names[s]] if s in names else [] for s in ("train", "test")}
            return candidate, split_files, names["meta"]
    return None


def looks_like_batches(path: Path) -> bool:
    """A CIFAR-style folder, or a single file that is a pickle."""
    if path.is_dir():
        return find_batch_files(path) is not None
    return path.is_file() and _pickle_file(path)


def _decode(d: dict[Any, Any], origin: str, label_key: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    raw = np.asarray(_get(d, "data", origin))
    keys = [k for k in LABEL_KEYS if k in d or k.encode() in d]
    if label_key is None:
        if not keys:
            _get(d, "labels", origin)  # raises, naming the keys found
        label_key = keys[0]
    labels = np.asarray(_get(d, label_key, origin))
    if raw.dtype != np.uint8:
        raise ValueError(f"{origin}: data is {raw.dtype}, expected uint8 pixel values 0..255.")
    if raw.ndim == 2:
        side = int(round(np.sqrt(raw.shape[1] / 3))) if raw.shape[1] else 0
        if side < 1 or 3 * side * side != raw.shape[1]:
            raise ValueError(
                f"{origin}: data rows hold {raw.shape[1]} values, expected 3 x S x S (channel-major RGB "
                "of square S x S images, 3072 for CIFAR's 32 x 32)."
            )
        x = raw.reshape(-1, 3, side, side)
    elif raw.ndim == 4 and raw.shape[1] == 3:
        x = raw
    else:
        raise ValueError(f"{origin}: data has shape {raw.shape}, expected (N, 3*S*S) rows or (N, 3, H, W).")
    if labels.ndim != 1 or len(labels) != len(x) or labels.dtype.kind not in "iu":
        raise ValueError(f"{origin}: {label_key} are {labels.dtype} {labels.shape}, expected {len(x)} integers.")
    return x, labels.astype(np.int64), label_key


class CifarBatchesReader:
    """CIFAR-style python batches (the ``cifar_batches`` kind of :func:`fisherscope.data.open_data`).

    Parameters
    ----------
    path : path-like
        A CIFAR-10 / CIFAR-100 style folder (see the module docstring) or one batch file.
    split : {"train", "test"} or None
        For a folder (default ``"test"``); ignored for a single file (``None`` only).
    label_key : {"labels", "fine_labels", "coarse_labels"} or None
        Which labels; default the first present.

    Raises
    ------
    ValueError
        Not a batch (the unpickler refuses anything but arrays, lists, dicts and strings,
        naming what it met), missing keys, wrong shapes, labels outside the class names, a
        split with no files.
    """

    kind = "cifar_batches"

    def __init__(self, path: str | Path, *, split: str | None = None, label_key: str | None = None,
                 owner: str = "open_data") -> None:
        path = Path(path).expanduser()
        if label_key is not None and label_key not in LABEL_KEYS:
            raise param_error(owner, "label_key", label_key, f"None or one of {', '.join(map(repr, LABEL_KEYS))}",
                              "CIFAR-10 batches hold 'labels', CIFAR-100 'fine_labels' and 'coarse_labels'.")
        meta_file: Path | None = None
        if path.is_dir():
            found = find_batch_files(path)
            if found is None:
                raise ValueError(f"{owner}: {path} is not a CIFAR-style batch folder (no data_batch_N / test_batch, "
                                 "nor train / test with meta).")
            self.root, split_files, meta_file = found
            split = "test" if split is None else split
            if split not in split_files:
                raise param_error(owner, "split", split, "'train' or 'test' for a CIFAR-style folder",
                                  "The batch files hold these two splits.")
            self.files = split_files[split]
            if not self.files:
                raise ValueError(f"{owner}: {self.root} has no {split} batch files "
                                 f"({'data_batch_1..5 or train' if split == 'train' else 'test_batch or test'}).")
        else:
            if split is not None:
                raise param_error(owner, "split", split, "None for a single batch file",
                                  f"{path} is one batch; pass its folder to choose a split.")
            self.root, self.files = path.parent, [path]
        self.split = split
        counts, shapes, keys = [], set(), set()
        max_label = -1
        for f in self.files:  # one file at a time: sizes and shapes, nothing kept
            x, y, key = _decode(_unpickle(f.read_bytes(), str(f)), str(f), label_key)
            counts.append(len(x))
            shapes.add(tuple(x.shape[1:]))
            keys.add(key)
            max_label = max(max_label, int(y.max()) if len(y) else -1)
            if len(y) and int(y.min()) < 0:
                raise ValueError(f"{owner}: {f} holds negative labels.")
        if len(shapes) > 1 or len(keys) > 1:
            raise ValueError(f"{owner}: the batch files {[f.name for f in self.files]} disagree: image shapes "
                             f"{sorted(shapes)}, label keys {sorted(keys)}.")
        self.label_key = keys.pop()
        (self.image_shape,) = shapes
        self.counts = counts
        self._offsets = np.cumsum([0, *counts])
        names: tuple[str, ...] | None = None
        if meta_file is not None:
            meta = _unpickle(meta_file.read_bytes(), str(meta_file))
            raw = meta.get(_NAMES_KEY[self.label_key], meta.get(_NAMES_KEY[self.label_key].encode()))
            if raw is not None:
                names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in raw)
        if names is None:
            names = tuple(str(i) for i in range(max_label + 1))
        if max_label >= len(names):
            raise ValueError(f"{owner}: {self.root}: labels go up to {max_label}, but the meta file names "
                             f"{len(names)} classes.")
        self.classes = names
        self.meta_file = meta_file

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def pieces(self, indices: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The selected rows (ascending ``indices``), one batch file at a time."""
        for i, f in enumerate(self.files):
            lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
            a, b = np.searchsorted(indices, [lo, hi])
            if a == b:
                continue
            x, y, _ = _decode(_unpickle(f.read_bytes(), str(f)), str(f), self.label_key)
            local = indices[a:b] - lo
            xs = torch.from_numpy(np.ascontiguousarray(x[local])).to(torch.float32).div_(255.0)
            yield xs, torch.from_numpy(y[local])

    def source_files(self, indices: np.ndarray) -> list[tuple[str, Path]]:
        files = [(f.name, f) for f in self.files]
        return files + ([(self.meta_file.name, self.meta_file)] if self.meta_file is not None else [])

    def describe(self) -> dict[str, Any]:
        return {"root": str(self.root), "split": self.split, "files": [f.name for f in self.files],
                "label_key": self.label_key, "meta": self.meta_file.name if self.meta_file else None}
