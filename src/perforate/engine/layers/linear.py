"""Dendrites for `nn.Linear` (any leading dims, neurons on the last axis)."""

from __future__ import annotations

from ..geometry import LinearGeometry
from .base import DendriteLayer, base_view


class Linear(DendriteLayer):
    """`nn.Linear` with dendrites; the original layer is ``base_layer``."""

    geometry_cls = LinearGeometry

    in_features = base_view("in_features")
    out_features = base_view("out_features")
