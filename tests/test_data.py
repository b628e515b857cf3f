"""fisherscope.data: loaders, validation, checksums, conversion, listing.

No test touches the network (sockets are blocked); raw files are tiny and self-written.
The real-MNIST tests run only when $FISHERSCOPE_DATA holds mnist.npz (CI sets it to the
shared datasets folder).
"""

from __future__ import annotations

import json
import os
import pickle
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import fisherscope.data._npz as npz_mod
from data_helpers import (
    CIFAR_NAMES,
    cifar_batch_bytes,
    cifar_blobs,
    override_spec,
    tiny_cifar_arrays,
    tiny_idx_arrays,
    write_cifar_folder,
    write_cifar_tar,
    write_idx_gz,
    write_idx_raw,
)
from fisherscope.data import (
    DATASETS,
    DIGITS_SPLIT_SEED,
    DIGITS_TEST_FRACTION,
    DatasetInfo,
    ImageDataset,
    RawFile,
    content_sha256,
    download_dataset,
    list_datasets,
    load_dataset,
    read_cifar_batch,
    read_idx,
    resolve_data_dir,
)
from fisherscope.exceptions import DatasetNotFoundError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

_ENV_DIR = os.environ.get("FISHERSCOPE_DATA")
REAL_MNIST = Path(_ENV_DIR) / "mnist.npz" if _ENV_DIR else None
needs_real_mnist = pytest.mark.skipif(
    REAL_MNIST is None or not REAL_MNIST.is_file(),
    reason="$FISHERSCOPE_DATA does not hold mnist.npz",
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a data test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def save_npz(path: Path, compressed: bool = True, **arrays) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def small_arrays(seed=0, n_train=20, n_test=10, shape=(5, 4, 3), k=3):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": (np.arange(n_train) % k).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": (np.arange(n_test) % k).astype(np.uint8),
    }


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_range():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert isinstance(train, ImageDataset)
    assert train.x.shape == (1347, 1, 8, 8) and test.x.shape == (450, 1, 8, 8)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert train.x.min() == 0 and train.x.max() == 1 and test.x.max() <= 1
    assert torch.equal(train.x * 16, (train.x * 16).round())  # counts 0..16, divided by 16
    assert train.classes == tuple("0123456789") and train.num_classes == 10
    assert train.in_channels == 1 and train.image_size == (8, 8)
    assert train.checksum == test.checksum and len(train.checksum) == 64
    assert train.meta["split_seed"] == DIGITS_SPLIT_SEED == 0
    assert train.meta["test_fraction"] == DIGITS_TEST_FRACTION == 0.25
    x0, y0 = train[0]
    assert x0.shape == (1, 8, 8) and y0.ndim == 0


def test_digits_split_is_stratified_disjoint_and_complete():
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    all_y = torch.as_tensor(load_digits().target)
    tr_idx, te_idx = train.meta["indices"], test.meta["indices"]
    assert len(set(tr_idx.tolist()) | set(te_idx.tolist())) == 1797
    assert not set(tr_idx.tolist()) & set(te_idx.tolist())
    assert torch.equal(train.y, all_y[tr_idx]) and torch.equal(test.y, all_y[te_idx])
    assert torch.all(tr_idx[1:] > tr_idx[:-1])  # original order kept
    per_class = torch.bincount(all_y, minlength=10).double()
    test_counts = torch.bincount(test.y, minlength=10).double()
    assert torch.all((test_counts - 0.25 * per_class).abs() <= 1)


def test_digits_is_deterministic():
    a, b = load_dataset("digits", "test"), load_dataset("digits", "test")
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.checksum == b.checksum
    a.x.zero_()  # callers own their tensors: the cache is not affected
    assert load_dataset("digits", "test").x.max() == 1


def test_bad_split_and_name():
    with pytest.raises(ValueError, match=r"'train', 'test'.*'val'"):
        load_dataset("digits", "val")
    with pytest.raises(ValueError, match="digits, mnist, fashion_mnist, cifar10"):
        load_dataset("imagenet", data_dir="/nonexistent")
    for bad in ("../mnist", "a/b", ".hidden", ""):
        with pytest.raises(ValueError):
            load_dataset(bad)
    with pytest.raises(ValueError, match="drop the .npz"):
        load_dataset("foo.npz")


# ----------------------------------------------------------------------------- custom npz


