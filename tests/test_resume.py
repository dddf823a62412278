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

from perforate.training.checkpoint import read_checkpoint

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


# ---------------------------------------------------------------- a run saved by perforate 0.1.0
FIXTURE = Path(__file__).parent / "fixtures" / "run_v0.1.0"


def _fixture_helpers():
    """net, data and epoch of tests/fixtures/make_run_fixture.py (the run that made it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_run_fixture", FIXTURE.parent / "make_run_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_run_saved_by_0_1_0_resumes_and_finishes(tmp_path):
    import shutil

    import torch

    import perforate as pf

    helpers = _fixture_helpers()
    out = tmp_path / "run"
    shutil.copytree(FIXTURE, out)
    flat = read_checkpoint(out)["settings"]
    assert flat["neuron_patience"] == 1 and "schedule" not in flat  # the old layout
    tracker = pf.resume(out, helpers.net(), lambda p: torch.optim.SGD(p, lr=0.1))
    s = tracker.schedule  # the flat settings, read into the Schedule
    assert (s.neuron_patience, s.dendrite_patience, s.max_dendrite_epochs, s.max_dendrites,
            s.improvement_threshold) == (1, 1, 2, 2, 0.05)
    assert (tracker.epoch, s.cycle, tracker.perforated.num_dendrites, tracker.done) == \
        (3, 1, 1, False)
    assert tracker.files.out_dir == out and tracker.files.plot is False
    x, y = helpers.data()
    for _ in range(100):
        if tracker.done:
            break
        tracker.step(helpers.epoch(tracker, x, y))
    assert tracker.done and tracker.schedule.stop_reason
    assert [r["epoch"] for r in tracker.records.history] == list(range(1, tracker.epoch + 1))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["schedule"]["neuron_patience"] == 1  # saved in the new layout
    assert "neuron_patience" not in summary["settings"]
    saved = read_checkpoint(out)
    assert saved["settings"]["schedule"]["max_dendrites"] == 2 and saved["schedule"]["done"]
    final = pf.load(out / "model", helpers.net())
    with torch.no_grad():
        assert torch.equal(final(x), tracker.perforated(x))
    old = pf.load(FIXTURE / "model", helpers.net())  # the model dir saved by 0.1.0 mid-run
    assert old.num_dendrites == 1


def test_resume_with_a_schedule_overrides_the_saved_settings(tmp_path):
    import shutil

    import torch

    import perforate as pf

    helpers = _fixture_helpers()
    shutil.copytree(FIXTURE, tmp_path / "run")
    tracker = pf.resume(tmp_path / "run", helpers.net(), lambda p: torch.optim.SGD(p, lr=0.1),
                        schedule=pf.Schedule(neuron_patience=4, max_dendrites=1))
    s = tracker.schedule
    # the given schedule's settings replace the saved ones (dendrite_patience: the default 3,
    # not the saved 1); the run's state is the checkpoint's
    assert (s.neuron_patience, s.max_dendrites, s.dendrite_patience) == (4, 1, 3)
    saved = read_checkpoint(tmp_path / "run")["schedule"]
    assert (tracker.epoch, s.cycle, s.cycle_results[0].best) == \
        (3, 1, saved["cycle_results"][0]["best"])
    with pytest.raises(TypeError, match=r"schedule=pf\.Schedule\(max_epochs=9\)"):
        pf.resume(tmp_path / "run", helpers.net(), lambda p: torch.optim.SGD(p, lr=0.1),
                  max_epochs=9)
