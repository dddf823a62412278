"""Layer wrappers: each keeps the original layer as ``base_layer`` and adds dendrite sets."""

from .attention import MultiheadAttention
from .base import DendriteLayer
from .composite import CompositeLayer
from .conv import ConvNd
from .conv_transpose import ConvTransposeNd
from .linear import Linear
from .registry import WrapperRegistry, default_registry

__all__ = ["CompositeLayer", "ConvNd", "ConvTransposeNd", "DendriteLayer", "Linear",
           "MultiheadAttention", "WrapperRegistry", "default_registry"]
