"""A cached checkpoint is verified before use: damaged weights or edited metrics are refused."""

from __future__ import annotations

import os

import pytest
import torch

from fisherscope._io import WriteError, describe_write_error
from fisherscope.data import load_dataset
from fisherscope.exceptions import CheckpointError
from fisherscope.models import load_checkpoint
from fisherscope.training import train_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("ckpt")
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    tm = train_model("digits_cnn", tr, test_dataset=te, epochs=1, lr=3e-3, batch_size=64, seed=0,
                     cache_dir=cache, progress=False)
    return tm, tr, te, cache


def _retrain(tiny):
    tm, tr, te, cache = tiny
    return train_model("digits_cnn", tr, test_dataset=te, epochs=1, lr=3e-3, batch_size=64, seed=0,
                       cache_dir=cache, progress=False)


def _tamper(path, fn):
    ckpt = torch.load(path, weights_only=True)
    fn(ckpt)
    torch.save(ckpt, path)


@pytest.mark.parametrize("damage", ["flip_weight", "nan_weights", "edit_accuracy"])
def test_a_damaged_or_edited_checkpoint_is_refused_and_left_in_place(tiny, damage):
    tm = tiny[0]
    path = tm.checkpoint_path
    original = path.read_bytes()
    try:
        def flip(ckpt):
            name = next(iter(ckpt["state_dict"]))
            w = ckpt["state_dict"][name]
            w.view(-1)[0] = -w.view(-1)[0] + 0.5

        def nan(ckpt):
            for v in ckpt["state_dict"].values():
                if v.is_floating_point():
                    v.fill_(float("nan"))

        def edit(ckpt):
            ckpt["metrics"]["test_accuracy"] = 1.0

        _tamper(path, {"flip_weight": flip, "nan_weights": nan, "edit_accuracy": edit}[damage])
        damaged = path.read_bytes()
        with pytest.raises(CheckpointError, match=str(path.name)):
            load_checkpoint(path)
        with pytest.raises(CheckpointError, match="Delete it to retrain"):
            _retrain(tiny)
        assert path.read_bytes() == damaged  # never overwritten silently
    finally:
        path.write_bytes(original)
    assert _retrain(tiny).from_cache


def test_an_intact_checkpoint_still_loads(tiny):
    tm = tiny[0]
    again = load_checkpoint(tm.checkpoint_path)
    assert again.metrics["test_accuracy"] == tm.metrics["test_accuracy"]


def test_write_errors_name_the_cause(tmp_path):
    import errno

    full = describe_write_error(tmp_path / "a.pt", OSError(errno.ENOSPC, "No space left on device"))
    assert "no space left on the device" in full and "a.pt" in full
    torch_full = describe_write_error(tmp_path / "a.pt", RuntimeError("[enforce fail] unexpected pos 78976 vs 78928"))
    assert "no space left" in torch_full
    ro = describe_write_error(tmp_path / "x" / "a.pt", PermissionError(errno.EACCES, "Permission denied"))
    assert "read-only or not writable" in ro
    blocker = tmp_path / "file"
    blocker.write_text("")
    notdir = describe_write_error(blocker / "a.pt", NotADirectoryError(errno.ENOTDIR, "Not a directory"))
    assert "is a file, not a directory" in notdir


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_saving_into_a_read_only_folder_is_a_clear_error(tmp_path):
    from fisherscope.models.checkpoint import save_atomic

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(WriteError, match="read-only or not writable"):
            save_atomic({"a": 1}, ro / "x.pt")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_saving_under_a_file_is_a_clear_error_and_leaves_nothing(tmp_path):
    from fisherscope.models.checkpoint import save_atomic

    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    with pytest.raises(WriteError, match="is a file, not a directory"):
        save_atomic({"a": 1}, blocker / "sub" / "x.pt")
    assert blocker.read_text() == "not a folder"


def test_a_full_disk_during_save_is_named_and_leaves_no_partial_file(tmp_path, monkeypatch):
    from fisherscope.models import checkpoint as ck

    def torch_save_on_a_full_disk(obj, fh):
        fh.write(b"x" * 100)  # torch.save had started writing when the disk filled up
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 78976 vs 78928")

    monkeypatch.setattr(ck.torch, "save", torch_save_on_a_full_disk)
    with pytest.raises(WriteError, match=r"could not write the checkpoint .*x\.pt: no space left on the device"):
        ck.save_atomic({"a": 1}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


def test_cli_train_into_a_cache_under_a_file_says_so_without_a_traceback(tmp_path):
    from typer.testing import CliRunner

    from fisherscope.cli import app

    blocker = tmp_path / "cache"
    blocker.write_text("")
    res = CliRunner().invoke(app, ["train", "digits_cnn", "--epochs", "1", "--cache-dir", str(blocker / "sub")],
                             env={"COLUMNS": "300"})
    assert res.exit_code == 1, res.output
    assert "is a file, not a directory" in res.output and "Traceback" not in res.output
