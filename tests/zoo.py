"""The model zoo: tiny CPU models of the families people train, and the checks each must pass.

Add a family as one `ZooModel` row in `MODELS` (a builder, an input maker, and the hand count
of its parameters and dendrite neurons); `tests/test_zoo.py` runs every check on every row.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

import perforate as pf


@dataclass(frozen=True)
class ZooModel:
    """One zoo row. ``neurons`` lists (neurons, fan-in) per wrapped layer, counted by hand."""

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int], tuple[Any, ...]]  # seed -> forward arguments (a batch)
    base_parameters: int  # the network's own parameters, counted by hand
    neurons: list[tuple[int, int]]
    scriptable: bool = True
    config: dict[str, Any] = field(default_factory=dict)
    d0_atol: float = 0.0  # D = 0 against the original: exact unless a wrapper recomputes


# ------------------------------------------------------------------------------------ models
class ResBlockNet(nn.Module):
    """conv-BN-ReLU, a residual block (conv-BN-ReLU-conv-BN + skip), pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        x = torch.relu(x + y)
        return self.fc(x.mean(dim=(2, 3)))


class EncoderNet(nn.Module):
    """A 2-layer ``nn.TransformerEncoder`` (batch first, padding mask) and a pooled head."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        h = self.encoder(x, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


class SelfAttentionNet(nn.Module):
    """Batch-first self-attention with a key padding mask; uses the returned weights."""

    def __init__(self, **kw: Any) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, **kw)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor, pad: Tensor) -> Tensor:
        out, w = self.attn(x, x, x, key_padding_mask=pad, need_weights=True)
        assert w is not None
        return self.head(out.mean(1)) + w.mean()


class CrossAttentionNet(nn.Module):
    """Sequence-first cross-attention (kdim, vdim != embed_dim) with a causal bool attn_mask,
    no weights returned (PyTorch's scaled_dot_product_attention path)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, kdim=5, vdim=3)
        self.head = nn.Linear(8, 3)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        mask = torch.ones(q.shape[0], k.shape[0], dtype=torch.bool).triu(1)
        out, _ = self.attn(q, k, v, attn_mask=mask, need_weights=False)
        return self.head(out.mean(0))


class BiasKVAttentionNet(nn.Module):
    """No projection biases, add_bias_kv, add_zero_attn, a float 3-D attn_mask and per-head
    weights (average_attn_weights=False)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 4, bias=False, add_bias_kv=True, add_zero_attn=True,
                                          batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        out, w = self.attn(x, x, x, attn_mask=mask, average_attn_weights=False)
        assert w is not None
        return self.head(out.mean(1)) + w[:, 0].mean()


class Decoder(nn.Module):
    """Linear -> [8, 3, 3] -> ConvTranspose2d (stride 2, output_padding) -> ReLU ->
    ConvTranspose2d (groups 2, dilation 2, no bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 72)
        self.up1 = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.up2 = nn.ConvTranspose2d(4, 2, 3, groups=2, dilation=2, bias=False)

    def forward(self, z: Tensor) -> Tensor:
        h = torch.relu(self.fc(z)).view(-1, 8, 3, 3)
        return self.up2(torch.relu(self.up1(h)))


class MyLinear(nn.Linear):
    """A subclass that keeps nn.Linear.forward (adds a method only)."""

    def fan_in(self) -> int:
        return self.in_features


def _pad(seed: int, b: int = 3, t: int = 5) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    lengths[0] = t
    return torch.arange(t).unsqueeze(0) >= lengths.unsqueeze(1)


def _randn(seed: int, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


_ATTN = [(8, 8)] * 4  # q, k, v, out projections of an 8-wide attention
MODELS: list[ZooModel] = [
    ZooModel("resnet_bn", ResBlockNet, lambda s: (_randn(s, 4, 3, 6, 6),),
             base_parameters=224 + 16 + 576 + 16 + 576 + 16 + 36,
             neurons=[(8, 27), (8, 72), (8, 72), (4, 8)]),
    ZooModel("transformer_encoder", EncoderNet, lambda s: (_randn(s, 3, 5, 8), _pad(s)),
             # per layer: in_proj 192 + 24, out_proj 72, linear1 144, linear2 136, norms 32
             base_parameters=2 * 600 + 27,
             neurons=2 * [*_ATTN, (16, 8), (8, 16)] + [(3, 8)]),
    ZooModel("mha_self", SelfAttentionNet, lambda s: (_randn(s, 3, 5, 8), _pad(s)),
             base_parameters=192 + 24 + 72 + 27, neurons=[*_ATTN, (3, 8)]),
    ZooModel("mha_cross_kdim_vdim", CrossAttentionNet,
             lambda s: (_randn(s, 4, 3, 8), _randn(s + 1, 6, 3, 5), _randn(s + 2, 6, 3, 3)),
             base_parameters=64 + 40 + 24 + 24 + 72 + 27,
             neurons=[(8, 8), (8, 5), (8, 3), (8, 8), (3, 8)]),
    ZooModel("mha_bias_kv_zero_attn", BiasKVAttentionNet,
             lambda s: (_randn(s, 3, 5, 8), _randn(s + 1, 12, 5, 5)),
             base_parameters=192 + 64 + 16 + 27, neurons=[*_ATTN, (3, 8)]),
    ZooModel("conv_transpose_decoder", Decoder, lambda s: (_randn(s, 4, 4),),
             base_parameters=360 + 292 + 36, neurons=[(72, 4), (4, 72), (2, 18)]),
    ZooModel("weight_norm_linear",
             lambda: nn.Sequential(weight_norm(nn.Linear(5, 6)), nn.Tanh(), nn.Linear(6, 3)),
             lambda s: (_randn(s, 7, 5),), base_parameters=6 + 30 + 6 + 21,
             neurons=[(6, 5), (3, 6)], scriptable=False),  # parametrize is not scriptable
    ZooModel("linear_subclass", lambda: nn.Sequential(MyLinear(5, 6), nn.ReLU(), nn.Linear(6, 3)),
             lambda s: (_randn(s, 7, 5),), base_parameters=36 + 21, neurons=[(6, 5), (3, 6)]),
]


# ------------------------------------------------------------------------------------ checks
def loss_of(out: Tensor) -> Tensor:
    """A loss whose error differs per neuron and sample (so that candidates can correlate)."""
    r = torch.linspace(-1.0, 1.0, out[0].numel()).reshape(out[0].shape)
    return (out * r).sum() + 0.5 * out.square().sum()


def perforate(spec: ZooModel, net: nn.Module | None = None) -> pf.PerforatedModel:
    return pf.perforate(net if net is not None else spec.build(),
                        pf.PerforationConfig(candidates=2, seed=0, **spec.config))


def _grads(net: nn.Module) -> dict[str, Tensor]:
    return {n.replace(".base_layer", ""): p.grad.clone() for n, p in net.named_parameters()
            if p.grad is not None}


def check_zero_dendrites_match(spec: ZooModel) -> None:
    """D = 0: outputs and gradients equal the original network's (train), outputs (eval)."""
    torch.manual_seed(0)
    original = spec.build()
    model = perforate(spec, copy.deepcopy(original))
    x = spec.inputs(1)
    out_o, out_w = original(*x), model(*x)
    tol = {"rtol": 0.0, "atol": spec.d0_atol}
    torch.testing.assert_close(out_w, out_o, **tol)
    loss_of(out_o).backward()
    loss_of(out_w).backward()
    g_o, g_w = _grads(original), _grads(model.net)
    assert g_o.keys() == g_w.keys() and g_o
    for k in g_o:
        torch.testing.assert_close(g_w[k], g_o[k], **tol, msg=k)
    original.eval()
    model.eval()
    with torch.no_grad():  # the original may take PyTorch's fused inference path here
        torch.testing.assert_close(model(*x), original(*x), rtol=1e-5, atol=1e-6)


def grow(spec: ZooModel, batches: int = 3) -> tuple[pf.PerforatedModel, dict[str, Any]]:
    """One dendrite cycle; checks that installing leaves the function unchanged."""
    torch.manual_seed(0)
    model = perforate(spec)
    probe = spec.inputs(100)
    model.eval()
    with torch.no_grad():
        before = model(*probe)
    model.train()
    model.begin_dendrite_phase()
    opt = model.candidate_optimizer()
    for b in range(batches):
        opt.zero_grad()
        loss_of(model(*spec.inputs(b))).backward()
        opt.step()
    model.end_epoch()
    stats = model.end_dendrite_phase()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(*probe), before, rtol=1e-5, atol=1e-6)
    return model, stats


def randomize_outputs(model: pf.PerforatedModel) -> None:
    """Give every installed set random output weights so that the dendrites change the model."""
    with torch.no_grad():
        for layer in model.dendrite_layers().values():
            layer.output_weight.normal_()


def check_dendrite_cycle(spec: ZooModel) -> None:
    model, stats = grow(spec)
    layers = model.dendrite_layers()
    assert len(layers) == len(spec.neurons)
    assert [m.num_neurons for m in layers.values()] == [n for n, _ in spec.neurons]
    for name, layer in layers.items():
        assert layer.num_dendrites == 1, name
        assert stats[name]["max_corr"] > 0, f"{name}: no candidate correlated (no error seen?)"
    probe = spec.inputs(100)
    with torch.no_grad():
        before = model(*probe)
        randomize_outputs(model)
        assert not torch.allclose(model(*probe), before), "the dendrites change nothing"


def check_save_load(spec: ZooModel, tmp_path: Path) -> None:
    model, _ = grow(spec)
    randomize_outputs(model)
    model.save_pretrained(tmp_path)
    loaded = pf.load(tmp_path, spec.build()).eval()
    x = spec.inputs(5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*x), model(*x), rtol=0, atol=0)


