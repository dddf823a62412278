"""`DendriteTerm`: the output term of trained dendrite sets as one autograd function."""

import pytest
import torch
from torch import nn

import perforate as pf
from perforate.config import ANCHOR
from perforate.geometry import ConvGeometry, LinearGeometry
from perforate.layers.dendrite_term import BACKWARD_FROM_OUTPUT, DendriteTerm, fusable

GEOMETRIES = {
    "linear": (LinearGeometry(nn.Linear(3, 4)), (5, 3, 4), (5, 4)),
    "conv": (ConvGeometry(nn.Conv2d(2, 4, 3)), (2, 3, 4, 3, 3), (2, 4, 3, 3)),
    "grouped conv": (ConvGeometry(nn.Conv2d(4, 4, 3, groups=2)), (2, 3, 4, 3, 3), (2, 4, 3, 3)),
}


@pytest.mark.parametrize("activation", sorted(BACKWARD_FROM_OUTPUT))
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_gradients_are_those_of_the_formula(geometry: str, activation: str) -> None:
    geo, pre_shape, z_shape = GEOMETRIES[geometry]
    g = torch.Generator().manual_seed(0)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    z, pre, cascade, a = leaf(*z_shape), leaf(*pre_shape), leaf(3, 3, 4), leaf(3, 4)
    assert torch.autograd.gradcheck(
        lambda *t: DendriteTerm.apply(*t, geo, activation), (z, pre, cascade, a))
    # the same values as the formula written out
    act = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
           "identity": lambda t: t}[activation]
    hs = []
    for j in range(3):
        u = pre.select(geo.set_dim, j)
        for i in range(j):
            u = u + geo.expand(cascade[j, i]) * hs[i]
        hs.append(act(u))
    want = z + sum(geo.expand(a[j]) * hs[j] for j in range(3))
    torch.testing.assert_close(DendriteTerm.apply(z, pre, cascade, a, geo, activation), want)


def test_a_layer_with_trained_sets_uses_it_and_matches_the_autograd_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import perforate.layers.base as base

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(20, 3))
    model = pf.perforate(net, pf.PerforationConfig(seed=0))
    for layer in model.dendrite_layers().values():
        layer.resize(2)
        with torch.no_grad():
            for p in layer.dendrite_parameters():
                p.normal_(0, 0.5)
    x = torch.randn(4, 2, 4, 4)
    calls: list[int] = []
    real_apply = DendriteTerm.apply
    monkeypatch.setattr(base.DendriteTerm, "apply",
                        lambda *a: (calls.append(1), real_apply(*a))[1])
    model(x).square().sum().backward()
    assert len(calls) == 2  # both layers
    fused = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    monkeypatch.setattr(base, "fusable", lambda *a: False)  # the autograd path
    model(x).square().sum().backward()
    assert len(calls) == 2
    assert fused.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    assert any(".output_weight" in n for n in fused) and any(".dendrite_weight" in n
                                                            for n in fused)
    for name, grad in fused.items():
        torch.testing.assert_close(grad, dict(model.named_parameters())[name].grad,
                                   rtol=1e-5, atol=1e-6, msg=name)


def test_what_it_does_not_fuse() -> None:
    f32, bf16 = torch.zeros(1), torch.zeros(1, dtype=torch.bfloat16)
    assert fusable("sigmoid", f32, f32) and fusable("tanh", f32)
    assert not fusable("gelu", f32)  # its derivative needs its input
    assert not fusable("sigmoid", f32, bf16)  # autocast: one dtype throughout only
    assert ANCHOR["dendrite_activation"] == "sigmoid"  # the default is fused
