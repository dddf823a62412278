"""Optional dependencies: import one now, or fail naming the extra that installs it.

Features that need an extra call `require` when they are set up (a `Tracker` that will plot,
`perforate demo`), so a missing package fails at once, never after hours of training.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

#: The extras of ``pip install 'perforate[...]'`` (see the README's install table).
EXTRAS = ("train", "demo", "experiments", "lightning", "hf", "onnx", "dev")
#: Import names whose package is named differently on PyPI.
_PACKAGES = {"sklearn": "scikit-learn", "yaml": "pyyaml"}


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import and return `module`, or raise `MissingExtraError` saying that `purpose` needs it
    and which ``pip install 'perforate[extra]'`` provides it."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; choose from {', '.join(EXTRAS)}")
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs {_PACKAGES.get(top, top)}, which is not installed: "
            f"pip install 'perforate[{extra}]'") from exc


def available(module: str) -> bool:
    """Whether `module` can be imported (it is imported if so)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
