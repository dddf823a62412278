"""Checkpoint files: ``checkpoint.pt`` (the tracker's state, ``torch.load(weights_only=True)``
-safe) written atomically, and ``checkpoint.json`` (a summary readable without torch)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import artifacts
from ..atomic import atomic_write
from ..config import PerforationConfig
from ..errors import LoadError

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_META = "checkpoint.json"
FORMAT = "perforate-tracker"
FORMAT_VERSION = 1


def check_format(state: Mapping[str, Any], where: str) -> None:
    """Raise `LoadError` unless `state` is a tracker state of a version this code reads."""
    if state.get("format") != FORMAT:
        raise LoadError(f"{where} is not a perforate tracker checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise LoadError(f"{where}: unsupported checkpoint version "
                        f"{state.get('format_version')!r}")


def write_checkpoint(directory: str | Path, state: Mapping[str, Any],
                     meta: Mapping[str, Any]) -> Path:
    """Write `state` to ``checkpoint.pt`` (temp file, fsync, rename) and `meta` (plus the
    format) to ``checkpoint.json`` in `directory`; return the ``.pt`` path."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    path = atomic_write(out / CHECKPOINT_FILE, lambda f: torch.save(state, f),
                                  fsync=True)
    artifacts.write_json(out / CHECKPOINT_META,
                         {"format": FORMAT, "format_version": FORMAT_VERSION, **meta})
    return path


def checkpoint_file(directory: str | Path) -> Path:
    """The ``checkpoint.pt`` of a checkpoint directory or of a run's ``out_dir``."""
    d = Path(directory)
    for candidate in (d / CHECKPOINT_FILE, d / artifacts.CHECKPOINT_DIR / CHECKPOINT_FILE):
        if candidate.is_file():
            return candidate
    if d.is_file():
        return d
    raise LoadError(f"{d} holds no {CHECKPOINT_FILE} (nor {artifacts.CHECKPOINT_DIR}/"
                    f"{CHECKPOINT_FILE})")


def read_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Load a checkpoint's state (``weights_only=True``); raises `LoadError` if unreadable."""
    path = checkpoint_file(directory)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise LoadError(f"cannot read checkpoint {path}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(state, dict):
        raise LoadError(f"{path} is not a perforate tracker checkpoint")
    check_format(state, str(path))
    return state


def saved_config(state: Mapping[str, Any]) -> PerforationConfig:
    """The `PerforationConfig` a checkpoint's model was perforated with."""
    try:
        return PerforationConfig.from_dict(json.loads(state["config"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise LoadError(f"checkpoint: bad config: {exc}") from exc


def deployable_weights(state: Mapping[str, Any]) -> tuple[dict[str, int], dict[str, Tensor]]:
    """``(structure, weights)`` of the model to deploy from a checkpoint: the final model if
    the run is done, else the best weights so far (best cycle, else the current cycle's best,
    else the current weights), keyed as ``model.net.state_dict()``, candidate pools left out."""
    saved = state["model"]
    structure, weights = dict(saved["structure"]), saved["state_dict"]
    schedule = state["schedule"]
    if not schedule["done"]:
        if state["best_snapshot"] is not None:
            d = state["architectures"][schedule["best_cycle"]]["dendrites"]
            structure, weights = {n: d for n in structure}, state["best_snapshot"]
        elif state["cycle_snapshot"] is not None:
            weights = state["cycle_snapshot"]
    return structure, {k.removeprefix("net."): v for k, v in weights.items()
                       if ".candidates." not in k}
