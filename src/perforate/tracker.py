"""`Tracker`: runs the paper's cycle on a `PerforatedModel`, one ``step()`` per epoch.

    tracker = pf.Tracker(model, lambda params: torch.optim.Adam(params, 1e-3))
    while not tracker.done:
        train_one_epoch(tracker.model, tracker.optimizer)  # candidates' in a dendrite phase
        d = tracker.step(val_score)                 # val_score=None is fine in a dendrite phase

The tracker owns the optimizers: a fresh one per neuron cycle from ``optimizer_factory(params)``
(``params``: a list of the model's parameters that require grad, with their names in
``params.named`` for parameter groups, see `perforate.param_groups`) and
``scheduler_factory(optimizer)``. The scheduler is stepped once per neuron-phase epoch inside
`step` (``ReduceLROnPlateau`` gets the validation score), or, with
``scheduler_interval="batch"``, once per batch by `batch_step` (OneCycleLR, warm-up). It keeps
the best weights of the current cycle and of the best cycle, restores them at each cycle end
and at the final revert, and can checkpoint everything, random number generators included,
for an exact `resume`.

`Tracker` conducts; the jobs are done by its collaborators in `perforate.training`:
`Optimization` (optimizer and scheduler), `WeightSnapshots`, `RunRecords` (history and the
other records), `TrackedGenerators` (RNG states) and `checkpoint` (the files).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import artifacts
from ._extras import available, require
from .distributed import (
    DistributedSync,
    Wrap,
    check_not_sharded,
    is_ddp,
    retire,
    rewrap,
    wrap_like,
)
from .errors import DistributedError, LoadError, PhaseError
from .model import DENDRITE, NEURON, PerforatedModel
from .rebuild import rebuild
from .schedule import CONTINUE, GROW, INSTALL, RESTART, RETRY, STOP, Schedule
from .storage import NET_FILE, model_is_whole, save_pretrained
from .training.checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_META,
    FORMAT,
    FORMAT_VERSION,
    checkpoint_file,
    read_checkpoint,
    run_settings,
    saved_config,
    write_checkpoint,
)
from .training.finite import check_parameters, check_score
from .training.lock import RunLock
from .training.optimizers import Optimization, OptimizerFactory, SchedulerFactory
from .training.records import RunRecords, opt_float
from .training.rng import TrackedGenerators
from .training.snapshots import WeightSnapshots

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FILE", "CHECKPOINT_META", "FORMAT", "FORMAT_VERSION", "NET_FILE",
           "Decision", "OptimizerFactory", "SchedulerFactory", "Tracker", "checkpoint_file",
           "read_checkpoint", "resume"]

MODEL_DIR = "model"
"""The final model's directory in ``out_dir``."""

