"""The cycle controller on a real (tiny) model, driven by scripted validation scores."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import perforate as pf
from perforate.errors import PhaseError


def tiny_model(seed: int = 0) -> pf.PerforatedModel:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    return pf.perforate(net, pf.PerforationConfig.paper(seed=0))


def stamp(model: pf.PerforatedModel, value: float) -> None:
    """Mark the weights with the epoch they were 'trained' in."""
    with torch.no_grad():
        model.net[0].base_layer.weight.fill_(value)
        model.net[2].base_layer.bias.fill_(-value)
        for layer in model.dendrite_layers().values():
            layer.output_weight.fill_(value / 100)


def train_candidates(model: pf.PerforatedModel, optimizer: torch.optim.Optimizer,
                     seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def test_scripted_cycle_restores_grows_and_reverts():
    model = tiny_model()
    tracker = pf.Tracker(model, sgd,
                         schedule=pf.Schedule(neuron_patience=2, dendrite_patience=5,
                                              max_dendrite_epochs=2))
    first_optimizer = tracker.optimizer
    assert tracker.scheduler is None and tracker.phase == "neuron"

    # ---- cycle 0: best 0.3 at epoch 2; cycle ends at epoch 4
    snapshots = {}
    for epoch, score in enumerate([0.1, 0.3, 0.2, 0.2], start=1):
        stamp(model, epoch)
        snapshots[epoch] = clone_state(model)
        d = tracker.step(score, test_score=score / 2, train_score=1.0)
    assert (d.event, d.restructured, d.phase, d.epoch, d.done) == ("grow", True, "dendrite", 4,
                                                                   False)
    assert model.phase == "dendrite"
    assert tracker.optimizer is model.candidate_optimizer() and tracker.scheduler is None
    assert tracker.optimizer is not first_optimizer
    # the best weights of the cycle were restored before the dendrite phase
    got = {k: v for k, v in model.state_dict().items() if ".candidates." not in k}
    for k, v in snapshots[2].items():
        assert torch.equal(got[k], v), k
    arch0 = tracker.records.architectures[0]
    assert (arch0["cycle"], arch0["dendrites"], arch0["params"], arch0["epochs"],
            arch0["best_epoch"], arch0["best_val"], arch0["test_at_best_val"]) == \
        (0, 0, 51, 4, 2, 0.3, 0.15)

    # ---- dendrite phase: no val score needed; recorded flat at the restored values
    for epoch in (5, 6):
        train_candidates(model, tracker.optimizer, seed=epoch)
        d = tracker.step()
    assert (d.event, d.phase, d.dendrites, d.cycle) == ("install", "neuron", 1, 1)
    rows = tracker.records.history[4:6]
    assert [r["phase"] for r in rows] == ["dendrite", "dendrite"]
    assert all(r["val"] == 0.3 and r["test"] == 0.15 and r["train"] == 1.0 for r in rows)
    assert all(0 < r["corr"] <= 1 for r in rows)
    phases = tracker.records.dendrite_phases
    assert len(phases) == 1 and phases[0]["epochs"] == 2
    assert set(tracker.records.dendrite_phases[0]["layers"]) == {"0", "2"}
    # fresh optimizer over the new parameter set (the new output weights included)
    params = {id(p) for g in tracker.optimizer.param_groups for p in g["params"]}
    assert all(id(m.output_weight) in params for m in model.dendrite_layers().values())
    assert model.count_parameters() > 51

    # ---- cycle 1: improves on cycle 0 (0.5 > 0.3); best at epoch 8
    for epoch, score in zip(range(7, 11), [0.35, 0.5, 0.4, 0.4], strict=True):
        stamp(model, epoch)
        snapshots[epoch] = clone_state(model)
        d = tracker.step(score, test_score=score / 2)
    assert d.event == "grow" and tracker.records.architectures[1]["improved"]
    for epoch in (11, 12):
        train_candidates(model, tracker.optimizer, seed=epoch)
        d = tracker.step()
    assert d.event == "install" and model.num_dendrites == 2

    # ---- cycle 2: only ties cycle 1's 0.5 -> stop, remove set 2, restore cycle 1's best
    for epoch, score in zip(range(13, 16), [0.5, 0.45, 0.4], strict=True):
        stamp(model, epoch)
        d = tracker.step(score, test_score=0.9)
    assert (d.event, d.done, d.restructured, d.dendrites) == ("stop", True, True, 1)
    assert model.num_dendrites == 1 and model.phase == "neuron"
    assert_state_equal(model, snapshots[8])
    assert [a["kept"] for a in tracker.records.architectures] == [False, True, False]
    assert [a["improved"] for a in tracker.records.architectures] == [True, True, False]
    assert tracker.best_val == 0.5 and tracker.test_at_best_val == 0.25
    assert tracker.done and "did not improve" in tracker.schedule.stop_reason
    assert [r["event"] for r in tracker.records.history] == [
        "best", "best", "", "grow", "", "install", "best", "best", "", "grow", "", "install",
        "best", "", "stop"]
    assert [r["epoch"] for r in tracker.records.history] == list(range(1, 16))
    with pytest.raises(PhaseError, match="done"):
        tracker.step(1.0)


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_restart_control_restores_and_renews_optimizer_and_scheduler():
    model = tiny_model()
    tracker = pf.Tracker(model, lambda p: torch.optim.SGD(p, lr=1.0),
                         lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5),
                         schedule=pf.Schedule(neuron_patience=2, add_dendrites=False))
    snapshots = {}
    scores = [0.1, 0.3, 0.2, 0.2, 0.35, 0.3, 0.3, 0.34, 0.2, 0.2]
    events = []
    for epoch, score in enumerate(scores, start=1):
        stamp(model, epoch)
        snapshots[epoch] = clone_state(model)
        before = tracker.optimizer
        d = tracker.step(score)
        events.append(d.event)
        if d.event == "restart":
            assert tracker.optimizer is not before and model.num_dendrites == 0
            best = tracker.records.architectures[-1]["best_epoch"]
            assert_state_equal(model, snapshots[best])
    assert events == ["continue"] * 3 + ["restart"] + ["continue"] * 2 + ["restart"] + \
        ["continue"] * 2 + ["stop"]
    # the scheduler is stepped once per epoch and rebuilt (lr reset) at each restart
    assert [r["lr"] for r in tracker.records.history] == [1.0, 0.5, 0.25, 0.125, 1.0, 0.5, 0.25,
                                                  1.0, 0.5, 0.25]
    assert tracker.records.dendrite_phases == [] and all(a["dendrites"] == 0
                                                 for a in tracker.records.architectures)
    assert_state_equal(model, snapshots[5])  # cycle 1 (best 0.35) is the final model
    assert tracker.final_architecture["cycle"] == 1


def test_reduce_on_plateau_gets_the_val_score():
    model = tiny_model()
    tracker = pf.Tracker(model, sgd,
                         lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
        o, mode="max", patience=0, factor=0.5),
                         schedule=pf.Schedule(neuron_patience=10))
    for score in [0.1, 0.5, 0.4]:
        tracker.step(score)
    assert tracker.scheduler.best == 0.5
    assert tracker.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_step_arguments_are_checked():
    model = tiny_model()
    tracker = pf.Tracker(model, sgd, schedule=pf.Schedule(neuron_patience=1, max_dendrite_epochs=1))
    with pytest.raises(ValueError, match="val_score"):
        tracker.step(None)
    with pytest.raises(pf.NonFiniteError, match="NaN"):
        tracker.step(math.nan)
    with pytest.raises(pf.NonFiniteError, match="val score is inf"):
        tracker.step(math.inf)
    with pytest.raises(ValueError, match="reserved"):
        tracker.step(0.5, extra={"val": 0.1})
    with pytest.raises(TypeError, match="number"):
        tracker.step("0.5")
    tracker.step(torch.tensor(0.5), extra={"val_acc": 0.9})
    assert tracker.records.history[-1]["val"] == 0.5 and tracker.records.extra_names == ["val_acc"]


def test_constructor_checks():
    with pytest.raises(TypeError, match="PerforatedModel"):
        pf.Tracker(nn.Linear(2, 2), sgd)
    with pytest.raises(ValueError, match="out_dir"):
        pf.Tracker(tiny_model(), sgd, checkpoint_every=1)
    with pytest.raises(TypeError, match="optimizer_factory"):
        pf.Tracker(tiny_model(), None)
    with pytest.raises(TypeError, match="Optimizer"):
        pf.Tracker(tiny_model(), lambda p: "adam")
    model = tiny_model()
    model.begin_dendrite_phase()
    with pytest.raises(PhaseError):
        pf.Tracker(model, sgd)


def test_schedule_settings_are_given_once_as_a_schedule():
    with pytest.raises(TypeError, match=r"^Tracker\(neuron_patience=5\) is now "
                       r"Tracker\(schedule=pf\.Schedule\(neuron_patience=5\)\)"):
        pf.Tracker(tiny_model(), sgd, neuron_patience=5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'patience'"):
        pf.Tracker(tiny_model(), sgd, patience=5)
    with pytest.raises(TypeError, match=r"pf\.Schedule"):
        pf.Tracker(tiny_model(), sgd, schedule={"neuron_patience": 5})
    given = pf.Schedule(neuron_patience=5, mode="min")
    tracker = pf.Tracker(tiny_model(), sgd, schedule=given)
    assert tracker.schedule is not given  # the tracker runs its own copy
    assert tracker.schedule.settings() == given.settings()
    assert tracker.settings()["schedule"] == {**pf.Schedule().settings(), "neuron_patience": 5,
                                              "mode": "min"}
    tracker.step(0.5)
    assert (tracker.schedule.epoch, given.epoch) == (1, 0)


def test_max_epochs_inside_dendrite_phase_leaves_no_extra_set():
    model = tiny_model()
    tracker = pf.Tracker(model, sgd,
                         schedule=pf.Schedule(neuron_patience=1, max_dendrite_epochs=10,
                                              max_epochs=4))
    stamp(model, 1)
    best = clone_state(model)
    tracker.step(0.5)
    stamp(model, 2)
    tracker.step(0.4)  # cycle 0 ends -> dendrite phase
    train_candidates(model, tracker.optimizer)
    tracker.step()
    train_candidates(model, tracker.optimizer)
    d = tracker.step()
    assert d.done and d.event == "stop" and model.num_dendrites == 0
    assert model.phase == "neuron"
    assert_state_equal(model, best)


@pytest.mark.parametrize("where", ["neuron", "dendrite"])
def test_state_dict_roundtrip_mid_phase(where):
    """A state taken mid neuron cycle, or mid dendrite phase (after a dendrite epoch, with
    candidate statistics and a best candidate per neuron), continues exactly."""
    def drive_one(tracker, epoch):
        train_candidates(tracker.model, tracker.optimizer, seed=epoch)
        if tracker.phase == "dendrite":
            tracker.step()
        else:
            tracker.step(math.sin(epoch), test_score=0.5)

    kw = dict(schedule=pf.Schedule(neuron_patience=2, dendrite_patience=5, max_dendrite_epochs=3))
    a = pf.Tracker(tiny_model(), sgd, **kw)
    epoch = 0
    while True:  # to the first epoch of the wanted phase that follows an epoch of it
        epoch += 1
        drive_one(a, epoch)
        last = a.records.history[-1]
        if a.phase == where and last["phase"] == where and last["cycle"] > 0:
            break
    assert a.phase == where and not a.done
    if where == "dendrite":
        pools = [m.candidates for m in a.perforated.dendrite_layers().values()]
        assert all(int(p.epochs) >= 1 and float(p.best_corr.max()) > 0 for p in pools)
    else:
        assert a.perforated.num_dendrites == 1 and a.schedule.cycle_best is not None
    b = pf.Tracker(tiny_model(seed=5), sgd, **kw)
    b.load_state_dict(a.state_dict())
    assert b.phase == where and b.epoch == a.epoch
    assert_state_equal(b.perforated, clone_state(a.perforated))
    for e in range(epoch + 1, 60):
        for t in (a, b):
            if not t.done:
                drive_one(t, e)
    assert a.done and b.done

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(a.records.history) == strip(b.records.history)
    assert strip(a.records.architectures) == strip(b.records.architectures)
    assert_state_equal(b.perforated, clone_state(a.perforated))


def test_retry_drops_the_failed_set_restores_the_best_weights_and_grows_again():
    model = tiny_model()
    tracker = pf.Tracker(model, sgd,
                         schedule=pf.Schedule(neuron_patience=1, dendrite_patience=5,
                                              max_dendrite_epochs=1, dendrite_tries=2))
    snapshots = {}
    for epoch, score in enumerate([0.3, 0.2], start=1):  # cycle 0: best 0.3 at epoch 1
        stamp(model, epoch)
        snapshots[epoch] = clone_state(model)
        tracker.step(score)
    train_candidates(model, tracker.optimizer)
    assert tracker.step().event == "install" and model.num_dendrites == 1
    first_set = model.dendrite_layers()["0"].dendrite_weight.detach().clone()
    for epoch, score in zip((4, 5), [0.25, 0.2], strict=True):  # cycle 1 does not improve
        stamp(model, epoch)
        d = tracker.step(score)
    assert (d.event, d.phase, d.dendrites) == ("retry", "dendrite", 0)
    got = {k: v for k, v in model.state_dict().items() if ".candidates." not in k}
    assert got.keys() == snapshots[1].keys()
    for k, v in snapshots[1].items():  # the best cycle's weights, without the failed set
        assert torch.equal(got[k], v), k
    assert tracker.optimizer is model.candidate_optimizer()
    train_candidates(model, tracker.optimizer, seed=1)
    d = tracker.step()
    assert d.event == "install" and model.num_dendrites == 1
    assert tracker.records.history[-1]["val"] == 0.3  # dendrite epochs record the restored scores
    # the retry drew other candidates than the failed try
    assert not torch.equal(model.dendrite_layers()["0"].dendrite_weight.detach(), first_set)
    for score in (0.4, 0.3):  # the retried set improves: training goes on
        d = tracker.step(score)
    assert d.event == "grow" and not tracker.done
    assert [a["improved"] for a in tracker.records.architectures] == [True, False, True]
    assert tracker.settings()["schedule"]["dendrite_tries"] == 2


def test_untrained_dendrites_are_added_without_a_dendrite_phase():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    model = pf.perforate(net, pf.PerforationConfig(seed=0))
    tracker = pf.Tracker(model, sgd, schedule=pf.Schedule(neuron_patience=1))
    tracker.step(0.3)
    d = tracker.step(0.2)
    assert (d.event, d.phase, d.dendrites, d.cycle) == ("grow", "neuron", 1, 1)
    assert tracker.records.dendrite_phases[0]["epochs"] == 0
    params = {id(p) for g in tracker.optimizer.param_groups for p in g["params"]}
    layer = model.dendrite_layers()["0"]
    assert {id(layer.dendrite_weight), id(layer.output_weight)} <= params  # trained now


def test_a_nan_batch_in_the_users_loop_raises_naming_the_layer_and_never_grows():
    """Default config: a NaN batch makes every weight NaN while an accuracy stays a number;
    `step` raises before recording the epoch, so the diverged cycle cannot end in a growth."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    model = pf.perforate(net, pf.PerforationConfig())
    tracker = pf.Tracker(model, lambda p: torch.optim.Adam(p, 1e-2),
                         schedule=pf.Schedule(neuron_patience=1))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)

    def epoch(poison: bool) -> float:
        inputs = x.clone()
        if poison:
            inputs[5, 2] = float("nan")
        tracker.optimizer.zero_grad()
        F.cross_entropy(tracker.model(inputs), y).backward()
        tracker.optimizer.step()
        with torch.no_grad():
            return float((tracker.model(x).argmax(1) == y).float().mean())  # finite

    tracker.step(epoch(False))
    before = clone_state(model)
    score = epoch(True)
    assert math.isfinite(score)
    with pytest.raises(pf.NonFiniteError, match=r"epoch 2: parameter '0\.base_layer\.weight' "
                                                r"of layer '0' is not finite"):
        tracker.step(score)
    assert len(tracker.records.history) == 1 and tracker.epoch == 1 and tracker.phase == "neuron"
    assert tracker.records.dendrite_phases == [] and model.num_dendrites == 0
    assert not tracker.done
    assert before.keys() == model.state_dict().keys()  # nothing restored, nothing grown
    assert not bool(model.net[0].base_layer.weight.isfinite().all())


def test_a_dendrite_epoch_without_batches_raises_instead_of_installing_a_dead_set():
    model = tiny_model()
    tracker = pf.Tracker(model, sgd,
                         schedule=pf.Schedule(neuron_patience=1, dendrite_patience=1,
                                              max_dendrite_epochs=1))
    tracker.step(0.5)
    assert tracker.step(0.4).phase == "dendrite"
    with pytest.raises(PhaseError, match="no batches were seen in this dendrite epoch"):
        tracker.step()
    assert tracker.phase == "dendrite" and model.num_dendrites == 0
    assert len(tracker.records.history) == 2 and tracker.records.dendrite_phases == []
    train_candidates(tracker.model, tracker.optimizer)  # then it goes on as usual
    decision = tracker.step()
    assert decision.event == "install" and model.num_dendrites == 1
    assert tracker.records.dendrite_phases[-1]["layers"]["0"]["alive"] > 0
