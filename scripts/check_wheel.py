"""Check that the library's wheel holds the library only: ``python scripts/check_wheel.py WHEEL``.

Every file must be under ``perforate/`` or the ``.dist-info`` folder, ``py.typed`` must ship,
and nothing of the research harness (``perforate_experiments``, ``experiments/``) may.
Exit code 1 with the offending names otherwise (`make wheel-check` runs it).
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path


def problems(wheel: Path) -> list[str]:
    """What is wrong with `wheel`'s contents (empty if nothing)."""
    names = zipfile.ZipFile(wheel).namelist()
    found = []
    for name in names:
        top = name.split("/", 1)[0]
        if not (top == "perforate" or top.endswith(".dist-info")):
            found.append(f"outside the library package: {name}")
        elif "experiments" in name:
            found.append(f"research harness file: {name}")
    if "perforate/py.typed" not in names:
        found.append("perforate/py.typed is missing")
    if "perforate/__init__.py" not in names:
        found.append("perforate/__init__.py is missing")
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    wheel = Path(argv[0])
    found = problems(wheel)
    for line in found:
        print(f"{wheel.name}: {line}", file=sys.stderr)
    if not found:
        print(f"{wheel.name}: the library only ({len(zipfile.ZipFile(wheel).namelist())} files)")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
