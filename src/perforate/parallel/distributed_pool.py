"""`DistributedCandidatePool`: a layer's `CandidatePool` in a data-parallel run.

Everything a distributed run changes in a pool is here, so `CandidatePool` has no distributed
branch: rank 0's candidates on every rank, each batch's sums reduced across ranks at the end
of the user's backward (`observe_later`), the candidates' gradients of the global batch, and,
for a wide Linear layer, its inputs exchanged instead of its weight gradients summed
(`DistributedSync.linear`). `PerforatedModel.begin_dendrite_phase` builds this class instead of
`CandidatePool` in a distributed run (see ``docs/distributed.md``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..engine.candidates import CandidatePool
from ..engine.error_tap import ErrorTap
from ..engine.geometry import Activation, LinearGeometry
from ..engine.stats import ObservedBatch
from .distributed import DistributedSync


class DistributedCandidatePool(CandidatePool):
    """A `CandidatePool` whose statistics and gradients are those of the global batch: the
    same arguments as `CandidatePool`, and the run's `DistributedSync` as ``sync``."""

    def __init__(self, *args: Any, sync: DistributedSync, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sync = sync
        """Each batch's sums are summed across ranks through it (not state)."""
        self._gathers: bool | None = None  # see `_stacked`; not state
        self.pad_rows = 0
        """The most sample positions any rank has had in a batch this phase (`observe_later`
        sums them): what each rank sends to a `DistributedSync.linear`."""

    def take_rank0(self) -> None:
        """Take rank 0's candidates (parameters and buffers) on every rank."""
        self.sync.broadcast_([*self.parameters(), *self.buffers()])

    def params_to_sum(self) -> list[nn.Parameter]:
        """The parameters whose gradients the optimizer step must sum across ranks: those of
        dendrite_phase="task_loss", which the user's backward reaches through the layer output.
        Cascade-Correlation's are summed at the end of that backward (`observe_later`)."""
        return self._summed() if self.gd else []

    def _summed(self) -> list[nn.Parameter]:
        """The parameters whose gradients are summed across ranks: all but the weights and
        bias of a Linear layer's candidates that exchange inputs instead (decided at the
        phase's first batch, see `_stacked`)."""
        done = {id(self.weight), id(self.bias)} if self._gathers else set()
        return [p for p in self.parameters() if id(p) not in done]

    def _stacked(self, x: Tensor, weight: Tensor, g_: Activation = None) -> Tensor:
        sync = self.sync
        if self.geometry.plain_linear and self._gathers is None:
            # Once per phase, the same on every rank: whether exchanging this layer's inputs
            # and output gradients moves less than summing its candidates' weight gradients.
            rows = sync.max_rows(x.numel() // x.shape[-1]) if x.dim() > 1 else 1
            self._gathers = sync.gathers(rows, x.shape[-1], self.bias.numel())
        if not self._gathers:
            return super()._stacked(x, weight, g_)

        def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:  # global-batch grads
            return sync.linear(x, weight, bias, rows=lambda: self.pad_rows or None)

        return LinearGeometry.stacked_with(linear, x, weight, self.bias, g_)

    def _tap(self, z: Tensor, c: Tensor) -> Tensor:
        # The candidates' backward waits for the end of the user's backward (`observe_later`),
        # so ErrorTap gets no edge to their graph (the backward would otherwise run it with no
        # gradient and free it). A detached leaf stands in, so that the tap's output needs a
        # gradient even where z does not (a zero probe).
        return ErrorTap.apply(z, c.detach().requires_grad_(), self, (c,))

    def _error_scale(self) -> float:
        return 1.0 / self.sync.world  # each rank's mean loss is world x its global share

    def _reduce(self, tensors: list[Tensor]) -> None:
        self.sync.sum_(tensors)

    def observe(self, c: Tensor, e: Tensor, mask: Tensor | None = None) -> Tensor | None:
        raise RuntimeError("a distributed pool observes with observe_later")

    @torch.no_grad()
    def observe_later(self, c: Tensor, e: Tensor, mask: Tensor | None = None) -> None:
        """`observe` from inside the user's backward: this rank's sums now; their sum across
        ranks at the end of the backward, in one collective with every other layer's
        (`DistributedSync.sum_after_backward`), which then backpropagates the candidates'
        gradient from ``c`` and sums the gradients it gives them, in one more collective for
        all layers. The ranks then meet twice per backward, instead of a few times per layer,
        and the candidates hold the global batch's gradients once the backward returns."""
        batch = self._observed(c, e, mask)
        extra = self._rank_extra(batch, e)

        def then() -> tuple[Tensor, Tensor] | None:
            grad = self.through_activation(self._learn_global(batch, extra), c)
            return None if grad is None else (c, grad)

        self.sync.sum_after_backward([*batch.sums, extra], then,
                                     [] if self.gd else self._summed())

    def _rank_extra(self, batch: ObservedBatch, e: Tensor) -> Tensor:
        """What a distributed batch sums besides the statistics: each rank's rows (at its
        rank's index), and whether this rank saw a non-finite error (last)."""
        dtype = batch.sums[0].dtype
        extra = torch.zeros(self.sync.world + 1, dtype=dtype, device=e.device)
        extra[self.sync.rank] = e.numel() // self.geometry.num_neurons
        extra[-1] = ~batch.finite
        return extra

    @torch.no_grad()
    def _learn_global(self, batch: ObservedBatch, extra: Tensor) -> Tensor | None:
        """`_learn` from the global batch's sums. A batch in which any rank saw a
        non-finite error (a loss scaler's overflow) is skipped on every rank and every
        rank's candidate gradient made NaN, so that a GradScaler skips the step on all of
        them alike (one rank stepping alone would leave the others' candidates behind)."""
        overflow = extra[-1] > 0
        sums = batch.sums
        for t in sums:
            t.mul_(~overflow)
        self.skipped += overflow
        if self._gathers:  # a host read, only where the rows are sent
            self.pad_rows = max(self.pad_rows, int(extra[:-1].max().item()))
        return self._learn(batch, *sums, factor=torch.where(overflow, torch.nan, 1.0))
