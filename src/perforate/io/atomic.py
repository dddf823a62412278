"""Atomic writes: a file is written under a unique temp name beside its target and renamed
over it (``os.replace``); a directory is filled under a unique temp name and swapped in.

A reader, or a run killed at any instant, sees the old file (directory) or the new one, whole.
Files are created with mode ``0o666`` less the umask (as ``open`` would), temp names are unique
per writer (process, host, random), and temp files or directories left by a killed process of
this host are removed by the next write beside them. A full disk raises
``OSError(ENOSPC, "no space left on device while writing <path>; the previous <what> is
intact")``. Each written file's SHA-256 and size come back as a record (`FileRecord`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import secrets
import shutil
import socket
import sys
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

#: A written file's checksum record: ``{"sha256": hex digest, "bytes": size}``.
FileRecord = dict[str, Any]

_HOST = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFF:04x}"
_ACTIVE: set[str] = set()  # this process's temp paths in use (other threads' too)
_ACTIVE_LOCK = threading.Lock()
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _commit(src: str | Path, dst: str | Path) -> None:
    """Rename `src` over `dst`: the one step that makes a new file visible."""
    os.replace(src, dst)


def _temp_path(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{_HOST}-{secrets.token_hex(4)}{suffix}")


def pid_alive(pid: int) -> bool:
    """True if a process `pid` runs on this host (or cannot be signalled: not ours)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _sweep(path: Path) -> None:
    """Remove temp files and directories of `path` left by dead writers on this host."""
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix) or not name.endswith((".tmp", ".tmpdir", ".old")):
            continue
        owner = name[len(prefix):].split(".", 1)[0].split("-")
        if len(owner) != 3 or owner[1] != _HOST or not owner[0].isdigit():
            continue
        stale = path.parent / name
        with _ACTIVE_LOCK:
            if str(stale) in _ACTIVE:
                continue
        if int(owner[0]) != os.getpid() and pid_alive(int(owner[0])):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                stale.unlink()


def _is_no_space(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return True
        text = str(exc)
        if "(os error 28)" in text or "(os error 122)" in text:  # Rust (safetensors)
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def no_space_error(path: str | Path, what: str) -> OSError:
    """The error a full disk raises while writing `path`."""
    return OSError(errno.ENOSPC, f"no space left on device while writing {path}; the "
                                 f"previous {what} is intact")


class _Writer:
    """The file object a writer gets: hashes and counts what passes, keeps an OSError that
    the caller (e.g. ``torch.save``'s C++ writer) might replace with a vaguer one."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f, self._hash, self.size = f, hashlib.sha256(), 0
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        try:
            n = self._f.write(view)
        except OSError as exc:
            self.error = exc
            raise
        self._hash.update(view)
        self.size += len(view)
        return n if n is not None else len(view)

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as exc:
            self.error = exc
            raise

    def record(self) -> FileRecord:
        return {"sha256": self._hash.hexdigest(), "bytes": self.size}


def _create(tmp: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    return os.open(tmp, flags, 0o666)  # the umask applies, as with open()


def _register(tmp: Path) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE.add(str(tmp))


def _new_temp(path: Path, suffix: str) -> Path:
    """A registered temp name beside `path` (its parent made; dead writers' temps swept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path)
    tmp = _temp_path(path, suffix)
    _register(tmp)
    return tmp


def _unregister(tmp: Path) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE.discard(str(tmp))


def file_record(path: str | Path) -> FileRecord:
    """The SHA-256 and size of the file at `path`."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size}


def write_file(path: str | Path, write: Callable[[IO[bytes]], None] | None = None, *,
               write_path: Callable[[str], None] | None = None, fsync: bool = False,
               what: str | None = None) -> FileRecord:
    """Write `path` atomically and return its `FileRecord`: ``write(f)`` writes to a file
    object, or ``write_path(p)`` to a temp path (for writers that take a path only)."""
    path = Path(path)
    tmp = _new_temp(path, ".tmp")
    writer: _Writer | None = None
    try:
        fd = _create(tmp)
        mode = os.fstat(fd).st_mode & 0o777  # 0o666 less the umask
        with os.fdopen(fd, "wb") as f:
            if write is not None:
                writer = _Writer(f)
                write(writer)  # type: ignore[arg-type]
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
        if write_path is not None:
            write_path(str(tmp))
            if os.stat(tmp).st_mode & 0o777 != mode:  # the writer made a file of its own
                os.chmod(tmp, mode)
            if fsync:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
        record = writer.record() if writer is not None else file_record(tmp)
        _commit(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _is_no_space(exc) or (writer is not None and _is_no_space(writer.error)):
            raise no_space_error(path, what or path.name) from exc
        raise
    finally:
        _unregister(tmp)
    return record


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], *,
                 fsync: bool = False, what: str | None = None) -> Path:
    """Call ``write(f)`` on a temp file next to `path`, then rename it over `path`.

    A reader (or a run killed at any instant) sees either the old file or the new one.
    """
    write_file(path, write, fsync=fsync, what=what)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# ---------------------------------------------------------------------------- directories
@functools.cache
def _renameat2() -> Any:
    """libc's ``renameat2`` (Linux, glibc >= 2.28), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                   ctypes.c_uint]
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names `a` and `b` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False
    where the system or file system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap(new: Path, target: Path) -> Path | None:
    """Put the directory `new` at `target`; return where the old one went (None if none)."""
    for _ in range(100):  # concurrent writers of the same target: retry
        if not os.path.lexists(target):
            try:
                _commit(new, target)  # a directory onto nothing (or an empty one)
                return None
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                continue
        try:
            if _exchange(new, target):
                return new
        except FileNotFoundError:  # another writer moved it aside meanwhile
            continue
        # No atomic exchange here: the old one aside, the new one in (a moment with none).
        old = _temp_path(target, ".old")
        try:
            os.rename(target, old)
        except FileNotFoundError:
            continue
        try:
            _commit(new, target)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
            continue
        return old
    raise OSError(errno.EBUSY, f"{target} keeps changing: cannot publish it")


def publish_dir(target: str | Path, fill: Callable[[Path], None], *,
                what: str = "directory") -> Path:
    """Call ``fill(tmp)`` on a new empty directory beside `target`, then put it in place of
    `target` (atomically on Linux: ``renameat2`` exchange; elsewhere the old one is renamed
    aside first). A reader that opened the old directory keeps reading it whole; one that
    opens `target` afterwards reads the new one whole."""
    target = Path(target)
    tmp = _new_temp(target, ".tmpdir")
    old: Path | None = None
    try:
        os.mkdir(tmp)  # 0o777 less the umask
        fill(tmp)
        old = _swap(tmp, target)
    except BaseException as exc:
        if old is None and os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if _is_no_space(exc):
            raise no_space_error(target, what) from exc
        raise
    finally:
        _unregister(tmp)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
