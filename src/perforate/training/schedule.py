"""`Schedule`: when to grow. The pure decision logic of the paper's cycle (no model inside).

Fed one epoch at a time (a validation score in the neuron phase, the largest correlation gain
in the dendrite phase), it answers what the controller must do next::

    neuron cycle 0 -> dendrite phase 1 -> neuron cycle 1 -> dendrite phase 2 -> ... -> stop

- A neuron cycle ends after ``neuron_patience`` epochs without a new best validation score.
  Each cycle's best starts at "none": only epochs trained after the switch count. A cycle
  after the first (after a growth, or a restart in the restart control) does not end before
  its ``grace_epochs``-th epoch: a new set starts with output weight 0 and needs epochs to act.
- A cycle that does not beat the best earlier cycle (a tie is no improvement) ends training,
  unless fewer than ``min_dendrites`` growth steps were tried. With ``min_dendrites=0`` the best
  earlier cycle is the previous one, which is the paper's rule.
- With ``dendrite_tries = t > 1``, a cycle that does not improve is retried up to t - 1 times
  in a row before training stops: its set is dropped, the best cycle's weights come back and
  a new set is grown (the restart control restarts from the best weights instead).
- A dendrite phase ends when the best correlation gain (``plateau="max"``: the largest
  per-neuron gain of any layer; ``"mean"``: the gain of the mean over all neurons) stayed
  at most ``correlation_threshold`` for ``dendrite_patience`` epochs, or after
  ``max_dendrite_epochs``.
- The final model is the best cycle's architecture with its best weights (`best_cycle`).

``add_dendrites=False`` is the restart control: the same cycles, restores and fresh optimizers,
with no dendrite phase (a cycle end is followed directly by the next neuron cycle).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

NEURON, DENDRITE = "neuron", "dendrite"

#: Actions a `ScheduleDecision` can ask for.
CONTINUE = "continue"
"""Keep training in the same phase."""
GROW = "grow"
"""The neuron cycle ended: restore its best weights and start a dendrite phase."""
RESTART = "restart"
"""The neuron cycle ended (restart control): restore its best weights, start the next cycle."""
INSTALL = "install"
"""The dendrite phase ended: install the dendrite set and start the next neuron cycle."""
STOP = "stop"
"""Training is done: restore the best cycle's architecture and weights."""
RETRY = "retry"
"""The neuron cycle did not improve, but tries are left (``dendrite_tries``): drop its
dendrite set, restore the best cycle's weights and grow again (restart control: restart)."""

ACTIONS = (CONTINUE, GROW, RESTART, INSTALL, STOP, RETRY)
PLATEAUS = ("max", "mean")


@dataclass(frozen=True)
class ScheduleDecision:
    """What one epoch decided."""

    action: str
    """One of `ACTIONS`."""
    new_best: bool = False
    """This neuron epoch is the cycle's new best: snapshot the weights (before `action`)."""
    cycle_ended: bool = False
    """This epoch closed a neuron cycle (its result is in `Schedule.cycle_results`)."""
    reason: str = ""
    """Why a cycle or phase ended, or why training stopped."""


@dataclass
class CycleResult:
    """The outcome of one neuron cycle (one architecture)."""

    cycle: int
    best: float
    best_epoch: int
    """Global epoch (1-based) of the cycle's best score."""
    epochs: int
    """Neuron-phase epochs trained in the cycle."""
    dendrite_epochs: int
    """Epochs of the dendrite phase that built this architecture (0 for cycle 0)."""
    improved: bool
    """True if it beat every earlier cycle (the first cycle counts as improved)."""


