"""The dendrite-learning options: scale-invariant objective, running sign, least-squares output
weight, candidates installed untrained, dendrites trained after the install (perforated or
not), dendrites that see a subset of inputs; and the presets."""

import pytest
import torch
from torch import nn

import perforate as pf
from conftest import train_candidates
from perforate.engine.geometry import LinearGeometry


def _pool(**cascade):
    """A candidate pool on a Linear(6 -> 3) layer, K=2, with these `CascadeCorrelation` knobs."""
    model = pf.perforate(nn.Sequential(nn.Linear(6, 3)), pf.PerforationConfig.paper(
        seed=0, cascade=pf.CascadeCorrelation(candidates=2, **cascade)))
    model.begin_dendrite_phase()
    return model.dendrite_layers()["0"].candidates


def test_correlation_objective_gradient_is_autograd_of_the_batch_correlation() -> None:
    pool = _pool(objective="correlation")
    g = torch.Generator().manual_seed(1)
    c = torch.randn(16, 2, 3, generator=g, dtype=torch.float64) * 3 + 1
    e = torch.randn(16, 3, generator=g, dtype=torch.float64) * 0.01
    grad = pool.observe(c.float(), e.float())
    leaf = c.clone().requires_grad_(True)
    cc, ee = leaf - leaf.mean(0), e - e.mean(0)
    r = (cc * ee.unsqueeze(1)).mean(0) / (cc.pow(2).mean(0).sqrt() * ee.pow(2).mean(0).sqrt())
    (-16 * r.abs().sum()).backward()  # -P * sum |r|, P = 16 positions
    torch.testing.assert_close(grad.double(), leaf.grad, rtol=1e-4, atol=1e-5)


def test_correlation_objective_gradient_is_accurate_in_float32_for_a_saturated_candidate(
) -> None:
    """A candidate near saturation (mean 0.98, std 3e-3): E[c²] - E[c]² in float32 would lose
    about 1% of var_c to cancellation; the gradient scales with var_c^-1.5."""
    g = torch.Generator().manual_seed(2)
    c = 0.98 + 3e-3 * torch.randn(4096, 2, 3, generator=g, dtype=torch.float64)
    e = torch.randn(4096, 3, generator=g, dtype=torch.float64) * 0.01
    grad32 = _pool(objective="correlation").observe(c.float(), e.float())
    leaf = c.clone().requires_grad_(True)
    cc, ee = leaf - leaf.mean(0), e - e.mean(0)
    r = (cc * ee.unsqueeze(1)).mean(0) / (cc.pow(2).mean(0).sqrt() * ee.pow(2).mean(0).sqrt())
    (-4096 * r.abs().sum()).backward()
    err = (grad32.double() - leaf.grad).abs().max() / leaf.grad.abs().max()
    assert err < 1e-4, float(err)


def test_correlation_objective_is_scale_invariant() -> None:
    """Scaling a candidate's output scales its gradient by 1/scale: no pull to grow."""
    pool = _pool(objective="correlation")
    c, e = torch.randn(32, 2, 3), torch.randn(32, 3)
    g1 = pool.observe(c, e)
    g10 = _pool(objective="correlation").observe(10 * c, e)
    torch.testing.assert_close(g10 * 10, g1, rtol=1e-4, atol=1e-6)
    # the gradient is orthogonal to the candidate's own (centred) output: d|r|/d(scale) = 0
    centred = c - c.mean(0)
    torch.testing.assert_close((g1 * centred).sum(0), torch.zeros(2, 3), atol=1e-4, rtol=0)


@pytest.mark.parametrize("objective", ["covariance", "correlation"])
def test_relu_candidates_stay_bounded_only_under_the_correlation_objective(objective) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    x = torch.randn(256, 8)
    y = (x[:, :1] * x[:, 1:2]).tanh()  # a target the network below cannot fit linearly
    model = pf.perforate(net, pf.PerforationConfig.paper(
        target_modules=["2"], seed=0, dendrite_activation="relu",
        cascade=pf.CascadeCorrelation(objective=objective)))
    model.begin_dendrite_phase()
    pool = model.dendrite_layers()["2"].candidates
    norm0 = pool.weight.detach().norm()
    opt = model.candidate_optimizer()
    for _ in range(300):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    growth = float(pool.weight.detach().norm() / norm0)
    if objective == "covariance":
        assert growth > 5  # |S| rewards scale: the weights run away
    else:
        assert growth < 2


