"""The ``.npz`` dataset layout: hashing, structural validation, identity verification.

Layout (``shared/datasets/MANIFEST.md``): keys ``x_train``, ``y_train``, ``x_test``,
``y_test`` and optionally ``classes``; images uint8 of shape (N, H, W) or (N, H, W, C)
with C = 1 or 3; labels integers (uint8 in the published files) of shape (N,); classes a
1-D array of strings. Nothing is unpickled: files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .registry import DatasetSpec

__all__ = [
    "ARRAY_KEYS",
    "NpzLayout",
    "content_sha256",
    "file_sha256",
    "md5_file",
    "read_layout",
    "verify_identity",
]

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
_CONTENT_TAG = b"fisherscope.content.v1\n"
_CHUNK = 1 << 20


def _hash_file(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (hex)."""
    return _hash_file(Path(path), "sha256")


def md5_file(path: str | os.PathLike[str]) -> str:
    """md5 of a file's bytes (hex); the published checksums of the raw datasets are md5."""
    return _hash_file(Path(path), "md5")


def _canonical_images(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.uint8)
    if x.ndim == 3:
        x = x.reshape(*x.shape, 1)
    return x


def content_sha256(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> str:
    """The content digest that identifies a dataset (both splits), independent of file bytes.

    sha256 over a version tag and, in the order ``x_train, y_train, x_test, y_test``, one
    header line ``"<key> <dtype> <shape>\\n"`` followed by the raw bytes of the array in
    canonical form: images as C-contiguous uint8 (N, H, W, C) (grey images get C = 1),
    labels as little-endian int64 (N,). Two ``.npz`` files with the same arrays have the
    same digest however they were compressed or written; class names are not part of it.

    Parameters
    ----------
    x_train, x_test : ndarray
        uint8 images, (N, H, W) or (N, H, W, C).
    y_train, y_test : ndarray
        integer labels, (N,).

    Returns
    -------
    str
        64 hex characters.

    Shapes
    ------
    ``x_*``: (N, H, W) or (N, H, W, C); ``y_*``: (N,).
    """
    h = hashlib.sha256(_CONTENT_TAG)
    for key, a in zip(ARRAY_KEYS, (x_train, y_train, x_test, y_test), strict=True):
        if key.startswith("x"):
            a = _canonical_images(a)
        else:
            a = np.ascontiguousarray(a, dtype="<i8")
        shape = "x".join(str(s) for s in a.shape)
        h.update(f"{key} {a.dtype.str} {shape}\n".encode("ascii"))
        h.update(a.reshape(-1).view(np.uint8).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class NpzLayout:
    """Shapes and dtypes of a dataset ``.npz``, read from the array headers only.

    Attributes
    ----------
    path : Path
    shapes : dict
        key -> shape, for the four arrays (and ``classes`` if present).
    dtypes : dict
        key -> numpy dtype.
    has_classes : bool
    """

    path: Path
    shapes: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, np.dtype]
    has_classes: bool

    @property
    def n_train(self) -> int:
        return int(self.shapes["x_train"][0])

    @property
    def n_test(self) -> int:
        return int(self.shapes["x_test"][0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image once converted."""
        s = self.shapes["x_train"]
        c = s[3] if len(s) == 4 else 1
        return (int(c), int(s[1]), int(s[2]))

    def describe(self) -> str:
        return ", ".join(f"{k} {tuple(self.shapes[k])}" for k in ARRAY_KEYS)


def _read_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:  # format 3.0 (utf-8 field names): rare; read the array itself
            f.close()
            with zf.open(member) as g:
                arr = np.lib.format.read_array(g, allow_pickle=False)
            return tuple(arr.shape), arr.dtype
    return tuple(int(s) for s in shape), np.dtype(dtype)


_LAYOUT_HINT = (
    "A dataset .npz holds x_train, y_train, x_test, y_test (and optionally classes): "
    "images uint8 (N,H,W) or (N,H,W,C) with C=1 or 3, labels integers (N,), classes a "
    "1-D array of str; write it with numpy.savez_compressed(path, x_train=..., y_train=..., "
    "x_test=..., y_test=..., classes=np.array([...]))."
)


def read_layout(path: str | os.PathLike[str]) -> NpzLayout:
    """Check the structure of a dataset ``.npz`` from its array headers (no pixel data read).

    Raises
    ------
    ValueError
        Not a zip/npz archive, a key missing, a wrong dtype or rank, inconsistent sample
        counts or image shapes. The message names the file, what was expected and what
        was found.
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(
            f"{path} is not a .npz archive ({e}); expected a file written by "
            f"numpy.savez_compressed. {_LAYOUT_HINT}"
        ) from None
    with zf:
        members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
        missing = [k for k in ARRAY_KEYS if k not in members]
        if missing:
            raise ValueError(
                f"{path} lacks the key(s) {', '.join(missing)}; found "
                f"{', '.join(sorted(members)) or 'no arrays'}. {_LAYOUT_HINT}"
            )
        keys = [*ARRAY_KEYS, *(["classes"] if "classes" in members else [])]
        shapes: dict[str, tuple[int, ...]] = {}
        dtypes: dict[str, np.dtype] = {}
        for key in keys:
            try:
                shapes[key], dtypes[key] = _read_header(zf, members[key])
            except ValueError as e:
                raise ValueError(
                    f"{path}: cannot read array {key!r} ({e}). {_LAYOUT_HINT}"
                ) from None

    for split in ("train", "test"):
        xk, yk = f"x_{split}", f"y_{split}"
        xs, xd, ys, yd = shapes[xk], dtypes[xk], shapes[yk], dtypes[yk]
        if xd != np.uint8:
            raise ValueError(
                f"{path}: {xk} has dtype {xd}, expected uint8 images with values 0..255. "
                f"Convert float images in [0, 1] with (x * 255).round().astype(np.uint8)."
            )
        if len(xs) == 4 and xs[3] not in (1, 3):
            hint = (
                " It looks channels-first (N,C,H,W); the layout is channels-last: "
                "store x.transpose(0, 2, 3, 1)."
                if xs[1] in (1, 3)
                else ""
            )
            raise ValueError(
                f"{path}: {xk} has shape {xs}, expected (N,H,W) or (N,H,W,C) with C = 1 or 3.{hint}"
            )
        if len(xs) not in (3, 4) or min(xs, default=0) < 1:
            raise ValueError(
                f"{path}: {xk} has shape {xs}, expected a non-empty (N,H,W) or (N,H,W,C) "
                f"array with C = 1 or 3."
            )
        if yd.kind not in "iu":
            raise ValueError(
                f"{path}: {yk} has dtype {yd}, expected integer class labels "
                f"(uint8 in the published files); store y.astype(np.uint8) or np.int64."
            )
        if len(ys) != 1 or ys[0] != xs[0]:
            raise ValueError(
                f"{path}: {yk} has shape {ys}, expected ({xs[0]},) to match {xk} {xs}."
            )
    ctrain, ctest = shapes["x_train"][1:], shapes["x_test"][1:]
    if len(ctrain) == 2:
        ctrain = (*ctrain, 1)
    if len(ctest) == 2:
        ctest = (*ctest, 1)
    if ctrain != ctest:
        raise ValueError(
            f"{path}: train images are {shapes['x_train'][1:]} but test images are "
            f"{shapes['x_test'][1:]}; both splits must have the same image shape."
        )
    if "classes" in shapes:
        cs, cd = shapes["classes"], dtypes["classes"]
        if cd.kind not in "US" or len(cs) != 1 or cs[0] < 1:
            raise ValueError(
                f"{path}: classes has dtype {cd} and shape {cs}, expected a non-empty 1-D "
                f"array of str (np.array(['cat', 'dog', ...])); object arrays are refused "
                f"because they need pickle."
            )
    return NpzLayout(path=path, shapes=shapes, dtypes=dtypes, has_classes="classes" in shapes)


def load_arrays(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Read the given keys of a validated dataset ``.npz`` (no pickle)."""
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in keys}


@dataclass(frozen=True)
class FileIdentity:
    """What was established about one file: its bytes' sha256 and its content digest.

    ``verified`` is True when the content matched the registry's known digest.
    """

    file_sha256: str
    content_sha256: str
    verified: bool


# (resolved path, size, mtime_ns, inode) -> (file sha256, content digest): a file that
# has not changed is not hashed again in the same process.
_IDENTITY_CACHE: dict[tuple[str, int, int, int], tuple[str, str]] = {}
_CACHE_LOCK = threading.Lock()


def _cache_key(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def clear_identity_cache() -> None:
    """Forget which files were already hashed (the next load hashes again)."""
    with _CACHE_LOCK:
        _IDENTITY_CACHE.clear()


def verify_identity(
    path: Path,
    layout: NpzLayout,
    spec: DatasetSpec | None,
    arrays: dict[str, np.ndarray] | None = None,
) -> tuple[FileIdentity, dict[str, np.ndarray] | None]:
    """Establish (and, for known datasets, check) the identity of a dataset file.

    A file whose sha256 is one of ``spec.file_sha256`` is accepted without decoding it;
    otherwise the four arrays are read and their :func:`content_sha256` computed. If
    ``spec.content_sha256`` is known and differs, the file is rejected; so is, when only
    ``spec.file_sha256`` is known (no content digest), a file whose sha256 is not among
    them. Hashes are cached per (path, size, mtime, inode) for the life of the process.

    Returns
    -------
    identity : FileIdentity
    arrays : dict or None
        The arrays if they had to be read (so the caller need not read them again).

    Raises
    ------
    ValueError
        The content differs from the known digest of ``spec`` (or, without one, the file's
        sha256 from every known file sha256).
    """
    key = _cache_key(path)
    with _CACHE_LOCK:
        cached = _IDENTITY_CACHE.get(key)
    known = spec.content_sha256 if spec is not None else None
    if cached is not None:
        fsha, digest = cached
    else:
        fsha = file_sha256(path)
        if known is not None and spec is not None and fsha in spec.file_sha256:
            digest = known
        else:
            if arrays is None or any(k not in arrays for k in ARRAY_KEYS):
                arrays = {**(arrays or {}), **load_arrays(path, ARRAY_KEYS)}
            digest = content_sha256(*(arrays[k] for k in ARRAY_KEYS))
        with _CACHE_LOCK:
            _IDENTITY_CACHE[key] = (fsha, digest)
    if spec is not None and known is not None and digest != known:
        raise ValueError(content_mismatch_message(spec, path, digest, fsha, layout))
    if spec is not None and known is None and spec.file_sha256:
        if fsha not in spec.file_sha256:
            raise ValueError(content_mismatch_message(spec, path, digest, fsha, layout))
        return FileIdentity(fsha, digest, True), arrays
    return FileIdentity(fsha, digest, known is not None), arrays


def expected_layout(spec: DatasetSpec) -> str:
    c, h, w = spec.image_shape
    img = f"{h},{w}" if c == 1 else f"{h},{w},{c}"
    return f"x_train ({spec.n_train},{img}), x_test ({spec.n_test},{img})"


def fix_hint(spec: DatasetSpec, suffix: str = "custom") -> str:
    """How to replace a wrong file of ``spec``: rebuild it, or (local-only data) restore it."""
    if spec.local_only:
        known = " or ".join(spec.file_sha256) or "unknown"
        return (
            f"Fix: replace it with the reference file {spec.filename} (file sha256 {known}), "
            f"which `fisherscope data download` cannot make ({spec.title} is "
            f"{spec.note or 'a local file'}). To use another copy, save it under another name "
            f"(e.g. {spec.name}_{suffix}.npz, loaded as a custom dataset)."
        )
    return (
        f"Fix: delete it and re-create it with `fisherscope data download {spec.name} --force` "
        f"(Python: fisherscope.data.download_dataset({spec.name!r}, force=True)), or load "
        f"your own variant under another name (e.g. {spec.name}_{suffix}.npz)."
    )


def content_mismatch_message(
    spec: DatasetSpec, path: Path, actual: str, fsha: str, layout: NpzLayout
) -> str:
    if spec.content_sha256 is not None:
        got = f"its content sha256 is {actual}, expected {spec.content_sha256} (file sha256 {fsha}"
    else:
        got = (
            f"its file sha256 is {fsha}, expected {' or '.join(spec.file_sha256)} "
            f"(content sha256 {actual}"
        )
    return (
        f"{path} is not the canonical {spec.title}: {got}; arrays {layout.describe()}; "
        f"expected {expected_layout(spec)}). The file is truncated, corrupted or was "
        f"converted from other sources. {fix_hint(spec)}"
    )


def remember_identity(path: Path, file_sha: str, digest: str) -> None:
    """Record the hashes of a file this process has just written (saves rehashing it)."""
    key = _cache_key(path)
    with _CACHE_LOCK:
        _IDENTITY_CACHE[key] = (file_sha, digest)


def check_dataset_file(
    path: Path, spec: DatasetSpec | None
) -> tuple[NpzLayout, FileIdentity, dict[str, np.ndarray] | None]:
    """Structure, identity and (for known datasets) expected shapes of a dataset file.

    Returns
    -------
    layout : NpzLayout
    identity : FileIdentity
    arrays : dict or None
        The arrays, when they had to be read to compute the content digest.

    Raises
    ------
    ValueError
        Bad structure (see :func:`read_layout`), content differing from the known digest,
        or shapes differing from the registry's for a known dataset.
    """
    layout = read_layout(path)
    identity, arrays = verify_identity(path, layout, spec)
    if spec is not None:
        c, h, w = spec.image_shape
        if (layout.n_train, layout.n_test, layout.image_shape) != (
            spec.n_train,
            spec.n_test,
            (c, h, w),
        ):
            raise ValueError(
                f"{path} holds {layout.describe()}, but {spec.title} has {expected_layout(spec)}. "
                f"It is a subset or another dataset. {fix_hint(spec, 'subset')}"
            )
    return layout, identity, arrays
