"""Random number generator states for an exact resume: torch's, numpy's and Python's global
generators, CUDA's, and the generators the user's DataLoaders shuffle with."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor


def rng_state(generators: Iterable[torch.Generator]) -> dict[str, Any]:
    """The global states and those of `generators` (``weights_only``-loadable containers)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(np_state[0]), torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _to_lists(random.getstate()),
        "generators": [g.get_state() for g in generators],
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], generators: list[torch.Generator]) -> list[Tensor]:
    """Restore global RNGs and the given generators; return states left for generators not
    attached yet."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = list(state.get("generators", []))
    for g, s in zip(generators, saved, strict=False):
        g.set_state(s)
    return saved[len(generators):]


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value


class TrackedGenerators:
    """Generators saved with the global ones (e.g. DataLoaders'); states restored before a
    generator was attached wait for it, in attachment order."""

    def __init__(self) -> None:
        self.generators: list[torch.Generator] = []
        self._pending: list[Tensor] = []

    def add(self, *generators: torch.Generator | None) -> None:
        new = [g for g in generators
               if g is not None and all(g is not h for h in self.generators)]
        self.generators.extend(new)
        for g in new:
            if self._pending:
                g.set_state(self._pending.pop(0))

    def state(self) -> dict[str, Any]:
        return rng_state(self.generators)

    def restore(self, state: Mapping[str, Any]) -> None:
        self._pending = set_rng_state(state, self.generators)
