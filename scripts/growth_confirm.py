"""Does a retry or a grace period after growth rescue runs that kept no dendrite set?

Re-runs chosen seeds of ``frontier-1d`` (MNIST-1D; ``--experiment frontier`` for Protocol P)
with the variant of the library's defaults (``pb`` on MNIST-1D, ``anchor-unperf`` on Protocol
P; ``--base restart`` for the restart control, the grace period's control) exactly as
``perforate experiment <experiment>`` does (same setup, seeding and row format:
`perforate_experiments.train.run_one`), changing only the schedule:

- ``retry``: ``dendrite_tries=2`` (a set that does not improve is dropped once and a fresh one
  grown from the best weights: the "unlucky initialisation" fix);
- ``graceN``: ``grace_epochs=N``, a neuron cycle after a growth is not judged before its
  N-th epoch (the usual patience still applies after that: the cycle ends once N epochs have
  passed *and* ``neuron_patience`` epochs went without a new best): the "judged too early"
  fix. It consumes no randomness, so a run is the ``pb`` run of the same code until its
  first post-growth cycle would have been judged.

A ``retry`` row also gives the single-try run (identical up to the first cycle that does not
improve): ``perforate_experiments.report.growth`` derives it (``pb-retry/1try``) and compares
both arms with it seed by seed. Rows of another commit are not comparable: a 0.01-point change
of cycle 0 can flip whether the first growth is kept.

Usage (2-7 CPU-minutes per run at 1 thread on a shared 2-core machine)::

    nice -n 10 .venv/bin/python scripts/growth_confirm.py --seeds 3,5,8,9 --h 8 \\
        --arms retry,grace15 --out results/growth_confirm

Rows land in ``OUT/<experiment>/<base>-<arm>/seed-S__h-H.json`` (readable by
``python -m perforate_experiments.report.growth OUT``), one run at a time, skipping rows
already on disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch

import perforate_experiments.train as train
from perforate.training.schedule import Schedule
from perforate.training.tracker import Tracker
from perforate_experiments.registry import get_experiment
from perforate_experiments.runner import parse_seeds, result_path, write_json_atomic

#: The experiments it re-runs and the variant of the library's defaults in each.
DEFAULT_VARIANT = {"frontier-1d": "pb", "frontier": "anchor-unperf"}


def arm_settings(arm: str) -> dict[str, Any]:
    """The extra schedule settings of an arm name (``retry`` or ``grace<N>``)."""
    if arm == "retry":
        return {"dendrite_tries": 2}
    match = re.fullmatch(r"grace(\d+)", arm)
    if match:
        return {"grace_epochs": int(match.group(1))}
    raise SystemExit(f"unknown arm {arm!r}: use retry or grace<N>")


def run(arm: str, seed: int, h: int, base: str = "pb",
        experiment: str = "frontier-1d") -> dict[str, Any]:
    """One run of `arm` on variant `base` of `experiment`: `train.run_one` with `fit` wrapped
    to add the arm's settings."""
    exp = get_experiment(experiment)
    extra = arm_settings(arm)
    original = train.fit

    @functools.wraps(original)
    def patched(*args: Any, schedule: Schedule, **kwargs: Any) -> Tracker:
        return original(*args, schedule=dataclasses.replace(schedule, **extra), **kwargs)

    train.fit = patched
    try:
        row = train.run_one(exp, base, seed, options={"h": h})
    finally:
        train.fit = original
    row["variant"] = f"{base}-{arm}"
    row["tracker"] = {**row["tracker"], **extra}
    row["growth_confirm"] = {"arm": arm, "script": "scripts/growth_confirm.py"}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="3,5,8,9")
    parser.add_argument("--h", type=int, default=8)
    parser.add_argument("--arms", default="retry,grace15")
    parser.add_argument("--experiment", choices=sorted(DEFAULT_VARIANT), default="frontier-1d")
    parser.add_argument("--base", default=None,
                        help="the variant the arms change (default: the experiment's defaults; "
                             "restart: the control)")
    parser.add_argument("--out", default="results/growth_confirm")
    args = parser.parse_args(argv)
    base = args.base or DEFAULT_VARIANT[args.experiment]
    if base not in get_experiment(args.experiment).variants:
        parser.error(f"{args.experiment} has no variant {base!r}")
    arms = args.arms.split(",")
    for arm in arms:
        arm_settings(arm)  # an unknown arm fails before any run
    torch.set_num_threads(1)
    for seed in parse_seeds(args.seeds):
        for arm in arms:
            path = result_path(Path(args.out), args.experiment, f"{base}-{arm}", seed,
                               {"h": args.h}, False)
            if path.is_file():
                continue
            row = run(arm, seed, args.h, base, args.experiment)
            write_json_atomic(path, row)
            print(json.dumps({"arm": arm, "seed": seed, "final_cycle": row["final_cycle"],
                              "final_dendrites": row["final_dendrites"],
                              "final_test": row["final_test"],
                              "cycles": [(a["epochs"], a["best_val"], a["improved"])
                                         for a in row["architectures"]],
                              "wall_s": round(row["wall_seconds"], 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
