"""Exact correlation statistics as plain sums, so they add across batches and across ranks."""

from __future__ import annotations

from collections.abc import Callable
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
    - Sample masks (`perforate.engine.masking`): a masked position is 0 in c and e and not counted.
    - A loss-scaler overflow or a NaN batch: a batch with a non-finite error or candidate
      activation at a kept position adds nothing (`sums` are 0 and `finite` False). Decided
      on the device, without a host sync, and without a pass of its own over e or c: see `of`.
    """

    c: Tensor
    """Stacked candidate activations, statistics dtype, masked positions 0."""
    e: Tensor
    """Errors: statistics dtype, masked positions 0, non-finite values kept."""
    keep: Tensor | None
    """The mask, broadcast against e (None: every position counts)."""
    dtype: torch.dtype
    """dtype of the candidate activations as received (that of their gradient)."""
    finite: Tensor
    """0-dim bool: the batch's kept errors and candidate activations are all finite."""
    sums: list[Tensor]
    """The batch's ``[count, cand, err]`` sums (`CorrelationSums.add`), 0 if not `finite`."""
    error_scale: float = 1.0
    """The errors observed are ``error_scale * e`` (folded into the sums and the gradient
    rather than applied in a pass over e)."""

    @classmethod
    def of(cls, geo: Geometry, c: Tensor, e: Tensor, mask: Tensor | None,
           scratch: Callable[[Tensor], Tensor | None] = lambda t: None,
           error_scale: float = 1.0) -> ObservedBatch:
        """The batch of errors ``error_scale * e``, with its sums. `scratch(c)` may give an
        output for the ``c * e`` product (shaped like c, the statistics dtype), or None for a
        fresh one.

        A non-finite error at a kept position makes its neuron's sum of squared errors
        non-finite (inf² is inf, NaN stays NaN), so finiteness is read from the ``[2, N]``
        error sums rather than from a pass over e; a square overflowing the statistics dtype
        (|e| > 1.8e19 in float32) counts as non-finite too. Likewise a non-finite candidate
        activation reaches its ``Σc²``.
        """
        dt = statistics_dtype(c.dtype, e.dtype)
        c_dtype = c.dtype
        c, e = c.to(dt), e.to(dt)
        keep = None
        positions: Tensor | int = e.numel() // geo.num_neurons
        if mask is not None:
            mask = mask.to(e.device, non_blocking=True)
            keep = geo.expand_positions(mask)
            c = torch.where(geo.unsqueeze_set(keep), c, 0.0)
            e = torch.where(keep, e, 0.0)
            positions = mask.sum(dtype=dt)
        sc, sc2 = geo.sums_stacked(c)
        sce = geo.sum_stacked(torch.mul(c, geo.unsqueeze_set(e), out=scratch(c)))
        err = torch.stack([geo.sum_out(e), geo.sum_out(e * e)])
        if error_scale != 1.0:  # scalars: no host tensor copied to the device per batch
            sce = sce * error_scale
            err = torch.stack([err[0] * error_scale, err[1] * error_scale ** 2])
        cand = torch.stack([sc, sc2, sce])
        finite = torch.stack([err.isfinite().all(), cand.isfinite().all()]).all()
        sums = [(finite * positions).to(dt),  # a device op: no host copy
                torch.where(finite, cand, 0.0),
                torch.where(finite, err, 0.0)]
        return cls(c=c, e=e, keep=keep, dtype=c_dtype, finite=finite, sums=sums,
                   error_scale=error_scale)

    def centred_error(self, e_bar: Tensor) -> Tensor:
        """``error_scale e - e_bar`` (e_bar broadcast against e) at kept positions, 0 at
        masked ones."""
        centred = torch.add(-e_bar.to(self.e.dtype), self.e, alpha=self.error_scale)
        return centred if self.keep is None else torch.where(self.keep, centred, 0.0)

    def scaled_centred_error(self, geo: Geometry, scale: Tensor, e_bar: Tensor, *,
                             out: Tensor | None = None) -> Tensor:
        """``scale (e - e_bar)`` for per-set scales ``[S, N]``, stacked, 0 at masked positions:
        one fused pass ``scale e - scale e_bar`` when nothing is masked; into `out` (stacked,
        of e's dtype) if given."""
        if out is not None and out.dtype != self.e.dtype:
            out = None
        if self.keep is not None:
            return torch.mul(geo.expand(scale.to(self.e.dtype)), geo.unsqueeze_set(
                self.centred_error(geo.expand(e_bar))), out=out)
        scale = scale.to(self.e.dtype)
        return torch.addcmul(geo.expand(-scale * e_bar.to(scale.dtype)),
                             geo.expand(scale * self.error_scale), geo.unsqueeze_set(self.e),
                             out=out)


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
