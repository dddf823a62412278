"""The schedule's actions carried out on a `Tracker`'s model and collaborators: a cycle's end
(restore its best weights, record it), growth (a dendrite phase, or a set added at once), a
set's installation, a retry (back to the best cycle) and the final revert."""

from __future__ import annotations

import logging
from typing import Any

from ..engine.model import DENDRITE
from .schedule import GROW, INSTALL, RESTART, RETRY, STOP, ScheduleDecision

#: The `perforate.training.tracker.Tracker` these functions act on (not imported: the tracker
#: imports this module).
Tracker = Any

logger = logging.getLogger("perforate.training.tracker")


def restructure(t: Tracker, decision: ScheduleDecision) -> None:
    """Carry out what `decision` (the schedule's answer to the last epoch) asks for."""
    event = decision.action
    if decision.cycle_ended:
        end_cycle(t)
    if event == RETRY:
        restore_best(t, drop_set=t.schedule.add_dendrites)
    if event in (GROW, RETRY) and t.schedule.add_dendrites:
        grow(t)
    elif event in (RESTART, RETRY):
        begin_cycle(t)
    elif event == INSTALL:
        install(t, t.perforated.end_dendrite_phase(), decision.reason)
    elif event == STOP:
        finish(t)


def end_cycle(t: Tracker) -> None:
    """Restore the cycle's best weights and record its architecture."""
    result = t.schedule.cycle_results[-1]
    t.snapshots.restore_cycle_best(t.perforated)
    t.records.add_cycle(result, t.perforated.num_dendrites)
    if result.improved:
        t.snapshots.promote_cycle()


def grow(t: Tracker) -> None:
    """Begin a dendrite phase, or add the set at once when candidates are not trained."""
    attempt = t.schedule.failed_tries
    if t.perforated.trains_candidates:
        t.perforated.begin_dendrite_phase(attempt)
        t.optimization.use_candidates(t.perforated)
        return
    stats = t.perforated.grow(attempt)
    install(t, stats, t.schedule.skip_dendrite_phase().reason)


def install(t: Tracker, stats: dict[str, dict[str, float]], reason: str) -> None:
    """Record the installed set and begin the next neuron cycle."""
    t.records.add_dendrite_phase({
        "set": t.perforated.num_dendrites, "epochs": t.schedule.dendrite_epochs,
        "end_epoch": t.schedule.epoch, "reason": reason, "layers": stats})
    begin_cycle(t)


def restore_best(t: Tracker, *, drop_set: bool) -> None:
    """A retry: back to the best cycle's architecture (dropping the set that did not
    improve) and weights; dendrite epochs then record the best cycle's scores."""
    final = t.final_architecture
    if final is None:  # pragma: no cover
        raise RuntimeError("no completed cycle to retry from")
    while drop_set and t.perforated.num_dendrites > final["dendrites"]:
        t.perforated.remove_last_dendrites()
    t.snapshots.restore_best(t.perforated)
    t.records.restored_scores = {
        "train": final["train_at_best_val"], "val": final["best_val"],
        "test": final["test_at_best_val"],
        **{k: final.get(f"{k}_at_best_val") for k in t.records.extra_names}}


def begin_cycle(t: Tracker) -> None:
    """A fresh optimizer and records for the next neuron cycle."""
    t.records.begin_cycle(t.perforated.count_parameters())
    t.optimization.renew(t.perforated)


def finish(t: Tracker) -> None:
    """Revert to the best cycle's architecture and weights (the final model)."""
    if t.perforated.phase == DENDRITE:  # stopped by max_epochs inside a dendrite phase
        t.perforated.end_dendrite_phase()
        t.perforated.remove_last_dendrites()
    final = t.final_architecture
    if final is None:  # pragma: no cover
        raise RuntimeError("no completed cycle to finish with")
    while t.perforated.num_dendrites > final["dendrites"]:
        t.perforated.remove_last_dendrites()
    t.snapshots.restore_best(t.perforated)
    t.records.finish(final, t.perforated.count_parameters())
    t.optimization.renew(t.perforated)
    logger.info("done after %d epochs: %s; final model: cycle %d, %d dendrite set(s), "
                "best val %.6g", t.epoch, t.schedule.stop_reason, final["cycle"],
                final["dendrites"], final["best_val"])
