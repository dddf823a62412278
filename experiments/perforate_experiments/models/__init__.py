"""Models for the paper's experiments; every learnable projection is an nn.Linear/nn.Conv2d."""

from __future__ import annotations

from .fingerprint_mlp import FingerprintMLP
from .mnist_cnn import MnistCNN
from .mpnn import MPNN
from .mtan import LinearGRU, MTANClassifier, MultiTimeAttention, TimeEmbedding


def count_parameters(model: object, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of an nn.Module."""
    return sum(
        p.numel()
        for p in model.parameters()  # type: ignore[attr-defined]
        if p.requires_grad or not trainable_only
    )


__all__ = [
    "MPNN",
    "FingerprintMLP",
    "LinearGRU",
    "MTANClassifier",
    "MnistCNN",
    "MultiTimeAttention",
    "TimeEmbedding",
    "count_parameters",
]
