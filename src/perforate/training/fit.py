"""`fit`: the whole cycle in one call, with progress bars.

Every epoch's randomness (shuffling, dropout, candidate initialisation) comes from torch's
global RNG and the DataLoaders' own generators, all saved in checkpoints, so a run resumed with
``pf.fit(..., tracker=pf.resume(...))`` continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..engine.model import DENDRITE, PerforatedModel
from ..errors import NonFiniteError
from ..metrics import Metric, metric_name, task_metric
from .optimizers import OptimizerFactory, SchedulerFactory
from .progress import make_progress
from .schedule import SETTINGS, Schedule, reject_moved_settings
from .tracker import Decision, Tracker

logger = logging.getLogger(__name__)


def _split(batch: Any) -> tuple[Any, Tensor]:
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError("fit() expects batches of (inputs, targets); got "
                    f"{type(batch).__name__}" + (f" of length {len(batch)}"
                                                 if isinstance(batch, (list, tuple)) else ""))


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


def _call(model: nn.Module, x: Any) -> Tensor:
    return model(*x) if isinstance(x, (list, tuple)) else model(x)


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable[Any],
            device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Outputs and targets of `model` (eval mode) over `loader`, concatenated."""
    if device is None:
        device = next(model.parameters()).device
    model.eval()
    outs, ys = [], []
    for batch in loader:
        x, y = _split(batch)
        outs.append(_call(model, _to(x, device)))
        ys.append(_to(y, device))
    if not outs:
        raise ValueError("predict(): the loader yielded no batch")
    return torch.cat(outs), torch.cat(ys)


def _set_epoch(loaders: list[Any], epoch: int) -> None:
    """A `DistributedSampler` shuffles with its epoch: give it the tracker's."""
    for loader in loaders:
        sampler = getattr(loader, "sampler", None)
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)


