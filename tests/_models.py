"""Tiny models with fixed weights for oracle tests (float64 where exactness matters)."""

from __future__ import annotations

import torch
from torch import nn


class LinearSoftmax(nn.Module):
    """z = W x + b on flattened inputs: G_x = Wᵀ(diag p − ppᵀ)W in closed form."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


def tiny_mlp(d: int = 12, k: int = 5, hidden: int = 16, seed: int = 0, act: type[nn.Module] = nn.Tanh,
             dtype: torch.dtype = torch.float64) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), act(), nn.Linear(hidden, hidden), act(),
                        nn.Linear(hidden, k))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.8)
    return net.to(dtype).eval()


def tiny_cnn(c: int = 1, side: int = 8, k: int = 6, seed: int = 0, dtype: torch.dtype = torch.float64,
             act: type[nn.Module] = nn.ELU, batchnorm: bool = True) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(c, 4, 3, padding=1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(4))
    layers += [act(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), act(), nn.Flatten(),
               nn.Linear(6 * (side // 2) ** 2, k)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(4, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(4, generator=g) + 0.5)
    return net.to(dtype).eval()


def tiny_cnn_batch(n: int = 6, k: int = 5) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A float32 tiny CNN (BatchNorm, 8×8 grey images), ``n`` uniform images and its own predictions."""
    model = tiny_cnn(c=1, side=8, k=k, dtype=torch.float32, batchnorm=True)
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def assert_leaves_state_untouched(call, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """``call(model, x, y)`` on a model in training mode with sentinel parameter gradients.

    It must warn (ModelModeWarning), restore every module's mode, leave ``x``, ``y`` and the
    parameters' ``.grad`` exactly as they were and give ``x`` no gradient.
    """
    import pytest

    from fisherscope import ModelModeWarning

    x0, y0 = x.clone(), y.clone()
    model.train()
    modes = [m.training for m in model.modules()]
    sentinel = {n: torch.full_like(p, 7.0) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = sentinel[n].clone()
    try:
        with pytest.warns(ModelModeWarning):
            call(model, x, y)
        assert [m.training for m in model.modules()] == modes
        assert torch.equal(x, x0) and torch.equal(y, y0) and x.grad is None and not x.requires_grad
        for n, p in model.named_parameters():
            assert torch.equal(p.grad, sentinel[n])
    finally:
        model.eval()
        for p in model.parameters():
            p.grad = None
