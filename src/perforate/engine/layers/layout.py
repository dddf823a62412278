"""Does a wrapper fit a layer's weight layout? Checked by `perforate` for each layer served by
a pairing `default_registry` does not make (a type registered with `WrapperRegistry.register`).

A wrapper's dendrites use the layer's weight as its `Geometry` lays it out: per-neuron rows
(`Geometry.neuron_weights`) applied by one wide call of the layer's operation
(`Geometry.stacked`). A geometry that does not match the layer (Hugging Face's ``Conv1D``,
``x @ weight`` with ``weight [in, out]``, served by the `Linear` wrapper, which computes
``x @ weight.T``) would fail at the first forward after growth, or, for a square layer,
silently compute with transposed weights. So the layer's neurons are computed both ways on a
small random batch, with random weights (a zero or symmetric weight could hide a
transposition), and compared: the layer's own forward (``torch.func.functional_call``: the
layer's forward hooks see this one batch), and the geometry's `stacked` over the same weights.
Layers of the pairings `default_registry` makes are not run.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from ..geometry import ConvGeometry, Geometry, LinearGeometry
from .base import DendriteLayer

logger = logging.getLogger(__name__)


def _probe_input(geo: Geometry, generator: torch.Generator) -> Tensor | None:
    """A batch of 2 random inputs the geometry's layer takes (None: unknown geometry)."""
    if isinstance(geo, ConvGeometry):  # ConvNd and ConvTransposeNd
        layer = geo.layer
        kernel = tuple(layer.kernel_size)
        dilation = tuple(getattr(layer, "dilation", (1,) * len(kernel)))
        padding = getattr(layer, "padding", 0)
        pad = max(padding) if isinstance(padding, tuple) and padding else 0
        sizes = [d * (k - 1) + 3 + 2 * int(pad) for k, d in zip(kernel, dilation, strict=True)]
        channels = geo.neuron_weight_shape[0] * geo.groups
        return torch.randn(2, channels, *sizes, generator=generator)
    if isinstance(geo, LinearGeometry) and geo.plain_linear:
        return torch.randn(2, geo.fan_in, generator=generator)
    return None


def layout_mismatch(module: nn.Module, wrapper: type[nn.Module]) -> str | None:
    """Why `wrapper`'s geometry does not fit `module`'s weight layout, or None if it does (or
    cannot be checked: a composite wrapper, an unknown geometry, a weight on the meta device;
    logged at INFO)."""
    what = f"{type(module).__name__} with {wrapper.__name__}"
    if not issubclass(wrapper, DendriteLayer):
        logger.info("cannot check that %s fits: a composite wrapper", what)
        return None
    try:
        return _mismatch(module, wrapper.geometry_cls(module), what)
    except Exception as exc:  # a geometry that does not fit the layer at all
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _mismatch(module: nn.Module, geo: Geometry, what: str) -> str | None:
    weight = geo.weight
    if weight.is_meta:
        logger.info("cannot check that %s fits: its weight is on the meta device", what)
        return None
    generator = torch.Generator().manual_seed(0)  # the global random state stays untouched
    x = _probe_input(geo, generator)
    if x is None:
        logger.info("cannot check that %s fits: no example input for %s", what,
                    type(geo).__name__)
        return None
    kw = {"device": weight.device, "dtype": weight.dtype}
    x = x.to(**kw)
    w = torch.randn(weight.shape, generator=generator).to(**kw)
    b = torch.randn(geo.num_neurons, generator=generator).to(**kw)
    own = dict(module.named_parameters(recurse=False))
    values: dict[str, Tensor] = {}
    if "weight" in own:
        values["weight"] = w
    else:  # a parametrised weight: the layer's own
        w = weight.detach()
    if isinstance(getattr(module, "bias", None), Tensor):
        if "bias" in own:
            values["bias"] = b
        else:
            b = module.bias.detach()
    else:
        b = torch.zeros_like(b)
    with torch.no_grad():
        expected = torch.func.functional_call(module, values, (x,))
        rows = geo.neuron_weights(w).reshape(1, geo.num_neurons, *geo.neuron_weight_shape)
        got = geo.stacked(x, rows, b.unsqueeze(0)).select(geo.set_dim, 0)
    if got.shape != expected.shape:
        return (f"the geometry's output is {tuple(got.shape)}, the layer's "
                f"{tuple(expected.shape)}")
    tol = 1e-3 if weight.dtype in (torch.float32, torch.float64) else 5e-2
    err = float((got - expected).abs().max())
    scale = float(expected.abs().max())
    if err > tol * scale + 1e-6:
        return (f"the layer's neurons computed from its weight as the wrapper lays it out "
                f"differ from the layer's own forward (max difference {err:.3g} of "
                f"{scale:.3g}: e.g. a weight stored transposed)")
    return None
