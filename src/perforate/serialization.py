"""Save and load a perforated model as JSON + safetensors (no pickle)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import LoadError

CONFIG_FILE = "perforate_config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


def _safetensors() -> Any:
    try:
        import safetensors.torch as st
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("saving and loading need safetensors: pip install 'perforate[io]'") \
            from exc
    return st


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
    st = _safetensors()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _dedupe(deployable_state_dict(model))
    layers = {n: {"type": type(m.base_layer).__name__, "num_dendrites": m.num_dendrites}
              for n, m in model.dendrite_layers().items()}
    meta = {"format": "perforate", "format_version": FORMAT_VERSION,
            "config": model.config.to_dict(), "layers": layers, "aliases": aliases}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    st.save_file(tensors, str(tmp), metadata={"format": "pt"})
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


def load(directory: str | Path, net: nn.Module, *, registry: Any = None,
         device: str | torch.device | None = None) -> Any:
    """Perforate a fresh `net` as saved in `directory` and load its weights exactly.

    Raises `LoadError` naming the first mismatching layer or key if `net` differs.
    """
    from .rebuild import rebuild

    st = _safetensors()
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
        tensors = st.load_file(str(src / WEIGHTS_FILE), device="cpu")
    except FileNotFoundError:
        raise LoadError(f"{src} holds no {WEIGHTS_FILE}") from None
    for alias, name in meta.get("aliases", {}).items():
        tensors[alias] = tensors[name]
    structure = {n: int(v["num_dendrites"]) for n, v in meta["layers"].items()}
    return rebuild(net, meta["config"], structure=structure, weights=tensors,
                   registry=registry, device=device)
