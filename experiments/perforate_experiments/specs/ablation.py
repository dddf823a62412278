"""Experiment 2: the paper's Figure 7 ablation on the Fashion-MNIST network.

Protocol: experiment 1's, scaled down again so 7 variants x 7 seeds fit in about 1.5 CPU-hours
(1 to 2.2 minutes per run, about 13 minutes per seed for all 7 variants, on one core): a seeded
2k subset of the training images, 1k validation, 2k test; neuron patience 2, dendrite patience
1, at most 3 dendrite epochs per phase, 2 dendrite sets and 24 epochs in all.
"""

from __future__ import annotations

from typing import Any

from ..base import Experiment, Setup
from .fashion_mnist import mnist_setup

FULL = {"n_train": 2_000, "n_val": 1_000, "n_test": 2_000, "neuron_patience": 2,
        "dendrite_patience": 1, "max_dendrite_epochs": 3, "max_dendrites": 2, "max_epochs": 24}


def ablation_setup(seed: int, quick: bool, **overrides: Any) -> Setup:
    """Experiment 1's setup with the smaller ablation protocol (quick runs are unchanged)."""
    return mnist_setup(seed, quick, **{**({} if quick else FULL), **overrides})


EXPERIMENT = Experiment(
    name="ablation",
    description="Figure 7: which parts of PB matter (MNIST-example CNN, Fashion-MNIST)",
    variants=("pb", "pb-cc", "pb-perf", "pb-head", "pb-backbone", "cc-no-perf", "gd",
              "restart", "width", "width-cc", "width-perf"),
    setup=ablation_setup,
    default_seeds=tuple(range(7)),
)