@dataclass
class Schedule:
    """The cycle's state machine. Call `neuron_epoch` / `dendrite_epoch` once per epoch.

    All arguments are validated; see the module docstring for the rules.
    """

    mode: str = "max"
    neuron_patience: int = 25
    dendrite_patience: int = 3
    max_dendrite_epochs: int = 25
    max_dendrites: int | None = None
    improvement_threshold: float = 0.0
    correlation_threshold: float = 1e-3
    min_dendrites: int = 0
    add_dendrites: bool = True
    max_epochs: int | None = None
    dendrite_tries: int = 1
    plateau: str = "max"
    grace_epochs: int = 0

    # ------------------------------------------------------------------- state (not arguments)
    phase: str = field(default=NEURON, init=False)
    epoch: int = field(default=0, init=False)
    """Epochs seen so far (all phases)."""
    cycle: int = field(default=0, init=False)
    """Index of the current (or last) neuron cycle; also the growth steps taken."""
    cycle_epochs: int = field(default=0, init=False)
    cycle_best: float | None = field(default=None, init=False)
    cycle_best_epoch: int = field(default=0, init=False)
    since_best: int = field(default=0, init=False)
    dendrite_epochs: int = field(default=0, init=False)
    """Epochs of the current (or last) dendrite phase."""
    dendrite_stale: int = field(default=0, init=False)
    retries: int = field(default=0, init=False)
    """Cycles that were retries of a set that did not improve (all of the run)."""
    failed_tries: int = field(default=0, init=False)
    """Retries since the last improving cycle."""
    best_cycle: int | None = field(default=None, init=False)
    """The completed cycle with the best score so far (the final model's cycle)."""
    cycle_results: list[CycleResult] = field(default_factory=list, init=False)
    done: bool = field(default=False, init=False)
    stop_reason: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError/TypeError naming the first invalid argument."""
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")
        _check_int("neuron_patience", self.neuron_patience, minimum=1)
        _check_int("dendrite_patience", self.dendrite_patience, minimum=1)
        _check_int("max_dendrite_epochs", self.max_dendrite_epochs, minimum=1)
        _check_int("min_dendrites", self.min_dendrites, minimum=0)
        _check_int("dendrite_tries", self.dendrite_tries, minimum=1)
        _check_int("grace_epochs", self.grace_epochs, minimum=0)
        if self.plateau not in PLATEAUS:
            raise ValueError(f"plateau must be one of {PLATEAUS}, got {self.plateau!r}")
        if self.max_dendrites is not None:
            _check_int("max_dendrites", self.max_dendrites, minimum=0)
            if self.max_dendrites < self.min_dendrites:
                raise ValueError(f"max_dendrites ({self.max_dendrites}) is below min_dendrites "
                                 f"({self.min_dendrites})")
        if self.max_epochs is not None:
            _check_int("max_epochs", self.max_epochs, minimum=1)
        for name in ("improvement_threshold", "correlation_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
        if not isinstance(self.add_dendrites, bool):
            raise TypeError(f"add_dendrites must be a bool, got {self.add_dendrites!r}")

    # --------------------------------------------------------------------------- queries
    def better(self, score: float, reference: float | None) -> bool:
        """True if `score` improves on `reference` by more than the threshold (None: always)."""
        if reference is None:
            return True
        if self.mode == "max":
            return score > reference + self.improvement_threshold
        return score < reference - self.improvement_threshold

    @property
    def growth_steps(self) -> int:
        """Dendrite sets in the current architecture (restarts in the restart control): the
        cycle index less the retries, since a retried set replaces the one that failed."""
        return self.cycle - self.retries

    # ------------------------------------------------------------------------- transitions
    def neuron_epoch(self, score: float) -> ScheduleDecision:
        """One neuron-phase epoch with validation score `score` (finite)."""
        self._require(NEURON)
        if not math.isfinite(score):
            raise ValueError(f"the validation score must be finite, got {score!r}")
        self.epoch += 1
        self.cycle_epochs += 1
        new_best = self.better(score, self.cycle_best)
        if new_best:
            self.cycle_best, self.cycle_best_epoch, self.since_best = score, self.epoch, 0
        else:
            self.since_best += 1
        capped = self.max_epochs is not None and self.epoch >= self.max_epochs
        judged = self.cycle == 0 or self.cycle_epochs >= self.grace_epochs
        if (self.since_best >= self.neuron_patience and judged) or capped:
            action, reason = self._end_cycle(capped)
            return ScheduleDecision(action, new_best=new_best, cycle_ended=True, reason=reason)
        return ScheduleDecision(CONTINUE, new_best=new_best)

    def dendrite_epoch(self, improvement: float,
                       mean_improvement: float | None = None) -> ScheduleDecision:
        """One dendrite-phase epoch; `improvement` is the largest gain of any layer's best
        |correlation| this epoch (`EpochReport.improvement`, maximised over layers),
        `mean_improvement` the gain of the mean best |correlation| over all neurons (needed
        with ``plateau="mean"``)."""
        self._require(DENDRITE)
        if self.plateau == "mean":
            if mean_improvement is None:
                raise ValueError("plateau='mean' needs the mean_improvement of the epoch")
            improvement = mean_improvement
        self.epoch += 1
        self.dendrite_epochs += 1
        if improvement > self.correlation_threshold:
            self.dendrite_stale = 0
        else:
            self.dendrite_stale += 1
        if self.max_epochs is not None and self.epoch >= self.max_epochs:
            return self._stop(f"max_epochs ({self.max_epochs}) reached in a dendrite phase")
        if self.dendrite_stale >= self.dendrite_patience:
            reason = f"correlation plateau ({self.dendrite_patience} epochs)"
        elif self.dendrite_epochs >= self.max_dendrite_epochs:
            reason = f"max_dendrite_epochs ({self.max_dendrite_epochs})"
        else:
            return ScheduleDecision(CONTINUE)
        self._begin_cycle()
        return ScheduleDecision(INSTALL, reason=reason)

    def skip_dendrite_phase(self) -> ScheduleDecision:
        """The set was added without a dendrite phase (no candidate training): start the
        next neuron cycle at once."""
        self._require(DENDRITE)
        self._begin_cycle()
        return ScheduleDecision(INSTALL, reason="no candidate training")

    def _end_cycle(self, capped: bool) -> tuple[str, str]:
        best = self.cycle_best
        if best is None:  # pragma: no cover - the first epoch of a cycle always sets a best
            raise RuntimeError("a neuron cycle ended without a score")
        reference = None if self.best_cycle is None else self.cycle_results[self.best_cycle].best
        improved = self.better(best, reference)
        if improved:
            self.best_cycle, self.failed_tries = self.cycle, 0
        self.cycle_results.append(CycleResult(
            cycle=self.cycle, best=best, best_epoch=self.cycle_best_epoch,
            epochs=self.cycle_epochs, dendrite_epochs=self.dendrite_epochs if self.cycle else 0,
            improved=improved))
        steps = self.growth_steps
        retry = not improved and self.failed_tries + 1 < self.dendrite_tries and not capped
        if retry and steps >= self.min_dendrites:
            self.failed_tries += 1
            reason = (f"cycle {self.cycle} did not improve on cycle {self.best_cycle}: retry "
                      f"{self.failed_tries} of {self.dendrite_tries - 1}")
            self.retries += 1
            if self.add_dendrites:
                self.phase, self.dendrite_epochs, self.dendrite_stale = DENDRITE, 0, 0
            else:
                self._begin_cycle()
            return RETRY, reason
        if not improved and steps >= self.min_dendrites:
            reason = f"cycle {self.cycle} did not improve on cycle {self.best_cycle}"
        elif self.max_dendrites is not None and steps >= self.max_dendrites:
            reason = f"max_dendrites ({self.max_dendrites}) reached"
        elif capped:
            reason = f"max_epochs ({self.max_epochs}) reached"
        else:
            patience = f"no improvement for {self.neuron_patience} epochs"
            if self.add_dendrites:
                self.phase, self.dendrite_epochs, self.dendrite_stale = DENDRITE, 0, 0
                return GROW, patience
            self._begin_cycle()
            return RESTART, patience
        return self._stop(reason).action, reason

    def _begin_cycle(self) -> None:
        self.phase = NEURON
        self.cycle += 1
        self.cycle_epochs, self.cycle_best, self.cycle_best_epoch, self.since_best = 0, None, 0, 0

    def _stop(self, reason: str) -> ScheduleDecision:
        self.done, self.stop_reason = True, reason
        return ScheduleDecision(STOP, reason=reason)

    def _require(self, phase: str) -> None:
        if self.done:
            raise RuntimeError("the schedule is done: training has stopped")
        if self.phase != phase:
            raise RuntimeError(f"expected a {self.phase}-phase epoch, got a {phase}-phase one")

    # ------------------------------------------------------------------------ settings
    def settings(self) -> dict[str, Any]:
        """The constructor's arguments (`SETTINGS`), as a `Tracker` saves them."""
        return {name: getattr(self, name) for name in SETTINGS}

    def fresh(self) -> Schedule:
        """A new schedule with these settings and no run state (a tracker's own copy)."""
        return Schedule(**self.settings())

    # ------------------------------------------------------------------------ state dict
    def state_dict(self) -> dict[str, Any]:
        """Plain values (ints, floats, strings, lists, dicts) only."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["cycle_results"] = [dataclasses.asdict(r) for r in self.cycle_results]
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict` (arguments included)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(state) - names)
        if unknown:
            raise ValueError(f"unknown schedule state key(s): {', '.join(unknown)}")
        for name, value in state.items():
            if name == "cycle_results":
                value = [CycleResult(**r) for r in value]
            setattr(self, name, value)
        self.validate()


SETTINGS = tuple(f.name for f in dataclasses.fields(Schedule) if f.init)
"""The schedule's settings (its constructor's arguments), in order."""


def reject_moved_settings(where: str, kwargs: dict[str, Any], *, via: str | None = None) -> None:
    """Raise TypeError for keyword arguments `where` (e.g. "Tracker") does not take: a schedule
    setting with the migration hint (they are given once, in `Schedule`), else as Python
    would for an unexpected keyword. `via`: the dict argument they came in (e.g.
    "tracker_kwargs")."""
    for name, value in kwargs.items():
        if name in SETTINGS:
            old = f"{via}={{{name!r}: {value!r}}}" if via else f"{name}={value!r}"
            raise TypeError(f"{where}({old}) is now {where}(schedule=pf.Schedule("
                            f"{name}={value!r})): the schedule's settings live in pf.Schedule "
                            f"(CHANGELOG.md, Migration)")
    if kwargs:
        raise TypeError(f"{where}() got an unexpected keyword argument {next(iter(kwargs))!r}")


def monitored(schedule: Schedule | None, mode: str) -> Schedule:
    """A callback's schedule: `schedule`'s settings (default ``Schedule()``) with `mode`, the
    monitored metric's direction. A `schedule` with another non-default mode is a conflict."""
    schedule = schedule if schedule is not None else Schedule()
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a pf.Schedule, got {type(schedule).__name__}")
    if schedule.mode not in ("max", mode):
        raise ValueError(f"schedule.mode ({schedule.mode!r}) differs from mode ({mode!r}), "
                         "the monitored metric's direction: give it once, as mode")
    return Schedule(**{**schedule.settings(), "mode": mode})


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
