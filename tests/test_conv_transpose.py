"""ConvTranspose1d/2d/3d with dendrites: each dendrite is its channel's transposed conv."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import perforate as pf

CONVS = [nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
         nn.ConvTranspose2d(3, 4, 3, stride=2, dilation=2, bias=False),
         nn.ConvTranspose3d(2, 4, 2, stride=(1, 2, 2), groups=2)]


def _with_dendrites(conv: nn.Module, sets: int) -> pf.PerforatedModel:
    model = pf.perforate(nn.Sequential(conv), pf.PerforationConfig.paper())
    layer = model.dendrite_layers()["0"]
    layer.resize(sets)
    with torch.no_grad():
        for t in (layer.dendrite_weight, layer.dendrite_bias, layer.output_weight,
                  layer.cascade_weight):
            t.normal_()
    return model


def _per_channel_dendrite(conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor,
                          x: torch.Tensor) -> torch.Tensor:
    """Dendrite pre-activations built by hand: neuron n's row ``weight[n]`` ([in/g, *k])
    placed where channel n's own weights sit in a transposed conv's ``[in, N/g, *k]``."""
    g, n = conv.groups, conv.out_channels
    per_group_in, per_group_out = conv.in_channels // g, n // g
    full = torch.zeros_like(conv.weight)
    for ch in range(n):
        grp = ch // per_group_out
        full[grp * per_group_in:(grp + 1) * per_group_in, ch % per_group_out] = weight[ch]
    op = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[x.dim() - 3]
    return op(x, full, bias, conv.stride, conv.padding, conv.output_padding, g, conv.dilation)


@pytest.mark.parametrize("conv", CONVS, ids=lambda c: type(c).__name__)
def test_dendrite_sees_its_channels_receptive_field(conv: nn.Module) -> None:
    model = _with_dendrites(conv, 1)
    layer = model.dendrite_layers()["0"]
    assert layer.geometry.neuron_weight_shape == (conv.in_channels // conv.groups,
                                                  *conv.kernel_size)
    x = torch.randn(2, conv.in_channels, *([4] * (conv.weight.dim() - 2)))
    with torch.no_grad():
        pre = _per_channel_dendrite(conv, layer.dendrite_weight[0], layer.dendrite_bias[0], x)
        a = layer.output_weight[0].reshape(-1, *[1] * (x.dim() - 2))
        torch.testing.assert_close(model(x), conv(x) + a * torch.tanh(pre), rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(model(x[0]), model(x)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("conv", CONVS, ids=lambda c: type(c).__name__)
def test_export_scripts_with_two_sets(conv: nn.Module) -> None:
    model = _with_dendrites(conv, 2)
    x = torch.randn(2, conv.in_channels, *([4] * (conv.weight.dim() - 2)))
    exported = torch.jit.script(pf.export(model))
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), rtol=1e-5, atol=1e-5)


def test_views_and_output_size() -> None:
    conv = nn.ConvTranspose2d(3, 4, 3, stride=2, output_padding=1)
    wrapper = pf.perforate(nn.Sequential(conv), pf.PerforationConfig.paper()).net[0]
    assert (wrapper.in_channels, wrapper.out_channels, wrapper.stride,
            wrapper.output_padding) == (3, 4, (2, 2), (1, 1))
    assert wrapper.weight is conv.weight and wrapper.bias is conv.bias
    with pytest.raises(ValueError, match="output_padding"):
        wrapper(torch.randn(1, 3, 4, 4), output_size=[10, 10])
