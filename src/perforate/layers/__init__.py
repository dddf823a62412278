"""Layer wrappers: each keeps the original layer as ``base_layer`` and adds dendrite sets."""

from .base import DendriteLayer
from .conv import ConvNd
from .linear import Linear
from .registry import WrapperRegistry, default_registry

__all__ = ["ConvNd", "DendriteLayer", "Linear", "WrapperRegistry", "default_registry"]
