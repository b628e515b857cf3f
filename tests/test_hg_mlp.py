"""hg_mlp: Hendrycks & Gimpel's classifier with a logit-fed decoder, and its joint training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fisherscope.data import load_dataset
from fisherscope.detectors.lid import LIDDetector
from fisherscope.detectors.mahalanobis import MahalanobisDetector
from fisherscope.detectors.reconstruction import ReconstructionDetector
from fisherscope.features.layers import layer_activations, layer_sizes
from fisherscope.features.reconstruction import reconstruction_error
from fisherscope.models import MODELS, build_model, count_parameters
from fisherscope.models.hg_mlp import DecoderActivation
from fisherscope.training import PRESETS, train_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    train, test = digits
    cache = tmp_path_factory.mktemp("hg-cache")
    return train_model("hg_mlp", train, test_dataset=test, cache_dir=cache, progress=False), cache


def test_architecture_and_preset():
    model = build_model("hg_mlp")
    assert count_parameters(model) == 476_296
    assert count_parameters(model.decoder) == 206_974
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears[-1][0] == "head"  # the last nn.Linear is the logit layer
    assert model.decoder.bottleneck.in_features == 256 + 10 and model.decoder.bottleneck.out_features == 10
    assert [m.out_features for _, m in linears] == [256, 256, 10, 256, 784, 10]
    gelu = build_model("hg_mlp", activation="gelu")
    assert sum(isinstance(m, nn.GELU) for m in gelu.modules()) == 2
    assert [m.name for m in gelu.modules() if isinstance(m, DecoderActivation)] == ["gelu", "gelu"]
    p = PRESETS["hg_mlp"]
    assert (p["dataset"], p["epochs"], p["lr"], p["optimizer"], p["lr_schedule"]) == ("mnist", 20, 1e-3, "adam", "none")
    assert p["model_kwargs"] == {"activation": "gelu"}
    assert "hg_mlp" in MODELS


def test_forward_returns_logits_and_reconstruction_is_consistent():
    torch.manual_seed(0)
    model = build_model("hg_mlp", input_size=8, in_channels=2, num_classes=4).eval()
    x = torch.rand(5, 2, 8, 8)
    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (5, 4)
    both_logits, recon = model.forward_with_reconstruction(x)
    torch.testing.assert_close(both_logits, logits)
    torch.testing.assert_close(model.reconstruct(x), recon)
    assert recon.shape == x.shape and bool(((recon > 0) & (recon < 1)).all())
    # the decoder sees h2 and the logits: changing the head changes the reconstruction
    with torch.no_grad():
        model.head.bias += 1.0
    assert not torch.allclose(model.reconstruct(x), recon)
    # training_forward: logits and the mean squared reconstruction error
    lg, aux = model.training_forward(x)
    torch.testing.assert_close(aux, F.mse_loss(model.reconstruct(x), x))
    with pytest.raises(ValueError, match=r"expects images of shape \(N, C, 8, 8\)"):
        model(torch.rand(2, 2, 7, 7))
    with pytest.raises(ValueError, match="bottleneck"):
        build_model("hg_mlp", bottleneck=0)


def test_trains_on_digits_above_90_percent_with_falling_reconstruction_error(trained, digits):
    tm, _ = trained
    train, test = digits
    assert tm.model_kwargs["activation"] == "gelu" and tm.model_kwargs["input_size"] == 8
    assert tm.metrics["test_accuracy"] > 0.90, tm.metrics["test_accuracy"]
    aux = [r["train_aux_loss"] for r in tm.metrics["history"]]
    assert len(aux) == 20 and aux[-1] < 0.6 * aux[0]
    assert all(b <= a * 1.05 for a, b in zip(aux, aux[1:], strict=False))
    # against the same network at initialisation (seed 0 under fork_rng, as train_model does)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        init = build_model("hg_mlp", **tm.model_kwargs).eval()
    init.normalize.load_state_dict(tm.model.normalize.state_dict())
    err_init = reconstruction_error(init, test.x, kind="squared").mean()
    err_trained = reconstruction_error(tm.model, test.x, kind="squared").mean()
    assert err_trained < 0.5 * err_init, (err_trained, err_init)


def test_cached_and_deterministic(trained, digits):
    tm, cache = trained
    train, test = digits
    again = train_model("hg_mlp", train, test_dataset=test, cache_dir=cache, progress=False)
    assert again.from_cache and again.key == tm.key
    assert hasattr(again.model, "reconstruct")
    torch.testing.assert_close(again.model.reconstruct(test.x[:8]), tm.model.reconstruct(test.x[:8]))
    fresh = train_model("hg_mlp", train, test_dataset=test, cache=False, progress=False)
    sa, sb = fresh.model.state_dict(), tm.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert fresh.metrics["history"][-1]["train_aux_loss"] == tm.metrics["history"][-1]["train_aux_loss"]


def test_joint_loss_and_defense_do_not_mix(digits):
    train, _ = digits
    with pytest.raises(ValueError, match="joint loss"):
        train_model("hg_mlp", train, epochs=1, cache=False, progress=False,
                    defense={"kind": "label_smoothing", "alpha": 0.1})  # fmt: skip


def test_reconstruction_detector_flags_noise_images(trained, digits):
    tm, _ = trained
    _, test = digits
    g = torch.Generator().manual_seed(0)
    clean = test.x[:200]
    noisy = (clean + 0.3 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    X = np.vstack([reconstruction_error(tm.model, clean, kind="all"),
                   reconstruction_error(tm.model, noisy, kind="all")])  # fmt: skip
    y = np.r_[np.zeros(200), np.ones(200)]
    det = ReconstructionDetector(kind="squared").fit(X[:100])
    assert det.score(X, y) > 0.95


def test_layer_detectors_on_the_trained_model(trained, digits):
    """End to end: layer activations -> Mahalanobis (3 layers) and LID, clean vs noisy."""
    tm, _ = trained
    train, test = digits
    g = torch.Generator().manual_seed(1)

    def noisy(x):
        return (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)

    layers = ["encoder.2", "encoder.5", "output"]
    sizes = tuple(layer_sizes(tm.model, test.x, layers).values())
    assert sizes == (256, 256, 10)

    def feats(x):
        return layer_activations(tm.model, x, layers, with_prediction=True)

    X_fit = np.vstack([feats(train.x[:600]), feats(noisy(train.x[600:900]))])
    y_fit = np.r_[np.zeros(600), np.ones(300)]
    X_test = np.vstack([feats(test.x[:200]), feats(noisy(test.x[200:400]))])
    y_test = np.r_[np.zeros(200), np.ones(200)]
    maha = MahalanobisDetector(layer_sizes=sizes).fit(X_fit, y_fit)
    assert maha.score(X_test, y_test) > 0.95
    lid = LIDDetector(layer_sizes=sizes).fit(X_fit[:, 1:], y_fit)
    assert lid.score(X_test[:, 1:], y_test) > 0.95


@pytest.mark.slow
def test_mnist_preset_accuracy():
    """The paper's setting: 20 epochs of Adam on MNIST (about 7 min on one core)."""
    try:
        train = load_dataset("mnist", "train")
        test = load_dataset("mnist", "test")
    except FileNotFoundError as exc:
        pytest.skip(f"MNIST not available: {exc}")
    tm = train_model("hg_mlp", train, test_dataset=test, progress=False)
    assert tm.metrics["test_accuracy"] > 0.975
    assert tm.metrics["history"][-1]["train_aux_loss"] < 0.03
