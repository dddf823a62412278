"""Dendrites for `nn.LSTM`, `nn.GRU`, `nn.RNN` (layers, directions, batch_first, bias, LSTM
proj_size, dropout between layers, PackedSequence) and `nn.LSTMCell`, `nn.GRUCell`, `nn.RNNCell`.

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
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ...config import PerforationConfig
from ...errors import TargetError
from ..candidates import CandidatePool
from ..pool_results import Winners
from ..recurrent_geometry import RecurrentGeometry, RecurrentSpec
from .base import DendriteLayer
from .costs import LayerCosts, layer_costs
from .recurrent_export import export_recurrent
from .unroll import (
    RecurrentCore,
    dropout_masks,
    output_out,
    repack,
    state_in,
    state_out,
    to_steps,
    unpack,
)

_PYTORCH_TYPES = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)

#: What leaving the fused kernel costs, measured by ``bench/rnn_cost.py`` (one CPU thread,
#: 2 layers, hidden 64, T = 32, forward + backward; ``bench/results/rnn_cost.json``).
UNROLLED_COST = ("with dendrites, a recurrent layer runs as a Python loop over time steps "
                 "instead of PyTorch's fused kernel: on one CPU thread about 2-3x slower per "
                 "pass at D = 1 and 5-10x in a dendrite-phase batch (K = 4); more on a GPU")


def unrolled_cost_note(names: list[str]) -> str:
    """The log line said when the recurrent layers `names` first grow (see `UNROLLED_COST`)."""
    shown = ", ".join(repr(n) for n in names)
    return (f"{shown}: {UNROLLED_COST}. To keep the fused kernel, leave them out: "
            f"exclude_modules=[{shown}]")

#: Attributes of the wrapped layer that the wrapper shows as its own (read-only).
_FORWARDED = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
              "bidirectional", "proj_size", "mode", "all_weights", "flatten_parameters")


class _Recurrent(DendriteLayer):
    """Shared by the sequence and cell wrappers."""

    geometry_cls = RecurrentGeometry

    def __init__(self, base_layer: nn.Module, config: PerforationConfig) -> None:
        for cls in _PYTORCH_TYPES:
            if isinstance(base_layer, cls) and type(base_layer).forward is not cls.forward:
                raise TargetError(
                    f"{type(base_layer).__name__} overrides nn.{cls.__name__}.forward: with "
                    f"dendrites it would run nn.{cls.__name__}'s recurrence instead of yours; "
                    "leave it out of target_modules (or add it to exclude_modules)")
        super().__init__(base_layer, config)
        spec: RecurrentSpec = self.geometry.spec  # type: ignore[attr-defined]
        self.spec = spec
        self.core = RecurrentCore(spec.mode, spec.num_layers, spec.directions, self.activation)
        mask = spec.input_mask().to(self.dendrite_bias.dtype)
        self.register_buffer("input_mask", mask.to(self.dendrite_bias.device), persistent=False)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _FORWARDED or name.startswith(("weight_", "bias_")):
                return getattr(self._modules["base_layer"], name)
            raise

    # ----------------------------------------------------------------------------- forward
    def forward(self, input: Any, hx: Any = None) -> Any:
        if self.num_dendrites == 0 and not self._candidates_active():
            return self.base_layer(input, hx)  # the fused kernel: the original exactly
        return self.forward_unrolled(input, hx)

    def _candidates_active(self) -> bool:
        """Candidates are attached and this pass needs them (CC candidates learn only from a
        backward pass, so a pass without autograd, e.g. validation, skips them)."""
        pool = self.candidates
        return pool is not None and (torch.is_grad_enabled() or pool.gd)

    def forward_unrolled(self, input: Tensor | PackedSequence, hx: Any = None) -> Any:
        """The layer's own call signature and return value, computed by the Python loop."""
        spec = self.spec
        packed, valid = None, None
        if isinstance(input, PackedSequence):
            packed = input
            input, lengths, valid = unpack(packed)
        lstm = spec.mode == "LSTM"
        x, unbatched = to_steps(input, spec.cell, spec.batch_first or packed is not None)
        h, c = (hx if lstm else (hx, None)) if hx is not None else (None, None)
        h0 = state_in(h, x, spec.cell, unbatched, spec.layer_dirs, spec.out_size)
        c0 = state_in(c, x, spec.cell, unbatched, spec.layer_dirs, spec.hidden_size) \
            if lstm else None
        out, h_n, c_n = self._unrolled(x, h0, c0, valid)
        h1 = state_out(h_n, spec.cell, unbatched)
        state = (h1, state_out(c_n, spec.cell, unbatched)) if c_n is not None else h1
        if spec.cell:
            return state
        if packed is not None:
            return repack(out, lengths, packed), state
        return output_out(out, spec.batch_first, unbatched), state

    def _unrolled(self, x: Tensor, h0: Tensor, c0: Tensor | None, valid: Tensor | None = None
                  ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Batch-first steps in, ``(out, h_n, c_n)`` out; ``valid [B, T]`` (CPU) marks the
        real steps of padded sequences: the others change no state and are no samples."""
        spec = self.spec
        masks = dropout_masks(x, spec.dropout, spec.num_layers, spec.directions * spec.out_size,
                              self.training)
        detach = self.config.perforated
        on_device = None if valid is None else valid.to(x.device)
        pool, probe = self.candidates, None
        if pool is not None and self._candidates_active():
            with torch.no_grad():  # pass 1: every step's [x_t, h_{t-1}] (as pass 2 computes)
                rec = self.run(x, h0, c0, detach=detach, masks=masks, record=True,
                               valid=on_device)[3]
            u, hs = self._candidate_inputs(rec)
            shape = (*x.shape[:2], self.num_neurons)
            if valid is None:
                probe = pool.attach(x.new_zeros(shape), pool(u, hs))
            else:  # only the real steps are samples: tap them, scatter into [B, T, N]
                idx = valid.flatten().nonzero().squeeze(1).to(x.device)
                c = pool(u.flatten(0, 1)[idx], [h.flatten(0, 1)[idx] for h in hs])
                tap = pool.attach(x.new_zeros(len(idx), self.num_neurons), c)
                probe = x.new_zeros(shape).flatten(0, 1).index_copy(0, idx, tap).view(shape)
        out, h_n, c_n, _ = self.run(x, h0, c0, detach=detach, probe=probe, masks=masks,
                                    valid=on_device)
        return out, h_n, c_n

    def run(self, x: Tensor, h0: Tensor, c0: Tensor | None, *, detach: bool,
            probe: Tensor | None = None, masks: list[Tensor] | None = None,
            record: bool = False, valid: Tensor | None = None
            ) -> tuple[Tensor, Tensor, Tensor | None, list[list[Tensor]]]:
        """`RecurrentCore.run` with this layer's weights and dendrites."""
        params = [self.direction_params(ld) for ld in range(self.spec.layer_dirs)]
        return self.core.run(x, h0, c0, params, detach, probe, masks, record, valid)

    def direction_params(self, ld: int) -> list[Tensor | None]:
        """Layer-direction `ld`'s weights and its slices of the dendrite sets (`unroll.PARAMS`)."""
        spec, base = self.spec, self.base_layer
        sfx = spec.suffix(ld)
        p = [getattr(base, "weight_ih" + sfx), getattr(base, "weight_hh" + sfx),
             getattr(base, "bias_ih" + sfx) if spec.bias else None,
             getattr(base, "bias_hh" + sfx) if spec.bias else None,
             getattr(base, "weight_hr" + sfx, None)]
        d = self.num_dendrites
        if d == 0:
            return p + [None] * 5
        n, in_l = spec.gate_width, spec.layer_input(ld // spec.directions)
        rows = slice(ld * n, (ld + 1) * n)
        v = self.dendrite_weight[:, rows]
        cascade, output = self.live_weights()  # dead dendrites' entries zeroed
        return [*p, v[..., :in_l].reshape(d * n, in_l),
                v[..., in_l:in_l + spec.out_size].reshape(d * n, spec.out_size),
                self.dendrite_bias[:, rows].reshape(d * n),
                cascade[:, :, rows], output[:, rows]]

    def _candidate_inputs(self, rec: list[list[Tensor]]) -> tuple[Tensor, list[Tensor]]:
        """``x [B, T, Ld, F]`` (padded rows) and the installed dendrites' outputs ``[B, T, N]``
        (0 for dead dendrites)."""
        width, alive = self.spec.width, self.dendrite_alive
        x = torch.stack([F.pad(r[0], (0, width - r[0].shape[-1])) for r in rec], -2)
        hs = [torch.cat([r[j] for r in rec], -1) * alive[j - 1] for j in range(1, len(rec[0]))]
        return x, hs

    # --------------------------------------------------------------- padding of the inputs
    def begin_candidates(self, generator: torch.Generator | None,
                         pool_type: Callable[..., CandidatePool] = CandidatePool,
                         ) -> CandidatePool:
        """As `DendriteLayer`, with each layer-direction's candidate weights drawn at its own
        fan-in and zero on the padding columns (which then get no gradient)."""
        pool = super().begin_candidates(generator, pool_type)
        mask = self.input_mask
        with torch.no_grad():
            pool.weight.mul_(mask * (mask.shape[1] / mask.sum(1, keepdim=True)).sqrt())
        return pool

    def install(self, winners: Winners) -> None:
        winners.weight = winners.weight * self.input_mask
        super().install(winners)

    def _used_inputs(self) -> Tensor:
        """As `DendriteLayer`, without the padding columns of each neuron's input row."""
        used = self.input_mask if self.dendrite_mask is None \
            else self.dendrite_mask * self.input_mask
        return used.sum(-1).expand_as(self.dendrite_alive)

    def costs(self, positions: int | None = None) -> LayerCosts:
        """As `DendriteLayer`, per time step: a gate neuron's dendrite weighs its own
        layer-direction's ``[x_t, h_{t-1}]`` (no padding; with ``dendrite_inputs`` m, at most m
        of them), the layer's own multiply-adds are its weight matrices' entries (``weight_ih``,
        ``weight_hh``, ``weight_hr``), and the candidates compute over the padded width."""
        own = sum(p.numel() for name, p in self.base_layer.named_parameters()
                  if name.startswith("weight_"))
        return layer_costs(self, self.input_mask.sum(-1), positions, base_macs=own)

    def output_positions(self, output: Any) -> int:
        """Sample positions of one call: each gate neuron is computed once per sample and time
        step (batch x time of the output sequence; a cell's call is one step)."""
        out = output[0] if isinstance(output, tuple) else output  # (out, h_n) or (h, c)
        if isinstance(out, PackedSequence):
            return int(out.data.shape[0])
        return math.prod(out.shape[:-1])

    def to_plain(self) -> nn.Module:
        """A plain, TorchScript-able module computing this layer's function (`pf.export`)."""
        if self.num_dendrites == 0:
            return copy.deepcopy(self.base_layer)
        return export_recurrent(self.spec, self.core,
                                [self.direction_params(ld) for ld in range(self.spec.layer_dirs)])


class RNN(_Recurrent):
    """`nn.LSTM` / `nn.GRU` / `nn.RNN` with dendrites on every layer-direction's gate neurons."""


class RNNCell(_Recurrent):
    """`nn.LSTMCell` / `nn.GRUCell` / `nn.RNNCell` with dendrites on the gate neurons (one
    step per call: each call is one batch of the candidate statistics)."""

