"""The time-unrolled forward of an LSTM / GRU (or cell) with dendrites on its gate neurons.

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
z h_{t-1}``. With no dendrite and no probe this is exactly PyTorch's recurrence.

`UnrolledRecurrent` holds the computation; the wrapper and the exported module both use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..recurrent_geometry import RecurrentSpec


@dataclass
class DirectionParams:
    """Weights of one layer-direction: the layer's own, then its installed dendrites."""

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None
    w_hr: Tensor | None
    dendrite_x: Tensor | None = None  # [D*n, in_l]
    dendrite_h: Tensor | None = None  # [D*n, P]
    dendrite_b: Tensor | None = None  # [D*n]
    cascade: Tensor | None = None  # [D, D, n]
    output: Tensor | None = None  # [D, n]


@dataclass
class Record:
    """What a pass saw, per layer-direction (time in input order): the candidates' inputs."""

    inputs: list[Tensor]  # [B, T, fan_in]: [x_t, h_{t-1}]
    dendrites: list[list[Tensor]]  # [ld][j] -> [B, T, n]


def cascade_outputs(pre: Tensor, cascade: Tensor, act: nn.Module) -> list[Tensor]:
    """``d_j = g(pre_j + sum_{i<j} C_j[:, i] * d_i)`` for ``pre [..., D, n]``."""
    outs: list[Tensor] = []
    for j in range(pre.shape[-2]):
        u = pre[..., j, :]
        for i, d_i in enumerate(outs):
            u = torch.addcmul(u, cascade[j, i], d_i)
        outs.append(act(u))
    return outs


