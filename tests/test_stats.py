"""Candidate statistics under mixed precision and loss scaling: float32+ sums, skipped overflows."""

import pytest
import torch
from torch import nn

import perforate as pf
from perforate.engine.geometry import ConvGeometry
from perforate.engine.stats import ObservedBatch

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


def _conv_batch(mask: torch.Tensor | None = None, bad: float | None = None,
                ) -> tuple[ConvGeometry, ObservedBatch, torch.Tensor, torch.Tensor]:
    """K=2 candidates of a conv layer with N=3 channels, 4 samples of 5x5 positions."""
    geo = ConvGeometry(nn.Conv2d(2, 3, 3))
    g = torch.Generator().manual_seed(0)
    c = torch.randn(4, 2, 3, 5, 5, generator=g)
    e = torch.randn(4, 3, 5, 5, generator=g)
    if bad is not None:
        e[2, 1, 3, 4] = bad
    return geo, ObservedBatch.of(geo, c, e, mask), c, e


@pytest.mark.parametrize("masked", [False, True])
def test_observed_batch_sums_are_the_plain_sums(masked: bool) -> None:
    mask = torch.rand(4, 5, 5, generator=torch.Generator().manual_seed(2)) > 0.3 if masked \
        else None
    geo, batch, c, e = _conv_batch(mask)
    keep = torch.ones(4, 5, 5, dtype=torch.bool) if mask is None else mask
    k = keep[:, None, None].float()  # [B, 1, 1, H, W] against c [B, K, N, H, W]
    count, cand, err = batch.sums
    assert bool(batch.finite) and float(count) == float(keep.sum())
    torch.testing.assert_close(cand[0], (c * k).sum((0, 3, 4)))
    torch.testing.assert_close(cand[1], (c * c * k).sum((0, 3, 4)))
    torch.testing.assert_close(cand[2], (c * e[:, None] * k).sum((0, 3, 4)))
    ke = keep[:, None].float()
    torch.testing.assert_close(err, torch.stack([(e * ke).sum((0, 2, 3)),
                                                 (e * e * ke).sum((0, 2, 3))]))
    # scale (e - e_bar), stacked like c, 0 at masked positions (one fused pass unmasked)
    scale, e_bar = torch.randn(2, 3), torch.randn(3)
    want = scale[None, :, :, None, None] * (e[:, None] - e_bar[None, None, :, None, None]) * k
    torch.testing.assert_close(batch.scaled_centred_error(geo, scale, e_bar), want)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), 3e19])
def test_one_non_finite_error_zeroes_the_sums_without_a_pass_of_its_own(bad: float) -> None:
    geo, batch, _, _ = _conv_batch(bad=bad)
    count, cand, err = batch.sums
    assert not bool(batch.finite)
    assert float(count) == 0.0
    assert torch.equal(cand, torch.zeros_like(cand)) and torch.equal(err, torch.zeros_like(err))
    # the candidate gradient keeps a non-finite error, so that a GradScaler sees the overflow
    grad = batch.scaled_centred_error(geo, torch.ones(2, 3), torch.zeros(3))
    assert bool(grad.isfinite().all()) == (bad == 3e19)


def test_a_non_finite_error_at_a_masked_position_is_ignored() -> None:
    mask = torch.ones(4, 5, 5, dtype=torch.bool)
    mask[2, 3, 4] = False
    _, batch, _, _ = _conv_batch(mask, bad=float("nan"))
    count, cand, _ = batch.sums
    assert bool(batch.finite) and float(count) == 99.0 and bool(cand.isfinite().all())


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("scale", [0.5, 1 / 3])
def test_an_error_scale_observes_the_scaled_errors_without_scaling_them(
        masked: bool, scale: float) -> None:
    """A distributed rank observes ``e / world``: folded into the sums and the gradient, with
    the same result as scaling e first (bitwise for a power of two)."""
    mask = torch.rand(4, 5, 5, generator=torch.Generator().manual_seed(2)) > 0.3 if masked \
        else None
    geo, _, c, e = _conv_batch(mask)
    folded = ObservedBatch.of(geo, c, e, mask, error_scale=scale)
    scaled = ObservedBatch.of(geo, c, e * scale, mask)
    assert torch.equal(folded.e, e if mask is None else torch.where(folded.keep, e, 0.0))
    check = torch.testing.assert_close if scale != 0.5 else (
        lambda a, b: torch.equal(a, b) or pytest.fail("not bitwise"))
    for a, b in zip(folded.sums, scaled.sums, strict=True):
        check(a, b)
    e_bar, weights = torch.randn(3), torch.randn(2, 3)
    check(folded.centred_error(geo.expand(e_bar)), scaled.centred_error(geo.expand(e_bar)))
    check(folded.scaled_centred_error(geo, weights, e_bar),
          scaled.scaled_centred_error(geo, weights, e_bar))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_one_non_finite_candidate_activation_zeroes_the_sums(bad: float) -> None:
    geo = ConvGeometry(nn.Conv2d(2, 3, 3))
    _, _, c, e = _conv_batch()
    c[1, 0, 2, 3, 3] = bad
    batch = ObservedBatch.of(geo, c, e, None)
    count, cand, err = batch.sums
    assert not bool(batch.finite) and float(count) == 0.0
    assert torch.equal(cand, torch.zeros_like(cand)) and torch.equal(err, torch.zeros_like(err))


