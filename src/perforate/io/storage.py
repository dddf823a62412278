"""The on-disk form of a saved model: ``perforate_config.json`` (config, dendrite sets per
layer, checksums of the other files) and ``model.safetensors`` (the deployable weights, no
pickle; its metadata holds a fingerprint of the config); the writer, the checked reader, and
the structure check that loading and checkpoints share. Nothing here needs the model class."""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file
from torch import Tensor, nn

from ..errors import LoadError
from .atomic import publish_dir, write_file
from .integrity import FILES_KEY, check, fingerprint, load_json, read_files

logger = logging.getLogger(__name__)

CONFIG_FILE = "perforate_config.json"
WEIGHTS_FILE = "model.safetensors"
NET_FILE = "perforate_net.json"
"""Written beside a tracker's saved model: how to rebuild the network (``net_factory``)."""
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, NET_FILE)
FORMAT_VERSION = 1
FINGERPRINT_KEY = "perforate_config_sha256"
"""Key, in ``model.safetensors``' metadata, of the fingerprint of the config it belongs with."""


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


def _swappable(out: Path) -> bool:
    """`out` may be replaced whole: absent, or a directory of nothing but a saved model's
    files (not a symlink, not the working directory). A directory that another writer moves
    aside while this looks at it counts as absent: it is being replaced whole."""
    try:
        st = os.lstat(out)
        if not stat.S_ISDIR(st.st_mode):  # lstat: a symlink is not a directory
            return False
        if out.resolve() == Path.cwd().resolve():
            return False
        with os.scandir(out) as entries:  # a killed writer's temp files go with the old one
            return all(e.is_file() and (e.name in MODEL_FILES or (e.name.startswith(".") and
                                                                  e.name.endswith(".tmp")))
                       for e in entries)
    except FileNotFoundError:
        return True


def save_pretrained(model: Any, directory: str | Path, *,
                    extra_files: Mapping[str, bytes] | None = None) -> Path:
    """Write ``model.safetensors``, `extra_files` ({name: content}) and, last,
    ``perforate_config.json`` (which records every other file's SHA-256) into `directory`.

    A directory that holds nothing else (or does not exist yet) is replaced whole: readers
    see the old model or the new one, never a mix; two writers never collide. A directory
    that holds other files too is updated file by file (each atomically): a reader between
    two files gets a `LoadError`, never a mixed model. A full disk leaves the previous
    model as it was (an `OSError` saying so).
    """
    out = Path(directory)
    tensors, aliases = _dedupe(deployable_state_dict(model))
    layers = {n: {"type": type(m.base_layer).__name__, "num_dendrites": m.num_dendrites}
              for n, m in model.dendrite_layers().items()}
    meta: dict[str, Any] = {"format": "perforate", "format_version": FORMAT_VERSION,
                            "config": model.config.to_dict(), "layers": layers,
                            "aliases": aliases}
    extra = dict(extra_files or {})
    if set(extra) & {CONFIG_FILE, WEIGHTS_FILE}:
        raise ValueError(f"extra_files may not replace {CONFIG_FILE} or {WEIGHTS_FILE}")
    stamp = {"format": "pt", FINGERPRINT_KEY: fingerprint(meta)}

    def fill(d: Path) -> None:
        files = {WEIGHTS_FILE: write_file(
            d / WEIGHTS_FILE, write_path=lambda p: save_file(tensors, p, metadata=stamp),
            fsync=True, what="model")}
        for name, data in extra.items():
            files[name] = write_file(d / name, lambda f, data=data: f.write(data), fsync=True,
                                     what="model")
        text = json.dumps({**meta, FILES_KEY: files}, indent=2, sort_keys=True)
        write_file(d / CONFIG_FILE, lambda f: f.write(text.encode("utf-8")), fsync=True,
                   what="model")

    if _swappable(out):
        return publish_dir(out, fill, what="model")
    logger.debug("%s holds other files: the model is updated in it file by file", out)
    fill(out)
    return out


