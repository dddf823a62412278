"""The model zoo: tiny CPU models of the families people train, and the checks each must pass.

Add a family as one `ZooModel` row in `MODELS` (a builder, an input maker, and the hand count
of its parameters and dendrite neurons); `tests/test_zoo.py` runs every check on every row.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

import perforate as pf

Group = tuple[int, int]  # (neurons, fan-in of each)


@dataclass(frozen=True)
class ZooModel:
    """One zoo row. ``neurons`` lists per wrapped layer its (neurons, fan-in), counted by hand,
    or a list of such groups in the layer's neuron order where fan-ins differ (the layers of a
    multi-layer LSTM). Per-row exceptions to the shared checks are explicit fields."""

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int], tuple[Any, ...]]  # seed -> forward arguments (a batch)
    base_parameters: int  # the network's own parameters, counted by hand
    neurons: list[Group | list[Group]]
    scriptable: bool = True
    config: dict[str, Any] = field(default_factory=dict)
    d0_atol: float = 0.0  # D = 0 against the original: exact unless a wrapper recomputes
    sample_mask: Callable[[tuple[Any, ...]], Tensor] | None = None
    """inputs -> the sample positions that count (padding left out of the dendrite cycle)."""
    onnx_skip: str | None = None
    """Why the ONNX export is not checked for this row (None: it is)."""


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


class SequenceNet(nn.Module):
    """A recurrent layer over float steps ``[B, T, 5]`` (or ``[T, B, 5]``) and a Linear head on
    the mean of its outputs."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 3)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out.mean(1 if self.rnn.batch_first else 0))


class LSTMCellNet(nn.Module):
    """An `nn.LSTMCell` stepped over ``[B, T, 5]`` by the model, a head on the last state."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(5, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], 6)
        c = x.new_zeros(x.shape[0], 6)
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return self.head(h)


class GRUCellNet(nn.Module):
    """An `nn.GRUCell` stepped over ``[B, T, 5]`` by the model, a head on the last state."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(5, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], 6)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.head(h)


class TextClassifier(nn.Module):
    """Token ids ``[B, T]`` (0 = padding) -> Embedding -> a [B, T, C] Linear -> masked mean ->
    a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8, padding_idx=0)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        h = torch.tanh(self.mix(self.embed(tokens)))
        keep = (tokens != 0).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


class TiedLM(nn.Module):
    """A language model whose output Linear shares the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 8)
        self.mix = nn.Linear(8, 8)
        self.lm_head = nn.Linear(8, 12)
        self.lm_head.weight = self.embed.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.lm_head(torch.tanh(self.mix(self.embed(tokens))))


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


def _tokens(seed: int, vocab: int, padded: bool) -> Tensor:
    """Token ids ``[3, 5]`` in 1..vocab-1; with `padded`, 0 after each sequence's length."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, vocab, (3, 5), generator=g)
    return tokens.masked_fill(_pad(seed), 0) if padded else tokens


def _lstm_params(inp: int, hidden: int) -> int:
    return 4 * hidden * (inp + hidden) + 8 * hidden


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
    ZooModel("lstm_2layer", lambda: SequenceNet(nn.LSTM(5, 6, num_layers=2, batch_first=True)),
             lambda s: (_randn(s, 3, 4, 5),),
             base_parameters=_lstm_params(5, 6) + _lstm_params(6, 6) + 21,
             # gate neurons of each layer see [x_t, h_{t-1}]: 5 + 6, then 6 + 6 inputs
             neurons=[[(24, 11), (24, 12)], (3, 6)]),
    ZooModel("gru_bidirectional", lambda: SequenceNet(nn.GRU(5, 4, bidirectional=True)),
             lambda s: (_randn(s, 4, 3, 5),),
             base_parameters=2 * (3 * 4 * (5 + 4) + 24) + 27, neurons=[(24, 9), (3, 8)]),
    ZooModel("lstm_cell", LSTMCellNet, lambda s: (_randn(s, 3, 4, 5),),
             base_parameters=_lstm_params(5, 6) + 21, neurons=[(24, 11), (3, 6)]),
    ZooModel("gru_cell", GRUCellNet, lambda s: (_randn(s, 3, 4, 5),),
             base_parameters=3 * 6 * 11 + 36 + 21, neurons=[(18, 11), (3, 6)]),
    ZooModel("embedding_text_classifier_padded", TextClassifier,
             lambda s: (_tokens(s, 20, padded=True),), base_parameters=160 + 72 + 27,
             neurons=[(8, 8), (3, 8)], sample_mask=lambda inputs: inputs[0] != 0),
    ZooModel("tied_weight_lm", TiedLM, lambda s: (_tokens(s, 12, padded=False),),
             base_parameters=96 + 72 + 12,  # the head's weight is the embedding's
             neurons=[(8, 8), (12, 8)]),
    ZooModel("linear_subclass", lambda: nn.Sequential(MyLinear(5, 6), nn.ReLU(), nn.Linear(6, 3)),
             lambda s: (_randn(s, 7, 5),), base_parameters=36 + 21, neurons=[(6, 5), (3, 6)]),
]


# ------------------------------------------------------------------------------------ checks
def loss_of(out: Tensor) -> Tensor:
    """A loss whose error differs per neuron and sample (so that candidates can correlate)."""
    r = torch.linspace(-1.0, 1.0, out[0].numel()).reshape(out[0].shape)
    return (out * r).sum() + 0.5 * out.square().sum()


def perforate(spec: ZooModel, net: nn.Module | None = None) -> pf.PerforatedModel:
    """`spec`'s network with Cascade-Correlation dendrites (the paper's recipe)."""
    return pf.perforate(net if net is not None else spec.build(),
                        pf.PerforationConfig.paper(candidates=2, seed=0, **spec.config))


def masked(model: pf.PerforatedModel, spec: ZooModel, x: tuple[Any, ...]
           ) -> contextlib.AbstractContextManager[None]:
    """The row's sample mask for the batch `x` (a no-op for rows without one)."""
    if spec.sample_mask is None:
        return contextlib.nullcontext()
    return model.sample_mask(spec.sample_mask(x))


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
        x = spec.inputs(b)
        with masked(model, spec, x):
            out = model(*x)
        loss_of(out).backward()
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


