"""What `fit` shows while it trains: tqdm bars on a terminal, plain periodic lines elsewhere.

A pipe or a log file gets no cursor-control codes: one line per phase switch, and otherwise at
most one line every `LineProgress.interval` seconds. Without tqdm (it comes with
``perforate[train]``) a terminal gets the plain lines too.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from .._extras import available

logger = logging.getLogger(__name__)


class Progress(Protocol):
    """The calls `fit` makes: per epoch `start_epoch`, `batch` per batch, `end_epoch`."""

    def start_epoch(self, epoch: int, phase: str, batches: int | None) -> None: ...
    def batch(self) -> None: ...
    def end_epoch(self, epoch: int, phase: str, dendrites: int, val: float | None) -> None: ...
    def close(self) -> None: ...


class Silent:
    """No display (``progress=False``)."""

    def start_epoch(self, epoch: int, phase: str, batches: int | None) -> None:
        pass

    def batch(self) -> None:
        pass

    def end_epoch(self, epoch: int, phase: str, dendrites: int, val: float | None) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress(Silent):
    """Plain lines: at the first epoch, when the phase changes, every `interval` seconds, and
    the last epoch's at `close`.

    `epoch` is the number of epochs completed; `phase` the phase of the next epoch.
    """

    def __init__(self, stream: TextIO, total: int | None, *, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.total, self.interval, self.clock = stream, total, interval, clock
        self._start = clock()
        self._last: float | None = None
        self._phase: str | None = None
        self._pending = ""

    def end_epoch(self, epoch: int, phase: str, dendrites: int, val: float | None) -> None:
        now = self.clock()
        of = f"/{self.total}" if self.total is not None else ""
        score = f"{val:.4g}" if val is not None else "-"
        self._pending = (f"perforate: epoch {epoch}{of}, next phase {phase}, {dendrites} "
                         f"dendrite set(s), val {score}, {now - self._start:.0f} s\n")
        if self._last is None or phase != self._phase or now - self._last >= self.interval:
            self._last, self._phase = now, phase
            self._write()

    def close(self) -> None:
        """Write the last epoch's line if it was held back."""
        self._write()

    def _write(self) -> None:
        if self._pending:
            self.stream.write(self._pending)
            self.stream.flush()
            self._pending = ""


class BarProgress(Silent):
    """tqdm bars: one over epochs, one over the batches of the current epoch."""

    def __init__(self, stream: TextIO, total: int | None, initial: int) -> None:
        from tqdm import tqdm  # not tqdm.auto: its asyncio variant calls iter() on wrap

        self._tqdm = tqdm
        self.stream = stream
        self._bar = tqdm(total=total, initial=initial, desc="perforate", unit="epoch",
                         dynamic_ncols=True, file=stream)
        self._batches: Any = None

    def start_epoch(self, epoch: int, phase: str, batches: int | None) -> None:
        # Updated by hand: the loader is iterated exactly as without progress, so bars never
        # change the data order (a wrapping bar may call iter() twice).
        self._batches = self._tqdm(total=batches, desc=f"epoch {epoch + 1} ({phase})",
                                   unit="batch", leave=False, dynamic_ncols=True,
                                   file=self.stream)

    def batch(self) -> None:
        self._batches.update(1)

    def end_epoch(self, epoch: int, phase: str, dendrites: int, val: float | None) -> None:
        if self._batches is not None:
            self._batches.close()
            self._batches = None
        self._bar.set_postfix(phase=phase, dendrites=dendrites,
                              val=f"{val:.4g}" if val is not None else "-", refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        if self._batches is not None:
            self._batches.close()
        self._bar.close()


def make_progress(enabled: bool, *, total: int | None, initial: int = 0,
                  stream: TextIO | None = None) -> Progress:
    """The display for `fit`: `Silent` if not `enabled`, bars if `stream` (default: stderr)
    is a terminal and tqdm is installed, else plain lines."""
    if not enabled:
        return Silent()
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        if available("tqdm"):
            return BarProgress(stream, total, initial)
        logger.info("progress bars need tqdm: pip install 'perforate[train]'; printing plain "
                    "lines instead")
    return LineProgress(stream, total)
