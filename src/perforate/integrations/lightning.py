"""`PerforateCallback`: the perforated cycle inside a Lightning ``Trainer`` (``docs/lightning.md``).

    class Net(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = pf.perforate(make_net())
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), 1e-3)
        ...  # training_step, validation_step logging "val_acc"

    trainer = L.Trainer(callbacks=[PerforateCallback(
        monitor="val_acc", schedule=pf.Schedule(neuron_patience=5))])
    trainer.fit(Net(), train_loader, val_loader)

The callback builds a `perforate.Tracker` at the start of fitting and steps it after every
validation run with the monitored score; a dendrite epoch runs no validation (the network is
frozen) and steps the tracker at its end. The neuron phase trains with the optimizer (and
schedulers) of ``configure_optimizers``, rebuilt by ``trainer.strategy.setup_optimizers``
after every restructure; a dendrite phase trains the candidates with the tracker's candidate
optimizer. Under ``DDPStrategy`` the DDP wrapper of the LightningModule is rebuilt after every
restructure and removed during a dendrite phase, whose reductions perforate does itself.

Importing this module needs ``lightning`` (``pip install 'perforate[lightning]'``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .. import private_api
from .._extras import require
from ..engine.candidates import CandidatePool
from ..engine.model import DENDRITE, PerforatedModel
from ..parallel.ddp import retire, rewrap
from ..training.schedule import SETTINGS, Schedule, monitored, reject_moved_settings
from ..training.tracker import Tracker

L = require("lightning.pytorch", "lightning", "perforate.integrations.lightning")

logger = logging.getLogger(__name__)

__all__ = ["PerforateCallback"]

#: Tracker arguments the callback sets itself.
_OWN_ARGS = ("optimizer_factory", "scheduler_factory", "scheduler_interval", "wrap")


class PerforateCallback(L.Callback):
    """Runs the perforated cycle in ``Trainer.fit``: one `Tracker.step` per validation run.

    Args:
        monitor: the logged metric (``trainer.callback_metrics``) that decides, e.g. "val_acc".
        mode: "max" or "min" (whether a higher `monitor` is better); the schedule's mode.
        model: the `PerforatedModel` to drive; default: the one among the LightningModule's
            submodules (there must be exactly one).
        schedule: when to grow (``pf.Schedule(neuron_patience=5, ...)``; its mode is `mode`).
        **tracker_options: more `perforate.Tracker` arguments (``out_dir``,
            ``checkpoint_every``, ...). The optimizer comes from
            ``configure_optimizers`` and the scheduler from Lightning, so
            ``optimizer_factory``, ``scheduler_factory``, ``scheduler_interval`` and ``wrap``
            are not accepted.

    ``callback.tracker`` is the `Tracker` once fitting has started (history, summary, ...).
    Training stops (``trainer.should_stop``) when the tracker is done; the model then holds
    the final architecture and weights.
    """

    def __init__(self, monitor: str = "val_acc", mode: str = "max", *,
                 model: PerforatedModel | None = None, schedule: Schedule | None = None,
                 **tracker_options: Any) -> None:
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        reject_moved_settings("PerforateCallback",
                              {k: v for k, v in tracker_options.items() if k in SETTINGS})
        self.schedule = monitored(schedule, mode)
        """The schedule's settings each fit's tracker starts from."""
        own = sorted(set(tracker_options) & set(_OWN_ARGS))
        if own:
            raise TypeError(f"PerforateCallback sets {', '.join(own)} itself: the optimizer "
                            "comes from configure_optimizers, schedulers from Lightning")
        if model is not None and not isinstance(model, PerforatedModel):
            raise TypeError(f"model must be a PerforatedModel (pf.perforate(net)), got "
                            f"{type(model).__name__}")
        self.monitor = monitor
        self.mode = mode
        self.model = model
        self.tracker_options = tracker_options
        self.tracker: Tracker | None = None
        """The `Tracker` of the current fit (None before ``on_fit_start``)."""
        self._pending_state: dict[str, Any] | None = None
        self._val_batches: Any = None  # the Trainer's limit_val_batches, outside dendrite phases
        self._stepped = False  # the tracker stepped in this training epoch

    # ------------------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Build the tracker: the strategy has set up the model and its optimizers."""
        model = self.model if self.model is not None else _find_model(pl_module)
        strategy = trainer.strategy
        wrap = None
        if _is_ddp(strategy):
            retire(strategy.model)  # Lightning's wrapper, built before the tracker left out
            strategy.model = pl_module  # the parameters no forward uses; rebuilt by `wrap`

            def wrap(_: nn.Module) -> nn.Module:
                return _wrap_lightning_module(strategy, pl_module)

        elif not isinstance(strategy, L.strategies.SingleDeviceStrategy):
            raise TypeError(f"PerforateCallback supports the single-device and DDP strategies, "
                            f"not {type(strategy).__name__}")
        self._val_batches = trainer.limit_val_batches
        self.tracker = Tracker(model, lambda params: self._lightning_optimizer(trainer, params),
                               schedule=self.schedule, wrap=wrap, **self.tracker_options)
        if self._pending_state is not None:
            self.tracker.load_state_dict(self._pending_state)
            self._pending_state = None
        self._connect(trainer, pl_module)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._stepped = False

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self._val_batches is not None:  # the user's setting, for a later validate()
            trainer.limit_val_batches = self._val_batches

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """Step the tracker with the monitored score; after a restructure, give Lightning the
        new optimizer (and wrapper); stop when done."""
        if trainer.sanity_checking or not self._live(trainer):
            return
        val = None
        if self.tracker.phase != DENDRITE:  # type: ignore[union-attr]
            val = self._score(trainer)  # a dendrite phase decides on candidate correlations
        self._step(trainer, pl_module, val)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Step the tracker after a dendrite epoch, which runs no validation (the network is
        frozen: its score cannot change)."""
        if self._live(trainer) and not self._stepped \
                and self.tracker.phase == DENDRITE:  # type: ignore[union-attr]
            self._step(trainer, pl_module, None)

    def _live(self, trainer: Any) -> bool:
        tracker = self.tracker
        return tracker is not None and not tracker.done and trainer.state.fn == "fit"

    def _step(self, trainer: Any, pl_module: Any, val: float | None) -> None:
        decision = self.tracker.step(val)  # type: ignore[union-attr]
        self._stepped = True
        if decision.restructured:
            self._connect(trainer, pl_module)
        if decision.done:
            trainer.should_stop = True

    # ------------------------------------------------------------------------ state dict
    def state_dict(self) -> dict[str, Any]:
        """The tracker's state (Lightning stores it in its checkpoints)."""
        if self.tracker is None:
            return {} if self._pending_state is None else self._pending_state
        return self.tracker.state_dict()

    def on_save_checkpoint(self, trainer: Any, pl_module: Any,
                           checkpoint: dict[str, Any]) -> None:
        """Leave a dendrite phase's candidates out of the checkpoint's model weights: Lightning
        loads them into a model in the neuron phase (the tracker's state restores them)."""
        pools = tuple(f"{name}." for name, m in pl_module.named_modules()
                      if isinstance(m, CandidatePool))
        weights = checkpoint.get("state_dict", {})
        for key in [k for k in weights if pools and k.startswith(pools)]:
            del weights[key]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Kept until ``on_fit_start`` builds the tracker, which then loads it."""
        if not state_dict:
            return
        if self.tracker is not None:
            self.tracker.load_state_dict(state_dict)
        else:
            self._pending_state = dict(state_dict)

    # ---------------------------------------------------------------------------- helpers
    def _score(self, trainer: Any) -> float:
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            raise KeyError(f"PerforateCallback monitors {self.monitor!r}, which was not "
                           f"logged; logged metrics: {sorted(metrics) or 'none'} (log it in "
                           "validation_step with self.log)")
        return float(metrics[self.monitor])

    def _lightning_optimizer(self, trainer: Any, params: list[nn.Parameter]
                             ) -> torch.optim.Optimizer:
        """The tracker's optimizer factory: ``configure_optimizers`` through the strategy, so
        Lightning and the tracker share the optimizer and Lightning owns the schedulers."""
        strategy = trainer.strategy
        strategy.setup_optimizers(trainer)
        if len(strategy.optimizers) != 1:
            raise ValueError(f"PerforateCallback needs configure_optimizers to return one "
                             f"optimizer, got {len(strategy.optimizers)}")
        optimizer = strategy.optimizers[0]
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [p for p in params if p.numel() and id(p) not in held]
        if missing:
            raise ValueError(f"the optimizer of configure_optimizers leaves out {len(missing)} "
                             "trainable parameter(s) of the perforated model; build it over "
                             "self.parameters() each time it is called (installs add some)")
        return optimizer

    def _connect(self, trainer: Any, pl_module: Any) -> None:
        """Give Lightning the tracker's optimizer and module for the next epoch."""
        tracker = self.tracker
        strategy = trainer.strategy
        dendrite = tracker.phase == DENDRITE  # type: ignore[union-attr]
        if dendrite:
            strategy.optimizers = [tracker.optimizer]  # type: ignore[union-attr]
            strategy.lr_scheduler_configs = []
        # No validation run in a dendrite epoch (the tracker steps at the epoch's end).
        trainer.limit_val_batches = 0 if dendrite else self._val_batches
        if _is_ddp(strategy) and tracker.model is tracker.perforated:  # type: ignore[union-attr]
            strategy.model = pl_module  # a dendrite phase: no DDP


def _find_model(pl_module: nn.Module) -> PerforatedModel:
    found = [m for m in pl_module.modules() if isinstance(m, PerforatedModel)]
    if len(found) != 1:
        raise ValueError(f"PerforateCallback needs exactly one PerforatedModel in the "
                         f"LightningModule (self.net = pf.perforate(net)), found {len(found)}; "
                         "pass model= to choose")
    return found[0]


def _is_ddp(strategy: Any) -> bool:
    """Lightning's DDP strategy (any launcher); DeepSpeed derives from it but shards."""
    if type(strategy).__name__.startswith("DeepSpeed"):
        raise TypeError("PerforateCallback does not support DeepSpeed (it shards the "
                        "parameters an install resizes); use strategy='ddp'")
    return isinstance(strategy, L.strategies.DDPStrategy)


def _wrap_lightning_module(strategy: Any, pl_module: nn.Module) -> nn.Module:
    """A new DDP wrapper of the whole LightningModule (Lightning's settings), with the
    parameters no forward uses left out, installed as the strategy's model."""
    strategy.model = rewrap(pl_module, private_api.lightning_setup_model(strategy))
    private_api.lightning_register_ddp_hooks(strategy)
    return strategy.model
