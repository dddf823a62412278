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
from perforate.training.fit import predict


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
    return pf.perforate(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)),
                        pf.PerforationConfig.paper())


KW = dict(neuron_patience=2, dendrite_patience=2, max_dendrite_epochs=3, max_dendrites=1,
          improvement_threshold=1e-3)


def schedule_with(**settings) -> pf.Schedule:
    """The tests' schedule, `settings` changed."""
    return pf.Schedule(**{**KW, **settings})


def adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def test_fit_runs_the_cycle(capsys):
    train, val, test = loaders()
    m = model()
    loss_fn = nn.CrossEntropyLoss()
    tracker = pf.fit(m, train, val, loss_fn, adam, test_loader=test, schedule=schedule_with(),
                     progress=False)
    assert tracker.done and m.phase == "neuron"
    h = tracker.records.history
    phases = [r["phase"] for r in h]
    assert "dendrite" in phases and phases[0] == "neuron" and phases[-1] == "neuron"
    # scores are accuracies over whole sets (80 samples each), not averages of batch scores
    for r in h:
        for key in ("train", "val", "test"):
            assert r[key] * 80 == pytest.approx(round(r[key] * 80), abs=1e-9), (r, key)
    # dendrite epochs are not evaluated: flat at the restored best
    first_dendrite = phases.index("dendrite")
    best0 = tracker.records.architectures[0]
    assert all(r["val"] == best0["best_val"] and r["test"] == best0["test_at_best_val"]
               for r in h if r["phase"] == "dendrite" and r["cycle"] == 0)
    assert h[first_dendrite]["corr"] > 0
    # the final model is the kept architecture; its val score is reproducible
    final = tracker.final_architecture
    assert m.num_dendrites == final["dendrites"]
    # hand-computed accuracies of the final model's predictions are the recorded ones
    for loader, key in ((val, "best_val"), (test, "test_at_best_val")):
        o, t = predict(m, loader)
        assert (o.argmax(1) == t).sum().item() / len(t) == final[key]
    assert capsys.readouterr().err == ""


def test_fit_decision_metric_records_the_metric_as_extras():
    train, val, test = loaders()
    m = model()
    loss_fn = nn.CrossEntropyLoss()
    tracker = pf.fit(m, train, val, loss_fn, adam, test_loader=test,
                     decision_metric=metrics.neg_loss(loss_fn),
                     schedule=schedule_with(max_dendrites=0), progress=False)
    assert tracker.records.extra_names == ["train_accuracy", "val_accuracy", "test_accuracy"]
    row = tracker.records.history[-1]
    assert row["val"] < 0 and 0 <= row["val_accuracy"] <= 1
    o, t = predict(m, val)
    assert -float(loss_fn(o, t)) == pytest.approx(tracker.best_val, abs=1e-6)
    arch = tracker.records.architectures[0]
    best_row = tracker.records.history[arch["best_epoch"] - 1]
    assert best_row["val"] == arch["best_val"]
    assert arch["test_accuracy_at_best_val"] == best_row["test_accuracy"]
    assert tracker.error_reduction("test_accuracy") == 0.0  # one architecture only


def test_fit_progress_goes_to_stderr_as_plain_lines_in_a_pipe_and_changes_nothing(capsys):
    runs = []
    for progress in (True, False):
        train, val, _ = loaders()
        t = pf.fit(model(), train, val, nn.CrossEntropyLoss(), adam,
                   schedule=schedule_with(max_dendrite_epochs=1), progress=progress)
        runs.append([{k: v for k, v in r.items() if k != "seconds"} for r in t.records.history])
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
           schedule=schedule_with(max_dendrite_epochs=1))
    text = err.getvalue()
    assert "\r" in text and "batch" in text and "dendrites=1" in text


def test_fit_argument_errors():
    train, val, _ = loaders()
    m = model()
    with pytest.raises(TypeError, match="optimizer_factory"):
        pf.fit(m, train, val, nn.CrossEntropyLoss(), progress=False)
    other = pf.Tracker(model(), adam)
    with pytest.raises(ValueError, match=r"tracker\.perforated"):
        pf.fit(m, train, val, nn.CrossEntropyLoss(), tracker=other, progress=False)
    with pytest.raises(TypeError, match=r"fit\(tracker_kwargs=\{'max_epochs': 3\}\) is now "
                       r"fit\(schedule=pf\.Schedule\(max_epochs=3\)\)"):
        pf.fit(m, train, val, nn.CrossEntropyLoss(), adam, progress=False,
               tracker_kwargs={"max_epochs": 3, "plot": False})
    bad = DataLoader(TensorDataset(torch.randn(8, 6)), batch_size=4)
    with pytest.raises(TypeError, match=r"\(inputs, targets\)"):
        pf.fit(m, bad, val, nn.CrossEntropyLoss(), adam, progress=False)


def test_fit_continues_a_tracker_and_on_epoch_end():
    train, val, _ = loaders()
    m = model()
    tracker = pf.Tracker(m, adam, schedule=schedule_with(max_epochs=3))
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


