"""Read and write IDX files (the MNIST / Fashion-MNIST / EMNIST format), gzipped or raw."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_DTYPE_CODES: dict[str, int] = {np.dtype(v).str[1:]: k for k, v in _IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(ValueError):
    """The file is not a well-formed IDX file."""


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head == _GZIP_MAGIC:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    return path.read_bytes()


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file into a numpy array in native byte order."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IDXFormatError(f"{name}: bad IDX magic number {data[:4]!r}")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise IDXFormatError(f"{name}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(f"{name}: truncated header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise IDXFormatError(
            f"{name}: header says shape {shape} ({expected} bytes) but {len(data) - header} "
            "bytes follow"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip detected from its magic bytes, not its name) into numpy."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"IDX file not found: {p}")
    return parse_idx(_read_bytes(p), name=str(p))


def write_idx(
    path: str | os.PathLike[str], array: np.ndarray, *, compress: bool | None = None
) -> Path:
    """Write `array` as an IDX file; gzip it if `compress` (default: name ends in ``.gz``)."""
    p = Path(path)
    arr = np.asarray(array)
    key = arr.dtype.str[1:]
    if key not in _DTYPE_CODES:
        raise TypeError(f"dtype {arr.dtype} has no IDX type code")
    if arr.ndim > 255:
        raise ValueError("IDX supports at most 255 dimensions")
    code = _DTYPE_CODES[key]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    payload = header + arr.astype(_IDX_DTYPES[code], copy=False).tobytes()
    if compress if compress is not None else p.suffix == ".gz":
        with gzip.open(p, "wb") as fh:
            fh.write(payload)
    else:
        p.write_bytes(payload)
    return p


def find_idx(directory: Path, stem: str) -> Path | None:
    """``directory/stem.gz`` or ``directory/stem`` (in that order), whichever exists."""
    for name in (f"{stem}.gz", stem):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None
