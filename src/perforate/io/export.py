"""`export`: a plain, TorchScript-able copy of a perforated model for deployment.

Each dendrite layer becomes one fused layer of the same type that computes the neuron and all
D dendrite pre-activations in a single call (``[W; V_1; ...; V_D]``), followed by the cascade.
Layers without dendrites become their original module. The result needs no `perforate` import
once scripted: ``torch.jit.save(torch.jit.script(pf.export(model)), path)``, or write ONNX with
``pf.export(model, format="onnx", path=..., example_inputs=(x,))``.

- Tied weights stay tied: a layer whose weight or bias is shared with another module (an LM's
  head tied to its embedding) keeps its own layer, with the shared parameter, and computes its
  dendrites in a second call (``[V_1; ...; V_D]``). A layer used at several places stays one
  module.
- Backward works: the cascade works in place only when no gradient is recorded (no_grad,
  inference_mode). The export computes the model's function, and its backward is the gradient
  of that function: error flows through the dendrites as with ``perforated=False`` (perforation
  is a training-time choice of the `PerforatedModel`). The output weights ``a`` are parameters.
"""

import copy
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..engine.activations import sigmoid_form, tanh_of_half_
from ..engine.layers import ConvNd, DendriteLayer
from ..engine.layers.composite import CompositeLayer, top_wrappers
from ..engine.targeting import set_submodule
from ..errors import PhaseError

FORMATS = ("module", "onnx")


def plain_copy(base: nn.Module) -> nn.Module:
    """A deep copy of `base` to build a fused layer from: parametrisations (``weight_norm``,
    ``spectral_norm``) are baked into a plain weight (the effective one), and a parameter-free
    view (an attention projection) becomes an ``nn.Linear``."""
    as_linear = getattr(base, "as_linear", None)
    if as_linear is not None:
        return as_linear()
    out = copy.deepcopy(base)
    if parametrize.is_parametrized(out):
        # parametrize injects one class per module, which deepcopy shares with the original:
        # give the copy its own before removing the parametrisations (which edits the class).
        cls = type(out)
        space = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
        out.__class__ = type(cls.__name__, cls.__bases__, space)
        for name in list(out.parametrizations):
            parametrize.remove_parametrizations(out, name, leave_parametrized=True)
    return out


class _FusedDendrites(nn.Module):
    """Shared cascade: ``z + sum_j a_j * g(pre_j + sum_{i<j} C_j[:, i] * h_i)``.

    ``fused`` computes the dendrite pre-activations, and the layer's own output too unless the
    layer's parameters are shared (then ``base`` computes it and ``first`` is 0).
    """

    num_dendrites: Final[int]
    num_neurons: Final[int]
    activation_name: Final[str]
    first: Final[int]

    def __init__(self, layer: DendriteLayer, fused: nn.Module, base: nn.Module | None,
                 per_neuron: list[int]) -> None:
        super().__init__()
        d, n = layer.num_dendrites, layer.num_neurons
        self.num_dendrites = d
        self.num_neurons = n
        self.activation_name = layer.config.dendrite_activation
        self.first = 0 if base is not None else 1
        self.fused = fused
        self.base = base if base is not None else nn.Identity()
        self.activation = copy.deepcopy(layer.activation)
        cascade, output = layer.live_weights()  # dead dendrites folded in: their entries 0
        self.register_buffer("cascade_weight",
                             cascade.detach().reshape([d, d, n, *per_neuron]).clone())
        self.output_weight = nn.Parameter(output.detach().reshape([d, n, *per_neuron]).clone())

    def _act(self, u: Tensor, inplace: bool) -> Tensor:
        if inplace and self.activation_name == "tanh":
            if sigmoid_form(u):  # as `activations.tanh_`
                return tanh_of_half_(u.mul_(2))
            return torch.tanh_(u)
        if inplace and self.activation_name == "sigmoid":
            return torch.sigmoid_(u)
        if inplace and self.activation_name == "relu":
            return torch.relu_(u)
        return self.activation(u)

    def _add_dendrites(self, out: Tensor, pre: list[Tensor]) -> Tensor:
        """``out + sum_j a_j h_j`` from the dendrite pre-activations `pre` (views of one fused
        output: in place only when autograd records nothing, as it may save them)."""
        inplace = not (torch.is_grad_enabled() and (out.requires_grad or pre[0].requires_grad))
        hs: list[Tensor] = []
        for j in range(self.num_dendrites):
            u = pre[j]
            for i in range(j):
                if inplace:
                    u = u.addcmul_(self.cascade_weight[j, i], hs[i])
                else:
                    u = torch.addcmul(u, self.cascade_weight[j, i], hs[i])
            h = self._act(u, inplace)
            hs.append(h)
            out = torch.addcmul(out, self.output_weight[j], h)
        return out


