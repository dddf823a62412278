"""The ranks' meeting at the end of every epoch: a bounded wait, and equal batch counts.

Every rank counts its training forwards (`EpochMeeting.count_forwards`: grad enabled,
training mode). At `Tracker.step` each rank posts its count to the process group's key-value
store (the one ``init_process_group`` rendezvoused on; not a collective, so a rank still
inside a collective cannot pair with it) and waits, at most `EpochMeeting.timeout`, for every
other rank's. A rank that has not come by then is named in a `DistributedError` on the ranks
that waited, which leave a note so that it raises too when it comes. In a dendrite epoch,
counts that differ raise a `DistributedError` naming each rank's on every rank (in a neuron
epoch ranks can only have met with different counts through DDP's ``join()``: allowed).

A rank with an extra batch waits in that batch's collective, where the others never come. In
a dendrite epoch those collectives are perforate's own: on gloo, a rank that has waited `POLL`
in one looks whether another rank has ended the epoch (`EpochMeeting.check_peers`); it then
raises, and so do the ranks waiting for it at the meeting. See ``docs/distributed.md``, "When
ranks disagree or stall".
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import weakref
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .. import private_api
from ..errors import ConfigError, DistributedError

logger = logging.getLogger(__name__)

#: How long a rank waits for the others at the end of an epoch, unless `TIMEOUT_ENV` is set.
DEFAULT_TIMEOUT = timedelta(minutes=10)
#: Environment variable: the wait, in seconds (e.g. ``PERFORATE_DIST_TIMEOUT=120``).
TIMEOUT_ENV = "PERFORATE_DIST_TIMEOUT"

#: How often a rank waiting in a dendrite batch's collective looks whether another rank has
#: ended the epoch (`EpochMeeting.check_peers`; no cost while the collective is quicker).
POLL = timedelta(seconds=0.25)

_meetings = itertools.count()  # every rank builds its trackers in the same order
_RUNNING = " running"  # a count posted by a rank that found another had ended the epoch
_ABORT = "|"  # separates a count from the note of a rank that stopped waiting

_ADVICE = ("every rank must run the same number of training batches per epoch (a "
           "DistributedSampler with drop_last=True, or as many batches everywhere; for uneven "
           "inputs in a neuron phase, DDP's join() context manager)")


def default_timeout() -> timedelta:
    """`DEFAULT_TIMEOUT`, or ``$PERFORATE_DIST_TIMEOUT`` seconds."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ConfigError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return timedelta(seconds=seconds)


