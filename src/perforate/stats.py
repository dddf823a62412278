"""Exact correlation statistics as plain sums, so they add across batches and across ranks."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (exact sums over an epoch), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


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
