"""The tracker's optimizers (perforate.training.optimizers): the factory's parameters and
parameter groups, schedulers stepped per epoch or per batch, their state in checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau

import perforate as pf
from perforate.training import TrainableParameters
from perforate.training.checkpoint import write_checkpoint


def tiny_model(seed: int = 0) -> pf.PerforatedModel:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    return pf.perforate(net, pf.PerforationConfig.paper(seed=0))


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)


def train_batch(tracker: pf.Tracker, seed: int) -> None:
    x, y = batch(seed)
    tracker.optimizer.zero_grad()
    F.cross_entropy(tracker.model(x), y).backward()
    tracker.optimizer.step()
    tracker.batch_step()


def grow_one_set(tracker: pf.Tracker) -> None:
    """Two neuron epochs (cycle 0 ends), one dendrite epoch: a set is installed."""
    tracker.step(0.5)
    tracker.step(0.4)
    assert tracker.phase == "dendrite"
    train_batch(tracker, 1)
    assert tracker.step().event == "install"


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_a_factory_taking_a_list_of_params_still_works():
    seen = []

    def factory(params):
        seen.append(params)
        return torch.optim.SGD(params, lr=0.1)

    model = tiny_model()
    tracker = pf.Tracker(model, factory,
                         schedule=pf.Schedule(neuron_patience=1, max_dendrite_epochs=1))
    params = seen[0]
    assert isinstance(params, list) and isinstance(params, TrainableParameters)
    assert list(params) == [p for p in model.parameters() if p.requires_grad]
    assert [n for n, _ in params.named] == [n for n, p in model.named_parameters()
                                            if p.requires_grad]
    assert params.model is model
    grow_one_set(tracker)
    # after an install the new (larger) output weights are among the params
    outputs = [m.output_weight for m in model.dendrite_layers().values()]
    assert all(w.shape[0] == 1 for w in outputs)
    assert ids(outputs) <= ids(seen[-1])


def test_param_groups_leave_biases_and_dendrite_output_weights_undecayed():
    model = tiny_model()

    def factory(params):  # the README's example: no weight decay on biases nor dendrites
        return torch.optim.AdamW(pf.param_groups(params, weight_decay=0.1), lr=1e-2)

    tracker = pf.Tracker(model, factory,
                         schedule=pf.Schedule(neuron_patience=1, max_dendrite_epochs=1))
    grow_one_set(tracker)
    decay, rest = tracker.optimizer.param_groups
    net = model.net
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert ids(decay["params"]) == {id(net[0].base_layer.weight), id(net[2].base_layer.weight)}
    assert ids(rest["params"]) == {id(net[0].base_layer.bias), id(net[2].base_layer.bias),
                                   id(net[0].output_weight), id(net[2].output_weight)}
    # a custom rule, and a model instead of the factory's params
    groups = pf.param_groups(model, weight_decay=0.5, no_decay=lambda n, p: "2." in n)
    assert ids(groups[0]["params"]) == {id(net[0].base_layer.weight), id(net[0].base_layer.bias),
                                        id(net[0].output_weight)}
    with pytest.raises(TypeError, match="param_groups"):
        pf.param_groups([torch.zeros(2)], weight_decay=0.1)


def test_the_decay_really_skips_the_no_decay_group():
    model = tiny_model()
    tracker = pf.Tracker(model, lambda params: torch.optim.AdamW(
        pf.param_groups(params, weight_decay=0.5), lr=0.1))
    bias = model.net[0].base_layer.bias
    weight = model.net[0].base_layer.weight
    before_b, before_w = bias.detach().clone(), weight.detach().clone()
    for p in model.parameters():  # zero gradient: AdamW's only change is the decay
        p.grad = torch.zeros_like(p)
    tracker.optimizer.step()
    assert torch.equal(bias, before_b)
    assert torch.allclose(weight, before_w * (1 - 0.1 * 0.5))


def test_fit_and_resume_take_a_param_groups_factory(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    x, y = batch(0)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)

    def factory(params):
        return torch.optim.Adam(pf.param_groups(params, weight_decay=0.01), lr=1e-2)

    model = pf.perforate(make_net(), pf.PerforationConfig.paper(seed=0))
    tracker = pf.fit(model, loader, loader, nn.CrossEntropyLoss(), factory, progress=False,
                     schedule=pf.Schedule(max_epochs=2),
                     tracker_kwargs={"out_dir": tmp_path, "plot": False, "checkpoint_every": 1})
    assert [g["weight_decay"] for g in tracker.optimizer.param_groups] == [0.01, 0.0]
    resumed = pf.resume(tmp_path, make_net(), factory)
    assert [g["weight_decay"] for g in resumed.optimizer.param_groups] == [0.01, 0.0]
    saved, got = tracker.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert saved["param_groups"] == got["param_groups"]
    assert all(torch.equal(saved["state"][k]["exp_avg"], got["state"][k]["exp_avg"])
               for k in saved["state"])


def plain_one_cycle_lrs(steps: int, total: int) -> list[float]:
    """The learning rate of each of `steps` batches in a plain PyTorch loop."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    sched = OneCycleLR(opt, max_lr=0.1, total_steps=total)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_a_per_batch_scheduler_is_stepped_per_batch_and_saved(tmp_path):
    model = tiny_model()

    def one_cycle(opt):
        return OneCycleLR(opt, max_lr=0.1, total_steps=20)

    kw = dict(scheduler_interval="batch", schedule=pf.Schedule(neuron_patience=5),
              out_dir=tmp_path, plot=False, checkpoint_every=1)
    tracker = pf.Tracker(model, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), one_cycle,
                         **kw)
    lrs = []
    for seed in range(3):
        lrs.append(tracker.optimizer.param_groups[0]["lr"])
        train_batch(tracker, seed)
    tracker.step(0.5)  # the epoch's step leaves a per-batch scheduler alone
    assert lrs == plain_one_cycle_lrs(3, 20)
    assert tracker.scheduler.last_epoch == 3
    assert tracker.records.history[0]["lr"] == plain_one_cycle_lrs(4, 20)[3]
    resumed = pf.resume(tmp_path, make_net(), lambda p: torch.optim.SGD(p, lr=0.1,
                                                                        momentum=0.9), one_cycle)
    assert resumed.optimization.interval == "batch"
    assert resumed.scheduler.last_epoch == 3
    assert resumed.optimizer.param_groups[0]["lr"] == tracker.optimizer.param_groups[0]["lr"]


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_batch_step_is_a_no_op_for_an_epoch_scheduler_and_in_a_dendrite_phase():
    model = tiny_model()
    tracker = pf.Tracker(model, lambda p: torch.optim.SGD(p, lr=1.0),
                         lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5),
                         schedule=pf.Schedule(neuron_patience=1))
    tracker.batch_step()
    tracker.batch_step()
    assert tracker.optimizer.param_groups[0]["lr"] == 1.0
    tracker.step(0.5)
    assert tracker.optimizer.param_groups[0]["lr"] == 0.5
    tracker.step(0.4)
    assert tracker.phase == "dendrite"
    tracker.batch_step()  # no scheduler in a dendrite phase: nothing to step, no error


