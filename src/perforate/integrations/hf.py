"""`PerforateTrainerCallback`: the perforated cycle inside a Hugging Face ``transformers.Trainer``.

    model = BertForSequenceClassification(config)
    pmodel = pf.perforate(model)                      # wraps model's layers in place
    trainer = Trainer(model=model, args=args, ...)    # the Trainer gets the network itself
    callback = PerforateTrainerCallback(pmodel, trainer, monitor="eval_accuracy")
    trainer.train()                                   # stops when the cycle is done

The callback owns a `perforate.Tracker` (``callback.tracker``). One evaluation is one tracker
epoch: in a neuron phase its ``monitor`` metric is the validation score; in a dendrite phase the
evaluation is skipped (the network is frozen) and the tracker steps without a score. After each
restructure the Trainer's optimizer is rebuilt with the Trainer's own recipe
(``create_optimizer``: ``TrainingArguments`` learning rate, weight-decay groups, ``optim``) and
its scheduler with ``create_scheduler`` (each neuron cycle restarts the schedule, over the
run's ``max_steps``); in a dendrite phase the Trainer steps the candidate optimizer under a
constant schedule. The accelerate wrapper the training loop holds stays the same object; its
inner optimizer is replaced.

Each Trainer checkpoint (``save_strategy``) also gets the tracker's state (``checkpoint.pt``,
``checkpoint.json``) and the model as ``pmodel.save_pretrained`` writes it (so
``pf.load(checkpoint, fresh_net)`` reads it); ``trainer.train(resume_from_checkpoint=...)``
with a fresh model and callback (same config and options) continues the run exactly: the
callback restores the dendrite structure, weights, candidates and tracker before the Trainer's
optimizer, scheduler and RNG states.

Needs ``pip install 'perforate[hf]'`` (transformers and accelerate); importing this module
without them raises `MissingExtraError`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .. import private_api
from .._extras import require
from ..config import differing_fields
from ..engine.model import DENDRITE, NEURON, PerforatedModel
from ..errors import ConfigError, LoadError, PhaseError
from ..training.checkpoint import read_checkpoint, saved_config
from ..training.schedule import SETTINGS, Schedule, monitored, reject_moved_settings
from ..training.tracker import Decision, Tracker

transformers = require("transformers", "hf", "perforate.integrations.hf")
require("accelerate", "hf", "perforate.integrations.hf (the Trainer)")

logger = logging.getLogger(__name__)

__all__ = ["PerforateTrainerCallback"]

#: Tracker arguments the callback sets itself (the Trainer steps the learning-rate schedule).
_OWNED_OPTIONS = ("scheduler_factory", "scheduler_interval", "wrap")


def _constant(_: int) -> float:
    return 1.0


class PerforateTrainerCallback(transformers.TrainerCallback):  # type: ignore[misc,name-defined]
    """Runs the perforated cycle of `model` inside a ``transformers.Trainer``.

    Args:
        model: the `PerforatedModel` of ``pf.perforate(net)``; the Trainer must train ``net``
            itself (``Trainer(model=model.net, ...)``), which perforate changed in place.
        trainer: the Trainer to bind to now (or call `bind` later).
        monitor: the evaluation metric that is the validation score (``"eval_"`` is
            prepended when missing, as for ``metric_for_best_model``).
        mode: "max" or "min"; default: "min" for a metric ending in "loss", else "max". It is
            the schedule's mode.
        schedule: when to grow (``pf.Schedule(neuron_patience=5, ...)``; its mode is `mode`).
        **tracker_options: passed to `perforate.Tracker` (``out_dir``, ``checkpoint_every``,
            ...), except the scheduler options.
    """

    def __init__(self, model: PerforatedModel, trainer: transformers.Trainer | None = None, *,
                 monitor: str = "eval_loss", mode: str | None = None,
                 schedule: Schedule | None = None, **tracker_options: Any) -> None:
        if not isinstance(model, PerforatedModel):
            raise TypeError(f"PerforateTrainerCallback needs a PerforatedModel "
                            f"(pf.perforate(net)), got {type(model).__name__}")
        owned = sorted(set(tracker_options) & set(_OWNED_OPTIONS))
        if owned:
            raise ConfigError(f"{', '.join(owned)}: set by the callback (the Trainer steps its "
                              "learning-rate schedule, TrainingArguments configure it)")
        if not isinstance(monitor, str) or not monitor:
            raise ConfigError(f"monitor must be a metric name, got {monitor!r}")
        self.model = model
        self.monitor = monitor if monitor.startswith("eval_") else f"eval_{monitor}"
        self.mode = mode if mode is not None else (
            "min" if self.monitor.endswith("loss") else "max")
        reject_moved_settings("PerforateTrainerCallback",
                              {k: v for k, v in tracker_options.items() if k in SETTINGS})
        self.schedule = monitored(schedule, self.mode)
        """The schedule's settings the tracker starts from."""
        self.tracker_options = tracker_options
        self.trainer: transformers.Trainer | None = None
        """The bound Trainer (None before `bind`)."""
        self._tracker: Tracker | None = None
        self._active = False
        self._last_step = -1
        self._resumed: tuple[Path, int | None] | None = None  # restored checkpoint, its step
        if trainer is not None:
            self.bind(trainer)

    # --------------------------------------------------------------------------- binding
    @property
    def tracker(self) -> Tracker:
        """The `perforate.Tracker` that conducts the cycle (history, decisions, artifacts)."""
        if self._tracker is None:
            raise ConfigError("PerforateTrainerCallback is not bound to a Trainer: pass "
                              "trainer= or call callback.bind(trainer)")
        return self._tracker

    def bind(self, trainer: transformers.Trainer) -> PerforateTrainerCallback:
        """Attach to `trainer` (adding the callback to it if missing) and build the tracker.

        Raises `ConfigError` (a ``ValueError``) for settings the cycle conflicts with.
        """
        if self.trainer is not None:
            raise ConfigError("this PerforateTrainerCallback is already bound to a Trainer")
        _check_trainer(trainer, self.model)
        if trainer.optimizer is not None or trainer.lr_scheduler is not None:
            raise ConfigError("Trainer(optimizers=...) is not supported: the optimizer and "
                              "scheduler are rebuilt after every restructure; configure them "
                              "with TrainingArguments, optimizer_cls_and_kwargs, or by "
                              "overriding create_optimizer / create_scheduler")
        self.trainer = trainer
        try:
            self._tracker = Tracker(self.model, self._build_optimizer, schedule=self.schedule,
                                    **self.tracker_options)
        except Exception:
            self.trainer = None  # unbound, as before: bad tracker options leave no trace
            raise
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        # resume_from_checkpoint loads the weights through the Trainer's
        # `_load_from_checkpoint` before any callback event, into a model that must already
        # have the checkpoint's dendrites: restore the perforate state there instead (it
        # holds the same weights, and candidates).
        private_api.replace_trainer_checkpoint_loader(trainer, self._restore_for_trainer)
        return self

    def restore(self, checkpoint: str | os.PathLike[str]) -> None:
        """Bring the model and tracker to a Trainer checkpoint's state (dendrite sets,
        weights, candidates, history) and give the Trainer the tracker's optimizer.

        ``trainer.train(resume_from_checkpoint=...)`` calls it (in place of the Trainer's own
        weight loading); call it yourself only where a Trainer does not, before that
        ``train``. Raises `LoadError` if `checkpoint` holds no perforate state or does not fit
        the model, `PhaseError` if its run is already done.
        """
        tracker, trainer = self.tracker, self.trainer
        directory = Path(checkpoint)
        try:
            state = read_checkpoint(directory)
        except LoadError as exc:
            raise LoadError(f"{exc}: {directory} was not saved with a PerforateTrainerCallback "
                            "(or its save was cut short): resume from another checkpoint") from None
        if state["schedule"]["done"]:
            raise PhaseError(f"the perforated run of {directory} is done: nothing to resume; "
                             "load its model with pf.load(checkpoint, fresh_model)")
        differ = differing_fields(saved_config(state), self.model.config)
        if differ:
            raise LoadError(f"{directory} was perforated with another config ({', '.join(differ)}"
                            "): perforate the fresh model with the checkpoint's config")
        mine = tracker.settings()
        differ = sorted(k for k, v in state["settings"].items() if mine.get(k) != v)
        if differ:
            logger.warning("the callback's tracker options differ from the checkpoint's (%s): "
                           "the resumed run follows this callback's", ", ".join(differ))
        try:
            tracker.load_state_dict(state, restore_rng=False)  # the Trainer restores its RNGs
        except (RuntimeError, KeyError) as exc:
            raise LoadError(f"{directory} does not fit the model: {exc}") from exc
        # The Trainer prepares this optimizer and loads optimizer.pt (the same state) into it.
        trainer.optimizer = tracker.optimizer
        self._resumed = (directory, _global_step(directory))
        logger.info("restored %s: epoch %d, %s phase, %d dendrite set(s)", directory,
                    tracker.epoch, tracker.phase, self.model.num_dendrites)

    def _restore_for_trainer(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """The bound Trainer's ``_load_from_checkpoint``: the perforate state has the
        weights, in the structure they need."""
        self.restore(resume_from_checkpoint)

    def _build_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The tracker's optimizer factory: the Trainer's own recipe over the network's
        trainable parameters now (`params` are the same ones), dendrite output weights not
        decayed (like biases)."""
        trainer = self.trainer
        held = trainer.optimizer
        trainer.optimizer = None  # create_optimizer builds only when there is none
        try:
            with _dendrite_outputs_not_decayed(trainer, self.model):
                return trainer.create_optimizer()
        finally:
            trainer.optimizer = held

    # ------------------------------------------------------------------------- the events
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        tracker = self.tracker
        _check_trainer(self.trainer, self.model)
        resumed, self._resumed = self._resumed, None
        if resumed is None and (tracker.epoch > 0 or state.global_step > 0):
            raise PhaseError("a perforated run is one trainer.train() call from the start, or "
                             "from a checkpoint the callback saved (trainer.train("
                             "resume_from_checkpoint=...)); training again is not supported: "
                             "build a new model and callback")
        if resumed is not None and (state.global_step == 0 or resumed[1] not in (
                None, state.global_step)):
            raise PhaseError(f"the callback restored {resumed[0]} but the Trainer starts at "
                             f"step {state.global_step}: pass the same checkpoint to "
                             "trainer.train(resume_from_checkpoint=...)")
        self._active, self._last_step = True, state.global_step
        self._install(state)
        if resumed is not None:
            self._restore_schedule(resumed[0])

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Add the tracker's state and the perforated model to the checkpoint just saved."""
        if not self._active or not args.should_save:
            return
        prefix = transformers.trainer_utils.PREFIX_CHECKPOINT_DIR
        directory = Path(args.output_dir) / f"{prefix}-{state.global_step}"
        if not directory.is_dir():
            raise ConfigError(f"the Trainer's checkpoint {directory} is missing: the callback "
                              "saves the perforate state only beside checkpoints in output_dir")
        self.tracker.save_checkpoint(directory)  # checkpoint.pt (atomic), checkpoint.json
        self.model.save_pretrained(directory)  # pf.load(directory, fresh_net) reads it

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._dendrite_epoch(state, control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._dendrite_epoch(state, control)

    def on_evaluate(self, args: Any, state: Any, control: Any,
                    metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        """A neuron-phase epoch ends: its ``monitor`` metric is the validation score."""
        if not self._active or self.tracker.done or state.global_step == self._last_step:
            return  # outside training, after the end, or no training since (eval_on_start)
        metrics = metrics or {}
        if self.monitor not in metrics:
            if isinstance(self.trainer.eval_dataset, dict):
                return  # another evaluation set's metrics
            raise ConfigError(f"monitor {self.monitor!r} is not among the evaluation metrics "
                              f"({', '.join(sorted(metrics))}); set monitor= or "
                              "compute_metrics")
        self._advance(float(metrics[self.monitor]), state, control)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._active = False
        if not self.tracker.done:
            logger.warning("training ended after %d epoch(s) before the perforated cycle was "
                           "done (%s phase, %d dendrite set(s)): raise num_train_epochs / "
                           "max_steps; the model holds the current weights, not the best "
                           "cycle's", self.tracker.epoch, self.tracker.phase,
                           self.model.num_dendrites)

    # ---------------------------------------------------------------------------- helpers
    def _dendrite_epoch(self, state: Any, control: Any) -> None:
        """Where the Trainer would evaluate in a dendrite phase, step without evaluating."""
        if self._active and not self.tracker.done and self.tracker.phase == DENDRITE \
                and control.should_evaluate:
            control.should_evaluate = False
            self._advance(None, state, control)

    def _advance(self, val: float | None, state: Any, control: Any) -> Decision:
        decision = self.tracker.step(val)
        self._last_step = state.global_step
        if decision.restructured:
            self._install(state)
        if decision.done:
            control.should_training_stop = True
        return decision

    def _restore_schedule(self, directory: Path) -> None:
        """Load the checkpoint's learning-rate schedule into the scheduler `_install` built,
        and put its last rate back into the optimizer (building the scheduler reset it)."""
        path = directory / "scheduler.pt"
        if not path.is_file():
            logger.warning("%s holds no scheduler.pt (save_only_model?): the learning-rate "
                           "schedule restarts", directory)
            return
        scheduler = self.trainer.lr_scheduler
        scheduler.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        for group, lr in zip(self.trainer.optimizer.param_groups, scheduler.get_last_lr(),
                             strict=True):
            group["lr"] = lr

    def _install(self, state: Any) -> None:
        """Put the tracker's optimizer into the Trainer, with a fresh scheduler over it."""
        trainer, optimizer = self.trainer, self.tracker.optimizer
        wrapper = trainer.optimizer
        if _is_accelerated(wrapper):
            # The loop and the accelerator hold this object: re-initialise it around the new
            # optimizer (its __init__ redoes the GradScaler patching and device placement).
            wrapper.__init__(optimizer, device_placement=wrapper.device_placement,
                             scaler=wrapper.scaler)
        else:
            trainer.optimizer = wrapper = optimizer
        if self.tracker.phase == NEURON:
            trainer.lr_scheduler = None  # create_scheduler builds only when there is none
            scheduler = trainer.create_scheduler(num_training_steps=state.max_steps,
                                                 optimizer=wrapper)
        else:  # the candidates' learning rate as the model built it
            scheduler = torch.optim.lr_scheduler.LambdaLR(wrapper, _constant)
            trainer.lr_scheduler = scheduler
        handler = trainer.callback_handler
        handler.optimizer, handler.lr_scheduler = wrapper, scheduler


def _global_step(directory: Path) -> int | None:
    """The step of a Trainer checkpoint (its ``trainer_state.json``), None if unreadable."""
    try:
        return int(json.loads((directory / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _is_accelerated(optimizer: Any) -> bool:
    from accelerate.optimizer import AcceleratedOptimizer

    return isinstance(optimizer, AcceleratedOptimizer)


@contextmanager
def _dendrite_outputs_not_decayed(trainer: Any, model: PerforatedModel) -> Iterator[None]:
    """While building the optimizer, leave dendrite output weights out of the Trainer's
    weight-decay names (its own rule, or a subclass's, applies to everything else)."""
    own = vars(trainer).get("get_decay_parameter_names")  # an instance attribute, if any
    decay_names = trainer.get_decay_parameter_names  # bound: a subclass's override applies
    outputs = {f"{name}.output_weight" for name in model.dendrite_layers()}
    trainer.get_decay_parameter_names = lambda m: [n for n in decay_names(m) if n not in outputs]
    try:
        yield
    finally:
        if own is None:
            del trainer.get_decay_parameter_names
        else:
            trainer.get_decay_parameter_names = own


def _check_trainer(trainer: Any, model: PerforatedModel) -> None:
    """Refuse, with the reason, Trainer settings the perforated cycle conflicts with."""
    if not isinstance(trainer, transformers.Trainer):
        raise TypeError(f"bind() needs a transformers.Trainer, got {type(trainer).__name__}")
    if trainer.model is not model.net:
        reason = ("give the Trainer the network itself: Trainer(model=pmodel.net)"
                  if trainer.model is model else
                  "the Trainer trains another model than the PerforatedModel's net: perforate "
                  "the whole model the Trainer trains (pf.perforate(model), then "
                  "Trainer(model=model))")
        raise ConfigError(reason)
    args = trainer.args
    problems = []
    strategy = getattr(args, "eval_strategy", None) or getattr(args, "evaluation_strategy", "no")
    if strategy == "no":
        problems.append("eval_strategy='no': each evaluation is one tracker epoch; use "
                        "eval_strategy='epoch' (or 'steps')")
    if args.load_best_model_at_end:
        problems.append("load_best_model_at_end=True: the tracker restores the best cycle's "
                        "weights itself")
    if getattr(args, "activation_checkpointing", False) or getattr(
            args, "gradient_checkpointing", False):
        problems.append("gradient (activation) checkpointing recomputes the forward in the "
                        "backward, which the dendrite phase's error taps do not support")
    if getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled",
                                                                   False):
        problems.append("DeepSpeed / FSDP shard the parameters, which dendrite installs resize")
    if args.world_size > 1 or args.n_gpu > 1:
        problems.append("several processes or GPUs: the Trainer's DDP / DataParallel wrapper "
                        "is not rebuilt after a restructure; use pf.Tracker with DDP in your own "
                        "loop (docs/distributed.md)")
    if any(isinstance(c, transformers.EarlyStoppingCallback)
           for c in trainer.callback_handler.callbacks):
        problems.append("EarlyStoppingCallback: the tracker decides when to stop "
                        "(neuron_patience, max_dendrites)")
    if problems:
        raise ConfigError("PerforateTrainerCallback cannot run with " + "; ".join(problems))
