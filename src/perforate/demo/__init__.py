"""The demo behind ``perforate demo``: PB and its restart control on a small data set.

Digits (scikit-learn's bundled 8x8 digits, no download): a fixed split of 1,000 train / 360 val /
437 test and a 64-32-10 MLP. Fashion-MNIST (from the Debian package ``dataset-fashion-mnist``):
a small CNN (conv 8, conv 16, fc 32) on a subset. Both runs use the same seed, the same
controller and schedule; the restart control only skips the dendrite phases, so the difference
is what the dendrites added. Decisions are made on the validation -loss (continuous: accuracy
ties on 360 samples end runs early); accuracy is reported at the epoch of the best val -loss.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..config import PerforationConfig
from ..engine.model import perforate
from ..metrics import accuracy, neg_loss
from ..training.fit import fit
from ..training.schedule import Schedule
from ..training.tracker import Tracker
from .data import load_digits_split, load_fashion_mnist

DATASETS = ("digits", "fashion-mnist")
#: Configurations the demo can train PB with (``perforate demo --preset``).
PRESETS: dict[str, Callable[[], PerforationConfig]] = {
    "default": PerforationConfig, "paper": PerforationConfig.paper}


def digits_mlp() -> nn.Module:
    """The digits demo network: 64-32-10 MLP (ReLU)."""
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def fashion_cnn() -> nn.Module:
    """The Fashion-MNIST demo network: conv 8, conv 16, fc 32 (ReLU, max-pooling)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10))


@dataclass
class DemoSetup:
    """One data set's demo: data, network, and the schedule (full and quick)."""

    name: str
    net_factory: str
    """"module:function" recorded in checkpoints (for ``perforate export``)."""
    build: Callable[[], nn.Module]
    description: str
    batch_size: int
    lr: float
    schedule: Schedule
    threads: int | None


def demo_setup(dataset: str, *, quick: bool) -> DemoSetup:
    """The demo's settings for `dataset` ("digits" or "fashion-mnist")."""
    if dataset == "digits":
        schedule = (Schedule(neuron_patience=8, max_dendrite_epochs=8, min_dendrites=2,
                             max_dendrites=2, dendrite_patience=3) if quick else
                    Schedule(neuron_patience=25, max_dendrite_epochs=25, min_dendrites=2,
                             max_dendrites=3, dendrite_patience=3))
        # A 64-32-10 MLP is far too small for intra-op threads: one thread is fastest and
        # does not suffer when the cores are shared.
        return DemoSetup("digits", "perforate.demo:digits_mlp", digits_mlp,
                         "digits 8x8 (1,000 train / 360 val / 437 test), 64-32-10 MLP",
                         batch_size=32, lr=1e-3,
                         schedule=schedule, threads=1)
    if dataset == "fashion-mnist":
        schedule = (Schedule(neuron_patience=2, max_dendrite_epochs=2, min_dendrites=2,
                             max_dendrites=2, dendrite_patience=3) if quick else
                    Schedule(neuron_patience=5, max_dendrite_epochs=10, min_dendrites=2,
                             max_dendrites=3, dendrite_patience=3))
        return DemoSetup("fashion-mnist", "perforate.demo:fashion_cnn", fashion_cnn,
                         "Fashion-MNIST subset, CNN conv 8 / conv 16 / fc 32",
                         batch_size=64, lr=1e-3,
                         schedule=schedule, threads=None)
    raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")


def load_data(dataset: str, *, quick: bool, data_dir: str | Path | None = None
              ) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """The demo's train / val / test sets."""
    if dataset == "digits":
        return load_digits_split()
    sizes = dict(n_train=3_000, n_val=1_000, n_test=2_000) if quick else {}
    return load_fashion_mnist(data_dir, **sizes)


