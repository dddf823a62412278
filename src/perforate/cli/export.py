"""``perforate export``: a run's or a model directory's model as a plain, TorchScript-able
copy (or ONNX); a recorded factory runs only when trusted."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..errors import CLIError
from ..io.atomic import atomic_write
from ..io.export import export
from ..io.rebuild import rebuild
from ..io.serialization import CONFIG_FILE
from ..io.serialization import load as load_pretrained
from ..io.storage import read_net_factory
from ..training.checkpoint import deployable_weights, read_checkpoint, saved_config
from .factories import build_net


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
        net = build_net(_net_factory_of(src, recorded, net_spec, trust_factory))
        return load_pretrained(src, net)
    state = read_checkpoint(src)
    net = build_net(_net_factory_of(src, state["settings"].get("net_factory"), net_spec,
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
