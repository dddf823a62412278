"""Dendrites for `nn.LSTM`, `nn.GRU` (layers, directions, batch_first, bias, LSTM proj_size,
dropout between layers), `nn.LSTMCell` and `nn.GRUCell`.

Neurons are the gate pre-activations of every hidden unit (see `RecurrentGeometry`); a gate
neuron's dendrite sees that step's ``[x_t, h_{t-1}]`` and adds ``a_j * d_j`` to that gate's
pre-activation (for the GRU n gate: to the whole argument of its tanh, see `unroll`).

Speed: with no dendrite and no candidate the wrapper calls the base layer itself (PyTorch's
fused kernel, the original exactly). Otherwise it runs the unrolled Python loop of `unroll`;
in the dendrite phase a first pass without autograd records every step's ``[x_t, h_{t-1}]``,
all candidates are computed from it in one batched op, and the second (autograd) pass adds
their `ErrorTap`'s zero probe to the gate pre-activations, so that the user's single
``loss.backward()`` hands the pool each gate's error at every time step (positions: batch x
time) through the same statistics as every other layer.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..candidates import CandidatePool, Winners
from ..config import PerforationConfig
from ..recurrent_geometry import RecurrentGeometry, RecurrentSpec
from .base import DendriteLayer
from .unroll import Record, UnrolledRecurrent

#: Attributes of the wrapped layer that the wrapper shows as its own (read-only).
_FORWARDED = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
              "bidirectional", "proj_size", "mode", "all_weights", "flatten_parameters")


class _Recurrent(UnrolledRecurrent, DendriteLayer):
    """Shared by the sequence and cell wrappers."""

    geometry_cls = RecurrentGeometry

    def __init__(self, base_layer: nn.Module, config: PerforationConfig) -> None:
        super().__init__(base_layer, config)
        self.spec: RecurrentSpec = self.geometry.spec  # type: ignore[attr-defined]
        mask = self.spec.input_mask().to(self.dendrite_bias.dtype)
        self.register_buffer("input_mask", mask.to(self.dendrite_bias.device), persistent=False)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _FORWARDED or name.startswith(("weight_", "bias_")):
                return getattr(self._modules["base_layer"], name)
            raise

    def forward(self, input: Any, hx: Any = None) -> Any:
        if self.num_dendrites == 0 and self.candidates is None:
            return self.base_layer(input, hx)  # the fused kernel: the original exactly
        return self.forward_unrolled(input, hx)

    def _unrolled(self, x: Tensor, h0: Tensor, c0: Tensor | None
                  ) -> tuple[Tensor, Tensor, Tensor | None]:
        masks = self.dropout_masks(x)
        detach = self.config.perforated
        pool, probe = self.candidates, None
        if pool is not None and (torch.is_grad_enabled() or pool.gd):
            with torch.no_grad():  # pass 1: every step's [x_t, h_{t-1}] (as pass 2 computes)
                rec = self.run(x, h0, c0, detach=detach, masks=masks, record=True)[3]
            c = pool(*self._candidate_inputs(rec))  # type: ignore[arg-type]
            probe = pool.attach(x.new_zeros(*x.shape[:2], self.num_neurons), c)
        out, h_n, c_n, _ = self.run(x, h0, c0, detach=detach, probe=probe, masks=masks)
        return out, h_n, c_n

    def _candidate_inputs(self, rec: Record) -> tuple[Tensor, list[Tensor]]:
        """``x [B, T, Ld, F]`` (padded rows) and the installed dendrites' outputs ``[B, T, N]``."""
        width = self.spec.width
        x = torch.stack([F.pad(u, (0, width - u.shape[-1])) for u in rec.inputs], -2)
        hs = [torch.cat(ds, -1) for ds in zip(*rec.dendrites, strict=True)]
        return x, hs

    # --------------------------------------------------------------- padding of the inputs
    def begin_candidates(self, generator: torch.Generator | None) -> CandidatePool:
        """As `DendriteLayer`, with each layer-direction's candidate weights drawn at its own
        fan-in and zero on the padding columns (which then get no gradient)."""
        pool = super().begin_candidates(generator)
        mask = self.input_mask
        with torch.no_grad():
            pool.weight.mul_(mask * (mask.shape[1] / mask.sum(1, keepdim=True)).sqrt())
        return pool

    def install(self, winners: Winners) -> None:
        winners.weight = winners.weight * self.input_mask
        super().install(winners)

    def dendrite_parameter_count(self) -> int:
        padding = int((self.input_mask == 0).sum())
        return super().dendrite_parameter_count() - self.num_dendrites * padding

    def to_plain(self) -> nn.Module:
        """A plain module computing this layer's function (for `perforate.export`)."""
        if self.num_dendrites == 0:
            return copy.deepcopy(self.base_layer)
        return RecurrentExport(self)


class RNN(_Recurrent):
    """`nn.LSTM` / `nn.GRU` with dendrites on every layer-direction's gate neurons."""


class RNNCell(_Recurrent):
    """`nn.LSTMCell` / `nn.GRUCell` with dendrites on the gate neurons (one step per call:
    each call is one batch of the candidate statistics)."""


class RecurrentExport(UnrolledRecurrent, nn.Module):
    """Exported recurrent layer with dendrites: the unrolled loop over frozen copies of the
    weights (plain autograd, no perforation). Eager PyTorch; not TorchScript-able."""

    def __init__(self, layer: _Recurrent) -> None:
        super().__init__()
        self.spec = layer.spec
        self.base_layer = copy.deepcopy(layer.base_layer)
        self.activation = copy.deepcopy(layer.activation)
        for name in ("dendrite_weight", "dendrite_bias", "cascade_weight", "output_weight"):
            self.register_buffer(name, getattr(layer, name).detach().clone())

    def forward(self, input: Any, hx: Any = None) -> Any:
        return self.forward_unrolled(input, hx)

    def _unrolled(self, x: Tensor, h0: Tensor, c0: Tensor | None
                  ) -> tuple[Tensor, Tensor, Tensor | None]:
        out, h_n, c_n, _ = self.run(x, h0, c0, detach=False, masks=self.dropout_masks(x))
        return out, h_n, c_n

