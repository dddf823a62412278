"""Checksums of the files a run writes, checked when they are read back.

Each JSON file that describes a saved model or checkpoint records the SHA-256 and size of the
files beside it (``"files": {name: {"sha256": ..., "bytes": ...}}``, written by
`perforate.io.atomic`). Readers get the bytes of several files of one directory as they were
together (`read_files`: through one handle on the directory, so a directory swapped in
meanwhile is not mixed in) and `check` them; a mismatch is a `LoadError` naming the file.
Files saved before checksums were recorded carry no record and load unchecked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import LoadError

logger = logging.getLogger(__name__)

FILES_KEY = "files"
"""Key of the checksum records in a JSON file."""

_ATTEMPTS = 20


def record_of(data: bytes) -> dict[str, Any]:
    """The checksum record of `data`."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def fingerprint(obj: Any) -> str:
    """SHA-256 of `obj` as canonical JSON (sorted keys, no spaces): a value written into one
    file to show which content of another file it belongs with."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check(path: str | Path, data: bytes, records: Sequence[Mapping[str, Any] | None],
          where: str | Path) -> None:
    """Raise `LoadError` unless `data` (the content of `path`) matches one of `records`
    (recorded in `where`)."""
    wanted = [r for r in records if r]
    if not wanted:
        raise LoadError(f"{path}: {where} records no checksum of it")
    got = record_of(data)
    for r in wanted:
        if r.get("sha256") == got["sha256"] and r.get("bytes") == got["bytes"]:
            return
    r = wanted[0]
    raise LoadError(f"{path} is corrupt or not the file {where} was written with: "
                    f"{got['bytes']} bytes, sha256 {got['sha256'][:16]}..., recorded "
                    f"{r.get('bytes')} bytes, sha256 {str(r.get('sha256'))[:16]}...")


def _read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 24):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_once(directory: Path, names: Iterable[str]) -> tuple[dict[str, bytes | None], bool]:
    """The files' bytes (None: missing) and whether `directory` was replaced meanwhile."""
    if os.open not in os.supports_dir_fd:  # e.g. Windows: by path
        out: dict[str, bytes | None] = {}
        for name in names:
            try:
                out[name] = (directory / name).read_bytes()
            except FileNotFoundError:
                out[name] = None
        return out, False
    dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    fds: dict[str, int | None] = {}
    try:
        for name in names:
            try:
                fds[name] = os.open(name, os.O_RDONLY, dir_fd=dfd)
            except FileNotFoundError:
                fds[name] = None
        out = {name: None if fd is None else _read_fd(fd) for name, fd in fds.items()}
        try:
            moved = os.stat(directory).st_ino != os.fstat(dfd).st_ino
        except FileNotFoundError:
            moved = True
        return out, moved
    finally:
        for fd in fds.values():
            if fd is not None:
                os.close(fd)
        os.close(dfd)


def read_files(directory: str | Path, names: Sequence[str],
               consistent: Any = None) -> dict[str, bytes | None]:
    """The bytes of `names` in `directory` (None for a missing one), all from the same
    directory even if a writer swaps in a new one meanwhile (then read again).
    ``consistent(files) -> bool``: also read again while it is False and the files change
    (files replaced one by one). Raises `FileNotFoundError` if `directory` does not exist."""
    directory = Path(directory)
    out: dict[str, bytes | None] = {}
    previous: dict[str, bytes | None] | None = None
    for attempt in range(_ATTEMPTS):
        try:
            out, moved = _read_once(directory, names)
        except FileNotFoundError:  # a directory renamed aside for a moment
            if attempt == _ATTEMPTS - 1 or not os.path.exists(directory.parent):
                raise
            time.sleep(0.001 * attempt)
            continue
        if any(v is None for v in out.values()) and moved:
            time.sleep(0.001 * attempt)
            continue
        if consistent is not None and out != previous and not consistent(out):
            previous = out  # read again while the files change
            time.sleep(0.001 * attempt)
            continue
        return out
    return out


def load_json(data: bytes, path: str | Path) -> dict[str, Any]:
    """Parse the JSON object in `data` (read from `path`); `LoadError` if it is not one."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoadError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise LoadError(f"{path} is not a JSON object")
    return obj
