import numpy as np
import pytest
import torch

from perforate.demo.idx import write_idx
from perforate_experiments.data.emnist import (
    EMNIST_BALANCED_CLASSES,
    EMNIST_IDX_FILES,
    EMNIST_MAT_FILE,
    load_emnist_balanced,
    read_emnist_balanced_arrays,
)

N_TRAIN, N_TEST = 60, 12


def _upright(n, seed):
    """Images whose orientation is checkable: a bright top row, plus noise."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 100, size=(n, 28, 28), dtype=np.uint8)
    imgs[:, 0, :] = 255
    return imgs


@pytest.fixture
def upright():
    return {
        "train_images": _upright(N_TRAIN, 1),
        "train_labels": (np.arange(N_TRAIN) % 47).astype(np.uint8),
        "test_images": _upright(N_TEST, 2),
        "test_labels": (np.arange(N_TEST) * 3 % 47).astype(np.uint8),
    }


def _write_idx_set(directory, arrays, gz):
    directory.mkdir(parents=True, exist_ok=True)
    for key, stem in EMNIST_IDX_FILES.items():
        arr = arrays[key].transpose(0, 2, 1) if key.endswith("images") else arrays[key]
        write_idx(directory / (stem + (".gz" if gz else "")), np.ascontiguousarray(arr))


def _write_mat(path, arrays):
    sio = pytest.importorskip("scipy.io")

    def part(split):
        imgs = arrays[f"{split}_images"]
        # MATLAB stores each 28x28 image column-major in a row of 784.
        flat = np.stack([img.flatten(order="F") for img in imgs])
        labels = arrays[f"{split}_labels"].astype(np.float64).reshape(-1, 1)
        return {"images": flat, "labels": labels, "writers": np.zeros_like(labels)}

    mapping = np.stack([np.arange(47), [ord(c) for c in EMNIST_BALANCED_CLASSES]], 1)
    sio.savemat(
        path, {"dataset": {"train": part("train"), "test": part("test"), "mapping": mapping}}
    )


def _check_arrays(out, upright):
    for key in upright:
        np.testing.assert_array_equal(out[key], upright[key], err_msg=key)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_are_transposed_upright(tmp_path, upright, gz):
    _write_idx_set(tmp_path / "gzip", upright, gz)
    _check_arrays(read_emnist_balanced_arrays(tmp_path), upright)


def test_mat_file_is_transposed_upright(tmp_path, upright):
    _write_mat(tmp_path / EMNIST_MAT_FILE, upright)
    _check_arrays(read_emnist_balanced_arrays(tmp_path), upright)


def test_splits(tmp_path, upright):
    (tmp_path / "matlab").mkdir()
    _write_mat(tmp_path / "matlab" / EMNIST_MAT_FILE, upright)
    train, val, test = load_emnist_balanced(tmp_path, seed=3)
    assert (len(train), len(val), len(test)) == (50, 10, 12)
    assert train.tensors[0].shape == (50, 1, 28, 28) and train.tensors[0].dtype == torch.float32
    assert test.tensors[1].dtype == torch.int64
    np.testing.assert_array_equal(test.tensors[1].numpy(), upright["test_labels"])
    labels = torch.cat([train.tensors[1], val.tensors[1]]).sort().values
    np.testing.assert_array_equal(labels.numpy(), np.sort(upright["train_labels"]))
    # default normalisation: the training part is standardised
    assert abs(float(train.tensors[0].mean())) < 1e-4
    assert abs(float(train.tensors[0].std(unbiased=False)) - 1) < 1e-4
    # the top row (255 everywhere) is the maximum: images are upright
    assert torch.all(train.tensors[0][:, 0, 0, :] == train.tensors[0].max())
    # seeded
    again = load_emnist_balanced(tmp_path, seed=3)
    assert torch.equal(again.val.tensors[0], val.tensors[0])
    other = load_emnist_balanced(tmp_path, seed=4, n_train=20, n_val=5, mean=0.5, std=0.5)
    assert (len(other.train), len(other.val)) == (20, 5)
    expected = torch.from_numpy(upright["test_images"]).float().div(255).sub(0.5).div(0.5)
    torch.testing.assert_close(other.test.tensors[0], expected.unsqueeze(1))


def test_missing_files_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_emnist_balanced(tmp_path)
    msg = str(info.value)
    for stem in EMNIST_IDX_FILES.values():
        assert stem in msg
    assert EMNIST_MAT_FILE in msg and str(tmp_path) in msg


def test_bad_labels(tmp_path, upright):
    upright["train_labels"][0] = 47
    _write_idx_set(tmp_path, upright, gz=False)
    with pytest.raises(ValueError, match=r"0\.\.46"):
        read_emnist_balanced_arrays(tmp_path)
