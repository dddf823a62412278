"""Exact correlation statistics as plain sums, so they add across batches and across ranks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .geometry import Geometry


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (exact sums over an epoch), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def statistics_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32 for half-precision activations (float16, bfloat16); float64 stays float64."""
    out = torch.float32
    for dt in dtypes:
        out = torch.promote_types(out, dt)
    return out


@dataclass
class ObservedBatch:
    """One batch of candidate activations c and neuron errors e, ready to be summed.

    - Mixed precision: c and e are converted to float32 (float64 stays) *before* any product or
      sum, so float16 sums don't overflow and bfloat16 products don't round.
    - Sample masks (`perforate.masking`): a masked position is 0 in c and e and not counted.
    - A loss-scaler overflow: a batch with a non-finite error at a kept position adds nothing
      (``e`` is all 0, ``count`` 0, ``finite`` False: multiply c-only sums by it). Decided on
      the device, without a host sync.
    """

    c: Tensor
    """Stacked candidate activations, statistics dtype, masked positions 0."""
    e: Tensor
    """Errors for the sums: statistics dtype, masked positions 0, all 0 if not finite."""
    e_raw: Tensor
    """Errors for the candidate gradient: like `e` but non-finite values kept."""
    count: Tensor
    """Sample positions this batch adds to the statistics (0-dim)."""
    finite: Tensor
    """0-dim bool: the batch's kept errors are all finite."""
    keep: Tensor | None
    """The mask, broadcast against e (None: every position counts)."""
    dtype: torch.dtype
    """dtype of the candidate activations as received (that of their gradient)."""

    @classmethod
    def of(cls, geo: Geometry, c: Tensor, e: Tensor, mask: Tensor | None) -> ObservedBatch:
        dt = statistics_dtype(c.dtype, e.dtype)
        c_dtype = c.dtype
        c, e = c.to(dt), e.to(dt)
        keep = None
        count: Tensor | int = e.numel() // geo.num_neurons
        if mask is not None:
            mask = mask.to(e.device, non_blocking=True)
            keep = geo.expand_positions(mask)
            c = torch.where(geo.unsqueeze_set(keep), c, 0.0)
            e = torch.where(keep, e, 0.0)
            count = mask.sum(dtype=dt)
        finite = e.isfinite().all()
        return cls(c=c, e=torch.where(finite, e, 0.0), e_raw=e, count=(finite * count).to(dt),
                   finite=finite, keep=keep, dtype=c_dtype)

    def centred_error(self, e_bar: Tensor) -> Tensor:
        """``e - e_bar`` (e_bar broadcast against e) at kept positions, 0 at masked ones."""
        centred = self.e_raw - e_bar.to(self.e_raw.dtype)
        return centred if self.keep is None else torch.where(self.keep, centred, 0.0)


class CorrelationSums(nn.Module):
    """Running sums of candidate activations c ``[K, N]`` and neuron errors e ``[N]``.

    ``count``; ``cand = [Σc, Σc², Σce]`` ``[3, K, N]``; ``err = [Σe, Σe²]`` ``[2, N]``, over every
    sample position seen since the last `reset`. Sums (not means) so that a distributed run
    can ``all_reduce`` them before reading correlations.
    """

    def __init__(self, k: int, n: int, device: torch.device) -> None:
        super().__init__()
        dt = accumulator_dtype(device)
        self.register_buffer("count", torch.zeros((), dtype=dt, device=device))
        self.register_buffer("cand", torch.zeros(3, k, n, dtype=dt, device=device))
        self.register_buffer("err", torch.zeros(2, n, dtype=dt, device=device))

    def buffers_to_reduce(self) -> list[Tensor]:
        """The tensors a distributed run sums across ranks before reading correlations."""
        return [self.count, self.cand, self.err]

    @torch.no_grad()
    def add(self, count: int, cand: Tensor, err: Tensor) -> None:
        """Add one batch's sums: ``cand = [Σc, Σc², Σce]``, ``err = [Σe, Σe²]``."""
        self.count += count
        self.cand += cand.to(self.cand.dtype)
        self.err += err.to(self.err.dtype)

    @torch.no_grad()
    def reset(self) -> None:
        for t in self.buffers_to_reduce():
            t.zero_()

    @torch.no_grad()
    def moments(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(cov(c, e) [K, N], var(c) [K, N], var(e) [N])`` over the positions seen."""
        n = self.count.clamp_min(1)
        mc, mc2, mce = self.cand / n
        me, me2 = self.err / n
        return mce - mc * me, (mc2 - mc * mc).clamp_min(0), (me2 - me * me).clamp_min(0)

    @torch.no_grad()
    def pearson(self, min_variance: float) -> Tensor:
        """Signed Pearson correlation ``[K, N]`` of each candidate with its neuron's error.

        A candidate whose variance is below ``min_variance`` (saturated or constant), or a
        neuron whose error never varied, gets correlation 0: it can never win an install.
        """
        cov, var_c, var_e = self.moments()
        denom = (var_c * var_e).sqrt()
        ok = (var_c >= min_variance) & (var_e > 0) & (denom > 0)
        return torch.where(ok, cov / torch.where(ok, denom, torch.ones_like(denom)),
                           torch.zeros_like(cov))
