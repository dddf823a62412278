"""Dead dendrites: a neuron whose candidates never correlated (no error reached it: a head outside
the loss, a dead ReLU) gets a masked dendrite that adds nothing, learns nothing, is not counted,
and stays masked through export, state_dict and save/load."""

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import perforate as pf

IN, WIDTH = 5, 6


class TwoHeads(nn.Module):
    """A trunk, a head (the loss's) and an auxiliary head of some kind (outside the loss)."""

    def __init__(self, aux: str) -> None:
        super().__init__()
        self.kind = aux
        self.trunk = nn.Linear(IN, WIDTH)
        self.head = nn.Linear(WIDTH, 3)
        self.aux = {"linear": lambda: nn.Linear(WIDTH, 2),
                    "lstm": lambda: nn.LSTM(WIDTH, 2, batch_first=True),
                    "attention": lambda: nn.MultiheadAttention(WIDTH, 2, batch_first=True)}[aux]()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.tanh(self.trunk(x))
        if self.kind == "linear":
            aux = self.aux(h)
        elif self.kind == "lstm":
            aux = self.aux(h)[0]
        else:
            aux = self.aux(h, h, h, need_weights=False)[0]
        return self.head(h).mean(1), aux


def _x(seed: int) -> Tensor:
    return torch.randn(4, 3, IN, generator=torch.Generator().manual_seed(seed))


def _head_loss(out: tuple[Tensor, Tensor], seed: int) -> Tensor:
    target = torch.randn(out[0].shape, generator=torch.Generator().manual_seed(seed))
    return nn.functional.mse_loss(out[0], target)


def _paper(**kw) -> pf.PerforationConfig:
    return pf.PerforationConfig.paper(candidates=2, seed=0, dendrite_activation="sigmoid", **kw)


def _cycle(model: pf.PerforatedModel, loss=_head_loss, *, end_epoch: bool = True) -> None:
    model.begin_dendrite_phase()
    opt = model.candidate_optimizer()
    for b in range(3):
        opt.zero_grad()
        loss(model(_x(b)), b).backward()
        opt.step()
    if end_epoch:
        model.end_epoch()
    model.end_dendrite_phase()


def _aux_layers(model: pf.PerforatedModel) -> dict[str, pf.layers.DendriteLayer]:
    return {n: m for n, m in model.dendrite_layers().items() if n.startswith("aux")}


def _grown(kind: str) -> pf.PerforatedModel:
    """`TwoHeads(kind)` after one dendrite cycle, with random output weights on every set."""
    torch.manual_seed(0)
    model = pf.perforate(TwoHeads(kind), _paper())
    _cycle(model)
    with torch.no_grad():
        for layer in model.dendrite_layers().values():
            layer.output_weight.normal_()
    return model


def _hand_count(kind: str) -> int:
    """The network's own parameters plus one alive set on the trunk and head (none on aux)."""
    own = sum(p.numel() for p in TwoHeads(kind).parameters())
    return own + WIDTH * (IN + 2) + 3 * (WIDTH + 2)


@pytest.mark.parametrize("kind", ["linear", "lstm", "attention"])
def test_a_head_outside_the_loss_gets_masked_dendrites(kind: str) -> None:
    torch.manual_seed(0)
    model = pf.perforate(TwoHeads(kind), _paper())
    _cycle(model)
    aux = _aux_layers(model)
    assert aux and all(m.num_dendrites == 1 for m in aux.values())
    for name, layer in model.dendrite_layers().items():
        expected = 0.0 if name.startswith("aux") else 1.0
        assert torch.equal(layer.dendrite_alive, torch.full_like(layer.dendrite_alive, expected))
    assert model.count_parameters() == _hand_count(kind)

    # Neuron phase with the aux head in the loss: its dead dendrites' a get no gradient, and
    # whatever a holds, sigmoid's g(0) = 0.5 adds nothing.
    x = _x(10)
    with torch.no_grad():
        aux_before = model(x)[1]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    out = model(x)
    (_head_loss(out, 10) + out[1].square().mean()).backward()
    for layer in aux.values():
        assert layer.output_weight.grad is not None
        assert torch.equal(layer.output_weight.grad, torch.zeros_like(layer.output_weight))
    with torch.no_grad():
        for layer in aux.values():
            layer.output_weight.normal_()
        torch.testing.assert_close(model(x)[1], aux_before, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["linear", "lstm", "attention"])
