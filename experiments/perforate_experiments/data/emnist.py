"""EMNIST-Balanced (47 classes), from the official IDX files or ``emnist-balanced.mat``.

EMNIST stores every image transposed (column-major) in both distributions; the loader turns
them upright. No package registry carries EMNIST: download ``gzip.zip`` or ``matlab.zip`` from
https://www.nist.gov/itl/products-and-services/emnist-dataset and put the files where the
FileNotFoundError message says.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from perforate.demo.idx import find_idx, read_idx

from .. import require
from .fashion_mnist import to_normalized_tensor
from .paths import default_data_dir
from .splits import DatasetSplits, carve_validation

logger = logging.getLogger(__name__)

EMNIST_BALANCED_CLASSES = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt"
NUM_EMNIST_BALANCED_CLASSES = len(EMNIST_BALANCED_CLASSES)  # 47
EMNIST_IDX_FILES = {
    "train_images": "emnist-balanced-train-images-idx3-ubyte",
    "train_labels": "emnist-balanced-train-labels-idx1-ubyte",
    "test_images": "emnist-balanced-test-images-idx3-ubyte",
    "test_labels": "emnist-balanced-test-labels-idx1-ubyte",
}
EMNIST_MAT_FILE = "emnist-balanced.mat"
# Sub-directories created by unpacking the official gzip.zip / matlab.zip.
_SUBDIRS = ("", "gzip", "matlab", "emnist")


def _search_dirs(root: Path) -> list[Path]:
    return [root / sub if sub else root for sub in _SUBDIRS]


def _missing_message(root: Path) -> str:
    idx = ", ".join(f"{stem}[.gz]" for stem in EMNIST_IDX_FILES.values())
    return (
        f"EMNIST-Balanced not found under {root} (also looked in its gzip/, matlab/ and emnist/ "
        f"sub-directories). Put either the four IDX files {idx} or the single file "
        f"{EMNIST_MAT_FILE} in {root}. Both come from "
        "https://www.nist.gov/itl/products-and-services/emnist-dataset (gzip.zip / matlab.zip)."
    )


def _read_idx_set(directory: Path) -> dict[str, np.ndarray] | None:
    paths = {key: find_idx(directory, stem) for key, stem in EMNIST_IDX_FILES.items()}
    if any(p is None for p in paths.values()):
        return None
    out = {key: read_idx(p) for key, p in paths.items() if p is not None}
    for split in ("train", "test"):
        out[f"{split}_images"] = out[f"{split}_images"].transpose(0, 2, 1)
        out[f"{split}_labels"] = out[f"{split}_labels"].reshape(-1)
    return out


def _mat_get(struct: object, name: str) -> object:
    """Field `name` of a loadmat struct, whether or not it came with [0, 0] wrapping."""
    obj = struct
    while isinstance(obj, np.ndarray) and obj.dtype.names is None and obj.size == 1:
        obj = obj.reshape(-1)[0]
    if isinstance(obj, np.ndarray) and obj.dtype.names is not None:
        value = obj[name]
        return value.reshape(-1)[0] if value.size == 1 else value
    raise ValueError(f"{EMNIST_MAT_FILE}: expected a struct with field {name!r}")


def _read_mat(path: Path) -> dict[str, np.ndarray]:
    sio = require("scipy.io", "Reading emnist-balanced.mat")
    mat = sio.loadmat(str(path))  # type: ignore[attr-defined]
    if "dataset" not in mat:
        raise ValueError(f"{path}: no 'dataset' variable (is this the official EMNIST .mat?)")
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        part = _mat_get(mat["dataset"], split)
        images = np.asarray(_mat_get(part, "images"))
        labels = np.asarray(_mat_get(part, "labels")).reshape(-1)
        if images.ndim != 2 or images.shape[1] != 784 or len(images) != len(labels):
            raise ValueError(f"{path}: {split} images {images.shape}, labels {labels.shape}")
        # Rows are MATLAB column-major 28x28 images: C-order reshape gives the transpose.
        out[f"{split}_images"] = images.reshape(-1, 28, 28).transpose(0, 2, 1).astype(np.uint8)
        out[f"{split}_labels"] = labels
    return out


def read_emnist_balanced_arrays(
    root: str | os.PathLike[str] | None = None,
) -> dict[str, np.ndarray]:
    """Raw upright uint8 images [N, 28, 28] and labels (0..46) for train and test."""
    base = Path(root).expanduser() if root is not None else default_data_dir() / "emnist"
    for directory in _search_dirs(base):
        arrays = _read_idx_set(directory)
        if arrays is not None:
            logger.info("EMNIST-Balanced: reading IDX files from %s", directory)
            break
        if (directory / EMNIST_MAT_FILE).is_file():
            logger.info("EMNIST-Balanced: reading %s", directory / EMNIST_MAT_FILE)
            arrays = _read_mat(directory / EMNIST_MAT_FILE)
            break
    else:
        raise FileNotFoundError(_missing_message(base))
    for split in ("train", "test"):
        labels = arrays[f"{split}_labels"]
        if labels.size and (labels.min() < 0 or labels.max() >= NUM_EMNIST_BALANCED_CLASSES):
            raise ValueError(f"EMNIST-Balanced {split} labels outside 0..46")
    return arrays


def load_emnist_balanced(
    root: str | os.PathLike[str] | None = None,
    *,
    n_train: int | None = None,
    n_val: int | None = None,
    seed: int = 0,
    mean: float | None = None,
    std: float | None = None,
) -> DatasetSplits:
    """Load EMNIST-Balanced as ``(train, val, test)`` TensorDatasets of (image, label).

    Same convention as `load_fashion_mnist`: the validation set is carved from the official
    training set with a permutation seeded by `seed` (default size: a sixth of it, 18,800 of
    112,800, the size of the test set); `n_train` subsamples the rest. Images are float32
    [N, 1, 28, 28] standardised with `mean`/`std`, by default those of the training part's
    pixels in [0, 1]. `root` defaults to ``default_data_dir()/emnist``.
    """
    arrays = read_emnist_balanced_arrays(root)
    images, labels = arrays["train_images"], arrays["train_labels"].astype(np.int64)
    n_val = len(labels) // 6 if n_val is None else n_val
    train_idx, val_idx = carve_validation(len(labels), n_val, seed, n_train)
    if mean is None or std is None:
        pixels = images[train_idx].astype(np.float64) / 255.0
        mean = float(pixels.mean()) if mean is None else mean
        std = float(pixels.std()) if std is None else std
        if std <= 0:
            raise ValueError("EMNIST-Balanced training images are constant; cannot normalise")

    def subset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(to_normalized_tensor(x, mean, std), torch.from_numpy(y))

    logger.info(
        "EMNIST-Balanced: %d train / %d val / %d test, mean %.4f std %.4f",
        len(train_idx), len(val_idx), len(arrays["test_labels"]), mean, std,
    )  # fmt: skip
    return DatasetSplits(
        subset(images[train_idx], labels[train_idx]),
        subset(images[val_idx], labels[val_idx]),
        subset(arrays["test_images"], arrays["test_labels"].astype(np.int64)),
    )
