from pathlib import Path

import numpy as np
import pytest
import torch

from perforate_experiments.data.fashion_mnist import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    load_fashion_mnist,
    read_fashion_mnist_arrays,
)
from perforate_experiments.data.splits import carve_validation

pytestmark = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed: apt-get install -y dataset-fashion-mnist",
)


@pytest.fixture(scope="module")
def splits():
    return load_fashion_mnist(DEBIAN_FASHION_MNIST_DIR, seed=0)


@pytest.fixture(scope="module")
def raw():
    return read_fashion_mnist_arrays(DEBIAN_FASHION_MNIST_DIR)


def test_split_sizes_and_shapes(splits):
    train, val, test = splits
    assert (len(train), len(val), len(test)) == (50_000, 10_000, 10_000)
    for ds in splits:
        x, y = ds.tensors
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
        assert y.dtype == torch.int64 and int(y.min()) == 0 and int(y.max()) == 9
    lo, hi = -FASHION_MNIST_MEAN / FASHION_MNIST_STD, (1 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    assert train.tensors[0].min() >= lo - 1e-5 and train.tensors[0].max() <= hi + 1e-5


def test_label_counts(splits):
    train, val, test = splits
    np.testing.assert_array_equal(torch.bincount(test.tensors[1]).numpy(), [1000] * 10)
    both = torch.bincount(train.tensors[1], minlength=10) + torch.bincount(val.tensors[1])
    np.testing.assert_array_equal(both.numpy(), [6000] * 10)


def test_normalisation_statistics(splits):
    x = splits.train.tensors[0]
    assert abs(float(x.mean())) < 0.01
    assert abs(float(x.std()) - 1.0) < 0.01


def test_split_is_disjoint_and_matches_raw(splits, raw):
    train_idx, val_idx = carve_validation(60_000, 10_000, seed=0)
    assert len(np.intersect1d(train_idx, val_idx)) == 0
    assert len(np.union1d(train_idx, val_idx)) == 60_000
    for ds, idx in ((splits.train, train_idx), (splits.val, val_idx)):
        k = idx[:50]
        expected = (raw["train_images"][k] / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
        torch.testing.assert_close(ds.tensors[0][:50, 0], torch.from_numpy(expected).float())
        np.testing.assert_array_equal(ds.tensors[1][:50].numpy(), raw["train_labels"][k])


def test_n_train_subsample_is_seeded_and_nested(splits):
    a = load_fashion_mnist(DEBIAN_FASHION_MNIST_DIR, n_train=500, seed=0)
    b = load_fashion_mnist(DEBIAN_FASHION_MNIST_DIR, n_train=500, seed=0)
    c = load_fashion_mnist(DEBIAN_FASHION_MNIST_DIR, n_train=500, seed=1)
    assert len(a.train) == 500 and len(a.val) == 10_000
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    assert torch.equal(a.train.tensors[0], splits.train.tensors[0][:500])
    assert torch.equal(a.val.tensors[1], splits.val.tensors[1])


def test_missing_files_message(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match="n_train"):
        load_fashion_mnist(DEBIAN_FASHION_MNIST_DIR, n_train=50_001)
