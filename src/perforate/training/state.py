"""A `Tracker`'s state as one dict (what ``checkpoint.pt`` holds) and its settings' layout.

Settings: ``{"schedule": {...Schedule settings...}, "out_dir", "checkpoint_every", "plot",
"net_factory", "scheduler_interval"}``. Checkpoints of perforate 0.1.0 hold the schedule's
settings flat, beside the others; `split_settings` reads both layouts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from ..engine.model import NEURON
from ..errors import LoadError
from .checkpoint import FORMAT, FORMAT_VERSION
from .schedule import SETTINGS, Schedule

#: The `perforate.training.tracker.Tracker` these functions act on (not imported: the tracker
#: imports this module).
Tracker = Any

logger = logging.getLogger(__name__)


def split_settings(settings: Mapping[str, Any]) -> tuple[Schedule, dict[str, Any]]:
    """``(schedule, the Tracker's other keyword arguments)`` of saved `settings`, nested
    (``settings["schedule"]``) or flat (0.1.0)."""
    rest = dict(settings)
    nested = rest.pop("schedule", None)
    if nested is None:  # 0.1.0: flat
        nested = {k: rest.pop(k) for k in SETTINGS if k in rest}
    return Schedule(**nested), rest


def tracker_state(tracker: Tracker, *, include_rng: bool = False) -> dict[str, Any]:
    """See `Tracker.state_dict`."""
    model = tracker.perforated
    sd: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "settings": tracker.settings(), "config": json.dumps(model.config.to_dict()),
        "model": model.training_state(),
        **tracker.optimization.state_dict(model.phase == NEURON),
        "schedule": tracker.schedule.state_dict(),
        **tracker.snapshots.state_dict(),
        **tracker.records.state_dict(),
    }
    if include_rng:
        sd["rng"] = tracker.rng.state()
        if tracker.rank_rng is not None:  # rank r resumes with its own states
            sd["rng_ranks"] = tracker.rank_rng
    return sd


def load_tracker_state(tracker: Tracker, state: Mapping[str, Any], *,
                       restore_rng: bool = True) -> None:
    """See `Tracker.load_state_dict`."""
    if state.get("format") != FORMAT or state.get("format_version") != FORMAT_VERSION:
        raise LoadError(f"not a perforate tracker state (format {state.get('format')!r} "
                        f"v{state.get('format_version')!r})")
    model = tracker.perforated
    model.load_training_state(state["model"])
    tracker.schedule.load_state_dict(
        {k: v for k, v in state["schedule"].items() if k not in SETTINGS})
    tracker.optimization.load_state_dict(model, model.phase == NEURON,
                                         state["optimizer"], state["scheduler"])
    device = next(iter(model.state_dict().values())).device
    tracker.snapshots.load_state_dict(state, device)
    tracker.records.load_state_dict(state, model.count_parameters())
    if restore_rng and state.get("rng") is not None:
        tracker.rng.restore(_own_rng(tracker, state))
    tracker.rewrap()
    tracker.last_time = time.perf_counter()


def _own_rng(tracker: Tracker, state: Mapping[str, Any]) -> Mapping[str, Any]:
    """This rank's saved RNG states: its own when the checkpoint holds every rank's for the
    same number of ranks, else rank 0's (with a warning in a distributed run)."""
    ranks, sync = state.get("rng_ranks"), tracker.sync
    if sync is None:
        return state["rng"]
    if ranks is not None and len(ranks) == sync.world:
        return ranks[sync.rank]
    if sync.rank:
        logger.warning("the checkpoint holds no RNG states for %d ranks: rank %d resumes with "
                       "rank 0's (dropout and shuffles may differ from an uninterrupted run)",
                       sync.world, sync.rank)
    return state["rng"]
