"""`perforate.engine.allocator.keep_cpu_memory`: the glibc calls it makes, and where it does
nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from perforate.engine import allocator


class _FakeLibc:
    def __init__(self, answer: int) -> None:
        self.answer = answer
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


def test_it_asks_glibc_for_no_mmap_blocks_and_no_trimming(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    libc = _FakeLibc(1)
    monkeypatch.setattr(allocator, "_glibc", lambda: libc)
    assert allocator.keep_cpu_memory() is True
    assert libc.calls == [(-4, 0), (-1, 2**31 - 1)]  # M_MMAP_MAX = 0, M_TRIM_THRESHOLD
    refused = _FakeLibc(0)
    monkeypatch.setattr(allocator, "_glibc", lambda: refused)
    assert allocator.keep_cpu_memory() is False


def test_it_changes_nothing_where_the_c_library_is_not_glibc(monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator._glibc() is None
    assert allocator.keep_cpu_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
def test_it_applies_on_this_linux_in_a_fresh_process() -> None:
    out = subprocess.run([sys.executable, "-c",
                          "import torch; from perforate.engine.allocator import keep_cpu_memory; "
                          "print(keep_cpu_memory()); "
                          "[torch.ones(4_000_000).sum() for _ in range(3)]"],
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["True"]
