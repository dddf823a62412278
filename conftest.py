"""Fixtures of every test in the repository (library and research harness): a fixed seed and
one torch thread; and the suite's markers, given per file here so a file's speed class is
declared in one place.

Markers (``pytest -m``): ``distributed`` (spawns gloo process groups), ``integrations``
(Lightning, Hugging Face, ONNX), ``slow`` (end-to-end runs, zoo models, the research harness).
``make test-fast`` runs everything else (the engine, config, schedule, serialization) in under
a minute; ``make test`` and CI run all of it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

#: Test files by marker (paths relative to the repository root). A file not named here is fast.
MARKED_FILES: dict[str, tuple[str, ...]] = {
    "distributed": ("tests/test_distributed.py",),
    "integrations": ("tests/test_integrations_hf.py", "tests/test_integrations_lightning.py",
                     "tests/test_conv1d.py"),
    "slow": ("tests/test_zoo.py", "tests/test_rnn.py", "tests/test_attention.py",
             "tests/test_cli.py", "tests/test_fit.py", "tests/test_resume.py",
             "tests/test_planted.py", "tests/test_packaging.py", "tests/test_torch_floor.py",
             "tests/test_compile.py",
             "tests/test_run_files.py", "experiments/tests"),
}
ROOT = Path(__file__).resolve().parent


def markers_of(path: Path) -> list[str]:
    """The markers `MARKED_FILES` gives the test file at `path`."""
    rel = path.resolve().relative_to(ROOT).as_posix()
    return [mark for mark, files in MARKED_FILES.items()
            if any(rel == f or rel.startswith(f + "/") for f in files)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for mark in markers_of(Path(str(item.path))):
            item.add_marker(getattr(pytest.mark, mark))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One torch thread: small models run faster and timings vary less on shared cores.

    Session-scoped, so that module- and session-scoped fixtures (set up before any
    function-scoped one) run with it too: the thread count changes how CPU kernels split
    their sums, and a fixture's run compared bitwise with a test's run (an uninterrupted
    run and its resumed copy) must use the same count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread_again():
    """A test that changes the thread count does not change it for the next ones."""
    yield
    torch.set_num_threads(1)
