"""fisherscope.data.open_data: dataset names, .npz files, image folders and CIFAR-style batches,
streamed in batches with split / limit / seed; the bad inputs name their files."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from fisherscope.data import DataSource, ImageDataset, load_dataset, open_data
from fisherscope.data import sources as sources_mod


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _folder(root, sizes=None, classes=("dog", "cat", "bird"), per_class=4, rgb=True, seed=0):
    """Class folders with random images; files written in a scrambled order."""
    rng = np.random.default_rng(seed)
    written = {}
    order = [(c, i) for c in classes for i in range(per_class)]
    rng.shuffle(order)
    for c, i in order:
        h, w = (sizes or {}).get((c, i), (6, 5))
        arr = rng.integers(0, 256, (h, w, 3) if rgb else (h, w), dtype=np.uint8)
        sub = "deep/" if i == 0 else ""
        path = root / c / f"{sub}img{i:02d}.png"
        _png(path, arr)
        written[(c, i)] = arr
    return written


def _cat(data):
    xs, ys = zip(*list(data), strict=True)
    return torch.cat(xs), torch.cat(ys)


# -------------------------------------------------------------------------- image folders


def test_image_folder_order_labels_and_pixels(tmp_path):
    written = _folder(tmp_path)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"junk")  # hidden: ignored
    data = open_data(tmp_path, batch_size=5)
    assert data.kind == "imagefolder" and data.classes == ("bird", "cat", "dog")
    assert data.image_shape == (3, 6, 5) and len(data) == 12
    x, y = _cat(data)
    assert [len(yb) for _, yb in data] == [5, 5, 2]
    assert y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # inside a class: sorted relative paths, "deep/img00.png" before "img01.png"
    expected = [written[(c, i)] for c in ("bird", "cat", "dog") for i in range(4)]
    ref = torch.from_numpy(np.stack(expected)).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    assert x.dtype == torch.float32
    info = data.describe()
    assert info["reader"]["skipped_files"] == 1 and info["reader"]["class_to_idx"]["dog"] == 2
    json.dumps(info)
    torch.testing.assert_close(data.materialize().x, x)
    assert data.labels().tolist() == y.tolist()


def test_image_folder_channels(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (4, 4), dtype=np.uint8)
    _png(tmp_path / "g" / "a" / "1.png", grey)
    _png(tmp_path / "g" / "b" / "2.png", grey)
    data = open_data(tmp_path / "g")
    assert data.image_shape == (1, 4, 4)
    torch.testing.assert_close(data.first_batch()[0][0, 0], torch.from_numpy(grey).float() / 255)
    assert open_data(tmp_path / "g", channels=3).image_shape == (3, 4, 4)
    # grey + RGBA -> RGB, alpha dropped
    rgba = rng.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    _png(tmp_path / "m" / "a" / "1.png", grey)
    _png(tmp_path / "m" / "b" / "2.png", rgba)
    x, _ = open_data(tmp_path / "m").first_batch()
    assert x.shape == (2, 3, 4, 4)
    torch.testing.assert_close(x[1], torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float() / 255)
    torch.testing.assert_close(x[0], (torch.from_numpy(grey).float() / 255).expand(3, 4, 4))
    # 16-bit grey keeps its range
    deep = rng.integers(0, 65536, (4, 4)).astype(np.uint16)
    _png(tmp_path / "d" / "a" / "1.png", deep)
    x16, _ = open_data(tmp_path / "d").first_batch()
    torch.testing.assert_close(x16[0, 0], torch.from_numpy(deep.astype(np.float32) / 65535))


def test_image_folder_resize_and_center_crop_match_pillow(tmp_path):
    sizes = {("cat", 0): (10, 14), ("cat", 1): (12, 9), ("dog", 0): (20, 20), ("dog", 1): (8, 16)}
    written = _folder(tmp_path, sizes=sizes, classes=("cat", "dog"), per_class=2)
    data = open_data(tmp_path, resize=8, center_crop=(6, 7))
    assert data.image_shape == (3, 6, 7)
    x, _ = _cat(data)
    for j, key in enumerate([("cat", 0), ("cat", 1), ("dog", 0), ("dog", 1)]):
        im = Image.fromarray(written[key])
        w, h = im.size
        new = (8, int(8 * h / w)) if w <= h else (int(8 * w / h), 8)
        im = im.resize(new, Image.Resampling.BILINEAR)
        left, top = int(round((im.size[0] - 7) / 2)), int(round((im.size[1] - 6) / 2))
        im = im.crop((left, top, left + 7, top + 6))
        ref = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(x[j], ref, rtol=0, atol=0)
    assert open_data(tmp_path, resize=(5, 4)).image_shape == (3, 5, 4)


def test_image_folder_splits(tmp_path):
    _folder(tmp_path / "train", classes=("a", "b"), per_class=3)
    _folder(tmp_path / "test", classes=("a", "b"), per_class=2)
    with pytest.raises(ValueError, match=r"^open_data: split must be one of \['test', 'train'\].*split='test'"):
        open_data(tmp_path)
    assert len(open_data(tmp_path, split="train")) == 6 and len(open_data(tmp_path, split="test")) == 4
    with pytest.raises(ValueError, match=r"split must be a subfolder of .*Its subfolders are \['test', 'train'\]"):
        open_data(tmp_path, split="val")


def test_image_folder_without_images_names_what_it_found(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"has no class folders: it is empty"):
        open_data(tmp_path / "empty")
    _png(tmp_path / "loose" / "x.png", np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match=r"has no class folders: it holds 1 file\(s\) but no folders \(x.png\)"):
        open_data(tmp_path / "loose")
    for c in ("a", "b"):
        (tmp_path / "txt" / c).mkdir(parents=True)
        (tmp_path / "txt" / c / "readme.md").write_text("hi")
    with pytest.raises(ValueError, match=r"holds no images: .* contain 2 other file\(s\) \(a/readme.md, b/readme.md\)"):
        open_data(tmp_path / "txt")
    _folder(tmp_path / "gap", classes=("a", "c"), per_class=1)
    (tmp_path / "gap" / "b").mkdir()
    with pytest.raises(ValueError, match=r"the class folder\(s\) b hold no images"):
        open_data(tmp_path / "gap")


def test_image_folder_unreadable_files_are_all_named(tmp_path):
    _folder(tmp_path, classes=("a", "b"), per_class=2)
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "b" / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError) as info:
        open_data(tmp_path)
    msg = str(info.value)
    assert "2 file(s) cannot be read as images" in msg and "a/broken.png" in msg and "b/empty.jpg" in msg


def test_image_folder_truncated_pixels_are_named_when_decoded(tmp_path):
    _folder(tmp_path, classes=("a", "b"), per_class=2)
    big = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    _png(tmp_path / "b" / "zz.png", big)
    raw = (tmp_path / "b" / "zz.png").read_bytes()
    (tmp_path / "b" / "zz.png").write_bytes(raw[: len(raw) // 2])  # header intact, pixels cut
    data = open_data(tmp_path)  # the header reads fine
    with pytest.raises(ValueError, match=r"1 image\(s\) cannot be decoded: b/zz.png"):
        list(data)


def test_image_folder_mixed_sizes_need_resize(tmp_path):
    _folder(tmp_path, sizes={("a", 1): (8, 8), ("b", 0): (8, 8)}, classes=("a", "b"), per_class=3)
    with pytest.raises(ValueError) as info:
        open_data(tmp_path)
    msg = str(info.value)
    assert "2 different sizes (W x H)" in msg and "5x6 (4 file(s)" in msg
    assert "8x8 (2 file(s): a/img01.png, b/deep/img00.png)" in msg and "resize=" in msg
    assert open_data(tmp_path, resize=(6, 6)).image_shape == (3, 6, 6)
    assert open_data(tmp_path, center_crop=4).image_shape == (3, 4, 4)
    with pytest.raises(ValueError, match=r"center_crop=\(7, 7\) \(H, W\) is larger than a/deep/img00.png"):
        open_data(tmp_path, center_crop=7)


# ------------------------------------------------------------------------ limit / seed


def test_limit_and_seed_select_deterministically(tmp_path):
    _folder(tmp_path, classes=("a", "b", "c"), per_class=10, rgb=False)
    full = _cat(open_data(tmp_path))[0]
    a = open_data(tmp_path, limit=7, seed=3)
    b = open_data(tmp_path, limit=7, seed=3)
    assert a.indices.tolist() == b.indices.tolist() == sorted(a.indices.tolist())
    assert len(set(a.indices.tolist())) == 7
    torch.testing.assert_close(_cat(a)[0], full[torch.from_numpy(a.indices)])
    assert open_data(tmp_path, limit=7, seed=4).indices.tolist() != a.indices.tolist()
    assert open_data(tmp_path, limit=7, seed=None).indices.tolist() == list(range(7))
    assert len(open_data(tmp_path, limit=1000)) == 30
    assert a.take(5, seed=None).indices.tolist() == list(range(5))
    assert a.fingerprint == b.fingerprint != open_data(tmp_path, limit=7, seed=4).fingerprint
    assert open_data(tmp_path, resize=4).fingerprint != open_data(tmp_path).fingerprint


def test_fingerprint_follows_the_file_contents(tmp_path):
    _folder(tmp_path, classes=("a", "b"), per_class=2)
    before = open_data(tmp_path).fingerprint
    assert open_data(tmp_path).fingerprint == before
    _png(tmp_path / "a" / "img01.png", np.zeros((6, 5, 3), np.uint8))
    assert open_data(tmp_path).fingerprint != before


@pytest.mark.parametrize("kw, match", [
    (dict(limit=0), r"^open_data: limit must be an integer >= 1 or None \(every sample\); got 0"),
    (dict(limit=2.5), r"^open_data: limit must be an integer >= 1"),
    (dict(seed=-1), r"^open_data: seed must be an integer >= 0 or None"),
    (dict(batch_size=0), r"^open_data: batch_size must be an integer >= 1; got 0"),
    (dict(resize=0), r"^open_data: resize must be None, an integer >= 1 or a pair \(H, W\)"),
    (dict(center_crop=(3,)), r"^open_data: center_crop must be None, an integer >= 1 or a pair"),
    (dict(channels=2), r"^open_data: channels must be None, 1 or 3; got 2"),
    (dict(label_key="labels"), r"^open_data: label_key must be None for image folder data"),
])
def test_bad_options_in_the_template(tmp_path, kw, match):
    _folder(tmp_path, classes=("a", "b"), per_class=1)
    with pytest.raises(ValueError, match=match):
        open_data(tmp_path, **kw)


# ------------------------------------------------------------------------------- .npz


def _npz(path, n_train=30, n_test=20, shape=(5, 4), classes=True, fortran=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": rng.integers(0, 3, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 3).astype(np.uint8),
    }
    if fortran:
        arrays["x_test"] = np.asfortranarray(arrays["x_test"])
    if classes:
        arrays["classes"] = np.array(["r", "g", "b"])
    np.savez_compressed(path, **arrays)
    return arrays


def test_subset_reads_only_the_positions_asked(tmp_path, monkeypatch):
    """``DataSource.subset``: the images at some positions of a selection, in order, decoding only
    those files; bad positions are refused with what was expected."""
    _folder(tmp_path, classes=("a", "b", "c"), per_class=10, rgb=False)
    sel = open_data(tmp_path, limit=12, seed=1)
    x, y = _cat(sel)
    pos = [0, 4, 5, 11]
    opened = []
    real = Image.open
    monkeypatch.setattr(Image, "open", lambda f, *a, **k: opened.append(str(f)) or real(f, *a, **k))
    xs, ys = _cat(sel.subset(pos))
    torch.testing.assert_close(xs, x[pos], rtol=0, atol=0)
    assert ys.tolist() == y[pos].tolist() and len(opened) == len(pos)
    assert sel.subset(pos).indices.tolist() == sel.indices[pos].tolist()
    for bad in ([3, 1], [0, 0], [12], [-1]):
        with pytest.raises(ValueError, match="ascending, distinct and in 0..11"):
            sel.subset(bad)


def _expected(x):
    t = torch.from_numpy(np.ascontiguousarray(x))
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    return t.float() / 255


@pytest.mark.parametrize("fortran", [False, True])
def test_npz_file_streams_in_small_pieces(tmp_path, monkeypatch, fortran):
    arrays = _npz(tmp_path / "mine.npz", shape=(5, 4, 3), fortran=fortran)
    monkeypatch.setattr(sources_mod, "_NPZ_CHUNK_BYTES", 3 * 60)  # 3 rows per piece
    data = open_data(tmp_path / "mine.npz", batch_size=4)
    assert data.kind == "npz" and data.split == "test" and data.classes == ("r", "g", "b")
    pieces = list(data.reader.pieces(data.indices))
    if not fortran:
        assert max(len(p[1]) for p in pieces) == 3 and len(pieces) == 7
    x, y = _cat(data)
    torch.testing.assert_close(x, _expected(arrays["x_test"]), rtol=0, atol=0)
    assert y.tolist() == arrays["y_test"].tolist() and y.dtype == torch.int64
    sub = open_data(tmp_path / "mine.npz", split="train", limit=5, seed=2)
    xs, ys = _cat(sub)
    torch.testing.assert_close(xs, _expected(arrays["x_train"][sub.indices]), rtol=0, atol=0)
    assert ys.tolist() == arrays["y_train"][sub.indices].tolist()


def test_npz_and_named_datasets(tmp_path):
    arrays = _npz(tmp_path / "own.npz", classes=False)
    data = open_data("own", data_dir=tmp_path, split="train")
    assert data.kind == "dataset" and data.classes == ("0", "1", "2") and len(data) == 30
    ref = load_dataset("own", "train", data_dir=tmp_path)
    x, y = _cat(data)
    torch.testing.assert_close(x, ref.x)
    torch.testing.assert_close(y, ref.y)
    assert arrays["x_train"].shape[0] == 30
    digits = open_data("digits", limit=50, batch_size=16)
    assert digits.image_shape == (1, 8, 8) and [len(b) for _, b in digits] == [16, 16, 16, 2]
    assert digits.fingerprint == open_data("digits", limit=50).fingerprint
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'"):
        open_data("nope", data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"^open_data: split must be one of 'train', 'test'; got 'val'"):
        open_data("digits", split="val")
    with pytest.raises(ValueError, match=r"^open_data: resize must be None for named data"):
        open_data("digits", resize=4)
    with pytest.raises(ValueError, match=r"No such file or folder"):
        open_data(str(tmp_path / "missing.npz"))
    (tmp_path / "junk.bin").write_bytes(b"hello")
    with pytest.raises(ValueError, match=r"neither a dataset .npz .* nor a CIFAR-style python batch"):
        open_data(tmp_path / "junk.bin")


def test_in_memory_sources(tmp_path):
    ds = load_dataset("digits", "test")
    data = open_data(ds, limit=10, seed=None)
    torch.testing.assert_close(_cat(data)[0], ds.x[:10])
    assert data.classes == ds.classes and data.fingerprint
    x = torch.rand(9, 1, 4, 4)
    y = np.arange(9) % 3
    arr = open_data((x, y), batch_size=4)
    assert arr.kind == "arrays" and arr.classes == ("0", "1", "2") and [len(b) for _, b in arr] == [4, 4, 1]
    with pytest.raises(TypeError, match=r"float images in \[0, 1\].*x.float\(\) / 255"):
        open_data(((x * 255).to(torch.uint8), y))
    with pytest.raises(ValueError, match=r"outside bounds"):
        open_data((x * 3, y))
    assert isinstance(open_data(arr, limit=2), DataSource) and len(open_data(arr, limit=2)) == 2
    assert isinstance(arr.materialize(), ImageDataset)


# ----------------------------------------------------------------------- CIFAR batches


def _batch(path, n, side=4, label_key="labels", seed=0, byte_keys=False, extra=None):
    rng = np.random.default_rng(seed)
    d = {"data": rng.integers(0, 256, (n, 3 * side * side), dtype=np.uint8),
         label_key: list(rng.integers(0, 3, n).tolist()), "batch_label": "batch"}
    d.update(extra or {})
    if byte_keys:
        d = {k.encode(): v for k, v in d.items()}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
    return d


def test_cifar10_style_folder(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    parts = [_batch(root / f"data_batch_{i}", n, seed=i, byte_keys=i == 2) for i, n in ((1, 5), (2, 4), (10, 3))]
    test = _batch(root / "test_batch", 6, seed=9)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["plane", "car", "bird"]}, f, protocol=2)
    data = open_data(tmp_path)  # the parent folder: the batch folder is found inside
    assert data.kind == "cifar_batches" and data.split == "test" and data.classes == ("plane", "car", "bird")
    x, y = _cat(data)
    ref = torch.from_numpy(test["data"].reshape(6, 3, 4, 4)).float() / 255
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    assert y.tolist() == test["labels"]
    train = open_data(root, split="train", batch_size=4)
    assert len(train) == 12 and [len(b) for _, b in train] == [4, 4, 4]
    xt, yt = _cat(train)
    labels = parts[0]["labels"] + parts[1][b"labels"] + parts[2]["labels"]  # data_batch_10 last
    assert yt.tolist() == labels
    sub = open_data(root, split="train", limit=4, seed=1)
    torch.testing.assert_close(_cat(sub)[0], xt[torch.from_numpy(sub.indices)])
    single = open_data(root / "data_batch_2")
    assert len(single) == 4 and single.classes == ("0", "1", "2")[: max(parts[1][b"labels"]) + 1]


def test_cifar100_style_folder_and_label_key(tmp_path):
    for name, n in (("train", 5), ("test", 4)):
        _batch(tmp_path / name, n, side=2, label_key="fine_labels", seed=n,
               extra={"coarse_labels": [0, 1] * (n // 2) + [0] * (n % 2)})
    with open(tmp_path / "meta", "wb") as f:
        pickle.dump({"fine_label_names": ["a", "b", "c"], "coarse_label_names": ["x", "y"]}, f, protocol=2)
    data = open_data(tmp_path)
    assert data.classes == ("a", "b", "c") and data.image_shape == (3, 2, 2)
    coarse = open_data(tmp_path, split="train", label_key="coarse_labels")
    assert coarse.classes == ("x", "y") and _cat(coarse)[1].tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match=r"^open_data: label_key must be None or one of 'labels'"):
        open_data(tmp_path, label_key="fine")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/fisherscope-pwned",))


def test_cifar_batches_are_parsed_without_running_code(tmp_path):
    marker = "/tmp/fisherscope-pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    root = tmp_path / "b"
    root.mkdir()
    with open(root / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((2, 12), np.uint8), "labels": [0, 1], "evil": _Payload()}, f, protocol=2)
    with pytest.raises(ValueError, match=r"refusing global posix.system|refusing global os.system"):
        open_data(root)
    assert not os.path.exists(marker)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"data rows hold 10 values, expected 3 x S x S"):
        open_data(root)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((2, 12), np.uint8)}, f, protocol=2)
    with pytest.raises(ValueError, match=r"key 'labels' missing"):
        open_data(root)
    with pytest.raises(ValueError, match=r"^open_data: split must be 'train' or 'test'"):
        open_data(root, split="val")
    with pytest.raises(ValueError, match=r"has no train batch files"):
        open_data(root, split="train")
