"""Run artifacts: files, columns, row counts, when they are written, atomic writes."""

from __future__ import annotations

import json
import struct

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import perforate as pf
from perforate.errors import LoadError
from perforate.io.atomic import atomic_write, atomic_write_text
from perforate.training import artifacts


def make_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def scripted_run(out_dir, *, add_dendrites=True, plot=True):
    """15 epochs: cycle 0 (4) + dendrite (2) + cycle 1 (4) + dendrite (2) + cycle 2 (3)."""
    torch.manual_seed(0)
    model = pf.perforate(make_net(), pf.PerforationConfig.paper(seed=0))
    tracker = pf.Tracker(model, lambda p: torch.optim.SGD(p, lr=0.1), out_dir=out_dir, plot=plot,
                         net_factory="test_artifacts:make_net",
                         schedule=pf.Schedule(neuron_patience=2, dendrite_patience=5,
                                              max_dendrite_epochs=2, add_dendrites=add_dendrites))
    scores = iter([0.1, 0.3, 0.2, 0.2, 0.35, 0.5, 0.4, 0.4, 0.5, 0.45, 0.4, 0.3, 0.3])
    decisions = []
    while not tracker.done:
        g = torch.Generator().manual_seed(tracker.epoch)
        x, y = torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
        tracker.optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        tracker.optimizer.step()
        if tracker.phase == "dendrite":
            decisions.append(tracker.step())
        else:
            s = next(scores)
            decisions.append(tracker.step(s, test_score=s - 0.05, train_score=s + 0.1,
                                          extra={"val_acc": s + 0.2}))
    return tracker, decisions


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_artifacts_have_the_right_columns_and_rows(tmp_path):
    tracker, _decisions = scripted_run(tmp_path)
    assert tracker.done and len(tracker.records.history) == 15
    assert len(tracker.records.architectures) == 3
    hist = artifacts.read_csv(tmp_path / "history.csv")
    header = (tmp_path / "history.csv").read_text().splitlines()[0].split(",")
    assert header == [*artifacts.HISTORY_COLUMNS, "val_acc"]
    assert len(hist) == 15
    assert [int(r["epoch"]) for r in hist] == list(range(1, 16))
    assert [r["phase"] for r in hist].count("dendrite") == 4
    for row, rec in zip(hist, tracker.records.history, strict=True):
        assert float(row["val"]) == rec["val"] and float(row["val_acc"]) == rec["val_acc"]
        assert (row["corr"] == "") == (rec["phase"] == "neuron")
    assert [r["event"] for r in hist if r["event"] not in ("", "best")] == \
        ["grow", "install", "grow", "install", "stop"]

    archs = artifacts.read_csv(tmp_path / "architectures.csv")
    header = (tmp_path / "architectures.csv").read_text().splitlines()[0].split(",")
    assert header == [*artifacts.ARCHITECTURE_COLUMNS, "val_acc_at_best_val"]
    assert len(archs) == 3
    assert [int(a["dendrites"]) for a in archs] == [0, 1, 2]
    assert [a["kept"] for a in archs] == ["0", "1", "0"]
    assert [float(a["best_val"]) for a in archs] == [0.3, 0.5, 0.5]
    assert float(archs[1]["test_at_best_val"]) == pytest.approx(0.45)
    assert float(archs[1]["val_acc_at_best_val"]) == pytest.approx(0.7)
    assert int(archs[1]["params"]) > int(archs[0]["params"])

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["done"] and summary["epochs"] == 15 and summary["dendrites"] == 1
    assert summary["final"]["cycle"] == 1 and summary["best_val"] == 0.5
    assert summary["error_reduction"]["test"] == pytest.approx(
        ((1 - 0.25) - (1 - 0.45)) / (1 - 0.25))
    assert summary["settings"]["schedule"]["neuron_patience"] == 2
    assert len(summary["dendrite_phases"]) == 2
    assert set(summary["dendrite_phases"][0]["layers"]["0"]) == \
        {"neurons", "alive", "mean_corr", "median_corr", "min_corr", "max_corr"}

    assert png_size(tmp_path / "training.png") == (900, 1100)
    assert (tmp_path / "checkpoint" / "checkpoint.pt").is_file()
    meta = json.loads((tmp_path / "checkpoint" / "checkpoint.json").read_text())
    assert meta["done"] and meta["epoch"] == 15 and meta["net_factory"] == \
        "test_artifacts:make_net"
    net_json = json.loads((tmp_path / "model" / "perforate_net.json").read_text())
    assert net_json == {"net_factory": "test_artifacts:make_net"}
    loaded = pf.load(tmp_path / "model", make_net())
    assert loaded.num_dendrites == 1
    x = torch.randn(5, 4)
    assert torch.equal(loaded(x), tracker.model(x))
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_written_at_phase_switches_not_every_epoch(tmp_path, monkeypatch):
    calls = []
    real = artifacts.write_run_artifacts

    def counting(tracker, out_dir, **kw):
        calls.append(tracker.epoch)
        return real(tracker, out_dir, **kw)

    monkeypatch.setattr(artifacts, "write_run_artifacts", counting)
    _tracker, decisions = scripted_run(tmp_path, plot=False)
    switches = [d.epoch for d in decisions if d.restructured]
    assert calls == switches == [4, 6, 10, 12, 15]
    assert not (tmp_path / "training.png").exists()


def test_restart_control_artifacts(tmp_path):
    _tracker, _ = scripted_run(tmp_path, add_dendrites=False)
    archs = artifacts.read_csv(tmp_path / "architectures.csv")
    assert [a["dendrites"] for a in archs] == ["0"] * len(archs)
    hist = artifacts.read_csv(tmp_path / "history.csv")
    assert {r["phase"] for r in hist} == {"neuron"}
    assert "restart" in {r["event"] for r in hist}
    assert png_size(tmp_path / "training.png") == (900, 1100)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = pf.perforate(make_net(), pf.PerforationConfig.paper())
    tracker = pf.Tracker(model, lambda p: torch.optim.SGD(p, lr=0.1))
    tracker.step(0.5)
    tracker.save_checkpoint(tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    tracker.step(0.6)

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        tracker.save_checkpoint(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    resumed = pf.resume(tmp_path, make_net(), lambda p: torch.optim.SGD(p, lr=0.1))
    assert resumed.epoch == 1 and resumed.records.history[0]["val"] == 0.5


def test_csv_cells():
    assert artifacts._cell(None) == "" and artifacts._cell(True) == 1
    assert artifacts._cell(0.1) == "0.1" and artifacts._cell(float("inf")) == "inf"


def test_resume_errors(tmp_path):
    with pytest.raises(LoadError, match=r"no checkpoint\.pt"):
        pf.resume(tmp_path, make_net(), lambda p: torch.optim.SGD(p, lr=0.1))
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LoadError, match="cannot read checkpoint"):
        pf.resume(tmp_path, make_net(), lambda p: torch.optim.SGD(p, lr=0.1))
    torch.save({"format": "other"}, tmp_path / "checkpoint.pt")
    with pytest.raises(LoadError, match="not a perforate tracker checkpoint"):
        pf.resume(tmp_path, make_net(), lambda p: torch.optim.SGD(p, lr=0.1))
