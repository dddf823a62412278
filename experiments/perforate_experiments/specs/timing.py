"""Experiment 5: the paper's Table 2 (training and inference cost) for the PhysioNet model.

One PB run (variant ``pb``, seed 0 by default) of the narrow mTAN classifier (width 0.125;
``--option width=0.25`` for the other PB width) with the PhysioNet protocol of
`physionet.physionet_setup`, except that every dendrite set up to ``max_dendrites`` is trained
(``min_dendrites = max_dendrites``), so that every neuron cycle and dendrite phase is timed; the
final model is still the best cycle's. After training, ``post_run`` adds to the row under
``"post"``:

- ``cycles``: per neuron cycle and per dendrite phase, epochs, seconds and seconds per epoch
  (an epoch's seconds are the tracker's: the training pass plus, in the neuron phase, scoring
  the train/val/test sets); ``train_seconds``: their sum;
- ``inference``: inputs per second one patient at a time (the first `N_SINGLE` test patients,
  unpadded) and batched (the whole test split in batches of 50) for the plain network (the
  final model with its wrappers removed), the wrapped `PerforatedModel` and
  ``pf.export(model)``; ``by_dendrites``: the same for the wrapped and exported model with
  0..max_dendrites dendrite sets (copies of the trained network with random dendrite weights:
  the cost of D sets whatever the final model kept). Each measurement: eval mode,
  ``torch.inference_mode``, one warm-up pass, best of 3 timed passes, on the CPU with the
  protocol's thread count (1).

Deviations from the paper: the PhysioNet deviations (32 reference points, short patience), a
CPU instead of a GPU, and training forced through every dendrite cycle.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from perforate.io.export import export

from ..base import Experiment, Setup, paper_fields
from .physionet import BATCH_SIZE, physionet_setup

logger = logging.getLogger(__name__)

REPEATS = 3
N_SINGLE = {False: 200, True: 20}


def cycle_times(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Epochs and seconds of each neuron cycle and dendrite phase, in training order.

    A dendrite phase is labelled by the set it builds (``set = dendrites + 1``).
    """
    out: list[dict[str, Any]] = []
    for row in history:
        phase, dendrites = row["phase"], int(row["dendrites"])
        key = ({"phase": phase, "cycle": int(row.get("cycle", dendrites)), "dendrites": dendrites}
               if phase == "neuron" else {"phase": phase, "set": dendrites + 1})
        if not out or {k: out[-1].get(k) for k in key} != key:
            out.append({**key, "epochs": 0, "seconds": 0.0})
        out[-1]["epochs"] += 1
        out[-1]["seconds"] += float(row["seconds"])
    for c in out:
        c["seconds_per_epoch"] = c["seconds"] / c["epochs"]
    return out


def inputs_per_second(net: nn.Module, batches: Sequence[tuple[Any, ...]],
                      repeats: int = REPEATS) -> float:
    """Inputs per second of `net` over `batches` (tuples of positional inputs), eval mode,
    ``torch.inference_mode``, best of `repeats` timed passes after one warm-up pass."""
    net.eval()
    n = sum(int(b[0].shape[0]) for b in batches)
    best = float("inf")
    with torch.inference_mode():
        for r in range(repeats + 1):
            start = time.perf_counter()
            for b in batches:
                net(*b)
            if r:  # the first pass is a warm-up
                best = min(best, time.perf_counter() - start)
    return n / best


def _speeds(net: nn.Module, single: Sequence[Any], batched: Sequence[Any]) -> dict[str, float]:
    return {"single_per_s": inputs_per_second(net, single),
            "batched_per_s": inputs_per_second(net, batched)}


def with_dendrites(model: Any, num: int, seed: int = 0) -> Any:
    """A copy of the trained `model` with `num` random dendrite sets (weights ~ N(0, 0.1^2))
    on every wrapped layer in place of its own: only for timing, its function is not a
    trained one."""
    grown = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in grown.dendrite_layers().values():
            layer.resize(num)
            for t in (layer.dendrite_weight, layer.dendrite_bias, layer.cascade_weight,
                      layer.output_weight):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
    return grown


def timing_report(n_single: int, max_dendrites: int) -> Callable[..., dict[str, Any]]:
    """The ``post_run`` hook: per-cycle training times and inference throughput."""

    def report(model: Any, setup: Setup, tracker: Any) -> dict[str, Any]:
        test = setup.test
        n = len(test.items)  # type: ignore[attr-defined]
        single = [test.collate([i])[0] for i in range(min(n_single, n))]  # type: ignore[attr-defined]
        batched = [test.collate(range(s, min(s + BATCH_SIZE, n)))[0]  # type: ignore[attr-defined]
                   for s in range(0, n, BATCH_SIZE)]
        plain = copy.deepcopy(model).unload()
        inference: dict[str, Any] = {
            "plain": {"params": sum(p.numel() for p in plain.parameters()),
                      **_speeds(plain, single, batched)},
            "wrapped": {"params": model.count_parameters(), **_speeds(model, single, batched)},
            "exported": {"params": model.count_parameters(),
                         **_speeds(export(model), single, batched)},
        }
        by_dendrites = []
        for d in range(max_dendrites + 1):
            grown = with_dendrites(model, d)
            by_dendrites.append({"dendrites": d, "params": grown.count_parameters(),
                                 "wrapped": _speeds(grown, single, batched),
                                 "exported": _speeds(export(grown), single, batched)})
        for name, v in inference.items():
            logger.info("%s: %.0f inputs/s one at a time, %.0f inputs/s in batches of %d",
                        name, v["single_per_s"], v["batched_per_s"], BATCH_SIZE)
        cycles = cycle_times(tracker.records.history)
        return {"cycles": cycles, "train_seconds": sum(c["seconds"] for c in cycles),
                "neuron_seconds_per_epoch": _mean_rate(cycles, "neuron"),
                "dendrite_seconds_per_epoch": _mean_rate(cycles, "dendrite"),
                "final_dendrites": model.num_dendrites, "inference": inference,
                "by_dendrites": by_dendrites, "single_inputs": len(single),
                "batch_size": BATCH_SIZE, "batched_inputs": n,
                "threads": torch.get_num_threads(), "repeats": REPEATS}

    return report


def _mean_rate(cycles: list[dict[str, Any]], phase: str) -> float | None:
    rows = [c for c in cycles if c["phase"] == phase]
    epochs = sum(c["epochs"] for c in rows)
    return sum(c["seconds"] for c in rows) / epochs if epochs else None


def timing_setup(seed: int, quick: bool, *, width: float = 0.125, **overrides: Any) -> Setup:
    """The PhysioNet setup at `width` with the timing hook."""
    setup = physionet_setup(seed, quick, width=width, **overrides)
    kwargs = setup.tracker_kwargs
    if "min_dendrites" not in overrides:  # every dendrite cycle is trained and timed
        kwargs["min_dendrites"] = setup.protocol["min_dendrites"] = kwargs["max_dendrites"]
    setup.post_run = timing_report(N_SINGLE[quick], kwargs["max_dendrites"])
    # Table 2 times the paper's algorithm, dendrite phases included, whatever the defaults
    setup.config = {**paper_fields(), **setup.config}
    setup.protocol = {**setup.protocol, "timing": "Table 2: per-cycle epoch times, inference"}
    return setup


EXPERIMENT = Experiment(
    name="timing",
    description="Table 2: training time per cycle and inference speed (PhysioNet mTAN, PB)",
    variants=("pb",),
    setup=timing_setup,
    default_seeds=(0,),
)
