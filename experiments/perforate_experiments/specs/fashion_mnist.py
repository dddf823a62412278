"""Experiment 1: the paper's EMNIST network (the PyTorch MNIST example) on Fashion-MNIST.

Protocol (scaled to fit about 5 minutes per run on 2 CPU cores; the paper: full EMNIST, neuron
patience 25, no cap on dendrite epochs or sets): a seeded 5k subset of the 50k training images,
2k of the 10k validation images carved from the training set, 5k of the 10k test images;
Adadelta lr 1.0 with StepLR gamma 0.7 per epoch (fresh per neuron cycle), batch 64; neuron
patience 3, dendrite patience 2, at most 4 dendrite epochs per phase and 2 dendrite sets;
decisions on validation accuracy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from perforate.metrics import accuracy

from ..base import Experiment, Setup
from ..data.batches import TensorBatches, subset
from ..models import MnistCNN

FULL = {"n_train": 5_000, "n_val": 2_000, "n_test": 5_000, "neuron_patience": 3,
        "dendrite_patience": 2, "max_dendrite_epochs": 4, "max_dendrites": 2, "max_epochs": 40}
QUICK = {"n_train": 256, "n_val": 256, "n_test": 256, "neuron_patience": 1,
         "dendrite_patience": 1, "max_dendrite_epochs": 1, "max_dendrites": 1, "max_epochs": 10}


def mnist_setup(seed: int, quick: bool, *, root: str | None = None, **overrides: Any) -> Setup:
    """Setup shared by the Fashion-MNIST and ablation experiments."""
    from ..data.fashion_mnist import load_fashion_mnist

    p = {**(QUICK if quick else FULL), **overrides}
    train, val, test = load_fashion_mnist(root, n_train=p["n_train"], seed=seed)
    val_t, test_t = subset(val, p["n_val"], seed), subset(test, p["n_test"], seed)
    return Setup(
        make_net=lambda width: MnistCNN(num_classes=10, width=width),
        head="fc2",
        train=TensorBatches(*train.tensors, batch_size=64, shuffle=True),
        val=TensorBatches(*val_t, batch_size=500),
        test=TensorBatches(*test_t, batch_size=500),
        loss_fn=nn.functional.cross_entropy,
        metric=accuracy,
        optimizer_factory=lambda params: torch.optim.Adadelta(params, lr=1.0),
        scheduler_factory=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.7),
        tracker_kwargs={k: p[k] for k in ("neuron_patience", "dendrite_patience",
                                          "max_dendrite_epochs", "max_dendrites",
                                          "max_epochs")},
        protocol={**p, "batch_size": 64, "optimizer": "Adadelta(lr=1.0)",
                  "scheduler": "StepLR(step_size=1, gamma=0.7)", "decision": "val accuracy",
                  "data": "Fashion-MNIST (stand-in for EMNIST)"},
    )


EXPERIMENT = Experiment(
    name="fashion-mnist",
    description="PyTorch MNIST-example CNN on Fashion-MNIST (the paper's EMNIST experiment)",
    variants=("pb", "pb-cc", "pb-perf", "pb-paper", "restart", "width", "width-cc",
              "width-perf"),
    setup=mnist_setup,
    default_seeds=tuple(range(3)),
)
