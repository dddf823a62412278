"""Which wrapper class serves which layer type. Extend it for new layer types."""

from __future__ import annotations

from torch import nn

from .attention import MultiheadAttention
from .base import DendriteLayer
from .composite import CompositeLayer
from .conv import ConvNd
from .conv_transpose import ConvTransposeNd
from .linear import Linear
from .recurrent import RNN, RNNCell

Wrapper = type[DendriteLayer] | type[CompositeLayer]


class WrapperRegistry:
    """Maps layer types to wrapper classes (exact type first, then the MRO).

    A subclass of a registered type (``class MyLinear(nn.Linear)``, a parametrised layer such
    as ``weight_norm(nn.Linear(...))``) is served by the same wrapper as long as it keeps the
    registered type's ``forward``; one that overrides ``forward`` computes something the
    wrapper cannot know, so it is not wrappable (see `unwrappable_reason`).
    """

    def __init__(self, mapping: dict[type[nn.Module], Wrapper] | None = None) -> None:
        self._mapping: dict[type[nn.Module], Wrapper] = dict(mapping or {})

    def register(self, layer_type: type[nn.Module], wrapper: Wrapper) -> None:
        """Serve `layer_type` (and, unless registered separately, its subclasses) by `wrapper`."""
        if not (isinstance(wrapper, type) and issubclass(wrapper, (DendriteLayer,
                                                                   CompositeLayer))):
            raise TypeError(f"wrapper must subclass DendriteLayer or CompositeLayer, got "
                            f"{wrapper!r}")
        self._mapping[layer_type] = wrapper

    def default_types(self) -> tuple[type[nn.Module], ...]:
        """The registered types: wrapped (with their subclasses that keep the registered
        ``forward``) when no targets are given."""
        return tuple(self._mapping)

    def registered_type(self, module: nn.Module) -> type[nn.Module] | None:
        """The registered type `module` is an instance of (the nearest in its MRO), or None."""
        for cls in type(module).__mro__:
            if cls in self._mapping:
                return cls
        return None

    def lookup(self, module: nn.Module) -> Wrapper | None:
        cls = self.registered_type(module)
        return None if cls is None else self._mapping[cls]

    def unwrappable_reason(self, module: nn.Module) -> str | None:
        """Why a module of a registered type cannot be wrapped (None if it can)."""
        cls = self.registered_type(module)
        if cls is None or type(module).forward is cls.forward:
            return None
        return (f"{type(module).__name__} overrides {cls.__name__}.forward, so a dendrite "
                "wrapper cannot know what its neurons compute; register a wrapper for it with "
                "WrapperRegistry.register")

    def copy(self) -> WrapperRegistry:
        return WrapperRegistry(self._mapping)


def default_registry() -> WrapperRegistry:
    """A new registry serving Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d,
    MultiheadAttention, LSTM, GRU, RNN and their cells."""
    mapping: dict[type[nn.Module], Wrapper] = {
        nn.Linear: Linear, nn.Conv1d: ConvNd, nn.Conv2d: ConvNd, nn.Conv3d: ConvNd,
        nn.ConvTranspose1d: ConvTransposeNd, nn.ConvTranspose2d: ConvTransposeNd,
        nn.ConvTranspose3d: ConvTransposeNd, nn.MultiheadAttention: MultiheadAttention,
        nn.LSTM: RNN, nn.GRU: RNN, nn.RNN: RNN,
        nn.LSTMCell: RNNCell, nn.GRUCell: RNNCell, nn.RNNCell: RNNCell}
    return WrapperRegistry(mapping)
