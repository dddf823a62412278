"""`PerforationConfig`: every choice of the algorithm, as one validated, serialisable dataclass."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .engine.activations import ACTIVATIONS
from .errors import ConfigError

#: A target selector: an exact qualified name, a name suffix, a regex, or a module type.
Selector = str | type

DENDRITE_LEARNING = ("cc", "gd", "none")
#: How `dendrite_inputs` chooses each dendrite's inputs.
INPUT_SELECTION = ("random", "correlation")
CENTERING = ("batch", "running")
CANDIDATE_OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
OUTPUT_INIT = ("zero", "signed", "least_squares")
CANDIDATE_INIT = ("fan_in", "normal")
OBJECTIVES = ("covariance", "correlation")
SIGN_SOURCES = ("batch", "running")


#: `PerforationConfig.paper()`: the paper's algorithm with this library's measured choices.
PAPER: dict[str, Any] = {
    "dendrite_learning": "cc", "train_dendrites": False, "dendrite_activation": "tanh",
    "objective": "covariance", "sign_source": "batch", "candidate_init": "fan_in",
    "candidate_weight_std": 1.0, "candidate_bias_std": 1.0, "output_init": "zero",
    "dendrite_inputs": None, "dendrite_input_selection": "random", "dendrite_rank": None,
    "perforated": True, "centering": "batch", "normalize_error": True}
#: `PerforationConfig.paper(literal=True)`: the paper's own centering and error scale.
PAPER_LITERAL: dict[str, Any] = {"centering": "running", "normalize_error": False}
#: `PerforationConfig.anchor()`: the official open package's dendrites on this engine.
ANCHOR: dict[str, Any] = {
    "dendrite_learning": "none", "dendrite_activation": "sigmoid", "candidate_init": "normal",
    "candidate_weight_std": 0.01, "candidate_bias_std": 0.01, "train_dendrites": True,
    "output_init": "zero", "dendrite_inputs": None, "dendrite_input_selection": "random",
    "dendrite_rank": None, "perforated": False}


@dataclass(frozen=True)
class PerforationConfig:
    """How dendrites are added and trained (see ``docs/algorithm.md``).

    Validated at construction and immutable (selector lists are kept as tuples and
    `candidate_optimizer_kwargs` as a read-only dict): use `replace` for a changed copy.

    Defaults are the document's DEFAULTs. The paper's literal choices are
    ``centering="running"`` and ``normalize_error=False``; its Figure 7 variants are
    ``dendrite_learning="gd"``, ``perforated=False`` and head/backbone ``target_modules``.
    """

    target_modules: Sequence[Selector] | Selector | None = None
    """Which layers get dendrites: names, suffixes, regexes or types. None = every layer a
    wrapper serves: Linear, ConvNd, ConvTransposeNd, MultiheadAttention, LSTM, GRU, RNN and
    their cells, Hugging Face's Conv1D (``default_registry``)."""
    exclude_modules: Sequence[Selector] | Selector | None = None
    """Layers to leave alone, same selector forms as `target_modules`."""
    candidates: int = 4
    """K: candidate dendrite sets trained per layer in each dendrite phase."""
    dendrite_activation: str = "sigmoid"
    """g: the dendrite non-linearity (one of `perforate.engine.activations.ACTIVATIONS`)."""
    dendrite_learning: str = "none"
    """How candidates learn in the dendrite phase: "cc" (Cascade-Correlation, the paper), "gd"
    (trained on the task loss), or "none" (no dendrite phase: a candidate is installed as
    initialised, and learns only afterwards, with `train_dendrites`)."""
    perforated: bool = False
    """True (the paper, eq. 3.2): no error flows back through installed dendrites to earlier
    layers. False (DEFAULT, measured on Protocol P): it does, as in perforatedai's open version
    and the paper's "CC no perforation". Candidates never pass error back either way."""
    train_dendrites: bool = True
    """False (the paper): installed dendrites are frozen; only their output weight learns in
    the neuron phase. True: V, bias and cascade weights also learn with the network in every
    neuron phase, from the neuron's error (and, with `perforated=False`, pass it on)."""
    objective: str = "covariance"
    """Candidate objective: "covariance" (eq. 3.3, the paper: |S| grows with the candidate's
    scale) or "correlation" (each batch's Pearson correlation: scale-invariant, so unbounded
    activations such as relu do not grow without bound)."""
    sign_source: str = "batch"
    """Sign sigma of S in the candidate gradient: "batch" (each batch's own) or "running"
    (an EMA of the per-batch covariance: steadier when batches disagree)."""
    centering: str = "batch"
    """"batch": centre with the mini-batch's own means (DEFAULT); "running": EMA means (paper)."""
    normalize_error: bool = True
    """Divide S by a running std of each neuron's error, so plain SGD can learn candidates."""
    candidate_optimizer: str = "adam"
    """Optimizer of the candidates: adam, adamw, sgd or rmsprop."""
    candidate_lr: float = 1e-2
    """Learning rate of the candidate optimizer."""
    seed: int | None = None
    """Seed of candidate initialisation; None draws from torch's global generator."""

    # Secondary knobs: documented DEFAULTs of the algorithm.
    candidate_optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the candidate optimizer (betas, momentum, ...); checked at
    construction by building that optimizer on a dummy parameter."""
    candidate_init: str = "normal"
    """"fan_in": candidate weights ~ N(0, candidate_weight_std**2 / fan_in) (pre-activations
    of about the input's scale); "normal": ~ N(0, candidate_weight_std**2)."""
    candidate_weight_std: float = 0.01
    """Scale of the candidate weights (see `candidate_init`)."""
    candidate_bias_std: float = 0.01
    """Candidate biases ~ N(0, candidate_bias_std**2)."""
    running_momentum: float = 0.99
    """EMA momentum of running means (centering="running") and of the error std."""
    min_candidate_variance: float = 1e-6
    """A candidate whose epoch variance is below this has correlation 0 (can never win)."""
    output_init: str = "zero"
    """New output weight: "zero" (function unchanged at install), "signed" (-sigma * eps) or
    "least_squares" (per neuron, the a that best fits the negative error from the winning
    epoch's statistics, times `output_init_shrink`: the function changes at install)."""
    output_init_eps: float = 1e-3
    """Magnitude of the "signed" output-weight initialisation."""
    output_init_shrink: float = 1.0
    """Factor on the "least_squares" output weight (1: the full least-squares step)."""
    dendrite_inputs: int | None = None
    """None: a dendrite sees all of its neuron's inputs (the paper). m: each dendrite sees m
    of them, drawn at random per candidate, so a set costs m (not fan_in) weights per neuron.
    (Computed as a masked dense layer: fewer parameters, not less compute.) A layer whose
    fan_in is below m keeps its full inputs; `perforate` names those layers in a warning."""
    dendrite_input_selection: str = "random"
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
    gd_output_init_std: float = 1e-2
    """dendrite_learning="gd": std of the candidates' trainable output weights."""

    def __post_init__(self) -> None:
        self.validate()
        # Immutable all the way down: no list or dict of the caller's stays shared.
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "candidate_optimizer_kwargs",
                           _FrozenDict(self.candidate_optimizer_kwargs))

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid field."""
        _check_selectors("target_modules", self.target_modules)
        _check_selectors("exclude_modules", self.exclude_modules)
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int) \
                or self.candidates < 1:
            raise ConfigError(f"candidates must be an int >= 1, got {self.candidates!r}")
        _check_choice("dendrite_activation", self.dendrite_activation, tuple(ACTIVATIONS))
        _check_choice("dendrite_learning", self.dendrite_learning, DENDRITE_LEARNING)
        _check_choice("centering", self.centering, CENTERING)
        _check_choice("candidate_optimizer", self.candidate_optimizer, CANDIDATE_OPTIMIZERS)
        _check_choice("output_init", self.output_init, OUTPUT_INIT)
        _check_choice("candidate_init", self.candidate_init, CANDIDATE_INIT)
        _check_choice("objective", self.objective, OBJECTIVES)
        _check_choice("sign_source", self.sign_source, SIGN_SOURCES)
        for name in ("perforated", "normalize_error", "train_dendrites"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("candidate_lr", "candidate_weight_std", "candidate_bias_std",
                     "output_init_eps", "gd_output_init_std", "min_candidate_variance",
                     "output_init_shrink"):
            _check_number(name, getattr(self, name), positive=name == "candidate_lr")
        if not (0.0 <= self.running_momentum < 1.0):
            raise ConfigError(f"running_momentum must be in [0, 1), got {self.running_momentum!r}")
        if self.seed is not None and (isinstance(self.seed, bool)
                                      or not isinstance(self.seed, int)):
            raise ConfigError(f"seed must be an int or None, got {self.seed!r}")
        if self.dendrite_inputs is not None and (isinstance(self.dendrite_inputs, bool) or not
                                                 isinstance(self.dendrite_inputs, int)
                                                 or self.dendrite_inputs < 1):
            raise ConfigError(f"dendrite_inputs must be None or an int >= 1, "
                              f"got {self.dendrite_inputs!r}")
        if self.dendrite_rank is not None and (isinstance(self.dendrite_rank, bool) or not
                                               isinstance(self.dendrite_rank, int)
                                               or self.dendrite_rank < 1):
            raise ConfigError(f"dendrite_rank must be None or an int >= 1, "
                              f"got {self.dendrite_rank!r}")
        if self.dendrite_rank is not None and self.dendrite_inputs is not None:
            raise ConfigError("dendrite_rank and dendrite_inputs are two ways to give dendrites "
                              "fewer inputs: set one of them")
        _check_choice("dendrite_input_selection", self.dendrite_input_selection,
                      INPUT_SELECTION)
        if self.dendrite_input_selection != "random" and self.dendrite_inputs is None:
            raise ConfigError(f"dendrite_input_selection={self.dendrite_input_selection!r} "
                              "chooses among a dendrite's inputs: set dendrite_inputs (m)")
        if self.dendrite_learning == "none" and self.output_init == "least_squares":
            raise ConfigError("output_init='least_squares' needs a dendrite phase's statistics; "
                              "dendrite_learning='none' has none")
        if not isinstance(self.candidate_optimizer_kwargs, dict):
            raise ConfigError("candidate_optimizer_kwargs must be a dict, "
                              f"got {type(self.candidate_optimizer_kwargs).__name__}")
        _check_optimizer_kwargs(self.candidate_optimizer, self.candidate_lr,
                                self.candidate_optimizer_kwargs)

    @classmethod
    def paper(cls, *, literal: bool = False, **changes: Any) -> PerforationConfig:
        """The paper's algorithm (`PAPER`): Cascade-Correlation candidates, installed frozen,
        only the output weight learns afterwards. `literal`: also the paper's running-mean
        centering and no error scaling (the choices this library's measurements replaced)."""
        base = {**PAPER, **(PAPER_LITERAL if literal else {})}
        return cls(**{**base, **changes})

    @classmethod
    def anchor(cls, **changes: Any) -> PerforationConfig:
        """The recipe of the official open package's dendrites on this engine (`ANCHOR`):
        sigmoid dendrites with weights and biases ~ N(0, 0.01²), no candidate training,
        trained with the network in every neuron phase, not perforated. On Protocol P this
        recipe matched the package and beat every other, so it is also the default."""
        return cls(**{**ANCHOR, **changes})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; module types become ``"type:module.Class"`` strings."""
        out = dataclasses.asdict(self)
        for name in ("target_modules", "exclude_modules"):
            out[name] = _selectors_to_json(getattr(self, name))
        out["candidate_optimizer_kwargs"] = dict(out["candidate_optimizer_kwargs"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerforationConfig:
        """Inverse of `to_dict`. Unknown keys raise `ConfigError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown PerforationConfig field(s): {', '.join(unknown)}")
        data = dict(data)
        for name in ("target_modules", "exclude_modules"):
            if name in data:
                data[name] = _selectors_from_json(data[name])
        return cls(**data)

    def replace(self, **changes: Any) -> PerforationConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


class _FrozenDict(dict):  # type: ignore[type-arg]
    """A dict that refuses changes (`PerforationConfig.candidate_optimizer_kwargs`); it
    copies, pickles and compares as a dict."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("PerforationConfig is immutable: use config.replace("
                        "candidate_optimizer_kwargs={...})")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return type(self), (dict(self),)


def candidate_optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The ``torch.optim`` class of a `PerforationConfig.candidate_optimizer` name."""
    return {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
            "rmsprop": torch.optim.RMSprop}[name]


def _check_optimizer_kwargs(name: str, lr: float, kwargs: dict[str, Any]) -> None:
    """Build the candidate optimizer on a dummy parameter, so that a bad keyword fails when
    the config is made, not at the first growth. ``fused=True`` is left out of the trial: it
    depends on the device of the parameters (`perforate.engine.model.fast_step`)."""
    cls = candidate_optimizer_class(name)
    taken = [k for k in kwargs if k in ("params", "lr")]
    if taken:
        raise ConfigError(f"candidate_optimizer_kwargs: {taken[0]!r} is set by the library "
                          "(the candidates' parameters; candidate_lr)")
    accepted = inspect.signature(cls).parameters
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ConfigError(f"candidate_optimizer_kwargs: {cls.__name__} takes no "
                          f"{', '.join(map(repr, unknown))}")
    if kwargs.get("fused") and kwargs.get("foreach"):
        raise ConfigError("candidate_optimizer_kwargs: 'fused' and 'foreach' cannot both be "
                          "True")
    trial = {k: v for k, v in kwargs.items() if not (k == "fused" and v)}
    try:
        cls([torch.zeros(1, requires_grad=True)], lr=lr, **trial)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"candidate_optimizer_kwargs {dict(kwargs)!r} are not valid for "
                          f"{cls.__name__}: {exc}") from exc


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _check_number(name: str, value: Any, *, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        kind = "a positive" if positive else "a non-negative"
        raise ConfigError(f"{name} must be {kind} finite number, got {value!r}")


def selector_list(selectors: Sequence[Selector] | Selector | None) -> list[Selector]:
    """`selectors` as a list: None -> [], one selector -> [it]."""
    if selectors is None:
        return []
    if isinstance(selectors, (str, type)):
        return [selectors]
    return list(selectors)


def _check_selectors(name: str, selectors: Any) -> None:
    if selectors is None:
        return
    if not isinstance(selectors, (str, type, list, tuple)):
        raise ConfigError(f"{name} must be None, a str, a module type or a list of those; "
                          f"got {type(selectors).__name__}")
    items = selector_list(selectors)
    if not items:
        raise ConfigError(f"{name} is empty; use None to mean 'all'")
    for item in items:
        if isinstance(item, type):
            if not issubclass(item, nn.Module):
                raise ConfigError(f"{name}: {item!r} is not an nn.Module subclass")
        elif not isinstance(item, str) or not item:
            raise ConfigError(f"{name}: selectors must be non-empty str or module types; "
                              f"got {item!r}")


def _selectors_to_json(selectors: Any) -> list[str] | None:
    if selectors is None:
        return None
    return [f"type:{s.__module__}.{s.__qualname__}" if isinstance(s, type) else s
            for s in selector_list(selectors)]


def _saved_type(path: str) -> type[nn.Module]:
    """The class a saved ``"type:module.Class"`` selector names, looked up only among the
    modules already imported (``sys.modules``: torch's layers, the library's, the user's).
    Nothing is imported and no module ``__getattr__`` runs: a file must not run code."""
    parts = path.split(".")
    found: Any = None
    for cut in range(len(parts) - 1, 0, -1):  # longest imported module prefix first
        obj: Any = sys.modules.get(".".join(parts[:cut]))
        for name in parts[cut:]:
            obj = getattr(obj, "__dict__", {}).get(name)
        if obj is not None:
            found = obj
            break
    if found is None:
        module = ".".join(itertools.takewhile(lambda p: not p[:1].isupper(), parts[:-1]))
        raise ConfigError(
            f"unknown module type {path!r} in a saved selector: perforate never imports a "
            f"module a file names; if you trust it, import the module that defines the class "
            f"before loading (`import {module or path}`), as you do to register a wrapper "
            "for it")
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ConfigError(f"saved module type {path!r} is {found!r}, not an nn.Module subclass")
    return found


def _selectors_from_json(items: Any) -> list[Selector] | None:
    if items is None:
        return None
    out: list[Selector] = []
    for item in selector_list(items):
        if isinstance(item, str) and item.startswith("type:"):
            out.append(_saved_type(item[5:]))
        else:
            out.append(item)
    return out
