"""Seeded index splits shared by the loaders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from torch.utils.data import Dataset


class DatasetSplits(NamedTuple):
    """Train / validation / test datasets (unpack as ``train, val, test = splits``)."""

    train: Dataset
    val: Dataset
    test: Dataset


def carve_validation(
    n: int, n_val: int, seed: int, n_train: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into (train, val) index arrays with a seeded permutation.

    The first `n_val` permuted indices are validation, the rest training; `n_train` keeps only
    the first `n_train` of the training part (a seeded subsample, nested across sizes).
    """
    if not 0 < n_val < n:
        raise ValueError(f"n_val must be in (0, {n}), got {n_val}")
    perm = np.random.default_rng(seed).permutation(n)
    val, train = perm[:n_val], perm[n_val:]
    if n_train is not None:
        if not 0 < n_train <= len(train):
            raise ValueError(f"n_train must be in [1, {len(train)}], got {n_train}")
        train = train[:n_train]
    return train, val


def random_split_indices(n: int, fractions: Sequence[float], seed: int) -> tuple[np.ndarray, ...]:
    """Split ``range(n)`` into consecutive chunks of a seeded permutation (MoleculeNet style).

    Chunk sizes are ``floor(f * n)`` for all but the last fraction, which takes the remainder.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or any(f < 0 for f in fractions):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions}")
    perm = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([int(f * n) for f in fractions[:-1]])
    return tuple(np.split(perm, cuts))
