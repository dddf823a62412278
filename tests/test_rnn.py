"""Recurrent layers (LSTM, GRU, RNN and their cells): D = 0 identity on the fused and unrolled
paths, packed sequences, a dendrite cycle, eq. 3.4 on a cell, perforation, save/load, export
(+ TorchScript), parameter count."""

import copy
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import perforate as pf
from perforate.engine.layers import RNN, DendriteLayer, RNNCell

IN, H = 5, 4  # input and hidden sizes of every test layer

SEQUENCE_LAYERS = {
    "lstm-2l-bi-bf": lambda: nn.LSTM(IN, H, num_layers=2, bidirectional=True, batch_first=True),
    "gru-2l-bi": lambda: nn.GRU(IN, H, num_layers=2, bidirectional=True),
    "lstm-proj-nobias": lambda: nn.LSTM(IN, H, num_layers=2, proj_size=3, bias=False),
    "gru-1l-bf": lambda: nn.GRU(IN, H, batch_first=True),
    "rnn-relu-2l-bi": lambda: nn.RNN(IN, H, num_layers=2, nonlinearity="relu",
                                     bidirectional=True),
}
CELLS = {"lstmcell": lambda: nn.LSTMCell(IN, H), "grucell": lambda: nn.GRUCell(IN, H),
         "rnncell": lambda: nn.RNNCell(IN, H, bias=False)}
ALL = {**SEQUENCE_LAYERS, **CELLS}


def flat(out) -> list[Tensor]:
    """The tensors of a (nested) recurrent output, in order; None entries dropped."""
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat(o)]
    return [] if out is None else [out]


def batch_first(layer: nn.Module) -> bool:
    return isinstance(layer, nn.RNNCellBase) or layer.batch_first


def inputs(layer: nn.Module, batch: int = 3, steps: int = 6) -> Tensor:
    """A [B, IN] step for cells, else a [B, T, IN] or [T, B, IN] sequence."""
    if isinstance(layer, nn.RNNCellBase):
        return torch.randn(batch, IN)
    return torch.randn(batch, steps, IN) if layer.batch_first else torch.randn(steps, batch, IN)


def initial_state(layer: nn.Module, batch: int = 3):
    """Random h0 (and c0) in the layer's own layout."""
    if isinstance(layer, nn.RNNCellBase):
        h = torch.randn(batch, H)
        return (h, torch.randn(batch, H)) if isinstance(layer, nn.LSTMCell) else h
    ld = layer.num_layers * (2 if layer.bidirectional else 1)
    h = torch.randn(ld, batch, layer.proj_size or H)
    return (h, torch.randn(ld, batch, H)) if isinstance(layer, nn.LSTM) else h


def wrap(layer: nn.Module, **config) -> tuple[pf.PerforatedModel, DendriteLayer]:
    model = pf.perforate(nn.Sequential(layer), pf.PerforationConfig.paper(**config))
    return model, model.dendrite_layers()["0"]


def random_dendrites(layer: DendriteLayer, sets: int = 2) -> None:
    """Install `sets` random dendrite sets (a != 0, cascade on) on a recurrent wrapper."""
    layer.resize(sets)
    with torch.no_grad():
        layer.dendrite_weight.normal_(std=0.5).mul_(layer.input_mask)
        layer.dendrite_bias.normal_()
        layer.cascade_weight.normal_()
        layer.output_weight.normal_()