def run_variant(setup: DemoSetup, data: tuple[TensorDataset, ...], *, seed: int,
                add_dendrites: bool, out_dir: Path | None, progress: bool,
                config: PerforationConfig | None = None) -> Tracker:
    """Train one run (PB or, with ``add_dendrites=False``, the restart control); `config`
    defaults to the library's defaults."""
    train, val, test = data
    torch.manual_seed(seed)
    net = setup.build()
    model = perforate(net, config or PerforationConfig())
    loader = DataLoader(train, batch_size=setup.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(val, batch_size=1024)
    test_loader = DataLoader(test, batch_size=1024)
    loss_fn = nn.CrossEntropyLoss()
    lr = setup.lr
    return fit(model, loader, val_loader, loss_fn, lambda p: torch.optim.Adam(p, lr=lr),
               test_loader=test_loader, metric=accuracy, decision_metric=neg_loss(loss_fn),
               schedule=dataclasses.replace(setup.schedule, add_dendrites=add_dendrites),
               tracker_kwargs={"out_dir": out_dir, "net_factory": setup.net_factory},
               progress=progress)


def run_demo(dataset: str = "digits", *, out: str | Path | None = "runs/demo", seed: int = 0,
             seeds: int = 1, quick: bool = False, progress: bool = True,
             data_dir: str | Path | None = None, preset: str = "default",
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run PB (configured by `preset`, one of `PRESETS`) and the restart control (on `seeds`
    consecutive seeds from `seed`), print the table of the first seed (and the paired
    comparison over all), return the trackers."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    setup = demo_setup(dataset, quick=quick)
    data = load_data(dataset, quick=quick, data_dir=data_dir)
    threads = torch.get_num_threads()
    if setup.threads is not None:
        torch.set_num_threads(setup.threads)
    start = time.perf_counter()
    all_runs: list[dict[str, Tracker]] = []
    try:
        for s in range(seed, seed + seeds):
            base = None if out is None else (Path(out) if seeds == 1 else Path(out) / f"seed-{s}")
            runs: dict[str, Tracker] = {}
            for label, add in (("PB", True), ("restart control", False)):
                sub = None if base is None else base / ("pb" if add else "restart")
                runs[label] = run_variant(setup, data, seed=s, add_dendrites=add, out_dir=sub,
                                          progress=progress, config=PRESETS[preset]())
            all_runs.append(runs)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    where = None if out is None else (f"{out}/pb and {out}/restart" if seeds == 1 else
                                      f"{out}/seed-N/{{pb,restart}}")
    for line in format_report(setup, all_runs[0], seed=seed, quick=quick, seconds=seconds,
                              where=where):
        echo(line)
    if seeds > 1:
        for line in format_paired(all_runs, first_seed=seed):
            echo(line)
    return {"runs": all_runs[0], "all_runs": all_runs, "seconds": seconds, "setup": setup}


def describe(config: PerforationConfig) -> str:
    """One line: how this configuration's dendrites learn."""
    learn = {"cascade_correlation": "Cascade-Correlation candidates",
             "task_loss": "candidates trained on the loss",
             "none": "untrained candidates"}[config.dendrite_phase]
    after = "trained with the network" if config.train_dendrites else "frozen"
    return (f"{learn}, then {after} ({config.dendrite_activation}, "
            f"{'perforated' if config.perforated else 'not perforated'})")


def format_paired(all_runs: list[dict[str, Tracker]], *, first_seed: int) -> list[str]:
    """Per seed, the final models' test accuracy of PB and the restart control, and the paired
    difference (mean and standard deviation)."""
    lines = ["", f"paired over {len(all_runs)} seeds (final model, test accuracy at best val):",
             f"{'seed':>6} {'PB':>8} {'restart':>8} {'PB - restart':>13} {'PB params':>10}"]
    diffs = []
    for i, runs in enumerate(all_runs):
        pb = runs["PB"].final_architecture
        ctl = runs["restart control"].final_architecture
        a, b = pb["test_accuracy_at_best_val"], ctl["test_accuracy_at_best_val"]
        diffs.append(100 * (a - b))
        lines.append(f"{first_seed + i:>6} {100 * a:>7.2f}% {100 * b:>7.2f}% {diffs[-1]:>+12.2f} "
                     f"{pb['params']:>10,}")
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    lines.append(f"{'mean':>6} {'':>8} {'':>8} {mean:>+12.2f} (sd {sd:.2f} points)")
    return lines


def format_report(setup: DemoSetup, runs: dict[str, Tracker], *, seed: int, quick: bool,
                  seconds: float, where: str | None) -> list[str]:
    """The demo's closing table: one row per architecture of each run, then error reduction."""
    lines = [f"perforate demo: {setup.description}, seed {seed}{' (quick)' if quick else ''}, "
             f"PB: {describe(runs['PB'].perforated.config)}",
             "decisions on the validation loss (continuous); accuracies at the epoch of the best "
             "validation loss", ""]
    head = (f"{'run':<16} {'cycle':>5} {'dendrites':>9} {'params':>7} {'epochs':>6} "
            f"{'best val loss':>13} {'val acc':>8} {'test acc':>8}  ")
    lines += [head, "-" * len(head)]
    for label, tracker in runs.items():
        for a in tracker.records.architectures:
            mark = "<- final" if a["kept"] else ""
            lines.append(
                f"{label:<16} {a['cycle']:>5} {a['dendrites']:>9} {a['params']:>7,} "
                f"{a['epochs']:>6} {-a['best_val']:>13.4f} "
                f"{100 * a['val_accuracy_at_best_val']:>7.2f}% "
                f"{100 * a['test_accuracy_at_best_val']:>7.2f}%  {mark}")
    lines.append("")
    for label, tracker in runs.items():
        first, final = tracker.records.architectures[0], tracker.final_architecture
        red = tracker.error_reduction("test_accuracy")
        lines.append(
            f"{label:<16} test error {100 * (1 - first['test_accuracy_at_best_val']):.2f}% -> "
            f"{100 * (1 - final['test_accuracy_at_best_val']):.2f}% "
            f"(error reduction {100 * red:+.1f}%), final model {final['dendrites']} dendrite "
            f"set(s), {final['params']:,} parameters; stop: {tracker.schedule.stop_reason}")
    if len(runs) == 2:
        pb, ctl = runs["PB"], runs["restart control"]
        diff = (pb.final_architecture["test_accuracy_at_best_val"]
                - ctl.final_architecture["test_accuracy_at_best_val"])
        lines.append(f"dendrites added {100 * diff:+.2f} test accuracy points over the restart "
                     "control (one seed: see algorithm.md for why paired seeds matter)")
    lines.append(f"wall time {seconds:.1f} s" + (f"; artifacts in {where}" if where else ""))
    return lines
