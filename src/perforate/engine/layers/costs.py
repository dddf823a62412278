"""What a wrapped layer and its dendrites cost: `LayerCosts`, answered by `DendriteLayer.costs`.

One source for the cost figures (`perforate inspect` only collects and sums them): parameters
of the layer, of a dendrite set and of a dendrite phase's candidate pool, and their
multiply-adds per output position of the layer (a position: one place where each neuron is
computed once: a sample of a Linear layer, a pixel of a conv's output, a time step of a
recurrent layer). MACs count the weights' multiply-adds (V's op, the output weight a, the
projection P), not biases or activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class LayerCosts:
    """Costs of one wrapped layer with its configuration. Set and pool figures are those of the
    first set and the first dendrite phase: set j (and the pool that grows it) also has the
    cascade weights from the j - 1 sets before it, see `set_params_at`."""

    neurons: int
    """N: the layer's neurons (a recurrent layer: every layer-direction's gate neurons)."""
    fan_in: int
    """A neuron's inputs in the layer (a recurrent layer: ``[x_t, h_{t-1}]`` of its widest
    layer-direction)."""
    dendrite_fan_in: int
    """The inputs a dendrite weighs: `fan_in`, or m of ``dendrite_inputs``, or r of
    ``dendrite_rank`` (a recurrent layer: its widest layer-direction's)."""
    base_params: int
    """The layer's own parameters (an attention projection: the attention's weights it reads)."""
    set_params: int
    """Deployable parameters the first dendrite set adds: the entries of V it uses, a bias and
    an output weight per neuron (less those of dead dendrites, which count 0)."""
    projection_params: int
    """``dendrite_rank``: the layer's shared input projection P, added once with the first set."""
    base_macs: int
    """The layer's own multiply-adds per output position."""
    set_macs: int
    """Multiply-adds of the first set per output position: V's op (dense, also with
    ``dendrite_inputs``) and the output weight."""
    projection_macs: int
    """``dendrite_rank``: P's multiply-adds per output position (once for all sets)."""
    candidates: int
    """K: candidate sets trained per dendrite phase; 0 without candidate training
    (``dendrite_phase="none"``: a growth installs one untrained set, no pool)."""
    pool_params: int
    """Parameters of the first dendrite phase's pool (its trained tensors: V dense, biases,
    with "task_loss" output weights); 0 without a pool."""
    pool_macs: int
    """The pool's multiply-adds per output position (its V's ops); 0 without a pool."""
    positions: int | None = None
    """Output positions per sample, if counted (`DendriteLayer.output_positions`)."""

    def set_params_at(self, j: int) -> int:
        """Parameters set j (1-based) adds: `set_params` plus its (j - 1) * N cascade weights."""
        return self.set_params + (j - 1) * self.neurons

    def set_macs_at(self, j: int) -> int:
        """Multiply-adds of set j per output position: `set_macs` plus its cascade's."""
        return self.set_macs + (j - 1) * self.neurons

    def per_sample(self, macs: int) -> int:
        """Per-position multiply-adds `macs` times the positions per sample (if counted)."""
        return macs * (1 if self.positions is None else self.positions)


def layer_costs(layer: Any, fan_ins: Tensor, positions: int | None = None, *,
                base_macs: int | None = None) -> LayerCosts:
    """`LayerCosts` of `layer` (a `DendriteLayer`; not imported here, as base imports this
    module); `fan_ins` ``[N]``: the inputs a dendrite of each neuron computes
    with (its row of V without padding); `base_macs`: the layer's own per position, if not
    ``fan_in * N``."""
    config, geo, n = layer.config, layer.geometry, layer.num_neurons
    proj = layer.dendrite_projection
    fan_in = geo.fan_in if proj is None else proj.shape[1]  # P [r, fan_in]; geo.fan_in is r
    once = 0 if proj is None else fan_in * geo.fan_in
    m = config.dendrite_inputs
    used = fan_ins if m is None else fan_ins.clamp(max=m)
    k = 0 if config.dendrite_phase == "none" else config.cascade.candidates
    per_candidate = n * geo.fan_in + n + (n if config.dendrite_phase == "task_loss" else 0)
    base = layer.base_layer
    # An attention projection is a parameter-free view: count the weights it reads.
    params = sum(p.numel() for p in base.parameters()) or (
        layer.weight.numel() + (0 if layer.bias is None else layer.bias.numel()))
    return LayerCosts(
        neurons=n, fan_in=fan_in, dendrite_fan_in=int(used.max()) if n else 0,
        base_params=params, set_params=int(used.sum()) + 2 * n, projection_params=once,
        base_macs=fan_in * n if base_macs is None else base_macs,
        set_macs=int(fan_ins.sum()) + n, projection_macs=once, candidates=k,
        pool_params=k * per_candidate, pool_macs=k * n * geo.fan_in, positions=positions)
