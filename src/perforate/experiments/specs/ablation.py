"""Experiment 2: the paper's Figure 7 ablation on the Fashion-MNIST network."""

from __future__ import annotations

from ..base import Experiment
from .fashion_mnist import mnist_setup

EXPERIMENT = Experiment(
    name="ablation",
    description="Figure 7: which parts of PB matter (MNIST-example CNN, Fashion-MNIST)",
    variants=("pb", "pb-head", "pb-backbone", "cc-no-perf", "gd", "restart", "width"),
    setup=mnist_setup,
    default_seeds=tuple(range(7)),
)
