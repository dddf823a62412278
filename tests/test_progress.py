"""What fit shows: bars on a terminal, plain lines in a pipe or without tqdm."""

from __future__ import annotations

import io
import sys

import pytest

from perforate.training.progress import BarProgress, LineProgress, Silent, make_progress


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_make_progress_picks_bars_only_on_a_terminal_with_tqdm(monkeypatch):
    pytest.importorskip("tqdm")
    assert isinstance(make_progress(False, total=3), Silent)
    assert not isinstance(make_progress(False, total=3), LineProgress)
    assert type(make_progress(True, total=3, stream=io.StringIO())) is LineProgress
    bars = make_progress(True, total=3, stream=FakeTTY())
    assert isinstance(bars, BarProgress)
    bars.close()
    monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm not installed
    assert type(make_progress(True, total=3, stream=FakeTTY())) is LineProgress


def test_line_progress_writes_phase_switches_and_the_last_epoch_only():
    now = [0.0]
    out = io.StringIO()
    shown = LineProgress(out, total=10, interval=5.0, clock=lambda: now[0])
    for epoch, phase in enumerate(["neuron", "neuron", "dendrite", "dendrite", "neuron"], 1):
        now[0] += 1.0
        shown.start_epoch(epoch - 1, phase, 4)
        shown.batch()
        shown.end_epoch(epoch, phase, epoch // 3, 0.5 + epoch / 100 if phase == "neuron"
                        else None)
    now[0] += 1.0
    shown.end_epoch(6, "neuron", 1, 0.61)  # held back: same phase, 1 s later
    shown.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "perforate: epoch 1/10, next phase neuron, 0 dendrite set(s), val 0.51, 1 s",
        "perforate: epoch 3/10, next phase dendrite, 1 dendrite set(s), val -, 3 s",
        "perforate: epoch 5/10, next phase neuron, 1 dendrite set(s), val 0.55, 5 s",
        "perforate: epoch 6/10, next phase neuron, 1 dendrite set(s), val 0.61, 6 s",
    ]


def test_line_progress_interval_zero_writes_every_epoch_without_escape_codes():
    out = io.StringIO()
    shown = LineProgress(out, total=None, interval=0.0)
    for epoch in range(1, 4):
        shown.end_epoch(epoch, "neuron", 0, None)
    shown.close()
    text = out.getvalue()
    assert len(text.splitlines()) == 3 and "epoch 2," in text
    assert "\r" not in text and "\x1b" not in text
