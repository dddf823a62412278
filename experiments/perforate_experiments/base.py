"""What an experiment is: its variants, how one (variant, seed) run is trained and scored.

Variants are configurations, not forks (algorithm.md, Figure 7 and "Controls"):

=================  =========================================================================
``pb``             library defaults (`PerforationConfig()`)
``pb-cc``          the paper's algorithm with this library's measured choices
                   (`PerforationConfig.paper()`: Cascade-Correlation, frozen dendrites)
``pb-perf``        ``pb`` with perforation (installed dendrites pass no error to earlier
                   layers; the default until the Protocol P comparison, docs/algorithm.md)
``pb-paper``       the paper's literal choices (`PerforationConfig.paper(literal=True)`:
                   running centering, no error scaling)
``restart``        restart control: the same controller and schedule, dendrites disabled
``width``          width control: the plain network widened to ``pb``'s final parameter count
                   (same seed), trained with the restart controller
``width-cc``       the same, matched to ``pb-cc``'s final parameter count
``width-perf``     the same, matched to ``pb-perf``'s final parameter count
``pb-head``        ``pb-cc`` with dendrites on the output layer only
``pb-backbone``    ``pb-cc`` with dendrites on every layer but the output layer
``cc-no-perf``     ``pb-cc`` without perforation
``gd``             ``pb-cc`` with candidates trained by gradient descent on the task loss
``plain``          the plain network, one cycle (a point of the width frontier)
=================  =========================================================================

An experiment may add variants of its own (`Experiment.overrides`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from perforate.config import PAPER, PAPER_LITERAL, CascadeCorrelation, PerforationConfig, migrate

#: Variants without dendrites (the controls and the frontier's plain network).
PLAIN_VARIANTS = ("restart", "width", "width-cc", "width-perf", "plain")
#: The restart control.
CONTROL = "restart"
#: Width controls and the PB variant whose final parameter count each one matches.
WIDTH_CONTROLS = {"width": "pb", "width-cc": "pb-cc", "width-perf": "pb-perf"}


def budget_of(variant: str) -> str:
    """A variant's epoch-budget suffix (``pb-cc-e150`` -> ``-e150``), or "" (the spec's own)."""
    budget = re.search(r"-e\d+$", variant)
    return budget.group(0) if budget else ""


def control_of(variant: str) -> str:
    """The restart control a variant is paired with: the one of its epoch budget
    (``pb-e150`` -> ``restart-e150``), else ``restart``."""
    return CONTROL + budget_of(variant)


def is_plain(variant: str) -> bool:
    """True for a variant without dendrites: the plain ones, and a restart control at any
    epoch budget (``restart-e150`` is its own control)."""
    return variant in PLAIN_VARIANTS or control_of(variant) == variant


VARIANTS: dict[str, str] = {
    "pb": "PB (library defaults)",
    "pb-cc": "PB, the paper's algorithm (Cascade-Correlation, frozen dendrites)",
    "pb-perf": "PB (library defaults), perforated",
    "pb-paper": "PB, the paper's literal choices (running centering, no error scaling)",
    "restart": "restart control (same controller, no dendrites)",
    "width": "width control (plain net widened to PB's final parameter count)",
    "width-cc": "width control matched to pb-cc's final parameter count",
    "width-perf": "width control matched to pb-perf's final parameter count",
    "pb-head": "PB only head",
    "pb-backbone": "PB only backbone",
    "cc-no-perf": "CC no perforation",
    "gd": "GD dendrites",
    "plain": "plain network, one cycle (width frontier)",
}


#: Names of `CascadeCorrelation`'s fields: a variant's flat fields with these names go there.
CASCADE_FIELDS = frozenset(f.name for f in dataclasses.fields(CascadeCorrelation))


def build_config(fields: dict[str, Any]) -> PerforationConfig:
    """The `PerforationConfig` of a variant's flat `fields` (those named in `CASCADE_FIELDS`
    go into its ``cascade``): variants stay one flat dict that can be merged with ``{**a,
    **b}``."""
    cascade = {k: v for k, v in fields.items() if k in CASCADE_FIELDS}
    top = {k: v for k, v in fields.items() if k not in CASCADE_FIELDS}
    return PerforationConfig(**top, cascade=CascadeCorrelation(**cascade))


def flat_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """A row's recorded configuration as one flat dict of today's names (``cascade``'s fields
    beside the others; rows of 0.1 hold the flat layout of then, renamed by
    `perforate.config.migrate`): what the report reads, whichever version wrote the row."""
    config = migrate(config or {})
    return {**(config.pop("cascade", None) or {}), **config}


def paper_fields(**changes: Any) -> dict[str, Any]:
    """The PerforationConfig fields of the paper's algorithm (`perforate.config.PAPER`), with
    `changes`: the base of the Figure 7 variants, whatever the library's defaults."""
    return {**PAPER, **changes}


