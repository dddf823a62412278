"""Geometry: the per-set sums over sample positions that the candidate statistics use."""

import pytest
import torch
from torch import nn

from perforate.engine.geometry import ConvGeometry, ConvTransposeGeometry, LinearGeometry

CASES = [
    (LinearGeometry, nn.Linear(5, 3), (7, 2, 3), (0,)),  # [B, S, N]
    (LinearGeometry, nn.Linear(5, 3), (4, 6, 2, 3), (0, 1)),  # [B, T, S, N]
    (ConvGeometry, nn.Conv1d(2, 3, 3), (4, 2, 3, 9), (0, 3)),  # [B, S, N, L]
    (ConvGeometry, nn.Conv2d(2, 3, 3), (4, 2, 3, 5, 6), (0, 3, 4)),
    (ConvGeometry, nn.Conv3d(2, 3, 3), (2, 2, 3, 3, 4, 5), (0, 3, 4, 5)),
    (ConvTransposeGeometry, nn.ConvTranspose2d(2, 3, 3), (4, 2, 3, 5, 6), (0, 3, 4)),
]


@pytest.mark.parametrize(("cls", "layer", "shape", "dims"), CASES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_sums_over_positions_match_float64(cls, layer, shape, dims, contiguous) -> None:
    geo = cls(layer)
    g = torch.Generator().manual_seed(0)
    t = torch.randn(shape, generator=g, dtype=torch.float64).tanh() + 0.5
    if not contiguous:  # e.g. a grouped conv's interleaved sets: a transposed copy
        t = t.transpose(0, -1).contiguous().transpose(0, -1)
    t32 = t.float()
    s, s2 = geo.sums_stacked(t32)
    assert s.shape == s2.shape == t.sum(dims).shape  # [S, N]
    torch.testing.assert_close(s.double(), t.sum(dims), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(s2.double(), (t * t).sum(dims), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(geo.sum_stacked(t32).double(), t.sum(dims), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(geo.sum_sq_stacked(t32), s2)
