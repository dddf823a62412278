"""Protocol P: a capacity-limited benchmark (all the data, a narrow network).

Fashion-MNIST, 50k train / 10k validation carved from the 60k training images with ONE split
(split seed 0) for every run / 10k test; pixels standardised and flattened to 784. The network
is an MLP 784 -> h -> 10 with ReLU and PyTorch's default init (``torch.manual_seed(seed)``
before building); Adam(lr=1e-3), batch 128, a fresh optimizer per neuron cycle; decisions on
validation accuracy; the figure is the test accuracy at the best validation accuracy. Cycle:
neuron patience 5, at most 3 dendrite sets, dendrite phases of at most 10 epochs (patience 3),
at most 150 epochs per run.

Arms: every PB variant of `VARIANTS`, the restart control (same cycles, no dendrites) and the
plain network with one cycle at every width of `WIDTHS` (the width frontier).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from perforate.metrics import accuracy

from ..base import Experiment, Setup, paper_fields
from ..data.batches import TensorBatches

FULL = {"neuron_patience": 5, "dendrite_patience": 3, "max_dendrite_epochs": 10,
        "max_dendrites": 3, "max_epochs": 150, "n_train": None, "n_eval": None}
QUICK = {"neuron_patience": 1, "dendrite_patience": 1, "max_dendrite_epochs": 1,
         "max_dendrites": 1, "min_dendrites": 1, "max_epochs": 12, "n_train": 512, "n_eval": 256}
TRACKER_KEYS = ("neuron_patience", "dendrite_patience", "max_dendrite_epochs", "max_dendrites",
                "min_dendrites", "max_epochs")
#: Hidden widths of the PB arms, and of the plain width frontier.
HIDDEN = (4, 8, 16)
WIDTHS = (4, 6, 8, 12, 16, 24, 32, 64, 96, 128)
SPLIT_SEED = 0
BATCH_SIZE = 128
LR = 1e-3

#: PB variants: PerforationConfig fields ("config") and Tracker arguments ("tracker"). The
#: cc-* variants build on the paper's algorithm (`PerforationConfig.paper()`), ANCHOR on the
#: official open package's recipe (perforated here; the default since is its unperforated
#: form), whatever the defaults are. Flat fields (`base.build_config`).
PAPER = paper_fields()
ANCHOR = {"dendrite_phase": "none", "dendrite_activation": "sigmoid",
          "dendrite_init": "normal", "dendrite_weight_std": 0.01, "dendrite_bias_std": 0.01,
          "train_dendrites": True, "perforated": True}
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "cc": {"config": PAPER},
    "cc-train": {"config": {**PAPER, "train_dendrites": True}},
    "cc-train-unperf": {"config": {**PAPER, "train_dendrites": True, "perforated": False}},
    "anchor": {"config": ANCHOR},
    "anchor-unperf": {"config": {**ANCHOR, "perforated": False}},
    "anchor-retry": {"config": ANCHOR, "tracker": {"dendrite_tries": 2}},
    "cc-corr": {"config": {**PAPER, "objective": "correlation"}},
    "cc-corr-train": {"config": {**PAPER, "objective": "correlation", "train_dendrites": True}},
    "cc-running-sign": {"config": {**PAPER, "sign_source": "running"}},
    "cc-ls": {"config": {**PAPER, "output_init": "least_squares"}},
    "cc-relu-corr": {"config": {**PAPER, "objective": "correlation",
                                "dendrite_activation": "relu"}},
    "cc-mean-plateau": {"config": PAPER, "tracker": {"plateau": "mean"}},
    "gd": {"config": {**PAPER, "dendrite_phase": "task_loss"}},
    "anchor-sparse32": {"config": {**ANCHOR, "dendrite_inputs": 32}},
    "anchor-top32": {"config": {**ANCHOR, "dendrite_inputs": 32,
                                "dendrite_input_selection": "correlation"}},
    "cc-train-retry": {"config": {**PAPER, "train_dendrites": True},
                       "tracker": {"dendrite_tries": 2}},
    "restart-retry": {"tracker": {"add_dendrites": False, "dendrite_tries": 2}},
    # Parameter-efficient dendrites on the default (ANCHOR unperforated).
    "anchor-unperf-sparse32": {"config": {**ANCHOR, "perforated": False, "dendrite_inputs": 32}},
    "anchor-unperf-rank4": {"config": {**ANCHOR, "perforated": False, "dendrite_rank": 4}},
}


def mlp(hidden: int) -> nn.Module:
    """784 -> hidden -> 10 with ReLU (the Protocol P network)."""
    return nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def _flat(dataset: Any, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = dataset.tensors
    if n is not None:
        x, y = x[:n], y[:n]
    return x.reshape(len(x), -1).contiguous(), y


def frontier_setup(seed: int, quick: bool, *, h: int = 8, root: str | None = None,
                   **overrides: Any) -> Setup:
    """Setup of one Protocol P run with hidden width `h`."""
    from ..data.fashion_mnist import load_fashion_mnist

    p = {**(QUICK if quick else FULL), **overrides}
    train, val, test = load_fashion_mnist(root, seed=SPLIT_SEED)
    train_t, val_t = _flat(train, p["n_train"]), _flat(val, p["n_eval"])
    test_t = _flat(test, p["n_eval"])
    h = int(h)
    return Setup(
        make_net=lambda width: mlp(max(1, round(h * width))),
        head="2",
        train=TensorBatches(*train_t, batch_size=BATCH_SIZE, shuffle=True),
        val=TensorBatches(*val_t, batch_size=2_000),
        test=TensorBatches(*test_t, batch_size=2_000),
        loss_fn=nn.functional.cross_entropy,
        metric=accuracy,
        optimizer_factory=lambda params: torch.optim.Adam(params, lr=LR),
        tracker_kwargs={k: p[k] for k in TRACKER_KEYS if k in p},
        protocol={**p, "h": h, "batch_size": BATCH_SIZE, "optimizer": f"Adam(lr={LR})",
                  "decision": "val accuracy", "split_seed": SPLIT_SEED,
                  "data": "Fashion-MNIST 50k/10k/10k, flattened"},
    )


EXPERIMENT = Experiment(
    name="frontier",
    description="Protocol P: Fashion-MNIST MLP 784-h-10, all the data, narrow networks",
    variants=("plain", "restart", *VARIANTS),
    setup=frontier_setup,
    default_seeds=tuple(range(5)),
    options={"h": HIDDEN},
    variant_options={"plain": {"h": WIDTHS}},
    overrides=VARIANTS,
)
