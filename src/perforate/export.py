"""`export`: a plain, TorchScript-able copy of a perforated model for deployment.

Each dendrite layer becomes one fused layer of the same type that computes the neuron and all
D dendrite pre-activations in a single call (``[W; V_1; ...; V_D]``), followed by the cascade.
Layers without dendrites become their original module. The result needs no `perforate` import
once scripted: ``torch.jit.save(torch.jit.script(pf.export(model)), path)``.
"""

import copy
from typing import Final

import torch
from torch import Tensor, nn

from .errors import PhaseError
from .layers import ConvNd, DendriteLayer
from .targeting import set_submodule


class _FusedDendrites(nn.Module):
    """Shared cascade: ``z + sum_j a_j * g(pre_j + sum_{i<j} C_j[:, i] * h_i)``."""

    num_dendrites: Final[int]
    num_neurons: Final[int]
    activation_name: Final[str]

    def __init__(self, layer: DendriteLayer, fused: nn.Module) -> None:
        super().__init__()
        self.num_dendrites = layer.num_dendrites
        self.num_neurons = layer.num_neurons
        self.activation_name = layer.config.dendrite_activation
        self.fused = fused
        self.activation = copy.deepcopy(layer.activation)

    def _act(self, u: Tensor) -> Tensor:
        # In place on a slice of the fused output (autograd-safe: nothing else reads it).
        if self.activation_name == "tanh":
            return torch.tanh_(u)
        if self.activation_name == "sigmoid":
            return torch.sigmoid_(u)
        if self.activation_name == "relu":
            return torch.relu_(u)
        return self.activation(u)


class DendriteLinearExport(_FusedDendrites):
    """Exported `nn.Linear` with dendrites (neurons on the last axis)."""

    def __init__(self, layer: DendriteLayer) -> None:
        base = layer.base_layer
        d, n = layer.num_dendrites, layer.num_neurons
        fused = copy.deepcopy(base)
        with torch.no_grad():
            b0 = base.bias if base.bias is not None else base.weight.new_zeros(n)
            fused.weight = nn.Parameter(torch.cat([base.weight, layer.dendrite_weight.reshape(
                d * n, -1)]).detach().clone())
            fused.bias = nn.Parameter(torch.cat([b0, layer.dendrite_bias.reshape(-1)]).detach()
                                      .clone())
        fused.out_features = (1 + d) * n
        super().__init__(layer, fused)
        self.register_buffer("cascade_weight", layer.cascade_weight.detach().clone())
        self.register_buffer("output_weight", layer.output_weight.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        n = self.num_neurons
        y = self.fused(x)
        out = y[..., :n]
        hs: list[Tensor] = []
        for j in range(self.num_dendrites):
            u = y[..., (j + 1) * n:(j + 2) * n]
            for i in range(j):
                u = u.addcmul_(self.cascade_weight[j, i], hs[i])
            h = self._act(u)
            hs.append(h)
            out = torch.addcmul(out, self.output_weight[j], h)
        return out


class DendriteConvExport(_FusedDendrites):
    """Exported `nn.ConvNd` with dendrites (neurons on axis 1; groups interleaved)."""

    groups: Final[int]
    spatial: Final[int]

    def __init__(self, layer: DendriteLayer) -> None:
        base = layer.base_layer
        d, n = layer.num_dendrites, layer.num_neurons
        g = base.groups
        s = d + 1
        fused = copy.deepcopy(base)
        with torch.no_grad():
            b0 = base.bias if base.bias is not None else base.weight.new_zeros(n)
            w = torch.cat([base.weight.unsqueeze(0), layer.dendrite_weight])  # [S, N, ...]
            b = torch.cat([b0.unsqueeze(0), layer.dendrite_bias])  # [S, N]
            if g > 1:  # output channels of a grouped conv come in contiguous group blocks
                w = w.unflatten(1, (g, n // g)).transpose(0, 1)
                b = b.unflatten(1, (g, n // g)).transpose(0, 1)
            fused.weight = nn.Parameter(w.reshape(s * n, *w.shape[-base.weight.dim() + 1:])
                                        .detach().clone())
            fused.bias = nn.Parameter(b.reshape(-1).detach().clone())
        fused.out_channels = s * n
        super().__init__(layer, fused)
        self.groups = g
        self.spatial = len(base.kernel_size)
        shape = [d, d, n] + [1] * self.spatial
        self.register_buffer("cascade_weight", layer.cascade_weight.detach().reshape(shape).clone())
        self.register_buffer("output_weight",
                             layer.output_weight.detach().reshape([d, n] + [1] * self.spatial)
                             .clone())

    def forward(self, x: Tensor) -> Tensor:
        unbatched = x.dim() == self.spatial + 1
        if unbatched:
            x = x.unsqueeze(0)
        n, s, g = self.num_neurons, self.num_dendrites + 1, self.groups
        y = self.fused(x)
        sp = y.shape[2:]
        if g > 1:
            y = y.reshape([y.shape[0], g, s, n // g] + list(sp)).transpose(1, 2)  # noqa: RUF005 (TorchScript)
        y = y.reshape([y.shape[0], s, n] + list(sp))  # noqa: RUF005
        out = y[:, 0]
        hs: list[Tensor] = []
        for j in range(self.num_dendrites):
            u = y[:, j + 1]
            for i in range(j):
                u = u.addcmul_(self.cascade_weight[j, i], hs[i])
            h = self._act(u)
            hs.append(h)
            out = torch.addcmul(out, self.output_weight[j], h)
        if unbatched:
            out = out.squeeze(0)
        return out


def export_layer(layer: DendriteLayer) -> nn.Module:
    """The plain module that computes what `layer` computes (its base layer if D = 0)."""
    if layer.num_dendrites == 0:
        return copy.deepcopy(layer.base_layer)
    if isinstance(layer, ConvNd):
        return DendriteConvExport(layer)
    return DendriteLinearExport(layer)


def export(model: nn.Module) -> nn.Module:
    """A deep copy of ``model.net`` with every dendrite layer replaced by a plain module."""
    if getattr(model, "phase", "neuron") != "neuron":
        raise PhaseError("export() needs the neuron phase: end the dendrite phase first")
    layers = model.dendrite_layers()
    net = copy.deepcopy(model.net)
    for name in layers:
        set_submodule(net, name, export_layer(net.get_submodule(name)))
    return net
