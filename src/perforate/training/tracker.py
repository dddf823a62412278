"""`Tracker`: runs the paper's cycle on a `PerforatedModel`, one ``step()`` per epoch.

    tracker = pf.Tracker(model, lambda params: torch.optim.Adam(params, 1e-3),
                         schedule=pf.Schedule(neuron_patience=10))
    while not tracker.done:
        train_one_epoch(tracker.model, tracker.optimizer)  # candidates' in a dendrite phase
        d = tracker.step(val_score)                 # val_score=None is fine in a dendrite phase

The tracker owns the optimizers: a fresh one per neuron cycle from ``optimizer_factory(params)``
(``params``: the trainable parameters, named in ``params.named``, see `perforate.param_groups`)
and ``scheduler_factory(optimizer)``, stepped once per neuron-phase epoch inside `step`
(``ReduceLROnPlateau`` gets the validation score) or, with ``scheduler_interval="batch"``, per
batch by `batch_step`. It keeps the best weights of the current and of the best cycle, restores
them at each cycle end and at the final revert, and checkpoints everything, RNGs included, for
an exact `resume`. It conducts; its collaborators do the jobs: `schedule` (when to grow),
`optimization`, `snapshots` (best weights), `records` (history...), `rng`, `files` (what is
written into ``out_dir``), `perforate.training.restructure` (the schedule's actions on the
model) and `perforate.training.state` (the state dict).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.model import DENDRITE, NEURON, PerforatedModel
from ..errors import DistributedError, PhaseError
from ..parallel.ddp import Wrap, check_not_sharded, is_ddp, retire, rewrap, wrap_like
from ..parallel.distributed import DistributedSync
from .finite import check_parameters, check_score
from .optimizers import Optimization, OptimizerFactory, SchedulerFactory
from .records import RunRecords, opt_float
from .restructure import restructure
from .rng import TrackedGenerators
from .run_files import RunFiles
from .schedule import CONTINUE, STOP, Schedule, reject_moved_settings
from .snapshots import WeightSnapshots
from .state import load_tracker_state, tracker_state

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """What `Tracker.step` did. After ``restructured``, use ``tracker.optimizer`` (and
    ``tracker.scheduler``): the old ones no longer train anything."""

    phase: str
    """Phase of the next epoch ("neuron" or "dendrite")."""
    restructured: bool
    """The optimizer was replaced (cycle end, dendrite phase begun or ended, final revert)."""
    done: bool
    """Training has stopped; the model holds the final architecture and weights."""
    event: str
    """"continue", "grow", "restart", "install", "retry" or "stop"."""
    epoch: int
    """Epochs completed (all phases)."""
    cycle: int
    """Current neuron cycle (the one the next epoch belongs to)."""
    dendrites: int
    """Dendrite sets installed in the model now."""
    new_best: bool = False
    """This epoch set the cycle's best validation score."""
    reason: str = ""


