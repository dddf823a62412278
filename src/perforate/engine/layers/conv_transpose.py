"""Dendrites for `nn.ConvTranspose1d/2d/3d` (stride, padding, output_padding, dilation, groups)."""

from __future__ import annotations

from torch import Tensor

from ..geometry import ConvTransposeGeometry
from .conv import ConvNd


class ConvTransposeNd(ConvNd):
    """`nn.ConvTransposeNd` with dendrites; a dendrite of output channel n is a transposed conv
    with channel n's receptive field (its own ``[in/groups, *kernel]`` weights)."""

    geometry_cls = ConvTransposeGeometry

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if output_size is not None:
            raise ValueError("ConvTranspose with dendrites does not take output_size: set the "
                             "layer's output_padding instead (it fixes the output size)")
        return super().forward(x)
