"""Dendrites for a transposed Linear layer: Hugging Face's ``Conv1D`` (GPT-2, GPT, ...).

``transformers.pytorch_utils.Conv1D`` computes ``x @ weight + bias`` with ``weight [in, out]``:
an ``nn.Linear`` whose weight is stored transposed. Its neurons are the output features (the
last axis) and neuron n's incoming weights are the column ``weight[:, n]``, so its dendrites
are a Linear layer's over ``weight.T`` (`TransposedLinearGeometry`): V is ``[D, N, in]``, as
for `Linear`. The default registry serves Conv1D by its class's qualified name
(`registry.LAZY_TYPES`), so ``import perforate`` never imports transformers.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ..geometry import LinearGeometry
from .base import DendriteLayer, base_view
from .linear import Linear


class TransposedLinearGeometry(LinearGeometry):
    """A Linear layer whose weight is stored ``[in, N]`` (``x @ weight + bias``)."""

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The weight's shape as a Linear's, ``(N, in)``."""
        if self._weight_shape is None:
            self._weight_shape = tuple(self.weight.shape)[::-1]
        return self._weight_shape

    def neuron_weights(self, weight: Tensor) -> Tensor:
        """``[in, N]`` (the layer's weight, or its gradient) -> per-neuron rows ``[N, in]``."""
        return weight.t()


def as_linear(layer: nn.Module) -> nn.Linear:
    """A plain `nn.Linear` computing what the transposed Linear `layer` computes (copies)."""
    w, b = layer.weight, getattr(layer, "bias", None)
    out = nn.Linear(w.shape[0], w.shape[1], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w.t())
        if b is not None:
            out.bias.copy_(b)
    return out


class TransposedLinear(DendriteLayer):
    """Hugging Face's ``Conv1D`` (``x @ weight + bias``, weight ``[in, out]``) with dendrites;
    the original layer is ``base_layer`` (its ``weight`` keeps its ``[in, out]`` layout).

    `pf.export` turns a layer with dendrites into a fused ``nn.Linear`` (weight ``[out, in]``;
    a weight shared with another module is copied, not kept tied), one without into a copy of
    the original. ``dendrite_rank`` does not apply to it (`ConfigError`).
    """

    geometry_cls = TransposedLinearGeometry

    nf = base_view("nf")
    nx = base_view("nx")

    def to_plain(self) -> nn.Module:
        """The plain module `pf.export` puts in this layer's place."""
        import copy

        if self.num_dendrites == 0:
            return copy.deepcopy(self.base_layer)
        from ...io.export import DendriteLinearExport  # (export imports the layers)

        config = dataclasses.replace(self.config, dendrite_input_selection="random")
        linear = Linear(as_linear(self.base_layer), config)
        linear.load_state_dict({**{f"base_layer.{k}": v
                                   for k, v in linear.base_layer.state_dict().items()},
                                **self._dendrite_state()})
        return DendriteLinearExport(linear)
