"""PyTorch's fused Transformer inference path never skips dendrites."""

import copy

import pytest
import torch
from torch import nn

import perforate as pf

pytestmark = [pytest.mark.filterwarnings("ignore:enable_nested_tensor"),
              pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")]


def _encoder(nested: bool) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=nested)


def _with_dendrites(net: nn.Module) -> pf.PerforatedModel:
    model = pf.perforate(net, pf.PerforationConfig.paper())
    for layer in model.dendrite_layers().values():
        layer.resize(1)
        with torch.no_grad():
            for t in (layer.dendrite_weight, layer.dendrite_bias, layer.output_weight):
                t.normal_()
    return model


@pytest.mark.parametrize("nested", [False, True])
def test_eval_with_dendrites_equals_the_standard_path(nested: bool) -> None:
    plain = nn.Sequential(_encoder(nested))
    model = _with_dendrites(copy.deepcopy(plain))
    x = torch.randn(3, 5, 8)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[1, 3:] = True
    keep = ~pad
    encoder = model.net[0]
    with torch.no_grad():
        train = encoder.train()(x, src_key_padding_mask=pad)  # training never takes it
        model.eval()
        for kwargs in ({}, {"src_key_padding_mask": pad}):
            out = encoder(x, **kwargs)  # fast path switched off by perforate
            torch.backends.mha.set_fastpath_enabled(False)
            try:
                off = encoder(x, **kwargs)
            finally:
                torch.backends.mha.set_fastpath_enabled(True)
            torch.testing.assert_close(out, off, rtol=0, atol=0)
        torch.testing.assert_close(out[keep], train[keep], rtol=1e-5, atol=1e-6)
        # ... and the dendrites matter: without them the encoder computes something else.
        assert not torch.allclose(out[keep], plain.eval()[0](x, src_key_padding_mask=pad)[keep])


def test_layer_attributes_read_by_pytorch_are_views() -> None:
    model = pf.perforate(nn.Sequential(_encoder(False)), pf.PerforationConfig.paper())
    layer = model.net[0].layers[0]
    assert layer.linear1.weight is layer.linear1.base_layer.weight
    assert layer.linear1.in_features == 8 and layer.linear2.out_features == 8
    assert layer.self_attn.in_proj_weight is layer.self_attn.base_layer.in_proj_weight
    assert layer.activation_relu_or_gelu == 0  # the fused path is off ...
    net = model.unload()
    assert net[0].layers[0].activation_relu_or_gelu == 1  # ... until unload
    assert isinstance(net[0].layers[0].self_attn, nn.MultiheadAttention)


def test_export_scripts_and_keeps_the_fast_path_off() -> None:
    model = _with_dendrites(nn.Sequential(_encoder(True))).eval()
    exported = pf.export(model).eval()
    assert exported[0].layers[0].activation_relu_or_gelu == 0
    assert exported[0].use_nested_tensor is False
    scripted = torch.jit.script(exported[0])
    x = torch.randn(3, 5, 8)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, 4:] = True
    with torch.no_grad():
        ref = model.net[0](x, src_key_padding_mask=pad)
        torch.testing.assert_close(scripted(x, src_key_padding_mask=pad), ref, rtol=1e-5,
                                   atol=1e-5)
