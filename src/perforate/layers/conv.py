"""Dendrites for `nn.Conv1d/2d/3d` (stride, padding, padding modes, dilation, groups)."""

from __future__ import annotations

from ..geometry import ConvGeometry
from .base import DendriteLayer


class ConvNd(DendriteLayer):
    """`nn.ConvNd` with dendrites; a dendrite of channel n has channel n's receptive field."""

    geometry_cls = ConvGeometry
