"""The dendrite phase: frozen network, eq. 3.4 gradients, statistics, variants."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import perforate as pf
from conftest import SmallCNN, grow


def test_dendrite_phase_freezes_network_and_trains_candidates() -> None:
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 5), nn.ReLU(), nn.Linear(5, 3))
    model = pf.perforate(net, pf.PerforationConfig.paper(seed=0))
    model.train()
    data = [(torch.randn(8, 2, 8, 8), torch.randint(0, 3, (8,))) for _ in range(3)]
    # One neuron-phase set first, so installed dendrites and output weights are in play too.
    grow(model, data, nn.functional.cross_entropy)
    frozen = copy.deepcopy(model.net)  # the reference: the same network, outside the phase
    state = {k: v.clone() for k, v in model.net.state_dict().items()}
    user_opt = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=0.1)

    model.begin_dendrite_phase()
    pools = {n: m.candidates for n, m in model.dendrite_layers().items()}
    cand_before = {n: p.weight.detach().clone() for n, p in pools.items()}
    opt = model.candidate_optimizer()
    for x, y in data * 2:
        out = model(x)
        assert torch.equal(out, frozen(x))  # bitwise the frozen network (batch-stat BN)
        opt.zero_grad()
        user_opt.zero_grad()
        nn.functional.cross_entropy(out, y).backward()
        opt.step()
        user_opt.step()  # a user optimizer stepping by mistake changes nothing
    for k, v in model.net.state_dict().items():
        if ".candidates." not in k and "num_batches_tracked" not in k:
            assert torch.equal(v, state[k]), k  # incl. BN running stats and output weights
    for n, p in pools.items():
        assert not torch.equal(p.weight.detach(), cand_before[n]), n
    assert all(not p.requires_grad for n, p in model.net.named_parameters()
               if ".candidates." not in n)
    model.end_dendrite_phase()
    frozen_sets = ("dendrite_weight", "dendrite_bias", "cascade_weight")
    for n, p in model.named_parameters():  # installed sets stay frozen (train_dendrites=False)
        assert p.requires_grad != n.endswith(frozen_sets), n
    assert model.net[1].momentum == 0.1
    assert model.net[1].num_batches_tracked == state["1.num_batches_tracked"]


def _hand_setup(layer: nn.Module, x: torch.Tensor, target: torch.Tensor):
    model = pf.perforate(nn.Sequential(layer), pf.PerforationConfig.paper(candidates=3, seed=4))
    model.begin_dendrite_phase()
    out = model(x)
    ((out - target) ** 2).sum().backward()
    pool = model.dendrite_layers()["0"].candidates
    delta = 2 * (out.detach() - target)  # dLoss/dz
    return pool, delta


def _expected_scale(c: torch.Tensor, delta_c: torch.Tensor, sum_dims: tuple[int, ...]):
    """-sigma / s with batch centering; s = population std of the batch error."""
    s = delta_c.square().mean(dim=sum_dims).sqrt()  # delta_c: centred error, broadcastable
    big_s = ((c - c.mean(dim=sum_dims, keepdim=True)) * delta_c).sum(dim=sum_dims) / s
    return -torch.sign(big_s) / s


def test_candidate_gradient_is_eq_3_4_linear() -> None:
    x, target = torch.randn(32, 5), torch.randn(32, 3)
    pool, delta = _hand_setup(nn.Linear(5, 3), x, target)
    u, b = pool.weight.detach(), pool.bias.detach()  # [K, N, in], [K, N]
    pre = torch.einsum("pi,kni->pkn", x, u) + b  # [P, K, N]
    c = torch.tanh(pre)
    dc = delta - delta.mean(0)  # [P, N]
    scale = _expected_scale(c, dc.unsqueeze(1), (0,))  # [K, N]
    g_prime = 1 - c**2
    # eq. 3.4: dS/dw = sigma * sum_p (Delta - mean) * g'(in) * input / s ; loss = -|S|
    grad_w = scale.unsqueeze(-1) * torch.einsum("pn,pkn,pi->kni", dc, g_prime, x)
    grad_b = scale * torch.einsum("pn,pkn->kn", dc, g_prime)
    torch.testing.assert_close(pool.weight.grad, grad_w, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(pool.bias.grad, grad_b, rtol=1e-4, atol=1e-6)
    # The same gradient from autograd of -sum|S| with Delta, its mean and s detached.
    u_ = u.clone().requires_grad_()
    c_ = torch.tanh(torch.einsum("pi,kni->pkn", x, u_) + b)
    s = dc.square().mean(0).sqrt()
    big_s = ((c_ - c_.mean(0)) * dc.unsqueeze(1)).sum(0) / s
    (-big_s.abs().sum()).backward()
    torch.testing.assert_close(pool.weight.grad, u_.grad, rtol=1e-4, atol=1e-6)


def test_candidate_gradient_is_eq_3_4_conv2d() -> None:
    x, target = torch.randn(4, 2, 6, 6), torch.randn(4, 3, 6, 6)
    pool, delta = _hand_setup(nn.Conv2d(2, 3, 3, padding=1), x, target)
    u, b = pool.weight.detach(), pool.bias.detach()  # [K, N, Cin, 3, 3]
    k_, n_ = b.shape
    cols = nn.functional.unfold(x, 3, padding=1)  # [B, Cin*9, HW]: each position's inputs
    pre = torch.einsum("bip,kni->bknp", cols, u.reshape(k_, n_, -1)) + b[None, :, :, None]
    c = torch.tanh(pre)  # [B, K, N, HW]
    d = delta.flatten(2)  # [B, N, HW]
    dc = d - d.mean(dim=(0, 2), keepdim=True)
    scale = _expected_scale(c, dc.unsqueeze(1), (0, 3))
    grad_w = scale[..., None] * torch.einsum("bnp,bknp,bip->kni", dc, 1 - c**2, cols)
    torch.testing.assert_close(pool.weight.grad, grad_w.reshape(u.shape), rtol=1e-4, atol=1e-6)
    grad_b = scale * torch.einsum("bnp,bknp->kn", dc, 1 - c**2)
    torch.testing.assert_close(pool.bias.grad, grad_b, rtol=1e-4, atol=1e-6)


def test_epoch_correlation_is_exact_pearson_over_all_batches() -> None:
    model = pf.perforate(nn.Sequential(nn.Linear(4, 2)), pf.PerforationConfig.paper(candidates=2))
    model.begin_dendrite_phase()
    pool = model.dendrite_layers()["0"].candidates
    cs, es = [], []
    for _ in range(3):
        x, t = torch.randn(20, 4), torch.randn(20, 2)
        out = model(x)
        cs.append(pool(x, []).detach())
        es.append(2 * (out.detach() - t))
        ((out - t) ** 2).sum().backward()  # no optimizer step: candidates stay fixed
    corr = model.candidate_correlations()["0"]
    c, e = torch.cat(cs).numpy(), torch.cat(es).numpy()
    for k in range(2):
        for n in range(2):
            expected = abs(np.corrcoef(c[:, k, n], e[:, n])[0, 1])
            assert corr[k, n].item() == pytest.approx(expected, rel=1e-5)


def test_constant_candidate_never_wins() -> None:
    model = pf.perforate(nn.Sequential(nn.Linear(3, 1)), pf.PerforationConfig.paper(candidates=2))
    model.begin_dendrite_phase()
    pool = model.dendrite_layers()["0"].candidates
    with torch.no_grad():
        pool.weight[0].zero_()
        pool.bias[0].fill_(30.0)  # tanh saturated: constant 1.0
    x, t = torch.randn(50, 3), torch.randn(50, 1)
    ((model(x) - t) ** 2).sum().backward()
    corr = model.candidate_correlations()["0"]
    assert corr[0, 0] == 0 and corr[1, 0] > 0
    model.end_dendrite_phase()
    layer = model.dendrite_layers()["0"]
    assert torch.equal(layer.dendrite_weight[0, 0], pool.weight[1, 0].detach())


def test_running_centering_uses_previous_batches_means() -> None:
    cfg = pf.PerforationConfig.paper(cascade=pf.CascadeCorrelation(
        candidates=1, centering="running", normalize_error=False, running_momentum=0.5))
    model = pf.perforate(nn.Sequential(nn.Linear(3, 1)), cfg)
    model.begin_dendrite_phase()
    pool = model.dendrite_layers()["0"].candidates
    batches = [(torch.randn(10, 3), torch.randn(10, 1)) for _ in range(2)]
    c_means, e_means = [], []
    for i, (x, t) in enumerate(batches):
        pool.weight.grad = None
        out = model(x)
        c = pool(x, []).detach()[:, 0, 0]
        e = 2 * (out.detach() - t)[:, 0]
        ((out - t) ** 2).sum().backward()
        c_means.append(c.mean())
        e_means.append(e.mean())
        if i == 1:  # the second batch is centred with the first batch's means (EMA start)
            s = ((c - c_means[0]) * (e - e_means[0])).sum()
            expected = -torch.sign(s) * ((e - e_means[0]) * (1 - c**2)) @ x
            torch.testing.assert_close(pool.weight.grad[0, 0], expected, rtol=1e-4, atol=1e-6)
    ema = 0.5 * e_means[0] + 0.5 * e_means[1]
    torch.testing.assert_close(pool.mean_e.float(), ema.reshape(1), rtol=1e-5, atol=1e-7)


def test_gd_variant_trains_candidates_on_the_loss() -> None:
    cfg = pf.PerforationConfig.paper(candidates=2, dendrite_phase="task_loss", seed=0)
    model = pf.perforate(SmallCNN(), cfg)
    x, y = torch.randn(6, 2, 8, 8), torch.randint(0, 3, (6,))
    before = model(x).detach()
    model.begin_dendrite_phase()
    out = model(x)
    assert not torch.equal(out, before)  # candidates are connected through output weights
    nn.functional.cross_entropy(out, y).backward()
    pool = model.dendrite_layers()["fc2"].candidates
    assert pool.output.grad is not None and pool.output.grad.abs().sum() > 0
    model.candidate_optimizer().step()
    model.end_epoch()
    model.end_dendrite_phase()
    layer = model.dendrite_layers()["fc2"]
    assert layer.output_weight.abs().sum() > 0  # the trained output weight is installed


def test_non_finite_errors_raise_at_epoch_end() -> None:
    model = pf.perforate(nn.Sequential(nn.Linear(3, 2)), pf.PerforationConfig.paper())
    model.begin_dendrite_phase()
    out = model(torch.randn(4, 3))
    (out * torch.tensor([float("inf"), 1.0])).sum().backward()
    with pytest.raises(pf.NonFiniteError, match="'0'"):
        model.end_epoch()


def test_seed_makes_candidates_reproducible() -> None:
    a = pf.perforate(nn.Sequential(nn.Linear(3, 2)), pf.PerforationConfig.paper(seed=11))
    b = pf.perforate(nn.Sequential(nn.Linear(3, 2)), pf.PerforationConfig.paper(seed=11))
    a.begin_dendrite_phase()
    b.begin_dendrite_phase()
    wa = a.dendrite_layers()["0"].candidates.weight
    wb = b.dendrite_layers()["0"].candidates.weight
    assert torch.equal(wa, wb)
    # DEFAULT init: weights ~ N(0, 1/fan_in), bias ~ N(0, 1)
    big = pf.perforate(nn.Sequential(nn.Linear(400, 300)), pf.PerforationConfig.paper(seed=1))
    big.begin_dendrite_phase()
    pool = big.dendrite_layers()["0"].candidates
    assert pool.weight.std().item() == pytest.approx(400**-0.5, rel=0.02)
    assert pool.bias.std().item() == pytest.approx(1.0, rel=0.05)
    assert torch.equal(pool.cascade, torch.zeros(4, 0, 300))


def test_inplace_activation_after_a_wrapped_layer_gives_the_same_gradients() -> None:
    grads = []
    for inplace in (False, True):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=inplace), nn.Linear(6, 2))
        model = pf.perforate(net, pf.PerforationConfig.paper(seed=0))
        model.begin_dendrite_phase()
        x, y = torch.randn(9, 4), torch.randint(0, 2, (9,))
        nn.functional.cross_entropy(model(x), y).backward()
        grads.append([m.candidates.weight.grad.clone()
                      for m in model.dendrite_layers().values()])
    for a, b in zip(*grads, strict=True):
        assert a.abs().sum() > 0
        assert torch.equal(a, b)


def _error_scale_run(normalize: bool, batches):
    """One wrapped Linear(4, 3); loss = sum(z * g), so each neuron's error is exactly g."""
    torch.manual_seed(0)
    model = pf.perforate(nn.Sequential(nn.Linear(4, 3)),
                         pf.PerforationConfig.paper(seed=0,
                                                    cascade=pf.CascadeCorrelation(normalize_error=normalize)))
    model.begin_dendrite_phase()
    pool = model.net[0].candidates
    out = []
    for x, g in batches:
        pool.zero_grad()
        (model(x) * g).sum().backward()
        out.append((pool.error_var.clone(), pool.weight.grad.clone(), pool.bias.grad.clone()))
    return out


