"""Image folders: one subfolder per class, decoded with Pillow in batches.

Layout (as torchvision's ``ImageFolder``)::

    root/cat/001.png
    root/cat/more/002.jpg      (subfolders of a class folder belong to that class)
    root/dog/003.png

Classes are the class folders' names in sorted order (label i = i-th name); samples are
ordered by class, then by their path inside the class folder (sorted strings), so the order —
and a seeded subset — is the same on every machine and file system. Hidden files and folders (``.name``) are
ignored; files without an image extension (:data:`IMAGE_EXTENSIONS`) are skipped and
counted. A folder whose subfolders are all split names (``train``, ``test``, ``val``, ...)
needs ``split=`` to pick one.

Opening a folder reads only the image headers (size and mode): images that cannot be opened,
class folders without images, and — without ``resize`` / ``center_crop`` — images of more
than one size are reported up front, naming the files. Pixels are decoded batch by batch
when iterated, so memory does not grow with the number of images.

Images become float32 in [0, 1], (N, C, H, W): 8-bit images / 255, 16-bit grey images / 65535.
``channels`` is 1 (grey) or 3 (RGB; alpha dropped, palettes expanded); by default 1 when every
image is grey and 3 otherwise. ``resize`` takes an int (the shorter side, aspect ratio kept,
as torchvision's ``Resize(int)``) or ``(H, W)``; ``center_crop`` an int or ``(H, W)`` (rounding
as torchvision's ``CenterCrop``). Resizing is bilinear with antialiasing (Pillow's). EXIF
orientation tags are not applied.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validation import param_error

__all__ = ["IMAGE_EXTENSIONS", "SPLIT_FOLDERS", "ImageFolderReader", "check_size"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm", ".pbm", ".pnm", ".jfif", ".tga", ".qoi")
"""File name endings (any case) read as images; other files in class folders are skipped."""

SPLIT_FOLDERS = ("train", "test", "val", "valid", "validation")
"""Folder names taken for splits, not classes, when every subfolder of the root is one."""

_GREY_MODES = {"1", "L", "LA", "I;16", "I;16L", "I;16B", "I;16N"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
_NO_RANGE = {"I", "F"}
_SHOW = 8  # files named in an error message
_DECODE_CHUNK = 64  # images decoded per piece


def _shown(paths: Sequence[str], limit: int = _SHOW) -> str:
    out = ", ".join(paths[:limit])
    return out + (f", ... ({len(paths)} in all)" if len(paths) > limit else "")


def check_size(owner: str, name: str, value: Any) -> tuple[int, int] | int | None:
    """``None``, a positive int, or a pair ``(H, W)`` of positive ints (resize / center_crop)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return int(value)
    if (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        return (int(value[0]), int(value[1]))
    raise param_error(owner, name, value, "None, an integer >= 1 or a pair (H, W) of integers >= 1",
                      "Pass e.g. 32 or (32, 32).")


def _resized(size: tuple[int, int], resize: tuple[int, int] | int | None) -> tuple[int, int]:
    """(W, H) after ``resize`` of an image of (W, H) ``size``."""
    w, h = size
    if resize is None:
        return w, h
    if isinstance(resize, int):
        if w <= h:
            return resize, max(1, int(resize * h / w))
        return max(1, int(resize * w / h)), resize
    return resize[1], resize[0]


def _crop_box(size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int, int, int]:
    w, h = size
    ch, cw = crop
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    return left, top, left + cw, top + ch


@dataclass(frozen=True)
class _Entry:
    path: Path
    rel: str
    label: int
    size: tuple[int, int]  # (W, H) of the file
    mode: str


class ImageFolderReader:
    """The images of one class-per-folder directory (the ``imagefolder`` kind of
    :func:`fisherscope.data.open_data`). See the module docstring for the layout and options.

    Attributes
    ----------
    root : Path
        The folder holding the class folders (``<root>/<split>`` when a split was given).
    classes : tuple of str
    image_shape : (C, H, W)
    files : list of Path
        Every image, in label-then-path order (the sample order).
    labels : ndarray
        int64 (N,).
    skipped : list of str
        Files without an image extension (relative paths).

    Raises
    ------
    ValueError
        No class folders or no images (the message says what was found), class folders
        without images, unreadable images, images of several sizes without ``resize`` /
        ``center_crop``, a crop larger than an image, images of a mode without a fixed range
        (32-bit integer or float), or a bad option; every message names the files.
    """

    kind = "imagefolder"

    def __init__(self, root: str | os.PathLike[str], *, split: str | None = None,
                 resize: Any = None, center_crop: Any = None, channels: int | None = None,
                 owner: str = "open_data") -> None:
        from PIL import Image

        self.owner = owner
        self.resize = check_size(owner, "resize", resize)
        crop = check_size(owner, "center_crop", center_crop)
        self.center_crop: tuple[int, int] | None = (crop, crop) if isinstance(crop, int) else crop
        if channels not in (None, 1, 3) or isinstance(channels, bool):
            raise param_error(owner, "channels", channels, "None, 1 or 3",
                              "1 reads the images as grey, 3 as RGB; None picks 1 when every image is grey.")
        base = Path(root).expanduser()
        self.split = split
        if split is not None:
            if not (base / split).is_dir():
                found = sorted(p.name for p in _subdirs(base))
                raise param_error(owner, "split", split, f"a subfolder of {base}",
                                  f"Its subfolders are {found or 'none'}.")
            base = base / split
        self.root = base
        class_dirs = sorted(_subdirs(base), key=lambda p: p.name)
        names = [d.name for d in class_dirs]
        if split is None and names and set(names) <= set(SPLIT_FOLDERS) and all(
                any(True for _ in _subdirs(d)) for d in class_dirs):
            raise param_error(owner, "split", None, f"one of {names} (the split folders of {base})",
                              f"{base} holds split folders, each with class folders: pass split='{names[0]}'.")
        if not class_dirs:
            loose = sorted(p.name for p in base.iterdir() if p.is_file() and not p.name.startswith(".")) \
                if base.is_dir() else []
            what = (f"it holds {len(loose)} file(s) but no folders ({_shown(loose)})" if loose
                    else "it is empty" if base.is_dir() else "it does not exist")
            raise ValueError(
                f"{owner}: image folder {base} has no class folders: {what}. Put the images in one "
                f"subfolder per class (e.g. {base}/cat/1.png, {base}/dog/2.png)."
            )
        self.classes = tuple(names)
        entries: list[tuple[Path, str, int]] = []
        skipped: list[str] = []
        empty: list[str] = []
        for label, d in enumerate(class_dirs):
            n_before = len(entries)
            for path in _files(d):
                rel = path.relative_to(base).as_posix()
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    entries.append((path, rel, label))
                else:
                    skipped.append(rel)
            if len(entries) == n_before:
                empty.append(d.name)
        self.skipped = skipped
        if not entries:
            raise ValueError(
                f"{owner}: image folder {base} holds no images: its class folders {_shown(list(names))} contain "
                f"{len(skipped)} other file(s){' (' + _shown(skipped) + ')' if skipped else ''}. Images are "
                f"files ending in {', '.join(IMAGE_EXTENSIONS[:6])}, ... (any case)."
            )
        if empty:
            raise ValueError(
                f"{owner}: image folder {base}: the class folder(s) {_shown(empty)} hold no images, so their "
                "labels would have no samples (labels follow the sorted folder names). Add images or remove "
                "the folders."
            )
        if skipped:
            logger.info("%s: skipped %d file(s) without an image extension in %s (%s)", owner, len(skipped),
                        base, _shown(skipped))
        # headers only: size and mode
        self._entries: list[_Entry] = []
        bad: list[str] = []
        for path, rel, label in entries:
            try:
                with Image.open(path) as im:
                    self._entries.append(_Entry(path, rel, label, (int(im.size[0]), int(im.size[1])), im.mode))
            except Exception as exc:  # noqa: BLE001 - every unreadable file is the same user error
                bad.append(f"{rel} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        if bad:
            raise ValueError(
                f"{owner}: image folder {base}: {len(bad)} file(s) cannot be read as images: {_shown(bad)}. "
                "Remove or repair them (or give them another extension to skip them)."
            )
        no_range = [e.rel for e in self._entries if e.mode in _NO_RANGE]
        if no_range:
            raise ValueError(
                f"{owner}: image folder {base}: {len(no_range)} image(s) are 32-bit integer or float images, "
                f"whose pixel range is not fixed: {_shown(no_range)}. Convert them to 8- or 16-bit images."
            )
        modes = Counter(e.mode for e in self._entries)
        self.channels = channels if channels is not None else (1 if set(modes) <= _GREY_MODES else 3)
        self._out_sizes = [self._out_size(e) for e in self._entries]
        sizes = Counter(self._out_sizes)
        if len(sizes) > 1:
            parts = []
            for (w, h), count in sizes.most_common(6):
                examples = [e.rel for e, s in zip(self._entries, self._out_sizes, strict=True) if s == (w, h)]
                parts.append(f"{w}x{h} ({count} file(s): {_shown(examples, 3)})")
            did = ("after resize / center_crop " if self.resize is not None or self.center_crop is not None
                   else "")
            raise ValueError(
                f"{owner}: image folder {base}: the images have {len(sizes)} different sizes (W x H) {did}- "
                + "; ".join(parts) + (", ..." if len(sizes) > 6 else "")
                + ". A batch needs one size: pass resize=<side> or resize=(H, W), and/or center_crop=(H, W)."
            )
        (w, h), = sizes
        self.image_shape = (self.channels, h, w)
        self.files = [e.path for e in self._entries]
        self.labels = np.array([e.label for e in self._entries], dtype=np.int64)
        self.modes = dict(modes)

    def _out_size(self, entry: _Entry) -> tuple[int, int]:
        w, h = _resized(entry.size, self.resize)
        if self.center_crop is None:
            return w, h
        ch, cw = self.center_crop
        if ch > h or cw > w:
            raise ValueError(
                f"{self.owner}: image folder {self.root}: center_crop={self.center_crop} (H, W) is larger than "
                f"{entry.rel} ({w}x{h} W x H{' after resize' if self.resize is not None else ''}). Crop "
                "less, or resize first (resize=<side> >= the crop)."
            )
        return cw, ch

    def __len__(self) -> int:
        return len(self._entries)

    def _decode(self, entry: _Entry) -> np.ndarray:
        """One image as float32 (C, H, W) in [0, 1]."""
        from PIL import Image

        with Image.open(entry.path) as im:
            im.load()
            if self.channels == 1 and im.mode in _SIXTEEN_BIT:
                img, scale = im.convert("F"), 65535.0
            else:
                img, scale = im.convert("L" if self.channels == 1 else "RGB"), 255.0
        if self.resize is not None:
            img = img.resize(_resized(img.size, self.resize), Image.Resampling.BILINEAR)
        if self.center_crop is not None:
            img = img.crop(_crop_box(img.size, self.center_crop))
        arr = np.asarray(img, dtype=np.float32) / np.float32(scale)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return np.clip(arr, 0.0, 1.0)

    def pieces(self, indices: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Decoded images of ``indices`` (ascending), a few dozen at a time."""
        for start in range(0, len(indices), _DECODE_CHUNK):
            idx = indices[start:start + _DECODE_CHUNK]
            out = np.empty((len(idx), *self.image_shape), dtype=np.float32)
            bad: list[str] = []
            for j, i in enumerate(idx.tolist()):
                entry = self._entries[i]
                try:
                    out[j] = self._decode(entry)
                except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
                    bad.append(f"{entry.rel} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            if bad:
                raise ValueError(
                    f"{self.owner}: image folder {self.root}: {len(bad)} image(s) cannot be decoded: "
                    f"{_shown(bad)}. Remove or repair them."
                )
            yield torch.from_numpy(out), torch.from_numpy(self.labels[idx])

    def source_files(self, indices: np.ndarray) -> list[tuple[str, Path]]:
        """(relative path, path) of the images at ``indices``: what identifies the data."""
        return [(self._entries[i].rel, self._entries[i].path) for i in indices.tolist()]

    def describe(self) -> dict[str, Any]:
        return {
            "root": str(self.root), "split": self.split, "resize": self.resize,
            "center_crop": list(self.center_crop) if self.center_crop else None, "channels": self.channels,
            "modes": self.modes, "skipped_files": len(self.skipped),
            "class_to_idx": {c: i for i, c in enumerate(self.classes)},
        }


def _subdirs(path: Path) -> Iterator[Path]:
    if not path.is_dir():
        return iter(())
    return (p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder`` (following links), sorted by relative path."""
    out: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back up the tree: walk each folder once
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())
