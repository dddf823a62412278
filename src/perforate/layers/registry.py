"""Which wrapper class serves which layer type. Extend it for new layer types."""

from __future__ import annotations

from torch import nn

from .base import DendriteLayer
from .conv import ConvNd
from .linear import Linear
from .recurrent import RNN, RNNCell


class WrapperRegistry:
    """Maps layer types to `DendriteLayer` subclasses (exact type first, then the MRO)."""

    def __init__(self, mapping: dict[type[nn.Module], type[DendriteLayer]] | None = None) -> None:
        self._mapping: dict[type[nn.Module], type[DendriteLayer]] = dict(mapping or {})

    def register(self, layer_type: type[nn.Module], wrapper: type[DendriteLayer]) -> None:
        """Serve `layer_type` (and, unless registered separately, its subclasses) by `wrapper`."""
        if not (isinstance(wrapper, type) and issubclass(wrapper, DendriteLayer)):
            raise TypeError(f"wrapper must subclass DendriteLayer, got {wrapper!r}")
        self._mapping[layer_type] = wrapper

    def default_types(self) -> tuple[type[nn.Module], ...]:
        """Types wrapped when no targets are given (exact matches only: a subclass such as
        MultiheadAttention's out_proj may not be called as a module)."""
        return tuple(self._mapping)

    def lookup(self, module: nn.Module) -> type[DendriteLayer] | None:
        for cls in type(module).__mro__:
            if cls in self._mapping:
                return self._mapping[cls]
        return None

    def copy(self) -> WrapperRegistry:
        return WrapperRegistry(self._mapping)


def default_registry() -> WrapperRegistry:
    """A new registry serving Linear, Conv1d/2d/3d, LSTM, GRU, RNN and their cells."""
    return WrapperRegistry({nn.Linear: Linear, nn.Conv1d: ConvNd, nn.Conv2d: ConvNd,
                            nn.Conv3d: ConvNd,
                            nn.LSTM: RNN, nn.GRU: RNN, nn.RNN: RNN,
                            nn.LSTMCell: RNNCell, nn.GRUCell: RNNCell, nn.RNNCell: RNNCell})
