"""Load a model saved by ``save_pretrained`` (JSON + safetensors, no pickle) into a fresh
network. The format and the writer are in `perforate.storage`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .config import PerforationConfig
from .errors import LoadError, TargetError
from .model import perforate
from .storage import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    check_structure,
    save_pretrained,
)

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "check_structure", "load", "save_pretrained"]


def load(directory: str | Path, net: nn.Module, *, registry: Any = None,
         device: str | torch.device | None = None) -> Any:
    """Perforate a fresh `net` as saved in `directory` and load its weights exactly.

    Raises `LoadError` naming the first mismatching layer or key if `net` differs.
    """
    src = Path(directory)
    try:
        meta = json.loads((src / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise LoadError(f"{src} holds no {CONFIG_FILE}: not a save_pretrained directory") from None
    except json.JSONDecodeError as exc:
        raise LoadError(f"{src / CONFIG_FILE} is not valid JSON: {exc}") from None
    if meta.get("format") != "perforate" or meta.get("format_version") != FORMAT_VERSION:
        raise LoadError(f"{src / CONFIG_FILE}: unsupported format "
                        f"{meta.get('format')!r} v{meta.get('format_version')!r}")
    config = PerforationConfig.from_dict(meta["config"])
    try:
        model = perforate(net, config, registry=registry)
    except TargetError as exc:
        raise LoadError(f"the network does not fit the saved model: {exc}") from exc
    structure = {n: int(v["num_dendrites"]) for n, v in meta["layers"].items()}
    check_structure(model, structure)
    model.resize_dendrites(structure)
    target = str(device) if device is not None else "cpu"
    try:
        tensors = load_file(str(src / WEIGHTS_FILE), device=target)
    except FileNotFoundError:
        raise LoadError(f"{src} holds no {WEIGHTS_FILE}") from None
    for alias, name in meta.get("aliases", {}).items():
        tensors[alias] = tensors[name]
    expected = model.net.state_dict()
    # Report the network's own weights before the dendrites' (they explain a mismatch better).
    dendrite_keys = ("output_weight", "dendrite_weight", "dendrite_bias", "cascade_weight")
    for key, value in sorted(expected.items(), key=lambda kv: kv[0].endswith(dendrite_keys)):
        if key not in tensors:
            raise LoadError(f"saved weights lack {key!r}: the network differs from the saved one")
        if tuple(tensors[key].shape) != tuple(value.shape):
            raise LoadError(f"{key!r}: saved shape {tuple(tensors[key].shape)}, this network has "
                            f"{tuple(value.shape)}")
    for key in tensors:
        if key not in expected:
            raise LoadError(f"saved weights hold {key!r}, which this network does not have")
    model.net.load_state_dict(tensors, strict=True)
    if device is not None:
        model.to(device)
    return model
