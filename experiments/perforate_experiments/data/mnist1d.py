"""MNIST-1D (Greydanus 2020): ten 1-D digit templates, padded, sheared, translated and noised
into length-40 signals by the dataset's own generator (the ``mnist1d`` package), with as many
samples as asked. Here: 70k samples split 50k train / 10k validation / 10k test, so a narrow
network is limited by its capacity, not by the data."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .splits import DatasetSplits

logger = logging.getLogger(__name__)

N_TRAIN, N_VAL, N_TEST = 50_000, 10_000, 10_000
#: The generator's seed (the dataset's own default).
DATA_SEED = 42


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/perforate`` (``~/.cache/perforate``): generated data sets."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root).expanduser() / "perforate"


def generate(n: int, seed: int = DATA_SEED) -> tuple[np.ndarray, np.ndarray]:
    """`n` MNIST-1D signals ``[n, 40]`` (float32, standardised as the generator does) and their
    labels, with the generator's default transformations."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # the harness's dependency
        raise ImportError("MNIST-1D needs the mnist1d package: pip install -e ./experiments") \
            from exc
    args = get_dataset_args()
    # The generator makes num_samples // 10 per class, in shuffled order: round up, then trim.
    args.num_samples, args.train_split, args.seed = -(-n // 10) * 10, 1.0, seed
    data = make_dataset(args)
    return data["x"][:n].astype(np.float32), data["y"][:n].astype(np.int64)


def load_mnist1d(cache: Path | None = None, *, n_train: int = N_TRAIN, n_val: int = N_VAL,
                 n_test: int = N_TEST) -> DatasetSplits:
    """``(train, val, test)`` TensorDatasets of (signal ``[40]``, label), generated once and
    cached as ``.npz`` (written atomically, so parallel runs may share the cache)."""
    n = n_train + n_val + n_test
    path = (cache or cache_dir()) / f"mnist1d-n{n}-seed{DATA_SEED}.npz"
    if path.is_file():
        with np.load(path) as f:
            x, y = f["x"], f["y"]
    else:
        x, y = generate(n)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
        np.savez(tmp, x=x, y=y)
        os.replace(tmp, path)
    if len(y) != n:
        raise ValueError(f"{path} holds {len(y)} samples, expected {n}: delete it to regenerate")
    cuts = np.cumsum([n_train, n_val])
    parts = np.split(np.arange(n), cuts)
    logger.info("MNIST-1D: %d train / %d val / %d test (%s)", n_train, n_val, n_test, path)
    return DatasetSplits(*(TensorDataset(torch.from_numpy(x[i]), torch.from_numpy(y[i]))
                           for i in parts))
