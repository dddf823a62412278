"""Fashion-MNIST: 50k train / 10k validation (carved from the 60k train set) / 10k test."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch.utils.data import TensorDataset

from perforate.demo.data import (  # the library's demo reads the same files
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    default_fashion_mnist_dir,
    read_fashion_mnist_arrays,
    to_normalized_tensor,
)

from .splits import DatasetSplits, carve_validation

logger = logging.getLogger(__name__)

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES", "FASHION_MNIST_FILES",
    "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "N_VAL", "default_fashion_mnist_dir",
    "load_fashion_mnist", "read_fashion_mnist_arrays", "to_normalized_tensor",
]

N_VAL = 10_000


def load_fashion_mnist(
    root: str | os.PathLike[str] | None = None, *, n_train: int | None = None, seed: int = 0
) -> DatasetSplits:
    """Load Fashion-MNIST as ``(train, val, test)`` TensorDatasets of (image, label).

    Images are float32 [N, 1, 28, 28], ``(pixel / 255 - 0.2860) / 0.3530``; labels int64. The
    validation set is 10k images carved from the 60k training set with a permutation seeded by
    `seed`; `n_train` keeps a seeded subsample of the remaining 50k. `root` defaults to
    `default_fashion_mnist_dir()`.
    """
    arrays = read_fashion_mnist_arrays(root)
    train_idx, val_idx = carve_validation(len(arrays["train_labels"]), N_VAL, seed, n_train)
    train_images, train_labels = arrays["train_images"], arrays["train_labels"].astype(np.int64)

    def subset(idx: np.ndarray) -> TensorDataset:
        x = to_normalized_tensor(train_images[idx], FASHION_MNIST_MEAN, FASHION_MNIST_STD)
        return TensorDataset(x, torch.from_numpy(train_labels[idx]))

    test = TensorDataset(
        to_normalized_tensor(arrays["test_images"], FASHION_MNIST_MEAN, FASHION_MNIST_STD),
        torch.from_numpy(arrays["test_labels"].astype(np.int64)),
    )
    logger.info(
        "Fashion-MNIST: %d train / %d val / %d test (seed %d)",
        len(train_idx), len(val_idx), len(test), seed,
    )  # fmt: skip
    return DatasetSplits(subset(train_idx), subset(val_idx), test)
