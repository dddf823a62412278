"""Weight snapshots: the best weights of the current neuron cycle and of the best cycle.

Copies of ``model.state_dict()``, refreshed in place when the layout is unchanged (no
allocation per new best), restored at each cycle end and at the final revert.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

State = dict[str, Tensor]


def copy_state(dst: State | None, src: Mapping[str, Tensor]) -> State:
    """Copy `src` into `dst`'s tensors when the layout matches, else clone it."""
    if dst is not None and dst.keys() == src.keys() and all(
            d.shape == s.shape and d.dtype == s.dtype and d.device == s.device
            for d, s in zip(dst.values(), src.values(), strict=True)):
        with torch.no_grad():
            for key, value in src.items():
                dst[key].copy_(value)
        return dst
    return {k: v.detach().clone() for k, v in src.items()}


def _to_device(state: Mapping[str, Tensor] | None, device: torch.device) -> State | None:
    return None if state is None else {k: v.to(device) for k, v in state.items()}


class WeightSnapshots:
    """``cycle``: the current cycle's best weights; ``best``: the best completed cycle's."""

    def __init__(self) -> None:
        self.cycle: State | None = None
        self.best: State | None = None

    def keep_cycle_best(self, model: nn.Module) -> None:
        """The epoch just finished set the cycle's best score: copy its weights."""
        self.cycle = copy_state(self.cycle, model.state_dict())

    def restore_cycle_best(self, model: nn.Module) -> None:
        if self.cycle is None:  # pragma: no cover - a cycle always has a best
            raise RuntimeError("no snapshot of the cycle's best weights")
        model.load_state_dict(self.cycle)

    def promote_cycle(self) -> None:
        """The cycle just ended improved on the best one: its weights become the best."""
        self.best, self.cycle = self.cycle, None

    def restore_best(self, model: nn.Module) -> None:
        if self.best is None:  # pragma: no cover - the final revert follows a completed cycle
            raise RuntimeError("no snapshot of the best cycle's weights")
        model.load_state_dict(self.best)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's ``cycle_snapshot`` and ``best_snapshot`` entries (references)."""
        return {"cycle_snapshot": self.cycle, "best_snapshot": self.best}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device) -> None:
        self.cycle = _to_device(state["cycle_snapshot"], device)
        self.best = _to_device(state["best_snapshot"], device)
