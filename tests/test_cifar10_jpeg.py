"""cifar10_jpeg, CIFAR-10 (JPEG q75 copy): its registry entry, file check, presets and config.

The dataset is an approximation of CIFAR-10 decoded from quality-75 JPEGs, known only as one
local reference file. Every test but the last writes its own tiny files; the last checks the
real file and is skipped where it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _rerender import assert_rerenders_from_the_store
from data_helpers import override_spec
from fisherscope.cli import app
from fisherscope.data import ALIASES, DATASETS, download_dataset, list_datasets, load_dataset
from fisherscope.data._npz import file_sha256
from fisherscope.data.registry import dataset_label, get_spec
from fisherscope.exceptions import DatasetNotFoundError
from fisherscope.experiments import Context, load_config, run_experiment
from fisherscope.training import DEFAULT_TRAINING, pick_preset, resolve_preset, resolve_training

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
LABEL = "CIFAR-10 (JPEG q75 copy)"
#: The reference file's sha256, as shared/datasets/MANIFEST.md records it.
FILE_SHA256 = "2826c8f0dd13f5ba7ad4d807b7d62a486cf8c8953c397bbc05297a736e7db2bc"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _real_file() -> Path | None:
    for folder in (os.environ.get("FISHERSCOPE_DATA"), ROOT.parent / "shared" / "datasets"):
        if folder and (Path(folder) / "cifar10_jpeg.npz").is_file():
            return Path(folder) / "cifar10_jpeg.npz"
    return None


REAL = _real_file()


def _colour_coded(n_train: int, n_test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Cifar-shaped uint8 images whose class is their colour (a tiny net learns it in seconds)."""
    levels = np.array([30, 128, 225])
    colours = np.array([[levels[i // 9 % 3], levels[i // 3 % 3], levels[i % 3]] for i in (0, 4, 8, 10, 14, 16, 20, 22, 24, 26)])
    rng = np.random.default_rng(seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 10
        x = colours[y][:, None, None, :] + rng.integers(-20, 21, (n, 32, 32, 3))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.uint8)

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "classes": np.array(CIFAR_CLASSES)}


def _fake_file(folder: Path, n_train: int = 20, n_test: int = 10) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cifar10_jpeg.npz"
    np.savez_compressed(path, **_colour_coded(n_train, n_test))
    return path


# ----------------------------------------------------------------------------- registry


def test_registry_entry_is_the_jpeg_copy_and_never_cifar10():
    spec = DATASETS["cifar10_jpeg"]
    assert spec.name == "cifar10_jpeg" and spec.filename == "cifar10_jpeg.npz"
    assert spec.label == spec.display_name == spec.title == LABEL == dataset_label("cifar10_jpeg")
    assert spec.file_sha256 == (FILE_SHA256,)
    assert spec.content_sha256 is None or len(spec.content_sha256) == 64
    assert spec.classes == CIFAR_CLASSES and spec.image_shape == (3, 32, 32)
    assert (spec.n_train, spec.n_test) == (50000, 10000)
    assert spec.urls == () and spec.raw_files == () and spec.extracted_files == ()
    assert spec.local_only and not spec.downloadable
    assert "approximation" in spec.note and "not byte-exact" in spec.note and "JPEG" in spec.note
    # the exact CIFAR-10 stays its own entry: no alias leads from one to the other
    exact = DATASETS["cifar10"]
    assert exact.name == "cifar10" and exact.label == "CIFAR-10" and not exact.note
    assert exact.file_sha256 != spec.file_sha256 and exact.downloadable
    assert get_spec("cifar10_jpeg") is spec and get_spec("CIFAR10_JPEG") is spec and get_spec("cifar10-jpeg") is spec
    for name in ("cifar10", "cifar-10", "cifar_10", "CIFAR-10"):
        assert get_spec(name).name == "cifar10"
    assert all(target != "cifar10" for alias, target in ALIASES.items() if "jpeg" in alias)
    assert all("jpeg" not in alias for alias, target in ALIASES.items() if target == "cifar10")
    assert dataset_label("cifar10") == "CIFAR-10" and dataset_label("my_own") == "my_own"


def test_it_cannot_be_downloaded_and_a_missing_file_says_where_it_comes_from(tmp_path):
    with pytest.raises(ValueError, match=r"cifar10_jpeg.*approximation of CIFAR-10.*no published source"):
        download_dataset("cifar10_jpeg", tmp_path)
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10_jpeg", "test", data_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar10_jpeg.npz") in msg and FILE_SHA256 in msg and "not byte-exact" in msg
    assert "fisherscope data download cifar10_jpeg" not in msg
    row = {r.name: r for r in list_datasets(tmp_path)}["cifar10_jpeg"]
    assert not row.available and row.label == LABEL and row.as_row()["label"] == LABEL
    assert "approximation of CIFAR-10" in row.source and "data download" not in row.source


# ----------------------------------------------------------------------------- the file check


def test_a_wrong_file_under_the_name_is_rejected_with_expected_got_and_fix(tmp_path, monkeypatch):
    path = _fake_file(tmp_path / "data")
    monkeypatch.setenv("FISHERSCOPE_DATA", str(path.parent))
    spec = DATASETS["cifar10_jpeg"]
    expected = spec.content_sha256 or FILE_SHA256
    with pytest.raises(ValueError) as err:
        load_dataset("cifar10_jpeg", "train")
    msg = str(err.value)
    assert f"{path} is not the canonical {LABEL}" in msg
    assert f"expected {expected}" in msg and file_sha256(path) in msg
    assert "Fix: replace it with the reference file cifar10_jpeg.npz" in msg and FILE_SHA256 in msg
    assert "cifar10_jpeg_custom.npz" in msg  # how to keep one's own variant
    row = {r.name: r for r in list_datasets()}["cifar10_jpeg"]
    assert not row.available and row.as_row()["status"] == "invalid" and "not the canonical" in row.error
    # the same file under another name is a custom dataset and loads
    (path.parent / "my_cifar.npz").write_bytes(path.read_bytes())
    assert load_dataset("my_cifar", "test").x.shape == (10, 3, 32, 32)


def test_without_a_content_digest_the_file_sha256_alone_decides(tmp_path):
    path = _fake_file(tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        override_spec(mp, "cifar10_jpeg", file_sha256=(FILE_SHA256,), n_train=20, n_test=10)
        with pytest.raises(ValueError, match=f"file sha256 is {file_sha256(path)}, expected {FILE_SHA256}"):
            load_dataset("cifar10_jpeg", "test", data_dir=tmp_path)
    with pytest.MonkeyPatch.context() as mp:  # the same file, registered as the known one, loads verified
        override_spec(mp, "cifar10_jpeg", file_sha256=(file_sha256(path),), n_train=20, n_test=10)
        ds = load_dataset("cifar10_jpeg", "test", data_dir=tmp_path)
        assert ds.meta["verified"] and ds.x.shape == (10, 3, 32, 32) and ds.classes == CIFAR_CLASSES


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize("arch", ["vgg_small", "vgg11", "resnet18"])
def test_presets_resolve_for_the_jpeg_copy(arch):
    preset = f"{arch}@cifar10_jpeg"
    assert preset in DEFAULT_TRAINING
    assert pick_preset(arch, "cifar10_jpeg") == preset
    assert pick_preset(arch, "cifar10") == arch  # the exact CIFAR-10 keeps the architecture's own
    jpeg, exact = resolve_training(preset), resolve_training(arch)
    assert jpeg["dataset"] == "cifar10_jpeg" and exact["dataset"] == "cifar10"
    assert jpeg["augment"] == "crop_flip" and jpeg["optimizer"] == "sgd" and jpeg["lr_schedule"] == "cosine"
    assert resolve_preset(arch, "cifar10_jpeg") == resolve_preset(preset) == resolve_preset(arch)


def test_cli_train_picks_the_jpeg_preset(tmp_path, monkeypatch):
    import fisherscope.experiments.common as common
    import fisherscope.training as training

    seen = {}

    def fake_load(name, split, ctx):
        seen.setdefault("datasets", []).append((name, split))
        return SimpleNamespace(name=name)

    def fake_train(arch, train, **kwargs):
        seen.update(arch=arch, kwargs=kwargs)
        return SimpleNamespace(metrics={"train_accuracy": 0.5, "test_accuracy": 0.5, "wall_time_s": 0.0},
                               from_cache=False, config={}, checkpoint=tmp_path / "ckpt")

    monkeypatch.setattr(common, "load_split", fake_load)
    monkeypatch.setattr(training, "train_model", fake_train)
    res = CliRunner().invoke(app, ["train", "vgg_small", "--dataset", "cifar10_jpeg", "--quiet",
                                   "--cache-dir", str(tmp_path)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert seen["datasets"] == [("cifar10_jpeg", "train"), ("cifar10_jpeg", "test")]
    expected = resolve_preset("vgg_small@cifar10_jpeg")
    assert seen["arch"] == "vgg_small"
    assert {k: seen["kwargs"][k] for k in expected} == expected


# ----------------------------------------------------------------------------- the config


def test_zhao_table2_cifar10_jpeg_config_smoke(tmp_path, monkeypatch):
    """The config runs end to end on a tiny cifar-shaped stand-in (registered in place of the real
    file for this test), with lenet5 instead of vgg_small so that training takes seconds."""
    path = _fake_file(tmp_path / "data", n_train=120, n_test=40)
    override_spec(monkeypatch, "cifar10_jpeg", file_sha256=(file_sha256(path),), n_train=120, n_test=40)
    cfg = load_config(ROOT / "configs" / "zhao-table2-cifar10-jpeg.toml",
                      ["arch=lenet5", "preset=lenet5", "n_samples=10", "batch_size=10", "tol=0.05"])
    assert cfg.dataset == "cifar10_jpeg" and cfg.hi == 6.0
    assert cfg.paper == {"fgm": {"mean": 1.11, "rate": 95.21}, "ossa": {"mean": 1.06, "rate": 97.85}}
    run = run_experiment(cfg, tmp_path / "runs", context=Context(data_dir=path.parent, progress=False))
    by_name = {cell.split("#")[0]: v for cell, v in run.results().items()}
    for key in ("fgm", "ossa"):
        r = by_name[f"table2/{key}"]
        assert r["n"] == 10 and 0 < r["n_correct"] <= 10 and 0 <= r["fooling_rate"] <= 1
    report = (run.dir / "report.md").read_text()
    assert f"Zhao et al. Table 2 (CIFAR-10 column) on {LABEL}" in report
    assert f"Data: {LABEL} (dataset `cifar10_jpeg`)" in report
    assert f"on {LABEL} [`cifar10_jpeg`]" in report and "| 1.11 | 95.2 |" in report  # paper FGM, 1 decimal
    assert assert_rerenders_from_the_store(run.dir, tmp_path, monkeypatch) == report


def test_the_original_table2_config_is_unchanged_for_mnist():
    cfg = load_config(ROOT / "configs" / "zhao-table2.toml")
    assert (cfg.arch, cfg.dataset, cfg.preset) == ("lenet5", "mnist", None)


# ----------------------------------------------------------------------------- the real file


@pytest.mark.skipif(REAL is None, reason="cifar10_jpeg.npz is not in $FISHERSCOPE_DATA or ../shared/datasets")
def test_the_real_file_is_the_registered_one():
    assert REAL is not None
    spec = DATASETS["cifar10_jpeg"]
    assert REAL.stat().st_size == 170_977_066 and file_sha256(REAL) == FILE_SHA256
    test = load_dataset("cifar10_jpeg", "test", data_dir=REAL.parent)
    assert test.meta["verified"] and test.classes == CIFAR_CLASSES
    assert spec.content_sha256 is None or test.checksum == spec.content_sha256
    assert test.x.shape == (10000, 3, 32, 32) and test.x.dtype == torch.float32
    assert torch.bincount(test.y).tolist() == [1000] * 10
    assert test.y[:20].tolist() == list(range(10)) * 2  # classes interleaved
    row = {r.name: r for r in list_datasets(REAL.parent)}["cifar10_jpeg"]
    assert row.available and row.verified and row.label == LABEL and "reference file" in row.source
