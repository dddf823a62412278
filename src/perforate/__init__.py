"""Perforated Backpropagation: Cascade-Correlation dendrites for any PyTorch model.

    import perforate as pf
    model = pf.perforate(net, pf.PerforationConfig())
"""

from ._version import __version__
from .candidates import EpochReport
from .config import PerforationConfig
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
from .export import export
from .layers import DendriteLayer, WrapperRegistry, default_registry
from .model import PerforatedModel, perforate
from .serialization import load

__all__ = [
    "ConfigError", "DendriteLayer", "DistributedError", "EpochReport", "LoadError",
    "NonFiniteError",
    "PerforateError", "PerforatedModel", "PerforationConfig", "PhaseError", "RunLockedError",
    "TargetError",
    "WrapperRegistry", "__version__", "default_registry", "export", "load", "perforate",
]

from . import metrics
from .allocator import keep_cpu_memory
from .fit import fit, predict
from .schedule import Schedule
from .tracker import Decision, Tracker, resume
from .training import param_groups

__all__ += ["Decision", "Schedule", "Tracker", "fit", "keep_cpu_memory", "metrics",
            "param_groups", "predict", "resume"]
