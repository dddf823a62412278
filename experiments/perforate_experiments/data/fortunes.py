"""The byte corpus of Protocol L: the English text files of Debian's ``fortunes`` package.

Every file of ``/usr/share/games/fortunes`` except the index files (``*.dat``) and the
``*.u8`` links, sorted by name and concatenated as raw bytes (about 2.6 MB), split in order
90 / 5 / 5 into train / validation / test: the last files (``wisdom``, ``work``, ``zippy``...)
are held out, so validation and test text is unseen, not interleaved with training text.

Batches: training draws random windows of ``context + 1`` bytes each epoch from a seeded
generator of its own (`RandomWindows`); validation and test are one deterministic pass over
the split cut into consecutive, non-overlapping windows (`StridedWindows`): every byte after a
window's first is predicted exactly once, from the bytes before it in its window.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .paths import ENV_VAR

logger = logging.getLogger(__name__)

DEBIAN_FORTUNES_DIR = Path("/usr/share/games/fortunes")
INSTALL = "apt-get install -y fortunes"
#: Fractions of the corpus, in order: train, validation (test: the rest).
SPLIT = (0.90, 0.05)
#: Suffixes of the package's files that are not text (strfile indexes, UTF-8 links).
NOT_TEXT = (".dat", ".u8")


@dataclass(frozen=True)
class FortunesCorpus:
    """The corpus split in order (uint8 byte tensors) and where it came from."""

    train: Tensor
    val: Tensor
    test: Tensor
    files: tuple[str, ...]
    """The file names concatenated, in order."""
    directory: str
    version: str
    """The Debian package's version (``dpkg-query``), or how the files were found instead."""

    @property
    def n_bytes(self) -> int:
        return len(self.train) + len(self.val) + len(self.test)


def default_fortunes_dir() -> Path:
    """``$PERFORATE_DATA/fortunes`` if it exists (tests, other machines), else the Debian
    package's directory."""
    env = os.environ.get(ENV_VAR)
    if env and (Path(env).expanduser() / "fortunes").is_dir():
        return Path(env).expanduser() / "fortunes"
    return DEBIAN_FORTUNES_DIR


def corpus_files(directory: Path) -> list[Path]:
    """The text files of `directory`, sorted by name (``*.dat`` and ``*.u8`` left out)."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir()
                   if p.is_file() and not p.is_symlink() and not p.name.endswith(NOT_TEXT)),
                  key=lambda p: p.name)


def package_version() -> str:
    """The installed ``fortunes`` package's version, or ``"unknown"`` without dpkg."""
    if shutil.which("dpkg-query") is None:
        return "unknown (no dpkg-query)"
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "fortunes"],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "not installed"


def split_in_order(data: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``data`` cut 90 / 5 / 5 in order (train and validation sizes rounded down)."""
    n_train = int(len(data) * SPLIT[0])
    n_val = int(len(data) * SPLIT[1])
    return data[:n_train], data[n_train:n_train + n_val], data[n_train + n_val:]


def load_fortunes(root: str | os.PathLike[str] | None = None, *,
                  max_bytes: int | None = None) -> FortunesCorpus:
    """The corpus from `root` (default `default_fortunes_dir()`), its first `max_bytes` bytes
    only when given (the --quick slice), split in order.

    Raises FileNotFoundError naming the install command when the directory holds no text file.
    """
    directory = Path(root).expanduser() if root is not None else default_fortunes_dir()
    files = corpus_files(directory)
    if not files:
        raise FileNotFoundError(
            f"no fortunes text files in {directory}: install Debian's package with "
            f"`{INSTALL}` (files in {DEBIAN_FORTUNES_DIR}), or put the files in "
            f"${ENV_VAR}/fortunes")
    data = b"".join(p.read_bytes() for p in files)
    if max_bytes is not None:
        data = data[:max_bytes]
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    train, val, test = split_in_order(tensor)
    version = package_version() if directory.resolve() == DEBIAN_FORTUNES_DIR.resolve() \
        else f"files from {directory} (not the Debian package's directory)"
    logger.info("fortunes %s: %d files, %d bytes: %d train / %d val / %d test", version,
                len(files), len(tensor), len(train), len(val), len(test))
    return FortunesCorpus(train, val, test, tuple(p.name for p in files), str(directory), version)


def _windows(data: Tensor, starts: Tensor, context: int) -> tuple[Tensor, Tensor]:
    """Inputs ``[B, context]`` and next-byte targets ``[B, context]`` (int64)."""
    w = data[starts[:, None] + torch.arange(context + 1)].long()
    return w[:, :-1], w[:, 1:]


class RandomWindows:
    """Each epoch, `windows` windows at random starts of `data` (uniform, with replacement),
    in batches of `batch_size`: ``(x [B, context], y [B, context])``, y the next bytes.

    The starts come from a generator of its own seeded with `seed` (the same windows for every
    arm of a seed); it is `generator`, which `perforate.training.fit` saves in checkpoints.
    """

    def __init__(self, data: Tensor, *, context: int, windows: int, batch_size: int,
                 seed: int) -> None:
        if len(data) < context + 2:
            raise ValueError(f"{len(data)} bytes are too few for windows of {context + 1}")
        if windows < 1 or batch_size < 1:
            raise ValueError("windows and batch_size must be >= 1")
        self.data, self.context, self.windows, self.batch_size = data, context, windows, \
            batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(self.windows / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        starts = torch.randint(0, len(self.data) - self.context, (self.windows,),
                               generator=self.generator)
        for s in range(0, self.windows, self.batch_size):
            yield _windows(self.data, starts[s:s + self.batch_size], self.context)


class StridedWindows:
    """`data` cut into consecutive non-overlapping windows (``context + 1`` bytes, stride
    `context`; the last < `context` bytes dropped), in batches, built once: the fixed
    validation / test pass."""

    def __init__(self, data: Tensor, *, context: int, batch_size: int) -> None:
        n = (len(data) - 1) // context
        if n < 1:
            raise ValueError(f"{len(data)} bytes are too few for one window of {context + 1}")
        starts = torch.arange(n) * context
        self.batches = [_windows(data, starts[s:s + batch_size], context)
                        for s in range(0, n, batch_size)]
        self.n_windows = n

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(self.batches)
