"""Target selectors of `PerforationConfig` (an exact qualified name, a name suffix, a regex
or a module type): their checks and their JSON form. A saved type is looked up among the
modules already imported, never imported: a file must not run code."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from typing import Any

from torch import nn

from .errors import ConfigError

#: A target selector: an exact qualified name, a name suffix, a regex, or a module type.
Selector = str | type


def selector_list(selectors: Sequence[Selector] | Selector | None) -> list[Selector]:
    """`selectors` as a list: None -> [], one selector -> [it]."""
    if selectors is None:
        return []
    if isinstance(selectors, (str, type)):
        return [selectors]
    return list(selectors)


def check_selectors(name: str, selectors: Any) -> None:
    if selectors is None:
        return
    if not isinstance(selectors, (str, type, list, tuple)):
        raise ConfigError(f"{name} must be None, a str, a module type or a list of those; "
                          f"got {type(selectors).__name__}")
    items = selector_list(selectors)
    if not items:
        raise ConfigError(f"{name} is empty; use None to mean 'all'")
    for item in items:
        if isinstance(item, type):
            if not issubclass(item, nn.Module):
                raise ConfigError(f"{name}: {item!r} is not an nn.Module subclass")
        elif not isinstance(item, str) or not item:
            raise ConfigError(f"{name}: selectors must be non-empty str or module types; "
                              f"got {item!r}")


def selectors_to_json(selectors: Any) -> list[str] | None:
    if selectors is None:
        return None
    return [f"type:{s.__module__}.{s.__qualname__}" if isinstance(s, type) else s
            for s in selector_list(selectors)]


def saved_type(path: str) -> type[nn.Module]:
    """The class a saved ``"type:module.Class"`` selector names, looked up only among the
    modules already imported (``sys.modules``: torch's layers, the library's, the user's).
    Nothing is imported and no module ``__getattr__`` runs: a file must not run code."""
    parts = path.split(".")
    found: Any = None
    for cut in range(len(parts) - 1, 0, -1):  # longest imported module prefix first
        obj: Any = sys.modules.get(".".join(parts[:cut]))
        for name in parts[cut:]:
            obj = getattr(obj, "__dict__", {}).get(name)
        if obj is not None:
            found = obj
            break
    if found is None:
        module = ".".join(itertools.takewhile(lambda p: not p[:1].isupper(), parts[:-1]))
        raise ConfigError(
            f"unknown module type {path!r} in a saved selector: perforate never imports a "
            f"module a file names; if you trust it, import the module that defines the class "
            f"before loading (`import {module or path}`), as you do to register a wrapper "
            "for it")
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ConfigError(f"saved module type {path!r} is {found!r}, not an nn.Module subclass")
    return found


def selectors_from_json(items: Any) -> list[Selector] | None:
    if items is None:
        return None
    out: list[Selector] = []
    for item in selector_list(items):
        if isinstance(item, str) and item.startswith("type:"):
            out.append(saved_type(item[5:]))
        else:
            out.append(item)
    return out
