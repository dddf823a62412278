"""``dendrite_input_selection="correlation"``: how a layer measures, during a neuron phase,
which of each neuron's inputs correlate most with its error."""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import ConfigError


def watch_input_correlation(layer: Any) -> Tensor:
    """A zero score ``[N, *neuron_weight_shape]`` to which |dLoss/dW| of `layer`'s weight (a
    `DendriteLayer`'s) is added after every backward: for neuron n and input i,
    |Σ_batch error_n × input_i|, the size of their correlation (one abs and add per backward,
    on the device). The hook holds the layer weakly."""
    weight, geo = layer.geometry.weight, layer.geometry
    rows = (layer.num_neurons, *geo.neuron_weight_shape)
    if not isinstance(weight, nn.Parameter) or geo.neuron_weights(weight).shape != rows:
        raise ConfigError(
            f"dendrite_input_selection='correlation' needs a layer whose weight is one "
            f"parameter holding its neurons' inputs (Linear, ConvNd, ConvTransposeNd); "
            f"{type(layer.base_layer).__name__}'s is not: leave it out (exclude_modules) "
            "or use 'random'")
    score = torch.zeros(*rows, device=weight.device, dtype=torch.float32)
    ref = weakref.ref(layer)  # the parameter must not keep its wrapper alive

    def accumulate(param: Tensor) -> None:
        me = ref()
        if me is not None and me.input_score is not None and param.grad is not None:
            me.input_score.add_(me.geometry.neuron_weights(param.grad.detach()).abs())

    weight.register_post_accumulate_grad_hook(accumulate)
    return score
