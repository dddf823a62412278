"""Layer wrappers: each keeps the original layer as ``base_layer`` and adds dendrite sets."""

from .attention import MultiheadAttention
from .base import DendriteLayer
from .composite import CompositeLayer
from .conv import ConvNd
from .conv_transpose import ConvTransposeNd
from .costs import LayerCosts
from .linear import Linear
from .recurrent import RNN, RNNCell
from .registry import WrapperRegistry, default_registry
from .transposed_linear import TransposedLinear

__all__ = ["RNN", "CompositeLayer", "ConvNd", "ConvTransposeNd", "DendriteLayer", "LayerCosts",
           "Linear", "MultiheadAttention", "RNNCell", "TransposedLinear", "WrapperRegistry",
           "default_registry"]