def run_and_grads(fn, x: Tensor, hx, params: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Outputs of fn(x, hx) and the gradients of a fixed random loss w.r.t. x, hx and params."""
    leaves = [x, *flat(hx)]
    for t in leaves:
        t.requires_grad_(True)
        t.grad = None
    for p in params:
        p.grad = None
    outs = flat(fn(x, hx))
    gen = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs)
    loss.backward()
    return [o.detach() for o in outs], [t.grad.clone() for t in leaves + params]


# ------------------------------------------------------------------------------ D = 0
@pytest.mark.parametrize("name", list(ALL))
def test_zero_dendrites_call_the_fused_kernel_exactly(name: str) -> None:
    original = ALL[name]()
    _, layer = wrap(copy.deepcopy(original))
    assert isinstance(layer, RNNCell if name in CELLS else RNN)
    x, hx = inputs(original), initial_state(original)
    out_o, g_o = run_and_grads(original, x, hx, list(original.parameters()))
    out_w, g_w = run_and_grads(layer, x, hx, list(layer.base_layer.parameters()))
    for a, b in zip(out_o + g_o, out_w + g_w, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("name", list(ALL))
def test_unrolled_path_with_zero_dendrites_equals_fused_kernel(name: str, with_h0: bool) -> None:
    original = ALL[name]()
    _, layer = wrap(copy.deepcopy(original))
    x = inputs(original)
    hx = initial_state(original) if with_h0 else None
    out_o, g_o = run_and_grads(original, x, hx, list(original.parameters()))
    out_u, g_u = run_and_grads(layer.forward_unrolled, x, hx, list(layer.base_layer.parameters()))
    assert len(out_o) == len(out_u) and len(g_o) == len(g_u) >= 3
    for a, b in zip(out_o + g_o, out_u + g_u, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["lstm-2l-bi-bf", "gru-2l-bi", "lstmcell"])
def test_unbatched_input_matches_fused_kernel(name: str) -> None:
    original = ALL[name]()
    _, layer = wrap(copy.deepcopy(original))
    x = inputs(original, batch=1)[0] if name in CELLS else torch.randn(6, IN)
    for a, b in zip(flat(original(x)), flat(layer.forward_unrolled(x)), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_dropout_between_layers_as_pytorch() -> None:
    """dropout=1 makes PyTorch's own dropout deterministic: every layer but the last sees 0."""
    original = nn.LSTM(IN, H, num_layers=3, dropout=1.0, batch_first=True).train()
    _, layer = wrap(copy.deepcopy(original))
    x = torch.randn(2, 5, IN)
    out_o, out_u = flat(original(x)), flat(layer.forward_unrolled(x))
    for a, b in zip(out_o, out_u, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert out_o[0].abs().sum() > 0  # the last layer's output is not dropped


@pytest.mark.parametrize("enforce_sorted", [False, True])
@pytest.mark.parametrize("name", ["lstm-2l-bi-bf", "gru-2l-bi", "lstm-proj-nobias"])
def test_unrolled_packed_sequence_equals_fused_kernel(name: str, enforce_sorted: bool) -> None:
    original = SEQUENCE_LAYERS[name]()
    _, layer = wrap(copy.deepcopy(original))
    lengths = [6, 4, 4, 1] if enforce_sorted else [4, 6, 1, 4]
    padded = torch.randn(4, 6, IN)
    hx = initial_state(original, batch=4)

    def call(fn):
        def run(x: Tensor, hx_):
            out, state = fn(pack_padded_sequence(x, lengths, batch_first=True,
                                                 enforce_sorted=enforce_sorted), hx_)
            assert isinstance(out, PackedSequence)
            return pad_packed_sequence(out, batch_first=True)[0], state
        return run

    out_o, g_o = run_and_grads(call(original), padded, hx, list(original.parameters()))
    out_u, g_u = run_and_grads(call(layer.forward_unrolled), padded, hx,
                               list(layer.base_layer.parameters()))
    for a, b in zip(out_o + g_o, out_u + g_u, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["lstm-2l-bi-bf", "gru-2l-bi"])
def test_packed_sequence_with_dendrites_and_its_export(name: str) -> None:
    """With dendrites, a packed batch gives each sequence what it gets alone; so does the
    (eager) export."""
    model, layer = wrap(SEQUENCE_LAYERS[name](), perforated=False)
    random_dendrites(layer, 2)
    exported = pf.export(model)[0]
    seqs = [torch.randn(n, IN) for n in (3, 6, 1)]
    packed = nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    for fn in (layer, exported):
        out, state = fn(packed)
        padded = pad_packed_sequence(out, batch_first=True)[0]
        for b, x in enumerate(seqs):
            one = x[None] if layer.batch_first else x[:, None]
            out_1, state_1 = layer(one)
            out_1 = out_1[0] if layer.batch_first else out_1[:, 0]
            torch.testing.assert_close(padded[b, :len(x)], out_1, rtol=0, atol=1e-6)
            for s_all, s_1 in zip(flat(state), flat(state_1), strict=True):
                torch.testing.assert_close(s_all[:, b], s_1[:, 0], rtol=0, atol=1e-6)


def test_padded_steps_of_a_packed_batch_are_no_samples() -> None:
    """The statistics of a packed batch are those of its sequences run one by one."""
    lengths = [3, 7, 5]
    seqs = [torch.randn(n, IN) for n in lengths]
    sums = []
    for packed in (True, False):
        torch.manual_seed(0)
        model, layer = wrap(nn.GRU(IN, H, num_layers=2, bidirectional=True), candidates=2,
                            seed=0)
        model.begin_dendrite_phase()
        if packed:
            out = layer(nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False))[0]
            pad_packed_sequence(out)[0].square().sum().backward()
        else:
            for x in seqs:
                layer(x[:, None])[0].square().sum().backward()
        sums.append(layer.candidates.sums)
    assert float(sums[0].count) == sum(lengths) == float(sums[1].count)
    torch.testing.assert_close(sums[0].cand, sums[1].cand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sums[0].err, sums[1].err, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------- a dendrite cycle
class SeqModel(nn.Module):
    """A recurrent layer (cells: looped over time) and a Linear head on every step."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn
        out = H * 2 if getattr(rnn, "bidirectional", False) else getattr(rnn, "proj_size", 0) or H
        self.head = nn.Linear(out, 2)

    def forward(self, x: Tensor) -> Tensor:  # x [B, T, IN]
        if isinstance(self.rnn, (nn.RNNCellBase, RNNCell)):
            state, outs = None, []
            for t in range(x.shape[1]):
                state = self.rnn(x[:, t], state)
                outs.append(state[0] if isinstance(state, tuple) else state)
            y = torch.stack(outs, 1)
        else:
            y = self.rnn(x if self.rnn.batch_first else x.transpose(0, 1))[0]
            y = y if self.rnn.batch_first else y.transpose(0, 1)
        return self.head(y)


def task(batches: int = 3) -> list[tuple[Tensor, Tensor]]:
    """Tiny sequence regression: the running sum of the first input feature, per step."""
    data = []
    for _ in range(batches):
        x = torch.randn(4, 6, IN)
        y = torch.stack([x[..., 0].cumsum(1), x[..., 1].cummax(1).values], -1)
        data.append((x, y))
    return data


@pytest.mark.parametrize("learning", ["cascade_correlation", "task_loss"])
@pytest.mark.parametrize("name", ["lstm-2l-bi-bf", "gru-2l-bi", "lstm-proj-nobias",
                                  "rnn-relu-2l-bi", "lstmcell", "grucell", "rnncell"])
def test_dendrite_cycle_keeps_the_function_at_install(name: str, learning: str) -> None:
    model = pf.perforate(SeqModel(ALL[name]()), pf.PerforationConfig.paper(candidates=3, seed=0,
                                                                           dendrite_phase=learning))
    assert set(model.dendrite_layers()) == {"rnn", "head"}  # default targets
    layer = model.dendrite_layers()["rnn"]
    data = task()
    probe = torch.randn(2, 6, IN)
    before = model(probe).detach()
    model.begin_dendrite_phase()
    opt = model.candidate_optimizer()
    start = layer.candidates.weight.detach().clone()
    for _ in range(2):
        for x, y in data:
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        reports = model.end_epoch()
    pool = layer.candidates
    assert not torch.equal(pool.weight.detach(), start)  # the candidates learned
    assert (pool.weight.detach() * (1 - layer.input_mask)).abs().max() == 0  # padding stays 0
    # One sample position per batch element and time step (cells: one call per step).
    assert float(pool.sums.count) == 0 and reports["rnn"].best_corr.shape == (layer.num_neurons,)
    assert float(reports["rnn"].best_corr.max()) > 0.1
    stats = model.end_dendrite_phase()
    assert stats["rnn"]["neurons"] == layer.num_neurons and layer.num_dendrites == 1
    assert (layer.dendrite_weight * (1 - layer.input_mask)).abs().max() == 0
    if learning == "task_loss":  # installs the trained output weights: the function moves
        return
    torch.testing.assert_close(model(probe).detach(), before, rtol=0, atol=1e-6)
    # The installed dendrites change the function once their output weights are non-zero.
    with torch.no_grad():
        layer.output_weight.fill_(1.0)
    assert (model(probe).detach() - before).abs().max() > 1e-3


def test_candidates_see_the_hidden_states_of_the_pass_they_learn_from() -> None:
    """With dropout between layers, the recording pass and the autograd pass share masks: the
    candidates of layer 1 see as h_{t-1} exactly the output the loss is computed from."""
    model, layer = wrap(nn.LSTM(IN, H, num_layers=2, dropout=0.5, batch_first=True),
                        candidates=2, seed=0)
    model.begin_dendrite_phase()
    seen = []
    layer.candidates.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    out = layer(torch.randn(3, 6, IN))[0]
    u = seen[0]  # [B, T, layer-directions, F]: row 1 is [x_t of layer 1, h_{t-1}, padding]
    torch.testing.assert_close(u[:, 1:, 1, H:2 * H], out[:, :-1].detach(), rtol=0, atol=0)
    assert (u[:, :, 1, :H] == 0).float().mean() > 0.2  # layer 1's input was dropped out


def test_candidates_are_drawn_at_each_layers_own_fan_in() -> None:
    """Layer 0 has fan-in 3 + 16 = 19, layer 1 16 + 16 = 32 (the padded width)."""
    model, layer = wrap(nn.LSTM(3, 16, num_layers=2), candidates=4, seed=0)
    model.begin_dendrite_phase()
    w = layer.candidates.weight.detach()
    g = 4 * 16
    assert w[:, :g, 19:].abs().max() == 0  # padding of layer 0
    for rows, fan_in in ((slice(0, g), 19), (slice(g, 2 * g), 32)):
        std = float(w[:, rows, :fan_in].std())
        assert abs(std * fan_in ** 0.5 - 1.0) < 0.1, (fan_in, std)


def test_sample_positions_are_batch_times_time() -> None:
    model, layer = wrap(nn.GRU(IN, H, num_layers=2, bidirectional=True, batch_first=True),
                        candidates=2, seed=0)
    model.begin_dendrite_phase()
    out, h_n = layer(torch.randn(3, 7, IN))
    (out.square().sum() + h_n.sum()).backward()
    assert float(layer.candidates.sums.count) == 3 * 7


def test_a_pass_without_autograd_skips_the_candidates() -> None:
    """Validation in the dendrite phase: the fused kernel, no statistics."""
    original = nn.LSTM(IN, H, num_layers=2, batch_first=True).double()
    model, layer = wrap(copy.deepcopy(original), candidates=2, seed=0)
    model.begin_dendrite_phase()
    x = torch.randn(3, 7, IN, dtype=torch.float64)
    with torch.no_grad():
        out, ref = layer(x), original(x)
    # (Not bit-equal: PyTorch's CPU kernel differs in the last bit for frozen weights.)
    torch.testing.assert_close(out[0], ref[0], rtol=0, atol=1e-12)
    assert float(layer.candidates.sums.count) == 0 and int(layer.candidates.seen) == 0
    layer(x)[0].sum().backward()  # float64 through the dendrite phase
    assert float(layer.candidates.sums.count) == 3 * 7
    assert layer.candidates.weight.grad.dtype == torch.float64


def test_candidate_gradient_is_eq_3_4_on_an_lstm_cell() -> None:
    """dL/dc = -sign(S) (e - mean e) / std e; dL/dU = sum_p dL/dc * g'(pre) [x, h]."""
    torch.manual_seed(3)
    cell = nn.LSTMCell(3, 2)
    x, h0, c0, r = torch.randn(8, 3), torch.randn(8, 2), torch.randn(8, 2), torch.randn(8, 2)
    model, layer = wrap(copy.deepcopy(cell), candidates=2, seed=0)
    model.begin_dendrite_phase()
    pool = layer.candidates
    h1, c1 = layer(x, (h0, c0))
    ((h1 * r).sum() + c1.square().sum()).backward()

    # Hand computation: the gate error e = dLoss/dpre from a plain re-implementation.
    pre = (x @ cell.weight_ih.T + cell.bias_ih + h0 @ cell.weight_hh.T + cell.bias_hh).detach()
    pre.requires_grad_(True)
    i, f, g, o = pre.chunk(4, 1)
    c = torch.sigmoid(f) * c0 + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    ((h * r).sum() + c.square().sum()).backward()
    e = pre.grad  # [P, N]
    u = torch.cat([x, h0], 1)  # [P, F]
    w, b = pool.weight.detach(), pool.bias.detach()
    cand = torch.tanh(torch.einsum("pf,knf->pkn", u, w) + b)  # [P, K, N]
    ec = e - e.mean(0)
    s = (cand * ec[:, None]).sum(0)  # S [K, N] (sum of centred products)
    grad_c = -torch.sign(s) * ec[:, None] / e.std(0, correction=0)
    grad_w = torch.einsum("pkn,pf->knf", grad_c * (1 - cand**2), u)
    torch.testing.assert_close(pool.weight.grad, grad_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pool.bias.grad, (grad_c * (1 - cand**2)).sum(0), rtol=1e-5,
                               atol=1e-6)


# ---------------------------------------------------------------------------- perforation
def _dendrite_terms(layer: DendriteLayer, rec: list[list[Tensor]]) -> Tensor:
    """sum_j a_j d_j per gate neuron and step ``[B, T, N]`` from a recorded pass."""
    n = layer.spec.gate_width
    terms = []
    for ld, (_, *ds) in enumerate(rec):
        a = layer.output_weight.detach()[:, ld * n:(ld + 1) * n]
        terms.append(sum(a[j] * d for j, d in enumerate(ds)))
    return torch.cat(terms, -1)


@pytest.mark.parametrize("perforated", [True, False])
@pytest.mark.parametrize("name", ["lstm-2l-bi-bf", "gru-2l-bi"])
def test_perforation_makes_dendrite_terms_constants_for_backprop(name: str,
                                                                 perforated: bool) -> None:
    """Perforated: the input and h0 get exactly the gradients of the network in which every
    step's dendrite term is a constant (no error flows back through dendrite inputs)."""
    torch.manual_seed(4)
    _, layer = wrap(SEQUENCE_LAYERS[name](), perforated=perforated)
    random_dendrites(layer, 2)
    x, hx = inputs(layer.base_layer), initial_state(layer.base_layer)
    h0, c0 = hx if isinstance(hx, tuple) else (hx, None)
    x_bf = x if layer.batch_first else x.transpose(0, 1)
    with torch.no_grad():
        *_, rec = layer.run(x_bf, h0, c0, detach=True, record=True)
    terms = _dendrite_terms(layer, rec)
    plain = copy.deepcopy(layer)
    plain.resize(0)  # same weights, no dendrites: the terms enter as a constant probe

    def constant_terms(x_: Tensor, hx_) -> tuple[Tensor, ...]:
        h_, c_ = hx_ if isinstance(hx_, tuple) else (hx_, None)
        x_ = x_ if layer.batch_first else x_.transpose(0, 1)
        out, h_n, c_n, _ = plain.run(x_, h_, c_, detach=True, probe=terms)
        return out if layer.batch_first else out.transpose(0, 1), h_n, c_n

    out_w, g_w = run_and_grads(layer, x, hx, [])
    out_c, g_c = run_and_grads(constant_terms, x, hx, [])
    assert len(g_w) == len(g_c) >= 2
    torch.testing.assert_close(out_w[0], out_c[0], rtol=0, atol=1e-6)
    same = all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(g_w, g_c, strict=True))
    assert same == perforated


def test_zero_output_weights_give_the_original_gradients() -> None:
    original = nn.GRU(IN, H, num_layers=2, batch_first=True)
    _, layer = wrap(copy.deepcopy(original))
    random_dendrites(layer, 1)
    with torch.no_grad():
        layer.output_weight.zero_()
    x = torch.randn(3, 6, IN)
    out_o, g_o = run_and_grads(original, x, None, list(original.parameters()))
    out_w, g_w = run_and_grads(layer, x, None, list(layer.base_layer.parameters()))
    for a, b in zip(out_o + g_o, out_w + g_w, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert layer.output_weight.grad.abs().sum() > 0  # the output weights do learn


# ---------------------------------------------------------------------- save, export, count
@pytest.mark.parametrize("name", ["lstm-2l-bi-bf", "lstm-proj-nobias", "grucell"])
def test_save_pretrained_and_load_round_trip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(5)
    net = SeqModel(ALL[name]())
    fresh = copy.deepcopy(net)
    model = pf.perforate(net, pf.PerforationConfig.paper(candidates=2, seed=0))
    for layer in model.dendrite_layers().values():
        if isinstance(layer, (RNN, RNNCell)):
            random_dendrites(layer, 2)
        else:
            layer.resize(2)
    model.save_pretrained(tmp_path)
    loaded = pf.load(tmp_path, fresh)
    assert loaded.structure() == model.structure() == {"rnn": 2, "head": 2}
    x = torch.randn(2, 6, IN)
    assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("name", list(ALL))
def test_export_equals_model_forward_backward_and_scripted(name: str) -> None:
    torch.manual_seed(6)
    original = ALL[name]()
    model, layer = wrap(original, perforated=False)  # the export has plain autograd
    random_dendrites(layer, 2)
    exported = pf.export(model)[0]
    assert not any(isinstance(m, DendriteLayer) for m in exported.modules())
    scripted = torch.jit.script(exported)
    x, hx = inputs(original), initial_state(original)
    out_m, g_m = run_and_grads(layer, x, hx, [])
    for fn in (exported, scripted):
        out_e, g_e = run_and_grads(fn, x, hx, [])
        for a, b in zip(out_m + g_m, out_e + g_e, strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    # No initial state, and an unbatched call.
    x1 = x[0] if name in CELLS or batch_first(original) else x[:, 0]
    for call in ((x,), (x1,)):
        for a, b in zip(flat(layer(*call)), flat(scripted(*call)), strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    # With no dendrite the export is the original layer itself.
    plain = pf.export(wrap(ALL[name]())[0])[0]
    assert type(plain) is type(original)


class LSTMHead(nn.Module):
    """A scriptable sequence model: LSTM, then a Linear head on every step."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(IN, H, num_layers=2, batch_first=True)
        self.head = nn.Linear(H, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(x)[0])


def test_scripted_export_runs_without_perforate(tmp_path: Path) -> None:
    torch.manual_seed(8)
    model = pf.perforate(LSTMHead(), pf.PerforationConfig.paper())
    for layer in model.dendrite_layers().values():
        random_dendrites(layer, 1) if isinstance(layer, RNN) else layer.resize(1)
    model.eval()
    x = torch.randn(2, 6, IN)
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(pf.export(model)), str(path))
    script = textwrap.dedent(f"""
        import sys
        sys.modules["perforate"] = None
        import torch
        m = torch.jit.load(r"{path}")
        torch.manual_seed(0)
        torch.save(m(torch.load(r"{tmp_path / 'x.pt'}")), r"{tmp_path / 'y.pt'}")
    """)
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", script], check=True)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), model(x).detach(), rtol=0,
                               atol=1e-6)


def test_parameter_count_matches_a_hand_count() -> None:
    lstm = nn.LSTM(IN, H, num_layers=2, bidirectional=True)
    model, layer = wrap(lstm)
    g = 4 * H  # gate neurons per layer-direction
    base = 2 * (g * IN + g * H + 2 * g) + 2 * (g * 2 * H + g * H + 2 * g)
    assert model.count_parameters() == base
    random_dendrites(layer, 2)
    fan_in = 2 * g * (IN + H) + 2 * g * (2 * H + H)  # real weights of one set (no padding)
    n = 4 * g
    dendrites = 2 * fan_in + 2 * n + 1 * n + 2 * n  # V, biases, cascade (i < j), a
    assert model.count_parameters() == base + dendrites


def test_wrapper_shows_the_layer_attributes() -> None:
    _, layer = wrap(nn.LSTM(IN, H, num_layers=2, batch_first=True, proj_size=2))
    assert (layer.hidden_size, layer.num_layers, layer.batch_first, layer.proj_size) == (
        H, 2, True, 2)
    assert layer.weight_hh_l1 is layer.base_layer.weight_hh_l1
    layer.flatten_parameters()
    with pytest.raises(AttributeError):
        _ = layer.no_such_attribute


def test_a_subclass_with_its_own_forward_is_refused() -> None:
    class Peephole(nn.LSTM):
        def forward(self, x, hx=None):
            return super().forward(x * 2, hx)

    class Plain(nn.GRU):
        pass

    with pytest.raises(pf.TargetError, match=r"overrides"):  # named: refused with the reason
        pf.perforate(nn.Sequential(Peephole(IN, H)),
                     pf.PerforationConfig.paper(target_modules=["0"]))
    with pytest.raises(pf.TargetError, match=r"nothing to wrap.*overrides"):  # by type: skipped
        pf.perforate(nn.Sequential(Peephole(IN, H)),
                     pf.PerforationConfig.paper(target_modules=[nn.LSTM]))
    model = pf.perforate(nn.Sequential(Plain(IN, H)),
                         pf.PerforationConfig.paper(target_modules=[nn.GRU]))
    assert isinstance(model.net[0], RNN)



def test_the_first_growth_says_what_recurrent_dendrites_cost(caplog) -> None:
    """Leaving the fused kernel is said once, at the growth from D = 0, naming the layers."""
    model = pf.perforate(nn.ModuleDict({"rnn": nn.LSTM(3, 4), "head": nn.Linear(4, 2)}))
    with caplog.at_level(logging.WARNING, logger="perforate.engine.model"):
        model.grow()
    notes = [r.getMessage() for r in caplog.records if "fused kernel" in r.getMessage()]
    assert len(notes) == 1 and notes[0].startswith("'rnn':")
    assert "exclude_modules=['rnn']" in notes[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="perforate.engine.model"):
        model.grow()
    assert not [r for r in caplog.records if "fused kernel" in r.getMessage()]
