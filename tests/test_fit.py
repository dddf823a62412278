"""pf.fit end to end on a tiny task, and the metrics."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import perforate as pf
from perforate import metrics


def loaders(n: int = 240):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()
    ds = [TensorDataset(x[i::3], y[i::3]) for i in range(3)]
    return (DataLoader(ds[0], batch_size=16, shuffle=True,
                       generator=torch.Generator().manual_seed(1)),
            DataLoader(ds[1], batch_size=64), DataLoader(ds[2], batch_size=64))


def model():
    torch.manual_seed(0)
    return pf.perforate(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)))


KW = dict(neuron_patience=2, dendrite_patience=2, max_dendrite_epochs=3, max_dendrites=1,
          improvement_threshold=1e-3)


def adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def test_fit_runs_the_cycle(capsys):
    train, val, test = loaders()
    m = model()
    loss_fn = nn.CrossEntropyLoss()
    tracker = pf.fit(m, train, val, loss_fn, adam, test_loader=test, tracker_kwargs=KW,
                     progress=False)
    assert tracker.done and m.phase == "neuron"
    h = tracker.history
    phases = [r["phase"] for r in h]
    assert "dendrite" in phases and phases[0] == "neuron" and phases[-1] == "neuron"
    for r in h:
        assert 0 <= r["val"] <= 1 and 0 <= r["test"] <= 1 and 0 <= r["train"] <= 1
    # dendrite epochs are not evaluated: flat at the restored best
    first_dendrite = phases.index("dendrite")
    best0 = tracker.architectures[0]
    assert all(r["val"] == best0["best_val"] and r["test"] == best0["test_at_best_val"]
               for r in h if r["phase"] == "dendrite" and r["cycle"] == 0)
    assert h[first_dendrite]["corr"] > 0
    # the final model is the kept architecture; its val score is reproducible
    final = tracker.final_architecture
    assert m.num_dendrites == final["dendrites"]
    o, t = pf.predict(m, val)
    assert metrics.accuracy(o, t) == final["best_val"]
    assert capsys.readouterr().err == ""


def test_fit_decision_metric_records_the_metric_as_extras():
    train, val, test = loaders()
    m = model()
    loss_fn = nn.CrossEntropyLoss()
    tracker = pf.fit(m, train, val, loss_fn, adam, test_loader=test,
                     decision_metric=metrics.neg_loss(loss_fn),
                     tracker_kwargs={**KW, "max_dendrites": 0}, progress=False)
    assert tracker.extra_names == ["train_accuracy", "val_accuracy", "test_accuracy"]
    row = tracker.history[-1]
    assert row["val"] < 0 and 0 <= row["val_accuracy"] <= 1
    o, t = pf.predict(m, val)
    assert -float(loss_fn(o, t)) == pytest.approx(tracker.best_val, abs=1e-6)
    arch = tracker.architectures[0]
    best_row = tracker.history[arch["best_epoch"] - 1]
    assert best_row["val"] == arch["best_val"]
    assert arch["test_accuracy_at_best_val"] == best_row["test_accuracy"]
    assert tracker.error_reduction("test_accuracy") == 0.0  # one architecture only


def test_fit_progress_goes_to_stderr_as_plain_lines_in_a_pipe_and_changes_nothing(capsys):
    runs = []
    for progress in (True, False):
        train, val, _ = loaders()
        t = pf.fit(model(), train, val, nn.CrossEntropyLoss(), adam,
                   tracker_kwargs={**KW, "max_dendrite_epochs": 1}, progress=progress)
        runs.append([{k: v for k, v in r.items() if k != "seconds"} for r in t.history])
        captured = capsys.readouterr()
        assert captured.out == ""
        if progress:  # capsys's stderr is not a terminal: plain lines, no cursor control
            lines = captured.err.splitlines()
            assert lines[0].startswith("perforate: epoch 1, next phase neuron, 0 dendrite")
            assert any("next phase dendrite" in line for line in lines)
            assert f"epoch {t.epoch}," in lines[-1] and "1 dendrite set(s)" in lines[-1]
            assert "\r" not in captured.err and "\x1b" not in captured.err
        else:
            assert captured.err == ""
    assert runs[0] == runs[1]


def test_fit_progress_bars_on_a_terminal(monkeypatch):
    pytest.importorskip("tqdm")

    class FakeTTY(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = FakeTTY()
    monkeypatch.setattr(sys, "stderr", err)
    train, val, _ = loaders()
    pf.fit(model(), train, val, nn.CrossEntropyLoss(), adam,
           tracker_kwargs={**KW, "max_dendrite_epochs": 1})
    text = err.getvalue()
    assert "\r" in text and "batch" in text and "dendrites=1" in text


def test_fit_argument_errors():
    train, val, _ = loaders()
    m = model()
    with pytest.raises(TypeError, match="optimizer_factory"):
        pf.fit(m, train, val, nn.CrossEntropyLoss(), progress=False)
    other = pf.Tracker(model(), adam)
    with pytest.raises(ValueError, match=r"tracker\.model"):
        pf.fit(m, train, val, nn.CrossEntropyLoss(), tracker=other, progress=False)
    bad = DataLoader(TensorDataset(torch.randn(8, 6)), batch_size=4)
    with pytest.raises(TypeError, match=r"\(inputs, targets\)"):
        pf.fit(m, bad, val, nn.CrossEntropyLoss(), adam, progress=False)


def test_fit_continues_a_tracker_and_on_epoch_end():
    train, val, _ = loaders()
    m = model()
    tracker = pf.Tracker(m, adam, **{**KW, "max_epochs": 3})
    seen = []
    pf.fit(m, train, val, nn.CrossEntropyLoss(), tracker=tracker, progress=False,
           on_epoch_end=lambda t, d: seen.append((t.epoch, d.event)))
    assert seen == [(1, "continue"), (2, "continue"), (3, "stop")]


def test_accuracy():
    assert metrics.accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1])) == 0.5
    assert metrics.accuracy(torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])) == \
        pytest.approx(2 / 3)
    onehot = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert metrics.accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), onehot) == 1.0
    with pytest.raises(ValueError, match="empty"):
        metrics.accuracy(torch.zeros(0, 2), torch.zeros(0))


def test_neg_loss_and_mse():
    f = metrics.neg_loss(nn.MSELoss())
    assert f.__name__ == "neg_loss"
    assert f(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])) == -5.0
    assert metrics.neg_mse(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 0.0])) == -5.0


def test_roc_auc():
    y = torch.tensor([0, 0, 1, 1])
    assert metrics.roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), y) == 0.75
    assert metrics.roc_auc(torch.tensor([[0.0, 0.1], [0, 0.4], [0, 0.35], [0, 0.8]]), y) == 0.75
    y3 = torch.tensor([0, 1, 2, 0, 1, 2])
    logits = torch.nn.functional.one_hot(y3, 3).float() * 5
    assert metrics.roc_auc(logits, y3) == 1.0


def test_error_reduction():
    assert metrics.error_reduction(0.95, 0.96) == pytest.approx(0.2)
    assert metrics.error_reduction(1.0, 0.9) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.error_reduction(-0.1, 0.5)


def test_fit_stops_with_a_clear_error_when_training_diverges():
    train, val, _ = loaders()
    m = model()
    with pytest.raises(pf.NonFiniteError, match=r"epoch 1: the model's train outputs are not "
                                                r"finite \(training diverged"):
        pf.fit(m, train, val, nn.CrossEntropyLoss(),
               lambda p: torch.optim.SGD(p, lr=1e30), progress=False)