def groups(entry: Group | list[Group]) -> list[Group]:
    """A `ZooModel.neurons` entry as a list of (neurons, fan-in) groups."""
    return entry if isinstance(entry, list) else [entry]


def check_dendrite_cycle(spec: ZooModel) -> None:
    model, stats = grow(spec)
    layers = model.dendrite_layers()
    assert len(layers) == len(spec.neurons)
    assert [m.num_neurons for m in layers.values()] == \
        [sum(n for n, _ in groups(e)) for e in spec.neurons]
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


def check_state_dict_into_fresh_model(spec: ZooModel) -> None:
    """``perforate(fresh).load_state_dict(model.state_dict())``: layers resize to the saved
    sets and the fresh model computes the same function."""
    model, _ = grow(spec)
    randomize_outputs(model)
    fresh = perforate(spec)
    fresh.load_state_dict(model.state_dict())
    assert fresh.structure() == model.structure()
    assert fresh.count_parameters() == model.count_parameters()
    fresh.eval()
    x = spec.inputs(6)
    with torch.no_grad():
        torch.testing.assert_close(fresh(*x), model(*x), rtol=0, atol=0)


def sharing(net: nn.Module) -> list[int]:
    """For each parameter held by several modules (tied weights), how many: sorted."""
    places: dict[int, int] = {}
    for m in net.modules():
        for p in m.parameters(recurse=False):
            places[id(p)] = places.get(id(p), 0) + 1
    return sorted(n for n in places.values() if n > 1)


def check_export(spec: ZooModel) -> None:
    """Export equals the model (eval), keeps tied weights tied, trains (backward), and scripts
    where the model can."""
    model, _ = grow(spec)
    randomize_outputs(model)
    exported = pf.export(model).eval()
    assert not any(isinstance(m, (pf.layers.DendriteLayer, pf.layers.CompositeLayer))
                   for m in exported.modules())
    assert sharing(exported) == sharing(spec.build())
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


def check_onnx(spec: ZooModel, tmp_path: Path) -> None:
    """The ONNX export (eval) run by onnxruntime equals the model on the example batch."""
    import onnxruntime as ort

    model, _ = grow(spec)
    randomize_outputs(model)
    model.eval()
    x = spec.inputs(8)
    path = pf.export(model, format="onnx", path=tmp_path / "m.onnx", example_inputs=x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), x, strict=True)}
    (got,) = session.run(None, feeds)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(*x), rtol=1e-4, atol=1e-5)


def check_sample_mask(spec: ZooModel) -> None:
    """Inside the row's `sample_mask`, the layers whose positions have the mask's shape count
    only the kept positions (the others count every one); at least one layer is masked."""
    x = spec.inputs(0)
    keep = spec.sample_mask(x)  # type: ignore[misc]
    assert 0 < int(keep.sum()) < keep.numel(), "the example batch should have padding"
    counts = []
    for mask in (False, True):
        model = perforate(spec)
        model.begin_dendrite_phase()
        with masked(model, spec, x) if mask else contextlib.nullcontext():
            out = model(*x)
        loss_of(out).backward()
        counts.append({n: float(m.candidates.sums.count)  # type: ignore[union-attr]
                       for n, m in model.dendrite_layers().items()})
    plain, kept = counts
    fraction = float(keep.sum()) / keep.numel()
    reduced = [n for n in plain if kept[n] != plain[n]]
    assert reduced, "the mask left no position out"
    for n in reduced:
        assert math.isclose(kept[n], plain[n] * fraction), n


def check_untrained_recipe(spec: ZooModel) -> None:
    """The default (untrained candidates, trained with the network): `grow`
    keeps the function, the dendrites' V gets a gradient in the neuron phase, and the export
    and a fresh model's `load_state_dict` compute the same function."""
    def anchored() -> pf.PerforatedModel:
        return pf.perforate(spec.build(), pf.PerforationConfig(seed=0, **spec.config))

    torch.manual_seed(0)
    model = anchored().eval()
    probe = spec.inputs(100)
    with torch.no_grad():
        before = model(*probe)
        model.grow()
        torch.testing.assert_close(model(*probe), before, rtol=1e-5, atol=1e-6)
    randomize_outputs(model)
    loss_of(model.train()(*spec.inputs(1))).backward()
    for name, layer in model.dendrite_layers().items():
        grad = layer.dendrite_weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    model.eval()
    exported = pf.export(model).eval()
    fresh = anchored()
    fresh.load_state_dict(model.state_dict())
    x = spec.inputs(7)
    with torch.no_grad():
        torch.testing.assert_close(exported(*x), model(*x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fresh.eval()(*x), model(*x), rtol=0, atol=0)


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
    for entry, layer in zip(spec.neurons, layers, strict=True):
        alive, sizes = layer.dendrite_alive[0], [n for n, _ in groups(entry)]
        assert alive.shape == (sum(sizes),) and alive.sum() > 0
        for (_, fan_in), part in zip(groups(entry), alive.split(sizes), strict=True):
            dendrites += int(part.sum()) * (fan_in + 2)
    assert model.count_parameters() == spec.base_parameters + dendrites