class Tracker:
    """The cycle controller (algorithm.md, "The cycle"). See the module docstring.

    `schedule`: when to grow (`perforate.Schedule`; default ``Schedule()``); the tracker runs
    its own copy of it (``tracker.schedule``, with the run's state). `out_dir`,
    `checkpoint_every`, `plot`, `net_factory`: the run's files (`RunFiles`, ``tracker.files``).
    `scheduler_interval`: "epoch" (`step` steps the scheduler) or "batch" (`batch_step` does,
    after every neuron-phase optimizer step).

    Distributed (``docs/distributed.md``): `model` may be a `DistributedDataParallel` around the
    `PerforatedModel` (a template: rebuilt after every restructure), or pass the model and
    ``wrap`` (``PerforatedModel -> nn.Module``, e.g. ``lambda m: DDP(m, device_ids=[i])``).
    Then train with ``tracker.model`` (the wrapper in a neuron phase) and evaluate
    ``tracker.perforated``; candidate statistics, candidate gradients and the scores given to
    `step` (their mean) are reduced across ranks, and only rank 0 writes files.

    Divergence: after a neuron-phase epoch `step` checks every parameter (one host sync) and
    the validation score, and raises `NonFiniteError` naming the first non-finite parameter and
    its layer, or the score, before it records or restores anything: the model keeps the
    non-finite weights (to inspect); go on from the last checkpoint (``resume``), e.g. with a
    lower learning rate. A diverged cycle is never a reason to grow.
    """

    def __init__(self, model: PerforatedModel | nn.Module, optimizer_factory: OptimizerFactory,
                 scheduler_factory: SchedulerFactory | None = None, *,
                 schedule: Schedule | None = None, out_dir: str | Path | None = None,
                 checkpoint_every: int | None = None, plot: bool | None = None,
                 net_factory: str | None = None, scheduler_interval: str = "epoch",
                 wrap: Wrap | None = None, **moved: Any) -> None:
        reject_moved_settings("Tracker", moved)
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a pf.Schedule, got {type(schedule).__name__}")
        check_not_sharded(model)
        group = None
        if is_ddp(model):  # a template: rebuilt at once and after every restructure
            wrap = wrap or wrap_like(model)  # type: ignore[arg-type]
            group = model.process_group
            retire(model)
            model = model.module
        if not isinstance(model, PerforatedModel):
            raise TypeError(f"Tracker needs a PerforatedModel (pf.perforate(net)), got "
                            f"{type(model).__name__}")
        if model.phase != NEURON:
            raise PhaseError("Tracker needs a model in the neuron phase")
        self.schedule = (schedule or Schedule()).fresh()
        """When to grow, and the run's state (`perforate.training.schedule`)."""
        self.perforated = model
        """The `PerforatedModel` (never wrapped): evaluate, save, export it; train `model`."""
        self.wrap = wrap
        self.sync = DistributedSync(group) if wrap is not None else None
        """The collectives of a distributed run (None on one process)."""
        model.set_distributed(self.sync)
        if self.sync is not None:  # the batches whose number the ranks compare at `step`
            self.sync.count_forwards(model)
        self._wrapped: nn.Module = model
        self.rewrap()
        self.optimization = Optimization(optimizer_factory, scheduler_factory,
                                         scheduler_interval)
        """The optimizer and scheduler of the next epoch (`perforate.training.optimizers`)."""
        self.records = RunRecords(model.count_parameters())
        """History and the other records (`perforate.training.records`)."""
        self.snapshots = WeightSnapshots()
        """Best weights of the current and of the best cycle (`perforate.training.snapshots`)."""
        self.rng = TrackedGenerators()
        self.rank_rng: list[dict[str, Any]] | None = None  # every rank's, at the last step
        self.optimization.renew(model)
        self.last_time = time.perf_counter()
        self.files = RunFiles(out_dir, checkpoint_every=checkpoint_every, plot=plot,
                              net_factory=net_factory, main=self.is_main, owner=self)
        """What the run writes into ``out_dir`` (`perforate.training.run_files`)."""

    # ----------------------------------------------------------------------------- queries
    @property
    def model(self) -> nn.Module:
        """The module to call in the training loop this epoch (``tracker.model(x)``): in a
        distributed neuron phase the `DistributedDataParallel` wrapper of `perforated`
        (rebuilt after every restructure), else `perforated` itself (one process, or a
        dendrite phase, which reduces its own statistics and gradients). Fetch it each
        epoch; so the same loop runs on 1 or N ranks. Once `done`, `perforated`: the
        tracker lets go of its DDP wrapper."""
        return self._wrapped

    @property
    def is_main(self) -> bool:
        """True on rank 0 and on a single process: the rank that writes files."""
        return self.sync is None or self.sync.is_main

    def rewrap(self, done: bool = False) -> None:
        """Rebuild the DDP wrapper of `model` after a restructure (none in a dendrite phase,
        nor once `done`: a wrapper that outlives its process group can abort the process at
        exit; docs/distributed.md)."""
        if self.wrap is None:
            return
        retire(self._wrapped)
        bare = self.perforated.phase == DENDRITE or done
        self._wrapped = self.perforated if bare else rewrap(self.perforated, self.wrap)

    def mean_score(self, value: float) -> float:
        """`value` averaged across ranks (itself on one process)."""
        if self.sync is None:
            return float(value)
        return self.sync.mean_scores([float(value)])[0][0]  # type: ignore[return-value]

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer to train the next epoch with (the candidates' in a dendrite phase)."""
        return self.optimization.optimizer  # type: ignore[return-value]  # set in __init__

    @property
    def scheduler(self) -> Any:
        """The scheduler of `optimizer` (None in a dendrite phase or without a factory)."""
        return self.optimization.scheduler

    @property
    def done(self) -> bool:
        """True once training has stopped (the model holds the final architecture)."""
        return self.schedule.done

    @property
    def phase(self) -> str:
        """Phase of the next epoch ("neuron" or "dendrite")."""
        return self.perforated.phase

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return self.schedule.epoch

    @property
    def final_architecture(self) -> dict[str, Any] | None:
        """The best completed cycle's record (the final model once `done`), or None."""
        best = self.schedule.best_cycle
        return None if best is None else self.records.architectures[best]

    def _current_leads(self) -> bool:
        """The running cycle's best beats the best completed cycle (or none completed)."""
        final, current = self.final_architecture, self.schedule.cycle_best
        if final is None:
            return True
        return current is not None and not self.done and self.schedule.better(
            current, final["best_val"])

    @property
    def best_val(self) -> float | None:
        """Best validation score of the best cycle (so far, if not done)."""
        if self._current_leads():
            return self.schedule.cycle_best
        return self.final_architecture["best_val"]  # type: ignore[index]

    @property
    def test_at_best_val(self) -> float | None:
        """Test score at the epoch of `best_val` (None if no test score was given)."""
        if self._current_leads():
            return self.records.cycle_scores.get("test")
        return self.final_architecture["test_at_best_val"]  # type: ignore[index]

    def error_reduction(self, score: str = "test") -> float | None:
        """``(err_first - err_final) / err_first`` between cycle 0 and the final architecture,
        with ``err = 1 - score`` at best val. `score`: "test", "val" or an extra's name
        (accuracy-like scores in [0, 1]). None before two cycles completed or if missing."""
        return self.records.error_reduction(score, self.final_architecture)

    def settings(self) -> dict[str, Any]:
        """The constructor's keyword arguments (plain values; the schedule's settings under
        "schedule"), as saved in checkpoints and summary.json."""
        return {"schedule": self.schedule.settings(), **self.files.settings(),
                "scheduler_interval": self.optimization.interval}

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` holds: settings, the final architecture, error reduction."""
        records, final = self.records, self.final_architecture
        first = records.architectures[0] if records.architectures else None
        return {"done": self.done, "stop_reason": self.schedule.stop_reason, "epochs": self.epoch,
                "cycles": len(records.architectures), "dendrites": self.perforated.num_dendrites,
                "params": self.perforated.count_parameters(), "best_val": self.best_val,
                "test_at_best_val": self.test_at_best_val, "first": first, "final": final,
                "error_reduction": records.error_reductions(final),
                "wall_seconds": sum(r["seconds"] for r in records.history),
                "settings": self.settings(), "config": self.perforated.config.to_dict(),
                "architectures": records.architectures, "dendrite_phases": records.dendrite_phases}

    # -------------------------------------------------------------------------------- step
    def batch_step(self) -> None:
        """Call after each optimizer step: steps the scheduler when
        ``scheduler_interval="batch"`` (a no-op otherwise and in a dendrite phase, so a
        training loop may always call it). `pf.fit` calls it."""
        if self.perforated.phase == NEURON:
            self.optimization.end_batch()

    def step(self, val_score: float | None = None, *, test_score: float | None = None,
             train_score: float | None = None,
             extra: Mapping[str, float] | None = None) -> Decision:
        """Record one finished epoch and act on it (call once per epoch, after training).

        Neuron phase: `val_score` is required (finite); the scheduler is stepped (with
        ``scheduler_interval="epoch"``). Dendrite phase: calls ``model.end_epoch()`` itself;
        missing scores are recorded as the flat values of the restored weights. `extra`: more
        scores to record (columns of history). Raises `NonFiniteError` if a parameter or the
        validation score is not finite (see the class docstring), `PhaseError` for a
        dendrite epoch without batches.
        """
        if self.done:
            raise PhaseError("training is done: step() after the final decision")
        if self.perforated.phase == NEURON:  # a diverged network is no reason to grow
            check_parameters(self.perforated.net.named_parameters(),
                             self.perforated.dendrite_layers(),
                             context=f"epoch {self.schedule.epoch + 1}: ")
        now = time.perf_counter()
        seconds, self.last_time = now - self.last_time, now
        scores = {"train": opt_float("train_score", train_score),
                  "val": opt_float("val_score", val_score),
                  "test": opt_float("test_score", test_score)}
        extras = self.records.check_extra(extra)
        if self.sync is not None:  # every rank decides on the same (mean) scores
            try:  # the ranks meet, with as many batches each, within the timeout
                self.sync.end_epoch(self.perforated.phase, self.schedule.epoch + 1)
            except DistributedError:
                self.rewrap(done=True)  # no DDP wrapper may outlive the process group
                raise
            names = [*scores, *extras]
            means, (seconds,) = self.sync.mean_scores(
                [*scores.values(), *extras.values()], [seconds])
            merged = dict(zip(names, means, strict=True))
            scores = {k: merged[k] for k in scores}
            extras = {k: merged[k] for k in extras}
        model = self.perforated
        phase, cycle, dendrites = model.phase, self.schedule.cycle, model.num_dendrites
        lr = self.optimization.lr
        corr = None
        if phase == NEURON:
            if scores["val"] is None:
                raise ValueError("step() needs a val_score in the neuron phase")
            check_score("val", scores["val"], context=f"epoch {self.schedule.epoch + 1}: ")
            decision = self.schedule.neuron_epoch(scores["val"])
            if decision.new_best:
                self.snapshots.keep_cycle_best(model)
                self.records.keep_cycle_best(scores, extras, self.schedule.epoch)
            self.optimization.end_epoch(scores["val"])
        else:
            reports = model.end_epoch()
            improvement = max((r.improvement for r in reports.values()), default=0.0)
            best = torch.cat([r.best_corr.reshape(-1) for r in reports.values()])
            corr = float(best.mean()) if best.numel() else 0.0
            sizes = [r.best_corr.numel() for r in reports.values()]
            mean_gain = sum(r.mean_improvement * n for r, n in zip(
                reports.values(), sizes, strict=True)) / max(sum(sizes), 1)
            self.records.fill_flat(scores, extras)
            decision = self.schedule.dendrite_epoch(improvement, mean_gain)
        event = decision.action
        self.records.add_epoch(
            {"epoch": self.schedule.epoch, "phase": phase, "cycle": cycle,
             "dendrites": dendrites, "params": self.records.params, **scores, "lr": lr,
             "corr": corr, "seconds": seconds,
             "event": event if event != CONTINUE else ("best" if decision.new_best else ""),
             **extras}, seconds)

        restructured = event != CONTINUE
        restructure(self, decision)
        if restructured and event != STOP:  # _finish logs the stop
            logger.info("epoch %d: %s (%s); %d dendrite set(s), %d parameters",
                        self.schedule.epoch, event, decision.reason, model.num_dendrites,
                        self.records.params)
        if restructured or self.done:
            self.rewrap(done=self.done)
        if self.sync is not None:  # every rank, every epoch: rank 0 may checkpoint now
            self.rank_rng = self.sync.gather(self.rng.state())
        self.files.after_step(self, epoch=self.schedule.epoch, final=event == STOP,
                              switch=restructured)
        self.last_time = time.perf_counter()
        return Decision(phase=model.phase, restructured=restructured, done=self.done,
                        event=event, epoch=self.schedule.epoch, cycle=self.schedule.cycle,
                        dendrites=model.num_dendrites, new_best=decision.new_best,
                        reason=decision.reason)

    # --------------------------------------------------------------------------- output
    def close(self) -> None:
        """Let go of ``out_dir`` (its lock; done at the end of a run): another run may write
        there, this one writes nothing more there."""
        self.files.close()

    def write_artifacts(self, out_dir: str | Path | None = None) -> Path:
        """Write history.csv, architectures.csv, summary.json (and training.png) now."""
        return self.files.write_artifacts(self, out_dir)

    def save_model(self, directory: str | Path) -> Path:
        """``model.save_pretrained(directory)`` plus ``perforate_net.json`` naming the
        network factory (``perforate export --trust-factory`` rebuilds the network with it;
        docs/loading.md), published whole
        (`perforate.io.storage.save_pretrained`). Neuron phase only."""
        return self.files.save_model(self.perforated, directory)

    # ------------------------------------------------------------------------ state dict
    def track_generators(self, *generators: torch.Generator | None) -> None:
        """Also checkpoint these generators (e.g. a DataLoader's); states loaded by `resume`
        before they were attached are applied now, in order."""
        self.rng.add(*generators)

    def state_dict(self, *, include_rng: bool = False) -> dict[str, Any]:
        """Everything to continue exactly: model training state (either phase), optimizer,
        scheduler, schedule, weight snapshots, records; RNG states if `include_rng`. Plain
        containers of tensors, numbers and strings (``torch.load(weights_only=True)``-safe).
        Tensors are references, as in ``nn.Module.state_dict``."""
        return tracker_state(self, include_rng=include_rng)

    def load_state_dict(self, state: Mapping[str, Any], *, restore_rng: bool = True) -> None:
        """Inverse of `state_dict` on a tracker around a model perforated with the same
        config. The constructor's settings stay; the saved RNG states are restored if present
        and `restore_rng`."""
        load_tracker_state(self, state, restore_rng=restore_rng)

    def save_checkpoint(self, directory: str | Path) -> Path:
        """Write ``checkpoint.pt`` (atomically: temp file + rename) and ``checkpoint.json``
        into `directory`; `resume` continues from it exactly. In a distributed run it holds
        every rank's RNG states as of the last `step` (gathered there), so each rank resumes
        with its own."""
        return self.files.save_checkpoint(directory, self.state_dict(include_rng=True), {
            "epoch": self.epoch, "phase": self.perforated.phase, "cycle": self.schedule.cycle,
            "dendrites": self.perforated.num_dendrites, "done": self.done},
            self.perforated.config.to_dict())