class UnrolledRecurrent:
    """Mixin: the unrolled recurrence. Needs ``spec``, ``base_layer``, ``activation`` and the
    stacked dendrite tensors ``dendrite_weight [D, N, F]``, ``dendrite_bias``,
    ``cascade_weight``, ``output_weight`` (as `DendriteLayer` lays them out)."""

    spec: RecurrentSpec
    base_layer: nn.Module
    activation: nn.Module
    dendrite_weight: Tensor
    dendrite_bias: Tensor
    cascade_weight: Tensor
    output_weight: Tensor
    training: bool

    # ------------------------------------------------------------------------- parameters
    def direction_params(self, ld: int) -> DirectionParams:
        """The layer's weights of layer-direction `ld` and the slices of its dendrites."""
        spec, base = self.spec, self.base_layer
        sfx = spec.suffix(ld)
        p = DirectionParams(getattr(base, "weight_ih" + sfx), getattr(base, "weight_hh" + sfx),
                            getattr(base, "bias_ih" + sfx) if spec.bias else None,
                            getattr(base, "bias_hh" + sfx) if spec.bias else None,
                            getattr(base, "weight_hr" + sfx, None))
        d = self.dendrite_weight.shape[0]
        if d:
            n, in_l = spec.gate_width, spec.layer_input(ld // spec.directions)
            rows = slice(ld * n, (ld + 1) * n)
            v = self.dendrite_weight[:, rows]
            p.dendrite_x = v[..., :in_l].reshape(d * n, in_l)
            p.dendrite_h = v[..., in_l:in_l + spec.out_size].reshape(d * n, spec.out_size)
            p.dendrite_b = self.dendrite_bias[:, rows].reshape(d * n)
            p.cascade = self.cascade_weight[:, :, rows]
            p.output = self.output_weight[:, rows]
        return p

    # ---------------------------------------------------------------------------- forward
    def forward_unrolled(self, input: Tensor | PackedSequence,
                         hx: Tensor | tuple[Tensor, Tensor] | None = None) -> Any:
        """The layer's own call signature and return value, computed by the Python loop."""
        if isinstance(input, PackedSequence):
            raise TypeError(
                f"{type(self.base_layer).__name__} with dendrites or candidates runs unrolled, "
                "which does not take a PackedSequence: pass a padded batch instead "
                "(torch.nn.utils.rnn.pad_packed_sequence)")
        spec = self.spec
        lstm = spec.mode == "LSTM"
        unbatched = input.dim() == (1 if spec.cell else 2)
        if spec.cell:  # one step: [B, I] -> [B, 1, I]
            x = (input.unsqueeze(0) if unbatched else input).unsqueeze(1)
        elif unbatched:
            x = input.unsqueeze(0)
        else:
            x = input if spec.batch_first else input.transpose(0, 1)
        batch = x.shape[0]
        if hx is None:
            shape = (spec.layer_dirs, batch)
            h0 = x.new_zeros(*shape, spec.out_size)
            c0 = x.new_zeros(*shape, spec.hidden_size) if lstm else None
        else:
            h0, c0 = hx if lstm else (hx, None)  # type: ignore[misc]
            # Cells hold [B, H] (unbatched [H]); sequences [Ld, B, H] (unbatched [Ld, H]).
            axis = 0 if spec.cell else 1
            if unbatched:
                h0 = h0.unsqueeze(axis)
                c0 = None if c0 is None else c0.unsqueeze(axis)
            if spec.cell:
                h0 = h0.unsqueeze(0)
                c0 = None if c0 is None else c0.unsqueeze(0)
        out, h_n, c_n = self._unrolled(x, h0, c0)
        if spec.cell:
            h1, c1 = h_n[0], None if c_n is None else c_n[0]
            if unbatched:
                h1, c1 = h1.squeeze(0), None if c1 is None else c1.squeeze(0)
            return (h1, c1) if lstm else h1
        if unbatched:
            out, h_n = out.squeeze(0), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        elif not spec.batch_first:
            out = out.transpose(0, 1)
        return (out, (h_n, c_n)) if lstm else (out, h_n)

    def _unrolled(self, x: Tensor, h0: Tensor, c0: Tensor | None
                  ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Batch-first ``x`` and stacked states in, ``(out, h_n, c_n)`` out."""
        raise NotImplementedError

    def dropout_masks(self, x: Tensor) -> list[Tensor] | None:
        """Dropout masks between layers (training only, as PyTorch applies its ``dropout``)."""
        spec = self.spec
        if not (self.training and spec.dropout > 0 and spec.num_layers > 1):
            return None
        ones = x.new_ones(x.shape[0], x.shape[1], spec.directions * spec.out_size)
        return [F.dropout(ones, spec.dropout, True) for _ in range(spec.num_layers - 1)]

    def run(self, x: Tensor, h0: Tensor, c0: Tensor | None, *, detach: bool,
            probe: Tensor | None = None, masks: list[Tensor] | None = None,
            record: bool = False) -> tuple[Tensor, Tensor, Tensor | None, Record | None]:
        """All layers over a batch-first ``x [B, T, I]`` from ``h0 [Ld, B, P]`` (``c0 [Ld, B,
        H]`` for LSTM). `detach`: dendrite inputs detached (perforated). `probe [B, T, N]` is
        added to the gate pre-activations; `masks` are the dropout masks between layers.
        Returns the last layer's output ``[B, T, dirs * P]``, ``h_n``, ``c_n`` and, if
        `record`, the candidates' inputs."""
        spec = self.spec
        rec = Record([], []) if record else None
        hs, cs = [], []
        n = spec.gate_width
        for layer in range(spec.num_layers):
            outs = []
            for d in range(spec.directions):
                ld = layer * spec.directions + d
                pr = None if probe is None else probe[..., ld * n:(ld + 1) * n]
                out, h, c = self._direction(x, h0[ld], None if c0 is None else c0[ld],
                                            self.direction_params(ld), pr, reverse=d == 1,
                                            detach=detach, rec=rec)
                outs.append(out)
                hs.append(h)
                cs.append(c)
            x = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
            if masks is not None and layer < spec.num_layers - 1:
                x = x * masks[layer]
        c_n = torch.stack(cs) if c0 is not None else None
        return x, torch.stack(hs), c_n, rec

    def _direction(self, x: Tensor, h: Tensor, c: Tensor | None, p: DirectionParams,
                   probe: Tensor | None, *, reverse: bool, detach: bool,
                   rec: Record | None) -> tuple[Tensor, Tensor, Tensor | None]:
        lstm = self.spec.mode == "LSTM"
        xg = F.linear(x, p.w_ih, p.b_ih)  # input part of every step at once [B, T, G*H]
        b_hh = p.b_hh
        if lstm and b_hh is not None:
            xg, b_hh = xg + b_hh, None
        # unbind, not x[:, t]: the backward of T selects would write T full-size gradients.
        xgs = xg.unbind(1)
        dxs = None
        if p.dendrite_x is not None:
            dxs = F.linear(x.detach() if detach else x, p.dendrite_x, p.dendrite_b).unbind(1)
        probes = None if probe is None else probe.unbind(1)
        steps = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
        out: list[Tensor] = []
        prev: list[Tensor] = []
        dends: list[list[Tensor]] = []
        for t in steps:
            if rec is not None:
                prev.append(h)
            extra = None if probes is None else probes[t]
            if dxs is not None:
                h_in = h.detach() if detach else h
                pre = dxs[t] + F.linear(h_in, p.dendrite_h)
                pre = pre.unflatten(-1, (-1, p.output.shape[1]))  # [B, D, n]
                ds = cascade_outputs(pre, p.cascade, self.activation)
                if rec is not None:
                    dends.append(ds)
                for j, d_j in enumerate(ds):
                    extra = d_j * p.output[j] if extra is None else torch.addcmul(
                        extra, d_j, p.output[j])
            hg = F.linear(h, p.w_hh, b_hh)
            if lstm:
                gates = xgs[t] + hg if extra is None else xgs[t] + hg + extra
                i, f, g, o = gates.chunk(4, -1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                if p.w_hr is not None:
                    h = F.linear(h, p.w_hr)
            else:
                hsz = h.shape[-1]
                xt = xgs[t]
                rz = xt[:, :2 * hsz] + hg[:, :2 * hsz]
                nx = xt[:, 2 * hsz:]
                if extra is not None:
                    rz = rz + extra[:, :2 * hsz]
                    nx = nx + extra[:, 2 * hsz:]
                r, z = torch.sigmoid(rz).chunk(2, -1)
                n = torch.tanh(torch.addcmul(nx, r, hg[:, 2 * hsz:]))
                h = torch.lerp(n, h, z)  # (1 - z) * n + z * h
            out.append(h)
        if reverse:
            out.reverse()
            prev.reverse()
            dends.reverse()
        if rec is not None:
            rec.inputs.append(torch.cat([x, torch.stack(prev, 1)], -1))
            rec.dendrites.append([torch.stack(d, 1) for d in zip(*dends, strict=True)])
        return torch.stack(out, 1), h, c
