"""Train and score one (experiment, variant, seed) run; return its result row."""

from __future__ import annotations

import logging
import os
import platform
import random
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from perforate.engine.model import perforate
from perforate.metrics import metric_name
from perforate.training.fit import fit, predict
from perforate.training.schedule import SETTINGS, Schedule

from .base import WIDTH_CONTROLS, Experiment, Setup, build_config, is_plain

logger = logging.getLogger(__name__)

#: A function that returns the stored result row of (variant, seed) of the same sweep.
Lookup = Callable[[str, int], Mapping[str, Any]]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the run's data order, dropout and init follow)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def match_width(make_net: Callable[[float], nn.Module], target: int, base: float = 1.0) -> float:
    """The width multiplier (>= base) whose network has the parameter count closest to
    `target` (bisection on the multiplier; channel counts are rounded by the model)."""
    lo, hi = base, base
    while count_params(make_net(hi)) < target:
        hi *= 1.5
        if hi > 64 * base:
            raise ValueError(f"no width up to {hi:.1f}x reaches {target} parameters")
    for _ in range(30):
        mid = (lo + hi) / 2
        if count_params(make_net(mid)) < target:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda w: abs(count_params(make_net(w)) - target))


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=Path(__file__).parent,
                               timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware() -> dict[str, Any]:
    return {"machine": platform.machine(), "processor": platform.processor() or None,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _architecture_rows(summary: Mapping[str, Any], test_key: str) -> list[dict[str, Any]]:
    return [{"cycle": a["cycle"], "dendrites": a["dendrites"], "params": a["params"],
             "epochs": a["epochs"], "best_val": a["best_val"], "test": a.get(test_key),
             "improved": a.get("improved"), "kept": a.get("kept")}
            for a in summary["architectures"]]


def run_one(experiment: Experiment, variant: str, seed: int, *, quick: bool = False,
            options: Mapping[str, Any] | None = None, lookup: Lookup | None = None,
            device: str = "cpu") -> dict[str, Any]:
    """Run one variant with one seed; the returned row is what ``perforate report`` reads."""
    if variant not in experiment.variants:
        raise ValueError(f"experiment {experiment.name!r} has no variant {variant!r}; "
                         f"choose from {', '.join(experiment.variants)}")
    options = dict(options or {})
    seed_everything(seed)
    setup: Setup = experiment.setup(seed=seed, quick=quick, **options)
    width = setup.width
    if variant in WIDTH_CONTROLS:
        if lookup is None:
            raise ValueError(f"the width control {variant!r} needs the "
                             f"{WIDTH_CONTROLS[variant]!r} result of the same seed")
        target = int(lookup(WIDTH_CONTROLS[variant], seed)["final_params"])
        width = match_width(setup.make_net, target, base=setup.width)
    seed_everything(seed)
    net = setup.make_net(width).to(device)
    config_fields, tracker_fields = experiment.variant_settings(variant, setup.head)
    config = build_config({"seed": seed, **setup.config, **config_fields})
    model = perforate(net, config)
    tracker_kwargs = {**setup.tracker_kwargs, **tracker_fields}
    if is_plain(variant):
        tracker_kwargs["add_dendrites"] = False
    if variant == "plain":  # one cycle
        tracker_kwargs.update(max_dendrites=0, min_dendrites=0)
    start = time.perf_counter()
    tracker = fit(model, setup.train, setup.val, setup.loss_fn, setup.optimizer_factory,
                  test_loader=setup.test, metric=setup.metric,
                  decision_metric=setup.decision_metric,
                  scheduler_factory=setup.scheduler_factory,
                  schedule=Schedule(**{k: v for k, v in tracker_kwargs.items() if k in SETTINGS}),
                  tracker_kwargs={k: v for k, v in tracker_kwargs.items() if k not in SETTINGS},
                  progress=False)
    wall = time.perf_counter() - start
    summary = tracker.summary()
    name = metric_name(setup.metric)
    test_key = f"test_{name}_at_best_val" if setup.decision_metric is not None \
        else "test_at_best_val"
    archs = _architecture_rows(summary, test_key)
    final = summary["final"]  # the best cycle: the architecture the model holds at the end
    extra_tests = {}
    model.eval()
    for set_name, loader in setup.extra_tests.items():
        outputs, targets = predict(model, loader, torch.device(device))
        extra_tests[set_name] = float(setup.metric(outputs, targets))
    post = setup.post_run(model, setup, tracker) if setup.post_run is not None else None
    return {
        "experiment": experiment.name, "variant": variant, "seed": seed, "quick": quick,
        "options": options, "width": width, "metric": name,
        "decision_metric": metric_name(setup.decision_metric) if setup.decision_metric
        else name,
        "first_test": archs[0]["test"] if archs else None,
        "final_test": final.get(test_key) if final else None,
        "final_cycle": final["cycle"] if final else None,
        "first_params": archs[0]["params"] if archs else None,
        "final_params": model.count_parameters(),
        "final_dendrites": model.num_dendrites,
        "architectures": archs, "extra_tests": extra_tests,
        "epochs": summary["epochs"], "stop_reason": summary["stop_reason"],
        "dendrite_phases": summary["dendrite_phases"],
        "history": [{k: r.get(k) for k in ("epoch", "phase", "dendrites", "val", "test",
                                           "seconds")} for r in tracker.records.history],
        "config": config.to_dict(), "tracker": tracker_kwargs,
        # a variant's own schedule (e.g. a longer budget) is the protocol its row ran
        "protocol": {**setup.protocol, **{k: v for k, v in tracker_fields.items()
                                          if k in setup.protocol}},
        "git_commit": git_commit(), "hardware": hardware(), "wall_seconds": wall,
        **({"post": post} if post is not None else {}),
    }
