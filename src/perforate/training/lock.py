"""One writer per ``out_dir``: the lock file ``out_dir/.lock``.

A `Tracker` with an ``out_dir`` (rank 0 of a distributed run) takes the lock when it is made
and lets it go when the run is done, at `Tracker.close`, when it is garbage collected or at
exit. The lock is an operating-system lock on the file (``fcntl.lockf``; ``msvcrt.locking`` on
Windows), so the system releases it when its process dies, even by SIGKILL: a stale lock file
is taken over. The file holds the holder's PID, host and start time, for the error a second
run gets (`RunLockedError`). Within one process a newer tracker takes the directory over from
an older one (e.g. ``pf.resume`` after an interrupted ``pf.fit`` in a notebook); the older
one's next write raises `RunLockedError`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from ..errors import RunLockedError
from ..io.atomic import pid_alive

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"

_HELD: dict[str, _Held] = {}  # this process's held locks, by real path of the lock file
_HELD_LOCK = threading.Lock()


class _Held:
    """An open, locked lock file and the `RunLock` that owns it now."""

    def __init__(self, fd: int, path: Path, owner: RunLock) -> None:
        self.fd, self.path, self.owner = fd, path, owner


def _try_lock(fd: int, path: Path) -> bool:
    """Lock `fd`; False if another process holds the lock."""
    try:
        if fcntl is not None:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN, getattr(errno, "EDEADLOCK", errno.EAGAIN)):
            return False
        logger.warning("%s cannot be locked (%s): this file system does not enforce one "
                       "writer per out_dir", path, exc)
    return True


def _holder(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0) if hasattr(os, "pread") else b""
        holder = json.loads(data.decode("utf-8"))
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    pid, host = holder.get("pid"), holder.get("host")
    if not isinstance(pid, int):
        return "another process"
    text = f"PID {pid}" + (f" on {host}" if host else "")
    if holder.get("started"):
        text += f", since {holder['started']}"
    if host == socket.gethostname() and not pid_alive(pid):
        text += "; that PID is gone, a child process of it may still hold the lock"
    return text


class RunLock:
    """The lock on one ``out_dir`` (see the module docstring)."""

    def __init__(self, out_dir: str | Path, owner: Any = None) -> None:
        """Take the lock of `out_dir` (created if missing) for `owner` (released when `owner`
        is garbage collected); raise `RunLockedError` naming the holder if another process
        holds it."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / LOCK_FILE
        self._held: _Held | None = None
        self._lost = ""
        key = os.path.realpath(self.path)
        with _HELD_LOCK:
            previous = _HELD.get(key)
            if previous is not None:  # in this process: take it over
                logger.warning("%s: another Tracker of this process wrote here; this one takes "
                               "over (the other's next write raises RunLockedError)", out)
                previous.owner._lost = "another Tracker of this process took it over"
                previous.owner._held = None
                previous.owner = self
                self._held = previous
            else:
                self._held = _Held(self._acquire(), self.path, self)
                _HELD[key] = self._held
        self._key = key
        if owner is not None:
            weakref.finalize(owner, self.release)

    def _acquire(self) -> int:
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            if not _try_lock(fd, self.path):
                holder = _holder(fd)
                os.close(fd)
                raise RunLockedError(
                    f"{self.path.parent} is in use by another run ({_describe(holder)}): one "
                    f"writer per out_dir; wait for it to end, stop it, or use another out_dir")
            try:  # the file we locked may have been unlinked by a holder releasing it
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode("utf-8"))
            return fd
        raise RunLockedError(f"{self.path} keeps changing: cannot lock it")  # pragma: no cover

    @property
    def held(self) -> bool:
        """True while this lock is held (not released, not taken over)."""
        return self._held is not None

    def check(self) -> None:
        """Raise `RunLockedError` unless this lock is held."""
        if self._held is None:
            raise RunLockedError(f"{self.path.parent}: this Tracker no longer owns it "
                                 f"({self._lost or 'released'}); it writes nothing more")

    def release(self) -> None:
        """Let the lock go (the lock file is removed); a no-op if no longer held."""
        with _HELD_LOCK:
            held, self._held = self._held, None
            if held is None:
                return
            self._lost = "released"
            _HELD.pop(self._key, None)
            with contextlib.suppress(OSError):
                os.unlink(held.path)
            os.close(held.fd)
