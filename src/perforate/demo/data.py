"""The demo's data: scikit-learn's digits, and Fashion-MNIST read from its IDX files.

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` (or a directory holding
the four IDX files); the research harness reads its full splits with the same functions.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .._extras import require
from .idx import find_idx, read_idx

SPLIT_SEED = 0
#: ``$PERFORATE_DATA/fashion-mnist`` is searched before the Debian package's directory.
DATA_ENV_VAR = "PERFORATE_DATA"
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


class DatasetMissing(FileNotFoundError):
    """A demo data set is not installed (the message says how to install it)."""


def default_fashion_mnist_dir() -> Path:
    """``$PERFORATE_DATA/fashion-mnist`` if it exists, else the Debian package's directory."""
    env = os.environ.get(DATA_ENV_VAR)
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


def load_digits_split() -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Digits scaled to [0, 1], split 1,000 / 360 / 437 by a fixed permutation."""
    datasets = require("sklearn.datasets", "demo", "the digits demo")
    x, y = datasets.load_digits(return_X_y=True)
    perm = np.random.RandomState(SPLIT_SEED).permutation(len(x))
    xt = torch.tensor(x[perm] / 16.0, dtype=torch.float32)
    yt = torch.tensor(y[perm], dtype=torch.long)
    return (TensorDataset(xt[:1000], yt[:1000]), TensorDataset(xt[1000:1360], yt[1000:1360]),
            TensorDataset(xt[1360:], yt[1360:]))


def load_fashion_mnist(root: str | Path | None = None, *, n_train: int = 10_000,
                       n_val: int = 2_000, n_test: int = 5_000
                       ) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """A fixed subset of Fashion-MNIST: train and val from the training set, test from t10k
    (`root` defaults to ``$PERFORATE_DATA/fashion-mnist`` or
    /usr/share/datasets/fashion-mnist)."""
    root = Path(root) if root is not None else default_fashion_mnist_dir()
    try:
        arrays = read_fashion_mnist_arrays(root)
    except FileNotFoundError:
        raise DatasetMissing(
            f"Fashion-MNIST not found in {root}; install it with "
            "`apt-get install -y dataset-fashion-mnist` (files in /usr/share/datasets/"
            "fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz), or pass "
            "--data-dir DIR") from None
    rng = np.random.RandomState(SPLIT_SEED)
    perm = rng.permutation(len(arrays["train_labels"]))[: n_train + n_val]
    test = rng.permutation(len(arrays["test_labels"]))[:n_test]

    def tensors(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
        x = to_normalized_tensor(images, FASHION_MNIST_MEAN, FASHION_MNIST_STD)
        return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))

    xtr, ytr = arrays["train_images"], arrays["train_labels"]
    return (tensors(xtr[perm[:n_train]], ytr[perm[:n_train]]),
            tensors(xtr[perm[n_train:]], ytr[perm[n_train:]]),
            tensors(arrays["test_images"][test], arrays["test_labels"][test]))
