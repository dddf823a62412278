"""Save and load a perforated model as JSON + safetensors (no pickle).

The on-disk format and the writer live in `perforate.io.storage`; this module reads a saved
directory back through `perforate.io.rebuild.rebuild`, the one way to rebuild a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import LoadError
from .rebuild import rebuild
from .storage import (
    CONFIG_FILE,
    FORMAT_VERSION,
    NET_FILE,
    WEIGHTS_FILE,
    check_structure,
    deployable_state_dict,
    read_saved,
    save_pretrained,
)

__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "NET_FILE", "WEIGHTS_FILE", "check_structure",
           "deployable_state_dict", "load", "read_saved", "save_pretrained"]


def load(directory: str | Path, net: nn.Module, *, registry: Any = None,
         device: str | torch.device | None = None) -> Any:
    """Perforate a fresh `net` as saved in `directory` and load its weights exactly.

    Raises `LoadError` naming the directory and the first mismatching layer or key if `net`
    differs, or the file that is missing, corrupt (checksum) or does not belong with the
    others (`perforate.io.storage.read_saved`).
    """
    src = Path(directory)
    meta, tensors = read_saved(src)
    where = src / CONFIG_FILE
    try:
        for alias, name in meta.get("aliases", {}).items():
            tensors[alias] = tensors[name]
        structure = {n: int(v["num_dendrites"]) for n, v in meta["layers"].items()}
        config = meta["config"]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LoadError(f"{where}: malformed ({type(exc).__name__}: {exc})") from None
    try:
        return rebuild(net, config, structure=structure, weights=tensors,
                       registry=registry, device=device)
    except LoadError as exc:
        raise LoadError(f"{src}: {exc}") from exc
