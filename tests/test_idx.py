"""IDX files (the MNIST family's format): parse, read gzipped or raw, write, find."""

import gzip

import numpy as np
import pytest

from perforate.demo.idx import IDXFormatError, find_idx, parse_idx, read_idx, write_idx

FASHION = "/usr/share/datasets/fashion-mnist"


def test_parse_hand_written_bytes():
    data = bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 255])
    arr = parse_idx(data)
    assert arr.dtype == np.uint8
    np.testing.assert_array_equal(arr, [[1, 2, 3], [4, 5, 255]])


def test_parse_big_endian_int32():
    data = bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + np.array([1, -2], dtype=">i4").tobytes()
    arr = parse_idx(data)
    assert arr.dtype == np.dtype("int32") and arr.dtype.byteorder in ("=", "<", "|")
    np.testing.assert_array_equal(arr, [1, -2])


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_roundtrip(tmp_path, dtype, name):
    rng = np.random.default_rng(0)
    arr = (rng.normal(size=(4, 3, 2)) * 50).astype(dtype)
    path = write_idx(tmp_path / name, arr)
    with open(path, "rb") as fh:
        assert (fh.read(2) == b"\x1f\x8b") == name.endswith(".gz")
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.shape == (4, 3, 2)
    np.testing.assert_array_equal(out, arr)


def test_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    path = write_idx(tmp_path / "labels-idx1-ubyte", arr, compress=True)
    np.testing.assert_array_equal(read_idx(path), arr)


def test_malformed_files(tmp_path):
    with pytest.raises(IDXFormatError, match="magic"):
        parse_idx(b"\x01\x00\x08\x01")
    with pytest.raises(IDXFormatError, match="type code"):
        parse_idx(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 0]))
    with pytest.raises(IDXFormatError, match="bytes follow"):
        parse_idx(bytes([0, 0, 0x08, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")
    with pytest.raises(TypeError):
        write_idx(tmp_path / "x", np.zeros(2, dtype=np.int64))


def test_find_idx_prefers_gz(tmp_path):
    assert find_idx(tmp_path, "x") is None
    write_idx(tmp_path / "x", np.zeros(1, np.uint8))
    assert find_idx(tmp_path, "x") == tmp_path / "x"
    write_idx(tmp_path / "x.gz", np.zeros(1, np.uint8))
    assert find_idx(tmp_path, "x") == tmp_path / "x.gz"


def test_real_fashion_mnist_headers():
    path = find_idx(__import__("pathlib").Path(FASHION), "t10k-labels-idx1-ubyte")
    if path is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
    labels = read_idx(path)
    assert labels.shape == (10_000,) and labels.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)
    with gzip.open(f"{FASHION}/t10k-images-idx3-ubyte.gz") as fh:
        head = fh.read(16)
    assert head[:4] == bytes([0, 0, 8, 3])