def test_custom_npz_round_trip(tmp_path):
    arrays = small_arrays()
    save_npz(tmp_path / "toy.npz", **arrays, classes=np.array(["a", "b", "c"]))
    ds = load_dataset("toy", "train", data_dir=tmp_path)
    assert ds.name == "toy" and ds.x.shape == (20, 3, 5, 4) and ds.x.dtype == torch.float32
    expected = torch.from_numpy(arrays["x_train"]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(ds.x, expected)
    assert torch.equal(ds.y, torch.from_numpy(arrays["y_train"]).long())
    assert ds.classes == ("a", "b", "c")
    assert ds.checksum == content_sha256(
        *(arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    )
    assert ds.meta["verified"] is False and ds.source == str(tmp_path / "toy.npz")
    assert load_dataset("toy", "test", data_dir=tmp_path).checksum == ds.checksum


def test_custom_npz_grey_without_classes(tmp_path):
    arrays = small_arrays(shape=(6, 6), k=4)
    arrays["y_test"][:] = 6  # labels 0..3 and 6: a gap, so not a label set to trust
    save_npz(tmp_path / "gappy.npz", **arrays)
    with pytest.raises(ValueError, match=r"contiguous.*missing \[4, 5\]"):
        load_dataset("gappy", "train", data_dir=tmp_path)
    arrays["y_test"][:] = np.arange(len(arrays["y_test"])) % 7  # labels 0..6 over both splits -> 7 classes
    save_npz(tmp_path / "grey.npz", **arrays)
    ds = load_dataset("grey", "train", data_dir=tmp_path)
    assert ds.x.shape == (20, 1, 6, 6) and ds.classes == tuple(str(i) for i in range(7))


def test_content_digest_ignores_file_bytes(tmp_path):
    arrays = small_arrays()
    a = save_npz(tmp_path / "a.npz", compressed=True, **arrays)
    wide = {k: v.astype(np.int64) if k[0] == "y" else v for k, v in arrays.items()}
    b = save_npz(tmp_path / "b.npz", compressed=False, **wide)
    assert npz_mod.file_sha256(a) != npz_mod.file_sha256(b)
    da, db = load_dataset("a", data_dir=tmp_path), load_dataset("b", data_dir=tmp_path)
    assert da.checksum == db.checksum
    arrays["x_test"][0, 0, 0, 0] ^= 1
    save_npz(tmp_path / "c.npz", **arrays)
    assert load_dataset("c", data_dir=tmp_path).checksum != da.checksum


def test_hashes_are_cached_until_the_file_changes(tmp_path, monkeypatch):
    calls = []
    real = npz_mod.content_sha256
    monkeypatch.setattr(npz_mod, "content_sha256", lambda *a: calls.append(1) or real(*a))
    path = save_npz(tmp_path / "toy.npz", **small_arrays())
    load_dataset("toy", "train", data_dir=tmp_path)
    load_dataset("toy", "test", data_dir=tmp_path)
    assert len(calls) == 1
    save_npz(tmp_path / "tmp.npz", **small_arrays(seed=5, n_train=21))
    os.replace(tmp_path / "tmp.npz", path)
    load_dataset("toy", "train", data_dir=tmp_path)
    assert len(calls) == 2


# ----------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    ("mutate", "split", "message"),
    [
        (lambda a: a.pop("y_test"), "train", r"lacks the key\(s\) y_test"),
        (
            lambda a: a.update(x_train=a["x_train"].astype(np.float32) / 255),
            "train",
            r"x_train has dtype float32, expected uint8",
        ),
        (
            lambda a: a.update(y_train=a["y_train"].astype(np.float64)),
            "train",
            r"y_train has dtype float64, expected integer",
        ),
        (
            lambda a: a.update(y_train=a["y_train"][:-1]),
            "train",
            r"y_train has shape \(19,\), expected \(20,\)",
        ),
        (
            lambda a: a.update(x_test=a["x_test"][:, :4]),
            "train",
            r"both splits must have the same image shape",
        ),
        (
            lambda a: a.update(
                x_train=np.zeros((20, 3, 8, 8), np.uint8), x_test=np.zeros((10, 3, 8, 8), np.uint8)
            ),
            "train",
            r"channels-first",
        ),
        (lambda a: a.update(classes=np.array([1, 2, 3])), "train", r"classes has dtype int64"),
        (
            lambda a: a.update(y_test=a["y_test"] + 5, classes=np.array(["a", "b", "c"])),
            "test",
            r"y_test holds labels 5..7, but the file's classes array names 3 classes",
        ),
    ],
)
def test_bad_npz_is_rejected_with_a_clear_message(tmp_path, mutate, split, message):
    arrays = small_arrays()
    mutate(arrays)
    save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        load_dataset("bad", split, data_dir=tmp_path)


def test_not_an_npz_and_pickled_arrays_are_rejected(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="is not a .npz archive"):
        load_dataset("junk", data_dir=tmp_path)
    arrays = small_arrays()
    save_npz(tmp_path / "obj.npz", **arrays, classes=np.array(["a", "b", "c"], dtype=object))
    with pytest.raises(ValueError, match="object arrays are refused"):
        load_dataset("obj", data_dir=tmp_path)


def test_known_dataset_with_other_content_is_rejected(tmp_path):
    save_npz(tmp_path / "mnist.npz", **tiny_idx_arrays(), classes=np.array(list("0123456789")))
    with pytest.raises(ValueError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "mnist.npz") in msg
    assert DATASETS["mnist"].content_sha256 in msg
    assert content_sha256(*tiny_idx_arrays().values()) in msg
    assert "fisherscope data download mnist --force" in msg


def test_known_dataset_without_digest_checks_shapes(tmp_path):
    save_npz(tmp_path / "fashion_mnist.npz", **tiny_idx_arrays())
    with pytest.raises(ValueError, match=r"has x_train \(60000,28,28\).*subset or another dataset"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_missing_known_file_says_what_to_put_where(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    msg = str(info.value)
    assert f"expected the file mnist.npz at {tmp_path / 'mnist.npz'}" in msg
    assert f"`fisherscope data download mnist --data-dir {tmp_path}`" in msg
    for rf in DATASETS["mnist"].raw_files:
        assert f"https://ossci-datasets.s3.amazonaws.com/mnist/{rf.filename}" in msg
        assert rf.md5 in msg
    assert f"--raw-dir {tmp_path / 'raw' / 'mnist'}" in msg
    with pytest.raises(
        DatasetNotFoundError,
        match=r"cifar-10-python\.tar\.gz  https://www\.cs\.toronto\.edu/~kriz/cifar-10-python\.tar\.gz",
    ):
        load_dataset("cifar10", data_dir=tmp_path)


# ----------------------------------------------------------------------------- real MNIST


@needs_real_mnist
def test_real_mnist_class_counts_and_digest():
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.y).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(test.y).tolist() == MNIST_TEST_COUNTS
    assert train.checksum == test.checksum == DATASETS["mnist"].content_sha256
    assert train.meta["verified"] and 0 <= float(test.x.min()) and float(test.x.max()) == 1


@needs_real_mnist
def test_real_mnist_rewritten_is_accepted_and_altered_is_rejected(tmp_path):
    with np.load(REAL_MNIST) as f:
        arrays = {k: f[k] for k in f.files}
    save_npz(tmp_path / "mnist.npz", compressed=False, **arrays)  # other bytes, same content
    ds = load_dataset("mnist", "test", data_dir=tmp_path)
    assert ds.meta["verified"] and ds.checksum == DATASETS["mnist"].content_sha256
    arrays["x_train"][123, 14, 14] ^= 0xFF
    other = tmp_path / "other"
    other.mkdir()
    save_npz(other / "mnist.npz", compressed=False, **arrays)
    with pytest.raises(
        ValueError,
        match=r"content sha256 is [0-9a-f]{64}, expected " + DATASETS["mnist"].content_sha256,
    ):
        load_dataset("mnist", "test", data_dir=other)


@needs_real_mnist
def test_real_mnist_converted_from_idx_has_the_known_digest(tmp_path, monkeypatch):
    # Our gz bytes differ from the published ones, so only the raw md5s are replaced; the
    # known content digest and counts of the registry stay in force.
    with np.load(REAL_MNIST) as f:
        arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    files = write_idx_raw(tmp_path / "raw", arrays, compresslevel=1)
    monkeypatch.setitem(DATASETS, "mnist", replace(DATASETS["mnist"], raw_files=files))
    path = download_dataset("mnist", tmp_path / "out", raw_dir=tmp_path / "raw")
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["content_sha256"] == DATASETS["mnist"].content_sha256
    assert record["content_verified"] is True
    assert load_dataset("mnist", "test", data_dir=tmp_path / "out").meta["verified"]


# ----------------------------------------------------------------------------- idx


def test_read_idx_parses_and_rejects(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx_gz(tmp_path / "a.gz", arr), magic=2051), arr)
    labels = np.array([3, 1, 4], np.uint8)
    assert np.array_equal(read_idx(write_idx_gz(tmp_path / "l.gz", labels), magic=2049), labels)
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        read_idx(tmp_path / "l.gz", magic=2051)
    (tmp_path / "raw").write_bytes(b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") * 3 + b"\x00" * 7)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(tmp_path / "raw")
    (tmp_path / "bad.gz").write_bytes(b"plain bytes")
    with pytest.raises(ValueError, match="cannot decompress"):
        read_idx(tmp_path / "bad.gz")


def _check_converted(path: Path, arrays: dict[str, np.ndarray], data_dir: Path, name: str) -> None:
    assert path == data_dir / f"{name}.npz"
    with np.load(path, allow_pickle=False) as f:
        for k, v in arrays.items():
            assert f[k].dtype == np.uint8 and np.array_equal(f[k], v), k
    record = json.loads((data_dir / f"{name}.json").read_text())
    assert record["npz_sha256"] == npz_mod.file_sha256(path)
    assert record["content_sha256"] == content_sha256(*arrays.values())
    spec = DATASETS[name]
    names = {s["file"] for s in record["sources"]}
    assert names in (
        {rf.filename for rf in spec.raw_files},
        {rf.filename for rf in spec.extracted_files},
    )
    assert all(len(s["md5"]) == 32 and len(s["sha256"]) == 64 for s in record["sources"])
    assert record["created"] and record["n_train"] == len(arrays["y_train"])
    assert not [n for n in leftovers(data_dir) if n.startswith(".")]  # no temp files left


def test_idx_conversion_from_raw_dir_and_file_mirror(tmp_path, monkeypatch):
    arrays = tiny_idx_arrays()
    raw = tmp_path / "raw"
    files = write_idx_raw(raw, arrays)
    override_spec(monkeypatch, "mnist", raw_files=files, n_train=6, n_test=4)

    out = tmp_path / "out"
    path = download_dataset("mnist", out, raw_dir=raw)
    _check_converted(path, arrays, out, "mnist")
    ds = load_dataset("mnist", "test", data_dir=out)
    assert ds.x.shape == (4, 1, 28, 28) and ds.classes == tuple("0123456789")
    assert torch.equal(ds.y, torch.from_numpy(arrays["y_test"]).long())
    assert ds.meta["provenance"]["sources"][0]["from"] == str(raw / files[0].filename)
    assert raw.is_dir() and len(leftovers(raw)) == 4  # the user's raw files are untouched

    out2 = tmp_path / "out2"
    path2 = download_dataset("mnist", out2, mirror=raw.as_uri())
    _check_converted(path2, arrays, out2, "mnist")
    record = json.loads((out2 / "mnist.json").read_text())
    assert record["sources"][0]["from"] == raw.as_uri() + "/" + files[0].filename
    assert load_dataset("mnist", data_dir=out2).checksum == ds.checksum

    out3 = tmp_path / "out3"  # a plain folder works as a mirror too
    download_dataset("mnist", out3, mirror=str(raw))
    assert (out3 / "mnist.npz").is_file()


def test_existing_file_is_kept_unless_forced(tmp_path, monkeypatch):
    arrays = tiny_idx_arrays()
    raw = tmp_path / "raw"
    override_spec(
        monkeypatch, "fashion_mnist", raw_files=write_idx_raw(raw, arrays), n_train=6, n_test=4
    )
    path = download_dataset("fashion_mnist", tmp_path, raw_dir=raw)
    stamp = path.stat().st_mtime_ns
    assert download_dataset("fashion_mnist", tmp_path, raw_dir=raw) == path
    assert path.stat().st_mtime_ns == stamp
    assert load_dataset("fashion_mnist", data_dir=tmp_path).classes[0] == "T-shirt/top"
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"already exists but is not valid.*--force"):
        download_dataset("fashion_mnist", tmp_path, raw_dir=raw)
    download_dataset("fashion_mnist", tmp_path, raw_dir=raw, force=True)
    assert load_dataset("fashion_mnist", "test", data_dir=tmp_path).x.shape == (4, 1, 28, 28)


def test_wrong_checksum_in_raw_dir_leaves_nothing(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    files = write_idx_raw(raw, tiny_idx_arrays())
    bad = RawFile(files[2].filename, "0" * 32, files[2].role)
    override_spec(monkeypatch, "mnist", raw_files=(*files[:2], bad, files[3]), n_train=6, n_test=4)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as info:
        download_dataset("mnist", out, raw_dir=raw)
    msg = str(info.value)
    assert str(raw / files[2].filename) in msg and "0" * 32 in msg and files[2].md5 in msg
    assert leftovers(out) == []


def test_wrong_checksum_from_mirror_deletes_the_download(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    files = write_idx_raw(raw, tiny_idx_arrays())
    bad = RawFile(files[0].filename, "f" * 32, files[0].role)
    override_spec(monkeypatch, "mnist", raw_files=(bad, *files[1:]), n_train=6, n_test=4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(
        ValueError,
        match=rf"checksum mismatch for {files[0].filename}.*md5 {files[0].md5}, expected f{{32}}",
    ):
        download_dataset("mnist", out, mirror=raw.as_uri())
    assert leftovers(out) == ["keep.txt"]


def test_unreachable_mirror_and_missing_raw_files(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(
        ConnectionError, match=r"(?s)could not download train-images-idx3-ubyte\.gz.*Offline: put"
    ):
        download_dataset("mnist", out, mirror=(tmp_path / "nowhere").as_uri())
    assert leftovers(out) == []
    (tmp_path / "raw").mkdir()
    with pytest.raises(
        DatasetNotFoundError, match=r"lacks train-images-idx3-ubyte\.gz.*t10k-labels"
    ):
        download_dataset("mnist", out, raw_dir=tmp_path / "raw")
    with pytest.raises(ValueError, match="either mirror"):
        download_dataset("mnist", out, mirror="file:///x", raw_dir=tmp_path)
    with pytest.raises(ValueError, match="ships with scikit-learn"):
        download_dataset("digits", out)
    with pytest.raises(ValueError, match="downloadable datasets: mnist, fashion_mnist, cifar10"):
        download_dataset("imagenet", out)


def test_wrong_counts_are_rejected_before_writing(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    override_spec(
        monkeypatch, "mnist", raw_files=write_idx_raw(raw, tiny_idx_arrays()), n_train=7, n_test=4
    )
    with pytest.raises(ValueError, match=r"incomplete or another dataset"):
        download_dataset("mnist", tmp_path / "out", raw_dir=raw)
    assert leftovers(tmp_path / "out") == []


# ----------------------------------------------------------------------------- CIFAR


def test_cifar_batch_layout_is_chw_rows():
    x = np.zeros((1, 32, 32, 3), np.uint8)
    x[0, 1, 2] = (10, 20, 30)  # pixel (row 1, col 2): R, G, B
    rows = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(1, 3072)
    assert rows[0, 0 * 1024 + 1 * 32 + 2] == 10 and rows[0, 2 * 1024 + 34] == 30
    got, labels = read_cifar_batch(cifar_batch_bytes(x, np.array([7])))
    assert got.shape == (1, 32, 32, 3) and np.array_equal(got, x) and labels.tolist() == [7]


def test_cifar_batch_refuses_foreign_pickles():
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(ValueError, match=r"refusing global"):
        read_cifar_batch(pickle.dumps({"data": Evil()}, protocol=2), "evil")
    with pytest.raises(ValueError, match=r"expected uint8 \(N, 3072\)"):
        read_cifar_batch(pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))


def test_cifar_conversion_from_archive_mirror_and_folder(tmp_path, monkeypatch):
    arrays = tiny_cifar_arrays()
    blobs = cifar_blobs(arrays)
    archive = write_cifar_tar(tmp_path / "raw" / "cifar-10-python.tar.gz", blobs)
    extracted = write_cifar_folder(tmp_path / "extracted" / "cifar-10-batches-py", blobs)
    override_spec(
        monkeypatch,
        "cifar10",
        raw_files=(archive,),
        extracted_files=extracted,
        n_train=15,
        n_test=4,
    )

    for i, kwargs in enumerate(
        [
            {"raw_dir": tmp_path / "raw"},
            {"mirror": (tmp_path / "raw").as_uri()},
            {"raw_dir": tmp_path / "extracted"},  # finds the cifar-10-batches-py subfolder
        ]
    ):
        out = tmp_path / f"out{i}"
        path = download_dataset("cifar10", out, **kwargs)
        _check_converted(path, arrays, out, "cifar10")
        with np.load(path) as f:
            assert tuple(f["classes"]) == CIFAR_NAMES  # names from batches.meta
        ds = load_dataset("cifar10", "train", data_dir=out)
        assert ds.x.shape == (15, 3, 32, 32) and ds.in_channels == 3
        assert torch.equal(
            ds.x[4, :, 7, 9] * 255, torch.from_numpy(arrays["x_train"][4, 7, 9]).float()
        )

    bad = tmp_path / "extracted" / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(bad.read_bytes() + b"x")
    with pytest.raises(ValueError, match=r"test_batch: md5 [0-9a-f]{32}, expected"):
        download_dataset("cifar10", tmp_path / "out9", raw_dir=tmp_path / "extracted")
    assert leftovers(tmp_path / "out9") == []


# ----------------------------------------------------------------------------- listing


def test_list_datasets(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    override_spec(
        monkeypatch, "mnist", raw_files=write_idx_raw(raw, tiny_idx_arrays()), n_train=6, n_test=4
    )
    download_dataset("mnist", tmp_path, raw_dir=raw)
    save_npz(tmp_path / "toy.npz", **small_arrays(), classes=np.array(["a", "b", "c"]))
    (tmp_path / "broken.npz").write_bytes(b"nope")
    (tmp_path / "cifar10.npz").write_bytes(b"nope")
    rows = {r.name: r for r in list_datasets(tmp_path)}
    assert list(rows) == ["digits", "mnist", "fashion_mnist", "cifar10", "cifar10_jpeg", "broken", "toy"]
    assert all(isinstance(r, DatasetInfo) for r in rows.values())
    assert (
        rows["digits"].available
        and rows["digits"].kind == "builtin"
        and rows["digits"].n_test == 450
    )
    assert rows["digits"].checksum == load_dataset("digits").checksum
    m = rows["mnist"]
    assert m.available and m.n_train == 6 and m.path == tmp_path / "mnist.npz"
    assert m.source.startswith("converted") and str(raw) in m.source
    assert m.checksum == load_dataset("mnist", data_dir=tmp_path).checksum
    f = rows["fashion_mnist"]
    assert not f.available and f.error is None and f.path == tmp_path / "fashion_mnist.npz"
    assert "fisherscope data download fashion_mnist" in f.source and f.n_train == 60000
    assert not rows["cifar10"].available and "not a .npz archive" in rows["cifar10"].error
    assert not rows["broken"].available and rows["broken"].kind == "custom"
    t = rows["toy"]
    assert (
        t.available and t.kind == "custom" and (t.n_train, t.n_test, t.num_classes) == (20, 10, 3)
    )
    assert t.image_shape == (3, 5, 4)
    row = t.as_row()
    assert row["status"] == "available" and row["train"] == "20" and row["shape"] == "3x5x4"
    assert rows["cifar10"].as_row()["status"] == "invalid"
    fast = {r.name: r for r in list_datasets(tmp_path, verify=False)}
    assert fast["toy"].available and fast["toy"].checksum is None


def test_list_datasets_on_missing_folder(tmp_path):
    rows = list_datasets(tmp_path / "does-not-exist")
    assert [r.name for r in rows] == list(DATASETS)
    assert [r.available for r in rows] == [True, False, False, False, False]


# ----------------------------------------------------------------------------- data_dir


def test_data_dir_precedence(tmp_path, monkeypatch):
    home, env, arg = tmp_path / "home", tmp_path / "env", tmp_path / "arg"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("FISHERSCOPE_DATA", raising=False)
    assert resolve_data_dir() == home / ".cache" / "fisherscope" / "data"
    monkeypatch.setenv("FISHERSCOPE_DATA", str(env))
    assert resolve_data_dir() == env
    assert resolve_data_dir(arg) == arg

    for folder, seed in ((env, 1), (arg, 2)):
        folder.mkdir()
        save_npz(folder / "toy.npz", **small_arrays(seed=seed))
    from_env = load_dataset("toy")
    from_arg = load_dataset("toy", data_dir=arg)
    assert from_env.source == str(env / "toy.npz") and from_arg.source == str(arg / "toy.npz")
    assert from_env.checksum != from_arg.checksum
    with pytest.raises(DatasetNotFoundError, match=r"from \$FISHERSCOPE_DATA"):
        load_dataset("cifar10")
    monkeypatch.delenv("FISHERSCOPE_DATA")
    with pytest.raises(DatasetNotFoundError, match=r"the default; set \$FISHERSCOPE_DATA") as info:
        load_dataset("cifar10")
    assert str(home / ".cache" / "fisherscope" / "data" / "cifar10.npz") in str(info.value)
