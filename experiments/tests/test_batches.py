"""CollatedBatches: the batching shared by the PhysioNet and Tox21 loaders."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from perforate_experiments.data.batches import CollatedBatches


class Indices(CollatedBatches):
    calls = 0

    def collate(self, idx: Sequence[int]) -> list[int]:
        self.calls += 1
        return list(idx)


def test_unshuffled_batches_are_collated_once() -> None:
    b = Indices(7, 3)
    assert len(b) == 3
    first = list(b)
    assert first == [[0, 1, 2], [3, 4, 5], [6]] and b.calls == 3
    assert list(b) == first and b.calls == 3
    assert all(x is y for x, y in zip(b, first, strict=True))


def test_shuffled_batches_follow_the_global_generator() -> None:
    b = Indices(10, 4, shuffle=True)
    torch.manual_seed(0)
    order = torch.randperm(10).tolist()
    torch.manual_seed(0)
    batches = list(b)
    assert batches == [order[0:4], order[4:8], order[8:10]]
    assert sorted(i for batch in b for i in batch) == list(range(10))


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Indices(3, 0)