def test_export_folds_the_mask(kind: str) -> None:
    model = _grown(kind)
    exported = pf.export(model).eval()
    model.eval()
    x = _x(11)
    with torch.no_grad():
        for got, ref in zip(exported(x), model(x), strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_a_dead_relu_neuron_gets_a_masked_dendrite_and_no_cascade_entries() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(IN, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        net[0].bias[0] = -100.0  # neuron 0 never fires: its error is always 0
    own = sum(p.numel() for p in net.parameters())
    model = pf.perforate(net, _paper())

    def loss(out: Tensor, seed: int) -> Tensor:
        return _head_loss((out,), seed)

    for _ in range(2):
        _cycle(model, loss)
    first = model.dendrite_layers()["0"]
    assert torch.equal(first.dendrite_alive, torch.tensor([[0.0, 1, 1, 1]] * 2))
    assert torch.equal(model.dendrite_layers()["2"].dendrite_alive, torch.ones(2, 3))
    # per alive neuron and set: V (fan-in), bias, a; plus one cascade entry (set 2 <- set 1)
    assert model.count_parameters() == own + 2 * 3 * (IN + 2) + 3 + 2 * 3 * (4 + 2) + 3

    x = _x(12)[:, 0]
    with torch.no_grad():
        ref = first(x)
        first.output_weight.normal_()
        first.cascade_weight.normal_()
        changed = first(x)
    torch.testing.assert_close(changed[:, 0], ref[:, 0], rtol=0, atol=0)  # the dead neuron
    assert not torch.allclose(changed[:, 1:], ref[:, 1:])
    with torch.no_grad():
        torch.testing.assert_close(pf.export(model)(x), model(x), rtol=1e-5, atol=1e-6)


def test_a_layer_no_error_reached_without_end_epoch_is_dead_not_an_error() -> None:
    model = pf.perforate(TwoHeads("linear"), _paper())
    _cycle(model, end_epoch=False)
    assert torch.equal(model.net.aux.dendrite_alive, torch.zeros(1, 2))
    assert torch.equal(model.net.head.dendrite_alive, torch.ones(1, 3))


@pytest.mark.parametrize("learning", ["none", "task_loss"])
def test_alive_without_correlation_training(learning: str) -> None:
    """"none": nothing is judged (every dendrite alive); "task_loss": alive where it
    correlated."""
    torch.manual_seed(0)
    if learning == "none":
        model = pf.perforate(TwoHeads("linear"), pf.PerforationConfig(seed=0))
        model.grow()
    else:
        model = pf.perforate(TwoHeads("linear"), _paper(dendrite_phase="task_loss"))
        _cycle(model)
    expected = 1.0 if learning == "none" else 0.0
    assert torch.equal(model.net.aux.dendrite_alive, torch.full((1, 2), expected))
    assert torch.equal(model.net.head.dendrite_alive, torch.ones(1, 3))
    assert model.count_parameters() == _hand_count("linear") + (2 * (WIDTH + 2) if
                                                                expected else 0)


@pytest.mark.parametrize("kind", ["linear", "lstm"])
def test_the_mask_survives_state_dict_and_save_pretrained(kind: str, tmp_path: Path) -> None:
    model = _grown(kind)
    fresh = pf.perforate(TwoHeads(kind), _paper())
    fresh.load_state_dict(model.state_dict())
    model.save_pretrained(tmp_path)
    loaded = pf.load(tmp_path, TwoHeads(kind))
    x = _x(13)
    for other in (fresh, loaded):
        for name, layer in other.dendrite_layers().items():
            assert torch.equal(layer.dendrite_alive, model.dendrite_layers()[name].dendrite_alive)
        assert other.count_parameters() == model.count_parameters() == _hand_count(kind)
        with torch.no_grad():
            for got, ref in zip(other(x), model(x), strict=True):
                torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_a_state_saved_without_the_mask_loads_all_alive(tmp_path: Path) -> None:
    model = pf.perforate(TwoHeads("linear"), _paper())
    _cycle(model)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("dendrite_alive")}
    fresh = pf.perforate(TwoHeads("linear"), _paper())
    fresh.load_state_dict(state)
    assert all(torch.equal(m.dendrite_alive, torch.ones_like(m.dendrite_alive))
               for m in fresh.dendrite_layers().values())
