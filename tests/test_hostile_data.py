"""Hostile dataset files: every stray label is an error naming it, and `data list` says why."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from fisherscope.cli import app
from fisherscope.data import list_datasets, load_dataset


def _write(path, y_train, y_test, classes=None):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (len(y_train), 8, 8), dtype=np.uint8),
        "y_train": np.asarray(y_train, dtype=np.int64),
        "x_test": rng.integers(0, 256, (len(y_test), 8, 8), dtype=np.uint8),
        "y_test": np.asarray(y_test, dtype=np.int64),
    }
    if classes is not None:
        arrays["classes"] = np.array(classes)
    np.savez(path, **arrays)
    return path


def test_one_stray_label_does_not_set_the_class_count(tmp_path):
    _write(tmp_path / "mine.npz", [0, 1, 2, 0, 1, 2], [0, 1, 3_000_000])
    with pytest.raises(ValueError, match=r"contiguous integers 0\.\.K-1.*3000000.*classes="):
        load_dataset("mine", "test", data_dir=tmp_path)


def test_a_huge_label_fails_fast_with_a_message(tmp_path):
    _write(tmp_path / "mine.npz", [0, 1, 10**9], [0, 1])
    with pytest.raises(ValueError, match="contiguous"):
        load_dataset("mine", "train", data_dir=tmp_path)


def test_labels_are_checked_against_the_classes_array_in_both_splits(tmp_path):
    _write(tmp_path / "mine.npz", [0, 1, 2], [0, 1, 5], classes=["a", "b", "c"])
    assert load_dataset("mine", "train", data_dir=tmp_path).num_classes == 3
    with pytest.raises(ValueError, match=r"y_test holds labels 0\.\.5, but .* 3 classes .*e\.g\. \[5\]"):
        load_dataset("mine", "test", data_dir=tmp_path)


def test_contiguous_labels_without_classes_still_load(tmp_path):
    _write(tmp_path / "mine.npz", [0, 1, 2, 3], [3, 2])
    ds = load_dataset("mine", "test", data_dir=tmp_path)
    assert ds.num_classes == 4 and ds.classes == ("0", "1", "2", "3")


def test_data_list_shows_unloadable_files_as_unavailable_with_the_reason(tmp_path):
    _write(tmp_path / "bad.npz", [0, 1, 2], [0, 7])
    _write(tmp_path / "good.npz", [0, 1], [1, 0])
    rows = {r.name: r for r in list_datasets(tmp_path)}
    assert rows["good"].available and not rows["bad"].available
    assert "contiguous" in rows["bad"].error
    out = CliRunner().invoke(app, ["data", "list", "--data-dir", str(tmp_path)], catch_exceptions=False,
                             env={"COLUMNS": "300"})
    assert out.exit_code == 0 and "cannot load" in out.output
