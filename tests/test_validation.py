"""One test per validation error: the exception type and the text that tells the fix."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fisherscope import ModelModeWarning, check_inputs, check_labels, check_logits, eval_mode


def test_valid_inputs_pass_through_unchanged():
    x = torch.rand(3, 1, 4, 4)
    assert check_inputs(x, torch.zeros(3, dtype=torch.long)) is x
    y = torch.tensor([0, 2, 1])
    assert check_labels(y, 3, 3) is y
    z = torch.randn(3, 4)
    assert check_logits(z) is z


def test_non_tensor_input():
    with pytest.raises(TypeError, match=r"torch.Tensor.*torch.as_tensor"):
        check_inputs([[0.0]])


def test_integer_images_get_convert_hint():
    with pytest.raises(TypeError, match=r"floating-point.*torch.uint8.*x.float\(\) / 255"):
        check_inputs(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))


def test_missing_batch_dimension():
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\).*\(1, 4, 4\).*unsqueeze\(0\)"):
        check_inputs(torch.zeros(1, 4, 4))


def test_image_only_rejects_flat_inputs():
    with pytest.raises(ValueError, match=r"must have shape \(N, C, H, W\); got shape \(2, 16\)"):
        check_inputs(torch.zeros(2, 16), image=True)


def test_empty_batch():
    with pytest.raises(ValueError, match="empty batch"):
        check_inputs(torch.zeros(0, 1, 2, 2))


def test_non_finite_values_name_samples():
    x = torch.zeros(5, 1, 2, 2)
    x[1, 0, 0, 0] = float("nan")
    x[3, 0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match=r"2 non-finite values \(NaN or inf\) in samples \[1, 3\]"):
        check_inputs(x)


def test_out_of_bounds_suggests_normalisation_inside_model():
    x = torch.full((2, 1, 2, 2), 2.5)
    with pytest.raises(ValueError, match=r"values in \[2\.5, 2\.5\], outside bounds \(0\.0, 1\.0\).*normalization inside the model"):
        check_inputs(x)


def test_bounds_tolerance_and_custom_bounds():
    check_inputs(torch.full((1, 2), 1.0 + 5e-7))
    check_inputs(torch.full((1, 2), -1.0), bounds=(-1.0, 1.0))
    check_inputs(torch.full((1, 2), 7.0), bounds=None)


def test_batch_size_mismatch():
    with pytest.raises(ValueError, match="x has 4 samples but y has 3"):
        check_inputs(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))


def test_labels_one_hot_rejected_with_hint():
    with pytest.raises(ValueError, match=r"looks one-hot\. Use y\.argmax\(1\)"):
        check_labels(torch.eye(4, dtype=torch.long), 4, 4)


def test_labels_wrong_dtype():
    with pytest.raises(TypeError, match=r"int64.*torch.int32.*y\.long\(\)"):
        check_labels(torch.zeros(3, dtype=torch.int32))


def test_labels_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \(N,\).*got shape \(3, 1, 1\)"):
        check_labels(torch.zeros(3, 1, 1, dtype=torch.long))


def test_labels_wrong_length():
    with pytest.raises(ValueError, match=r"got 2 labels for 3 samples"):
        check_labels(torch.zeros(2, dtype=torch.long), 3)


def test_labels_out_of_range():
    with pytest.raises(ValueError, match=r"values in \[0, 10\); got values in \[-1, 10\]"):
        check_labels(torch.tensor([-1, 10]), num_classes=10)


def test_labels_not_a_tensor():
    with pytest.raises(TypeError, match=r"torch.as_tensor\(y, dtype=torch.int64\)"):
        check_labels([0, 1])


def test_logits_wrong_ndim():
    with pytest.raises(ValueError, match=r"logits of shape \(N, K\); got shape \(3, 4, 1\)"):
        check_logits(torch.zeros(3, 4, 1))


def test_logits_single_class():
    with pytest.raises(ValueError, match=r"at least two classes"):
        check_logits(torch.zeros(3, 1))


def test_logits_tuple_output():
    with pytest.raises(TypeError, match="single tensor, not a tuple"):
        check_logits((torch.zeros(3, 2),))


def test_logits_non_finite():
    z = torch.zeros(3, 4)
    z[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite logits for 1 samples \[2\]"):
        check_logits(z)


def test_probabilities_rejected_with_as_logits_hint():
    p = torch.softmax(torch.randn(5, 10), dim=1)
    with pytest.raises(ValueError, match=r"looks like probabilities.*as_logits\(model, output='probs'\)"):
        check_logits(p)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))


def test_eval_mode_warns_and_restores_every_module():
    net = _net()
    net.train()
    net[1].eval()  # a mixed state must come back exactly
    before = [m.training for m in net.modules()]
    with pytest.warns(ModelModeWarning, match=r"training mode.*model\.eval\(\) to silence"):
        with eval_mode(net):
            assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == before


def test_eval_mode_silent_for_eval_model_and_restores_on_error():
    net = _net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with eval_mode(net):
            pass
    net.train()
    with pytest.warns(ModelModeWarning), pytest.raises(RuntimeError):
        with eval_mode(net):
            raise RuntimeError("boom")
    assert all(m.training for m in net.modules())
