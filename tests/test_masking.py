"""Sample masks: padded positions are left out of the candidate statistics and gradients."""

import pytest
import torch
from torch import nn

import perforate as pf

IGNORE = -100


def _padded_batch(channels_last: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three sequences of lengths 7, 3 and 5, padded to 7 with random (not zero) inputs."""
    lengths = torch.tensor([7, 3, 5])
    mask = torch.arange(7) < lengths[:, None]  # [B, T]
    x = torch.randn(3, 7, 5, dtype=torch.float64) * 3 + 1  # padding, too, moves the sums
    y = torch.randint(0, 3, (3, 7)).masked_fill(~mask, IGNORE)
    return (x if channels_last else x.transpose(1, 2)), y, mask


def _run(net: nn.Module, x: torch.Tensor, y: torch.Tensor,
         mask: torch.Tensor | None) -> pf.PerforatedModel:
    """One dendrite-phase batch; the loss is a mean over the non-padded positions."""
    model = pf.perforate(net, pf.PerforationConfig.paper(candidates=3, seed=0))
    model.begin_dendrite_phase()
    if mask is None:
        out = model(x)
    else:
        with model.sample_mask(mask):
            out = model(x)
    if out.shape[-1] == 3:  # Linear: classes last
        out, y = out.reshape(-1, 3), y.reshape(-1)
    nn.functional.cross_entropy(out, y, ignore_index=IGNORE).backward()  # after the block
    return model


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_masked_padded_batch_equals_the_unpadded_batch(kind: str) -> None:
    linear = kind == "linear"
    x, y, mask = _padded_batch(linear)

    def net() -> nn.Module:
        torch.manual_seed(1)
        if linear:
            net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
        else:
            net = nn.Sequential(nn.Conv1d(5, 8, 1), nn.Tanh(), nn.Conv1d(8, 3, 1))
        return net.double()  # float64: the comparison sees the masking, not rounding

    if linear:  # the real positions only, as one flat batch
        x_real, y_real = x[mask], y[mask]
    else:  # kernel size 1: positions are independent, so one sequence of the real positions
        x_real = x.transpose(1, 2)[mask].T.unsqueeze(0).contiguous()
        y_real = y[mask].unsqueeze(0)
    ref = _run(net(), x_real, y_real, None)
    masked = _run(net(), x, y, mask)
    unmasked = _run(net(), x, y, None)  # padding ignored by the loss, but not masked
    corr_ref = ref.candidate_correlations()
    for name, corr in masked.candidate_correlations().items():
        assert corr_ref[name].max() > 0.1
        torch.testing.assert_close(corr, corr_ref[name], rtol=0, atol=1e-6)
        assert (unmasked.candidate_correlations()[name] - corr_ref[name]).abs().max() > 1e-2
        pool, pool_ref = masked.dendrite_layers()[name].candidates, \
            ref.dendrite_layers()[name].candidates
        assert float(pool.sums.count) == int(mask.sum())
        torch.testing.assert_close(pool.weight.grad, pool_ref.weight.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pool.bias.grad, pool_ref.bias.grad, rtol=1e-5, atol=1e-6)


def test_a_mask_that_fits_no_layer_raises() -> None:
    model = pf.perforate(nn.Sequential(nn.Linear(5, 3)), pf.PerforationConfig.paper(candidates=2))
    model.begin_dendrite_phase()
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"), \
            model.sample_mask(torch.ones(4, 2, dtype=torch.bool)):
        model(torch.randn(4, 6, 5))
    with pytest.raises(TypeError, match="bool"), model.sample_mask(torch.ones(4, 6)):
        pass


def test_mask_applies_only_to_layers_with_its_positions() -> None:
    """A [B, T] mask reaches the per-token layer, not the layer after pooling over T."""
    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok, self.head = nn.Linear(5, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.tok(x)).mean(1))

    model = pf.perforate(Pooled(), pf.PerforationConfig.paper(candidates=2))
    model.begin_dendrite_phase()
    mask = torch.tensor([[True, True, False], [True, False, False]])
    with model.sample_mask(mask):
        out = model(torch.randn(2, 3, 5))
    out.sum().backward()
    layers = model.dendrite_layers()
    assert float(layers["tok"].candidates.sums.count) == 3
    assert float(layers["head"].candidates.sums.count) == 2


def test_a_mask_is_seen_only_inside_its_block_and_thread() -> None:
    """`mask_for` answers from the block of the calling thread; the count of open blocks it
    checks first (what torch.compile guards on) is back to 0 after a block, even one that
    raised."""
    import threading

    from perforate.engine import masking

    mask = torch.ones(2, 3, dtype=torch.bool)
    seen: list[object] = []
    with masking.sample_mask(mask):
        assert masking._open == 1
        assert masking.mask_for((2, 3)) is not None
        other = threading.Thread(target=lambda: seen.append(masking.mask_for((2, 3))))
        other.start()
        other.join()
    assert seen == [None]  # another thread's layers do not see this block's mask
    assert masking._open == 0 and masking.mask_for((2, 3)) is None
    with pytest.raises(KeyError), masking.sample_mask(mask):
        raise KeyError("inside")
    assert masking._open == 0
