"""`Tracker`, `Decision` and `resume`, importable from here as before the split into
`perforate.training` (`training.tracker`, `training.run_files`, `training.state`,
`training.restructure`, `training.resume`)."""

from __future__ import annotations

from .storage import NET_FILE
from .training.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_META,
    FORMAT,
    FORMAT_VERSION,
    checkpoint_file,
    read_checkpoint,
)
from .training.optimizers import OptimizerFactory, SchedulerFactory
from .training.resume import resume
from .training.run_files import MODEL_DIR
from .training.tracker import Decision, Tracker

__all__ = ["CHECKPOINT_FILE", "CHECKPOINT_META", "FORMAT", "FORMAT_VERSION", "MODEL_DIR",
           "NET_FILE", "Decision", "OptimizerFactory", "SchedulerFactory", "Tracker",
           "checkpoint_file", "read_checkpoint", "resume"]