def test_running_error_scale_after_the_first_and_second_batch() -> None:
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(16, 4, generator=gen), torch.randn(16, 3, generator=gen) * scale)
               for scale in (1.0, 3.0)]
    normalized = _error_scale_run(True, batches)
    plain = _error_scale_run(False, batches)
    m = pf.PerforationConfig.paper().cascade.running_momentum
    var1 = batches[0][1].var(0, unbiased=False)
    var2 = batches[1][1].var(0, unbiased=False)
    expected = [var1, m * var1 + (1 - m) * var2]  # the first batch initialises the EMA
    for (error_var, w_grad, b_grad), (_, w_plain, b_plain), want in zip(
            normalized, plain, expected, strict=True):
        torch.testing.assert_close(error_var, want, rtol=1e-5, atol=1e-7)
        # the candidate gradient is the unnormalised one times rsqrt(error_var), per neuron
        inv_s = want.rsqrt()  # [N]
        torch.testing.assert_close(w_grad, w_plain * inv_s[None, :, None], rtol=1e-4,
                                   atol=1e-7)
        torch.testing.assert_close(b_grad, b_plain * inv_s[None, :], rtol=1e-4, atol=1e-7)
    assert not torch.allclose(expected[1], var2) and not torch.allclose(expected[1], var1)


