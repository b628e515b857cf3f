"""Tiny self-written raw datasets (idx .gz, CIFAR python tar.gz) for the data tests.

Nothing here touches the network or /work/shared: every file is written into a pytest
``tmp_path`` and the registry entry is pointed at it with ``override_spec``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from fisherscope.data import DATASETS, RawFile

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CIFAR_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    magic = 0x0800 | arr.ndim
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.tobytes()


def write_idx_gz(path: Path, arr: np.ndarray, compresslevel: int = 9) -> Path:
    # mtime=0 so the bytes (and md5) are reproducible
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=compresslevel) as f,
    ):
        f.write(idx_bytes(arr))
    return path


def tiny_idx_arrays(n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }


def write_idx_raw(
    folder: Path, arrays: dict[str, np.ndarray], compresslevel: int = 9
) -> tuple[RawFile, ...]:
    """The four idx .gz files in ``folder``; returns RawFile entries with their real md5."""
    folder.mkdir(parents=True, exist_ok=True)
    src = {
        "train_images": arrays["x_train"],
        "train_labels": arrays["y_train"],
        "test_images": arrays["x_test"],
        "test_labels": arrays["y_test"],
    }
    files = []
    for role, filename in IDX_NAMES.items():
        path = write_idx_gz(folder / filename, src[role], compresslevel)
        files.append(RawFile(filename, md5(path), role))
    return tuple(files)


def tiny_cifar_arrays(
    n_per_batch: int = 3, n_test: int = 4, seed: int = 1
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_train = n_per_batch * len(CIFAR_BATCHES)
    return {
        "x_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        "y_test": ((np.arange(n_test) + 3) % 10).astype(np.uint8),
    }


def cifar_batch_bytes(x_hwc: np.ndarray, labels: np.ndarray, extra: Any = None) -> bytes:
    """A batch in CIFAR's python format: rows of 3072 bytes, channel-major (CHW)."""
    rows = np.ascontiguousarray(x_hwc.transpose(0, 3, 1, 2)).reshape(len(x_hwc), 3072)
    d: dict[Any, Any] = {"batch_label": "tiny", "data": rows, "labels": [int(v) for v in labels]}
    if extra is not None:
        d["extra"] = extra
    return pickle.dumps(d, protocol=2)


CIFAR_NAMES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar_meta_bytes(names: tuple[str, ...] = CIFAR_NAMES) -> bytes:
    # bytes keys and values, as a Python 2 pickle decodes with encoding="bytes"
    return pickle.dumps({b"label_names": [n.encode() for n in names], b"num_vis": 3072}, protocol=2)


def cifar_blobs(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    n = len(arrays["x_train"]) // len(CIFAR_BATCHES)
    blobs = {
        name: cifar_batch_bytes(
            arrays["x_train"][i * n : (i + 1) * n], arrays["y_train"][i * n : (i + 1) * n]
        )
        for i, name in enumerate(CIFAR_BATCHES)
    }
    blobs["test_batch"] = cifar_batch_bytes(arrays["x_test"], arrays["y_test"])
    blobs["batches.meta"] = cifar_meta_bytes()
    return blobs


def write_cifar_folder(folder: Path, blobs: dict[str, bytes]) -> tuple[RawFile, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, data in blobs.items():
        (folder / name).write_bytes(data)
        role = (
            "meta"
            if name == "batches.meta"
            else "test_batch"
            if name == "test_batch"
            else "train_batch"
        )
        files.append(RawFile(name, md5(folder / name), role))
    order = {n: i for i, n in enumerate((*CIFAR_BATCHES, "test_batch", "batches.meta"))}
    return tuple(sorted(files, key=lambda rf: order[rf.filename]))


def write_cifar_tar(path: Path, blobs: dict[str, bytes]) -> RawFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return RawFile(path.name, md5(path), "archive")


def override_spec(monkeypatch: Any, name: str, **changes: Any) -> None:
    """Point a registry entry at tiny files (unknown content digest, tiny counts)."""
    changes.setdefault("content_sha256", None)
    changes.setdefault("file_sha256", ())
    monkeypatch.setitem(DATASETS, name, replace(DATASETS[name], **changes))


def tiny_dataset(split: str, x: Any, y: Any, k: int = 3) -> Any:
    """An in-memory ImageDataset named "tiny" with classes "0" … "k-1"."""
    from fisherscope.data import ImageDataset

    return ImageDataset(name="tiny", split=split, x=x.float(), y=y.long(), classes=tuple(str(i) for i in range(k)),
                        source="tests", checksum="tiny-checksum")


def tiny_brightness_splits() -> tuple[Any, Any]:
    """96 + 32 synthetic 8x8 images in 3 classes whose mean brightness differs (train, test)."""
    import torch

    g = torch.Generator().manual_seed(0)
    y = torch.arange(128) % 3
    x = (torch.rand(128, 1, 8, 8, generator=g) * 0.5 + y.view(-1, 1, 1, 1) * 0.25).clamp(0, 1)
    return tiny_dataset("train", x[:96], y[:96]), tiny_dataset("test", x[96:], y[96:])
