"""train_model: determinism, the content-addressed cache, resuming, presets, accuracy."""

from __future__ import annotations

import logging
import shutil
import time
import warnings

import numpy as np
import pytest
import torch

import fisherscope.training.loop as training_mod
from fisherscope.data._dataset import ImageDataset
from fisherscope.exceptions import CheckpointError, ModelModeWarning
from fisherscope.models import (
    MODELS,
    compute_key,
    find_normalize,
    list_checkpoints,
    load_checkpoint,
    resolve_cache_dir,
)
from fisherscope.models.checkpoint import FORMAT
from fisherscope.training import (
    DEFAULT_TRAINING,
    PRESETS,
    evaluate_accuracy,
    resolve_preset,
    resolve_training,
    train_model,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ------------------------------------------------------------------------- fixtures


def _dataset(name, split, x, y, k) -> ImageDataset:
    return ImageDataset(
        name=name, split=split, x=torch.as_tensor(x, dtype=torch.float32),
        y=torch.as_tensor(y, dtype=torch.int64), classes=tuple(str(i) for i in range(k)),
        source="tests", checksum=f"{name}-checksum",
    )  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8x8 digits, stratified 75/25 split with random_state=0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    return _dataset("digits", "train", xtr, ytr, 10), _dataset("digits", "test", xte, yte, 10)


@pytest.fixture(scope="module")
def tiny():
    """96 + 32 synthetic 8x8 images in 3 classes whose mean brightness differs."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(128) % 3
    x = (torch.rand(128, 1, 8, 8, generator=g) * 0.5 + y.view(-1, 1, 1, 1) * 0.25).clamp(0, 1)
    return _dataset("tiny", "train", x[:96], y[:96], 3), _dataset("tiny", "test", x[96:], y[96:], 3)


FAST = dict(epochs=2, lr=1e-3, batch_size=32, progress=False)


def _train(data, tmp_path=None, arch="digits_cnn", **kwargs):
    train, test = data
    opts = dict(FAST, test_dataset=test)
    if tmp_path is None:
        opts["cache"] = False
    else:
        opts["cache_dir"] = tmp_path
    opts.update(kwargs)
    return train_model(arch, train, **opts)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------- determinism


def test_same_seed_gives_bitwise_identical_weights(tiny):
    a = _train(tiny, model_kwargs={"dropout": 0.2}, augment="crop_flip")
    b = _train(tiny, model_kwargs={"dropout": 0.2}, augment="crop_flip")
    assert _same_weights(a.model, b.model)
    assert a.key == b.key
    c = _train(tiny, seed=1, model_kwargs={"dropout": 0.2}, augment="crop_flip")
    assert not _same_weights(a.model, c.model)
    assert c.key != a.key


def test_global_rng_untouched(tiny):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    _train(tiny, model_kwargs={"dropout": 0.2})
    assert torch.equal(torch.get_rng_state(), state)


def test_result_in_eval_mode_with_data_statistics(tiny):
    tm = _train(tiny)
    assert not any(m.training for m in tm.model.modules())
    norm = find_normalize(tm.model)
    x = tiny[0].x.double()
    torch.testing.assert_close(norm.mean.flatten(), x.mean(dim=(0, 2, 3)).float())
    torch.testing.assert_close(norm.std.flatten(), x.std(dim=(0, 2, 3)).float())
    m = tm.metrics
    assert m["epochs"] == 2 and len(m["history"]) == 2
    assert m["train_accuracy"] == evaluate_accuracy(tm.model, tiny[0].x, tiny[0].y)
    assert m["test_accuracy"] == evaluate_accuracy(tm.model, tiny[1].x, tiny[1].y)
    assert m["wall_time_s"] > 0
    assert tm.config["epochs"] == 2 and tm.config["arch"] == "digits_cnn"
    assert tm.model_kwargs["num_classes"] == 3 and tm.model_kwargs["input_size"] == 8
    assert tm.checkpoint_path is None and not tm.from_cache


def test_normalize_false_keeps_identity(tiny):
    tm = _train(tiny, normalize=False, epochs=1)
    norm = find_normalize(tm.model)
    assert torch.equal(norm.mean, torch.zeros_like(norm.mean))
    assert torch.equal(norm.std, torch.ones_like(norm.std))


# ---------------------------------------------------------------------------- cache


def test_cache_hit_returns_identical_model_without_training(tiny, tmp_path, monkeypatch):
    first = _train(tiny, tmp_path)
    assert not first.from_cache
    assert first.checkpoint_path.is_file()
    assert first.checkpoint_path.parent == tmp_path
    assert first.key in first.checkpoint_path.name
    assert not list(tmp_path.glob("*.partial.pt"))  # removed when done

    def no_training(*args, **kwargs):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(training_mod, "_fit", no_training)
    t0 = time.perf_counter()
    second = _train(tiny, tmp_path)
    elapsed = time.perf_counter() - t0
    assert second.from_cache
    assert elapsed < 2.0
    assert second.key == first.key
    assert second.checkpoint_path == first.checkpoint_path
    assert _same_weights(first.model, second.model)
    assert second.metrics["test_accuracy"] == first.metrics["test_accuracy"]
    assert second.config == first.config
    assert not any(m.training for m in second.model.modules())


@pytest.mark.parametrize(
    "change",
    [
        {"epochs": 3},
        {"lr": 2e-3},
        {"batch_size": 16},
        {"seed": 1},
        {"optimizer": "sgd"},
        {"optimizer": "sgd", "momentum": 0.5},
        {"optimizer": "adamw"},
        {"weight_decay": 1e-4},
        {"lr_schedule": "none"},
        {"augment": "crop"},
        {"normalize": False},
        {"model_kwargs": {"activation": "elu"}},
        {"model_kwargs": {"dropout": 0.1}},
    ],
)
def test_any_change_is_a_cache_miss(tiny, tmp_path, change):
    base = _train(tiny, tmp_path, epochs=1)
    opts = {"epochs": 1, **change}
    other = _train(tiny, tmp_path, **opts)
    assert not other.from_cache
    assert other.key != base.key
    assert other.checkpoint_path != base.checkpoint_path


def test_dataset_content_is_part_of_the_key(tiny, tmp_path):
    train, test = tiny
    base = _train(tiny, tmp_path, epochs=1)
    # Same name, checksum and size, different samples: still a different key.
    flipped = _dataset("tiny", "train", train.x.flip(0), train.y.flip(0), 3)
    other = _train((flipped, test), tmp_path, epochs=1)
    assert not other.from_cache and other.key != base.key
    no_test = _train((train, None), tmp_path, epochs=1)
    assert no_test.key != base.key and no_test.metrics["test_accuracy"] is None


def test_equivalent_requests_share_a_key(tiny, tmp_path):
    base = _train(tiny, tmp_path, epochs=1)
    # Explicit defaults, a dataset-derived kwarg, an int learning rate written as float...
    same = _train(
        tiny, tmp_path, epochs=1, lr=0.001,
        model_kwargs={"activation": "relu", "num_classes": 3, "dropout": 0.0},
    )  # fmt: skip
    assert same.from_cache and same.key == base.key
    assert compute_key(base.config) == base.key


#: Cache keys of fixed requests on the ``tiny`` data, recorded before training moved from
#: ``fisherscope.models.training`` to ``fisherscope.training``: a refactor that changes one
#: would orphan every checkpoint already in users' caches (they would silently retrain).
GOLDEN_KEYS = {
    "plain": "e5dc38d42f8534a9435586a50ce2d2881641b586dc3e5565db0f5abe8494fe78",
    "fisher": "ec4a1fa1c5fdc01865e431c52cb8b6f6c593fef3b9ef947f5d72255554e86a78",
    "label_smoothing_init_from": "f8c833895939b9fac214ddf09516b820c3b3531e8aa7d3c9ced8f40f2da2ec64",
    "adversarial": "fcd2e3b437c75b1377c8e0f0c8e843d2ca0ea3f6cc443ef5df3f9dee87a04dca",
}


def test_cache_keys_are_stable(tiny):
    plain = _train(tiny, epochs=1)
    keys = {
        "plain": plain.key,
        "fisher": _train(tiny, epochs=1, defense={"kind": "fisher", "mu": 0.02, "penalty": "softmax_trace"}).key,
        "label_smoothing_init_from": _train(
            tiny, epochs=1, defense={"kind": "label_smoothing", "alpha": 0.1}, init_from=plain
        ).key,
        "adversarial": _train(
            tiny, epochs=1, defense={"kind": "adversarial", "attack": "fgsm", "params": {"eps": 0.1}}
        ).key,
    }
    assert keys == GOLDEN_KEYS, (
        "the checkpoint cache key of a fixed request changed; existing cached checkpoints would "
        "no longer be found. Keep the config that train_model hashes byte-identical (or bump "
        "FORMAT_VERSION deliberately and update GOLDEN_KEYS)."
    )


def test_cache_dir_from_environment(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("FISHERSCOPE_CACHE", str(tmp_path / "env-cache"))
    assert resolve_cache_dir() == tmp_path / "env-cache"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    tm = _train(tiny, None, cache=True, epochs=1)
    assert tm.checkpoint_path.parent == tmp_path / "env-cache"
    monkeypatch.delenv("FISHERSCOPE_CACHE")
    assert resolve_cache_dir().parts[-3:] == (".cache", "fisherscope", "models")


def test_corrupt_checkpoint_raises_and_is_left_untouched(tiny, tmp_path):
    path = _train(tiny, tmp_path, epochs=1).checkpoint_path
    garbage = b"not a checkpoint" * 10
    path.write_bytes(garbage)
    mtime = path.stat().st_mtime_ns
    with pytest.raises(CheckpointError) as info:
        _train(tiny, tmp_path, epochs=1)
    msg = str(info.value)
    assert str(path) in msg and "corrupt" in msg and "Delete it" in msg and "cache_dir" in msg
    assert path.read_bytes() == garbage and path.stat().st_mtime_ns == mtime


def test_truncated_checkpoint_raises(tiny, tmp_path):
    path = _train(tiny, tmp_path, epochs=1).checkpoint_path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        _train(tiny, tmp_path, epochs=1)
    assert len(path.read_bytes()) == len(data) // 2


def test_mismatched_checkpoint_raises_and_is_left_untouched(tiny, tmp_path):
    wanted = _train(tiny, tmp_path, epochs=1)
    other = _train(tiny, tmp_path, epochs=1, seed=5)
    # Put the other request's (valid) checkpoint under this request's file name.
    shutil.copyfile(other.checkpoint_path, wanted.checkpoint_path)
    content = wanted.checkpoint_path.read_bytes()
    with pytest.raises(CheckpointError) as info:
        _train(tiny, tmp_path, epochs=1)
    msg = str(info.value)
    assert str(wanted.checkpoint_path) in msg and "does not match" in msg
    assert other.key in msg and wanted.key in msg
    assert wanted.checkpoint_path.read_bytes() == content


def test_tampered_config_is_detected(tiny, tmp_path):
    path = _train(tiny, tmp_path, epochs=1).checkpoint_path
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["lr"] = 0.5  # stored key no longer hashes the stored config
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="inconsistent"):
        _train(tiny, tmp_path, epochs=1)
    with pytest.raises(CheckpointError, match="inconsistent"):
        load_checkpoint(path)


def test_checkpoint_is_weights_only_loadable(tiny, tmp_path):
    tm = _train(tiny, tmp_path, epochs=1)
    ckpt = torch.load(tm.checkpoint_path, weights_only=True)
    assert ckpt["format"] == FORMAT and ckpt["kind"] == "final"
    assert ckpt["key"] == tm.key and ckpt["arch"] == "digits_cnn"
    assert set(ckpt) >= {"model_kwargs", "config", "metrics", "state_dict", "versions", "created"}
    loaded = load_checkpoint(tm.checkpoint_path)
    assert loaded.from_cache and loaded.key == tm.key
    assert _same_weights(loaded.model, tm.model)
    assert loaded.metrics == ckpt["metrics"]
    x = tiny[1].x
    torch.testing.assert_close(loaded.model(x), tm.model(x))


class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checkpoint(path)


def test_load_checkpoint_errors(tiny, tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    tm = _train(tiny, tmp_path, epochs=1)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tm.checkpoint_path, expected_key="0" * 64)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a fisherscope checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


# --------------------------------------------------------------------------- resume


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize(
    "arch, extra",
    [
        ("digits_cnn", {"model_kwargs": {"dropout": 0.3}, "augment": "crop_flip"}),
        ("convnet_bn", {"optimizer": "sgd", "lr_schedule": "step"}),
    ],
)
def test_interrupted_run_resumes_to_identical_weights(tiny, tmp_path, arch, extra):
    opts = dict(epochs=3, arch=arch, **extra)
    reference = _train(tiny, tmp_path / "a", **opts)

    def stop_after_first(epoch, record):
        if epoch == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        _train(tiny, tmp_path / "b", callback=stop_after_first, **opts)
    partials = list((tmp_path / "b").glob("*.partial.pt"))
    assert len(partials) == 1 and not list((tmp_path / "b").glob(f"{arch}-*[0-9a-f].pt"))
    listed = list_checkpoints(tmp_path / "b")
    assert [(i.status, i.epochs_done, i.epochs) for i in listed] == [("partial", 1, 3)]

    seen = []
    resumed = _train(tiny, tmp_path / "b", callback=lambda e, r: seen.append(e), **opts)
    assert seen == [2, 3]  # epoch 1 was not redone
    assert not resumed.from_cache
    assert resumed.key == reference.key
    assert _same_weights(resumed.model, reference.model)
    assert [h["train_loss"] for h in resumed.metrics["history"]] == [
        h["train_loss"] for h in reference.metrics["history"]
    ]
    assert not list((tmp_path / "b").glob("*.partial.pt"))


def test_corrupt_partial_checkpoint_raises(tiny, tmp_path):
    def stop(epoch, record):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        _train(tiny, tmp_path, callback=stop)
    (partial,) = tmp_path.glob("*.partial.pt")
    partial.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="partial.pt"):
        _train(tiny, tmp_path)
    assert partial.read_bytes() == b"\x00" * 100


def test_list_checkpoints(tiny, tmp_path):
    assert list_checkpoints(tmp_path / "nothing") == []
    a = _train(tiny, tmp_path, epochs=1)
    b = _train(tiny, tmp_path, epochs=1, arch="convnet_bn")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    infos = {i.path.name: i for i in list_checkpoints(tmp_path)}
    assert infos[a.checkpoint_path.name].status == "complete"
    assert infos[a.checkpoint_path.name].arch == "digits_cnn"
    assert infos[a.checkpoint_path.name].test_accuracy == a.metrics["test_accuracy"]
    assert infos[a.checkpoint_path.name].dataset == "tiny"
    assert infos[b.checkpoint_path.name].arch == "convnet_bn"
    assert infos["junk.pt"].status == "corrupt" and "junk.pt" in infos["junk.pt"].error
    assert (tmp_path / "junk.pt").read_bytes() == b"junk"


# ------------------------------------------------------------------ inputs & presets


def test_dataset_by_name_loads_both_splits(tiny, tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(name, split, data_dir=None):
        calls.append((name, split, data_dir))
        return tiny[0] if split == "train" else tiny[1]

    monkeypatch.setattr(training_mod, "load_dataset", fake_load_dataset)
    tm = train_model("digits_cnn", "tiny", cache_dir=tmp_path, data_dir="somewhere", **FAST)
    assert calls == [("tiny", "train", "somewhere"), ("tiny", "test", "somewhere")]
    assert tm.metrics["test_accuracy"] is not None
    direct = _train(tiny, tmp_path)
    assert direct.from_cache and direct.key == tm.key  # the key is about content, not how it came


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"optimizer": "rmsprop"}, ValueError, r"optimizer must be one of 'adam', 'adamw', 'sgd'; got 'rmsprop'"),
        ({"epochs": 0}, ValueError, "epochs must be an integer >= 1"),
        ({"lr": -1.0}, ValueError, "lr must be a finite number > 0"),
        ({"batch_size": 2.5}, ValueError, "batch_size must be an integer"),
        ({"momentum": 0.9}, ValueError, "momentum applies to optimizer='sgd' only"),
        ({"lr_schedule": "exp"}, ValueError, "lr_schedule must be one of"),
        ({"augment": "mixup"}, ValueError, "augment must be one of"),
        ({"seed": -1}, ValueError, "seed must be an integer >= 0"),
        ({"defense": {"kind": "fisher"}}, ValueError, "fisherscope.defenses"),
        ({"model_kwargs": {"width": 3}}, ValueError, "valid keywords"),
        ({"model_kwargs": {"num_classes": 2}}, ValueError, "has 3 classes"),
        ({"model_kwargs": {"in_channels": 3}}, ValueError, "1-channel images"),
        ({"arch": "lenet"}, ValueError, "valid names are"),
        ({"arch": "mnist_cnn@nope"}, ValueError, "unknown training preset 'mnist_cnn@nope'"),
    ],
)
def test_bad_requests(tiny, tmp_path, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        _train(tiny, tmp_path, **kwargs)
    assert not list(tmp_path.glob("*.pt"))


def test_bad_dataset_type(tmp_path):
    with pytest.raises(TypeError, match="ImageDataset"):
        train_model("digits_cnn", torch.zeros(4, 1, 8, 8), cache_dir=tmp_path, **FAST)


def test_divergence_is_reported(tiny, tmp_path):
    with pytest.raises(FloatingPointError, match="diverged"):
        _train(tiny, tmp_path, optimizer="sgd", lr=1e30, lr_schedule="none", epochs=1)
    assert not list(tmp_path.glob("*.pt"))


def test_presets_resolve():
    assert set(PRESETS) == set(DEFAULT_TRAINING)
    for name, preset in PRESETS.items():
        assert preset["arch"] in MODELS and name.split("@")[0] == preset["arch"]
        assert preset["dataset"]
        r = resolve_training(name)
        assert r["epochs"] >= 1 and r["lr"] > 0
        MODELS[preset["arch"]](**preset["model_kwargs"])  # kwargs are valid
    assert resolve_preset("vgg_small", "mnist") == resolve_preset("vgg_small@mnist")
    assert resolve_preset("vgg_small", "cifar10") == resolve_preset("vgg_small")
    paper = resolve_training("mnist_cnn@paper")
    assert paper["arch"] == "mnist_cnn" and paper["dataset"] == "mnist"
    assert paper["epochs"] < resolve_training("mnist_cnn")["epochs"]
    over = resolve_training("lenet5", epochs=3, optimizer="sgd")
    assert over["epochs"] == 3 and over["momentum"] == 0.9
    with pytest.raises(ValueError, match="unknown training setting"):
        resolve_training("lenet5", epoch=3)


def test_preset_defaults_are_used(tiny, tmp_path):
    tm = _train(tiny, tmp_path, epochs=1, lr=None, batch_size=None)
    assert tm.config["lr"] == DEFAULT_TRAINING["digits_cnn"]["lr"]
    assert tm.config["batch_size"] == DEFAULT_TRAINING["digits_cnn"]["batch_size"]


def test_progress_bar_and_logging(tiny, caplog):
    with caplog.at_level(logging.INFO, logger="fisherscope.training"):
        _train(tiny, progress=True, epochs=1)
    assert any("epoch 1/1" in r.getMessage() for r in caplog.records)


def test_evaluate_accuracy(tiny):
    torch.manual_seed(0)
    model = MODELS["digits_cnn"](num_classes=3)
    x, y = tiny[1].x, tiny[1].y
    model.eval()
    expected = (model(x).argmax(1) == y).float().mean().item()
    assert evaluate_accuracy(model, x, y, batch_size=7) == pytest.approx(expected)
    model.train()
    with pytest.warns(ModelModeWarning):
        evaluate_accuracy(model, x, y)
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_accuracy(model.eval(), x, y, batch_size=0)
    with pytest.raises(ValueError):
        evaluate_accuracy(model, x, y[:-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_accuracy(model, x, y)  # eval mode: no warning


# ------------------------------------------------------------------------- accuracy


def test_digits_cnn_reaches_97_percent(digits, tmp_path):
    """The default digits preset: >= 97% test accuracy in a few seconds (2 CPU cores)."""
    train, test = digits
    t0 = time.perf_counter()
    tm = train_model("digits_cnn", train, test_dataset=test, cache_dir=tmp_path, progress=False)
    elapsed = time.perf_counter() - t0
    assert tm.metrics["test_accuracy"] >= 0.97, tm.metrics
    assert tm.metrics["train_accuracy"] >= 0.99
    assert elapsed < 60, f"took {elapsed:.1f}s"


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset, lo, hi",
    [("lenet5", 0.99, 1.0), ("mnist_cnn@paper", 0.980, 0.990)],
)
def test_mnist_presets(preset, lo, hi, tmp_path):
    """MNIST presets reach their documented operating points (docs/training-measurements.md)."""
    from fisherscope.data import load_dataset

    try:
        train = load_dataset("mnist", "train")
        test = load_dataset("mnist", "test")
    except FileNotFoundError as exc:
        pytest.skip(f"MNIST not available: {exc}")
    torch.set_num_threads(2)
    tm = train_model(preset, train, test_dataset=test, cache_dir=tmp_path, progress=False)
    assert lo <= tm.metrics["test_accuracy"] <= hi, tm.metrics["test_accuracy"]


def test_num_threads_is_restored(tiny):
    before = torch.get_num_threads()  # 1, set by the module fixture
    tm = _train(tiny, epochs=1, num_threads=before + 1)
    assert tm.metrics["num_threads"] == before + 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="num_threads"):
        _train(tiny, epochs=1, num_threads=0)


# ---------------------------------------------------------------------- fine-tuning


def test_init_from_fine_tunes_from_the_given_weights(tiny, tmp_path):
    base = _train(tiny, tmp_path)
    scratch = _train(tiny, tmp_path, epochs=1)
    tuned = _train(tiny, tmp_path, epochs=1, init_from=base)
    assert tuned.key not in (scratch.key, base.key)  # the source is part of the key
    assert tuned.config["init_from"] == base.key and "init_from" not in scratch.config
    # with a vanishing learning rate one epoch of fine-tuning keeps the source's weights
    still = _train(tiny, tmp_path, epochs=1, lr=1e-12, init_from=base)
    for k, v in base.model.state_dict().items():
        torch.testing.assert_close(still.model.state_dict()[k], v, rtol=0, atol=1e-6)
    assert not _same_weights(still.model, scratch.model)
    again = _train(tiny, tmp_path, epochs=1, init_from=base)
    assert again.from_cache and _same_weights(again.model, tuned.model)


def test_init_from_rejects_another_architecture(tiny, tmp_path):
    base = _train(tiny, tmp_path, model_kwargs={"dropout": 0.2})
    with pytest.raises(ValueError, match="same architecture and keywords"):
        _train(tiny, tmp_path, init_from=base)
    with pytest.raises(TypeError, match="must be a TrainedModel"):
        _train(tiny, tmp_path, init_from=base.model)
