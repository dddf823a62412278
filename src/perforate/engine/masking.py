"""Sample masks: leave padded positions out of the dendrite-phase statistics.

Padding (or any position whose error should not count) would otherwise be a sample of every
candidate correlation. Inside ``with model.sample_mask(mask):`` each wrapped layer whose sample
positions have ``mask``'s shape (``[B, T]`` for ``[B, T, C]`` Linear outputs, ``[B, H, W]`` for
``[B, C, H, W]`` conv outputs) drops the positions where ``mask`` is False from its statistics
and from its candidates' gradient. The mask is read at forward time, so the backward may run
after the block. Layers with other position shapes (e.g. after pooling) are not affected.

Errors that are exactly 0 (``ignore_index`` of ``cross_entropy``) are not masked automatically:
a zero error is also a legitimate sample, so masks are always explicit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class _MaskState:
    mask: Tensor
    observed: bool = False
    """A dendrite-phase layer ran a forward inside the block."""
    matched: bool = False
    """At least one of them had positions shaped like the mask."""


_current: ContextVar[_MaskState | None] = ContextVar("perforate_sample_mask", default=None)
#: How many `sample_mask` blocks are open, in any thread or task. `mask_for` reads the
#: ContextVar only while one is: ``torch.compile`` cannot trace a ContextVar (a graph break per
#: layer), but guards on this int.
_open = 0
_open_lock = threading.Lock()


@contextmanager
def sample_mask(mask: Tensor) -> Iterator[None]:
    """Count only the positions where `mask` is True (or nonzero) in the candidate statistics
    of the forward passes run inside the block.

    Raises ValueError on exit if dendrite-phase layers ran but none had positions shaped like
    `mask` (a mask that matches nothing is a bug, not a no-op).
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"sample_mask() needs a tensor, got {type(mask).__name__}")
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"sample_mask() needs a bool (or integer 0/1) tensor, got {mask.dtype}")
    global _open
    state = _MaskState(mask.detach().to(torch.bool))
    token = _current.set(state)
    with _open_lock:
        _open += 1
    try:
        yield
    finally:
        _current.reset(token)
        with _open_lock:
            _open -= 1
    if state.observed and not state.matched:
        raise ValueError(f"sample_mask(): no dendrite-phase layer has sample positions of shape "
                         f"{tuple(mask.shape)} (the mask must have the shape of a layer output "
                         "without its neuron axis, e.g. [B, T] for [B, T, C] Linear outputs)")


def mask_for(positions: tuple[int, ...]) -> Tensor | None:
    """The active mask if it fits a layer whose sample positions have shape `positions`."""
    if not _open:
        return None
    state = _current.get()
    if state is None:
        return None
    state.observed = True
    if tuple(state.mask.shape) != tuple(positions):
        return None
    state.matched = True
    return state.mask
