"""Forward and backward of dendrite layers: D = 0 identity, perforation, install, cascade."""

import pytest
import torch
from torch import nn

import perforate as pf
from conftest import SmallCNN, mlp, train_candidates


def grads(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n.replace(".base_layer", ""): p.grad.clone() for n, p in net.named_parameters()
            if p.grad is not None}


class SeqNet(nn.Module):
    """[B, T, C] input: Linear over the last axis, neuron axis last."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


@pytest.mark.parametrize(("factory", "shape"), [(mlp, (9, 5)), (SmallCNN, (4, 2, 8, 8)),
                                                (SeqNet, (3, 7, 6))])
def test_zero_dendrites_match_original_outputs_and_gradients(factory, shape) -> None:
    torch.manual_seed(1)
    original = factory()
    wrapped = pf.perforate(_clone(original), pf.PerforationConfig.paper())
    x = torch.randn(*shape)
    out_o, out_w = original(x), wrapped(x)
    assert torch.equal(out_o, out_w)
    out_o.square().sum().backward()
    out_w.square().sum().backward()
    g_o, g_w = grads(original), grads(wrapped.net)
    assert g_o.keys() == g_w.keys() and len(g_o) > 0
    for k in g_o:
        assert torch.equal(g_o[k], g_w[k]), k


def _clone(net: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(net)


def _net_with_dendrites(perforated: bool) -> tuple[nn.Module, pf.PerforatedModel]:
    """L0 -> tanh -> L1 (wrapped, one dendrite set with random weights and a != 0)."""
    torch.manual_seed(2)
    plain = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    model = pf.perforate(_clone(plain), pf.PerforationConfig.paper(target_modules=["2"],
                                                             perforated=perforated))
    layer = model.dendrite_layers()["2"]
    layer.resize(1)
    with torch.no_grad():
        layer.dendrite_weight.normal_()
        layer.dendrite_bias.normal_()
        layer.output_weight.normal_()
    return plain, model


def test_perforation_blocks_error_through_dendrites() -> None:
    plain, model = _net_with_dendrites(perforated=True)
    x, r = torch.randn(10, 4), torch.randn(10, 3)
    # A loss linear in the output: the error at the output is r whatever the dendrites add,
    # so everything before the wrapped layer must get exactly the plain network's gradients.
    (model(x) * r).sum().backward()
    (plain(x) * r).sum().backward()
    for name in ("weight", "bias"):
        assert torch.equal(getattr(model.net[0], name).grad, getattr(plain[0], name).grad)
    # ... while the output weights a do learn: da = sum_p r * h.
    layer = model.dendrite_layers()["2"]
    h = torch.tanh(nn.functional.linear(torch.tanh(model.net[0](x)), layer.dendrite_weight[0],
                                        layer.dendrite_bias[0]))
    torch.testing.assert_close(layer.output_weight.grad[0], (r * h).sum(0))


def test_without_perforation_error_flows_through_dendrites() -> None:
    plain, model = _net_with_dendrites(perforated=False)
    x, r = torch.randn(10, 4), torch.randn(10, 3)
    (model(x) * r).sum().backward()
    (plain(x) * r).sum().backward()
    assert not torch.allclose(model.net[0].weight.grad, plain[0].weight.grad)
    # Hand computation: dL/dh0 = r W1 + (r * a * g'(V h0 + b)) V ; dL/dz0 = dL/dh0 * tanh'(z0).
    layer = model.dendrite_layers()["2"]
    z0 = model.net[0](x).detach()
    h0 = torch.tanh(z0)
    v, b, a = layer.dendrite_weight[0], layer.dendrite_bias[0], layer.output_weight[0].detach()
    g_prime = 1 - torch.tanh(h0 @ v.T + b) ** 2
    d_h0 = r @ layer.base_layer.weight.detach() + (r * a * g_prime) @ v
    d_z0 = d_h0 * (1 - h0**2)
    torch.testing.assert_close(model.net[0].weight.grad, d_z0.T @ x)
    torch.testing.assert_close(model.net[0].bias.grad, d_z0.sum(0))


def _batches(n: int = 4, b: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(b, 5, generator=g), torch.randint(0, 3, (b,), generator=g))
            for _ in range(n)]


def test_install_takes_argmax_candidate_per_neuron_and_keeps_function() -> None:
    model = pf.perforate(mlp(), pf.PerforationConfig.paper(candidates=3, seed=0))
    batches = _batches()
    x = batches[0][0]
    before = model(x).detach()
    model.begin_dendrite_phase()
    loss = nn.functional.cross_entropy
    train_candidates(model, batches, loss, steps=2)
    # One more epoch whose statistics we read before closing it.
    opt = model.candidate_optimizer()
    for xb, yb in batches:
        opt.zero_grad()
        loss(model(xb), yb).backward()
        opt.step()
    corr = model.candidate_correlations()
    layers = model.dendrite_layers()
    snap = {n: (m.candidates.weight.detach().clone(), m.candidates.bias.detach().clone(),
                m.candidates.best_corr.clone()) for n, m in layers.items()}
    reports = model.end_epoch()
    stats = model.end_dendrite_phase()
    for name, layer in layers.items():
        w, b, prev_best = snap[name]
        best_now, k_star = corr[name].max(0)
        improved = best_now.double() > prev_best
        assert improved.any(), name
        n_idx = torch.arange(layer.num_neurons)
        sel = improved.nonzero().flatten()
        assert torch.equal(layer.dendrite_weight[0][sel], w[k_star, n_idx][sel])
        assert torch.equal(layer.dendrite_bias[0][sel], b[k_star, n_idx][sel])
        assert torch.equal(layer.output_weight.detach(), torch.zeros(1, layer.num_neurons))
        torch.testing.assert_close(reports[name].best_corr.float(),
                                   torch.maximum(best_now.double(), prev_best).float())
        assert stats[name]["max_corr"] == pytest.approx(float(reports[name].best_corr.max()))
    assert model.num_dendrites == 1 and model.phase == "neuron"
    assert torch.equal(model(x), before)  # a = 0: the function is unchanged


def test_second_dendrite_receives_first_through_cascade() -> None:
    cfg = pf.PerforationConfig.paper(candidates=2, seed=1, target_modules=["2"])
    model = pf.perforate(mlp(), cfg)
    batches = _batches()
    for _ in range(2):
        model.begin_dendrite_phase()
        train_candidates(model, batches, nn.functional.cross_entropy, steps=2)
        if model.num_dendrites == 1:
            pool = model.dendrite_layers()["2"].candidates
            assert pool.cascade.shape == (2, 1, 4)
            assert pool.cascade.grad is not None and pool.cascade.grad.abs().sum() > 0
        model.end_dendrite_phase()
    layer = model.dendrite_layers()["2"]
    assert layer.cascade_weight.shape == (2, 2, 4)
    assert layer.cascade_weight[1, 0].abs().sum() > 0  # learned in phase 2, installed
    assert torch.equal(layer.cascade_weight[0], torch.zeros(2, 4))
    # h_2 = g(V_2 x + b_2 + C[1,0] * h_1), checked by hand on the layer input.
    x = torch.randn(6, 7)
    h = layer.dendrite_outputs(x)
    h1 = torch.tanh(x @ layer.dendrite_weight[0].T + layer.dendrite_bias[0])
    h2 = torch.tanh(x @ layer.dendrite_weight[1].T + layer.dendrite_bias[1]
                    + layer.cascade_weight[1, 0] * h1)
    torch.testing.assert_close(h[0], h1)
    torch.testing.assert_close(h[1], h2)
    with torch.no_grad():
        layer.output_weight.copy_(torch.tensor([[0.5] * 4, [-2.0] * 4]))
    torch.testing.assert_close(layer(x), layer.base_layer(x) + 0.5 * h1 - 2.0 * h2)


def test_remove_last_dendrites_restores_previous_structure() -> None:
    model = pf.perforate(mlp(), pf.PerforationConfig.paper(candidates=2, seed=0))
    batches = _batches(2)
    model.begin_dendrite_phase()
    train_candidates(model, batches, nn.functional.cross_entropy)
    model.end_dendrite_phase()
    params_1 = model.count_parameters()
    state_1 = {k: v.clone() for k, v in model.state_dict().items()}
    model.begin_dendrite_phase()
    train_candidates(model, batches, nn.functional.cross_entropy)
    model.end_dendrite_phase()
    assert model.num_dendrites == 2 and model.count_parameters() > params_1
    model.remove_last_dendrites()
    assert model.num_dendrites == 1 and model.count_parameters() == params_1
    for k, v in model.state_dict().items():
        assert torch.equal(v, state_1[k]), k


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_dendrites_match_per_set_convolution(groups: int) -> None:
    base = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=groups,
                     padding_mode="reflect")
    model = pf.perforate(nn.Sequential(base), pf.PerforationConfig.paper())
    layer = model.dendrite_layers()["0"]
    layer.resize(2)
    with torch.no_grad():
        for t in (layer.dendrite_weight, layer.dendrite_bias, layer.output_weight,
                  layer.cascade_weight):
            t.normal_()
    x = torch.randn(2, 4, 7, 7)
    ref_conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=groups, padding_mode="reflect")
    hs = []
    for j in range(2):
        with torch.no_grad():
            ref_conv.weight.copy_(layer.dendrite_weight[j])
            ref_conv.bias.copy_(layer.dendrite_bias[j])
        u = ref_conv(x)
        for i in range(j):
            u = u + layer.cascade_weight[j, i].view(-1, 1, 1) * hs[i]
        hs.append(torch.tanh(u))
    expected = base(x) + sum(layer.output_weight[j].view(-1, 1, 1) * hs[j] for j in range(2))
    torch.testing.assert_close(model(x), expected)
    # Unbatched: another conv kernel and the CPU tanh form (within 2.4e-7 of torch.tanh,
    # scaled by the output weights) differ from the reference by up to ~2e-6 on some CPUs.
    torch.testing.assert_close(model(x[0]), expected[0], rtol=1e-5, atol=1e-5)


def test_count_parameters_counts_deployable_weights_only() -> None:
    net = mlp()
    plain = sum(p.numel() for p in net.parameters())
    model = pf.perforate(net, pf.PerforationConfig.paper(candidates=3, seed=0))
    assert model.count_parameters() == plain
    model.begin_dendrite_phase()
    assert model.count_parameters() == plain  # candidates are not deployable
    train_candidates(model, _batches(2), nn.functional.cross_entropy)
    model.end_dendrite_phase()
    # per layer: V (N*in) + bias N + output weight N (no cascade for the first set)
    added = sum(n * i + 2 * n for i, n in [(5, 7), (7, 4), (4, 3)])
    assert model.count_parameters() == plain + added


def test_wrappers_expose_the_base_layers_attributes_read_only() -> None:
    model = pf.perforate(SmallCNN(), pf.PerforationConfig.paper())
    fc, conv = model.net.fc1, model.net.conv2
    assert fc.weight is fc.base_layer.weight and fc.bias is fc.base_layer.bias
    assert (fc.in_features, fc.out_features) == (54, 8)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.padding_mode) == (4, 6, (3, 3), (2, 2), (0, 0),
                                                               (1, 1), 1, "zeros")
    with pytest.raises(AttributeError):
        fc.in_features = 3
    with pytest.raises(KeyError, match="already exists"):
        fc.weight = nn.Parameter(torch.zeros(8, 54))
    assert "weight" not in dict(fc.named_parameters(recurse=False))  # no duplicate parameter


def test_installs_make_no_float64_copy_and_keep_the_values() -> None:
    """Resizing a float32 layer's dendrite parameters (install, removal, resize) creates no
    float64 tensor (MPS has none) and stores the values exactly."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Dtypes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: set[torch.dtype] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.seen.add(t.dtype)
            return out

    model = pf.perforate(mlp(), pf.PerforationConfig.paper(candidates=2, seed=0))
    model.begin_dendrite_phase()
    train_candidates(model, _batches(2), nn.functional.cross_entropy)
    layer = model.dendrite_layers()["0"]
    pool = layer.candidates
    winners = pool.winners()
    layer.candidates = None
    with Dtypes() as mode:
        layer.install(winners)
    assert torch.float64 not in mode.seen and torch.float32 in mode.seen
    assert layer.dendrite_weight.dtype == torch.float32
    assert torch.equal(layer.dendrite_weight[0], winners.weight)
    assert torch.equal(layer.dendrite_bias[0], winners.bias)
    with Dtypes() as mode:
        layer.remove_last()
        layer.resize(2)
    assert torch.float64 not in mode.seen
    assert layer.dendrite_weight.shape == (2, 7, 5) and layer.dendrite_weight.dtype == torch.float32


def test_an_install_while_a_graph_holds_the_parameters_gives_gradients_of_the_new_shape(
        ) -> None:
    """A graph of the last batch (still referenced) keeps each parameter's gradient
    accumulator; after an install the next backward's gradients have the new shapes."""
    torch.manual_seed(0)
    model = pf.perforate(mlp(), pf.PerforationConfig(seed=0))
    x = torch.randn(4, 5)
    model.grow()
    held = model(x).square().sum()  # noqa: F841  # keeps the accumulators alive
    model.grow()
    model(x).square().sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.shape == p.shape, name
    assert model.dendrite_layers()["0"].output_weight.grad.shape == (2, 7)
