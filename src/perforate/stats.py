"""Exact correlation statistics as plain sums, so they add across batches and across ranks."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (exact sums over an epoch), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


class CorrelationSums(nn.Module):
    """Running sums of candidate activations c ``[K, N]`` and neuron errors e ``[N]``.

    Holds ``count``, ``Σc``, ``Σc²``, ``Σe``, ``Σe²`` and ``Σce`` over every sample position seen
    since the last `reset`. Sums (not means) so that a distributed run can ``all_reduce`` them.
    """

    def __init__(self, k: int, n: int, device: torch.device) -> None:
        super().__init__()
        dt = accumulator_dtype(device)
        self.register_buffer("count", torch.zeros((), dtype=dt, device=device))
        self.register_buffer("sum_c", torch.zeros(k, n, dtype=dt, device=device))
        self.register_buffer("sum_c2", torch.zeros(k, n, dtype=dt, device=device))
        self.register_buffer("sum_e", torch.zeros(n, dtype=dt, device=device))
        self.register_buffer("sum_e2", torch.zeros(n, dtype=dt, device=device))
        self.register_buffer("sum_ce", torch.zeros(k, n, dtype=dt, device=device))

    def buffers_to_reduce(self) -> list[Tensor]:
        """The tensors a distributed run sums across ranks before reading correlations."""
        return [self.count, self.sum_c, self.sum_c2, self.sum_e, self.sum_e2, self.sum_ce]

    @torch.no_grad()
    def add(self, count: int, sc: Tensor, sc2: Tensor, se: Tensor, se2: Tensor,
            sce: Tensor) -> None:
        """Add one batch's sums (already reduced over its sample positions)."""
        dt = self.sum_c.dtype
        self.count += count
        self.sum_c += sc.to(dt)
        self.sum_c2 += sc2.to(dt)
        self.sum_e += se.to(dt)
        self.sum_e2 += se2.to(dt)
        self.sum_ce += sce.to(dt)

    @torch.no_grad()
    def reset(self) -> None:
        for t in self.buffers_to_reduce():
            t.zero_()

    def is_finite(self) -> bool:
        """False if any non-finite value was ever added (one host sync)."""
        return bool(torch.stack([t.isfinite().all() for t in self.buffers_to_reduce()]).all())

    @torch.no_grad()
    def pearson(self, min_variance: float) -> Tensor:
        """Signed Pearson correlation ``[K, N]`` of each candidate with its neuron's error.

        A candidate whose variance is below ``min_variance`` (saturated or constant), or a
        neuron whose error never varied, gets correlation 0: it can never win an install.
        """
        n = self.count.clamp_min(1)
        mc, me = self.sum_c / n, self.sum_e / n
        cov = self.sum_ce / n - mc * me
        var_c = (self.sum_c2 / n - mc * mc).clamp_min(0)
        var_e = (self.sum_e2 / n - me * me).clamp_min(0)
        denom = (var_c * var_e).sqrt()
        ok = (var_c >= min_variance) & (var_e > 0) & (denom > 0)
        return torch.where(ok, cov / torch.where(ok, denom, torch.ones_like(denom)),
                           torch.zeros_like(cov))