def test_fit_steps_a_one_cycle_scheduler_per_batch_like_a_plain_loop():
    """OneCycleLR with scheduler_interval="batch": in every neuron cycle (a fresh optimizer and
    scheduler each) the lr of each batch is the plain PyTorch loop's."""
    train, val, _ = loaders()  # 80 training samples: 5 batches per epoch
    total = 400
    optimizers: list[torch.optim.Optimizer] = []

    def factory(params):
        optimizers.append(torch.optim.SGD(params, lr=0.1, momentum=0.9))
        return optimizers[-1]

    m = model()
    ce = nn.CrossEntropyLoss()
    seen: list[tuple[int, float]] = []  # (optimizer index, lr) per neuron-phase batch

    def loss_fn(out, y):
        if m.phase == "neuron":
            seen.append((len(optimizers) - 1, optimizers[-1].param_groups[0]["lr"]))
        return ce(out, y)

    tracker = pf.fit(m, train, val, loss_fn, factory, progress=False,
                     scheduler_factory=lambda o: torch.optim.lr_scheduler.OneCycleLR(
                         o, max_lr=0.1, total_steps=total),
                     scheduler_interval="batch", schedule=schedule_with(max_epochs=60))
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total)
    plain = []
    for _ in range(total):
        plain.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    cycles = sorted({k for k, _ in seen})
    assert len(cycles) >= 2  # the scheduler was rebuilt for the cycle after the dendrite phase
    for k in cycles:
        lrs = [lr for i, lr in seen if i == k]
        assert len(lrs) % 5 == 0 and lrs == plain[:len(lrs)]
    # the history's lr (at the epoch's end) is the plain loop's after that epoch's batches
    first = [r for r in tracker.records.history if r["cycle"] == 0 and r["phase"] == "neuron"]
    assert [r["lr"] for r in first] == [plain[5 * e] for e in range(1, len(first) + 1)]

def test_fit_scores_a_regression_with_the_loss_not_accuracy(caplog):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    y = x[:, :2] * 3.0 + 1.0  # float targets shaped like the outputs
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16)
    val = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=32)
    m = model()
    loss_fn = nn.MSELoss()
    scores = []
    with caplog.at_level("INFO", logger="perforate.training.fit"):
        pf.fit(m, train, val, loss_fn, adam, progress=False,
               schedule=schedule_with(max_dendrites=0, max_epochs=3),
               on_epoch_end=lambda t, d: scores.append(
                   (t.records.history[-1]["val"], -float(loss_fn(*predict(m, val))), d.event)))
    assert "floating-point targets: scoring with -loss_fn" in caplog.text
    assert len(scores) == 3
    for val_score, expected, event in scores:
        assert val_score < 0
        if event == "continue":  # (a stop restores the best weights)
            assert val_score == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="regression"):
        pf.fit(model(), train, val, loss_fn, adam, metric=metrics.accuracy, progress=False,
               schedule=schedule_with(max_epochs=1))


def test_fit_scores_class_indices_with_accuracy(caplog):
    train, val, _ = loaders()
    m = model()
    scores = []
    with caplog.at_level("INFO", logger="perforate.training.fit"):
        pf.fit(m, train, val, nn.CrossEntropyLoss(), adam, progress=False,
               schedule=schedule_with(max_dendrites=0, max_epochs=2),
               on_epoch_end=lambda t, d: scores.append(
                   (t.records.history[-1]["val"], metrics.accuracy(*predict(m, val)), d.event)))
    assert "integer class targets: scoring with accuracy" in caplog.text
    assert scores[0][2] == "continue" and scores[0][0] == scores[0][1]


def test_task_metric():
    loss_fn = nn.MSELoss()
    assert metrics.task_metric(torch.tensor([0, 2]), loss_fn) is metrics.accuracy
    assert metrics.task_metric(torch.tensor([True]), loss_fn) is metrics.accuracy
    f = metrics.task_metric(torch.tensor([[0.5, 2.0]]), loss_fn)
    assert f(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 2.0]])) == -0.5
    with pytest.raises(ValueError, match="regression"):
        metrics.accuracy(torch.tensor([[0.1, 0.9]]), torch.tensor([[0.0, 3.0]]))


@pytest.mark.parametrize("output_init", ["zero", "least_squares"])
def test_fit_records_the_validation_score_right_after_each_install(output_init):
    train, val, _ = loaders()
    torch.manual_seed(0)
    m = pf.perforate(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)),
                     pf.PerforationConfig.paper(seed=0,
                                                cascade=pf.CascadeCorrelation(output_init=output_init)))
    loss_fn = nn.CrossEntropyLoss()
    tracker = pf.fit(m, train, val, loss_fn, adam, metric=pf.metrics.neg_loss(loss_fn),
                     progress=False, schedule=schedule_with(improvement_threshold=0.0))
    phase = tracker.records.dendrite_phases[0]
    best0 = tracker.records.architectures[0]["best_val"]  # the restored weights' score
    if output_init == "zero":
        assert phase["val_at_install"] == pytest.approx(best0, abs=1e-6)  # a = 0: unchanged
    else:
        assert phase["val_at_install"] != pytest.approx(best0, abs=1e-6)  # the install moved it
