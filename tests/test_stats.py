"""Candidate statistics under mixed precision and loss scaling: float32+ sums, skipped overflows."""

import pytest
import torch
from torch import nn

import perforate as pf

pytestmark = pytest.mark.filterwarnings("ignore:.*GradScaler.*:UserWarning")


def _net(representable_in: torch.dtype) -> nn.Module:
    """A small MLP whose weights are exact in `representable_in`, so that a low-precision copy
    computes the same function up to the rounding of its activations."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(p.to(representable_in).float())
    return net


def _data(representable_in: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(128, 6, generator=g).to(representable_in).float(),
             torch.randint(0, 3, (128,), generator=g)) for _ in range(6)]


def _dendrite_phase(net: nn.Module, representable_in: torch.dtype) -> pf.PerforatedModel:
    model = pf.perforate(net, pf.PerforationConfig.paper(candidates=4, seed=0))
    model.begin_dendrite_phase()
    with torch.no_grad():
        for layer in model.dendrite_layers().values():
            # Biases up to 1.2: activations with means far from 0 (sums in the activation
            # dtype lose the covariance to cancellation), but no saturated candidate, whose
            # variance would be below the resolution of bfloat16 activations.
            layer.candidates.bias.clamp_(-1.2, 1.2)
            for p in layer.candidates.parameters():
                p.copy_(p.to(representable_in).to(p.dtype))
    return model


def _fp32_correlations(representable_in: torch.dtype) -> dict[str, torch.Tensor]:
    model = _dendrite_phase(_net(representable_in), representable_in)
    for x, y in _data(representable_in):
        nn.functional.cross_entropy(model(x), y).backward()
    return model.candidate_correlations()


def _assert_close_correlations(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    assert got.keys() == ref.keys()
    for name in ref:
        assert ref[name].max() > 0.1  # real correlations, not zeros from a failed phase
        assert (got[name] - ref[name]).abs().max() <= 1e-3, name


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
def test_float16_autocast_with_grad_scaler_matches_float32(device: str) -> None:
    ref = _fp32_correlations(torch.float16)
    model = _dendrite_phase(_net(torch.float16).to(device), torch.float16)
    scaler = torch.amp.GradScaler(device)
    opt = model.candidate_optimizer()
    for group in opt.param_groups:
        group["lr"] = 0.0  # the candidates stay those of the float32 reference
    for x, y in _data(torch.float16):
        opt.zero_grad()
        with torch.autocast(device, dtype=torch.float16):
            out = model(x.to(device))
        assert out.dtype == torch.float16
        scaler.scale(nn.functional.cross_entropy(out.float(), y.to(device))).backward()
        scaler.step(opt)
        scaler.update()
    assert scaler.get_scale() == 65536.0  # no overflow was seen: every batch counted
    grads = [layer.candidates.weight.grad for layer in model.dendrite_layers().values()]
    assert all(g is not None and bool(g.isfinite().all()) and g.abs().sum() > 0 for g in grads)
    _assert_close_correlations({k: v.cpu() for k, v in model.candidate_correlations().items()},
                               ref)
    model.end_epoch()  # no NonFiniteError


def test_bfloat16_model_matches_float32() -> None:
    ref = _fp32_correlations(torch.bfloat16)
    model = _dendrite_phase(_net(torch.bfloat16).to(torch.bfloat16), torch.bfloat16)
    for x, y in _data(torch.bfloat16):
        nn.functional.cross_entropy(model(x.bfloat16()).float(), y).backward()
    pool = model.dendrite_layers()["0"].candidates
    assert pool.weight.grad.dtype == torch.bfloat16
    _assert_close_correlations(model.candidate_correlations(), ref)


def test_batch_with_a_non_finite_error_is_skipped() -> None:
    model = pf.perforate(nn.Sequential(nn.Linear(3, 2)), pf.PerforationConfig.paper(seed=0))
    model.begin_dendrite_phase()
    pool = model.dendrite_layers()["0"].candidates
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    opt = model.candidate_optimizer()
    x, t = torch.randn(5, 3), torch.randn(5, 2)
    scaler.scale(((model(x) - t) ** 2).sum()).backward()
    scaler.step(opt)
    scaler.update()
    sums = [b.clone() for b in pool.sums.buffers_to_reduce()]
    running = [pool.seen.clone(), pool.error_var.clone(), pool.mean_e.clone()]
    weights = pool.weight.detach().clone()

    opt.zero_grad()
    out = model(torch.randn(5, 3))
    scaler.scale((out * torch.tensor([float("inf"), 1.0])).sum()).backward()
    assert not bool(pool.weight.grad.isfinite().all())  # GradScaler sees the overflow ...
    scaler.step(opt)  # ... and skips the step
    scaler.update()
    assert scaler.get_scale() == 2.0
    assert torch.equal(pool.weight, weights)
    for before, after in zip(sums, pool.sums.buffers_to_reduce(), strict=True):
        assert torch.equal(before, after)
    for before, after in zip(running, [pool.seen, pool.error_var, pool.mean_e], strict=True):
        assert torch.equal(before, after)
    assert int(pool.skipped) == 1
    model.end_epoch()  # no NonFiniteError: one finite batch was counted
    assert int(pool.skipped) == 0 and int(pool.epochs) == 1


def test_an_epoch_of_only_non_finite_batches_raises() -> None:
    model = pf.perforate(nn.Sequential(nn.Linear(3, 2)), pf.PerforationConfig.paper())
    model.begin_dendrite_phase()
    out = model(torch.randn(4, 3))
    (out * torch.tensor([float("nan"), 1.0])).sum().backward()
    with pytest.raises(pf.NonFiniteError, match="every batch"):
        model.end_dendrite_phase()