def test_the_distributed_lines_of_a_pool_live_in_its_distributed_subclass() -> None:
    """`CandidatePool` has no distributed branch (no ``sync`` check): a distributed run builds
    a `DistributedCandidatePool` (`PerforatedModel.begin_dendrite_phase`), which has them."""
    import ast
    import inspect
    import textwrap

    from perforate.engine.candidates import CandidatePool
    from perforate.parallel.distributed_pool import DistributedCandidatePool

    tree = ast.parse(textwrap.dedent(inspect.getsource(CandidatePool)))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
        {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not names & {"sync", "distribute", "_gathers", "pad_rows"}
    for name in ("observe_later", "params_to_sum", "take_rank0"):
        assert not hasattr(CandidatePool, name), name
        assert callable(getattr(DistributedCandidatePool, name)), name
    assert issubclass(DistributedCandidatePool, CandidatePool)
    with pytest.raises(RuntimeError, match="observe_later"):
        DistributedCandidatePool.observe(None, torch.zeros(1), torch.zeros(1))  # type: ignore[arg-type]


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu", "identity"])
@pytest.mark.parametrize("layer", ["linear", "conv", "grouped_conv"])
def test_candidates_activated_without_a_graph_get_autograds_gradients(activation: str,
                                                                       layer: str) -> None:
    """The pool applies g in place without a graph and g' in the error tap's backward: the
    candidates' gradients equal those of autograd through g, with and without installed
    sets (the cascade), and the stacked output keeps a view's backward (no zero tensor of
    K layer outputs in the backward)."""
    def net() -> nn.Module:
        torch.manual_seed(0)
        first = {"linear": nn.Linear(6, 8), "conv": nn.Conv2d(2, 8, 3, padding=1),
                 "grouped_conv": nn.Conv2d(4, 8, 3, padding=1, groups=2)}[layer]
        return nn.Sequential(first, nn.Tanh(), nn.Flatten(), nn.LazyLinear(3))

    x = torch.randn(5, 6) if layer == "linear" else torch.randn(5, 2 if layer == "conv" else 4,
                                                                  4, 4)
    target = torch.randn(5, 3)
    grads = []
    for fused in (True, False):
        n = net()
        n(x)  # materialise the lazy layer
        model = pf.perforate(n, pf.PerforationConfig.paper(
            candidates=3, seed=0, dendrite_activation=activation, target_modules=["0"]))
        wrapped = model.dendrite_layers()["0"]
        wrapped.resize(1)  # one installed set: the candidates get its output as a cascade input
        with torch.no_grad():
            for p in (wrapped.dendrite_weight, wrapped.dendrite_bias, wrapped.output_weight):
                p.normal_(0, 0.5)
        model.begin_dendrite_phase()
        pool = wrapped.candidates
        with torch.no_grad():
            pool.cascade.normal_()
        assert pool._g_backward_ is not None
        if not fused:  # autograd through the activation module
            pool._g_ = pool._g_backward_ = None
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            nn.functional.mse_loss(model(x), target).backward()
        grads.append([p.grad.clone() for p in (pool.weight, pool.bias, pool.cascade)])
        if fused:
            c = pool(x, [])
            assert "AsStrided" not in type(c.grad_fn).__name__
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
