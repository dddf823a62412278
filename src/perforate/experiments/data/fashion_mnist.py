"""Fashion-MNIST: 50k train / 10k validation (carved from the 60k train set) / 10k test."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .idx import find_idx, read_idx
from .paths import ENV_VAR
from .splits import DatasetSplits, carve_validation

logger = logging.getLogger(__name__)

FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
N_VAL = 10_000


def default_fashion_mnist_dir() -> Path:
    """``$PERFORATE_DATA/fashion-mnist`` if it exists, else the Debian package's directory."""
    env = os.environ.get(ENV_VAR)
    if env and (Path(env).expanduser() / "fashion-mnist").is_dir():
        return Path(env).expanduser() / "fashion-mnist"
    return DEBIAN_FASHION_MNIST_DIR


def _missing_message(root: Path) -> str:
    names = ", ".join(f"{stem}[.gz]" for stem in FASHION_MNIST_FILES.values())
    return (
        f"Fashion-MNIST files not found in {root}. Install them with "
        f"`apt-get install -y dataset-fashion-mnist` (puts them in {DEBIAN_FASHION_MNIST_DIR}), "
        f"or pass root= a directory holding {names}."
    )


def read_fashion_mnist_arrays(root: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The four raw uint8/int arrays keyed like `FASHION_MNIST_FILES`."""
    directory = Path(root).expanduser() if root is not None else default_fashion_mnist_dir()
    out: dict[str, np.ndarray] = {}
    for key, stem in FASHION_MNIST_FILES.items():
        path = find_idx(directory, stem)
        if path is None:
            raise FileNotFoundError(_missing_message(directory))
        out[key] = read_idx(path)
    for split in ("train", "test"):
        images, labels = out[f"{split}_images"], out[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise ValueError(
                f"Fashion-MNIST {split}: unexpected shapes {images.shape} / {labels.shape}"
            )
    return out


def to_normalized_tensor(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28], scaled to [0, 1] then standardised."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)
    return x.sub_(mean).div_(std).unsqueeze(1)


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
