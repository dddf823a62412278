"""What the commands read from their arguments: a network factory named ``module:function``,
a configuration (a preset changed by JSON), an input shape."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..config import PerforationConfig
from ..demo import PRESETS
from ..errors import CLIError


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


def build_net(spec: str) -> nn.Module:
    factory = import_factory(spec)
    try:
        net = factory()
    except Exception as exc:  # user code
        raise CLIError(f"{spec}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(net, nn.Module):
        raise CLIError(f"{spec}() returned {type(net).__name__}, not an nn.Module")
    return net


def parse_config(text: str | None, preset: str = "default") -> Any:
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


def parse_shape(text: str | None) -> tuple[int, ...] | None:
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