class EpochMeeting:
    """The end-of-epoch meeting of one process group's ranks (see the module docstring)."""

    def __init__(self, group: Any, rank: int, world: int,
                 timeout: timedelta | None = None) -> None:
        self.rank, self.world = rank, world
        self.timeout = default_timeout() if timeout is None else timeout
        if not self.timeout.total_seconds() > 0:
            raise ConfigError(f"the distributed timeout must be positive, got {self.timeout}")
        self.batches = 0
        """Training forwards of this rank in the running epoch (`count_forwards`)."""
        self._number = 0  # meetings held
        self.store = private_api.default_store()
        first = dist.get_global_rank(group, 0) if group is not None else 0
        self._prefix = f"perforate/epochs/{next(_meetings)}/{first}x{world}/"

    def _key(self, number: int, rank: int | str) -> str:
        return f"{self._prefix}{number}/{rank}"

    def count_forwards(self, module: nn.Module) -> Any:
        """Count `module`'s training forwards into `batches` (a forward pre-hook; returns its
        handle)."""
        return module.register_forward_pre_hook(_CountForwards(self))

    # ------------------------------------------------------------------------- the meeting
    def end_epoch(self, what: str, equal: bool = True) -> None:
        """Meet every rank at the end of the epoch `what` (e.g. "epoch 3 (a dendrite
        epoch)"): post this rank's batch count, wait at most `timeout` for the others', and
        raise a `DistributedError` if one has not come or, with `equal`, the counts differ
        (without: they are logged; DDP's ``join()`` evens out a neuron epoch's)."""
        number, count = self._number, self.batches
        keys = [self._key(number, r) for r in range(self.world)]
        ended = self._key(number, "ended")
        self._store_op(lambda: (self.store.set(keys[self.rank], str(count)),
                                self.store.set(ended, "1")))
        try:
            self.store.wait(keys, self.timeout)
        except RuntimeError as exc:  # DistStoreError: timed out (or the store is gone)
            self._gave_up(keys, count, what, exc)
        counts = self._store_op(lambda: [v.decode() for v in self.store.multi_get(keys)])
        notes = [c.partition(_ABORT)[2] for c in counts]
        if any(notes):
            raise DistributedError(f"{next(n for n in notes if n)}; rank {self.rank} reached "
                                   f"the end of {what} after that")
        if len(set(counts)) > 1 and not equal:
            logger.info("the ranks ran different numbers of batches in %s: %s", what,
                        _per_rank(counts))
        elif len(set(counts)) > 1:
            raise DistributedError(f"the ranks ran different numbers of batches in {what}: "
                                   f"{_per_rank(counts)}; {_ADVICE}")
        if self.rank == 0 and number:  # every rank has read the previous meeting's keys
            self._store_op(lambda: [self.store.delete_key(self._key(number - 1, r))
                                    for r in [*range(self.world), "ended"]])
        self._number, self.batches = number + 1, 0

    def _gave_up(self, keys: Sequence[str], count: int, what: str, exc: Exception) -> None:
        """After the wait failed: name the ranks that have not come, and leave them a note
        (with this rank's count) so that they raise too when they come."""
        missing = self._store_op(lambda: [r for r, k in enumerate(keys)
                                          if not self.store.check([k])], exc)
        if not missing:  # they came as the wait ended
            return
        seconds = f"{self.timeout.total_seconds():g} s"
        names = ", ".join(map(str, missing))
        self._store_op(lambda: self.store.set(keys[self.rank], f"{count}{_ABORT}rank "
                                              f"{self.rank} stopped waiting for rank(s) "
                                              f"{names} at the end of {what} after {seconds}"))
        raise DistributedError(
            f"rank(s) {names} did not reach the end of {what} within {seconds} (rank "
            f"{self.rank} ran {count} batch(es)): stalled, or running more batches than this "
            f"rank (in a neuron epoch such a rank waits inside DDP's gradient all-reduce, "
            f"until this one exits); {_ADVICE}. The wait is {TIMEOUT_ENV} seconds "
            f"(default {DEFAULT_TIMEOUT.total_seconds():g}), or tracker.sync.timeout") from exc

    def wait(self, work: Any) -> None:
        """Wait for a batch's collective (`work`, gloo's), looking every `POLL` whether
        another rank has ended the epoch meanwhile: this rank's batch then waits for it in
        vain, and `check_peers` raises."""
        while True:
            try:
                work.wait(POLL)
                return
            except RuntimeError:
                if work.is_completed():  # failed, not timed out
                    raise
            self.check_peers()

    def check_peers(self) -> None:
        """Raise a `DistributedError` if another rank has already ended the epoch: this rank,
        waiting for it in a batch's collective, runs more batches. It posts its count first,
        so that the ranks waiting for it at the meeting raise too."""
        number = self._number
        if not self._store_op(lambda: self.store.check([self._key(number, "ended")])):
            return
        keys = [self._key(number, r) for r in range(self.world)]
        self._store_op(lambda: self.store.set(keys[self.rank], f"{self.batches}{_RUNNING}"))
        counts = self._store_op(lambda: [self.store.get(k).decode()
                                         if self.store.check([k]) else "?" for k in keys])
        raise DistributedError(
            f"rank {self.rank} is in batch {self.batches} of an epoch that another rank has "
            f"ended: the ranks ran different numbers of batches ({_per_rank(counts)}); "
            f"{_ADVICE}")

    def explain(self, exc: BaseException) -> None:
        """After this rank's training failed with the backend's error `exc` (e.g. gloo's
        "Connection closed by peer" in DDP's all-reduce): if a rank stopped waiting for this
        one at the end of the epoch, raise its note as a `DistributedError` from `exc`."""
        if isinstance(exc, DistributedError):
            return
        keys = [self._key(self._number, r) for r in range(self.world)]
        try:
            notes = [self.store.get(k).decode().partition(_ABORT)[2] for k in keys
                     if self.store.check([k])]
        except RuntimeError:  # the store is gone too: nothing to add
            return
        note = next((n for n in notes if n), None)
        if note:
            raise DistributedError(
                f"{note}; rank {self.rank} was still in that epoch, after {self.batches} "
                f"training forward(s): stalled, or running more batches than that rank (DDP "
                f"waits for the others in a batch's forward or backward); {_ADVICE}") from exc

    def _store_op(self, op: Any, cause: BaseException | None = None) -> Any:
        """``op()``, its failure as a `DistributedError`: the store lives in one process (rank
        0's, or torchrun's agent); when it is gone, that process has ended."""
        try:
            return op()
        except RuntimeError as exc:
            raise DistributedError(
                f"rank {self.rank} lost the process group's key-value store ({exc}): the "
                "process that held it (rank 0, or torchrun's agent) has ended; see the other "
                "ranks' errors") from (cause or exc)


def _per_rank(counts: Sequence[str]) -> str:
    return ", ".join(f"rank {r}: " + c.partition(_ABORT)[0].replace(_RUNNING, " (still "
                                                                     "training)")
                     for r, c in enumerate(counts))


class _CountForwards:
    """A forward pre-hook that counts training forwards into an `EpochMeeting` (weakly held;
    a copy or an unpickled model gets an inert hook)."""

    def __init__(self, meeting: EpochMeeting | None = None) -> None:
        self.meeting = None if meeting is None else weakref.ref(meeting)

    def __call__(self, module: nn.Module, args: Any) -> None:
        meeting = None if self.meeting is None else self.meeting()
        if meeting is not None and module.training and torch.is_grad_enabled():
            meeting.batches += 1

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _CountForwards, ()
