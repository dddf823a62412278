"""Protocol P with the official open package ``perforatedai==3.2.9``: the frontier's anchor arm.

Trains the package on Protocol P (``specs/frontier.py``: Fashion-MNIST 50k/10k/10k with split
seed 0, MLP 784 -> h -> 10; with ``--experiment frontier-1d``, ``specs/frontier_1d.py``:
MNIST-1D, MLP 40 -> h -> h -> 10), ``torch.manual_seed(seed)`` before building, Adam(lr=1e-3), batch
128, data order from torch's generator seeded with the seed, a fresh optimizer whenever the
package restructures the model, decisions on validation accuracy, at most 150 epochs, 1 torch
thread) with ``n_epochs_to_switch=5``, ``max_dendrites=3`` and its other defaults, and writes
one row per (seed, h) where ``perforate report`` reads the frontier's results:
``<out>/<experiment>/perforatedai/seed-S__h-H.json``.

perforatedai is not a dependency: it runs in its own venv (``make bench-anchor`` creates
``bench/.venv-anchor``), with this package and the library on the path::

    PYTHONPATH=src:experiments bench/.venv-anchor/bin/python -m perforate_experiments.anchor \\
        --seeds 0-2 --h 4,8,16 --out results/experiments

Each run works in a fresh directory of its own: the package writes ``./<save_name>/`` and
reads its settings back from there on the next start.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .runner import result_path, write_json_atomic

logger = logging.getLogger(__name__)

VARIANT = "perforatedai"
PACKAGE = "perforatedai==3.2.9"
#: The package's settings under Protocol P (everything else at its defaults).
SETTINGS = {"n_epochs_to_switch": 5, "max_dendrites": 3}


@dataclass
class Epoch:
    """One training epoch of the package: its scores and the model it scored."""

    epoch: int
    val: float
    test: float
    params: int
    dendrites: int


def summarize(epochs: Sequence[Epoch]) -> dict[str, Any]:
    """The row's figures: the test accuracy at the best validation accuracy (the first epoch
    that reached it), over the first cycle (no dendrites) and over the whole run."""
    if not epochs:
        raise ValueError("no epochs to summarize")

    def best(rows: Sequence[Epoch]) -> Epoch:
        return max(rows, key=lambda e: (e.val, -e.epoch))

    first = best([e for e in epochs if e.dendrites == 0] or list(epochs))
    final = best(epochs)
    return {"first_test": first.test, "first_params": first.params,
            "final_test": final.test, "final_params": final.params,
            "final_dendrites": final.dendrites, "best_epoch": final.epoch,
            "epochs": len(epochs), "max_dendrites_seen": max(e.dendrites for e in epochs)}


def anchor_row(seed: int, h: int, epochs: Sequence[Epoch], *, stop_reason: str,
               wall_seconds: float, hardware: dict[str, Any], git_commit: str,
               protocol: dict[str, Any], experiment: str = "frontier") -> dict[str, Any]:
    """The result row of one run, with the keys the frontier experiment's rows have."""
    return {"experiment": experiment, "variant": VARIANT, "seed": seed, "quick": False,
            "options": {"h": h}, "metric": "accuracy", "decision_metric": "accuracy",
            **summarize(epochs), "stop_reason": stop_reason, "protocol": protocol,
            "wall_seconds": wall_seconds, "hardware": hardware, "git_commit": git_commit,
            "history": [asdict(e) for e in epochs]}


def row_path(out: str | Path, seed: int, h: int, experiment: str = "frontier") -> Path:
    return result_path(Path(out), experiment, VARIANT, seed, {"h": h}, False)


def write_row(out: str | Path, row: dict[str, Any]) -> Path:
    """Write `row` (from `anchor_row`) where the frontier report reads it; return the path."""
    path = row_path(out, int(row["seed"]), int(row["options"]["h"]), row["experiment"])
    write_json_atomic(path, row)
    return path


def protocol_description(h: int, experiment: str = "frontier") -> dict[str, Any]:
    from .specs.frontier import BATCH_SIZE, FULL, LR, SPLIT_SEED
    from .specs.frontier_1d import DATA, NETWORK

    data = {"frontier": {"data": "Fashion-MNIST 50k/10k/10k, flattened",
                         "split_seed": SPLIT_SEED},
            "frontier-1d": {"data": DATA, "network": NETWORK}}[experiment]
    return {"h": h, "package": PACKAGE, **{f"pai_{k}": v for k, v in SETTINGS.items()},
            "max_epochs": FULL["max_epochs"], "batch_size": BATCH_SIZE,
            "optimizer": f"Adam(lr={LR}), fresh at every restructure",
            "decision": "val accuracy", **data,
            "params": "used by the forward pass (parameters that receive a gradient)"}


def network(experiment: str, h: int) -> nn.Module:
    """The experiment's network at hidden width `h`."""
    if experiment == "frontier-1d":
        from .specs.frontier_1d import mlp2

        return mlp2(h)
    from .specs.frontier import mlp

    return mlp(h)