def _dendrite_epoch(optimizer: str, kwargs: dict, nan_batch: bool | None):
    """A paper() dendrite epoch of 4 batches; the third is NaN (True), left out (None) or
    clean (False). Returns every candidate pool's statistics and weights, and the reports."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    model = pf.perforate(net, pf.PerforationConfig.paper(seed=0, cascade=pf.CascadeCorrelation(
        optimizer=optimizer, optimizer_kwargs=kwargs)))
    model.begin_dendrite_phase()
    opt = model.candidate_optimizer()
    g = torch.Generator().manual_seed(1)
    for i in range(4):
        x, t = torch.randn(8, 4, generator=g), torch.randn(8, 3, generator=g)
        if i == 2 and nan_batch is None:
            continue
        if i == 2 and nan_batch:
            x[3, 1] = float("nan")
        opt.zero_grad()
        ((model(x) - t) ** 2).mean().backward()
        opt.step()
    state = {n: [*layer.candidates.sums.buffers_to_reduce(), layer.candidates.seen,
                 layer.candidates.error_var, layer.candidates.mean_c, layer.candidates.weight,
                 layer.candidates.bias] for n, layer in model.dendrite_layers().items()}
    state = {n: [t.detach().clone() for t in ts] for n, ts in state.items()}
    return state, model.end_epoch(), opt


@pytest.mark.parametrize(("optimizer", "kwargs"), [
    ("adam", {}), ("sgd", {"momentum": 0.9}), ("rmsprop", {}), ("adam", {"foreach": True})])
def test_a_nan_batch_in_a_dendrite_epoch_is_left_out_of_statistics_and_steps(
        optimizer: str, kwargs: dict, caplog) -> None:
    """The candidates' statistics, weights and best correlations are those of the same epoch
    without that batch (fused optimizers skip the step on the device; others on the host)."""
    without, want, _ = _dendrite_epoch(optimizer, kwargs, None)
    with caplog.at_level("WARNING", logger="perforate.engine.candidates"):
        got, reports, opt = _dendrite_epoch(optimizer, kwargs, True)
    for name, tensors in without.items():
        for a, b in zip(got[name], tensors, strict=True):
            assert torch.equal(a, b), name
        assert torch.equal(reports[name].best_corr, want[name].best_corr)
        assert float(reports[name].best_corr.max()) > 0
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["layer '0'", "layer '2'"]
    assert all("1 batch(es)" in r.getMessage() for r in caplog.records)
    assert not hasattr(opt, "found_inf")  # the step hook cleans up after itself
    clean, _, _ = _dendrite_epoch(optimizer, kwargs, False)  # a clean batch does count
    assert float(clean["0"][0]) == float(without["0"][0]) + 8


def test_a_nan_batch_in_a_dendrite_phase_leaves_batch_norm_statistics_alone() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    model = pf.perforate(net, pf.PerforationConfig.paper(seed=0))
    net(torch.randn(16, 4))  # running statistics of their own
    before = [net[1].running_mean.clone(), net[1].running_var.clone()]
    model.begin_dendrite_phase()
    opt = model.candidate_optimizer()
    for bad in (False, True, False):
        x = torch.randn(8, 4)
        if bad:
            x[0, 0] = float("nan")
        opt.zero_grad()
        ((model(x) - torch.randn(8, 3)) ** 2).mean().backward()
        opt.step()
    model.end_dendrite_phase()
    assert torch.equal(net[1].running_mean, before[0])
    assert torch.equal(net[1].running_var, before[1])
