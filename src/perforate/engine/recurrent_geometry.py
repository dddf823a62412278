"""Neuron layout of recurrent layers (`nn.LSTM`, `nn.GRU`, `nn.RNN` and their cells).

The neurons of a recurrent layer are the gate pre-activations of each hidden unit: ``G * H``
per layer-direction (G = 4 for LSTM: i, f, g, o; G = 3 for GRU: r, z, n; G = 1 for the
tanh / ReLU `nn.RNN`; PyTorch's row order),
``N = L * dirs * G * H`` in all, numbered layer-direction major (index ``l * dirs + d``, as in
``h_n``). At time t a gate neuron sees ``[x_t, h_{t-1}]``, so its dendrite does too: it is a
Linear neuron over that concatenation. Layer-directions of different fan-in share one padded
input width ``F = max_l(in_l) + P`` (P: the hidden size, or ``proj_size``): a row is
``[x_t (in_l), h_{t-1} (P), zeros]``, and the padding columns of every dendrite weight are 0.

A stacked input is ``[..., Ld, F]`` (one row per layer-direction); a stacked output is
``[..., S, N]``, as for `LinearGeometry`, so the candidate statistics are the Linear ones with
sample positions batch x time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .geometry import Activation, LinearGeometry, activated

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_CELLS = {nn.LSTMCell: "LSTM", nn.GRUCell: "GRU"}
_SEQUENCES = {nn.LSTM: "LSTM", nn.GRU: "GRU"}


@dataclass(frozen=True)
class RecurrentSpec:
    """The shape of a recurrent layer, read once from the PyTorch module."""

    mode: str  # "LSTM", "GRU", "RNN_TANH" or "RNN_RELU" (as nn.RNN's ``mode``)
    input_size: int
    hidden_size: int
    out_size: int  # proj_size if set (LSTM), else hidden_size
    num_layers: int
    directions: int
    bias: bool
    batch_first: bool
    dropout: float
    cell: bool  # nn.LSTMCell / nn.GRUCell / nn.RNNCell: one step per call

    @classmethod
    def of(cls, layer: nn.Module) -> RecurrentSpec:
        if isinstance(layer, nn.RNNCellBase):
            mode = next((m for t, m in _CELLS.items() if isinstance(layer, t)),
                        f"RNN_{getattr(layer, 'nonlinearity', '').upper()}")
            return cls(mode, layer.input_size, layer.hidden_size, layer.hidden_size, 1, 1,
                       layer.bias, True, 0.0, True)
        if isinstance(layer, nn.RNNBase):
            mode = next((m for t, m in _SEQUENCES.items() if isinstance(layer, t)), layer.mode)
            proj = getattr(layer, "proj_size", 0)
            return cls(mode, layer.input_size, layer.hidden_size, proj or layer.hidden_size,
                       layer.num_layers, 2 if layer.bidirectional else 1, layer.bias,
                       layer.batch_first, float(layer.dropout), False)
        raise TypeError(f"not a supported recurrent layer: {type(layer).__name__}")

    @property
    def gates(self) -> int:
        return _GATES[self.mode]

    @property
    def gate_width(self) -> int:
        """Neurons per layer-direction: G * H."""
        return self.gates * self.hidden_size

    @property
    def layer_dirs(self) -> int:
        return self.num_layers * self.directions

    def layer_input(self, layer: int) -> int:
        """Input width of layer `layer` (the previous layer's concatenated directions)."""
        return self.input_size if layer == 0 else self.directions * self.out_size

    def fan_in(self, layer: int) -> int:
        """A gate neuron's real inputs in layer `layer`: ``[x_t, h_{t-1}]``."""
        return self.layer_input(layer) + self.out_size

    @property
    def width(self) -> int:
        """F: the padded input width shared by all layer-directions."""
        return max(self.fan_in(k) for k in range(self.num_layers))

    def suffix(self, ld: int) -> str:
        """Parameter-name suffix of layer-direction `ld` (``l0``, ``l1_reverse``; cells: '')."""
        if self.cell:
            return ""
        layer, d = divmod(ld, self.directions)
        return f"_l{layer}" + ("_reverse" if d else "")

    def input_mask(self) -> Tensor:
        """``[N, F]``: 1 on each neuron's real inputs, 0 on the padding columns."""
        rows = [torch.arange(self.width) < self.fan_in(ld // self.directions)
                for ld in range(self.layer_dirs)]
        return torch.stack(rows).repeat_interleave(self.gate_width, dim=0).float()


class RecurrentGeometry(LinearGeometry):
    """Gate neurons of all layer-directions as one Linear-like layer of N neurons over F inputs.

    `stacked` applies each layer-direction's rows to its own input row: ``x [..., Ld, F]``,
    ``weight [S, N, F]`` -> ``[..., S, N]`` (a batched matmul over layer-directions).
    """

    plain_linear = False

    def __init__(self, layer: nn.Module) -> None:
        super().__init__(layer)
        self.spec = RecurrentSpec.of(layer)
        self.unbatched_dim = 1 if self.spec.cell else 2

    @property
    def weight(self) -> Tensor:
        """A parameter of the layer (its device and dtype are the dendrites')."""
        return getattr(self.layer, "weight_ih" + ("" if self.spec.cell else "_l0"))

    @property
    def num_neurons(self) -> int:
        return self.spec.layer_dirs * self.spec.gate_width

    @property
    def neuron_weight_shape(self) -> tuple[int, ...]:
        return (self.spec.width,)

    def stacked(self, x: Tensor, weight: Tensor, bias: Tensor, g_: Activation = None
                ) -> Tensor:
        s, n = bias.shape
        ld = self.spec.layer_dirs
        w = weight.reshape(s, ld, n // ld, -1)
        out = torch.einsum("...lf,slnf->...sln", x, w) + bias.reshape(s, ld, n // ld)
        return activated(out, g_).flatten(-2)
