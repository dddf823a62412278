"""`RunFiles`: what a run writes into its ``out_dir`` and when.

``history.csv``, ``architectures.csv``, ``summary.json`` and ``training.png`` at every phase
switch and at the end; ``model/`` (the final model) at the end; ``checkpoint/`` at every phase
switch, at the end and every ``checkpoint_every`` epochs. One writer per ``out_dir``
(`perforate.training.lock`): the lock is taken when the files are made (rank 0 only) and let go
once the run is done.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._extras import available, require
from ..io.storage import NET_FILE, save_pretrained
from . import artifacts
from .checkpoint import write_checkpoint
from .lock import RunLock

if TYPE_CHECKING:
    from ..engine.model import PerforatedModel

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
"""The final model's directory in ``out_dir``."""


class RunFiles:
    """The files of one run in `out_dir` (None: none are written).

    `checkpoint_every`: also checkpoint every N epochs (needs `out_dir`). `plot`: write
    training.png (default: if matplotlib is installed; ``True`` requires it at once).
    `net_factory`: "module:function" that builds the network, recorded for the CLI. `main`:
    this process writes (rank 0, or a single process); `owner`: the object the lock names.
    """

    def __init__(self, out_dir: str | Path | None = None, *, checkpoint_every: int | None = None,
                 plot: bool | None = None, net_factory: str | None = None, main: bool = True,
                 owner: object = None) -> None:
        if checkpoint_every is not None:
            if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) \
                    or checkpoint_every < 1:
                raise ValueError(f"checkpoint_every must be an int >= 1, got {checkpoint_every!r}")
            if out_dir is None:
                raise ValueError("checkpoint_every needs out_dir")
        if net_factory is not None and (not isinstance(net_factory, str)
                                        or ":" not in net_factory):
            raise ValueError(f"net_factory must be a 'module:function' string, got "
                             f"{net_factory!r}")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.plot = _plot_setting(plot, out_dir)
        self.net_factory = net_factory
        self.main = main
        self.lock = RunLock(self.out_dir, owner=owner if owner is not None else self) \
            if self.out_dir is not None and main else None
        """One writer per out_dir (`perforate.training.lock`); released once done."""

    def settings(self) -> dict[str, Any]:
        """The constructor's arguments (plain values), as saved in checkpoints."""
        return {"out_dir": None if self.out_dir is None else str(self.out_dir),
                "checkpoint_every": self.checkpoint_every, "plot": self.plot,
                "net_factory": self.net_factory}

    def after_step(self, tracker: Any, *, epoch: int, final: bool, switch: bool) -> None:
        """Write what epoch `epoch` calls for: artifacts at a phase `switch` and at the end
        (`final`), the model at the end, a checkpoint then and every `checkpoint_every`."""
        if self.out_dir is None or not self.main:
            return
        if self.lock is not None:
            self.lock.check()
        every = self.checkpoint_every
        periodic = every is not None and epoch % every == 0
        if switch or final:
            self.write_artifacts(tracker)
        if final:  # the model before the checkpoint that says done (resume rebuilds it)
            self.save_model(tracker.perforated, self.out_dir / MODEL_DIR)
        if switch or final or periodic:
            tracker.save_checkpoint(self.out_dir / artifacts.CHECKPOINT_DIR)
        if final:
            self.close()

    def close(self) -> None:
        """Let go of ``out_dir`` (its lock): another run may write there."""
        if self.lock is not None:
            self.lock.release()

    def write_artifacts(self, tracker: Any, out_dir: str | Path | None = None) -> Path:
        """Write `tracker`'s history.csv, architectures.csv, summary.json (and training.png)
        into `out_dir` (default: the run's)."""
        target = out_dir if out_dir is not None else self.out_dir
        if target is None:
            raise ValueError("write_artifacts() needs out_dir (here or in the constructor)")
        return artifacts.write_run_artifacts(tracker, target, plot=self.plot)

    def save_model(self, model: PerforatedModel, directory: str | Path) -> Path:
        """``model.save_pretrained(directory)`` plus ``perforate_net.json`` naming the network
        factory, published whole (`perforate.io.storage.save_pretrained`)."""
        net = json.dumps({"net_factory": self.net_factory}, indent=2) + "\n"
        return save_pretrained(model, directory, extra_files={NET_FILE: net.encode("utf-8")})

    def save_checkpoint(self, directory: str | Path, state: Mapping[str, Any],
                        meta: Mapping[str, Any], config: Mapping[str, Any]) -> Path:
        """Write `state` as ``checkpoint.pt`` and `meta` (plus `net_factory` and the model's
        `config`) as ``checkpoint.json`` into `directory` (`perforate.training.checkpoint`)."""
        return write_checkpoint(directory, state, {**meta, "net_factory": self.net_factory,
                                                   "config": dict(config)})


def _plot_setting(plot: bool | None, out_dir: str | Path | None) -> bool:
    """``plot=True`` needs matplotlib now (not at the first phase switch); ``None`` plots if
    matplotlib is installed and says once that training.png is skipped if not."""
    if plot is None:
        plot = available("matplotlib")
        if not plot and out_dir is not None:
            logger.warning("training.png is not written: it needs matplotlib, "
                           "pip install 'perforate[train]'")
    elif plot:
        require("matplotlib", "train", "Tracker(plot=True) (training.png)")
    return bool(plot)
