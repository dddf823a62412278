"""`ErrorTap`: how a candidate pool learns inside the user's own ``loss.backward()``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .masking import mask_for


class ErrorTap(torch.autograd.Function):
    """Identity on the layer output whose backward sees the neuron error dLoss/dz'.

    The backward passes the error on unchanged and returns the candidates' Cascade-Correlation
    gradient, so the user's single ``loss.backward()`` trains the candidates. In a distributed
    run (``held``: ``(candidates' activation,)``, in a tuple so that autograd sees no edge to
    it; ``c`` then a detached stand-in) it returns no gradient to them and hands the error to
    `DistributedCandidatePool.observe_later` instead.
    """

    @staticmethod
    def forward(ctx, z: Tensor, c: Tensor, pool: Any,  # type: ignore[override]
                held: tuple[Tensor, ...]) -> Tensor:
        ctx.pool = pool
        ctx.mask = mask_for(pool.geometry.position_shape(z))  # read at forward time
        ctx.held = held
        if not held:
            ctx.save_for_backward(c)
        # z is a fresh output that only this layer holds: declaring it "dirty" returns it
        # without a copy and without making it a view, so that in-place ops downstream
        # (ReLU(inplace=True)) still work. Its values are not changed.
        ctx.mark_dirty(z)
        return z

    @staticmethod
    def backward(ctx, grad: Tensor  # type: ignore[override]
                 ) -> tuple[Tensor, Tensor | None, None, None]:
        if ctx.held:
            (held,), ctx.held = ctx.held, ()
            ctx.pool.observe_later(held, grad, ctx.mask)  # a DistributedCandidatePool
            return grad, None, None, None
        (c,) = ctx.saved_tensors
        pool = ctx.pool
        return grad, pool.through_activation(pool.observe(c, grad, ctx.mask), c), None, None
