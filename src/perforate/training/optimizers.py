"""The neuron-phase optimizer and scheduler: built fresh each neuron cycle from the user's
factories, stepped per epoch or per batch, swapped for the candidate optimizer in a dendrite
phase.

The optimizer factory receives a `TrainableParameters`: a plain list of the parameters that
require grad (what ``torch.optim`` takes, so ``lambda params: torch.optim.Adam(params)`` works
as it always has) that also carries their names and the model, so a factory can build
parameter groups without a closure::

    lambda params: torch.optim.AdamW(pf.param_groups(params, weight_decay=0.05), lr=1e-3)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
"""``factory(params) -> optimizer``; `params` is a `TrainableParameters` (a list)."""
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
"""``factory(optimizer) -> scheduler`` (any object with ``step()`` and ``state_dict()``)."""

SCHEDULER_INTERVALS = ("epoch", "batch")


class TrainableParameters(list):  # type: ignore[type-arg]
    """The parameters of `model` that require grad, in ``named_parameters`` order.

    A list (pass it to any ``torch.optim`` optimizer as is) with two more attributes:
    ``named``, the ``(name, parameter)`` pairs, and ``model``, the `PerforatedModel`.
    """

    def __init__(self, model: nn.Module) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        super().__init__(p for _, p in named)
        self.named: list[tuple[str, nn.Parameter]] = named
        self.model = model


def _no_decay_ids(model: nn.Module) -> set[int]:
    """Dendrite output weights: each neuron's scale of its dendrites (like a bias or a gain)."""
    layers = model.dendrite_layers().values() if hasattr(model, "dendrite_layers") else []
    return {id(m.output_weight) for m in layers}


def param_groups(params: TrainableParameters | nn.Module, *, weight_decay: float,
                 no_decay: Callable[[str, nn.Parameter], bool] | None = None,
                 ) -> list[dict[str, Any]]:
    """Two parameter groups for an optimizer: ``{"params": decayed, "weight_decay":
    weight_decay}`` and ``{"params": rest, "weight_decay": 0.0}`` (empty groups left out).

    `params`: what the optimizer factory receives (or a `PerforatedModel`). Not decayed by
    default: biases and other 1-d parameters (norm gains) and dendrite output weights;
    `no_decay(name, param) -> bool` replaces that rule.
    """
    if isinstance(params, TrainableParameters):
        named, model = params.named, params.model
    elif isinstance(params, nn.Module):
        named, model = [(n, p) for n, p in params.named_parameters() if p.requires_grad], params
    else:
        raise TypeError(f"param_groups() needs the optimizer factory's params or a model, got "
                        f"{type(params).__name__}")
    if no_decay is None:
        skip = _no_decay_ids(model)

        def no_decay(name: str, p: nn.Parameter) -> bool:
            return p.ndim <= 1 or id(p) in skip

    decay, rest = [], []
    for name, p in named:
        (rest if no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": float(weight_decay)},
              {"params": rest, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _is_plateau(scheduler: Any) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


class Optimization:
    """The optimizer and scheduler that train the next epoch, and when to step the scheduler.

    ``interval="epoch"``: `end_epoch` steps the scheduler (``ReduceLROnPlateau`` gets the
    validation score). ``interval="batch"``: `end_batch` steps it after every neuron-phase
    optimizer step (OneCycleLR, warm-up); `end_epoch` leaves it alone.
    """

    def __init__(self, optimizer_factory: OptimizerFactory,
                 scheduler_factory: SchedulerFactory | None, interval: str = "epoch") -> None:
        if not callable(optimizer_factory):
            raise TypeError("optimizer_factory must be callable: params -> optimizer")
        if scheduler_factory is not None and not callable(scheduler_factory):
            raise TypeError("scheduler_factory must be callable: optimizer -> scheduler")
        if interval not in SCHEDULER_INTERVALS:
            raise ValueError(f"scheduler_interval must be one of {SCHEDULER_INTERVALS}, got "
                             f"{interval!r}")
        self.optimizer_factory = optimizer_factory
        self.scheduler_factory = scheduler_factory
        self.interval = interval
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None

    @property
    def lr(self) -> float:
        """Learning rate of the first parameter group now."""
        return float(self.optimizer.param_groups[0]["lr"])  # type: ignore[union-attr]

    def renew(self, model: nn.Module) -> None:
        """A fresh optimizer (and scheduler) over the model's trainable parameters."""
        optimizer = self.optimizer_factory(TrainableParameters(model))
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer_factory returned {type(optimizer).__name__}, not a "
                            "torch.optim.Optimizer")
        scheduler = self.scheduler_factory(optimizer) if self.scheduler_factory else None
        if self.interval == "batch" and _is_plateau(scheduler):
            raise ValueError("ReduceLROnPlateau needs a validation score: use "
                             "scheduler_interval='epoch'")
        self.optimizer, self.scheduler = optimizer, scheduler

    def use_candidates(self, model: Any) -> None:
        """The dendrite phase: the model's candidate optimizer, no scheduler."""
        self.optimizer, self.scheduler = model.candidate_optimizer(), None

    def end_batch(self) -> None:
        if self.scheduler is not None and self.interval == "batch":
            self.scheduler.step()

    def end_epoch(self, val: float) -> None:
        if self.scheduler is None or self.interval != "epoch":
            return
        if _is_plateau(self.scheduler):
            self.scheduler.step(val)
        else:
            self.scheduler.step()

    def state_dict(self, neuron_phase: bool) -> dict[str, Any]:
        """``{"optimizer", "scheduler"}`` states; the candidate optimizer is the model's."""
        sched = None
        if self.scheduler is not None:
            sched = {k: v for k, v in self.scheduler.state_dict().items() if not callable(v)}
        optimizer = self.optimizer.state_dict() if neuron_phase else None  # type: ignore[union-attr]
        return {"optimizer": optimizer, "scheduler": sched}

    def load_state_dict(self, model: Any, neuron_phase: bool, optimizer: Any,
                        scheduler: Any) -> None:
        """Rebuild for the model's phase and load the saved states into the new objects."""
        if not neuron_phase:
            self.use_candidates(model)
            return
        self.renew(model)
        if optimizer is not None:
            self.optimizer.load_state_dict(optimizer)  # type: ignore[union-attr]
        if self.scheduler is not None and scheduler is not None:
            self.scheduler.load_state_dict(scheduler)

