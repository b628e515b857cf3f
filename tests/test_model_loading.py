"""fisherscope.models.load_model: every form of a user's model, its options, the contract check
on one batch, and the bad inputs (weights that do not fit, pickle-only files, probabilities,
shapes that do not match the data)."""

from __future__ import annotations

import json
import pickle
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fisherscope.exceptions import CheckpointError
from fisherscope.models import (
    AsLogits,
    ExportedProgramModel,
    ModelContractWarning,
    Normalize,
    WeightsMismatchError,
    build_model,
    check_model_contract,
    load_model,
    parse_normalize,
    read_weights,
)
from fisherscope.models.checkpoint import compute_key, make_checkpoint, save_atomic

pytestmark = pytest.mark.usefixtures("one_thread")


def _digits_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = build_model("digits_cnn")
    with torch.no_grad():  # non-trivial statistics: a checkpoint of a trained model has them
        net.normalize.set_statistics([0.3], [0.4])
    return net.eval()


class Linear64(nn.Module):
    """Flattened 8x8 images -> K logits (predictions vary over random inputs)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(16, 1, 8, 8, generator=g), torch.arange(16) % 10


@pytest.fixture(scope="module")
def net():
    return _digits_cnn()


def _same(loaded, net, x):
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), net(x), rtol=1e-5, atol=1e-5)


def _checkpoint_file(net, path, arch="digits_cnn"):
    config = {"format_version": 1, "arch": arch, "model_kwargs": {}, "epochs": 1}
    ckpt = make_checkpoint(kind="final", key=compute_key(config), config=config, state_dict=net.state_dict(),
                           metrics={"test_accuracy": 0.5})
    save_atomic(ckpt, path)
    return path


quiet = pytest.mark.filterwarnings("ignore::fisherscope.models.ModelContractWarning")


# ----------------------------------------------------------------------------- the forms


@quiet
@pytest.mark.parametrize("fmt", ["state_dict", "safetensors", "checkpoint", "wrapped"])
def test_registry_architecture_with_weights(tmp_path, net, batch, fmt):
    x, y = batch
    path = tmp_path / "w"
    if fmt == "state_dict":
        torch.save(net.state_dict(), path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(net.state_dict(), str(path))  # no suffix: recognised by content
    elif fmt == "checkpoint":
        _checkpoint_file(net, path)
    else:  # a training script's checkpoint dict, keys from DataParallel
        torch.save({"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
                    "optimizer": {"lr": 0.1}}, path)
    loaded = load_model("digits_cnn", weights=path, example=x, labels=y)
    _same(loaded, net, x)
    assert loaded.kind == "registry" and loaded.num_classes == 10 and loaded.input_shape == (1, 8, 8)
    expected_format = {"wrapped": "state_dict", "checkpoint": "fisherscope.checkpoint"}.get(fmt, fmt)
    assert loaded.weights_format == expected_format and len(loaded.weights_sha256) == 64
    if fmt == "wrapped":
        assert any("'module.'" in n for n in loaded.notes) and any("model_state_dict" in n for n in loaded.notes)
    assert not loaded.model.training
    json.dumps(loaded.describe())


@quiet
def test_a_fisherscope_checkpoint_alone_names_its_architecture(tmp_path, net, batch):
    path = _checkpoint_file(net, tmp_path / "digits.pt")
    loaded = load_model(path, example=batch[0])
    assert loaded.kind == "checkpoint" and loaded.source == str(path)
    _same(loaded, net, batch[0])
    with pytest.raises(ValueError, match=r"checkpoint of 'digits_cnn': pass model='digits_cnn'"):
        load_model("lenet5", weights=path)


@quiet
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch 2.13 deprecates TorchScript; files exist
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchscript_file(tmp_path, net, batch):
    x, y = batch
    path = tmp_path / "model.bin"  # any suffix: recognised by content
    torch.jit.save(torch.jit.trace(net, x[:2]), str(path))
    loaded = load_model(path, example=x, labels=y)
    assert loaded.kind == "torchscript" and loaded.weights is None and loaded.weights_sha256
    assert loaded.capabilities == {"layer_hooks": False, "parameter_fisher": False}
    _same(loaded, net, x)
    with pytest.raises(ValueError, match="carries its own weights; drop weights="):
        load_model(path, weights=path)


@quiet
def test_torch_export_program_runs_in_eval_mode_with_any_batch(tmp_path, net, batch):
    from fisherscope.features import fisher_eigenvalues

    x, y = batch
    program = torch.export.export(net, (x[:4],), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    loaded = load_model(path, example=x, labels=y)
    assert loaded.kind == "export" and isinstance(loaded.model, ExportedProgramModel)
    assert loaded.capabilities == {"layer_hooks": False, "parameter_fisher": True}
    _same(loaded, net, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rank K - 1 < k
        np.testing.assert_allclose(fisher_eigenvalues(loaded.model, x[:3], k=9),
                                   fisher_eigenvalues(net, x[:3], k=9), rtol=1e-4, atol=1e-9)


def test_torch_export_with_a_fixed_batch_is_refused_with_the_fix(tmp_path, net, batch):
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(net, (batch[0][:4],)), str(path))
    with pytest.raises(CheckpointError, match=r"fixed batch size of 4.*dynamic_shapes="):
        load_model(path)


def test_factory_from_a_module_and_from_a_file(tmp_path, batch):
    x, y = batch
    torch.manual_seed(1)
    ref = Linear64(num_classes=10).eval()
    from safetensors.torch import save_file

    save_file(ref.state_dict(), str(tmp_path / "w.safetensors"))
    source = tmp_path / "my_models.py"
    source.write_text(
        "from torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes=3):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(64, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1))\n\n"
        "def make(**kw):\n"
        "    return Net(**kw)\n"
    )
    loaded = load_model(f"{source}:make", weights=tmp_path / "w.safetensors", num_classes=10, example=x, labels=y)
    assert loaded.kind == "factory" and loaded.model_kwargs == {"num_classes": 10}
    _same(loaded, ref, x)
    built = load_model("fisherscope.models.architectures:DigitsCNN", model_kwargs={"dropout": 0.0})
    assert built.kind == "factory" and built.weights is None


# ----------------------------------------------------------------------------- options


def test_normalize_wraps_a_model_that_expects_standardised_inputs(batch):
    x, _ = batch
    net = Linear64().eval()
    loaded = load_model(net, normalize="0.5,0.25", example=x)
    assert isinstance(loaded.model, nn.Sequential) and isinstance(loaded.model.normalize, Normalize)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), net((x - 0.5) / 0.25))
    assert loaded.describe()["normalize"] == [[0.5], [0.25]]


@pytest.mark.parametrize("value, expected", [
    ("0.5,0.25", ((0.5,), (0.25,))),
    ("0.1,0.2,0.3,1,2,3", ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))),
    ("0.1,0.2;3,4", ((0.1, 0.2), (3.0, 4.0))),
    ((0.5, 0.5), ((0.5,), (0.5,))),
    (([0.1, 0.2, 0.3], (1, 2, 3)), ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))),
    ("ImageNet", ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))),
    (None, None),
])
def test_parse_normalize_forms(value, expected):
    assert parse_normalize(value) == expected


@pytest.mark.parametrize("value, match", [
    ("0.5", "Write it as 'mean,std'"),
    ("a,b", "Write it as 'mean,std'"),
    ((0.5, 0.0), "std 0"),
    ("0.5,-1", "stds > 0"),
    ("0.1,0.2;1", "2 means and 1 stds"),
    (0.5, "Pass \\(mean, std\\)"),
    ((True, 1.0), "numbers or sequences"),
])
def test_parse_normalize_rejects_bad_values_in_the_template(value, match):
    with pytest.raises(ValueError) as info:
        parse_normalize(value)
    msg = str(info.value)
    assert msg.startswith("load_model: normalize must be ") and "; got " in msg
    assert re.search(match, msg), msg


def test_registry_weights_without_normalize_statistics(tmp_path, batch):
    x, y = batch
    net = _digits_cnn()
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("normalize.")}
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(WeightsMismatchError, match=r"'normalize.mean', 'normalize.std'.*pass normalize=") as info:
        load_model("digits_cnn", weights=tmp_path / "w.pt")
    assert info.value.missing == ["normalize.mean", "normalize.std"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelContractWarning)
        loaded = load_model("digits_cnn", weights=tmp_path / "w.pt", normalize=(0.3, 0.4), example=x, labels=y)
    _same(loaded, net, x)  # set inside, not wrapped outside
    assert not isinstance(loaded.model, nn.Sequential)
    assert any("Normalize statistics" in n for n in loaded.notes)


def test_normalize_on_weights_that_already_normalise_is_refused(tmp_path, net):
    torch.save(net.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"already normalises its inputs.*a second time"):
        load_model("digits_cnn", weights=tmp_path / "w.pt", normalize="0.5,0.5")


def test_probability_outputs_need_the_adapter(batch):
    x, y = batch
    probs = nn.Sequential(Linear64(), nn.Softmax(dim=1)).eval()
    with pytest.raises(ValueError, match=r"look like probabilities.*output='probs'.*as_logits"):
        load_model(probs, example=x, labels=y)
    loaded = load_model(probs, output="probs", example=x, labels=y)
    assert isinstance(loaded.model, AsLogits) and loaded.output == "probs"
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x).softmax(1), probs(x))
    log_probs = nn.Sequential(Linear64(), nn.LogSoftmax(dim=1)).eval()
    assert load_model(log_probs, output="log_probs", example=x).num_classes == 10
    with pytest.raises(ValueError, match=r"^load_model: output must be one of 'logits', 'probs', 'log_probs'"):
        load_model(probs, output="softmax")


@quiet
def test_input_shape_builds_the_registry_model_and_probes_it(tmp_path):
    torch.manual_seed(0)
    ref = build_model("lenet5", in_channels=3, input_size=32, num_classes=5)
    loaded = load_model("lenet5", weights=_save(tmp_path, ref.state_dict()), input_shape=(3, 32, 32), num_classes=5)
    assert loaded.model_kwargs == {"num_classes": 5, "in_channels": 3, "input_size": 32}
    assert loaded.num_classes == 5 and loaded.input_shape == (3, 32, 32)


# ------------------------------------------------------------------------ the contract


def test_contract_input_shape_mismatch_is_named_before_the_model_runs(batch):
    calls = []

    class Spy(Linear64):
        def forward(self, x):
            calls.append(x.shape)
            return super().forward(x)

    with pytest.raises(ValueError, match=r"images have shape \[1, 8, 8\].*input_shape \[3, 32, 32\]"):
        load_model(Spy(), input_shape=(3, 32, 32), example=batch[0])
    assert calls == []


def test_contract_model_failure_and_shapes(batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"fails on a batch of shape \[4, 3, 8, 8\].*input_shape=\(C, H, W\)"):
        load_model(Linear64(), example=torch.rand(4, 3, 8, 8))
    with pytest.raises(ValueError, match=r"labels 0\.\.9 but the model has only 5 classes"):
        load_model(Linear64(num_classes=5), example=x, labels=y)
    with pytest.raises(ValueError, match=r"outputs 10 classes but num_classes=7"):
        load_model(Linear64(), example=x, num_classes=7)
    with pytest.raises(ValueError, match=r"outside bounds"):
        load_model(Linear64(), example=x * 255)

    class Merged(nn.Module):
        def forward(self, x):
            return x.reshape(-1, 128)[:, :10]

    with pytest.raises(ValueError, match=r"returned 8 rows for a batch of 16 images"):
        check_model_contract(Merged(), x)
    with pytest.raises(ValueError, match=r"shape \(N, K\)"):
        check_model_contract(nn.Flatten(0), x)
    with pytest.raises(ValueError, match=r"^load_model: input_shape must be None or \(C, H, W\)"):
        load_model(Linear64(), input_shape=(8, 8))


def test_contract_warns_when_every_image_gets_one_class(batch):
    x, y = batch

    class Constant(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 10) + torch.arange(10.0)

    with pytest.warns(ModelContractWarning, match=r"predicts class 9 for all 16 images"):
        assert check_model_contract(Constant(), x, y) == 10
    class FirstPixels(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10] * 10

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_model_contract(FirstPixels(), x, y) == 10


# -------------------------------------------------------------------------- bad input


def test_weights_that_do_not_fit_name_missing_unexpected_and_mismatched_keys(tmp_path, net):
    state = dict(net.state_dict())
    state.pop("classifier.1.bias")
    state["extra.weight"] = torch.zeros(3)
    state["features.0.weight"] = torch.zeros(32, 3, 3, 3)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(WeightsMismatchError) as info:
        load_model("digits_cnn", weights=tmp_path / "w.pt")
    msg = str(info.value)
    assert "1 missing key(s) (in the model, not in the file): ['classifier.1.bias']" in msg
    assert "1 unexpected key(s) (in the file, not in the model): ['extra.weight']" in msg
    assert "'features.0.weight' file [32, 3, 3, 3] vs model [32, 1, 3, 3]" in msg
    assert "in_channels=3" in msg
    assert info.value.missing == ["classifier.1.bias"] and info.value.unexpected == ["extra.weight"]
    assert info.value.mismatched == [("features.0.weight", (32, 3, 3, 3), (32, 1, 3, 3))]
    with pytest.raises(WeightsMismatchError, match=r"has 10 outputs: pass num_classes=10"):
        load_model("digits_cnn", weights=_save(tmp_path, net.state_dict()), num_classes=4)


def _save(tmp_path, state):
    torch.save(state, tmp_path / "sd.pt")
    return tmp_path / "sd.pt"


def test_non_finite_weights_are_named(tmp_path, net):
    state = dict(net.state_dict())
    state["classifier.4.bias"] = state["classifier.4.bias"].clone().fill_(float("nan"))
    with pytest.raises(CheckpointError, match=r"non-finite.*'classifier.4.bias'"):
        load_model("digits_cnn", weights=_save(tmp_path, state))


class Pickled(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10]


@pytest.mark.parametrize("how", ["torch.save(model)", "pickle.dump(dict)"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_only_checkpoint_is_refused_with_the_safe_alternative(tmp_path, how):
    path = tmp_path / "model.pt"
    if how == "torch.save(model)":
        torch.save(Pickled(), path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"model": Pickled(), "acc": 0.9}, f, protocol=4)
    for call in (lambda: load_model(path), lambda: load_model("digits_cnn", weights=path)):
        with pytest.raises(CheckpointError) as info:
            call()
        msg = str(info.value)
        assert "refuses it" in msg and "torch.save(model.state_dict()" in msg and "safetensors" in msg
        assert "torch.export.save" in msg and "test_model_loading.Pickled" in msg


def test_weights_files_without_a_state_dict(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match=r"without a state dict in it \(\{'epoch': int, 'lr': float\}\)"):
        read_weights(tmp_path / "a.pt")
    torch.save([torch.zeros(2)], tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match=r"holds a list, not a state dict"):
        read_weights(tmp_path / "b.pt")
    (tmp_path / "c.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match=r"not a PyTorch weights file") as err:
        read_weights(tmp_path / "c.pt")
    # the reason torch gave, never its advice to load untrusted files with weights_only=False
    assert "weights_only` set to `False`" not in str(err.value) and "truncated" in str(err.value)
    (tmp_path / "d.pt").write_bytes(b"x\n")  # a byte stream that starts like a pickle opcode
    with pytest.raises(CheckpointError, match=r"not a PyTorch weights file") as err:
        read_weights(tmp_path / "d.pt")
    assert "weights_only` set to `False`" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_weights(tmp_path / "missing.pt")


def test_unknown_or_incomplete_specs(tmp_path, net):
    with pytest.raises(ValueError, match=r"got 'digitscnn'\. Did you mean 'digits_cnn'\?"):
        load_model("digitscnn")
    with pytest.raises(ValueError, match=r"No such file"):
        load_model(str(tmp_path / "nothing.pt"))
    with pytest.raises(ValueError, match=r"^load_model: weights must be a weights file for architecture 'lenet5'"):
        load_model("lenet5")
    with pytest.raises(ValueError, match=r"holds weights \(state_dict\) but no architecture"):
        load_model(_save(tmp_path, net.state_dict()))
    with pytest.raises(ValueError, match=r"Importing 'no_such_pkg.mod' failed.*PYTHONPATH"):
        load_model("no_such_pkg.mod:Net")
    with pytest.raises(ValueError, match=r"has no attribute 'Nope'"):
        load_model("fisherscope.models:Nope")
    with pytest.raises(TypeError, match=r"returning a torch.nn.Module; got .*It returned a dict"):
        load_model("fisherscope.models:model_parameters", model_kwargs={"arch": "lenet5"})
    with pytest.raises(TypeError, match=r"model must be an nn.Module"):
        load_model(3)
