"""`resume`: a checkpoint's tracker rebuilt around a fresh network, to continue the run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import LoadError
from ..io.rebuild import rebuild
from ..io.storage import model_is_whole
from .checkpoint import checkpoint_file, read_checkpoint, run_settings, saved_config
from .optimizers import OptimizerFactory, SchedulerFactory
from .run_files import MODEL_DIR
from .schedule import Schedule
from .state import split_settings
from .tracker import Tracker

logger = logging.getLogger(__name__)


def resume(directory: str | Path, net: nn.Module, optimizer_factory: OptimizerFactory,
           scheduler_factory: SchedulerFactory | None = None, *, registry: Any = None,
           device: str | torch.device | None = None, restore_rng: bool = True,
           schedule: Schedule | None = None, **tracker_kwargs: Any) -> Tracker:
    """Rebuild the tracker of a checkpoint around a fresh `net` (same architecture as the
    original network before perforation) and continue with ``pf.fit(..., tracker=t)``.

    The saved settings are used unless overridden: the schedule's by `schedule` (its settings;
    the run's state comes from the checkpoint), the others by `tracker_kwargs` (`Tracker`'s
    keyword arguments). Checkpoints of perforate 0.1.0 (flat settings) are read too. Global
    RNG states are restored (`restore_rng`), so the run continues exactly as if it had never
    stopped.
    """
    path = checkpoint_file(directory)
    state = read_checkpoint(path)
    try:
        model = rebuild(net, saved_config(state), registry=registry, device=device)
    except LoadError as exc:
        raise LoadError(f"{path}: {exc}") from exc
    saved, settings = split_settings(run_settings(state, path))  # out_dir: where it is now
    settings.update(tracker_kwargs)
    tracker = Tracker(model, optimizer_factory, scheduler_factory,
                      schedule=schedule if schedule is not None else saved, **settings)
    try:
        tracker.load_state_dict(state, restore_rng=restore_rng)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise LoadError(f"{path}: the checkpoint does not fit the network: {exc}") from exc
    files = tracker.files
    if tracker.done and files.out_dir is not None and tracker.is_main:
        model_dir = files.out_dir / MODEL_DIR  # a kill or full disk during the final save
        if not model_is_whole(model_dir):
            logger.warning("%s is missing or incomplete: rebuilt from the checkpoint", model_dir)
            tracker.save_model(model_dir)
        tracker.close()
    logger.info("resumed at epoch %d (%s phase, cycle %d, %d dendrite set(s))", tracker.epoch,
                tracker.phase, tracker.schedule.cycle, model.num_dendrites)
    return tracker
