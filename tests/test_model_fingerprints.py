"""Registry models are built exactly as they were: a refactoring guard.

For each case the model is built with ``torch.manual_seed(SEED)``; the recorded
fingerprints were computed from the architecture code before the small CNNs were folded
into one configurable definition (``fisherscope.models.architectures``):

- ``structure``: sha256 of the state-dict keys, shapes and dtypes, ``repr(model)`` and
  the registry signature. A change here breaks loading of cached checkpoints (keys and
  shapes) or changes their cache keys (the signature's defaults are hashed).
- ``weights``: sha256 of every state-dict tensor's bytes, then of the next four draws of
  the global generator: the same seed must give the same initial weights, drawn in the
  same order. Depends on torch's CPU generator, so it is checked only on the torch
  version it was recorded with.
- ``logits``: the first five eval-mode logits of the first sample on a fixed input (compared to 1e-5).

Regenerate (only for a deliberate architecture change, which also invalidates cached
checkpoints): ``python tests/test_model_fingerprints.py``.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import pytest
import torch

from fisherscope.models import MODELS, build_model, model_parameters

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SEED = 1234
RECORDED_TORCH = "2.13.0+cpu"

CASES: list[tuple[str, dict[str, Any]]] = [
    ("digits_cnn", {}),
    ("digits_cnn", {"activation": "elu", "dropout": 0.5, "in_channels": 3, "num_classes": 4, "input_size": 12}),
    ("mnist_cnn", {}),
    ("mnist_cnn", {"activation": "gelu", "dropout": 0.25, "input_size": 10}),
    ("lenet5", {}),
    ("lenet5", {"activation": "elu", "dropout": 0.5, "in_channels": 3, "input_size": 32}),
    ("convnet_bn", {}),
    ("convnet_bn", {"dropout": 0.5, "in_channels": 3, "num_classes": 7, "input_size": 16}),
    ("vgg_small", {"input_size": 16, "classifier_width": 64}),
    ("vgg_small", {"in_channels": 1, "input_size": 28, "batch_norm": False, "dropout": 0.5, "activation": "elu"}),
    ("vgg11", {"classifier_width": 32}),
    ("resnet14", {"base_width": 4}),
    ("hg_mlp", {"input_size": 8, "hidden": 16, "bottleneck": 4}),
]


def _case_id(case: tuple[str, dict[str, Any]]) -> str:
    arch, kwargs = case
    return arch + "".join(f"-{k}={v}" for k, v in sorted(kwargs.items()))


def fingerprint(arch: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Structure and weight digests and the first logit row of ``build_model(arch, **kwargs)``."""
    torch.manual_seed(SEED)
    model = build_model(arch, **kwargs)
    after = torch.rand(4)
    sd = model.state_dict()
    structure = hashlib.sha256()
    for k, v in sd.items():
        structure.update(f"{k}:{tuple(v.shape)}:{v.dtype}\n".encode())
    structure.update(repr(model).encode())
    structure.update(str(inspect.signature(MODELS[arch])).encode())
    weights = hashlib.sha256()
    for v in sd.values():
        weights.update(v.detach().contiguous().cpu().numpy().tobytes())
    weights.update(after.numpy().tobytes())
    params = model_parameters(arch)
    c = kwargs.get("in_channels", params["in_channels"])
    side = kwargs.get("input_size", params.get("input_size") or 16)
    x = torch.rand(2, c, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model.eval()(x)[0, :5]
    return {
        "structure": structure.hexdigest()[:16],
        "weights": weights.hexdigest()[:16],
        "logits": [round(float(v), 6) for v in logits],
    }


EXPECTED: dict[str, dict[str, Any]] = {
    'digits_cnn': {'structure': '03dafe8ae53c8e77', 'weights': '273c5fadfac54837', 'logits': [0.079994, -0.058522, -0.082076, 0.088657, -0.021426]},
    'digits_cnn-activation=elu-dropout=0.5-in_channels=3-input_size=12-num_classes=4': {'structure': '36169344be1ec7ac', 'weights': '65eea084a6ce7d08', 'logits': [-0.014492, -0.016384, -0.105596, 0.075854]},
    'mnist_cnn': {'structure': '273c0648dce506d5', 'weights': 'c004f8f8fd1421cb', 'logits': [-0.013288, 0.051943, -0.088947, 0.020885, 0.004168]},
    'mnist_cnn-activation=gelu-dropout=0.25-input_size=10': {'structure': '02afe54d6ebed20d', 'weights': 'b5b9168c76864c3c', 'logits': [-0.053799, 0.025705, 0.057101, 0.011021, 0.005754]},
    'lenet5': {'structure': '673613ae11bd935c', 'weights': 'e16add2ab3a01728', 'logits': [-0.078009, -0.036707, 0.088591, -0.048204, -0.051558]},
    'lenet5-activation=elu-dropout=0.5-in_channels=3-input_size=32': {'structure': 'b0f515b91e0095dc', 'weights': 'b92b16b183afecb3', 'logits': [0.108932, 0.040902, -0.066486, -0.066581, -0.087014]},
    'convnet_bn': {'structure': 'c661b008fec8f94f', 'weights': '3cc5a5346f86ee21', 'logits': [-0.053739, 0.032137, 0.07042, 0.098141, 0.047728]},
    'convnet_bn-dropout=0.5-in_channels=3-input_size=16-num_classes=7': {'structure': 'e406958683980b9c', 'weights': '5e7d078d6bb5db39', 'logits': [-0.047988, -0.056378, 0.047749, -0.048483, 0.047058]},
    'vgg_small-classifier_width=64-input_size=16': {'structure': '100302d9f8e69746', 'weights': '841e9ae5d5f6c8fc', 'logits': [0.05228, 0.007971, 0.099747, 0.014322, -0.041151]},
    'vgg_small-activation=elu-batch_norm=False-dropout=0.5-in_channels=1-input_size=28': {'structure': '5726c08b0bfb3063', 'weights': '01f42bcc28d62528', 'logits': [-0.016586, 0.030742, -0.042021, -0.012656, -0.109428]},
    'vgg11-classifier_width=32': {'structure': '7cdc70583a01ece5', 'weights': '192cf58c59da2c73', 'logits': [-0.188608, -0.031302, 0.158383, 0.03202, -0.002344]},
    'resnet14-base_width=4': {'structure': '747b51b6aa14cf1a', 'weights': 'fe8a5dd2c977779c', 'logits': [-0.072544, 0.87472, 1.238704, 0.140291, -1.738652]},
    'hg_mlp-bottleneck=4-hidden=16-input_size=8': {'structure': '55584ce20b30ed8f', 'weights': '48b13b7569b09322', 'logits': [-0.292454, 0.182627, -0.169613, 0.402381, 0.044282]},
}


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_structure_unchanged(case):
    arch, kwargs = case
    got = fingerprint(arch, kwargs)
    assert got["structure"] == EXPECTED[_case_id(case)]["structure"], (
        f"{arch}: state-dict keys/shapes, module tree or registry signature changed; cached "
        "checkpoints would no longer load or would get new cache keys."
    )


@pytest.mark.skipif(
    torch.__version__ != RECORDED_TORCH,
    reason=f"seeded weights recorded with torch {RECORDED_TORCH}; generator streams may differ",
)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_seeded_weights_and_logits_unchanged(case):
    arch, kwargs = case
    got = fingerprint(arch, kwargs)
    want = EXPECTED[_case_id(case)]
    assert got["weights"] == want["weights"], (
        f"{arch}: the same seed no longer gives the same initial weights (or draws a different "
        "number of random values); keep the order in which modules are created and initialised."
    )
    torch.testing.assert_close(
        torch.tensor(got["logits"]), torch.tensor(want["logits"]), atol=1e-5, rtol=0
    )


def test_cases_cover_every_registry_model_but_the_torchvision_layouts():
    # resnet18 / resnet50 follow torchvision's layout (tests/test_models.py checks it)
    assert {arch for arch, _ in CASES} == set(MODELS) - {"resnet18", "resnet50"}


if __name__ == "__main__":  # regenerate EXPECTED
    torch.set_num_threads(1)
    print("EXPECTED: dict[str, dict[str, Any]] = {")
    for case in CASES:
        print(f"    {_case_id(case)!r}: {fingerprint(*case)!r},")
    print("}")