def test_scheduler_interval_is_checked():
    with pytest.raises(ValueError, match="scheduler_interval"):
        pf.Tracker(tiny_model(), lambda p: torch.optim.SGD(p, lr=0.1), scheduler_interval="step")
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        pf.Tracker(tiny_model(), lambda p: torch.optim.SGD(p, lr=0.1),
                   lambda o: ReduceLROnPlateau(o), scheduler_interval="batch")
    with pytest.raises(TypeError, match="scheduler_factory"):
        pf.Tracker(tiny_model(), lambda p: torch.optim.SGD(p, lr=0.1), "cosine")


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_a_checkpoint_without_scheduler_interval_resumes_per_epoch(tmp_path):
    """Checkpoints written before scheduler_interval existed (same format version) load."""
    model = tiny_model()
    tracker = pf.Tracker(model, lambda p: torch.optim.SGD(p, lr=1.0),
                         lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5))
    tracker.step(0.5)
    tracker.save_checkpoint(tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del state["settings"]["scheduler_interval"]
    write_checkpoint(tmp_path, state, {})
    resumed = pf.resume(tmp_path, make_net(), lambda p: torch.optim.SGD(p, lr=1.0),
                        lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5))
    assert resumed.optimization.interval == "epoch"
    assert resumed.optimizer.param_groups[0]["lr"] == 0.5
