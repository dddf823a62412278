"""The suite's own setup (conftest.py): fixtures of every scope run with one torch thread, so a
run in a module-scoped fixture and the same run in a test are bitwise equal."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def module_threads() -> int:
    """The torch thread count a module-scoped fixture runs with (set up before any
    function-scoped fixture)."""
    return torch.get_num_threads()


def test_module_fixtures_run_with_the_tests_one_thread(module_threads: int) -> None:
    assert module_threads == torch.get_num_threads() == 1


def test_a_test_that_changes_the_thread_count_does_not_change_the_next_ones() -> None:
    torch.set_num_threads(2)  # restored by conftest after this test


def test_the_next_test_runs_with_one_thread_again() -> None:
    assert torch.get_num_threads() == 1
