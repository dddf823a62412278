"""Experiment 4: PhysioNet 2012 in-hospital mortality with mTAN (the paper's Figures 10-11).

Compression study: the plain mTAN classifier at widths 0.125, 0.25, 0.5, 1 and 2 (variant
``restart``: the PB controller with dendrites disabled, so every width gets the same cycles of
restarts), PB dendrites (``pb``) on the narrow widths 0.125 and 0.25 only, and the width control
(``width``: the narrow net widened to PB's final parameter count) for those two widths.

Protocol: set-a (3,996 patients) split 60/20/20 per seed, stratified by the label (every part
keeps the ~14% mortality rate); set-c (4,000 patients) is an extra test set scored on the final
model; normalisation statistics from the training split only; inputs are the 37 time series
(the static descriptors are not used). Adam lr 1e-3 (fresh per neuron cycle), batch 50,
BCE-with-logits; reported score and cycle decisions: ROC-AUC (validation AUC for decisions).
The mTAN encoder
(``MTANClassifier(width=w, linear_gru=True)``) has its GRU built from nn.Linear layers, so
dendrites reach every learnable layer (time embedding, attention projections, GRU, classifier).

Deviations from the paper (its Net 0.125 + 3 dendrites beat Net 1 by 2.7% AUC at < 1/10 of its
size): 32 reference points instead of 128, neuron patience 3 instead of 25, at most 3 dendrite
sets, at most 5 dendrite epochs per phase and at most 100 epochs in all, so that one run of the
widest network fits ~5 CPU minutes.

CPU settings: `perforate experiment` runs each run in a worker process with 1 torch thread
and subnormal floats flushed to zero (see `perforate_experiments.worker`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from perforate.metrics import roc_auc

from ..base import Experiment, Setup
from ..data.batches import CollatedBatches
from ..models import MTANClassifier

WIDTHS = (0.125, 0.25, 0.5, 1.0, 2.0)
PB_WIDTHS = (0.125, 0.25)
BATCH_SIZE = 50
EVAL_BATCH_SIZE = 200
LR = 1e-3

FULL = {"limit": None, "num_ref_points": 32, "neuron_patience": 3, "dendrite_patience": 2,
        "max_dendrite_epochs": 5, "max_dendrites": 3, "min_dendrites": 0, "max_epochs": 100}
QUICK = {"limit": 300, "num_ref_points": 8, "neuron_patience": 1, "dendrite_patience": 1,
         "max_dendrite_epochs": 1, "max_dendrites": 1, "min_dendrites": 0, "max_epochs": 6}
TRACKER_KEYS = ("neuron_patience", "dendrite_patience", "max_dendrite_epochs", "max_dendrites",
                "min_dendrites", "max_epochs")

Batch = tuple[tuple[Tensor, Tensor, Tensor], Tensor]


class PhysioBatches(CollatedBatches):
    """``((times, values, mask), label)`` mini-batches of a `PhysioNetDataset` (the positional
    arguments of `MTANClassifier.forward`), padded per batch with `collate_physionet`.

    Patients are normalised once; shuffled with torch's global generator; unshuffled batches
    are collated once and reused.
    """

    def __init__(self, dataset: Any, batch_size: int, shuffle: bool = False) -> None:
        self.items = [dataset[i] for i in range(len(dataset))]
        super().__init__(len(self.items), batch_size, shuffle)

    def collate(self, idx: Sequence[int]) -> Batch:
        from ..data.physionet import collate_physionet

        b = collate_physionet([self.items[i] for i in idx])
        return (b["times"], b["values"], b["mask"]), b["label"]


def bce(outputs: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy with logits (the training loss)."""
    return nn.functional.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype))


def make_net(width: float, num_ref_points: int) -> nn.Module:
    """mTAN classifier at width multiplier `width`, GRU of nn.Linear layers."""
    return MTANClassifier(width=width, linear_gru=True, num_ref_points=num_ref_points)


def physionet_setup(seed: int, quick: bool, *, width: float = 1.0, root: str | None = None,
                    **overrides: Any) -> Setup:
    """Setup of one PhysioNet run of the mTAN classifier at `width`."""
    from ..data.physionet import load_physionet_splits

    p = {**(QUICK if quick else FULL), **overrides}
    splits = load_physionet_splits(root, seed=seed, limit=p["limit"], stratify=True)
    if splits.test_c is None:
        raise FileNotFoundError("PhysioNet set-c is missing: the physionet experiment scores it "
                                "as an extra held-out test set")
    refs = p["num_ref_points"]
    return Setup(
        make_net=lambda w: make_net(w, refs),
        head="classifier.6",
        train=PhysioBatches(splits.train, BATCH_SIZE, shuffle=True),
        val=PhysioBatches(splits.val, EVAL_BATCH_SIZE),
        test=PhysioBatches(splits.test, EVAL_BATCH_SIZE),
        loss_fn=bce,
        metric=roc_auc,
        optimizer_factory=lambda params: torch.optim.Adam(params, lr=LR),
        tracker_kwargs={k: p[k] for k in TRACKER_KEYS},
        extra_tests={"set_c": PhysioBatches(splits.test_c, EVAL_BATCH_SIZE)},
        width=float(width),
        protocol={**p, "width": float(width), "batch_size": BATCH_SIZE,
                  "optimizer": f"Adam(lr={LR})", "decision": "val ROC-AUC",
                  "split": "set-a 60/20/20 stratified; set-c extra test",
                  "sizes": [len(splits.train), len(splits.val), len(splits.test),
                            len(splits.test_c)]},
    )


EXPERIMENT = Experiment(
    name="physionet",
    description="PhysioNet 2012 mortality, mTAN compression study (the paper's Figures 10-11)",
    variants=("pb", "pb-cc", "pb-perf", "restart", "width", "width-cc", "width-perf"),
    setup=physionet_setup,
    default_seeds=tuple(range(5)),
    options={"width": WIDTHS},
    variant_options={v: {"width": PB_WIDTHS}
                     for v in ("pb", "pb-cc", "pb-perf", "width", "width-cc", "width-perf")},
)