def config_overrides(variant: str, head: str) -> dict[str, Any]:
    """PerforationConfig fields of a variant (`head` = qualified name of the output layer)."""
    if variant in ("pb", *PLAIN_VARIANTS):
        return {}
    if variant == "pb-paper":
        return paper_fields(**PAPER_LITERAL)
    if variant == "pb-perf":
        return {"perforated": True}
    return paper_fields(**{
        "pb-cc": {},
        "pb-head": {"target_modules": [head]},
        "pb-backbone": {"exclude_modules": [head]},
        "cc-no-perf": {"perforated": False},
        "gd": {"dendrite_phase": "task_loss"},
    }[variant])


@dataclass
class Setup:
    """Everything one run needs, built by an experiment for a (seed, quick) pair."""

    make_net: Callable[[float], nn.Module]
    """Network factory taking a width multiplier (1.0 = the experiment's network)."""
    head: str
    """Qualified name of the output layer (for the head/backbone variants)."""
    train: Iterable[Any]
    val: Iterable[Any]
    test: Iterable[Any]
    loss_fn: Callable[..., Any]
    metric: Callable[..., float]
    """Reported score (accuracy, ROC-AUC), higher is better."""
    optimizer_factory: Callable[..., Any]
    scheduler_factory: Callable[..., Any] | None = None
    decision_metric: Callable[..., float] | None = None
    """Score the controller decides on (None: `metric`)."""
    tracker_kwargs: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    """PerforationConfig fields common to every variant of this experiment."""
    extra_tests: dict[str, Iterable[Any]] = field(default_factory=dict)
    """More held-out sets scored with `metric` on the final model (e.g. PhysioNet set-c)."""
    width: float = 1.0
    """The network's own width multiplier (the compression study varies it)."""
    protocol: dict[str, Any] = field(default_factory=dict)
    """Recorded in every result row: data sizes, epochs, patience (deviations from the paper)."""
    post_run: Callable[..., dict[str, Any]] | None = None
    """``post_run(model, setup, tracker) -> dict``, called on the final model after training;
    the dict is stored in the result row under ``"post"`` (e.g. timing measurements)."""


@dataclass
class Experiment:
    """A named experiment: its variants and how to set up a run."""

    name: str
    description: str
    variants: tuple[str, ...]
    setup: Callable[..., Setup]
    """``setup(seed, quick, **options) -> Setup``."""
    default_seeds: tuple[int, ...] = tuple(range(10))
    options: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    """Extra sweep axes (e.g. ``{"width": (0.125, 0.25)}``), part of each run's identity."""
    variant_options: dict[str, dict[str, tuple[Any, ...]]] = field(default_factory=dict)
    """Per-variant sweep axes replacing `options` (e.g. PB only on the narrow widths)."""
    overrides: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Variants of this experiment's own: ``{variant: {"config": {...}, "tracker": {...}}}``
    (PerforationConfig fields and Tracker arguments); other variants use `config_overrides`."""

    def variant_settings(self, variant: str, head: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(PerforationConfig fields, Tracker arguments) of `variant`."""
        if variant in self.overrides:
            own = self.overrides[variant]
            return dict(own.get("config", {})), dict(own.get("tracker", {}))
        if variant == "plain":
            return {}, {}
        return config_overrides(variant, head), {}

    def option_grid(self, variant: str) -> list[dict[str, Any]]:
        """Every options combination `variant` runs with ([{}] when there are no axes)."""
        import itertools

        axes = self.variant_options.get(variant, self.options)
        keys = list(axes)
        return [dict(zip(keys, combo, strict=True))
                for combo in itertools.product(*(axes[k] for k in keys))] or [{}]
