"""Scores for `perforate.training.fit`: ``metric(outputs, targets) -> float``, higher is better.

Each is computed once over a whole data set (outputs and targets concatenated), so values are
exact, not averages of per-batch values. ``neg_loss(loss_fn)`` makes a continuous score from a
loss: prefer it for decisions on small validation sets, where accuracy ties end runs early.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._extras import require

Metric = Callable[[Tensor, Tensor], float]


def accuracy(outputs: Tensor, targets: Tensor) -> float:
    """Fraction of correct predictions.

    ``outputs [B, C]`` (C >= 2) are class scores (argmax); ``[B]`` or ``[B, 1]`` are binary
    logits (positive if > 0). ``targets`` are class indices, or one-hot / probabilities
    ``[B, C]`` (argmax).
    """
    if outputs.shape[0] == 0:
        raise ValueError("accuracy() of an empty set")
    if targets.is_floating_point() and bool(((targets < 0) | (targets > 1)).any()):
        raise ValueError("accuracy() needs class targets (indices, one-hot or probabilities); got "
                         "floating-point targets outside [0, 1] (a regression? score it with "
                         "pf.metrics.neg_mse or pf.metrics.neg_loss(loss_fn))")
    if outputs.dim() == 1 or (outputs.dim() == 2 and outputs.shape[1] == 1):
        pred = (outputs.reshape(-1) > 0).long()
        target = targets.reshape(-1).round().long()
    else:
        pred = outputs.argmax(dim=-1)
        target = targets.argmax(dim=-1) if targets.dim() == outputs.dim() else targets.long()
    return float((pred == target).double().mean())


def task_metric(targets: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Metric:
    """The score `perforate.fit` uses when given none: `accuracy` for integer (class-index) or
    bool targets; ``neg_loss(loss_fn)`` for floating-point targets (regression, soft or
    multi-label targets), on which argmax accuracy would silently mean nothing."""
    if targets.is_floating_point() or targets.is_complex():
        return neg_loss(loss_fn)
    return accuracy


def neg_loss(loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Metric:
    """The metric ``-loss_fn(outputs, targets)`` (exact over the set for a mean-reduced loss)."""

    def metric(outputs: Tensor, targets: Tensor) -> float:
        return -float(loss_fn(outputs, targets))

    metric.__name__ = "neg_loss"
    metric.__qualname__ = "neg_loss"
    return metric


def neg_mse(outputs: Tensor, targets: Tensor) -> float:
    """Negative mean squared error (regression)."""
    return -float(torch.mean((outputs.double() - targets.double().reshape(outputs.shape)) ** 2))


def roc_auc(outputs: Tensor, targets: Tensor) -> float:
    """Area under the ROC curve (scikit-learn, imported when called: ``perforate[demo]``).

    Binary: ``outputs [B]`` / ``[B, 1]`` scores or ``[B, 2]`` logits. Multi-class ``[B, C]``:
    one-vs-rest on softmax probabilities, macro-averaged.
    """
    roc_auc_score = require("sklearn.metrics", "demo", "pf.metrics.roc_auc").roc_auc_score
    out = outputs.detach().double().cpu()
    y = targets.detach().cpu().reshape(-1).numpy()
    if out.dim() == 1 or out.shape[1] == 1:
        return float(roc_auc_score(y, out.reshape(-1).numpy()))
    if out.shape[1] == 2:
        return float(roc_auc_score(y, (out[:, 1] - out[:, 0]).numpy()))
    probs = torch.softmax(out, dim=1).numpy()
    return float(roc_auc_score(y, probs, multi_class="ovr", labels=list(range(out.shape[1]))))


def metric_name(metric: Callable[..., float]) -> str:
    """A short column name for a metric function."""
    return getattr(metric, "__name__", type(metric).__name__)


def error_reduction(first: float, final: float) -> float:
    """``(err_first - err_final) / err_first`` with ``err = 1 - score`` (accuracy-like scores
    in [0, 1]); 0.0 if the first error is 0."""
    for name, value in (("first", first), ("final", final)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"error_reduction needs scores in [0, 1]; {name} = {value!r}")
    err_first, err_final = 1.0 - first, 1.0 - final
    return 0.0 if err_first == 0 else (err_first - err_final) / err_first