def _fused_copy(base: nn.Module, weight: Tensor, bias: Tensor) -> nn.Module:
    """A plain copy of `base` (same operation and options) with other weights and bias."""
    fused = plain_copy(base)
    fused.weight = nn.Parameter(weight.detach().clone())
    fused.bias = nn.Parameter(bias.detach().clone())
    return fused


class DendriteLinearExport(_FusedDendrites):
    """Exported `nn.Linear` with dendrites (neurons on the last axis)."""

    def __init__(self, layer: DendriteLayer, tied: bool = False) -> None:
        base = layer.base_layer
        d, n = layer.num_dendrites, layer.num_neurons
        w, b = layer.dendrite_weight.reshape(d * n, -1), layer.dendrite_bias.reshape(-1)
        if layer.dendrite_projection is not None:  # V (P x) = (V P) x: one fused layer still
            w = w @ layer.dendrite_projection
        if not tied:
            own = plain_copy(base)  # the effective weight of a parametrised layer
            b0 = own.bias if own.bias is not None else own.weight.new_zeros(n)
            w, b = torch.cat([own.weight, w]), torch.cat([b0, b])
        fused = _fused_copy(base, w, b)
        fused.out_features = w.shape[0]
        super().__init__(layer, fused, base if tied else None, [])

    @property
    def weight(self) -> Tensor:
        """The neurons' own weights (a view, as ``nn.Linear.weight``; read by e.g.
        ``nn.TransformerEncoderLayer``); the dendrites' first rows when the layer is tied."""
        return self.fused.weight[: self.num_neurons]

    @property
    def bias(self) -> Tensor:
        """The neurons' own biases (zeros if the base layer had none: the fused layer always
        has a bias, for the dendrites')."""
        return self.fused.bias[: self.num_neurons]

    def forward(self, x: Tensor) -> Tensor:
        n, f = self.num_neurons, self.first
        y = self.fused(x)
        out = self.base(x) if f == 0 else y[..., :n]
        pre = [y[..., (j + f) * n:(j + f + 1) * n] for j in range(self.num_dendrites)]
        return self._add_dendrites(out, pre)


