"""The perforatedai arm of Protocol P: its rows, their figures, and the loop (on a stand-in
for the package, which CI does not install)."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from torch import nn

from perforate_experiments import anchor
from perforate_experiments.anchor import Epoch
from perforate_experiments.report.rows import load_rows

EPOCHS = [Epoch(0, 0.80, 0.79, 3190, 0), Epoch(1, 0.82, 0.81, 3190, 0),
          Epoch(2, 0.82, 0.805, 3190, 0), Epoch(3, 0.81, 0.80, 6394, 1),
          Epoch(4, 0.84, 0.83, 6394, 1), Epoch(5, 0.84, 0.835, 9612, 2)]


def test_summary_is_the_test_at_the_first_best_validation_epoch() -> None:
    s = anchor.summarize(EPOCHS)
    assert (s["first_test"], s["first_params"]) == (0.81, 3190)  # epoch 1, not the tie at 2
    assert (s["final_test"], s["final_params"], s["final_dendrites"]) == (0.83, 6394, 1)
    assert (s["best_epoch"], s["epochs"], s["max_dendrites_seen"]) == (4, 6, 2)
    with pytest.raises(ValueError):
        anchor.summarize([])


def test_row_is_written_where_the_frontier_report_reads_it(tmp_path) -> None:
    row = anchor.anchor_row(3, 8, EPOCHS, stop_reason="done", wall_seconds=12.5,
                            hardware={"cpus": 2}, git_commit="abc",
                            protocol=anchor.protocol_description(8))
    path = anchor.write_row(tmp_path, row)
    assert path == tmp_path / "frontier" / "perforatedai" / "seed-3__h-8.json"
    stored = json.loads(path.read_text())
    assert {k: stored[k] for k in ("experiment", "variant", "seed", "quick", "options",
                                   "metric", "decision_metric")} == {
        "experiment": "frontier", "variant": "perforatedai", "seed": 3, "quick": False,
        "options": {"h": 8}, "metric": "accuracy", "decision_metric": "accuracy"}
    assert (stored["first_test"], stored["final_test"], stored["final_params"],
            stored["final_dendrites"]) == (0.81, 0.83, 6394, 1)
    assert stored["protocol"]["pai_n_epochs_to_switch"] == 5
    assert stored["protocol"]["pai_max_dendrites"] == 3
    for key in ("wall_seconds", "hardware", "git_commit", "history"):
        assert key in stored
    rows, _ = load_rows(tmp_path)
    assert [(r["experiment"], r["variant"], r["options"]["h"]) for r in rows] == [
        ("frontier", "perforatedai", 8)]


def test_used_parameters_leave_out_what_the_forward_pass_does_not_use() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
            self.spare = nn.Linear(6, 4)  # a copy the package keeps but does not call

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    net = Net()
    net.body[0].weight.grad = torch.ones(4, 6)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    assert anchor.used_parameters(net, x, y) == 6 * 4 + 4 + 4 * 3 + 3
    assert torch.equal(net.body[0].weight.grad, torch.ones(4, 6))  # gradients as they were
    assert net.spare.weight.grad is None and net.body[2].weight.grad is None


def test_parse_seeds() -> None:
    assert anchor.parse_seeds("0-2,5") == [0, 1, 2, 5]


def _stand_in(monkeypatch, complete_at: int) -> list[float]:
    """A stand-in for perforatedai: no dendrites; training completes after `complete_at`
    scores. Returns the scores it received."""
    scores: list[float] = []

    class Tracker:
        def set_optimizer(self, cls):
            self.cls = cls

        def setup_optimizer(self, model, opt_args, sched_args):
            return self.cls(**opt_args), None

        def add_validation_score(self, score, model):
            scores.append(score)
            return model, False, len(scores) >= complete_at

    pc = types.SimpleNamespace(**{name: (lambda *a: None) for name in (
        "set_configuration_confirmed", "set_testing_dendrite_capacity",
        "set_n_epochs_to_switch", "set_max_dendrites")})
    gpa = types.ModuleType("perforatedai.globals_perforatedai")
    gpa.pc, gpa.pai_tracker = pc, Tracker()
    upa = types.ModuleType("perforatedai.utils_perforatedai")
    upa.perforate_model = lambda net, save_name, maximizing_score: net
    package = types.ModuleType("perforatedai")
    package.globals_perforatedai, package.utils_perforatedai = gpa, upa
    monkeypatch.setitem(sys.modules, "perforatedai", package)
    monkeypatch.setitem(sys.modules, "perforatedai.globals_perforatedai", gpa)
    monkeypatch.setitem(sys.modules, "perforatedai.utils_perforatedai", upa)
    return scores


def test_training_loop_scores_every_epoch_and_stops_when_the_package_says(monkeypatch) -> None:
    scores = _stand_in(monkeypatch, complete_at=3)
    g = torch.Generator().manual_seed(0)
    split = {k: (torch.randn(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g))
             for k in ("train", "val", "test")}
    epochs, reason = anchor.train_anchor(0, 4, split, max_epochs=10, log=lambda m: None)
    assert reason == "perforatedai: training complete"
    assert [e.val for e in epochs] == scores and len(epochs) == 3
    assert all(e.params == 784 * 4 + 4 + 4 * 10 + 10 and e.dendrites == 0 for e in epochs)
    assert all(0.0 <= e.test <= 1.0 for e in epochs)
    _stand_in(monkeypatch, complete_at=100)
    epochs, reason = anchor.train_anchor(0, 4, split, max_epochs=2, log=lambda m: None)
    assert reason == "max_epochs (2) reached" and len(epochs) == 2


def test_the_second_protocol_trains_its_own_network_and_writes_its_own_rows(
        monkeypatch, tmp_path) -> None:
    _stand_in(monkeypatch, complete_at=2)
    g = torch.Generator().manual_seed(0)
    split = {k: (torch.randn(64, 40, generator=g), torch.randint(0, 10, (64,), generator=g))
             for k in ("train", "val", "test")}
    epochs, _ = anchor.train_anchor(0, 8, split, experiment="frontier-1d", log=lambda m: None)
    assert epochs[0].params == 40 * 8 + 8 + 8 * 8 + 8 + 8 * 10 + 10  # MLP 40-h-h-10
    protocol = anchor.protocol_description(8, "frontier-1d")
    assert protocol["network"] == "MLP 40-h-h-10" and "MNIST-1D" in protocol["data"]
    row = anchor.anchor_row(0, 8, epochs, stop_reason="done", wall_seconds=1.0, hardware={},
                            git_commit="abc", protocol=protocol, experiment="frontier-1d")
    path = anchor.write_row(tmp_path, row)
    assert path == tmp_path / "frontier-1d" / "perforatedai" / "seed-0__h-8.json"
