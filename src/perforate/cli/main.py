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
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from .. import __version__
from ..config import PerforationConfig
from ..demo import DATASETS, PRESETS, run_demo
from ..demo.data import DatasetMissing
from ..engine.allocator import keep_cpu_memory
from ..engine.layers import DendriteLayer
from ..engine.layers.composite import top_wrappers
from ..engine.model import perforate
from ..errors import CLIError, PerforateError
from ..io.atomic import atomic_write
from ..io.export import export
from ..io.rebuild import rebuild
from ..io.serialization import CONFIG_FILE
from ..io.serialization import load as load_pretrained
from ..io.storage import read_net_factory
from ..training.checkpoint import deployable_weights, read_checkpoint, saved_config

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


def import_factory(spec: str) -> Callable[..., Any]:
    """Resolve ``"module:attr"`` (attr may be dotted) to a callable; the current directory is
    importable. Raises `CLIError` with the reason."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"expected MODULE:FACTORY (e.g. mypkg.models:make_net), got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code
        raise CLIError(f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}") \
            from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CLIError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CLIError(f"{spec} is not callable")
    return obj


def _build_net(spec: str) -> nn.Module:
    factory = import_factory(spec)
    try:
        net = factory()
    except Exception as exc:  # user code
        raise CLIError(f"{spec}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise CLIError(f"{spec}() returned {type(net).__name__}, not an nn.Module")
    return net


def _parse_config(text: str | None, preset: str = "default") -> Any:
    """The `preset`'s config (`demo.PRESETS`), with the fields of the JSON `text` changed (those
    of ``"cascade"`` one by one)."""
    if text is None:
        return PRESETS[preset]()
    source = text
    if not text.lstrip().startswith("{"):
        try:
            source = Path(text).read_text()
        except OSError as exc:
            raise CLIError(f"--config: not a JSON object and not a readable file: {text!r}") \
                from exc
    try:
        data = json.loads(source)
    except json.JSONDecodeError as exc:
        raise CLIError(f"--config: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CLIError("--config must be a JSON object of PerforationConfig fields")
    base = PRESETS[preset]().to_dict()
    if isinstance(data.get("cascade"), dict):  # change only the knobs it names
        data = {**data, "cascade": {**base["cascade"], **data["cascade"]}}
    return PerforationConfig.from_dict({**base, **data})


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise CLIError(f"--input-shape must be comma-separated ints (e.g. 1,28,28), got "
                       f"{text!r}") from None
    if not shape or any(v < 1 for v in shape):
        raise CLIError(f"--input-shape must be positive ints, got {text!r}")
    return shape


# ----------------------------------------------------------------------------------- demo
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
def _positions_per_sample(model: Any, input_shape: tuple[int, ...]) -> dict[str, int]:
    """{dendrite layer: output positions} of one forward of a zero sample: each wrapper counts
    its own (`DendriteLayer.output_positions`, `CompositeLayer.projection_positions`); a layer
    used at several places sums them, one the forward never reaches has 0."""
    positions = dict.fromkeys(model.dendrite_layers(), 0)
    hooks = []
    for name, wrapper in top_wrappers(model.net).items():
        def hook(mod: nn.Module, args: Any, kwargs: Any, out: Any, name: str = name) -> None:
            counts = {"": mod.output_positions(out)} if isinstance(mod, DendriteLayer) \
                else mod.projection_positions(*args, **kwargs)
            for proj, count in counts.items():
                key = f"{name}.{proj}" if proj else name
                positions[key] = positions.get(key, 0) + count
        hooks.append(wrapper.register_forward_hook(hook, with_kwargs=True))
    mha = getattr(torch.backends, "mha", None)  # its fast path skips the attention's forward
    fastpath = mha.get_fastpath_enabled() if hasattr(mha, "set_fastpath_enabled") else None
    try:
        if fastpath is not None:
            mha.set_fastpath_enabled(False)  # type: ignore[union-attr]
        with torch.no_grad():
            model.net.eval()(torch.zeros(1, *input_shape))
    except Exception as exc:  # user network
        raise CLIError(f"forward pass with --input-shape {input_shape} failed: "
                       f"{type(exc).__name__}: {exc}") from exc
    finally:
        if fastpath is not None:
            mha.set_fastpath_enabled(fastpath)  # type: ignore[union-attr]
        for h in hooks:
            h.remove()
    return positions


def inspect_model(net: nn.Module, config: Any, input_shape: tuple[int, ...] | None = None
                  ) -> dict[str, Any]:
    """Dry run: per targeted layer, the costs it answers (`DendriteLayer.costs`): neurons,
    fan-in, parameters and multiply-adds of the layer, of one dendrite set (the first: set j
    adds ``(j - 1) * neurons`` cascade weights and as many multiply-adds per position) and of
    a dendrite phase's candidate pool (none with ``dendrite_phase="none"``). With
    `input_shape`, multiply-adds are per sample, else per output position."""
    model = perforate(net, config)
    positions = None if input_shape is None else _positions_per_sample(model, input_shape)
    rows = []
    for name, layer in model.dendrite_layers().items():
        c = layer.costs(None if positions is None else positions[name])
        rows.append({
            "layer": name, "type": type(layer.base_layer).__name__, "neurons": c.neurons,
            "fan_in": c.fan_in, "positions": c.positions, "params": c.base_params,
            "set_params": c.set_params, "projection_params": c.projection_params,
            "set_macs": c.per_sample(c.set_macs), "pool_params": c.pool_params,
            "pool_macs": c.per_sample(c.pool_macs), "base_macs": c.per_sample(c.base_macs),
            "projection_macs": c.per_sample(c.projection_macs), "costs": c})
    trains = config.dendrite_phase != "none"
    return {"layers": rows, "model_params": model.count_parameters(),
            "candidates": config.cascade.candidates if trains else 0, "trains_candidates": trains,
            "dendrite_phase": config.dendrite_phase, "per_sample": input_shape is not None}


def cmd_inspect(args: argparse.Namespace) -> int:
    net = _build_net(args.factory)
    config = _parse_config(args.config, args.preset)
    info = inspect_model(net, config, _parse_shape(args.input_shape))
    rows, pool = info["layers"], info["trains_candidates"]
    unit = "per sample" if info["per_sample"] else "per output position"
    growth = (f"K = {info['candidates']} candidate sets per layer" if pool else
              "no candidate pool: each growth adds one untrained set "
              f"(dendrite_phase={info['dendrite_phase']!r})")
    print(f"{args.factory}: {len(rows)} layer(s) would get dendrites; {growth}; "
          f"multiply-adds {unit}")
    head = (f"{'layer':<24} {'type':<8} {'neurons':>7} {'fan_in':>6} {'params':>10} "
            f"{'+params/set':>11} {'+MACs/set':>11}"
            + (f" {'pool params':>11} {'pool MACs':>11}" if pool else ""))
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['layer']:<24} {r['type']:<8} {r['neurons']:>7,} {r['fan_in']:>6,} "
              f"{r['params']:>10,} {r['set_params']:>11,} {r['set_macs']:>11,}"
              + (f" {r['pool_params']:>11,} {r['pool_macs']:>11,}" if pool else ""))
    total = {k: sum(r[k] for r in rows) for k in ("params", "set_params", "set_macs",
                                                   "pool_params", "pool_macs", "base_macs")}
    print("-" * len(head))
    print(f"{'total':<24} {'':<8} {'':>7} {'':>6} {total['params']:>10,} "
          f"{total['set_params']:>11,} {total['set_macs']:>11,}"
          + (f" {total['pool_params']:>11,} {total['pool_macs']:>11,}" if pool else ""))
    params = info["model_params"]
    once = sum(r["projection_params"] for r in rows)
    first = total["set_params"] + once
    print(f"model: {params:,} parameters; each dendrite set adds {total['set_params']:,} "
          f"(x{(params + first) / params:.2f} after one set) plus cascade weights "
          f"(set j: (j - 1) x neurons per layer); wrapped layers' own multiply-adds "
          f"{total['base_macs']:,} {unit}")
    if once:
        print(f"dendrite_rank: the first set also adds the layers' shared input projections, "
              f"{once:,} parameters and {sum(r['projection_macs'] for r in rows):,} "
              f"multiply-adds {unit}")
    return 0


# --------------------------------------------------------------------------------- export
def _net_factory_of(directory: Path, recorded: Any, override: str | None,
                    trust_factory: bool) -> str:
    """The factory to build the network with: the user's `override`, else the one the
    directory records, but only with `trust_factory` (importing it runs the module's code)."""
    if override:
        return override
    if not recorded:
        raise CLIError(f"{directory} does not record how to build the network: pass "
                       "--net MODULE:FACTORY")
    if not isinstance(recorded, str):
        raise CLIError(f"{directory} records a net factory that is not a MODULE:FACTORY "
                       f"string: {recorded!r}; pass --net MODULE:FACTORY")
    if not trust_factory:
        raise CLIError(f"{directory} records the net factory {recorded!r}; importing it runs "
                       f"that module's code, so perforate does not do it unasked: pass "
                       f"--net {recorded} (or your own MODULE:FACTORY), or --trust-factory if "
                       "you trust where this directory came from")
    return recorded


def load_for_export(directory: str | Path, net_spec: str | None = None, *,
                    trust_factory: bool = False) -> Any:
    """A neuron-phase `PerforatedModel` from a ``save_pretrained`` directory or a tracker
    checkpoint (the final model if the run is done, else the best weights so far).

    The network is built by `net_spec` (``"module:function"``); the factory the directory
    records is imported and called only with `trust_factory`, since that runs its code."""
    src = Path(directory)
    if not src.exists():
        raise CLIError(f"{src} does not exist")
    if (src / CONFIG_FILE).is_file():
        recorded = read_net_factory(src)  # checked against its recorded checksum
        net = _build_net(_net_factory_of(src, recorded, net_spec, trust_factory))
        return load_pretrained(src, net)
    state = read_checkpoint(src)
    net = _build_net(_net_factory_of(src, state["settings"].get("net_factory"), net_spec,
                                     trust_factory))
    structure, weights = deployable_weights(state)
    return rebuild(net, saved_config(state), structure=structure, weights=weights)


def cmd_export(args: argparse.Namespace) -> int:
    model = load_for_export(args.checkpoint, args.net, trust_factory=args.trust_factory)
    try:
        scripted = torch.jit.script(export(model).eval())
    except Exception as exc:  # TorchScript cannot compile the user's network
        raise CLIError(f"TorchScript cannot compile the exported network: "
                       f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    out = Path(args.out)
    atomic_write(out, lambda f: torch.jit.save(scripted, f))
    print(f"wrote {out}: TorchScript, {model.num_dendrites} dendrite set(s), "
          f"{model.count_parameters():,} parameters")
    return 0


# ------------------------------------------------------------------- experiment, report
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
                      help="PB's configuration: the library's defaults, the paper's algorithm "
                      "(Cascade-Correlation, frozen dendrites) or the official package's recipe")
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
                     "candidate pool), the paper's algorithm (K candidates per layer) or the "
                     "official package's recipe")
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
