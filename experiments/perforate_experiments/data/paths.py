"""Where the experiment data live: ``$PERFORATE_DATA`` or ``<repo>/../shared/data``."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "PERFORATE_DATA"


def _repo_root() -> Path | None:
    """The checkout holding this file (editable install), found by its pyproject.toml."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "perforate").is_dir():
            return parent
    return None


def candidate_data_dirs() -> list[Path]:
    """The directories `default_data_dir` tries, in order (``$PERFORATE_DATA`` excluded)."""
    root = _repo_root()
    return [] if root is None else [root.parent / "shared" / "data"]


def default_data_dir() -> Path:
    """Return ``$PERFORATE_DATA`` if set, else the first existing ``<repo>/../shared/data``.

    Raises FileNotFoundError, saying where to put the files, when neither exists.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"${ENV_VAR} is set to {env!r}, which is not a directory")
        return path
    candidates = candidate_data_dirs()
    for path in candidates:
        if path.is_dir():
            return path
    tried = ", ".join(str(p) for p in candidates) or "(no source checkout found)"
    raise FileNotFoundError(
        "No experiment data directory found. Set $PERFORATE_DATA to a directory holding "
        "tox21/tox21.csv and physionet2012/{set-a.tar.gz,set-c.tar.gz,Outcomes-a.txt,"
        "Outcomes-c.txt} (and optionally emnist/), or put them in <repo>/../shared/data. "
        f"Tried: {tried}"
    )


def resolve_file(path: str | os.PathLike[str] | None, *default_parts: str) -> Path:
    """`path` if given, else ``default_data_dir()/<default_parts>``; must exist as a file."""
    p = Path(path).expanduser() if path is not None else default_data_dir().joinpath(*default_parts)
    if not p.is_file():
        raise FileNotFoundError(f"Data file not found: {p}")
    return p