def used_parameters(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Parameters the forward pass uses: those that receive a gradient on a batch (the package
    keeps copies it does not use: earlier output weights, a parent copy, candidate links)."""
    saved = {id(p): p.grad for p in model.parameters()}
    for p in model.parameters():
        p.grad = None
    nn.functional.cross_entropy(model(x), y).backward()
    used = {id(p): p.numel() for p in model.parameters() if p.grad is not None}
    for p in model.parameters():
        p.grad = saved[id(p)]
    return sum(used.values())


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x[i:i + 2000]).argmax(1) == y[i:i + 2000]).sum())
                      for i in range(0, len(x), 2000))
    return correct / len(y)


def train_anchor(seed: int, h: int, data: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 *, max_epochs: int = 150, experiment: str = "frontier",
                 log: Callable[[str], None] = logger.info) -> tuple[list[Epoch], str]:
    """Train perforatedai on Protocol P in the current directory; return the epochs and why
    the run stopped."""
    from perforatedai import globals_perforatedai as GPA
    from perforatedai import utils_perforatedai as UPA

    from .specs.frontier import BATCH_SIZE, LR

    GPA.pc.set_configuration_confirmed(True)  # else a prompt (TTY) or a RuntimeError
    GPA.pc.set_testing_dendrite_capacity(False)  # else a test mode adds a set every epoch
    GPA.pc.set_n_epochs_to_switch(SETTINGS["n_epochs_to_switch"])
    GPA.pc.set_max_dendrites(SETTINGS["max_dendrites"])
    torch.manual_seed(seed)
    model = UPA.perforate_model(network(experiment, h), save_name="protocol-p",
                                maximizing_score=True)
    GPA.pai_tracker.set_optimizer(torch.optim.Adam)

    def optimizer(model: nn.Module) -> torch.optim.Optimizer:
        opt, _ = GPA.pai_tracker.setup_optimizer(model, {"params": model.parameters(),
                                                         "lr": LR}, {})
        return opt

    opt = optimizer(model)
    (xt, yt), (xv, yv), (xs, ys) = data["train"], data["val"], data["test"]
    epochs: list[Epoch] = []
    dendrites, reason = 0, f"max_epochs ({max_epochs}) reached"
    for epoch in range(max_epochs):
        model.train()
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), BATCH_SIZE):
            idx = order[i:i + BATCH_SIZE]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
        val, test = _accuracy(model, xv, yv), _accuracy(model, xs, ys)
        epochs.append(Epoch(epoch, val, test, used_parameters(model, xv[:256], yv[:256]),
                            dendrites))
        log(f"seed {seed} h {h} epoch {epoch}: val {val:.4f} test {test:.4f} "
            f"D {dendrites} params {epochs[-1].params}")
        model, restructured, complete = GPA.pai_tracker.add_validation_score(val, model)
        if complete:
            reason = "perforatedai: training complete"
            break
        if restructured:
            dendrites = _count_sets(model)
            opt = optimizer(model)
    return epochs, reason


def _count_sets(model: nn.Module) -> int:
    """Dendrite sets of the package's model: the stacked layers of its dendrite modules."""
    counts = [len(m.layers) for name, m in model.named_modules()
              if name.endswith("dendrite_module") and hasattr(m, "layers")]
    if not counts:
        raise RuntimeError("no `dendrite_module` with `layers` in the package's model "
                           "(a perforatedai version other than 3.2.9?)")
    return max(counts)


def load_protocol_data(root: str | None = None, experiment: str = "frontier"
                       ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The experiment's train / val / test tensors (`root`: the Fashion-MNIST folder, or the
    MNIST-1D cache directory)."""
    if experiment == "frontier-1d":
        from .data.mnist1d import load_mnist1d

        parts = load_mnist1d(None if root is None else Path(root))
        return dict(zip(("train", "val", "test"), (tuple(p.tensors) for p in parts),
                        strict=True))
    from .data.fashion_mnist import load_fashion_mnist
    from .specs.frontier import SPLIT_SEED, _flat

    train, val, test = load_fashion_mnist(root, seed=SPLIT_SEED)
    return {"train": _flat(train, None), "val": _flat(val, None), "test": _flat(test, None)}


def parse_seeds(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]``."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    return seeds


def main(argv: Sequence[str] | None = None) -> None:
    from .train import git_commit, hardware

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0", help="e.g. 0-2 or 0,3")
    parser.add_argument("--h", default="4,8,16", help="hidden widths, comma-separated")
    parser.add_argument("--out", default="results/experiments")
    parser.add_argument("--experiment", default="frontier", choices=("frontier", "frontier-1d"))
    parser.add_argument("--root", default=None,
                        help="Fashion-MNIST folder (frontier-1d: MNIST-1D cache directory)")
    parser.add_argument("--max-epochs", type=int, default=150)
    parser.add_argument("--force", action="store_true", help="rerun rows that exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    data = load_protocol_data(args.root, args.experiment)
    exp = args.experiment
    out = Path(args.out).resolve()
    for h in (int(v) for v in args.h.split(",")):
        for seed in parse_seeds(args.seeds):
            if row_path(out, seed, h, exp).exists() and not args.force:
                logger.info("seed %d h %d: row exists, skipped", seed, h)
                continue
            start, cwd = time.perf_counter(), os.getcwd()
            with tempfile.TemporaryDirectory(prefix="perforatedai-run-") as work:
                os.chdir(work)  # the package's files and settings stay in this run's folder
                try:
                    epochs, reason = train_anchor(seed, h, data, max_epochs=args.max_epochs,
                                                  experiment=exp)
                finally:
                    os.chdir(cwd)
            row = anchor_row(seed, h, epochs, stop_reason=reason,
                             wall_seconds=time.perf_counter() - start, hardware=hardware(),
                             git_commit=git_commit(), protocol=protocol_description(h, exp),
                             experiment=exp)
            path = write_row(out, row)
            print(f"wrote {path}: test {row['final_test']:.4f}, {row['final_params']:,} "
                  f"params, {row['final_dendrites']} sets", file=sys.stderr)


if __name__ == "__main__":
    main()
