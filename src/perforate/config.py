"""`PerforationConfig`: every choice of the algorithm, as one validated, serialisable dataclass."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_type_hints

from .engine.activations import ACTIVATIONS
from .engine.candidate_optimizer import check_optimizer_kwargs
from .errors import ConfigError
from .selectors import Selector, check_selectors, selectors_from_json, selectors_to_json

DendritePhase = Literal["none", "cascade_correlation", "task_loss"]
InputSelection = Literal["random", "correlation"]
DendriteInit = Literal["normal", "fan_in"]
Objective = Literal["covariance", "correlation"]
SignSource = Literal["batch", "running"]
Centering = Literal["batch", "running"]
OptimizerName = Literal["adam", "adamw", "sgd", "rmsprop"]
OutputInit = Literal["zero", "signed", "least_squares"]

#: `PerforationConfig.paper()`: the paper's algorithm with this library's measured choices
#: (the Cascade-Correlation knobs at `CascadeCorrelation`'s defaults).
PAPER: dict[str, Any] = {
    "dendrite_phase": "cascade_correlation", "train_dendrites": False,
    "dendrite_activation": "tanh", "dendrite_init": "fan_in", "dendrite_weight_std": 1.0,
    "dendrite_bias_std": 1.0, "dendrite_inputs": None, "dendrite_input_selection": "random",
    "dendrite_rank": None, "perforated": True}
#: `PerforationConfig.paper(literal=True)`: the paper's own centering and error scale.
PAPER_LITERAL: dict[str, Any] = {"centering": "running", "normalize_error": False}

#: Fields of the configuration before 0.2 -> where they are now ("cascade." = in
#: `CascadeCorrelation`). `from_dict` reads the old names (saved runs of 0.1); the
#: constructor, `paper` and `replace` name the new one in their error.
RENAMED: dict[str, str] = {
    "dendrite_learning": "dendrite_phase", "candidate_init": "dendrite_init",
    "candidate_weight_std": "dendrite_weight_std", "candidate_bias_std": "dendrite_bias_std",
    "candidates": "cascade.candidates", "objective": "cascade.objective",
    "sign_source": "cascade.sign_source", "centering": "cascade.centering",
    "normalize_error": "cascade.normalize_error", "candidate_optimizer": "cascade.optimizer",
    "candidate_lr": "cascade.lr", "candidate_optimizer_kwargs": "cascade.optimizer_kwargs",
    "running_momentum": "cascade.running_momentum",
    "min_candidate_variance": "cascade.min_variance", "output_init": "cascade.output_init",
    "output_init_eps": "cascade.output_init_eps",
    "output_init_shrink": "cascade.output_init_shrink",
    "gd_output_init_std": "cascade.task_loss_output_std"}
#: Old values of ``dendrite_learning`` -> ``dendrite_phase``.
OLD_PHASES = {"cc": "cascade_correlation", "gd": "task_loss", "none": "none"}


@dataclass(frozen=True)
class CascadeCorrelation:
    """How candidates are trained in a dendrite phase, and how a winner is installed. Used
    only when `PerforationConfig.dendrite_phase` is not "none" (the default has no dendrite
    phase: a new set is installed as initialised, with output weight 0).

    Validated at construction and immutable; `optimizer_kwargs` is kept as a read-only dict.
    """

    candidates: int = 4
    """K: candidate dendrite sets trained per layer in each dendrite phase."""
    objective: Objective = "covariance"
    """"covariance" (eq. 3.3, the paper: |S| grows with the candidate's scale) or
    "correlation" (each batch's Pearson correlation: scale-invariant, so unbounded
    activations such as relu do not grow without bound)."""
    sign_source: SignSource = "batch"
    """Sign sigma of S in the candidate gradient: "batch" (each batch's own) or "running"
    (an EMA of the per-batch covariance: steadier when batches disagree)."""
    centering: Centering = "batch"
    """"batch": centre with the mini-batch's own means; "running": EMA means (the paper)."""
    normalize_error: bool = True
    """Divide S by a running std of each neuron's error, so plain SGD can learn candidates."""
    optimizer: OptimizerName = "adam"
    """Optimizer of the candidates."""
    lr: float = 1e-2
    """Learning rate of the candidate optimizer."""
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the candidate optimizer (betas, momentum, ...); checked at
    construction by building that optimizer on a dummy parameter."""
    running_momentum: float = 0.99
    """EMA momentum of running means (centering="running") and of the error std."""
    min_variance: float = 1e-6
    """A candidate whose epoch variance is below this has correlation 0 (can never win)."""
    output_init: OutputInit = "zero"
    """The winner's output weight: "zero" (function unchanged at install), "signed"
    (-sigma * eps) or "least_squares" (per neuron, the a that best fits the negative error
    from the winning epoch's statistics, times `output_init_shrink`)."""
    output_init_eps: float = 1e-3
    """Magnitude of the "signed" output-weight initialisation."""
    output_init_shrink: float = 1.0
    """Factor on the "least_squares" output weight (1: the full least-squares step)."""
    task_loss_output_std: float = 1e-2
    """dendrite_phase="task_loss": std of the candidates' trainable output weights."""

    def __post_init__(self) -> None:
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int) \
                or self.candidates < 1:
            raise ConfigError(f"cascade.candidates must be an int >= 1, got {self.candidates!r}")
        for name in ("objective", "sign_source", "centering", "optimizer", "output_init"):
            _check_literal(f"cascade.{name}", getattr(self, name), _hint(type(self), name))
        if not isinstance(self.normalize_error, bool):
            raise ConfigError(f"cascade.normalize_error must be a bool, got "
                              f"{self.normalize_error!r}")
        for name in ("lr", "output_init_eps", "task_loss_output_std", "min_variance",
                     "output_init_shrink"):
            _check_number(f"cascade.{name}", getattr(self, name), positive=name == "lr")
        if not (0.0 <= self.running_momentum < 1.0):
            raise ConfigError("cascade.running_momentum must be in [0, 1), got "
                              f"{self.running_momentum!r}")
        if not isinstance(self.optimizer_kwargs, dict):
            raise ConfigError("cascade.optimizer_kwargs must be a dict, "
                              f"got {type(self.optimizer_kwargs).__name__}")
        check_optimizer_kwargs(self.optimizer, self.lr, self.optimizer_kwargs)
        object.__setattr__(self, "optimizer_kwargs", _FrozenDict(self.optimizer_kwargs))

    def replace(self, **changes: Any) -> CascadeCorrelation:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class PerforationConfig:
    """How dendrites are added and trained (see ``docs/algorithm.md``).

    Validated at construction and immutable (selector lists are kept as tuples): use
    `replace` for a changed copy. The defaults are what won on the benchmarks: small sigmoid
    dendrites installed as initialised (no dendrite phase) and trained with the network.
    `paper()` is the paper's algorithm (Cascade-Correlation candidates, frozen once
    installed); its knobs are in `cascade`. The paper's Figure 7 variants are
    ``dendrite_phase="task_loss"``, ``perforated=False`` and head/backbone ``target_modules``.
    """

    target_modules: Sequence[Selector] | Selector | None = None
    """Which layers get dendrites: names, suffixes, regexes or types. None = every layer a
    wrapper serves: Linear, ConvNd, ConvTransposeNd, MultiheadAttention, LSTM, GRU, RNN and
    their cells, Hugging Face's Conv1D (``default_registry``)."""
    exclude_modules: Sequence[Selector] | Selector | None = None
    """Layers to leave alone, same selector forms as `target_modules`."""
    dendrite_activation: str = "sigmoid"
    """g: the dendrite non-linearity (one of `perforate.engine.activations.ACTIVATIONS`)."""
    dendrite_phase: DendritePhase = "none"
    """How new dendrites are chosen: "none" (no dendrite phase: one set is installed as
    initialised and learns with the network, if `train_dendrites`), "cascade_correlation"
    (the paper: K candidates per layer learn to correlate with each neuron's error, the best
    is installed; see `cascade`) or "task_loss" (candidates trained on the task loss)."""
    perforated: bool = False
    """True (the paper, eq. 3.2): no error flows back through installed dendrites to earlier
    layers. False (measured on Protocol P): it does, as in perforatedai's open version and
    the paper's "CC no perforation". Candidates never pass error back either way."""
    train_dendrites: bool = True
    """False (the paper): installed dendrites are frozen; only their output weight learns in
    the neuron phase. True: V, bias and cascade weights also learn with the network in every
    neuron phase, from the neuron's error (and, with `perforated=False`, pass it on)."""
    dendrite_init: DendriteInit = "normal"
    """"normal": dendrite weights ~ N(0, dendrite_weight_std**2); "fan_in": ~ N(0,
    dendrite_weight_std**2 / fan_in) (pre-activations of about the input's scale)."""
    dendrite_weight_std: float = 0.01
    """Scale of new dendrites' weights (see `dendrite_init`)."""
    dendrite_bias_std: float = 0.01
    """New dendrites' biases ~ N(0, dendrite_bias_std**2)."""
    dendrite_inputs: int | None = None
    """None: a dendrite sees all of its neuron's inputs (the paper). m: each dendrite sees m
    of them, drawn at random per candidate, so a set costs m (not fan_in) weights per neuron.
    (Computed as a masked dense layer: fewer parameters, not less compute.) A layer whose
    fan_in is below m keeps its full inputs; `perforate` names those layers in a warning."""
    dendrite_input_selection: InputSelection = "random"
    """Which `dendrite_inputs` a new set's dendrites see: "random" (drawn per candidate) or
    "correlation" (per neuron, the m inputs whose correlation with the neuron's error was
    largest in the neuron phase before: Σ over backward passes of |dLoss/dW| of the layer's
    own weight, which is Σ error × input per batch; ties at random). "correlation" needs a
    layer whose weight is a parameter (Linear, ConvNd, ConvTransposeNd)."""
    dendrite_rank: int | None = None
    """None: dendrites see their inputs directly (the paper). r: the dendrites of a Linear
    layer see its input through one projection P ``[r, fan_in]`` they all share (drawn
    ~ N(0, 1/fan_in) with the first set; trained like V with `train_dendrites`), so a set costs
    r weights per neuron plus P once per layer. Linear layers only; one whose fan_in is at
    most r keeps its full inputs."""
    seed: int | None = None
    """Seed of dendrite initialisation; None draws from torch's global generator."""
    cascade: CascadeCorrelation = field(default_factory=CascadeCorrelation)
    """The dendrite phase's knobs (`CascadeCorrelation`); unused under dendrite_phase="none"."""

    def __post_init__(self) -> None:
        self.validate()
        # Immutable all the way down: no list of the caller's stays shared.
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid field."""
        check_selectors("target_modules", self.target_modules)
        check_selectors("exclude_modules", self.exclude_modules)
        _check_literal("dendrite_activation", self.dendrite_activation, tuple(ACTIVATIONS))
        for name in ("dendrite_phase", "dendrite_init", "dendrite_input_selection"):
            _check_literal(name, getattr(self, name), _hint(type(self), name))
        if not isinstance(self.cascade, CascadeCorrelation):
            raise ConfigError(f"cascade must be a CascadeCorrelation, got "
                              f"{type(self.cascade).__name__}")
        for name in ("perforated", "train_dendrites"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("dendrite_weight_std", "dendrite_bias_std"):
            _check_number(name, getattr(self, name), positive=False)
        if self.seed is not None and (isinstance(self.seed, bool)
                                      or not isinstance(self.seed, int)):
            raise ConfigError(f"seed must be an int or None, got {self.seed!r}")
        for name in ("dendrite_inputs", "dendrite_rank"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigError(f"{name} must be None or an int >= 1, got {value!r}")
        if self.dendrite_rank is not None and self.dendrite_inputs is not None:
            raise ConfigError("dendrite_rank and dendrite_inputs are two ways to give dendrites "
                              "fewer inputs: set one of them")
        if self.dendrite_input_selection != "random" and self.dendrite_inputs is None:
            raise ConfigError(f"dendrite_input_selection={self.dendrite_input_selection!r} "
                              "chooses among a dendrite's inputs: set dendrite_inputs (m)")
        if self.dendrite_phase == "none" and self.cascade.output_init == "least_squares":
            raise ConfigError("cascade.output_init='least_squares' needs a dendrite phase's "
                              "statistics; dendrite_phase='none' has none")

    @classmethod
    def paper(cls, *, literal: bool = False, candidates: int | None = None,
              **changes: Any) -> PerforationConfig:
        """The paper's algorithm (`PAPER`): Cascade-Correlation candidates, installed frozen,
        only the output weight learns afterwards. `candidates`: K, the pool of each layer
        (``cascade.candidates``, 4 unless given). `literal`: also the paper's running-mean
        centering and no error scaling in `cascade` (the choices this library's measurements
        replaced). Other `changes` are fields of `PerforationConfig`."""
        _refuse_renamed(changes, "PerforationConfig.paper")
        config = cls(**{**PAPER, **changes})
        cascade = {**(PAPER_LITERAL if literal else {}),
                   **({} if candidates is None else {"candidates": candidates})}
        return config.replace(cascade=config.cascade.replace(**cascade)) if cascade else config

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``cascade`` nested); module types become
        ``"type:module.Class"`` strings."""
        out = dataclasses.asdict(self)
        for name in ("target_modules", "exclude_modules"):
            out[name] = selectors_to_json(getattr(self, name))
        out["cascade"]["optimizer_kwargs"] = dict(out["cascade"]["optimizer_kwargs"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerforationConfig:
        """Inverse of `to_dict`; also reads the flat layout of 0.1 (`RENAMED`), so saved runs
        of 0.1 load. Unknown keys raise `ConfigError`."""
        data = migrate(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown PerforationConfig field(s): {', '.join(unknown)}")
        for name in ("target_modules", "exclude_modules"):
            if name in data:
                data[name] = selectors_from_json(data[name])
        if "cascade" in data:
            cascade = dict(data["cascade"])
            known = {f.name for f in dataclasses.fields(CascadeCorrelation)}
            unknown = sorted(set(cascade) - known)
            if unknown:
                raise ConfigError(f"unknown CascadeCorrelation field(s): {', '.join(unknown)}")
            data["cascade"] = CascadeCorrelation(**cascade)
        return cls(**data)

    def replace(self, **changes: Any) -> PerforationConfig:
        """A validated copy with some fields changed."""
        _refuse_renamed(changes, "PerforationConfig.replace")
        return dataclasses.replace(self, **changes)


def differing_fields(a: PerforationConfig, b: PerforationConfig) -> list[str]:
    """The fields in which two configurations differ, ``cascade``'s as ``cascade.<name>``."""
    out = []
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "cascade":
            out += [f"cascade.{g.name}" for g in dataclasses.fields(x)
                    if getattr(x, g.name) != getattr(y, g.name)]
            continue
        if f.name in ("target_modules", "exclude_modules"):  # "a" and ("a",) select the same
            x, y = selectors_to_json(x), selectors_to_json(y)
        if x != y:
            out.append(f.name)
    return out


_generated_init = PerforationConfig.__init__


def _init(self: PerforationConfig, *args: Any, **kwargs: Any) -> None:
    _refuse_renamed(kwargs, "PerforationConfig")
    _generated_init(self, *args, **kwargs)


_init.__signature__ = inspect.signature(_generated_init)  # type: ignore[attr-defined]
_init.__doc__ = _generated_init.__doc__
PerforationConfig.__init__ = _init  # type: ignore[method-assign]


def _refuse_renamed(kwargs: dict[str, Any], where: str) -> None:
    """A `TypeError` naming the new spelling of a field renamed in 0.2 (`RENAMED`)."""
    old = [k for k in kwargs if k in RENAMED]
    if old:
        hints = "; ".join(_rename_hint(k) for k in old)
        raise TypeError(f"{where}: renamed in 0.2 (see CHANGELOG): {hints}")


def _rename_hint(old: str) -> str:
    new = RENAMED[old]
    if new.startswith("cascade."):
        return f"{old}=... is now cascade=pf.CascadeCorrelation({new[8:]}=...)"
    if old == "dendrite_learning":
        return ("dendrite_learning='cc'/'gd'/'none' is now dendrite_phase="
                "'cascade_correlation'/'task_loss'/'none'")
    return f"{old} is now {new}"


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict of 0.1 (flat, old names) in today's layout (``cascade`` nested; a
    new dict); today's unchanged."""
    data = dict(data)
    if not any(k in RENAMED for k in data):
        return data
    cascade = dict(data.pop("cascade", None) or {})
    for old, new in RENAMED.items():
        if old not in data:
            continue
        value = data.pop(old)
        if old == "dendrite_learning":
            value = OLD_PHASES.get(value, value)
        if new.startswith("cascade."):
            cascade[new[8:]] = value
        else:
            data[new] = value
    data["cascade"] = cascade
    return data


@functools.cache
def _hint(cls: type, name: str) -> tuple[str, ...]:
    """The choices of a `Literal`-typed field of `cls` (read once per field: evaluating the
    annotations is the slow part of validating a config)."""
    return get_args(get_type_hints(cls)[name])


class _FrozenDict(dict):  # type: ignore[type-arg]
    """A dict that refuses changes (`CascadeCorrelation.optimizer_kwargs`); it
    copies, pickles and compares as a dict."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("the configuration is immutable: use config.replace(cascade="
                        "config.cascade.replace(optimizer_kwargs={...}))")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return type(self), (dict(self),)


def _check_literal(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _check_number(name: str, value: Any, *, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        kind = "a positive" if positive else "a non-negative"
        raise ConfigError(f"{name} must be {kind} finite number, got {value!r}")