def _safetensors_metadata(data: bytes, path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header."""
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size].decode("utf-8"))
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError("__metadata__ is not an object")
    except (struct.error, ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise LoadError(f"{path} is not a valid safetensors file: {exc}") from None
    return meta


def read_saved(directory: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(meta, tensors)`` of a ``save_pretrained`` directory, checked: every file against
    the checksum ``perforate_config.json`` records for it, and ``perforate_config.json``
    against the fingerprint of it that ``model.safetensors`` holds (a config from another
    save, or an edited one, does not load). Directories saved before checksums were recorded
    load unchecked. Raises `LoadError` naming the file."""
    src = Path(directory)
    config_path, weights_path = src / CONFIG_FILE, src / WEIGHTS_FILE
    try:
        files = read_files(src, [CONFIG_FILE, WEIGHTS_FILE])
    except (FileNotFoundError, NotADirectoryError):
        raise LoadError(f"{src} holds no {CONFIG_FILE}: not a save_pretrained "
                        "directory") from None
    except OSError as exc:
        raise LoadError(f"cannot read {src}: {exc}") from exc
    if files[CONFIG_FILE] is None:
        raise LoadError(f"{src} holds no {CONFIG_FILE}: not a save_pretrained directory")
    meta = load_json(files[CONFIG_FILE], config_path)  # type: ignore[arg-type]
    if meta.get("format") != "perforate" or meta.get("format_version") != FORMAT_VERSION:
        raise LoadError(f"{config_path}: unsupported format "
                        f"{meta.get('format')!r} v{meta.get('format_version')!r}")
    data = files[WEIGHTS_FILE]
    if data is None:
        raise LoadError(f"{src} holds no {WEIGHTS_FILE}")
    records = meta.get(FILES_KEY)
    if records is not None:
        if not isinstance(records, dict):
            raise LoadError(f"{config_path}: {FILES_KEY!r} is not an object")
        check(weights_path, data, [records.get(WEIGHTS_FILE)], config_path)
    else:
        logger.debug("%s records no checksums (saved by an older version): not checked", src)
    stamp = _safetensors_metadata(data, weights_path).get(FINGERPRINT_KEY)
    core = {k: v for k, v in meta.items() if k != FILES_KEY}
    if stamp is not None and stamp != fingerprint(core):
        raise LoadError(f"{config_path} does not belong to {weights_path}: it was edited or "
                        "comes from another save")
    try:
        tensors = safetensors_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise LoadError(f"{weights_path} is not a valid safetensors file: "
                        f"{type(exc).__name__}: {exc}") from exc
    return meta, tensors


def read_net_factory(directory: str | Path) -> str | None:
    """The ``net_factory`` that ``perforate_net.json`` of a saved model records (None if there
    is none), checked against the checksum ``perforate_config.json`` records for it."""
    src = Path(directory)
    try:
        files = read_files(src, [CONFIG_FILE, NET_FILE])
    except OSError as exc:
        raise LoadError(f"cannot read {src}: {exc}") from exc
    data = files[NET_FILE]
    if data is None:
        return None
    if files[CONFIG_FILE] is not None:
        records = load_json(files[CONFIG_FILE], src / CONFIG_FILE).get(FILES_KEY)
        if isinstance(records, dict) and NET_FILE in records:
            check(src / NET_FILE, data, [records[NET_FILE]], src / CONFIG_FILE)
    factory = load_json(data, src / NET_FILE).get("net_factory")
    if factory is not None and not isinstance(factory, str):
        raise LoadError(f"{src / NET_FILE}: net_factory is not a string")
    return factory


def model_is_whole(directory: str | Path) -> bool:
    """True if `directory` holds a saved model that reads back whole (every recorded file
    present and matching its checksum)."""
    try:
        meta, _ = read_saved(directory)
        others = [n for n in meta.get(FILES_KEY) or {} if n not in (CONFIG_FILE, WEIGHTS_FILE)]
        if others:
            got = read_files(directory, others)
            for name in others:
                data = got[name]
                if data is None:
                    return False
                check(Path(directory) / name, data, [meta[FILES_KEY][name]],
                      Path(directory) / CONFIG_FILE)
    except LoadError as exc:
        logger.debug("%s is not a whole saved model: %s", directory, exc)
        return False
    return True


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