def _choose_metric(targets: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Metric:
    metric = task_metric(targets, loss_fn)
    kind = "floating-point" if targets.is_floating_point() else "integer class"
    logger.info("fit(): %s targets: scoring with %s (pass metric= to choose)", kind,
                "-loss_fn" if metric.__name__ == "neg_loss" else metric_name(metric))
    return metric


def fit(model: PerforatedModel | nn.Module, train_loader: Iterable[Any], val_loader: Iterable[Any],
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        optimizer_factory: OptimizerFactory | None = None, *,
        test_loader: Iterable[Any] | None = None, metric: Metric | None = None,
        decision_metric: Metric | None = None,
        scheduler_factory: SchedulerFactory | None = None,
        scheduler_interval: str | None = None, schedule: Schedule | None = None,
        tracker_kwargs: Mapping[str, Any] | None = None, tracker: Tracker | None = None,
        progress: bool = True, track_train: bool = True,
        on_epoch_end: Callable[[Tracker, Decision], None] | None = None) -> Tracker:
    """Train `model` through the paper's cycle until the tracker is done; return the tracker.

    Per epoch: one pass over `train_loader` with ``tracker.optimizer`` (the user's optimizer in
    the neuron phase, the candidate optimizer in the dendrite phase), then, in the neuron phase
    only, the scores on the validation (and test) sets, and ``tracker.step``.

    Scores: ``metric(outputs, targets)`` over a whole set (higher is better). Without
    `metric`, it is chosen from the validation targets (logged): accuracy for integer class
    targets, ``-loss_fn`` for floating-point targets (regression); see
    `perforate.metrics.task_metric`. With
    `decision_metric` (e.g. ``pf.metrics.neg_loss(loss_fn)``), decisions and the train/val/test
    columns use it and `metric` is recorded as extra scores ``train_<name>``, ``val_<name>``,
    ``test_<name>``. `track_train`: also score the training batches (their outputs are kept
    for the epoch). `optimizer_factory(params)` gets a list of the trainable parameters that
    also carries their names (``params.named``; see `perforate.param_groups`).
    `scheduler_interval`: "epoch" (the default) or "batch" (the scheduler is stepped after
    every neuron-phase optimizer step: OneCycleLR, warm-up); it is rebuilt fresh each neuron
    cycle. `schedule`: when to grow (``pf.Schedule(neuron_patience=..., ...)``); `tracker_kwargs`:
    `Tracker`'s other keyword arguments (``out_dir``, ``checkpoint_every``, ...). `tracker`:
    continue a resumed run (then `optimizer_factory`, `scheduler_factory`,
    `scheduler_interval`, `schedule` and `tracker_kwargs` are not used).
    `on_epoch_end(tracker, decision)` runs after each step. `progress`: tqdm bars on a
    terminal; in a pipe or a log file (or without tqdm) plain lines at phase switches and
    every few seconds (`perforate.training.progress`); ``False``: nothing.

    Under torchrun, pass the `DistributedDataParallel`-wrapped model and loaders with a
    `DistributedSampler`: training runs through ``tracker.model``, each sampler gets
    ``set_epoch``, and each rank scores its own validation loader (the tracker averages the
    scores); see ``docs/distributed.md``.
    """
    if tracker is None:
        if optimizer_factory is None:
            raise TypeError("fit() needs an optimizer_factory (or a resumed tracker)")
        kwargs = dict(tracker_kwargs or {})
        if scheduler_interval is not None:
            if kwargs.get("scheduler_interval", scheduler_interval) != scheduler_interval:
                raise ValueError("fit(): scheduler_interval and tracker_kwargs"
                                 "['scheduler_interval'] differ")
            kwargs["scheduler_interval"] = scheduler_interval
        moved = {k: kwargs.pop(k) for k in SETTINGS if k in kwargs}
        reject_moved_settings("fit", moved, via="tracker_kwargs")
        if "schedule" in kwargs and schedule is not None:
            raise ValueError("fit(): schedule given twice (schedule= and tracker_kwargs)")
        schedule = kwargs.pop("schedule", schedule)
        tracker = Tracker(model, optimizer_factory, scheduler_factory, schedule=schedule,
                          **kwargs)
    elif tracker.perforated is not getattr(model, "module", model):
        raise ValueError("fit(): tracker.perforated is not the model given (after pf.resume, "
                         "pass tracker.perforated)")
    if not callable(loss_fn) or (metric is not None and not callable(metric)):
        raise TypeError("fit(): loss_fn and metric must be callables")
    loaders = [train_loader, val_loader, *([test_loader] if test_loader is not None else [])]
    generators = []
    for loader in loaders:
        generators += [getattr(loader, "generator", None),
                       getattr(getattr(loader, "sampler", None), "generator", None)]
    tracker.track_generators(*generators)
    model = tracker.perforated  # unwrapped; a DDP wrapper is `tracker.model`
    device = next(model.parameters()).device

    shown = make_progress(progress, total=tracker.schedule.max_epochs, initial=tracker.epoch)
    try:
        while not tracker.done:
            dendrite = model.phase == DENDRITE
            optimizer = tracker.optimizer
            net = tracker.model
            _set_epoch(loaders, tracker.epoch)
            model.train()
            outs: list[Tensor] = []
            ys: list[Tensor] = []
            shown.start_epoch(tracker.epoch, model.phase, len(train_loader)
                              if hasattr(train_loader, "__len__") else None)
            try:
                for batch in train_loader:
                    x, y = _split(batch)
                    x, y = _to(x, device), _to(y, device)
                    optimizer.zero_grad(set_to_none=True)
                    out = _call(net, x)
                    loss = loss_fn(out, y)
                    loss.backward()
                    optimizer.step()
                    tracker.batch_step()
                    if track_train and not dendrite:
                        outs.append(out.detach())
                        ys.append(y)
                    shown.batch()
            except RuntimeError as exc:  # a collective failed: did a rank stop waiting?
                if tracker.sync is not None:
                    tracker.sync.explain(exc)
                raise
            if dendrite:
                decision = tracker.step()
            else:
                scores: dict[str, float | None] = {"train": None, "val": None, "test": None}
                extra: dict[str, float] = {}
                sets: list[tuple[str, Tensor, Tensor]] = []
                if outs:
                    sets.append(("train", torch.cat(outs), torch.cat(ys)))
                sets.append(("val", *predict(model, val_loader, device)))
                if test_loader is not None:
                    sets.append(("test", *predict(model, test_loader, device)))
                if metric is None:
                    val_targets = next(t for name, _, t in sets if name == "val")
                    metric = _choose_metric(val_targets, loss_fn)
                scorer = decision_metric or metric
                extra_name = metric_name(metric) if decision_metric is not None else None
                for name, o, t in sets:
                    if not bool(torch.isfinite(o).all()):
                        raise NonFiniteError(
                            f"epoch {tracker.epoch + 1}: the model's {name} outputs are not "
                            "finite (training diverged; lower the learning rate)")
                    scores[name] = scorer(o, t)
                    if extra_name is not None:
                        extra[f"{name}_{extra_name}"] = metric(o, t)
                decision = tracker.step(scores["val"], test_score=scores["test"],
                                        train_score=scores["train"], extra=extra or None)
            phases = tracker.records.dendrite_phases
            if phases and phases[-1].get("end_epoch") == decision.epoch and not tracker.done \
                    and metric is not None:
                # a set was just installed: its validation score before any training shows
                # what the install itself did (unchanged with a = 0; moved by least squares).
                # The checkpoint is already written: this pass must not consume the run's
                # randomness (a DataLoader draws a seed per iteration), or a resumed run differs.
                cuda = [device] if device.type == "cuda" else []
                with torch.random.fork_rng(devices=cuda):
                    outputs, targets = predict(model, val_loader, device)
                phases[-1]["val_at_install"] = tracker.mean_score(
                    (decision_metric or metric)(outputs, targets))
            shown.end_epoch(decision.epoch, decision.phase, decision.dendrites,
                            tracker.records.history[-1]["val"])
            if on_epoch_end is not None:
                on_epoch_end(tracker, decision)
    finally:
        shown.close()
    return tracker
