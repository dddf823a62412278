"""Run sweeps: one (experiment, variant, seed, options) per process, skipping finished ones.

Results are JSON files ``OUT/NAME[-quick]/VARIANT/seed-S[__k-v].json`` written atomically, so
a sweep killed at any point resumes where it stopped when started again.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import WIDTH_CONTROLS
from .registry import get_experiment

logger = logging.getLogger(__name__)


def parse_seeds(text: str) -> list[int]:
    """``"0-9"``, ``"0,3,5"`` or ``"2-4,8"`` -> a sorted list of seeds."""
    seeds: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.update(range(lo, hi + 1))
            elif part:
                seeds.add(int(part))
    except ValueError:
        raise ValueError(f"bad seed list {text!r}: use e.g. 0-9 or 0,2,5") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"bad seed list {text!r}: use e.g. 0-9 or 0,2,5")
    return sorted(seeds)


def option_tag(options: Mapping[str, Any]) -> str:
    return "".join(f"__{k}-{v}" for k, v in sorted(options.items()))


def result_path(out: Path, name: str, variant: str, seed: int, options: Mapping[str, Any],
                quick: bool) -> Path:
    folder = out / (f"{name}-quick" if quick else name) / variant
    return folder / f"seed-{seed}{option_tag(options)}.json"


def failure_path(path: Path) -> Path:
    """Where a failed run records its error, beside the result it did not write
    (``seed-1.json`` -> ``seed-1.failed``): not a result row, and retried on resume."""
    return path.with_suffix(".failed")


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def read_result(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _ordered(variants: Sequence[str]) -> list[str]:
    """A width control needs its PB variant's result of the same seed: those first, width
    controls last."""
    first = set(WIDTH_CONTROLS.values())
    return sorted(variants, key=lambda v: 0 if v in first else 2 if v in WIDTH_CONTROLS else 1)


def parse_only(texts: Iterable[str]) -> dict[str, list[str]]:
    """``["net=tf16,lstm32"]`` -> ``{"net": ["tf16", "lstm32"]}`` (values as text)."""
    only: dict[str, list[str]] = {}
    for text in texts:
        key, sep, values = text.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ValueError(f"bad --only {text!r}: use KEY=VALUE[,VALUE] (e.g. net=tf16)")
        only.setdefault(key.strip(), []).extend(v.strip() for v in values.split(",") if v)
    return only


def plan(name: str, seeds: Iterable[int], variants: Sequence[str] | None, quick: bool,
         out: Path, only: Mapping[str, Sequence[str]] | None = None,
         ) -> list[tuple[str, int, dict[str, Any], Path]]:
    """Every (variant, seed, options, path) of the sweep, finished ones included; with `only`,
    just the runs whose option KEY is one of ``only[KEY]`` (compared as text)."""
    exp = get_experiment(name)
    chosen = list(variants or exp.variants)
    unknown = [v for v in chosen if v not in exp.variants]
    if unknown:
        raise ValueError(f"experiment {name!r} has no variant {', '.join(unknown)}; choose from "
                         f"{', '.join(exp.variants)}")
    runs = []
    for seed in seeds:
        for variant in _ordered(chosen):
            for options in exp.option_grid(variant):
                if only and any(str(options.get(k)) not in set(map(str, v))
                                for k, v in only.items()):
                    continue
                runs.append((variant, seed, options,
                             result_path(out, name, variant, seed, options, quick)))
    return runs


def run_sweep(name: str, seeds: Iterable[int], variants: Sequence[str] | None = None, *,
              quick: bool = False, out: str | Path = "runs", device: str = "cpu",
              stop_on_error: bool = False,
              only: Mapping[str, Sequence[str]] | None = None) -> dict[str, int]:
    """Run every missing (variant, seed, options) of `name`, each in its own process."""
    out = Path(out)
    counts = {"done": 0, "skipped": 0, "failed": 0}
    for variant, seed, options, path in plan(name, seeds, variants, quick, out, only):
        if path.exists():
            counts["skipped"] += 1
            continue
        cmd = [sys.executable, "-m", "perforate_experiments.worker", name, variant, str(seed),
               "--out", str(out), "--device", device]
        cmd += [f"--option={k}={v}" for k, v in options.items()]
        if quick:
            cmd.append("--quick")
        logger.info("running %s/%s seed %d %s", name, variant, seed, option_tag(options))
        start = time.perf_counter()
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0:
            counts["failed"] += 1
            logger.error("%s/%s seed %d failed (exit %d)", name, variant, seed, proc.returncode)
            if stop_on_error:
                raise RuntimeError(f"{name}/{variant} seed {seed} failed; see the log above")
            continue
        counts["done"] += 1
        logger.info("finished %s/%s seed %d in %.0f s", name, variant, seed,
                    time.perf_counter() - start)
    return counts
