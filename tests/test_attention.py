"""nn.MultiheadAttention with dendrites: exact without them, every option, the right function."""

import copy
import math

import pytest
import torch
from torch import nn

import perforate as pf
from perforate.engine.layers import MultiheadAttention


def _perforated(**kw: object) -> tuple[nn.MultiheadAttention, pf.PerforatedModel]:
    torch.manual_seed(3)
    original = nn.MultiheadAttention(8, 2, **kw)
    with torch.no_grad():  # PyTorch initialises biases to 0: make them matter
        for p in original.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return original, pf.perforate(nn.Sequential(copy.deepcopy(original)),
                                  pf.PerforationConfig.paper())


def _inputs(kw: dict, b: int = 3, tgt: int = 4, src: int = 6) -> tuple[torch.Tensor, ...]:
    def shape(t: int, d: int) -> tuple[int, ...]:
        return (b, t, d) if kw.get("batch_first") else (t, b, d)

    return (torch.randn(*shape(tgt, 8)), torch.randn(*shape(src, kw.get("kdim", 8))),
            torch.randn(*shape(src, kw.get("vdim", 8))))


OPTIONS = [{}, {"batch_first": True}, {"kdim": 5, "vdim": 3}, {"bias": False},
           {"add_bias_kv": True}, {"add_zero_attn": True, "batch_first": True},
           {"add_bias_kv": True, "add_zero_attn": True, "bias": False, "dropout": 0.3}]
CALLS = {"weights": {}, "no_weights": {"need_weights": False},
         "per_head": {"average_attn_weights": False},
         "key_padding": {"key_padding_mask": torch.tensor([[False] * 4 + [True] * 2] * 3)},
         "bool_mask": {"attn_mask": torch.ones(4, 6, dtype=torch.bool).triu(3),
                       "need_weights": False},
         "float_mask_3d": {"attn_mask": torch.randn(6, 4, 6)},
         "causal": {"attn_mask": torch.ones(4, 6, dtype=torch.bool).triu(1), "is_causal": True,
                    "need_weights": False}}


@pytest.mark.parametrize("kw", OPTIONS, ids=str)
@pytest.mark.parametrize("call", list(CALLS), ids=str)
def test_own_path_equals_pytorch(kw: dict, call: str) -> None:
    """With candidates attached the wrapper computes the projections itself: outputs, weights
    and input gradients equal PyTorch's in train (same dropout draws) and eval mode."""
    original, model = _perforated(**kw)
    model.begin_dendrite_phase()
    for train in (True, False):
        model.train(train)
        original.train(train)
        q, k, v = (t.requires_grad_() for t in _inputs(kw))
        torch.manual_seed(5)
        out, w = model.net[0](q, k, v, **CALLS[call])
        q0, k0, v0 = (t.detach().clone().requires_grad_() for t in (q, k, v))
        torch.manual_seed(5)
        out0, w0 = original(q0, k0, v0, **CALLS[call])
        torch.testing.assert_close(out, out0, rtol=1e-5, atol=1e-6)
        assert (w is None) == (w0 is None)
        if w0 is not None:
            torch.testing.assert_close(w, w0, rtol=1e-5, atol=1e-6)
        out.square().sum().backward()
        out0.square().sum().backward()
        for a, b in ((q, q0), (k, k0), (v, v0)):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)


def test_unbatched_input_and_zero_dendrites_call_the_original() -> None:
    original, model = _perforated()
    q, k, v = (t[:, 0] for t in _inputs({}))
    out, w = model.net[0](q, k, v)
    out0, w0 = original(q, k, v)
    assert torch.equal(out, out0) and torch.equal(w, w0)  # D = 0: PyTorch's own forward
    model.begin_dendrite_phase()
    out, w = model.net[0](q, k, v)
    torch.testing.assert_close(out, out0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w, w0, rtol=1e-5, atol=1e-6)


def test_every_projection_is_a_dendrite_layer_and_attributes_are_views() -> None:
    original, model = _perforated(kdim=5, vdim=3)
    layers = model.dendrite_layers()
    assert list(layers) == ["0.q_proj", "0.k_proj", "0.v_proj", "0.out_proj"]
    assert [m.geometry.neuron_weight_shape for m in layers.values()] == [(8,), (5,), (3,), (8,)]
    wrapper = model.net[0]
    assert isinstance(wrapper, MultiheadAttention)
    assert wrapper.q_proj_weight is wrapper.base_layer.q_proj_weight
    assert (wrapper.embed_dim, wrapper.kdim, wrapper.num_heads, wrapper.batch_first) == (
        8, 5, 2, False)
    assert wrapper.out_proj.weight is wrapper.base_layer.out_proj.weight
    with pytest.raises(AttributeError):
        wrapper.num_heads = 4
    # No duplicated parameters or state-dict keys: the projections are views.
    assert sorted(k for k in model.state_dict() if "dendrite" not in k and "cascade" not in k
                  and "output_weight" not in k) == sorted(
        "net.0.base_layer." + k for k in original.state_dict())
    assert isinstance(model.unload()[0], nn.MultiheadAttention)


def _manual(model: pf.PerforatedModel, x: torch.Tensor) -> torch.Tensor:
    """Self-attention written out by hand: each projection z = W x + b + a * tanh(V x + c)."""
    wrapper = model.net[0]

    def project(name: str, inp: torch.Tensor) -> torch.Tensor:
        layer = getattr(wrapper, name)
        z = nn.functional.linear(inp, layer.weight, layer.bias)
        h = torch.tanh(nn.functional.linear(inp, layer.dendrite_weight[0],
                                            layer.dendrite_bias[0]))
        return z + layer.output_weight[0] * h

    b, t, e = x.shape
    heads = wrapper.num_heads

    def split(z: torch.Tensor) -> torch.Tensor:
        return z.view(b, t, heads, e // heads).transpose(1, 2)

    q, k, v = (split(project(n, x)) for n in ("q_proj", "k_proj", "v_proj"))
    att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(e // heads), dim=-1)
    return project("out_proj", (att @ v).transpose(1, 2).reshape(b, t, e))


def test_dendrites_on_all_projections_compute_the_right_function() -> None:
    _, model = _perforated(batch_first=True)
    for layer in model.dendrite_layers().values():
        layer.resize(1)
        with torch.no_grad():
            for t in (layer.dendrite_weight, layer.dendrite_bias, layer.output_weight):
                t.normal_()
    x = torch.randn(3, 5, 8)
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            out, _ = model.net[0](x, x, x, need_weights=False)
            torch.testing.assert_close(out, _manual(model, x), rtol=1e-5, atol=1e-5)
    exported = torch.jit.script(pf.export(model)[0])
    with torch.no_grad():
        torch.testing.assert_close(exported(x, x, x)[0], _manual(model, x), rtol=1e-5,
                                   atol=1e-5)


def test_wrong_mask_shape_is_reported_like_pytorch() -> None:
    _, model = _perforated()
    model.begin_dendrite_phase()
    q, k, v = _inputs({})
    with pytest.raises(RuntimeError, match=r"2D attn_mask is \[4, 5\], but should be \[4, 6\]"):
        model.net[0](q, k, v, attn_mask=torch.zeros(4, 5))
