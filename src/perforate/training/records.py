"""The run's records: one row per epoch, one per neuron cycle, one per installed dendrite set.

They are what ``history.csv``, ``architectures.csv`` and ``summary.json`` hold, and the scores
at the current cycle's best epoch (recorded again, flat, through the next dendrite phase).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import Tensor

from ..errors import NonFiniteError
from ..metrics import error_reduction
from . import artifacts

Scores = dict[str, float | None]


def opt_float(name: str, value: Any) -> float | None:
    """`value` as a float (a number or a one-element tensor), None kept; NaN is a
    `NonFiniteError`."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name} must be a number or None, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise NonFiniteError(f"{name} is NaN (did the loss diverge?)")
    return value


class RunRecords:
    """``history``, ``architectures``, ``dendrite_phases``, ``extra_names`` (see `Tracker`),
    plus the current cycle's bookkeeping: ``params`` (deployable parameters of the current
    architecture), ``cycle_scores`` (scores at the cycle's best epoch), ``restored_scores``
    (those of the restored weights, recorded through a dendrite phase), ``cycle_seconds``."""

    def __init__(self, params: int) -> None:
        self.history: list[dict[str, Any]] = []
        self.architectures: list[dict[str, Any]] = []
        self.dendrite_phases: list[dict[str, Any]] = []
        self.extra_names: list[str] = []
        self.params = params
        self.cycle_scores: dict[str, Any] = {}
        self.restored_scores: Scores = {}
        self.cycle_seconds = 0.0

    # ---------------------------------------------------------------------------- scores
    def check_extra(self, extra: Mapping[str, float] | None) -> Scores:
        """Validate extra scores (names not reserved); new names become columns."""
        if extra is None:
            return {}
        out = {}
        reserved = set(artifacts.HISTORY_COLUMNS)
        for key, value in extra.items():
            if not isinstance(key, str) or not key or key in reserved:
                raise ValueError(f"extra score name {key!r} is empty or a reserved column")
            out[key] = opt_float(f"extra[{key!r}]", value)
        self.extra_names += [k for k in out if k not in self.extra_names]
        return out

    def fill_flat(self, scores: Scores, extras: Scores) -> None:
        """Dendrite phase: missing scores are those of the restored weights (in place)."""
        for key, value in self.restored_scores.items():
            if key in scores and scores[key] is None:
                scores[key] = value
            elif key in self.extra_names and key not in extras:
                extras[key] = value

    def keep_cycle_best(self, scores: Scores, extras: Scores, epoch: int) -> None:
        self.cycle_scores = {**scores, **extras, "epoch": epoch}

    # --------------------------------------------------------------------------- records
    def add_epoch(self, row: dict[str, Any], seconds: float) -> None:
        self.cycle_seconds += seconds
        self.history.append(row)

    def add_cycle(self, result: Any, dendrites: int) -> dict[str, Any]:
        """Record the neuron cycle just ended (`result`: the schedule's `CycleResult`)."""
        s = self.cycle_scores
        record = {"cycle": result.cycle, "dendrites": dendrites, "params": self.params,
                  "epochs": result.epochs, "dendrite_epochs": result.dendrite_epochs,
                  "best_epoch": result.best_epoch, "best_val": result.best,
                  "test_at_best_val": s.get("test"), "train_at_best_val": s.get("train"),
                  "improved": result.improved, "kept": False, "seconds": self.cycle_seconds}
        for name in self.extra_names:
            record[f"{name}_at_best_val"] = s.get(name)
        self.architectures.append(record)
        self.restored_scores = {k: v for k, v in s.items() if k != "epoch"}
        self.cycle_seconds = 0.0
        return record

    def add_dendrite_phase(self, record: dict[str, Any]) -> None:
        self.dendrite_phases.append(record)

    def begin_cycle(self, params: int) -> None:
        self.params = params
        self.cycle_scores = {}

    def finish(self, final: dict[str, Any], params: int) -> None:
        """The run is over: `final` (an architecture record) is the kept model."""
        final["kept"] = True
        self.params = params
        self.restored_scores = {}

    # --------------------------------------------------------------------------- queries
    def error_reduction(self, score: str, final: dict[str, Any] | None) -> float | None:
        """Error reduction of `score` ("test", "val" or an extra) from cycle 0 to `final`."""
        key = "best_val" if score == "val" else f"{score}_at_best_val"
        if final is None or not self.architectures:
            return None
        first, last = self.architectures[0].get(key), final.get(key)
        if first is None or last is None:
            return None
        return error_reduction(first, last)

    def error_reductions(self, final: dict[str, Any] | None) -> dict[str, float]:
        """{score: error reduction} for test and every accuracy-like extra score."""
        out = {}
        for name in ["test", *self.extra_names]:
            try:
                value = self.error_reduction(name, final)
            except ValueError:  # not an accuracy-like score
                value = None
            if value is not None:
                out[name] = value
        return out

    # ------------------------------------------------------------------------ state dict
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's record entries (copies of the containers)."""
        return {"cycle_scores": dict(self.cycle_scores),
                "restored_scores": dict(self.restored_scores),
                "cycle_seconds": self.cycle_seconds, "extra_names": list(self.extra_names),
                "history": [dict(r) for r in self.history],
                "architectures": [dict(a) for a in self.architectures],
                "dendrite_phases": [dict(p) for p in self.dendrite_phases]}

    def load_state_dict(self, state: Mapping[str, Any], params: int) -> None:
        self.cycle_scores = dict(state["cycle_scores"])
        self.restored_scores = dict(state["restored_scores"])
        self.cycle_seconds = float(state["cycle_seconds"])
        self.extra_names = list(state["extra_names"])
        self.history = [dict(r) for r in state["history"]]
        self.architectures = [dict(a) for a in state["architectures"]]
        self.dendrite_phases = [dict(p) for p in state["dendrite_phases"]]
        self.params = params