class DendriteConvExport(_FusedDendrites):
    """Exported `nn.ConvNd` with dendrites (neurons on axis 1; groups interleaved)."""

    groups: Final[int]
    spatial: Final[int]

    def __init__(self, layer: DendriteLayer, tied: bool = False) -> None:
        base = layer.base_layer
        n, g = layer.num_neurons, base.groups
        geo = layer.geometry
        w, b = layer.dendrite_weight, layer.dendrite_bias  # [D, N, *w], [D, N]
        if not tied:
            own = plain_copy(base)  # the effective weight of a parametrised layer
            b0 = own.bias if own.bias is not None else own.weight.new_zeros(n)
            w = torch.cat([geo.neuron_weights(own.weight).unsqueeze(0), w])  # [S, N, *w]
            b = torch.cat([b0.unsqueeze(0), b])
        s = w.shape[0]
        # Output channels of a grouped conv come in contiguous group blocks: op_weight
        # interleaves the S sets per group (and lays out a transposed conv's weight).
        fused = _fused_copy(base, geo.op_weight(w), geo.op_bias(b))
        fused.out_channels = s * n
        spatial = len(base.kernel_size)
        super().__init__(layer, fused, base if tied else None, [1] * spatial)
        self.groups = g
        self.spatial = spatial

    def forward(self, x: Tensor) -> Tensor:
        unbatched = x.dim() == self.spatial + 1
        if unbatched:
            x = x.unsqueeze(0)
        n, f, g = self.num_neurons, self.first, self.groups
        s = self.num_dendrites + f  # sets in the fused output
        y = self.fused(x)
        sp = y.shape[2:]
        if g > 1:
            y = y.reshape([y.shape[0], g, s, n // g] + list(sp)).transpose(1, 2)  # noqa: RUF005 (TorchScript)
        y = y.reshape([y.shape[0], s, n] + list(sp))  # noqa: RUF005
        out = self.base(x) if f == 0 else y[:, 0]
        out = self._add_dendrites(out, [y[:, j + f] for j in range(self.num_dendrites)])
        if unbatched:
            out = out.squeeze(0)
        return out


def export_layer(layer: DendriteLayer, tied: bool = False) -> nn.Module:
    """The plain module that computes what `layer` computes (a copy of its base layer if D = 0).

    `tied`: the base layer's parameters are shared with other modules; the result then keeps
    (does not copy) the base layer, so the sharing survives.
    """
    to_plain = getattr(layer, "to_plain", None)
    if to_plain is not None:  # a wrapper that provides its own export (recurrent layers)
        return to_plain()
    if layer.num_dendrites == 0:
        return layer.base_layer if tied else copy.deepcopy(layer.base_layer)
    if isinstance(layer, ConvNd):
        return DendriteConvExport(layer, tied)
    return DendriteLinearExport(layer, tied)


def _shared_parameters(net: nn.Module) -> set[int]:
    """ids of the parameters reachable at more than one place (tied weights, shared modules)."""
    places: dict[int, set[str]] = {}
    for name, m in net.named_modules(remove_duplicate=False):
        for p in m.parameters(recurse=False):
            places.setdefault(id(p), set()).add(name)
    return {pid for pid, names in places.items() if len(names) > 1}


def _plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model.net`` with every dendrite layer replaced by a plain module."""
    if getattr(model, "phase", "neuron") != "neuron":
        raise PhaseError("export() needs the neuron phase: end the dendrite phase first")
    net = copy.deepcopy(model.net)  # keeps ties: shared parameters are copied once
    shared = _shared_parameters(net)
    done: dict[int, nn.Module] = {}  # a layer used at several places stays one module

    def plain(layer: DendriteLayer) -> nn.Module:
        tied = any(id(p) in shared for p in layer.base_layer.parameters())
        return export_layer(layer, tied)

    for name, layer in top_wrappers(net, remove_duplicate=False).items():
        if id(layer) not in done:
            done[id(layer)] = (layer.export(plain) if isinstance(layer, CompositeLayer)
                               else plain(layer))
        set_submodule(net, name, done[id(layer)])
    return net


def _export_onnx(net: nn.Module, path: str | Path | None, example_inputs: Any,
                 onnx_kwargs: Mapping[str, Any]) -> Path:
    if path is None or example_inputs is None:
        raise TypeError('export(format="onnx") needs path= and example_inputs= (a tuple of '
                        "the network's positional inputs)")
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}: "
                          "pip install perforate[onnx]")
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net.eval()
    with torch.no_grad():
        torch.onnx.export(net, example_inputs, str(path), **{"dynamo": True, "verbose": False,
                                                                 **onnx_kwargs})
    return path


def export(model: nn.Module, format: str = "module", *, path: str | Path | None = None,
           example_inputs: Any = None, **onnx_kwargs: Any) -> Any:
    """A plain copy of ``model.net`` with every dendrite layer replaced by a plain module.

    ``format="module"`` (default): return that ``nn.Module`` (TorchScript-able).
    ``format="onnx"``: write it (eval mode) as ONNX to `path`, traced with `example_inputs` (a
    tensor or a tuple of positional inputs), and return the path; needs ``pip install
    perforate[onnx]``. Extra keyword arguments go to ``torch.onnx.export`` (e.g.
    ``dynamic_shapes``).
    """
    if format not in FORMATS:
        raise ValueError(f"export(): format must be one of {FORMATS}, got {format!r}")
    if format == "module" and (path is not None or example_inputs is not None or onnx_kwargs):
        raise TypeError('export(): path, example_inputs and ONNX options need format="onnx"')
    net = _plain_copy(model)
    if format == "onnx":
        return _export_onnx(net, path, example_inputs, onnx_kwargs)
    return net