_SCHEDULE_ARGS = ("mode", "neuron_patience", "dendrite_patience", "max_dendrite_epochs",
                  "max_dendrites", "improvement_threshold", "correlation_threshold",
                  "min_dendrites", "add_dendrites", "max_epochs", "dendrite_tries", "plateau")


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

    Args beyond the contract: ``correlation_threshold`` (dendrite plateau, DEFAULT 1e-3),
    ``plateau`` ("max" or "mean": which correlation gain the plateau test reads),
    ``min_dendrites`` (growth steps before the stop rule applies), ``dendrite_tries`` (a set
    that did not improve is retried until this many tries failed in a row), ``add_dendrites``
    (False = the restart control), ``max_epochs`` (safety cap), ``checkpoint_every``
    (also checkpoint every N epochs; needs ``out_dir``), ``plot`` (write training.png; default:
    if matplotlib is installed; ``True`` requires it at once),
    ``net_factory`` ("module:function" that builds the network, recorded for the CLI),
    ``scheduler_interval`` ("epoch": `step` steps the scheduler; "batch": `batch_step` does,
    after every neuron-phase optimizer step).

    Distributed (``docs/distributed.md``): `model` may be a `DistributedDataParallel` around the
    `PerforatedModel` (a template: rebuilt after every restructure), or pass the model and
    ``wrap`` (``PerforatedModel -> nn.Module``, e.g. ``lambda m: DDP(m, device_ids=[i])``).
    Then train with ``tracker.model`` (the wrapper in a neuron phase) and evaluate
    ``tracker.perforated``; candidate statistics, candidate gradients and the scores given to
    `step` (their mean) are reduced across ranks, and only rank 0 writes files.

    Divergence: after a neuron-phase epoch `step` checks every parameter (one host sync) and
    the validation score, and raises `NonFiniteError` naming the first non-finite parameter and
    its layer, or the score. It raises before it records anything and restores nothing: the
    tracker is as after the previous `step`, the model keeps the non-finite weights (to
    inspect), and a run goes on from its last checkpoint (``resume``), e.g. with a lower
    learning rate. A diverged cycle is never a reason to grow.
    """

    def __init__(self, model: PerforatedModel | nn.Module, optimizer_factory: OptimizerFactory,
                 scheduler_factory: SchedulerFactory | None = None, *, mode: str = "max",
                 neuron_patience: int = 25, dendrite_patience: int = 3,
                 max_dendrite_epochs: int = 25, max_dendrites: int | None = None,
                 improvement_threshold: float = 0.0, correlation_threshold: float = 1e-3,
                 min_dendrites: int = 0, add_dendrites: bool = True,
                 max_epochs: int | None = None, out_dir: str | Path | None = None,
                 checkpoint_every: int | None = None, plot: bool | None = None,
                 net_factory: str | None = None, scheduler_interval: str = "epoch",
                 dendrite_tries: int = 1, plateau: str = "max",
                 wrap: Wrap | None = None) -> None:
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
        self.perforated = model
        """The `PerforatedModel` (never wrapped): evaluate, save and export this one. Train
        with `model`."""
        self.wrap = wrap
        self.sync = DistributedSync(group) if wrap is not None else None
        """The collectives of a distributed run (None on one process)."""
        model.set_distributed(self.sync)
        if self.sync is not None:  # the batches whose number the ranks compare at `step`
            self.sync.count_forwards(model)
        self._wrapped: nn.Module = model
        self._rewrap()
        self.optimization = Optimization(optimizer_factory, scheduler_factory,
                                         scheduler_interval)
        """The optimizer and scheduler of the next epoch (`perforate.training.optimizers`)."""
        self.schedule = Schedule(mode=mode, neuron_patience=neuron_patience,
                                 dendrite_patience=dendrite_patience,
                                 max_dendrite_epochs=max_dendrite_epochs,
                                 max_dendrites=max_dendrites,
                                 improvement_threshold=improvement_threshold,
                                 correlation_threshold=correlation_threshold,
                                 min_dendrites=min_dendrites, add_dendrites=add_dendrites,
                                 max_epochs=max_epochs, dendrite_tries=dendrite_tries,
                                 plateau=plateau)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.plot = _plot_setting(plot, out_dir)
        self.net_factory = net_factory
        self.records = RunRecords(model.count_parameters())
        """History and the other records (`perforate.training.records`)."""
        self.snapshots = WeightSnapshots()
        """Best weights of the current and of the best cycle (`perforate.training.snapshots`)."""
        self.rng = TrackedGenerators()
        self._rank_rng: list[dict[str, Any]] | None = None
        """Every rank's RNG states at the end of the last `step` (distributed runs)."""
        self.optimization.renew(model)
        self._last_time = time.perf_counter()
        self._lock = RunLock(self.out_dir, owner=self) \
            if self.out_dir is not None and self.is_main else None
        """One writer per out_dir (`perforate.training.lock`); released once done."""

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
    def train_module(self) -> nn.Module:
        """The same as `model` (its earlier name)."""
        return self._wrapped

    @property
    def is_main(self) -> bool:
        """True on rank 0 and on a single process: the rank that writes files."""
        return self.sync is None or self.sync.is_main

    def _rewrap(self, done: bool = False) -> None:
        if self.wrap is None:
            return
        retire(self._wrapped)
        # Done: no wrapper is kept (a DDP wrapper that outlives its process group can abort
        # the process at exit; docs/distributed.md).
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
    def optimizer_factory(self) -> OptimizerFactory:
        return self.optimization.optimizer_factory

    @property
    def scheduler_factory(self) -> SchedulerFactory | None:
        return self.optimization.scheduler_factory

    @property
    def scheduler_interval(self) -> str:
        return self.optimization.interval

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per epoch (columns: `artifacts.HISTORY_COLUMNS` plus extra scores)."""
        return self.records.history

    @property
    def architectures(self) -> list[dict[str, Any]]:
        """One record per completed neuron cycle (`artifacts.ARCHITECTURE_COLUMNS`)."""
        return self.records.architectures

    @property
    def dendrite_phases(self) -> list[dict[str, Any]]:
        """One record per installed set: set, epochs, reason, per-layer install stats."""
        return self.records.dendrite_phases

    @property
    def extra_names(self) -> list[str]:
        """Names of the extra scores given to `step`, in order of appearance."""
        return self.records.extra_names

    @property
    def generators(self) -> list[torch.Generator]:
        """Generators checkpointed with the global ones (see `track_generators`)."""
        return self.rng.generators

    @property
    def done(self) -> bool:
        """True once training has stopped (the model holds the final architecture)."""
        return self.schedule.done

    @property
    def phase(self) -> str:
        return self.perforated.phase

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return self.schedule.epoch

    @property
    def cycle(self) -> int:
        return self.schedule.cycle

    @property
    def stop_reason(self) -> str:
        return self.schedule.stop_reason

    @property
    def final_architecture(self) -> dict[str, Any] | None:
        """The best completed cycle's record (the final model once `done`), or None."""
        best = self.schedule.best_cycle
        return None if best is None else self.architectures[best]

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
        """The constructor's keyword arguments (plain values), as saved in checkpoints."""
        out: dict[str, Any] = {k: getattr(self.schedule, k) for k in _SCHEDULE_ARGS}
        out.update(out_dir=None if self.out_dir is None else str(self.out_dir),
                   checkpoint_every=self.checkpoint_every, plot=self.plot,
                   net_factory=self.net_factory, scheduler_interval=self.scheduler_interval)
        return out

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` holds: settings, the final architecture, error reduction."""
        first = self.architectures[0] if self.architectures else None
        return {"done": self.done, "stop_reason": self.stop_reason, "epochs": self.epoch,
                "cycles": len(self.architectures), "dendrites": self.perforated.num_dendrites,
                "params": self.perforated.count_parameters(), "best_val": self.best_val,
                "test_at_best_val": self.test_at_best_val, "first": first,
                "final": self.final_architecture,
                "error_reduction": self.records.error_reductions(self.final_architecture),
                "wall_seconds": sum(r["seconds"] for r in self.history),
                "settings": self.settings(), "config": self.perforated.config.to_dict(),
                "architectures": self.architectures, "dendrite_phases": self.dendrite_phases}

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
        seconds, self._last_time = now - self._last_time, now
        scores = {"train": opt_float("train_score", train_score),
                  "val": opt_float("val_score", val_score),
                  "test": opt_float("test_score", test_score)}
        extras = self.records.check_extra(extra)
        if self.sync is not None:  # every rank decides on the same (mean) scores
            try:  # the ranks meet, with as many batches each, within the timeout
                self.sync.end_epoch(self.perforated.phase, self.schedule.epoch + 1)
            except DistributedError:
                self._rewrap(done=True)  # no DDP wrapper may outlive the process group
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
        if decision.cycle_ended:
            self._end_cycle()
        if event == RETRY:
            self._restore_best(drop_set=self.schedule.add_dendrites)
        if event in (GROW, RETRY) and self.schedule.add_dendrites:
            self._grow()
        elif event in (RESTART, RETRY):
            self._begin_cycle()
        elif event == INSTALL:
            self._install(model.end_dendrite_phase(), decision.reason)
        elif event == STOP:
            self._finish()
        if restructured and event != STOP:  # _finish logs the stop
            logger.info("epoch %d: %s (%s); %d dendrite set(s), %d parameters",
                        self.schedule.epoch, event, decision.reason, model.num_dendrites,
                        self.records.params)
        if restructured or self.done:
            self._rewrap(done=self.done)
        if self.sync is not None:  # every rank, every epoch: rank 0 may checkpoint now
            self._rank_rng = self.sync.gather(self.rng.state())
        self._write(final=event == STOP, switch=restructured)
        self._last_time = time.perf_counter()
        return Decision(phase=model.phase, restructured=restructured, done=self.done,
                        event=event, epoch=self.schedule.epoch, cycle=self.schedule.cycle,
                        dendrites=model.num_dendrites, new_best=decision.new_best,
                        reason=decision.reason)

    def _end_cycle(self) -> None:
        """Restore the cycle's best weights and record its architecture."""
        result = self.schedule.cycle_results[-1]
        self.snapshots.restore_cycle_best(self.perforated)
        self.records.add_cycle(result, self.perforated.num_dendrites)
        if result.improved:
            self.snapshots.promote_cycle()

    def _grow(self) -> None:
        """Begin a dendrite phase, or add the set at once when candidates are not trained."""
        attempt = self.schedule.failed_tries
        if self.perforated.trains_candidates:
            self.perforated.begin_dendrite_phase(attempt)
            self.optimization.use_candidates(self.perforated)
            return
        stats = self.perforated.grow(attempt)
        self._install(stats, self.schedule.skip_dendrite_phase().reason)

    def _install(self, stats: dict[str, dict[str, float]], reason: str) -> None:
        self.records.add_dendrite_phase({
            "set": self.perforated.num_dendrites, "epochs": self.schedule.dendrite_epochs,
            "end_epoch": self.schedule.epoch, "reason": reason, "layers": stats})
        self._begin_cycle()

    def _restore_best(self, *, drop_set: bool) -> None:
        """A retry: back to the best cycle's architecture (dropping the set that did not
        improve) and weights; dendrite epochs then record the best cycle's scores."""
        final = self.final_architecture
        if final is None:  # pragma: no cover
            raise RuntimeError("no completed cycle to retry from")
        while drop_set and self.perforated.num_dendrites > final["dendrites"]:
            self.perforated.remove_last_dendrites()
        self.snapshots.restore_best(self.perforated)
        self.records.restored_scores = {
            "train": final["train_at_best_val"], "val": final["best_val"],
            "test": final["test_at_best_val"],
            **{k: final.get(f"{k}_at_best_val") for k in self.records.extra_names}}

    def _begin_cycle(self) -> None:
        self.records.begin_cycle(self.perforated.count_parameters())
        self.optimization.renew(self.perforated)

    def _finish(self) -> None:
        """Revert to the best cycle's architecture and weights (the final model)."""
        if self.perforated.phase == DENDRITE:  # stopped by max_epochs inside a dendrite phase
            self.perforated.end_dendrite_phase()
            self.perforated.remove_last_dendrites()
        final = self.final_architecture
        if final is None:  # pragma: no cover
            raise RuntimeError("no completed cycle to finish with")
        while self.perforated.num_dendrites > final["dendrites"]:
            self.perforated.remove_last_dendrites()
        self.snapshots.restore_best(self.perforated)
        self.records.finish(final, self.perforated.count_parameters())
        self.optimization.renew(self.perforated)
        logger.info("done after %d epochs: %s; final model: cycle %d, %d dendrite set(s), "
                    "best val %.6g", self.epoch, self.stop_reason, final["cycle"],
                    final["dendrites"], final["best_val"])

    # --------------------------------------------------------------------------- output
    def _write(self, *, final: bool, switch: bool) -> None:
        if self.out_dir is None or not self.is_main:
            return
        if self._lock is not None:
            self._lock.check()
        every = self.checkpoint_every
        periodic = every is not None and self.epoch % every == 0
        if switch or final:
            self.write_artifacts()
        if final:  # the model before the checkpoint that says done (resume rebuilds it)
            self.save_model(self.out_dir / MODEL_DIR)
        if switch or final or periodic:
            self.save_checkpoint(self.out_dir / artifacts.CHECKPOINT_DIR)
        if final:
            self.close()

    def close(self) -> None:
        """Let go of ``out_dir`` (its lock; done at the end of a run): another run may write
        there, this one writes nothing more there."""
        if self._lock is not None:
            self._lock.release()

    def write_artifacts(self, out_dir: str | Path | None = None) -> Path:
        """Write history.csv, architectures.csv, summary.json (and training.png) now."""
        target = out_dir if out_dir is not None else self.out_dir
        if target is None:
            raise ValueError("write_artifacts() needs out_dir (here or in the constructor)")
        return artifacts.write_run_artifacts(self, target, plot=self.plot)

    def save_model(self, directory: str | Path) -> Path:
        """``model.save_pretrained(directory)`` plus ``perforate_net.json`` naming the
        network factory (so ``perforate export`` can rebuild it), published whole
        (`perforate.storage.save_pretrained`). Neuron phase only."""
        net = json.dumps({"net_factory": self.net_factory}, indent=2) + "\n"
        return save_pretrained(self.perforated, directory,
                               extra_files={NET_FILE: net.encode("utf-8")})

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
        sd: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "settings": self.settings(), "config": json.dumps(self.perforated.config.to_dict()),
            "model": self.perforated.training_state(),
            **self.optimization.state_dict(self.perforated.phase == NEURON),
            "schedule": self.schedule.state_dict(),
            **self.snapshots.state_dict(),
            **self.records.state_dict(),
        }
        if include_rng:
            sd["rng"] = self.rng.state()
            if self._rank_rng is not None:  # rank r resumes with its own states
                sd["rng_ranks"] = self._rank_rng
        return sd

    def load_state_dict(self, state: Mapping[str, Any], *, restore_rng: bool = True) -> None:
        """Inverse of `state_dict` on a tracker around a model perforated with the same
        config. The constructor's settings stay; the saved RNG states are restored if present
        and `restore_rng`."""
        if state.get("format") != FORMAT or state.get("format_version") != FORMAT_VERSION:
            raise LoadError(f"not a perforate tracker state (format {state.get('format')!r} "
                            f"v{state.get('format_version')!r})")
        self.perforated.load_training_state(state["model"])
        self.schedule.load_state_dict(
            {k: v for k, v in state["schedule"].items() if k not in _SCHEDULE_ARGS})
        self.optimization.load_state_dict(self.perforated, self.perforated.phase == NEURON,
                                          state["optimizer"], state["scheduler"])
        device = next(iter(self.perforated.state_dict().values())).device
        self.snapshots.load_state_dict(state, device)
        self.records.load_state_dict(state, self.perforated.count_parameters())
        if restore_rng and state.get("rng") is not None:
            self.rng.restore(self._own_rng(state))
        self._rewrap()
        self._last_time = time.perf_counter()

    def _own_rng(self, state: Mapping[str, Any]) -> Mapping[str, Any]:
        """This rank's saved RNG states: its own when the checkpoint holds every rank's for
        the same number of ranks, else rank 0's (with a warning in a distributed run)."""
        ranks = state.get("rng_ranks")
        if self.sync is None:
            return state["rng"]
        if ranks is not None and len(ranks) == self.sync.world:
            return ranks[self.sync.rank]
        if self.sync.rank:
            logger.warning("the checkpoint holds no RNG states for %d ranks: rank %d resumes "
                           "with rank 0's (dropout and shuffles may differ from an "
                           "uninterrupted run)", self.sync.world, self.sync.rank)
        return state["rng"]

    def save_checkpoint(self, directory: str | Path) -> Path:
        """Write ``checkpoint.pt`` (atomically: temp file + rename) and ``checkpoint.json``
        into `directory`; `resume` continues from it exactly. In a distributed run it holds
        every rank's RNG states as of the last `step` (gathered there), so each rank resumes
        with its own."""
        return write_checkpoint(directory, self.state_dict(include_rng=True), {
            "epoch": self.epoch, "phase": self.perforated.phase, "cycle": self.cycle,
            "dendrites": self.perforated.num_dendrites, "done": self.done,
            "net_factory": self.net_factory, "config": self.perforated.config.to_dict()})


# ------------------------------------------------------------------------------- resume
def resume(directory: str | Path, net: nn.Module, optimizer_factory: OptimizerFactory,
           scheduler_factory: SchedulerFactory | None = None, *, registry: Any = None,
           device: str | torch.device | None = None, restore_rng: bool = True,
           **tracker_kwargs: Any) -> Tracker:
    """Rebuild the tracker of a checkpoint around a fresh `net` (same architecture as the
    original network before perforation) and continue with ``pf.fit(..., tracker=t)``.

    The saved settings are used unless overridden by `tracker_kwargs`. Global RNG states are
    restored (`restore_rng`), so the run continues exactly as if it had never stopped.
    """
    path = checkpoint_file(directory)
    state = read_checkpoint(path)
    try:
        model = rebuild(net, saved_config(state), registry=registry, device=device)
    except LoadError as exc:
        raise LoadError(f"{path}: {exc}") from exc
    settings = run_settings(state, path)  # out_dir: where the checkpoint is now
    settings.update(tracker_kwargs)
    tracker = Tracker(model, optimizer_factory, scheduler_factory, **settings)
    try:
        tracker.load_state_dict(state, restore_rng=restore_rng)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise LoadError(f"{path}: the checkpoint does not fit the network: {exc}") from exc
    if tracker.done and tracker.out_dir is not None and tracker.is_main:
        model_dir = tracker.out_dir / MODEL_DIR  # a kill or full disk during the final save
        if not model_is_whole(model_dir):
            logger.warning("%s is missing or incomplete: rebuilt from the checkpoint", model_dir)
            tracker.save_model(model_dir)
        tracker.close()
    logger.info("resumed at epoch %d (%s phase, cycle %d, %d dendrite set(s))", tracker.epoch,
                tracker.phase, tracker.cycle, model.num_dendrites)
    return tracker


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