def test_running_sign_follows_the_ema_of_the_batch_covariance() -> None:
    pool = _pool(sign_source="running", running_momentum=0.5)
    geo: LinearGeometry = pool.geometry
    g = torch.Generator().manual_seed(2)
    expected = None
    for _ in range(3):
        c, e = torch.randn(8, 2, 3, generator=g), torch.randn(8, 3, generator=g)
        cov = ((c - c.mean(0)) * (e - e.mean(0)).unsqueeze(1)).mean(0)
        expected = cov if expected is None else 0.5 * expected + 0.5 * cov
        grad = pool.observe(c, e)
    torch.testing.assert_close(pool.cov, expected, rtol=1e-5, atol=1e-6)
    inv_s = pool.error_var.rsqrt()
    centred = (e - e.mean(0)).unsqueeze(1)
    torch.testing.assert_close(grad, -torch.sign(expected) * inv_s * centred)
    assert geo.num_neurons == 3


def test_least_squares_output_weight_is_the_regression_of_the_residual() -> None:
    """With fixed candidates (no optimizer step) and an MSE loss, a_n = -P cov(h, e) / var(h),
    i.e. the least-squares fit of the residual y - z by a * h; installing it cuts the loss."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 2))
    x = torch.randn(64, 4)
    y = net(x).detach() + torch.tanh(2 * x[:, :1] - 1) * torch.tensor([1.0, -0.5])
    model = pf.perforate(net,
                         pf.PerforationConfig.paper(cascade=pf.CascadeCorrelation(
                             candidates=3, output_init="least_squares"), seed=0))
    loss_before = float(nn.functional.mse_loss(model(x), y))
    model.begin_dendrite_phase()
    pool = model.dendrite_layers()["0"].candidates
    for xb, yb in zip(x.split(32), y.split(32), strict=True):  # 2 batches, no step
        nn.functional.mse_loss(model(xb), yb).backward()
    model.end_epoch()
    with torch.no_grad():
        c = pool(x, [])  # [64, K, N] the candidates' outputs (unchanged: no step)
        residual = y - net[0].base_layer(x)
    # the error of mean-reduced MSE over N=2 outputs is -residual / 32 per batch of 32: the
    # winner is the candidate most correlated with the residual
    cc, rc = c - c.mean(0), residual - residual.mean(0)
    corr = (cc * rc.unsqueeze(1)).sum(0) / (cc.pow(2).sum(0) * rc.pow(2).sum(0)).sqrt()
    k = corr.abs().argmax(0)
    h = c[:, k, torch.arange(2)]  # the winners [64, N]
    hc = h - h.mean(0)
    slope = (hc * rc).sum(0) / hc.pow(2).sum(0)
    model.end_dendrite_phase()
    layer = model.dendrite_layers()["0"]
    torch.testing.assert_close(layer.output_weight.detach()[0], slope, rtol=1e-4, atol=1e-5)
    assert float(nn.functional.mse_loss(model(x), y)) < 0.9 * loss_before


def test_untrained_candidates_are_installed_at_once_with_the_function_unchanged() -> None:
    net = nn.Sequential(nn.Linear(50, 20), nn.ReLU(), nn.Linear(20, 3))
    model = pf.perforate(net, pf.PerforationConfig(seed=0))
    x = torch.randn(7, 50)
    before = model(x)
    stats = model.grow()
    assert model.num_dendrites == 1 and model.phase == "neuron" and set(stats) == {"0", "2"}
    torch.testing.assert_close(model(x), before)  # a = 0
    v = model.dendrite_layers()["0"].dendrite_weight.detach()
    assert v.shape == (1, 20, 50) and 0.008 < float(v.std()) < 0.012  # N(0, 0.01^2), no fan-in
    assert model.dendrite_layers()["0"].dendrite_weight.requires_grad  # trained afterwards
    with pytest.raises(pf.PhaseError, match="dendrite phase"):
        pf.perforate(nn.Sequential(nn.Linear(3, 2)), pf.PerforationConfig.paper()).grow()


def _installed(train: bool, perforated: bool) -> pf.PerforatedModel:
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    model = pf.perforate(net, pf.PerforationConfig.paper(target_modules=["2"], seed=0,
                                                   train_dendrites=train, perforated=perforated))
    data = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(2)]
    model.begin_dendrite_phase()
    train_candidates(model, data, nn.functional.cross_entropy)
    model.end_dendrite_phase()
    with torch.no_grad():
        model.dendrite_layers()["2"].output_weight.fill_(0.7)
    return model


@pytest.mark.parametrize("perforated", [True, False])
def test_trained_dendrites_learn_v_bias_and_stay_perforated_when_asked(perforated) -> None:
    frozen = _installed(train=False, perforated=True)
    trained = _installed(train=True, perforated=perforated)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for m in (frozen, trained):
        nn.functional.cross_entropy(m(x), y).backward()
    layer, ref = trained.dendrite_layers()["2"], frozen.dendrite_layers()["2"]
    assert ref.dendrite_weight.grad is None  # frozen: only a learns
    assert layer.dendrite_weight.grad.abs().sum() > 0 and layer.dendrite_bias.grad.abs().sum() > 0
    torch.testing.assert_close(layer.output_weight.grad, ref.output_weight.grad)
    same = torch.allclose(trained.net[0].weight.grad, frozen.net[0].weight.grad)
    assert same == perforated  # perforated: earlier layers see only the neurons' error
    opt = torch.optim.SGD([p for p in trained.parameters() if p.requires_grad], lr=0.1)
    v0 = layer.dendrite_weight.detach().clone()
    opt.step()
    assert not torch.equal(layer.dendrite_weight.detach(), v0)


def test_dendrites_that_see_m_inputs_are_counted_and_stay_sparse() -> None:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 2))
    model = pf.perforate(net, pf.PerforationConfig(seed=0, dendrite_inputs=5,
                                                          target_modules=["0"]))
    base = model.count_parameters()
    model.grow()
    layer = model.dendrite_layers()["0"]
    mask = layer.dendrite_mask[0]
    assert mask.shape == (8, 30) and torch.equal(mask.sum(1), torch.full((8,), 5.0))
    assert torch.equal(layer.dendrite_weight.detach()[0] * (1 - mask), torch.zeros(8, 30))
    assert model.count_parameters() == base + 8 * 5 + 8 + 8  # V entries seen, bias, a
    with torch.no_grad():
        layer.output_weight.fill_(1.0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(16, 30)).square().sum().backward()
        opt.step()
    assert torch.equal(layer.dendrite_weight.detach()[0] * (1 - mask), torch.zeros(8, 30))


def test_low_rank_dendrites_compute_v_of_p_x_and_count_p_once() -> None:
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 2))
    model = pf.perforate(net, pf.PerforationConfig(seed=0, dendrite_rank=4))
    base = model.count_parameters()
    model.grow()
    model.grow()
    first, head = model.dendrite_layers()["0"], model.dendrite_layers()["2"]
    p = first.dendrite_projection.detach()
    assert p.shape == (4, 30) and 0.12 < float(p.std()) < 0.24  # N(0, 1/30): std 0.18
    assert first.dendrite_weight.shape == (2, 8, 4)  # r weights per neuron and set
    assert head.dendrite_projection.shape == (4, 8) and head.dendrite_weight.shape == (2, 2, 4)
    cascade = 8 + 2  # one entry per neuron between its two sets
    assert model.count_parameters() == base + 2 * (8 * 4 + 2 * 8) + 4 * 30 + cascade \
        + 2 * (2 * 4 + 2 * 2) + 4 * 8
    # By hand: z = W x + b + sum_j a_j h_j, h_1 = g(V_1 P x + c_1), h_2 = g(V_2 P x + c_2 + C h_1)
    with torch.no_grad():
        first.output_weight.copy_(torch.randn(2, 8))
        first.cascade_weight[1, 0].copy_(torch.randn(8))
    x = torch.randn(5, 30)
    v, c, casc, a = (t.detach() for t in (first.dendrite_weight, first.dendrite_bias,
                                         first.cascade_weight, first.output_weight))
    px = x @ p.T
    h1 = torch.sigmoid(px @ v[0].T + c[0])
    h2 = torch.sigmoid(px @ v[1].T + c[1] + casc[1, 0] * h1)
    want = first.base_layer(x) + a[0] * h1 + a[1] * h2
    torch.testing.assert_close(first(x), want)
    torch.testing.assert_close(pf.export(model)(x), model(x))  # V (P x) = (V P) x
    model(x).square().sum().backward()  # P learns with the network (train_dendrites)
    assert first.dendrite_projection.grad.abs().sum() > 0


def test_low_rank_projection_goes_with_the_last_set_and_loads_into_a_fresh_model(
        tmp_path) -> None:
    def plain() -> nn.Module:
        return nn.Sequential(nn.Linear(12, 3), nn.Tanh(), nn.Linear(3, 2))

    def make() -> pf.PerforatedModel:
        return pf.perforate(plain(), pf.PerforationConfig.paper(seed=0, candidates=2,
                                                                dendrite_rank=3))
    model = make()
    layer = model.dendrite_layers()["0"]
    assert layer.dendrite_projection.shape == (0, 12)  # nothing drawn before the first set
    assert model.dendrite_layers()["2"].dendrite_projection is None  # fan_in 3 <= 3
    data = [(torch.randn(16, 12), torch.randint(0, 2, (16,))) for _ in range(2)]
    model.begin_dendrite_phase()
    assert layer.candidates.weight.shape == (2, 3, 3)  # candidates see P x too
    train_candidates(model, data, nn.functional.cross_entropy)
    model.end_dendrite_phase()
    with torch.no_grad():
        layer.output_weight.fill_(0.5)
    fresh = make()
    fresh.load_state_dict(model.state_dict())  # resized to D = 1, P included
    x = data[0][0]
    torch.testing.assert_close(fresh(x), model(x))
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(pf.load(tmp_path, plain())(x), model(x))
    assert layer.dendrite_parameter_count() == 3 * 3 + 2 * 3 + 3 * 12  # V, bias and a, P
    layer.remove_last()
    assert layer.dendrite_projection.shape == (0, 12) and layer.dendrite_parameter_count() == 0


def test_low_rank_is_for_linear_layers_and_excludes_dendrite_inputs() -> None:
    with pytest.raises(pf.ConfigError, match="dendrite_rank must be"):
        pf.PerforationConfig(dendrite_rank=0)
    with pytest.raises(pf.ConfigError, match="set one of them"):
        pf.PerforationConfig(dendrite_rank=4, dendrite_inputs=4)
    with pytest.raises(pf.ConfigError, match="Linear layers"):
        pf.perforate(nn.Sequential(nn.Conv2d(3, 4, 3)), pf.PerforationConfig(dendrite_rank=2))


def test_input_score_sums_the_absolute_weight_gradient_of_each_backward() -> None:
    torch.manual_seed(6)
    net = nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Conv1d(1, 2, 3),
                        nn.ConvTranspose1d(2, 4, 3, groups=2))
    config = pf.PerforationConfig(seed=0, dendrite_inputs=2,
                                  dendrite_input_selection="correlation")
    model = pf.perforate(net, config)
    layers = model.dendrite_layers()
    expected = {name: torch.zeros_like(layer.input_score) for name, layer in layers.items()}
    for _ in range(2):
        model.zero_grad()
        model(torch.randn(5, 6).unsqueeze(1)).square().sum().backward()
        for name, layer in layers.items():
            expected[name] += layer.geometry.neuron_weights(layer.geometry.weight.grad).abs()
    for name, layer in layers.items():
        assert layer.input_score.shape == (layer.num_neurons,
                                           *layer.geometry.neuron_weight_shape)
        torch.testing.assert_close(layer.input_score, expected[name])
        assert layer.input_score.abs().sum() > 0
    assert "input_score" not in "".join(model.state_dict())  # not state


def test_correlation_selection_gives_each_neuron_its_top_m_inputs() -> None:
    """Neuron n's error correlates with inputs n and n + 4 far more than with the others (its
    target is 3 x_n + 3 x_{n+4}, its weights start small): a set grown after a neuron phase
    sees those two inputs (the random selection almost never does)."""
    torch.manual_seed(7)
    chosen = {}
    for selection in ("correlation", "random"):
        net = nn.Sequential(nn.Linear(8, 4, bias=False))
        model = pf.perforate(net, pf.PerforationConfig(
            seed=0, dendrite_inputs=2, dendrite_input_selection=selection))
        x = torch.randn(64, 8)
        target = 3 * x[:, :4] + 3 * x[:, 4:]
        for _ in range(3):
            model.zero_grad()
            (model(x) - target).square().mean().backward()
        layer = model.dendrite_layers()["0"]
        model.grow()
        chosen[selection] = layer.dendrite_mask[0]
        if selection == "correlation":
            assert torch.equal(layer.input_score, torch.zeros(4, 8))  # starts again
    want = torch.zeros(4, 8)
    want[torch.arange(4), torch.arange(4)] = want[torch.arange(4), torch.arange(4) + 4] = 1.0
    assert torch.equal(chosen["correlation"], want)
    assert not torch.equal(chosen["random"], want)


def test_correlation_selection_needs_m_and_a_parameter_weight(tmp_path) -> None:
    with pytest.raises(pf.ConfigError, match="set dendrite_inputs"):
        pf.PerforationConfig(dendrite_input_selection="correlation")
    with pytest.raises(pf.ConfigError, match="dendrite_input_selection"):
        pf.PerforationConfig(dendrite_inputs=3, dendrite_input_selection="top")
    config = pf.PerforationConfig(dendrite_inputs=3, dendrite_input_selection="correlation")
    with pytest.raises(pf.ConfigError, match=r"LSTM's is not.*exclude_modules"):
        pf.perforate(nn.Sequential(nn.LSTM(4, 5)), config)
    attention = nn.MultiheadAttention(4, 2, batch_first=True)  # packed q, k, v: refused
    with pytest.raises(pf.ConfigError, match="correlation"):
        pf.perforate(nn.Sequential(attention), config)
    model = pf.perforate(nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2)), config)
    torch.save(model, tmp_path / "model.pt")  # the hook is not pickled with the weight
    again = torch.load(tmp_path / "model.pt", weights_only=False)
    assert again(torch.randn(2, 4)).shape == (2, 2)


def test_presets() -> None:
    paper = pf.PerforationConfig.paper()
    assert (paper.dendrite_phase, paper.train_dendrites, paper.cascade.objective) == (
        "cascade_correlation", False, "covariance")
    literal = pf.PerforationConfig.paper(literal=True)
    assert (literal.cascade.centering, literal.cascade.normalize_error) == ("running", False)
    default = pf.PerforationConfig()
    assert (default.dendrite_phase, default.dendrite_activation, default.dendrite_init,
            default.dendrite_weight_std, default.train_dendrites, default.perforated) == (
        "none", "sigmoid", "normal", 0.01, True, False)
    with pytest.raises(pf.ConfigError, match="least_squares"):
        pf.PerforationConfig(cascade=pf.CascadeCorrelation(output_init="least_squares"))
    with pytest.raises(pf.ConfigError, match="dendrite_inputs"):
        pf.PerforationConfig(dendrite_inputs=0)
    for name, bad in (("objective", "l2"), ("sign_source", "x")):
        with pytest.raises(pf.ConfigError, match=name):
            pf.CascadeCorrelation(**{name: bad})
    with pytest.raises(pf.ConfigError, match="dendrite_init"):
        pf.PerforationConfig(dendrite_init="xavier")