def check_export(spec: ZooModel) -> None:
    """Export equals the model (eval), trains (backward), and scripts where the model can."""
    model, _ = grow(spec)
    randomize_outputs(model)
    exported = pf.export(model).eval()
    assert not any(isinstance(m, (pf.layers.DendriteLayer, pf.layers.CompositeLayer))
                   for m in exported.modules())
    x = spec.inputs(7)
    with torch.no_grad():
        ref = model(*x)
        torch.testing.assert_close(exported(*x), ref, rtol=1e-5, atol=1e-5)
    trainable = copy.deepcopy(exported).train()  # (training moves BatchNorm statistics)
    loss_of(trainable(*x)).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.parameters())
    if spec.scriptable:
        scripted = torch.jit.script(exported.eval())
        with torch.no_grad():
            torch.testing.assert_close(scripted(*x), ref, rtol=1e-5, atol=1e-5)


def check_parameter_count(spec: ZooModel) -> None:
    """The network's own parameters, plus per layer and alive neuron: V (fan-in), bias and
    output weight; one set, so no cascade entries. (A neuron no error reached, e.g. a dead
    ReLU, has a dead dendrite, which is not counted; every layer has alive ones.)"""
    plain = spec.build()
    assert sum(p.numel() for p in plain.parameters()) == spec.base_parameters
    model, _ = grow(spec)
    layers = list(model.dendrite_layers().values())
    assert len(layers) == len(spec.neurons)
    dendrites = 0
    for (n, fan_in), layer in zip(spec.neurons, layers, strict=True):
        alive = int(layer.dendrite_alive.sum())
        assert layer.dendrite_alive.shape == (1, n) and alive > 0
        dendrites += alive * (fan_in + 2)
    assert model.count_parameters() == spec.base_parameters + dendrites
