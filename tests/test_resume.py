"""A run killed with SIGKILL and resumed with pf.resume ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("resume_run.py")


def run_script(out: Path, result: Path, *args: str, env: dict | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), str(result), *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def checkpoint_meta(out: Path) -> dict:
    return json.loads((out / "checkpoint" / "checkpoint.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("full")
    run_script(base / "run", base / "result.json")
    result = json.loads((base / "result.json").read_text())
    phases = [(r["epoch"], r["phase"], r["cycle"]) for r in result["history"]]
    # the run must cover what the kills below need: two dendrite phases, three cycles
    assert sum(p == "dendrite" for _, p, _ in phases) >= 4
    assert result["dendrites"] >= 1 and len(result["architectures"]) >= 2
    return result


def assert_same(resumed: dict, full: dict) -> None:
    assert resumed["architectures"] == full["architectures"]
    assert resumed["best_val"] == full["best_val"]
    assert resumed["test_at_best_val"] == full["test_at_best_val"]
    assert resumed["dendrites"] == full["dendrites"]
    assert resumed["weights"] == full["weights"]
    assert resumed["history"] == full["history"]


@pytest.mark.parametrize("where", ["dendrite", "second_cycle"])
def test_sigkill_mid_epoch_then_resume_matches(uninterrupted, tmp_path, where):
    history = uninterrupted["history"]
    if where == "dendrite":  # the second epoch of the first dendrite phase
        epoch = [r["epoch"] for r in history if r["phase"] == "dendrite"][1]
    else:  # the third epoch of neuron cycle 1
        epoch = [r["epoch"] for r in history if r["phase"] == "neuron" and r["cycle"] == 1][2]
    out = tmp_path / "run"
    killed = run_script(out, tmp_path / "unused.json", "--kill-epoch", str(epoch),
                        "--kill-batch", "4", check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "unused.json").exists()
    meta = checkpoint_meta(out)
    assert meta["epoch"] == epoch - 1 and not meta["done"]
    assert (meta["phase"], meta["cycle"]) == ((history[epoch - 1]["phase"],
                                               history[epoch - 1]["cycle"]))
    run_script(out, tmp_path / "resumed.json", "--resume")
    assert_same(json.loads((tmp_path / "resumed.json").read_text()), uninterrupted)


def test_external_sigkill_at_any_instant_then_resume_matches(uninterrupted, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), str(tmp_path / "x.json")],
                            env={**os.environ, "PERFORATE_TEST_SLEEP": "0.004"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                meta = checkpoint_meta(out)
            except (FileNotFoundError, json.JSONDecodeError):
                meta = None
            if meta and (meta["phase"] == "dendrite" or meta["cycle"] >= 1):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / "x.json").exists()
    run_script(out, tmp_path / "resumed.json", "--resume")
    assert_same(json.loads((tmp_path / "resumed.json").read_text()), uninterrupted)
