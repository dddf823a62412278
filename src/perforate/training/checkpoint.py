"""Checkpoint files: ``checkpoint.pt`` (the tracker's state, ``torch.load(weights_only=True)``
-safe) written atomically, and ``checkpoint.json`` (a summary readable without torch, and the
SHA-256 of ``checkpoint.pt``, checked when it is read)."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import PerforationConfig
from ..errors import LoadError
from ..io.atomic import write_file
from ..io.integrity import FILES_KEY, check, load_json, read_files
from . import artifacts

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_META = "checkpoint.json"
FORMAT = "perforate-tracker"
FORMAT_VERSION = 1
PENDING_KEY = "pending"
"""``checkpoint.json``: the checksum of a ``checkpoint.pt`` about to replace the recorded one."""


def check_format(state: Mapping[str, Any], where: str) -> None:
    """Raise `LoadError` unless `state` is a tracker state of a version this code reads."""
    if state.get("format") != FORMAT:
        raise LoadError(f"{where} is not a perforate tracker checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise LoadError(f"{where}: unsupported checkpoint version "
                        f"{state.get('format_version')!r}")


def _portable(state: Mapping[str, Any], directory: Path) -> dict[str, Any]:
    """`state` with its ``out_dir`` setting relative to `directory` (nothing absolute is
    stored: a run copied or moved elsewhere resumes where it is)."""
    settings = dict(state.get("settings") or {})
    if settings.get("out_dir") is not None:
        try:
            settings["out_dir"] = os.path.relpath(os.path.abspath(settings["out_dir"]),
                                                  os.path.abspath(directory))
        except ValueError:  # another drive (Windows): none
            settings["out_dir"] = None
    return {**state, "settings": settings}


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def write_checkpoint(directory: str | Path, state: Mapping[str, Any],
                     meta: Mapping[str, Any]) -> Path:
    """Write `state` to ``checkpoint.pt`` (unique temp file, fsync, rename) and `meta` (plus
    the format and ``checkpoint.pt``'s checksum) to ``checkpoint.json`` in `directory`;
    return the ``.pt`` path.

    Order, so that a kill at any point leaves a checkpoint that loads and is checked: the new
    ``.pt`` is written under a temp name; ``checkpoint.json`` gets the new summary and accepts
    the old ``.pt``'s checksum and the new one's (``"pending"``); the new ``.pt`` is renamed
    in; then ``checkpoint.json`` records its checksum alone. (Killed before the rename, the
    summary is one save ahead of the ``.pt``, which a resumed run writes again.) A full disk
    raises an `OSError` saying the previous checkpoint is intact."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    pt, js = out / CHECKPOINT_FILE, out / CHECKPOINT_META
    portable = _portable(state, out)
    new: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    pending: list[dict[str, Any]] = []

    def write_pt(f: Any) -> None:
        torch.save(portable, f)
        pending.append(f.record())
        old = _read_meta(js) or {}
        doc = dict(new)
        if old.get("format") != FORMAT or FILES_KEY in old:  # else: an older version's
            doc[FILES_KEY] = old.get(FILES_KEY) if old.get("format") == FORMAT else {}
        artifacts.write_json(js, {**doc, PENDING_KEY: {CHECKPOINT_FILE: pending[0]}})

    write_file(pt, write_pt, fsync=True, what="checkpoint")
    artifacts.write_json(js, {**new, FILES_KEY: {CHECKPOINT_FILE: pending[0]}})
    return pt


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


def _read_checked(path: Path) -> bytes:
    """The bytes of checkpoint `path`, checked against the checksums ``checkpoint.json``
    beside it records (unchecked if it records none: saved by an older version)."""
    js = path.with_name(CHECKPOINT_META)

    def records(meta: dict[str, Any]) -> list[Any]:
        return [(meta.get(FILES_KEY) or {}).get(path.name),
                (meta.get(PENDING_KEY) or {}).get(path.name)]

    def consistent(files: dict[str, bytes | None]) -> bool:
        data, doc = files[path.name], files[js.name]
        if data is None or doc is None:
            return True
        try:
            meta = load_json(doc, js)
            if FILES_KEY in meta:
                check(path, data, records(meta), js)
        except LoadError:
            return False
        return True

    try:
        files = read_files(path.parent, [path.name, js.name], consistent)
    except OSError as exc:
        raise LoadError(f"cannot read checkpoint {path}: {exc}") from exc
    data = files[path.name]
    if data is None:
        raise LoadError(f"{path.parent} holds no {path.name}")
    if files[js.name] is None or path.name != CHECKPOINT_FILE:
        logger.debug("%s has no checksum record (%s missing): not checked", path, js.name)
        return data
    meta = load_json(files[js.name], js)  # type: ignore[arg-type]
    if FILES_KEY not in meta:
        logger.debug("%s records no checksums (an older version's): not checked", js)
        return data
    check(path, data, records(meta), js)
    return data


def read_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Load a checkpoint's state (``weights_only=True``), checked against the checksum its
    ``checkpoint.json`` records; raises `LoadError` naming the file if it cannot."""
    path = checkpoint_file(directory)
    data = _read_checked(path)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise LoadError(f"cannot read checkpoint {path}: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(state, dict):
        raise LoadError(f"{path} is not a perforate tracker checkpoint")
    check_format(state, str(path))
    return state


def run_settings(state: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """The tracker settings of checkpoint `path` (a ``checkpoint.pt``), its ``out_dir``
    where the checkpoint is now: stored relative to it; an absolute one (an older
    version's) is replaced by the run directory the checkpoint sits in
    (``<out_dir>/checkpoint``)."""
    try:
        settings = dict(state["settings"])
    except (KeyError, TypeError, ValueError) as exc:
        raise LoadError(f"{path}: no tracker settings ({exc})") from None
    stored, here = settings.get("out_dir"), Path(path).parent
    if stored is None:
        return settings
    if not os.path.isabs(stored):
        settings["out_dir"] = os.path.normpath(here / stored)
    elif here.name == artifacts.CHECKPOINT_DIR:
        settings["out_dir"] = str(here.parent)
        if os.path.abspath(stored) != os.path.abspath(here.parent):
            logger.info("the checkpoint was written for %s; the run continues in %s, where "
                        "it was resumed from", stored, here.parent)
    return settings


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
