"""Perforated Backpropagation: Cascade-Correlation dendrites for any PyTorch model.

    import perforate as pf
    model = pf.perforate(net)

The package's folders are its layers: ``engine`` (dendrite layers, candidate statistics, how
they go into a model), ``training`` (the cycle controller and its run files), ``io`` (saving,
loading, export), ``parallel`` (DDP), ``integrations`` (Lightning, Hugging Face) and ``cli``.
"""

from . import metrics
from ._version import __version__
from .config import CascadeCorrelation, PerforationConfig
from .engine import layers
from .engine.layers import DendriteLayer, WrapperRegistry, default_registry
from .engine.model import PerforatedModel, perforate
from .engine.pool_results import EpochReport
from .errors import (
    ConfigError,
    DistributedError,
    LoadError,
    NonFiniteError,
    PerforateError,
    PhaseError,
    RunLockedError,
    TargetError,
)
from .io.export import export
from .io.serialization import load
from .training import param_groups
from .training.fit import fit
from .training.resume import resume
from .training.schedule import Schedule
from .training.tracker import Decision, Tracker

__all__ = [
    "CascadeCorrelation", "ConfigError", "Decision", "DendriteLayer", "DistributedError",
    "EpochReport", "LoadError", "NonFiniteError", "PerforateError", "PerforatedModel",
    "PerforationConfig", "PhaseError", "RunLockedError", "Schedule", "TargetError", "Tracker",
    "WrapperRegistry", "__version__", "default_registry", "export", "fit", "layers", "load",
    "metrics", "param_groups", "perforate", "resume",
]
