"""In-memory mini-batches without DataLoader's per-sample overhead."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor


class TensorBatches:
    """Iterate ``(x, y)`` mini-batches of in-memory tensors.

    Shuffled with torch's global generator (so a seeded run, and a run resumed from a
    checkpoint that restored the RNG, sees the same order); `len()` is the number of batches.
    """

    def __init__(self, *tensors: Tensor, batch_size: int = 64, shuffle: bool = False) -> None:
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError("TensorBatches needs tensors of equal length")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle

    def __len__(self) -> int:
        return -(-len(self.tensors[0]) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        n = len(self.tensors[0])
        order = torch.randperm(n) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                yield tuple(t[start:start + self.batch_size] for t in self.tensors)
            else:
                idx = order[start:start + self.batch_size]
                yield tuple(t[idx] for t in self.tensors)


class CollatedBatches:
    """Mini-batches of `n` items built by a subclass's ``collate(indices)``.

    Shuffled with torch's global generator (as `TensorBatches`); unshuffled batches are
    collated once and reused, since validation and test sets are read every epoch.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self._cached: list[Any] | None = None

    def collate(self, idx: Sequence[int]) -> Any:
        """The batch of the items at `idx`."""
        raise NotImplementedError

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        if not self.shuffle:
            if self._cached is None:
                self._cached = [self.collate(range(s, min(s + self.batch_size, self.n)))
                                for s in range(0, self.n, self.batch_size)]
            yield from self._cached
            return
        order = torch.randperm(self.n).tolist()
        for s in range(0, self.n, self.batch_size):
            yield self.collate(order[s:s + self.batch_size])


def subset(dataset: object, n: int | None, seed: int) -> tuple[Tensor, ...]:
    """The tensors of a TensorDataset, or a seeded random subset of `n` of its rows."""
    tensors = dataset.tensors  # type: ignore[attr-defined]
    if n is None or n >= len(tensors[0]):
        return tensors
    idx = torch.randperm(len(tensors[0]), generator=torch.Generator().manual_seed(seed))[:n]
    return tuple(t[idx] for t in tensors)
