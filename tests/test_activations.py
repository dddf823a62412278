"""Dendrite activations: the registry, and tanh's sigmoid form on a CPU."""

import pytest
import torch
from torch import nn

from perforate.engine.activations import (
    ACTIVATIONS,
    FUNCTIONS,
    INPLACE,
    make_activation,
    tanh,
    tanh_,
)

SPECIAL = [0.0, 1e-8, -1e-8, 1e-3, 0.5, -0.5, 9.0, 20.0, -20.0, 100.0, -100.0,
           float("inf"), float("-inf")]


def _inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.randn(100_000, generator=g) * 4, torch.tensor(SPECIAL)])


def test_tanh_is_within_float32_rounding_of_torch_tanh() -> None:
    x = _inputs()
    y = tanh(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert (y - torch.tanh(x)).abs().max() <= 2.4e-7
    assert y[-2:].tolist() == [1.0, -1.0]  # exact at ±inf
    assert y.abs().max() <= 1.0
    assert torch.isnan(tanh(torch.tensor([float("nan")]))).all()
    assert torch.equal(x, _inputs())  # not in place


def test_other_dtypes_take_torch_tanh_exactly() -> None:
    x = _inputs().double()
    assert torch.equal(tanh(x), torch.tanh(x))
    h = _inputs().bfloat16()
    assert torch.equal(tanh(h), torch.tanh(h))


def test_in_place_tanh_returns_its_input_with_tanh_values() -> None:
    x = _inputs()
    y = tanh_(x)
    assert y is x
    assert (y - torch.tanh(_inputs())).abs().max() <= 2.4e-7


def test_tanh_gradient_and_second_derivative_are_tanh_s() -> None:
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(1000, generator=g) * 2).requires_grad_()
    w = torch.randn(1000, generator=g)
    (ours,) = torch.autograd.grad(tanh(x), x, w, create_graph=True)
    (ref,) = torch.autograd.grad(torch.tanh(x), x, w, create_graph=True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    (ours2,) = torch.autograd.grad(ours.sum(), x)
    (ref2,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(ours2, ref2, rtol=0, atol=2e-6)


def test_in_place_tanh_on_a_recorded_intermediate_backpropagates() -> None:
    x = torch.randn(50, requires_grad=True)
    u = x * 1.0  # a tensor of its own, not a leaf
    y = tanh_(u)
    assert y is u
    y.sum().backward()
    torch.testing.assert_close(x.grad, 1 - torch.tanh(x.detach()) ** 2, rtol=0, atol=1e-6)


def test_registry() -> None:
    assert set(FUNCTIONS) <= set(ACTIVATIONS) and set(INPLACE) <= set(ACTIVATIONS)
    assert isinstance(make_activation("tanh"), nn.Tanh)  # the exact, scriptable module
    with pytest.raises(ValueError, match=r"unknown dendrite activation 'swish'.*known: gelu"):
        make_activation("swish")
