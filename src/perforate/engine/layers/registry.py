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
from .transposed_linear import TransposedLinear

Wrapper = type[DendriteLayer] | type[CompositeLayer]

#: Layer types served by their class's qualified name (``module.QualName``), so that
#: `perforate` never imports the package that defines them: Hugging Face's ``Conv1D`` (GPT-2,
#: GPT, ...; in ``transformers.modeling_utils`` before transformers 4.20).
LAZY_TYPES: dict[str, Wrapper] = {
    "transformers.pytorch_utils.Conv1D": TransposedLinear,
    "transformers.modeling_utils.Conv1D": TransposedLinear}


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class: how `LAZY_TYPES` names it."""
    return f"{cls.__module__}.{cls.__qualname__}"


class WrapperRegistry:
    """Maps layer types to wrapper classes (exact type first, then the MRO).

    A subclass of a registered type (``class MyLinear(nn.Linear)``, a parametrised layer such
    as ``weight_norm(nn.Linear(...))``) is served by the same wrapper as long as it keeps the
    registered type's ``forward``; one that overrides ``forward`` computes something the
    wrapper cannot know, so it is not wrappable (see `unwrappable_reason`). Types in `lazy`
    are matched by their class's qualified name (``"transformers.pytorch_utils.Conv1D"``),
    without importing their package.

    A wrapper registered for a type `default_registry` does not pair it with must fit the
    type's weight layout: `perforate` checks each such layer on a small random batch
    (`layout.layout_mismatch`) and raises `TargetError` if it does not.
    """

    def __init__(self, mapping: dict[type[nn.Module], Wrapper] | None = None,
                 lazy: dict[str, Wrapper] | None = None) -> None:
        self._mapping: dict[type[nn.Module], Wrapper] = dict(mapping or {})
        self._lazy: dict[str, Wrapper] = dict(lazy or {})  # qualified class name -> wrapper

    def register(self, layer_type: type[nn.Module], wrapper: Wrapper) -> None:
        """Serve `layer_type` (and, unless registered separately, its subclasses) by `wrapper`
        (whose geometry must match the type's weight layout: `perforate` checks it)."""
        if not (isinstance(wrapper, type) and issubclass(wrapper, (DendriteLayer,
                                                                   CompositeLayer))):
            raise TypeError(f"wrapper must subclass DendriteLayer or CompositeLayer, got "
                            f"{wrapper!r}")
        self._mapping[layer_type] = wrapper

    def default_types(self) -> tuple[type[nn.Module], ...]:
        """The registered types: wrapped (with their subclasses that keep the registered
        ``forward``) when no targets are given (`type_names` adds those served by name)."""
        return tuple(self._mapping)

    def type_names(self) -> list[str]:
        """Short names of every type served: registered ones and those served by name."""
        lazy = {name.rpartition(".")[2]: name.partition(".")[0] for name in self._lazy}
        return [t.__name__ for t in self._mapping] + [f"{n} ({pkg})" for n, pkg in lazy.items()]

    def _wrapper_of(self, cls: type) -> Wrapper | None:
        wrapper = self._mapping.get(cls)
        if wrapper is None and self._lazy:
            wrapper = self._lazy.get(qualified_name(cls))
        return wrapper

    def registered_type(self, module: nn.Module) -> type[nn.Module] | None:
        """The registered type `module` is an instance of (the nearest in its MRO, registered
        or served by name), or None."""
        for cls in type(module).__mro__:
            if self._wrapper_of(cls) is not None:
                return cls
        return None

    def lookup(self, module: nn.Module) -> Wrapper | None:
        cls = self.registered_type(module)
        return None if cls is None else self._wrapper_of(cls)

    def is_builtin(self, module: nn.Module) -> bool:
        """Whether `module` is served as `default_registry` serves its type (a pairing known
        to fit; any other is checked by `layout.layout_mismatch` at `perforate`)."""
        cls = self.registered_type(module)
        if cls is None:
            return False
        builtin = _DEFAULT_MAPPING.get(cls) or LAZY_TYPES.get(qualified_name(cls))
        return builtin is not None and builtin is self._wrapper_of(cls)

    def unwrappable_reason(self, module: nn.Module) -> str | None:
        """Why a module of a registered type cannot be wrapped (None if it can)."""
        cls = self.registered_type(module)
        if cls is None or type(module).forward is cls.forward:
            return None
        return (f"{type(module).__name__} overrides {cls.__name__}.forward, so a dendrite "
                "wrapper cannot know what its neurons compute; register a wrapper for it with "
                "WrapperRegistry.register")

    def copy(self) -> WrapperRegistry:
        return WrapperRegistry(self._mapping, self._lazy)


_DEFAULT_MAPPING: dict[type[nn.Module], Wrapper] = {
    nn.Linear: Linear, nn.Conv1d: ConvNd, nn.Conv2d: ConvNd, nn.Conv3d: ConvNd,
    nn.ConvTranspose1d: ConvTransposeNd, nn.ConvTranspose2d: ConvTransposeNd,
    nn.ConvTranspose3d: ConvTransposeNd, nn.MultiheadAttention: MultiheadAttention,
    nn.LSTM: RNN, nn.GRU: RNN, nn.RNN: RNN,
    nn.LSTMCell: RNNCell, nn.GRUCell: RNNCell, nn.RNNCell: RNNCell}


def default_registry() -> WrapperRegistry:
    """A new registry serving Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d,
    MultiheadAttention, LSTM, GRU, RNN and their cells, and Hugging Face's Conv1D (by name:
    transformers is not imported)."""
    return WrapperRegistry(_DEFAULT_MAPPING, LAZY_TYPES)
