"""Layer wrappers: each keeps the original layer as ``base_layer`` and adds dendrite sets."""

from .base import DendriteLayer
from .conv import ConvNd
from .linear import Linear
from .recurrent import RNN, RNNCell
from .registry import WrapperRegistry, default_registry

__all__ = ["RNN", "ConvNd", "DendriteLayer", "Linear", "RNNCell", "WrapperRegistry",
           "default_registry"]
