"""The harness's subcommands of the ``perforate`` command: ``experiment`` and ``report``.

The library's CLI calls `add_commands` when this package is installed (``make`` installs it
from a clone; ``pip install -e ./experiments`` by hand).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from perforate.errors import CLIError


def cmd_experiment(args: argparse.Namespace) -> int:
    from .registry import get_experiment
    from .runner import parse_only, parse_seeds, run_sweep

    exp = get_experiment(args.name)
    seeds = parse_seeds(args.seeds) if args.seeds else list(exp.default_seeds)
    variants = [v for part in args.variant for v in part.split(",") if v] or None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    counts = run_sweep(exp.name, seeds, variants, quick=args.quick, out=args.out,
                       device=args.device, only=parse_only(args.only) or None)
    print(f"{exp.name}: {counts['done']} run(s) done, {counts['skipped']} already on disk, "
          f"{counts['failed']} failed; results in {args.out}")
    return 1 if counts["failed"] else 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    if not Path(args.results).is_dir():
        raise CLIError(f"results directory {args.results} does not exist")
    page = build_report(args.results, args.output, include_quick=args.include_quick)
    print(f"wrote {page}")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``experiment`` and ``report`` to the ``perforate`` command's subparsers `sub`."""
    run = sub.add_parser("experiment", help="run a paper experiment's sweep (resumable)",
                         description="Run every (variant, seed) of an experiment not yet on "
                         "disk, one process each: frontier, frontier-1d, fashion-mnist, ablation, "
                         "tox21, physionet, timing, lm.")
    run.add_argument("name", metavar="NAME")
    run.add_argument("--seeds", metavar="LIST", help="e.g. 0-9 or 0,2,5 (default: the "
                     "experiment's own)")
    run.add_argument("--variant", action="append", default=[], metavar="NAME[,NAME]",
                     help="run only these variants (default: all of the experiment's)")
    run.add_argument("--only", action="append", default=[], metavar="KEY=VALUE[,VALUE]",
                     help="run only the runs whose option KEY has one of these values (e.g. "
                     "--only net=tf16,lstm32 for lm)")
    run.add_argument("--quick", action="store_true", help="tiny protocol (smoke test)")
    run.add_argument("--out", default="runs/experiments", metavar="DIR")
    run.add_argument("--device", default="cpu")
    run.set_defaults(func=cmd_experiment)

    rep = sub.add_parser("report", help="aggregate experiment results into tables and PNGs",
                         description="Write the results page (Markdown + PNGs) from a "
                         "results directory written by `perforate experiment`.")
    rep.add_argument("results", metavar="DIR")
    rep.add_argument("--output", default="docs/results.md", metavar="FILE.md")
    rep.add_argument("--include-quick", action="store_true",
                     help="also aggregate --quick runs")
    rep.set_defaults(func=cmd_report)
