"""Save and load a perforated model as JSON + safetensors (no pickle).

The on-disk format and the writer live in `perforate.storage`; this module reads a saved
directory back through `perforate.rebuild.rebuild`, the one way to rebuild a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .errors import LoadError
from .rebuild import rebuild
from .storage import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    check_structure,
    deployable_state_dict,
    save_pretrained,
)

__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "WEIGHTS_FILE", "check_structure",
           "deployable_state_dict", "load", "save_pretrained"]


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
    try:
        tensors = load_file(str(src / WEIGHTS_FILE), device="cpu")
    except FileNotFoundError:
        raise LoadError(f"{src} holds no {WEIGHTS_FILE}") from None
    for alias, name in meta.get("aliases", {}).items():
        tensors[alias] = tensors[name]
    structure = {n: int(v["num_dendrites"]) for n, v in meta["layers"].items()}
    return rebuild(net, meta["config"], structure=structure, weights=tensors,
                   registry=registry, device=device)
