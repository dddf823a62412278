"""`CompositeLayer`: a wrapper for a module whose neurons live in several projections.

Some layers compute more than one group of neurons, each over its own input (attention: the
query, key and value projections and the output projection). Their wrapper keeps the original
module as ``base_layer`` and holds one `DendriteLayer` per projection as a child, so the model's
dendrite machinery (candidates, install, save, load) treats each projection as a layer of its
own, named ``<wrapper>.<projection>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ...config import PerforationConfig
from .base import DendriteLayer


class CompositeLayer(nn.Module):
    """Base class: subclasses build their projections in ``__init__`` and implement `export`."""

    def __init__(self, base_layer: nn.Module, config: PerforationConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.config = config

    def projections(self) -> dict[str, DendriteLayer]:
        """{child name: dendrite layer} of the projections."""
        return {n: m for n, m in self.named_children() if isinstance(m, DendriteLayer)}

    def has_dendrites(self) -> bool:
        """True if any projection has installed dendrites or attached candidates."""
        return any(p.num_dendrites or p.candidates is not None
                   for p in self.projections().values())

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any, **kwargs: Any) -> None:
        """Also take the plain module's own state (a checkpoint from before `perforate`): its
        keys go to ``base_layer`` and the projections keep no dendrites."""
        plain = [key for key in self.base_layer.state_dict()
                 if prefix + key in state_dict and f"{prefix}base_layer.{key}" not in state_dict]
        for key in plain:
            state_dict[f"{prefix}base_layer.{key}"] = state_dict.pop(prefix + key)
        if plain:
            for name, layer in self.projections().items():
                if layer.num_dendrites == 0:
                    for key, value in layer._dendrite_state().items():
                        state_dict.setdefault(f"{prefix}{name}.{key}", value)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def export(self, export_layer: Callable[[DendriteLayer], nn.Module]) -> nn.Module:
        """A plain module computing what this wrapper computes; `export_layer` exports one
        projection."""
        raise NotImplementedError

    def projection_positions(self, *args: Any, **kwargs: Any) -> dict[str, int]:
        """{projection: sample positions} of a forward called with these arguments (each
        neuron of a projection is computed once at each); `perforate inspect` counts them."""
        raise NotImplementedError


def top_wrappers(net: nn.Module, *, remove_duplicate: bool = True) -> dict[str, nn.Module]:
    """{name: wrapper} of the outermost wrappers in `net` (`DendriteLayer`s that are not a
    `CompositeLayer`'s projections, and `CompositeLayer`s): what unload and export replace.
    `remove_duplicate=False`: every place of a wrapper used at several places."""
    out: dict[str, nn.Module] = {}
    for name, m in net.named_modules(remove_duplicate=remove_duplicate):
        if not isinstance(m, (DendriteLayer, CompositeLayer)):
            continue
        if any(name.startswith(w + ".") for w in out):
            continue
        out[name] = m
    return out
