"""Dendrites for `nn.Conv1d/2d/3d` (stride, padding, padding modes, dilation, groups)."""

from __future__ import annotations

from ..geometry import ConvGeometry
from .base import DendriteLayer, base_view


class ConvNd(DendriteLayer):
    """`nn.ConvNd` with dendrites; a dendrite of channel n has channel n's receptive field."""

    geometry_cls = ConvGeometry

    in_channels = base_view("in_channels")
    out_channels = base_view("out_channels")
    kernel_size = base_view("kernel_size")
    stride = base_view("stride")
    padding = base_view("padding")
    dilation = base_view("dilation")
    groups = base_view("groups")
    padding_mode = base_view("padding_mode")
    transposed = base_view("transposed")
    output_padding = base_view("output_padding")
