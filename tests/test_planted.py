"""End to end on the planted task of algorithm.md (dendrite phase, step 3): a linear neuron
whose target has a non-linear part no linear function of the input explains."""

import torch
from torch import nn

import perforate as pf


def test_cascade_correlation_finds_the_planted_nonlinearity() -> None:
    g = torch.Generator().manual_seed(0)
    n, d = 2048, 8
    x = torch.randn(n, d, generator=g)
    w, v = torch.randn(d, generator=g), torch.randn(d, generator=g) / d**0.5
    y = (x @ w + 0.5 + 2 * torch.tanh(3 * (x @ v - 1))).unsqueeze(1)
    layer = nn.Linear(d, 1)
    with torch.no_grad():  # the neuron phase converged: least squares
        sol = torch.linalg.lstsq(torch.cat([x, torch.ones(n, 1)], 1), y).solution
        layer.weight.copy_(sol[:d].T)
        layer.bias.copy_(sol[d])
    net = nn.Sequential(layer)
    model = pf.perforate(net, pf.PerforationConfig.paper(seed=0))
    mse_before = nn.functional.mse_loss(model(x), y).item()

    model.begin_dendrite_phase()
    opt = model.candidate_optimizer()
    for _ in range(10):  # 10 epochs x 32 batches of 64 = 320 steps
        for i in torch.randperm(n, generator=g).split(64):
            opt.zero_grad()
            nn.functional.mse_loss(model(x[i]), y[i]).backward()
            opt.step()
        model.end_epoch()
    (stats,) = model.end_dendrite_phase().values()
    assert stats["max_corr"] > 0.5  # random candidates score ~0.05 here
    assert torch.equal(model(x), layer(x))  # a = 0: unchanged at the switch

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):  # the next neuron phase learns the output weight (and W, b)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    mse_after = nn.functional.mse_loss(model(x), y).item()
    assert mse_after < 0.2 * mse_before, (mse_before, mse_after)
