"""The suite's markers (conftest.py `MARKED_FILES`): every named file exists, so a rename cannot
silently move a slow file into ``make test-fast``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(conftest)


def test_every_marked_path_exists() -> None:
    missing = [f for files in conftest.MARKED_FILES.values() for f in files
               if not (ROOT / f).exists()]
    assert missing == []


def test_markers_of_a_path() -> None:
    assert conftest.markers_of(ROOT / "tests/test_distributed.py") == ["distributed"]
    assert conftest.markers_of(ROOT / "experiments/tests/test_runner.py") == ["slow"]
    assert conftest.markers_of(ROOT / "tests/test_config.py") == []


def test_the_markers_are_applied(request) -> None:
    assert request.node.get_closest_marker("slow") is None
