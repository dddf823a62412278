"""In-memory mini-batches without DataLoader's per-sample overhead."""

from __future__ import annotations

from collections.abc import Iterator

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


def subset(dataset: object, n: int | None, seed: int) -> tuple[Tensor, ...]:
    """The tensors of a TensorDataset, or a seeded random subset of `n` of its rows."""
    tensors = dataset.tensors  # type: ignore[attr-defined]
    if n is None or n >= len(tensors[0]):
        return tensors
    idx = torch.randperm(len(tensors[0]), generator=torch.Generator().manual_seed(seed))[:n]
    return tuple(t[idx] for t in tensors)
