"""Datasets: scikit-learn's digits (offline default), MNIST, Fashion-MNIST, CIFAR-10, custom ``.npz``.

>>> from fisherscope.data import load_dataset
>>> train = load_dataset("digits", "train")       # (1347, 1, 8, 8) float32 in [0, 1]

File-backed datasets live in one folder (``data_dir`` argument, else
``$FISHERSCOPE_DATA``, else ``~/.cache/fisherscope/data``) as ``<name>.npz`` with keys
``x_train, y_train, x_test, y_test, classes`` (uint8 images (N,H,W) or (N,H,W,3), integer
labels). :func:`download_dataset` creates them from the publishers' files;
:func:`list_datasets` says what is there. :func:`open_data` streams a user's data in batches from
any of these, a ``.npz`` file, an image folder (one subfolder per class) or CIFAR-style python
batches. ``ImageDataset.checksum`` is a content digest
(:func:`content_sha256`) that identifies the data whatever file it came from.
"""

from __future__ import annotations

from ._dataset import DATA_ENV_VAR, ImageDataset, resolve_data_dir
from ._npz import content_sha256
from .batches import CifarBatchesReader
from .download import download_dataset, read_cifar_batch, read_idx
from .imagefolder import IMAGE_EXTENSIONS, ImageFolderReader
from .loaders import (
    DIGITS_SPLIT_SEED,
    DIGITS_TEST_FRACTION,
    SPLITS,
    DatasetInfo,
    list_datasets,
    load_dataset,
)
from .registry import ALIASES, DATASETS, DatasetSpec, RawFile
from .sources import DATA_KINDS, DataSource, open_data

__all__ = [
    "ALIASES",
    "DATASETS",
    "DATA_ENV_VAR",
    "DATA_KINDS",
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_FRACTION",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "CifarBatchesReader",
    "DataSource",
    "DatasetInfo",
    "DatasetSpec",
    "ImageDataset",
    "ImageFolderReader",
    "RawFile",
    "content_sha256",
    "download_dataset",
    "list_datasets",
    "load_dataset",
    "open_data",
    "read_cifar_batch",
    "read_idx",
    "resolve_data_dir",
]
