"""Exported recurrent layers with dendrites: plain, TorchScript-able modules for `pf.export`.

Each holds frozen copies of the layer's weights (parameters) and dendrites (buffers) per
layer-direction, and runs `RecurrentCore`, the loop the wrapper runs, with plain autograd
(no perforation). Call signatures and return values are those of the PyTorch layer; a
`PackedSequence` is taken in eager mode (a scripted module takes padded tensors).
"""

import copy
from typing import Final

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..recurrent_geometry import RecurrentSpec
from .unroll import (
    PARAMS,
    RecurrentCore,
    dropout_masks,
    output_out,
    repack,
    state_in,
    state_out,
    to_steps,
    unpack,
)


class _DirectionWeights(nn.Module):
    """One layer-direction's tensors, named as `unroll.PARAMS` (None where absent)."""

    def __init__(self, tensors: list[Tensor | None]) -> None:
        super().__init__()
        for i, (name, t) in enumerate(zip(PARAMS, tensors, strict=True)):
            value = None if t is None else t.detach().clone()
            if i < 5:  # the layer's own weights
                self.register_parameter(name, None if value is None else nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def tensors(self) -> list[Tensor | None]:
        row: list[Tensor | None] = [self.w_ih, self.w_hh, self.b_ih, self.b_hh, self.w_hr,
                                    self.dendrite_x, self.dendrite_h, self.dendrite_b,
                                    self.cascade, self.output]
        return row


class RecurrentExport(nn.Module):
    """Shared part of the four exported layer types."""

    cell: Final[bool]
    batch_first: Final[bool]
    layer_dirs: Final[int]
    num_layers: Final[int]
    out_size: Final[int]
    hidden_size: Final[int]
    width: Final[int]
    dropout: Final[float]

    def __init__(self, spec: RecurrentSpec, core: RecurrentCore,
                 params: list[list[Tensor | None]]) -> None:
        super().__init__()
        self.cell, self.batch_first = spec.cell, spec.batch_first
        self.layer_dirs, self.num_layers = spec.layer_dirs, spec.num_layers
        self.out_size, self.hidden_size = spec.out_size, spec.hidden_size
        self.width, self.dropout = spec.directions * spec.out_size, spec.dropout
        self.core = RecurrentCore(spec.mode, spec.num_layers, spec.directions,
                                  copy.deepcopy(core.activation))
        self.dirs = nn.ModuleList(_DirectionWeights(p) for p in params)

    def _call(self, input: Tensor, h: Tensor | None, c: Tensor | None, lstm: bool
              ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The output, ``h_n`` and ``c_n`` in the layer's own layouts."""
        if not torch.jit.is_scripting() and isinstance(input, PackedSequence):
            return self._packed_call(input, h, c, lstm)
        x, unbatched = to_steps(input, self.cell, self.batch_first)
        out, h_n, c_n = self._steps(x, h, c, lstm, unbatched, None)
        return output_out(out, self.batch_first, unbatched), h_n, c_n

    @torch.jit.unused
    def _packed_call(self, packed: PackedSequence, h: Tensor | None, c: Tensor | None,
                     lstm: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """Eager only: a `PackedSequence` in, one out (TorchScript takes padded tensors)."""
        x, lengths, valid = unpack(packed)
        out, h_n, c_n = self._steps(x, h, c, lstm, False, valid.to(x.device))
        return repack(out, lengths, packed), h_n, c_n  # type: ignore[return-value]

    def _steps(self, x: Tensor, h: Tensor | None, c: Tensor | None, lstm: bool, unbatched: bool,
               valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        h0 = state_in(h, x, self.cell, unbatched, self.layer_dirs, self.out_size)
        c0: Tensor | None = None
        if lstm:
            c0 = state_in(c, x, self.cell, unbatched, self.layer_dirs, self.hidden_size)
        params: list[list[Tensor | None]] = []
        for m in self.dirs:
            params.append(m.tensors())
        masks = dropout_masks(x, self.dropout, self.num_layers, self.width, self.training)
        out, h_n, c_n, _ = self.core.run(x, h0, c0, params, False, None, masks, False, valid)
        c_out: Tensor | None = None
        if c_n is not None:
            c_out = state_out(c_n, self.cell, unbatched)
        return out, state_out(h_n, self.cell, unbatched), c_out


def _required(c_n: Tensor | None) -> Tensor:
    if c_n is None:
        raise RuntimeError("an LSTM returned no cell state")
    return c_n


class LSTMExport(RecurrentExport):
    """`nn.LSTM` with dendrites."""

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, c = (None, None) if hx is None else (hx[0], hx[1])
        out, h_n, c_n = self._call(input, h, c, True)
        return out, (h_n, _required(c_n))


class RNNExport(RecurrentExport):
    """`nn.GRU` or `nn.RNN` with dendrites."""

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out, h_n, _ = self._call(input, hx, None, False)
        return out, h_n


class LSTMCellExport(RecurrentExport):
    """`nn.LSTMCell` with dendrites."""

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, Tensor]:
        h, c = (None, None) if hx is None else (hx[0], hx[1])
        _, h_n, c_n = self._call(input, h, c, True)
        return h_n, _required(c_n)


class RNNCellExport(RecurrentExport):
    """`nn.GRUCell` or `nn.RNNCell` with dendrites."""

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        return self._call(input, hx, None, False)[1]


def export_recurrent(spec: RecurrentSpec, core: RecurrentCore,
                     params: list[list[Tensor | None]]) -> RecurrentExport:
    """The exported module of a recurrent layer (`params`: per layer-direction)."""
    if spec.mode == "LSTM":
        return (LSTMCellExport if spec.cell else LSTMExport)(spec, core, params)
    return (RNNCellExport if spec.cell else RNNExport)(spec, core, params)
