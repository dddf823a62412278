"""`Tracker`: runs the paper's cycle on a `PerforatedModel`, one ``step()`` per epoch.

    tracker = pf.Tracker(model, lambda params: torch.optim.Adam(params, 1e-3))
    while not tracker.done:
        train_one_epoch(model, tracker.optimizer)   # candidate optimizer in the dendrite phase
        d = tracker.step(val_score)                 # val_score=None is fine in a dendrite phase

The tracker owns the optimizers: a fresh one per neuron cycle from ``optimizer_factory(params)``
(``params``: the model's parameters that require grad) and ``scheduler_factory(optimizer)``;
the scheduler is stepped once per neuron-phase epoch inside `step` (``ReduceLROnPlateau`` gets
the validation score). It keeps the best weights of the current cycle and of the best cycle as
state-dict copies, restores them at each cycle end and at the final revert, and can checkpoint
everything, random number generators included, for an exact `resume`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import artifacts
from ._extras import available, require
from .atomic import atomic_write
from .config import PerforationConfig
from .errors import LoadError, PhaseError
from .metrics import error_reduction
from .model import DENDRITE, NEURON, PerforatedModel, perforate
from .schedule import CONTINUE, GROW, INSTALL, RESTART, STOP, Schedule

logger = logging.getLogger(__name__)

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_META = "checkpoint.json"
FORMAT = "perforate-tracker"
FORMAT_VERSION = 1
#: Sidecar written next to a ``save_pretrained`` directory: how to rebuild the network.
NET_FILE = "perforate_net.json"

_SCHEDULE_ARGS = ("mode", "neuron_patience", "dendrite_patience", "max_dendrite_epochs",
                  "max_dendrites", "improvement_threshold", "correlation_threshold",
                  "min_dendrites", "add_dendrites", "max_epochs")


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
    """"continue", "grow", "restart", "install" or "stop"."""
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
    ``min_dendrites`` (growth steps before the stop rule applies), ``add_dendrites``
    (False = the restart control), ``max_epochs`` (safety cap), ``checkpoint_every``
    (also checkpoint every N epochs; needs ``out_dir``), ``plot`` (write training.png; default:
    if matplotlib is installed; ``True`` requires it at once),
    ``net_factory`` ("module:function" that builds the network, recorded for the CLI).
    """

    def __init__(self, model: PerforatedModel, optimizer_factory: OptimizerFactory,
                 scheduler_factory: SchedulerFactory | None = None, *, mode: str = "max",
                 neuron_patience: int = 25, dendrite_patience: int = 3,
                 max_dendrite_epochs: int = 25, max_dendrites: int | None = None,
                 improvement_threshold: float = 0.0, correlation_threshold: float = 1e-3,
                 min_dendrites: int = 0, add_dendrites: bool = True,
                 max_epochs: int | None = None, out_dir: str | Path | None = None,
                 checkpoint_every: int | None = None, plot: bool | None = None,
                 net_factory: str | None = None) -> None:
        if not isinstance(model, PerforatedModel):
            raise TypeError(f"Tracker needs a PerforatedModel (pf.perforate(net)), got "
                            f"{type(model).__name__}")
        if model.phase != NEURON:
            raise PhaseError("Tracker needs a model in the neuron phase")
        if not callable(optimizer_factory):
            raise TypeError("optimizer_factory must be callable: params -> optimizer")
        if scheduler_factory is not None and not callable(scheduler_factory):
            raise TypeError("scheduler_factory must be callable: optimizer -> scheduler")
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
        self.model = model
        self.optimizer_factory = optimizer_factory
        self.scheduler_factory = scheduler_factory
        self.schedule = Schedule(mode=mode, neuron_patience=neuron_patience,
                                 dendrite_patience=dendrite_patience,
                                 max_dendrite_epochs=max_dendrite_epochs,
                                 max_dendrites=max_dendrites,
                                 improvement_threshold=improvement_threshold,
                                 correlation_threshold=correlation_threshold,
                                 min_dendrites=min_dendrites, add_dendrites=add_dendrites,
                                 max_epochs=max_epochs)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.plot = _plot_setting(plot, out_dir)
        self.net_factory = net_factory
        self.history: list[dict[str, Any]] = []
        """One record per epoch (columns: `artifacts.HISTORY_COLUMNS` plus extra scores)."""
        self.architectures: list[dict[str, Any]] = []
        """One record per completed neuron cycle (`artifacts.ARCHITECTURE_COLUMNS`)."""
        self.dendrite_phases: list[dict[str, Any]] = []
        """One record per installed set: set, epochs, reason, per-layer install stats."""
        self.extra_names: list[str] = []
        self.generators: list[torch.Generator] = []
        self._pending_generator_states: list[Tensor] = []
        self._cycle_snapshot: dict[str, Tensor] | None = None
        self._best_snapshot: dict[str, Tensor] | None = None
        self._cycle_scores: dict[str, float | None] = {}
        self._restored_scores: dict[str, float | None] = {}
        self._cycle_seconds = 0.0
        self._params = model.count_parameters()
        self.optimizer: torch.optim.Optimizer
        self.scheduler: Any
        self.optimizer, self.scheduler = self._fresh_optimizer()
        self._last_time = time.perf_counter()

    # ----------------------------------------------------------------------------- queries
    @property
    def done(self) -> bool:
        """True once training has stopped (the model holds the final architecture)."""
        return self.schedule.done

    @property
    def phase(self) -> str:
        return self.model.phase

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

    @property
    def best_val(self) -> float | None:
        """Best validation score of the best cycle (so far, if not done)."""
        final, current = self.final_architecture, self.schedule.cycle_best
        if final is None:
            return current
        if current is not None and not self.done and self.schedule.better(current,
                                                                            final["best_val"]):
            return current
        return final["best_val"]

    @property
    def test_at_best_val(self) -> float | None:
        """Test score at the epoch of `best_val` (None if no test score was given)."""
        final, current = self.final_architecture, self.schedule.cycle_best
        if final is None:
            return self._cycle_scores.get("test")
        if current is not None and not self.done and self.schedule.better(current,
                                                                            final["best_val"]):
            return self._cycle_scores.get("test")
        return final["test_at_best_val"]

    def error_reduction(self, score: str = "test") -> float | None:
        """``(err_first - err_final) / err_first`` between cycle 0 and the final architecture,
        with ``err = 1 - score`` at best val. `score`: "test", "val" or an extra's name
        (accuracy-like scores in [0, 1]). None before two cycles completed or if missing."""
        key = "best_val" if score == "val" else f"{score}_at_best_val"
        final = self.final_architecture
        if final is None or not self.architectures:
            return None
        first, last = self.architectures[0].get(key), final.get(key)
        if first is None or last is None:
            return None
        return error_reduction(first, last)

    def settings(self) -> dict[str, Any]:
        """The constructor's keyword arguments (plain values), as saved in checkpoints."""
        out: dict[str, Any] = {k: getattr(self.schedule, k) for k in _SCHEDULE_ARGS}
        out.update(out_dir=None if self.out_dir is None else str(self.out_dir),
                   checkpoint_every=self.checkpoint_every, plot=self.plot,
                   net_factory=self.net_factory)
        return out

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` holds: settings, the final architecture, error reduction."""
        first = self.architectures[0] if self.architectures else None
        reductions = {}
        for name in ["test", *self.extra_names]:
            try:
                value = self.error_reduction(name)
            except ValueError:  # not an accuracy-like score
                value = None
            if value is not None:
                reductions[name] = value
        return {"done": self.done, "stop_reason": self.stop_reason, "epochs": self.epoch,
                "cycles": len(self.architectures), "dendrites": self.model.num_dendrites,
                "params": self.model.count_parameters(), "best_val": self.best_val,
                "test_at_best_val": self.test_at_best_val, "first": first,
                "final": self.final_architecture, "error_reduction": reductions,
                "wall_seconds": sum(r["seconds"] for r in self.history),
                "settings": self.settings(), "config": self.model.config.to_dict(),
                "architectures": self.architectures, "dendrite_phases": self.dendrite_phases}

    # -------------------------------------------------------------------------------- step
    def step(self, val_score: float | None = None, *, test_score: float | None = None,
             train_score: float | None = None,
             extra: Mapping[str, float] | None = None) -> Decision:
        """Record one finished epoch and act on it (call once per epoch, after training).

        Neuron phase: `val_score` is required (finite); the scheduler is stepped. Dendrite
        phase: calls ``model.end_epoch()`` itself; missing scores are recorded as the flat
        values of the restored weights. `extra`: more scores to record (columns of history).
        """
        if self.done:
            raise PhaseError("training is done: step() after the final decision")
        now = time.perf_counter()
        seconds, self._last_time = now - self._last_time, now
        scores = {"train": _opt_float("train_score", train_score),
                  "val": _opt_float("val_score", val_score),
                  "test": _opt_float("test_score", test_score)}
        extras = self._check_extra(extra)
        phase, cycle, dendrites = self.model.phase, self.schedule.cycle, self.model.num_dendrites
        lr = float(self.optimizer.param_groups[0]["lr"])
        corr = None
        if phase == NEURON:
            if scores["val"] is None:
                raise ValueError("step() needs a val_score in the neuron phase")
            decision = self.schedule.neuron_epoch(scores["val"])
            if decision.new_best:
                self._cycle_snapshot = _copy_state(self._cycle_snapshot, self.model.state_dict())
                self._cycle_scores = {**scores, **extras, "epoch": self.schedule.epoch}
            self._step_scheduler(scores["val"])
        else:
            reports = self.model.end_epoch()
            improvement = max((r.improvement for r in reports.values()), default=0.0)
            best = torch.cat([r.best_corr.reshape(-1) for r in reports.values()])
            corr = float(best.mean()) if best.numel() else 0.0
            for key, value in self._restored_scores.items():
                if key in scores and scores[key] is None:
                    scores[key] = value
                elif key in self.extra_names and key not in extras:
                    extras[key] = value
            decision = self.schedule.dendrite_epoch(improvement)
        self._cycle_seconds += seconds
        event = decision.action
        row = {"epoch": self.schedule.epoch, "phase": phase, "cycle": cycle,
               "dendrites": dendrites, "params": self._params, **scores, "lr": lr,
               "corr": corr, "seconds": seconds,
               "event": event if event != CONTINUE else ("best" if decision.new_best else ""),
               **extras}
        self.history.append(row)

        restructured = event != CONTINUE
        if decision.cycle_ended:
            self._end_cycle()
        if event == GROW:
            self.model.begin_dendrite_phase()
            self.optimizer, self.scheduler = self.model.candidate_optimizer(), None
        elif event == RESTART:
            self._begin_cycle()
        elif event == INSTALL:
            stats = self.model.end_dendrite_phase()
            self.dendrite_phases.append({
                "set": self.model.num_dendrites, "epochs": self.schedule.dendrite_epochs,
                "end_epoch": self.schedule.epoch, "reason": decision.reason, "layers": stats})
            self._begin_cycle()
        elif event == STOP:
            self._finish()
        if restructured and event != STOP:  # _finish logs the stop
            logger.info("epoch %d: %s (%s); %d dendrite set(s), %d parameters",
                        self.schedule.epoch, event, decision.reason, self.model.num_dendrites,
                        self._params)
        self._write(final=event == STOP, switch=restructured)
        self._last_time = time.perf_counter()
        return Decision(phase=self.model.phase, restructured=restructured, done=self.done,
                        event=event, epoch=self.schedule.epoch, cycle=self.schedule.cycle,
                        dendrites=self.model.num_dendrites, new_best=decision.new_best,
                        reason=decision.reason)

    def _check_extra(self, extra: Mapping[str, float] | None) -> dict[str, float | None]:
        if extra is None:
            return {}
        out = {}
        reserved = set(artifacts.HISTORY_COLUMNS)
        for key, value in extra.items():
            if not isinstance(key, str) or not key or key in reserved:
                raise ValueError(f"extra score name {key!r} is empty or a reserved column")
            out[key] = _opt_float(f"extra[{key!r}]", value)
        self.extra_names += [k for k in out if k not in self.extra_names]
        return out

    def _step_scheduler(self, val: float) -> None:
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val)
        else:
            self.scheduler.step()

    def _fresh_optimizer(self) -> tuple[torch.optim.Optimizer, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer_factory returned {type(optimizer).__name__}, not a "
                            "torch.optim.Optimizer")
        scheduler = self.scheduler_factory(optimizer) if self.scheduler_factory else None
        return optimizer, scheduler

    def _end_cycle(self) -> None:
        """Restore the cycle's best weights and record its architecture."""
        result = self.schedule.cycle_results[-1]
        if self._cycle_snapshot is None:  # pragma: no cover - a cycle always has a best
            raise RuntimeError("no snapshot of the cycle's best weights")
        self.model.load_state_dict(self._cycle_snapshot)
        s = self._cycle_scores
        record = {"cycle": result.cycle, "dendrites": self.model.num_dendrites,
                  "params": self._params, "epochs": result.epochs,
                  "dendrite_epochs": result.dendrite_epochs, "best_epoch": result.best_epoch,
                  "best_val": result.best, "test_at_best_val": s.get("test"),
                  "train_at_best_val": s.get("train"), "improved": result.improved,
                  "kept": False, "seconds": self._cycle_seconds}
        for name in self.extra_names:
            record[f"{name}_at_best_val"] = s.get(name)
        self.architectures.append(record)
        self._restored_scores = {k: v for k, v in s.items() if k != "epoch"}
        if result.improved:
            self._best_snapshot, self._cycle_snapshot = self._cycle_snapshot, None
        self._cycle_seconds = 0.0

    def _begin_cycle(self) -> None:
        self._params = self.model.count_parameters()
        self._cycle_scores = {}
        self.optimizer, self.scheduler = self._fresh_optimizer()

    def _finish(self) -> None:
        """Revert to the best cycle's architecture and weights (the final model)."""
        if self.model.phase == DENDRITE:  # stopped by max_epochs inside a dendrite phase
            self.model.end_dendrite_phase()
            self.model.remove_last_dendrites()
        final = self.final_architecture
        if final is None or self._best_snapshot is None:  # pragma: no cover
            raise RuntimeError("no completed cycle to finish with")
        while self.model.num_dendrites > final["dendrites"]:
            self.model.remove_last_dendrites()
        self.model.load_state_dict(self._best_snapshot)
        final["kept"] = True
        self._params = self.model.count_parameters()
        self._restored_scores = {}
        self.optimizer, self.scheduler = self._fresh_optimizer()
        logger.info("done after %d epochs: %s; final model: cycle %d, %d dendrite set(s), "
                    "best val %.6g", self.epoch, self.stop_reason, final["cycle"],
                    final["dendrites"], final["best_val"])

    # --------------------------------------------------------------------------- output
    def _write(self, *, final: bool, switch: bool) -> None:
        if self.out_dir is None:
            return
        every = self.checkpoint_every
        periodic = every is not None and self.epoch % every == 0
        if switch or final:
            self.write_artifacts()
        if switch or final or periodic:
            self.save_checkpoint(self.out_dir / artifacts.CHECKPOINT_DIR)
        if final:
            self.save_model(self.out_dir / "model")

    def write_artifacts(self, out_dir: str | Path | None = None) -> Path:
        """Write history.csv, architectures.csv, summary.json (and training.png) now."""
        target = out_dir if out_dir is not None else self.out_dir
        if target is None:
            raise ValueError("write_artifacts() needs out_dir (here or in the constructor)")
        return artifacts.write_run_artifacts(self, target, plot=self.plot)

    def save_model(self, directory: str | Path) -> Path:
        """``model.save_pretrained(directory)`` plus ``perforate_net.json`` naming the
        network factory (so ``perforate export`` can rebuild it). Neuron phase only."""
        out = self.model.save_pretrained(directory)
        artifacts.write_json(out / NET_FILE, {"net_factory": self.net_factory})
        return out

    # ------------------------------------------------------------------------ state dict
    def track_generators(self, *generators: torch.Generator | None) -> None:
        """Also checkpoint these generators (e.g. a DataLoader's); states loaded by `resume`
        before they were attached are applied now, in order."""
        new = [g for g in generators
               if g is not None and all(g is not h for h in self.generators)]
        self.generators.extend(new)
        for g in new:
            if self._pending_generator_states:
                g.set_state(self._pending_generator_states.pop(0))

    def state_dict(self, *, include_rng: bool = False) -> dict[str, Any]:
        """Everything to continue exactly: model training state (either phase), optimizer,
        scheduler, schedule, weight snapshots, records; RNG states if `include_rng`. Plain
        containers of tensors, numbers and strings (``torch.load(weights_only=True)``-safe).
        Tensors are references, as in ``nn.Module.state_dict``."""
        sd: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "settings": self.settings(), "config": json.dumps(self.model.config.to_dict()),
            "model": self.model.training_state(),
            "optimizer": self.optimizer.state_dict() if self.model.phase == NEURON else None,
            "scheduler": _scheduler_state(self.scheduler),
            "schedule": self.schedule.state_dict(),
            "cycle_snapshot": self._cycle_snapshot, "best_snapshot": self._best_snapshot,
            "cycle_scores": dict(self._cycle_scores),
            "restored_scores": dict(self._restored_scores),
            "cycle_seconds": self._cycle_seconds, "extra_names": list(self.extra_names),
            "history": [dict(r) for r in self.history],
            "architectures": [dict(a) for a in self.architectures],
            "dendrite_phases": [dict(p) for p in self.dendrite_phases],
        }
        if include_rng:
            sd["rng"] = _rng_state(self.generators)
        return sd

    def load_state_dict(self, state: Mapping[str, Any], *, restore_rng: bool = True) -> None:
        """Inverse of `state_dict` on a tracker around a model perforated with the same
        config. The constructor's settings stay; the saved RNG states are restored if present
        and `restore_rng`."""
        if state.get("format") != FORMAT or state.get("format_version") != FORMAT_VERSION:
            raise LoadError(f"not a perforate tracker state (format {state.get('format')!r} "
                            f"v{state.get('format_version')!r})")
        self.model.load_training_state(state["model"])
        self.schedule.load_state_dict(
            {k: v for k, v in state["schedule"].items() if k not in _SCHEDULE_ARGS})
        if self.model.phase == NEURON:
            self.optimizer, self.scheduler = self._fresh_optimizer()
            if state["optimizer"] is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state["scheduler"] is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        else:
            self.optimizer, self.scheduler = self.model.candidate_optimizer(), None
        device = next(iter(self.model.state_dict().values())).device
        self._cycle_snapshot = _to_device(state["cycle_snapshot"], device)
        self._best_snapshot = _to_device(state["best_snapshot"], device)
        self._cycle_scores = dict(state["cycle_scores"])
        self._restored_scores = dict(state["restored_scores"])
        self._cycle_seconds = float(state["cycle_seconds"])
        self.extra_names = list(state["extra_names"])
        self.history = [dict(r) for r in state["history"]]
        self.architectures = [dict(a) for a in state["architectures"]]
        self.dendrite_phases = [dict(p) for p in state["dendrite_phases"]]
        self._params = self.model.count_parameters()
        if restore_rng and state.get("rng") is not None:
            self._pending_generator_states = _set_rng_state(state["rng"], self.generators)
        self._last_time = time.perf_counter()

    def save_checkpoint(self, directory: str | Path) -> Path:
        """Write ``checkpoint.pt`` (atomically: temp file + rename) and ``checkpoint.json``
        into `directory`; `resume` continues from it exactly."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        sd = self.state_dict(include_rng=True)
        path = atomic_write(out / CHECKPOINT_FILE, lambda f: torch.save(sd, f),
                                      fsync=True)
        artifacts.write_json(out / CHECKPOINT_META, {
            "format": FORMAT, "format_version": FORMAT_VERSION, "epoch": self.epoch,
            "phase": self.model.phase, "cycle": self.cycle,
            "dendrites": self.model.num_dendrites, "done": self.done,
            "net_factory": self.net_factory, "config": self.model.config.to_dict()})
        return path


# ------------------------------------------------------------------------------- resume
def checkpoint_file(directory: str | Path) -> Path:
    """The ``checkpoint.pt`` of a checkpoint directory or of a run's ``out_dir``."""
    d = Path(directory)
    for candidate in (d / CHECKPOINT_FILE, d / artifacts.CHECKPOINT_DIR / CHECKPOINT_FILE):
        if candidate.is_file():
            return candidate
    if d.is_file():
        return d
    raise LoadError(f"{d} holds no {CHECKPOINT_FILE} (nor {artifacts.CHECKPOINT_DIR}/"
                    f"{CHECKPOINT_FILE})")


def read_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Load a checkpoint's state (``weights_only=True``); raises `LoadError` if unreadable."""
    path = checkpoint_file(directory)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise LoadError(f"cannot read checkpoint {path}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise LoadError(f"{path} is not a perforate tracker checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise LoadError(f"{path}: unsupported checkpoint version {state.get('format_version')!r}")
    return state


def resume(directory: str | Path, net: nn.Module, optimizer_factory: OptimizerFactory,
           scheduler_factory: SchedulerFactory | None = None, *, registry: Any = None,
           device: str | torch.device | None = None, restore_rng: bool = True,
           **tracker_kwargs: Any) -> Tracker:
    """Rebuild the tracker of a checkpoint around a fresh `net` (same architecture as the
    original network before perforation) and continue with ``pf.fit(..., tracker=t)``.

    The saved settings are used unless overridden by `tracker_kwargs`. Global RNG states are
    restored (`restore_rng`), so the run continues exactly as if it had never stopped.
    """
    state = read_checkpoint(directory)
    try:
        config = PerforationConfig.from_dict(json.loads(state["config"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise LoadError(f"checkpoint {directory}: bad config: {exc}") from exc
    try:
        model = perforate(net, config, registry=registry)
    except ValueError as exc:
        raise LoadError(f"the network does not fit the checkpoint: {exc}") from exc
    if device is not None:
        model.to(device)
    settings = dict(state["settings"])
    settings.update(tracker_kwargs)
    tracker = Tracker(model, optimizer_factory, scheduler_factory, **settings)
    try:
        tracker.load_state_dict(state, restore_rng=restore_rng)
    except (RuntimeError, KeyError) as exc:
        raise LoadError(f"the checkpoint does not fit the network: {exc}") from exc
    logger.info("resumed at epoch %d (%s phase, cycle %d, %d dendrite set(s))", tracker.epoch,
                tracker.phase, tracker.cycle, model.num_dendrites)
    return tracker


# ------------------------------------------------------------------------------ helpers
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


def _opt_float(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name} must be a number or None, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} is NaN (did the loss diverge?)")
    return value


def _copy_state(dst: dict[str, Tensor] | None, src: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Copy `src` into `dst`'s tensors when the layout matches, else clone it."""
    if dst is not None and dst.keys() == src.keys() and all(
            d.shape == s.shape and d.dtype == s.dtype and d.device == s.device
            for d, s in zip(dst.values(), src.values(), strict=True)):
        with torch.no_grad():
            for key, value in src.items():
                dst[key].copy_(value)
        return dst
    return {k: v.detach().clone() for k, v in src.items()}


def _to_device(state: Mapping[str, Tensor] | None,
               device: torch.device) -> dict[str, Tensor] | None:
    return None if state is None else {k: v.to(device) for k, v in state.items()}


def _scheduler_state(scheduler: Any) -> dict[str, Any] | None:
    if scheduler is None:
        return None
    return {k: v for k, v in scheduler.state_dict().items() if not callable(v)}


def _rng_state(generators: Iterable[torch.Generator]) -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(np_state[0]), torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _to_lists(random.getstate()),
        "generators": [g.get_state() for g in generators],
        "cuda": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any], generators: list[torch.Generator]) -> list[Tensor]:
    """Restore global RNGs and the given generators; return states left for generators not
    attached yet."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = list(state.get("generators", []))
    for g, s in zip(generators, saved, strict=False):
        g.set_state(s)
    return saved[len(generators):]


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value
