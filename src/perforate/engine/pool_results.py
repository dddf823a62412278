"""What a candidate pool hands on: an epoch's scores per layer (`EpochReport`) and, at the end
of a dendrite phase, each neuron's winning candidate (`Winners`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class EpochReport:
    """What closing one dendrite epoch measured for one layer."""

    epoch_corr: Tensor
    """Best |corr| per neuron over this epoch's candidates ``[N]``."""
    best_corr: Tensor
    """Best |corr| per neuron over all epochs so far ``[N]`` (what an install would use)."""
    improvement: float
    """Largest per-neuron gain of `best_corr` this epoch (0 if none improved)."""
    mean_improvement: float = 0.0
    """Mean over neurons of the gain of `best_corr` this epoch (the gain of its mean)."""


@dataclass
class Winners:
    """Per neuron, the weights of the best candidate of the best epoch."""

    weight: Tensor  # [N, *w]
    bias: Tensor  # [N]
    cascade: Tensor  # [D, N]
    corr: Tensor  # [N] |corr|
    sign: Tensor  # [N] sign of corr
    output: Tensor | None  # [N] output weight to install (gd: trained; least squares), or None
    mask: Tensor | None = None  # [N, *w] inputs each dendrite sees (config.dendrite_inputs)
    alive: Tensor | None = None
    """[N] 1 where the neuron's winner correlated (|corr| > 0), 0 where no candidate ever did
    (no error: a dead ReLU, a head outside the loss); the layer masks those. None: all alive."""
