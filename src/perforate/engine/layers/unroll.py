"""The time-unrolled forward of an LSTM / GRU / RNN (or cell) with dendrites on its gate neurons.

PyTorch's fused kernels never expose the gate pre-activations, so once dendrites are installed
(or candidates attached) a recurrent layer runs this Python loop over time instead. Per
layer-direction and step, with ``u_t = [x_t, h_{t-1}]`` (``~``: detached when perforated)::

    pre_t  = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh                    # gate pre-activations [G*H]
    d_j,t  = g(V_j u~_t + b_j + sum_{i<j} C_j[:, i] * d_i,t)          # installed dendrite j
    pre'_t = pre_t + sum_j a_j * d_j,t (+ probe_t, the candidates' error tap)

LSTM: ``i, f, g, o = pre'_t``; ``c_t = s(f) c_{t-1} + s(i) tanh(g)``; ``h_t = s(o) tanh(c_t)``
(times ``W_hr`` with ``proj_size``). GRU (PyTorch's form: the n gate's hidden part is
``r * (W_hn h + b_hn)``): ``r, z = s(pre'_r), s(pre'_z)``;
``n = tanh(W_in x + b_in + r * (W_hn h + b_hn) + sum_j a_j d_j,n)``, i.e. the n neuron's dendrite
term is added to the *full* argument of its tanh, outside the reset gate; ``h_t = (1 - z) n +
z h_{t-1}``. `nn.RNN`: ``h_t = tanh(pre'_t)`` (or ReLU). With no dendrite and no probe this is
exactly PyTorch's recurrence.

`RecurrentCore` holds the computation (TorchScript-able); the wrapper and the exported module
both call it. Its weights come per layer-direction as a list `PARAMS` of optional tensors.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

#: Order of one layer-direction's tensors in the lists `RecurrentCore.run` takes.
PARAMS = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr",  # the layer's own (biases, w_hr optional)
          "dendrite_x",  # [D*n, in_l]   V_j on x_t, all sets stacked
          "dendrite_h",  # [D*n, P]      V_j on h_{t-1}
          "dendrite_b",  # [D*n]
          "cascade",  # [D, D, n]
          "output")  # [D, n]        a_j


class RecurrentCore(nn.Module):
    """The unrolled recurrence over all layers and directions (no parameters of its own)."""

    lstm: torch.jit.Final[bool]
    gru: torch.jit.Final[bool]
    relu: torch.jit.Final[bool]  # nn.RNN's nonlinearity (else tanh)
    num_layers: torch.jit.Final[int]
    directions: torch.jit.Final[int]

    def __init__(self, mode: str, num_layers: int, directions: int,
                 activation: nn.Module) -> None:
        super().__init__()
        self.lstm, self.gru, self.relu = mode == "LSTM", mode == "GRU", mode == "RNN_RELU"
        self.num_layers = num_layers
        self.directions = directions
        self.activation = activation

    def run(self, x: Tensor, h0: Tensor, c0: Tensor | None, params: list[list[Tensor | None]],
            detach: bool, probe: Tensor | None, masks: list[Tensor] | None, record: bool,
            valid: Tensor | None = None
            ) -> tuple[Tensor, Tensor, Tensor | None, list[list[Tensor]]]:
        """All layers over a batch-first ``x [B, T, I]`` from ``h0 [Ld, B, P]`` (``c0 [Ld, B,
        H]`` for LSTM). `detach`: dendrite inputs detached (perforated). ``probe [B, T, N]`` is
        added to the gate pre-activations; `masks` are the dropout masks between layers.
        Returns the last layer's output ``[B, T, dirs * P]``, ``h_n``, ``c_n`` and, if
        `record`, per layer-direction ``[u [B, T, in_l + P], d_1 [B, T, n], ..., d_D]``.
        ``valid [B, T]`` (padded sequences): where False, a step leaves the state as it was."""
        records: list[list[Tensor]] = []
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        for layer in range(self.num_layers):
            outs: list[Tensor] = []
            for d in range(self.directions):
                ld = layer * self.directions + d
                pr: Tensor | None = None
                if probe is not None:
                    n = probe.shape[-1] // (self.num_layers * self.directions)
                    pr = probe[:, :, ld * n:(ld + 1) * n]
                c_ld: Tensor | None = None
                if c0 is not None:
                    c_ld = c0[ld]
                out, h, c, rec = self.direction(x, h0[ld], c_ld, params[ld], d == 1, detach,
                                                pr, record, valid)
                outs.append(out)
                hs.append(h)
                if c is not None:
                    cs.append(c)
                records.append(rec)
            x = torch.cat(outs, -1)
            if masks is not None and layer < self.num_layers - 1:
                x = x * masks[layer]
        c_n: Tensor | None = None
        if c0 is not None:
            c_n = torch.stack(cs)
        return x, torch.stack(hs), c_n, records

    def direction(self, x: Tensor, h: Tensor, c: Tensor | None, p: list[Tensor | None],
                  reverse: bool, detach: bool, probe: Tensor | None, record: bool,
                  valid: Tensor | None = None
                  ) -> tuple[Tensor, Tensor, Tensor | None, list[Tensor]]:
        """One layer-direction over all steps: ``(out [B, T, P], h_T, c_T, record)``."""
        w_ih, w_hh, b_ih, b_hh, w_hr = p[0], p[1], p[2], p[3], p[4]
        v_x, v_h, v_b, cascade, a = p[5], p[6], p[7], p[8], p[9]
        if w_ih is None or w_hh is None:
            raise ValueError("a recurrent layer needs w_ih and w_hh")
        xg = F.linear(x, w_ih, b_ih)  # input part of every step at once [B, T, G*H]
        if not self.gru and b_hh is not None:
            xg, b_hh = xg + b_hh, None
        # unbind, not x[:, t]: the backward of T selects would write T full-size gradients.
        xgs = xg.unbind(1)
        dxs: list[Tensor] = []
        if v_x is not None:
            dxs = F.linear(x.detach() if detach else x, v_x, v_b).unbind(1)
        probes: list[Tensor] = []
        if probe is not None:
            probes = probe.unbind(1)
        valids: list[Tensor] = []
        if valid is not None:
            valids = valid.unsqueeze(-1).unbind(1)
        steps = x.shape[1]
        out: list[Tensor] = []
        prev: list[Tensor] = []
        dends: list[list[Tensor]] = []
        for s in range(steps):
            t = steps - 1 - s if reverse else s
            if record:
                prev.append(h)
            h_prev, c_prev = h, c
            extra: Tensor | None = None
            if len(probes) > 0:
                extra = probes[t]
            if v_h is not None and cascade is not None and a is not None:
                h_in = h.detach() if detach else h
                pre = dxs[t] + F.linear(h_in, v_h)
                step_ds = self.cascade(pre.unflatten(-1, (-1, a.shape[1])), cascade)  # D x [B, n]
                if record:
                    dends.append(step_ds)
                for j, d_j in enumerate(step_ds):
                    extra = d_j * a[j] if extra is None else torch.addcmul(extra, d_j, a[j])
            h, c = self._gates(xgs[t], F.linear(h, w_hh, b_hh), extra, h, c, w_hr)
            if len(valids) > 0:  # past a sequence's end (forward) or before it (reverse)
                h = torch.where(valids[t], h, h_prev)
                if c is not None and c_prev is not None:
                    c = torch.where(valids[t], c, c_prev)
            out.append(h)
        rec: list[Tensor] = []
        if record:
            rec.append(torch.cat([x, self._in_order(prev, reverse)], -1))
            for j in range(len(dends[0]) if len(dends) > 0 else 0):
                rec.append(self._in_order([ds[j] for ds in dends], reverse))
        return self._in_order(out, reverse), h, c, rec

    def _gates(self, xt: Tensor, hg: Tensor, extra: Tensor | None, h: Tensor, c: Tensor | None,
               w_hr: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """One step from the input part ``xt``, the hidden part ``hg`` and the dendrite (and
        probe) term ``extra`` of the gate pre-activations: the new ``(h, c)``."""
        if self.lstm:
            if c is None:
                raise ValueError("an LSTM needs a cell state")
            gates = xt + hg if extra is None else xt + hg + extra
            i, f, g, o = gates.chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            return (h if w_hr is None else F.linear(h, w_hr)), c
        if not self.gru:  # nn.RNN
            pre = xt + hg if extra is None else xt + hg + extra
            return (torch.relu(pre) if self.relu else torch.tanh(pre)), c
        hsz = h.shape[-1]
        rz = xt[:, :2 * hsz] + hg[:, :2 * hsz]
        nx = xt[:, 2 * hsz:]
        if extra is not None:
            rz = rz + extra[:, :2 * hsz]
            nx = nx + extra[:, 2 * hsz:]
        r, z = torch.sigmoid(rz).chunk(2, -1)
        n = torch.tanh(torch.addcmul(nx, r, hg[:, 2 * hsz:]))
        return torch.lerp(n, h, z), c  # (1 - z) * n + z * h

    def cascade(self, pre: Tensor, cascade: Tensor) -> list[Tensor]:
        """``d_j = g(pre_j + sum_{i<j} C_j[:, i] * d_i)`` for ``pre [..., D, n]``."""
        outs: list[Tensor] = []
        for j in range(pre.shape[-2]):
            u = pre[..., j, :]
            for i, d_i in enumerate(outs):
                u = torch.addcmul(u, cascade[j, i], d_i)
            outs.append(self.activation(u))
        return outs

    @staticmethod
    def _in_order(steps: list[Tensor], reverse: bool) -> Tensor:
        """Per-step tensors (in processing order) as ``[B, T, ...]`` in input order."""
        stacked = torch.stack(steps, 1)
        return stacked.flip(1) if reverse else stacked


# ------------------------------------------------------------------ the layers' own layouts
def to_steps(input: Tensor, cell: bool, batch_first: bool) -> tuple[Tensor, bool]:
    """The input as batch-first steps ``[B, T, I]`` (a cell's call is one step) and whether
    the call was unbatched."""
    if cell:
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        return x.unsqueeze(1), unbatched
    if input.dim() == 2:
        return input.unsqueeze(0), True
    return (input if batch_first else input.transpose(0, 1)), False


def state_in(state: Tensor | None, x: Tensor, cell: bool, unbatched: bool, layer_dirs: int,
             size: int) -> Tensor:
    """A state in the layer's layout (cells ``[B, H]``, sequences ``[Ld, B, H]``, unbatched
    without B; None: zeros) as ``[Ld, B, size]``."""
    if state is None:
        return x.new_zeros(layer_dirs, x.shape[0], size)
    if unbatched:
        state = state.unsqueeze(0 if cell else 1)
    return state.unsqueeze(0) if cell else state


def state_out(state: Tensor, cell: bool, unbatched: bool) -> Tensor:
    """Inverse of `state_in`."""
    if cell:
        state = state[0]
        return state.squeeze(0) if unbatched else state
    return state.squeeze(1) if unbatched else state


def dropout_masks(x: Tensor, p: float, num_layers: int, width: int, training: bool
                  ) -> list[Tensor] | None:
    """Masks of the dropout between layers (training only, as PyTorch applies ``dropout``)."""
    if not training or p <= 0.0 or num_layers < 2:
        return None
    ones = x.new_ones(x.shape[0], x.shape[1], width)
    return [F.dropout(ones, p, True) for _ in range(num_layers - 1)]


def output_out(out: Tensor, batch_first: bool, unbatched: bool) -> Tensor:
    """The last layer's batch-first output in the layer's layout."""
    if unbatched:
        return out.squeeze(0)
    return out if batch_first else out.transpose(0, 1)


# ------------------------------------------------ PackedSequence (eager only, not scripted)
def unpack(packed: PackedSequence) -> tuple[Tensor, Tensor, Tensor]:
    """Batch-first padded steps in the batch's own order, the lengths, and ``valid [B, T]``
    (True on real steps; lengths and mask on the CPU)."""
    x, lengths = pad_packed_sequence(packed, batch_first=True)
    return x, lengths, torch.arange(x.shape[1]) < lengths.unsqueeze(1)


def repack(out: Tensor, lengths: Tensor, like: PackedSequence) -> PackedSequence:
    """A batch-first padded output ``[B, T, ...]`` (the batch's order) packed as `like` is."""
    order = like.sorted_indices
    if order is not None:
        out, lengths = out.index_select(0, order), lengths[order.cpu()]
    data = pack_padded_sequence(out, lengths, batch_first=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)

