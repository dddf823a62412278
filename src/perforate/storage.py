"""The on-disk form of a saved model: ``perforate_config.json`` (config, dendrite sets per
layer) and ``model.safetensors`` (the deployable weights, no pickle); the writer, and the
structure check that loading and checkpoints share. Nothing here needs the model class."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor, nn

from .errors import LoadError

CONFIG_FILE = "perforate_config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


def deployable_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The network's state without candidate pools (the deployable weights)."""
    return {k: v for k, v in model.net.state_dict().items() if ".candidates." not in k}


def _dedupe(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """safetensors refuses shared storage: keep one name per tensor, record the aliases."""
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
               tuple(t.stride()), t.dtype) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        tensors[name] = t.detach().contiguous().cpu()
    return tensors, aliases


def save_pretrained(model: Any, directory: str | Path) -> Path:
    """Write ``perforate_config.json`` and ``model.safetensors`` into `directory`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _dedupe(deployable_state_dict(model))
    layers = {n: {"type": type(m.base_layer).__name__, "num_dendrites": m.num_dendrites}
              for n, m in model.dendrite_layers().items()}
    meta = {"format": "perforate", "format_version": FORMAT_VERSION,
            "config": model.config.to_dict(), "layers": layers, "aliases": aliases}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS_FILE)
    tmp = out / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(out / CONFIG_FILE)
    return out


def check_structure(model: Any, structure: dict[str, int]) -> None:
    """Raise `LoadError` naming the first layer where `model` and `structure` disagree."""
    mine = list(model.dendrite_layers())
    for name in mine:
        if name not in structure:
            raise LoadError(f"layer {name!r} has dendrites in this network but not in the saved "
                            "model (different structure or targets)")
    for name in structure:
        if name not in mine:
            raise LoadError(f"saved layer {name!r} is not a dendrite layer of this network "
                            f"(this network's: {', '.join(mine) or 'none'})")
