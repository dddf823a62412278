"""`DendriteTerm`: the output term of trained dendrite sets as one autograd function."""

import pytest
import torch
from torch import nn

import perforate as pf
from perforate.engine.activations import BACKWARD_FROM_OUTPUT
from perforate.engine.geometry import ConvGeometry, LinearGeometry
from perforate.engine.layers.dendrite_term import DendriteTerm, DendriteTermEager, fusable

GEOMETRIES = {
    "linear": (LinearGeometry(nn.Linear(3, 4)), (5, 3, 4), (5, 4)),
    # conv outputs of 1 x 2 x 2 positions: gradcheck's cost grows with every input element
    "conv": (ConvGeometry(nn.Conv2d(2, 4, 3)), (1, 3, 4, 2, 2), (1, 4, 2, 2)),
    "grouped conv": (ConvGeometry(nn.Conv2d(4, 4, 3, groups=2)), (1, 3, 4, 2, 2), (1, 4, 2, 2)),
}


@pytest.mark.parametrize("activation", sorted(BACKWARD_FROM_OUTPUT))
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_gradients_are_those_of_the_formula(geometry: str, activation: str) -> None:
    geo, pre_shape, z_shape = GEOMETRIES[geometry]
    g = torch.Generator().manual_seed(0)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    z, pre, cascade, a = leaf(*z_shape), leaf(*pre_shape), leaf(3, 3, 4), leaf(3, 4)
    for form in (DendriteTerm, DendriteTermEager):  # the torch.func form and the eager one
        assert torch.autograd.gradcheck(
            lambda *t, form=form: form.apply(*t, geo, activation)[0], (z, pre, cascade, a),
            check_forward_ad=True)  # its jvp too
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
    torch.testing.assert_close(DendriteTerm.apply(z, pre, cascade, a, geo, activation)[0], want)
    torch.testing.assert_close(DendriteTermEager.apply(z, pre, cascade, a, geo, activation)[0],
                               want)


def test_a_layer_with_trained_sets_uses_it_and_matches_the_autograd_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import perforate.engine.layers.base as base

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(20, 3))
    model = pf.perforate(net, pf.PerforationConfig(seed=0))
    for layer in model.dendrite_layers().values():
        layer.resize(2)
        with torch.no_grad():
            for p in layer.dendrite_parameters():
                p.normal_(0, 0.5)
    x = torch.randn(4, 2, 4, 4)
    calls: list[type] = []
    real = base.term_function
    monkeypatch.setattr(base, "term_function", lambda: (calls.append(real()), calls[-1])[1])
    model(x).square().sum().backward()
    assert calls == [DendriteTermEager] * 2  # both layers, the eager form
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
    assert pf.PerforationConfig().dendrite_activation == "sigmoid"  # the default is fused


@pytest.mark.parametrize("activation", sorted(BACKWARD_FROM_OUTPUT))
@pytest.mark.parametrize("geometry", ["linear", "conv"])
def test_its_backward_is_differentiable(geometry: str, activation: str) -> None:
    """Second derivatives (create_graph=True) are those of the formula."""
    geo, pre_shape, z_shape = GEOMETRIES[geometry]
    g = torch.Generator().manual_seed(1)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    inputs = (leaf(*z_shape), leaf(*pre_shape), leaf(3, 3, 4), leaf(3, 4))
    for form in (DendriteTerm, DendriteTermEager):
        assert torch.autograd.gradgradcheck(
            lambda *t, form=form: form.apply(*t, geo, activation)[0], inputs, fast_mode=True)


def _grown(config: pf.PerforationConfig) -> tuple[pf.PerforatedModel, torch.Tensor]:
    """A small conv net after one growth (a dendrite phase where candidates train), with
    random output weights so that the dendrites change its function."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 2))
    model = pf.perforate(net, config)
    x = torch.randn(4, 2, 4, 4)
    if model.trains_candidates:
        model.begin_dendrite_phase()
        model(x).square().sum().backward()
        model.candidate_optimizer().step()
        model.end_epoch()
        model.end_dendrite_phase()
    else:
        model.grow()
    with torch.no_grad():
        for layer in model.dendrite_layers().values():
            layer.output_weight.normal_()
    return model, x


def _higher_order(model: pf.PerforatedModel, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """A gradient penalty's parameter gradients and torch.func's grad, jacrev, hessian and
    per-sample gradients (vmap of grad) of the model."""
    from torch.func import functional_call, grad, hessian, jacrev, vmap

    trained = [p for p in model.parameters() if p.requires_grad]
    xg = x.clone().requires_grad_()
    (dx,) = torch.autograd.grad(model(xg).square().sum(), xg, create_graph=True)
    penalty = torch.autograd.grad(dx.square().sum(), trained, allow_unused=True)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (x,)).square().sum()

    return {
        "penalty": [torch.zeros_like(p) if g is None else g
                    for p, g in zip(trained, penalty, strict=True)],
        "grad": list(grad(loss)(params, x).values()),
        "jacrev": [jacrev(lambda x: functional_call(model, params, (x,)))(x)],
        "hessian": [hessian(lambda x: functional_call(model, params, (x[None],)).square()
                            .sum())(x[0])],  # forward mode over reverse mode
        "per-sample": list(vmap(grad(lambda p, x: loss(p, x[None])), (None, 0))(params, x)
                           .values()),
    }


@pytest.mark.parametrize("recipe", ["default", "paper", "paper, trained sets"])
def test_higher_order_gradients_after_a_growth_match_the_autograd_path(
        recipe: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradient penalties and torch.func transforms through installed dendrites give the
    autograd path's values (sets that train go through `DendriteTerm`)."""
    import perforate.engine.layers.base as base

    config = {"default": pf.PerforationConfig(seed=0),
              "paper": pf.PerforationConfig.paper(seed=0),
              "paper, trained sets": pf.PerforationConfig.paper(seed=0, train_dendrites=True),
              }[recipe]
    model, x = _grown(config)
    assert all(layer.num_dendrites == 1 for layer in model.dendrite_layers().values())
    calls: list[type] = []
    real = base.term_function
    monkeypatch.setattr(base, "term_function", lambda: (calls.append(real()), calls[-1])[1])
    got = _higher_order(model, x)
    # torch.func.grad differentiates every parameter, frozen sets' too
    assert DendriteTerm in calls
    assert (DendriteTermEager in calls) == config.train_dendrites  # the gradient penalty
    monkeypatch.setattr(base, "fusable", lambda *a: False)  # the autograd path
    want = _higher_order(model, x)
    for key, tensors in want.items():
        assert any(t.abs().max() > 1e-3 for t in tensors), key
        for a, b in zip(got[key], tensors, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)
