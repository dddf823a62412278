"""The ``perforate`` command: ``demo``, ``inspect`` and ``export``; ``experiment`` and
``report`` when the research harness (``perforate_experiments``, in the repository's
``experiments/``) is installed.

Bad arguments, missing data sets and unreadable checkpoints end with one line
``perforate: error: ...`` on stderr and exit code 2; ``perforate --debug ...`` also prints the
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from .. import __version__
from ..demo import DATASETS, PRESETS, run_demo
from ..demo.data import DatasetMissing
from ..engine.allocator import keep_cpu_memory
from ..errors import CLIError, PerforateError
from .export import cmd_export, load_for_export
from .factories import import_factory
from .inspect import cmd_inspect, inspect_model

EXIT_ERROR = 2
#: The research harness's module that adds ``experiment`` and ``report`` (`add_commands`).
HARNESS_CLI = "perforate_experiments.cli"
HARNESS_MISSING = ("`perforate {command}` needs the research harness, which is not installed: "
                   "from a clone of the repository run `make venv` (or "
                   "`pip install -e ./experiments`)")

__all__ = ["CLIError", "build_parser", "import_factory", "inspect_model", "load_for_export",
           "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see `{self.prog} --help`)")

def cmd_demo(args: argparse.Namespace) -> int:
    if args.seed < 0:
        raise CLIError(f"--seed must be >= 0, got {args.seed}")
    if args.seeds < 1:
        raise CLIError(f"--seeds must be >= 1, got {args.seeds}")
    keep_cpu_memory()  # an application may: dendrite epochs on a CPU run ~1.4x faster
    run_demo(args.dataset, out=args.out, seed=args.seed, seeds=args.seeds, quick=args.quick,
             progress=not args.no_progress, data_dir=args.data_dir, preset=args.preset)
    return 0


# -------------------------------------------------------------------------------- inspect
def _harness_missing(args: argparse.Namespace) -> int:
    raise CLIError(HARNESS_MISSING.format(command=args.command))


def add_harness_commands(sub: Any) -> bool:
    """Let the research harness add ``experiment`` and ``report``; if it is not installed, add
    stand-ins that say how to install it. Returns whether the harness was found."""
    try:
        harness = importlib.import_module(HARNESS_CLI)
    except ModuleNotFoundError as exc:
        if exc.name not in ("perforate_experiments", HARNESS_CLI):
            raise
        for name in ("experiment", "report"):
            stand_in = sub.add_parser(name, help="(needs the research harness: `make venv`)",
                                      add_help=False)
            stand_in.set_defaults(func=_harness_missing)
        return False
    harness.add_commands(sub)
    return True


# ----------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="perforate", description="Perforated Backpropagation with "
                     "Cascade-Correlation dendrites for PyTorch models.")
    parser.add_argument("--version", action="version", version=f"perforate {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, also print the traceback")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    demo = sub.add_parser("demo", help="train PB and the restart control on a small data set",
                          description="Train a small network through at least two dendrite "
                          "cycles, and the same run without dendrites (restart control); "
                          "print the table per architecture and the error reduction.")
    demo.add_argument("--dataset", choices=DATASETS, default="digits")
    demo.add_argument("--out", default="runs/demo", metavar="DIR",
                      help="artifacts directory (DIR/pb, DIR/restart); default runs/demo")
    demo.add_argument("--seed", type=int, default=0, metavar="N")
    demo.add_argument("--seeds", type=int, default=1, metavar="K",
                      help="also run seeds N+1 .. N+K-1 and print the paired comparison")
    demo.add_argument("--quick", action="store_true", help="short schedule (CI smoke test)")
    demo.add_argument("--preset", choices=tuple(PRESETS), default="default",
                      help="PB's configuration: the library's defaults (the official package's "
                      "recipe) or the paper's algorithm (Cascade-Correlation, frozen dendrites)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.add_argument("--data-dir", default=None, metavar="DIR",
                      help="Fashion-MNIST directory (default $PERFORATE_DATA/fashion-mnist, else "
                      "/usr/share/datasets/fashion-mnist)")
    demo.set_defaults(func=cmd_demo)

    ins = sub.add_parser("inspect", help="dry run: which layers get dendrites, and the cost",
                         description="Which layers would get dendrites, neurons per layer, "
                         "parameters and multiply-adds added per dendrite set and per "
                         "candidate pool. Nothing is trained.")
    ins.add_argument("factory", metavar="MODULE:FACTORY",
                     help="a callable returning the nn.Module (called with no arguments)")
    ins.add_argument("--config", metavar="JSON",
                     help="PerforationConfig fields as a JSON object, or a JSON file")
    ins.add_argument("--preset", choices=tuple(PRESETS), default="default",
                     help="the configuration --config changes: the library's defaults (no "
                     "candidate pool; the official package's recipe) or the paper's algorithm "
                     "(K candidates per layer)")
    ins.add_argument("--input-shape", metavar="SHAPE",
                     help="one sample's shape without the batch axis (e.g. 1,28,28): count "
                     "multiply-adds per sample")
    ins.set_defaults(func=cmd_inspect)

    exp = sub.add_parser("export", help="write the TorchScript model of a checkpoint",
                         description="Write the exported TorchScript model of a tracker "
                         "checkpoint (DIR/checkpoint or a run's out_dir) or of a "
                         "save_pretrained directory.")
    exp.add_argument("checkpoint", metavar="CHECKPOINT_DIR")
    exp.add_argument("out", metavar="OUT.pt")
    exp.add_argument("--net", metavar="MODULE:FACTORY",
                     help="how to build the network (a callable returning the nn.Module)")
    exp.add_argument("--trust-factory", action="store_true",
                     help="build the network with the MODULE:FACTORY the checkpoint records; "
                     "this imports and runs that module's code, so only for a checkpoint from "
                     "a source you trust (without it, or --net, export refuses)")
    exp.set_defaults(func=cmd_export)

    add_harness_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``perforate`` console script; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list  # known before parsing, so parse errors show it too
    try:
        parser = build_parser()
        args, unknown = parser.parse_known_args(args_list)
        if unknown and args.func is not _harness_missing:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        return int(args.func(args))
    except (CLIError, PerforateError, DatasetMissing) as exc:
        error, message = exc, str(exc)
    except (OSError, ValueError, TypeError, ImportError, RuntimeError) as exc:
        error, message = exc, f"{type(exc).__name__}: {exc}"
    except KeyboardInterrupt:
        print("perforate: interrupted", file=sys.stderr)
        return 130
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"perforate: error: {first}", file=sys.stderr)
    return EXIT_ERROR
