"""PerforatedModel phases, errors, unload, exact training-state round trip."""

import io

import pytest
import torch
from torch import nn

import perforate as pf
from conftest import SmallCNN, mlp, train_candidates


def _data(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(8, 5), torch.randint(0, 3, (8,))) for _ in range(n)]


def test_phase_errors_are_clear() -> None:
    model = pf.perforate(mlp(), pf.PerforationConfig.paper())
    assert model.phase == "neuron"
    with pytest.raises(pf.PhaseError, match=r"end_dendrite_phase.*neuron phase"):
        model.end_dendrite_phase()
    with pytest.raises(pf.PhaseError, match="candidate_optimizer"):
        model.candidate_optimizer()
    with pytest.raises(pf.PhaseError, match="end_epoch"):
        model.end_epoch()
    with pytest.raises(pf.PhaseError, match="no dendrite set"):
        model.remove_last_dendrites()
    model.begin_dendrite_phase()
    assert model.phase == "dendrite"
    with pytest.raises(pf.PhaseError, match=r"begin_dendrite_phase.*dendrite phase"):
        model.begin_dendrite_phase()
    with pytest.raises(pf.PhaseError, match="no dendrite-phase batch"):
        model.end_dendrite_phase()
    with pytest.raises(pf.PhaseError, match="remove_last_dendrites"):
        model.remove_last_dendrites()
    with pytest.raises(pf.PhaseError, match="export"):
        pf.export(model)


def test_unload_returns_the_original_modules() -> None:
    net = SmallCNN()
    originals = {n: m for n, m in net.named_children()}
    model = pf.perforate(net, pf.PerforationConfig.paper())
    x = torch.randn(2, 2, 8, 8)
    ref = model(x)
    base = model.unload()
    assert base is net
    assert {n: m for n, m in base.named_children()} == originals
    assert torch.equal(base(x), ref)


def test_training_state_round_trip_in_the_dendrite_phase() -> None:
    cfg = pf.PerforationConfig.paper(candidates=2, seed=3)
    model = pf.perforate(mlp(), cfg)
    data = _data()
    model.begin_dendrite_phase()
    train_candidates(model, data, nn.functional.cross_entropy)
    model.end_dendrite_phase()
    model.begin_dendrite_phase()
    train_candidates(model, data, nn.functional.cross_entropy)
    state = model.training_state()

    other = pf.perforate(mlp(), cfg)
    other.load_training_state(state)
    assert other.phase == "dendrite" and other.num_dendrites == 1
    for m in (model, other):  # one more identical epoch on both
        train_candidates(m, data, nn.functional.cross_entropy)
        m.end_dendrite_phase()
    for (k, v), (k2, v2) in zip(model.state_dict().items(), other.state_dict().items(),
                                strict=True):
        assert k == k2 and torch.equal(v, v2), k
    frozen_sets = ("dendrite_weight", "dendrite_bias", "cascade_weight")
    for (n, p), p2 in zip(model.named_parameters(), other.parameters(), strict=True):
        assert p.requires_grad == p2.requires_grad == (not n.endswith(frozen_sets)), n


def test_load_training_state_rejects_other_structure() -> None:
    model = pf.perforate(mlp(), pf.PerforationConfig.paper(target_modules=["0"]))
    other = pf.perforate(mlp(), pf.PerforationConfig.paper(target_modules=["2"]))
    with pytest.raises(pf.LoadError, match="'2'"):
        other.load_training_state(model.training_state())


def test_logs_instead_of_printing(caplog: pytest.LogCaptureFixture, capsys) -> None:
    with caplog.at_level("INFO", logger="perforate"):
        model = pf.perforate(mlp(), pf.PerforationConfig.paper())
        model.begin_dendrite_phase()
    assert "perforated 3 layer(s)" in caplog.text
    assert capsys.readouterr().out == ""


def test_signed_output_init_is_minus_the_sign_of_the_correlation_times_eps() -> None:
    torch.manual_seed(0)
    eps = 0.05
    model = pf.perforate(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)),
                         pf.PerforationConfig.paper(seed=0, cascade=pf.CascadeCorrelation(
                             output_init="signed", output_init_eps=eps)))
    model.begin_dendrite_phase()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 4, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    nn.functional.cross_entropy(model(x), y).backward()  # one batch, no step: one epoch
    signed = {n: m.candidates.correlations() for n, m in model.dendrite_layers().items()}
    model.end_dendrite_phase()
    for name, layer in model.dendrite_layers().items():
        corr = signed[name]  # [K, N] signed Pearson of each candidate with its neuron's error
        best = corr.gather(0, corr.abs().argmax(0, keepdim=True)).squeeze(0)  # [N]
        assert bool((best != 0).all())
        torch.testing.assert_close(layer.output_weight[-1].detach(),
                                   (-torch.sign(best) * eps).float())
    signs = torch.cat([torch.sign(layer.output_weight[-1].detach())
                       for layer in model.dendrite_layers().values()])
    assert {-1.0, 1.0} <= set(signs.tolist())  # both signs occur: the sign is per neuron


def _grown(sets: int = 2) -> pf.PerforatedModel:
    torch.manual_seed(0)
    model = pf.perforate(mlp(), pf.PerforationConfig.paper(candidates=2, seed=1))
    data = _data()
    for _ in range(sets):
        model.begin_dendrite_phase()
        train_candidates(model, data, nn.functional.cross_entropy)
        model.end_dendrite_phase()
    with torch.no_grad():
        for layer in model.dendrite_layers().values():
            layer.output_weight.normal_()
    return model


def test_state_dict_loads_into_a_fresh_model_with_fewer_sets():
    trained = _grown(2)
    fresh = pf.perforate(mlp(), pf.PerforationConfig.paper(candidates=2, seed=1))
    fresh.load_state_dict(trained.state_dict())  # resized on load, strict
    assert fresh.structure() == trained.structure() == {"0": 2, "2": 2, "4": 2}
    x = torch.randn(6, 5)
    assert torch.equal(fresh(x), trained(x))
    assert fresh.count_parameters() == trained.count_parameters()
    buf = io.BytesIO()  # torch.save / torch.load of the state dict, as Lightning does
    torch.save(trained.state_dict(), buf)
    buf.seek(0)
    again = pf.perforate(mlp(), pf.PerforationConfig.paper(candidates=2, seed=1))
    again.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(again(x), trained(x))


def test_a_plain_checkpoint_loads_after_perforate():
    torch.manual_seed(3)
    plain = mlp()
    x = torch.randn(4, 5)
    for target in ("model", "net"):
        model = pf.perforate(mlp(), pf.PerforationConfig.paper())
        (model if target == "model" else model.net).load_state_dict(plain.state_dict())
        assert torch.equal(model(x), plain(x)) and model.num_dendrites == 0
    grown = _grown(1)
    with pytest.raises(RuntimeError, match="Missing key"):  # sets exist: say what is missing
        grown.load_state_dict(plain.state_dict())


def test_dendrite_parameters_keep_their_identity_through_install_and_removal():
    model = pf.perforate(mlp(), pf.PerforationConfig.paper(candidates=2, seed=1))
    before = [id(p) for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # built before any install
    data = _data()
    model.begin_dendrite_phase()
    train_candidates(model, data, nn.functional.cross_entropy)
    model.end_dendrite_phase()
    assert [id(p) for p in model.parameters()] == before
    layer = model.dendrite_layers()["2"]
    assert isinstance(layer.dendrite_weight, nn.Parameter) and \
        not layer.dendrite_weight.requires_grad  # frozen parameters: seen by parameters()
    with torch.no_grad():
        layer.output_weight.fill_(0.1)
    a0 = layer.output_weight.detach().clone()
    loss = nn.functional.cross_entropy(model(data[0][0]), data[0][1])
    loss.backward()
    opt.step()  # the optimizer built before the install trains the new output weights
    assert not torch.equal(layer.output_weight.detach(), a0)
    held = nn.functional.cross_entropy(model(data[0][0]), data[0][1])  # a graph still held
    model.remove_last_dendrites()
    assert [id(p) for p in model.parameters()] == before and model.num_dendrites == 0
    nn.functional.cross_entropy(model(data[0][0]), data[0][1]).backward()  # no stale shape
    del held


@pytest.mark.parametrize(("name", "kwargs"), [("adam", {}), ("adamw", {}),
                                              ("sgd", {"momentum": 0.9}), ("rmsprop", {})])
def test_candidate_optimizer_takes_pytorchs_fastest_step_with_the_same_trajectory(
        name, kwargs) -> None:
    """fused where PyTorch has a kernel for it (Adam, AdamW, SGD on a CPU), else foreach
    (RMSprop), unless the kwargs choose; the trajectory equals the per-tensor loop's: within
    float rounding when fused, bitwise when foreach."""
    flat, chosen = {}, {}
    for extra in ({}, {"foreach": False}):
        torch.manual_seed(0)
        model = pf.perforate(mlp(), pf.PerforationConfig(seed=0, cascade=pf.CascadeCorrelation(
            optimizer=name, optimizer_kwargs={**kwargs, **extra})))
        model.begin_dendrite_phase()
        opt = model.candidate_optimizer()
        group = opt.param_groups[0]
        chosen[bool(extra)] = (bool(group.get("fused")), bool(group["foreach"]))
        for x, y in _data():
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        flat[bool(extra)] = torch.cat([p.detach().flatten() for g in opt.param_groups
                                       for p in g["params"]])
    fused = name != "rmsprop"
    assert chosen == {False: (fused, not fused), True: (False, False)}
    if fused:
        torch.testing.assert_close(flat[False], flat[True], rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(flat[False], flat[True])


def test_fast_step_is_foreach_where_there_is_no_fused_kernel() -> None:
    from perforate.engine.candidate_optimizer import fast_step

    p = nn.Parameter(torch.ones(3))
    assert fast_step(torch.optim.Adam, [p]) == {"fused": True}
    assert fast_step(torch.optim.RMSprop, [p]) == {"foreach": True}
    integer = nn.Parameter(torch.ones(3, dtype=torch.long), requires_grad=False)
    assert fast_step(torch.optim.Adam, [p, integer]) == {"foreach": True}


class _RecurrentAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(5, 6, batch_first=True)
        self.mha = nn.MultiheadAttention(6, 2, batch_first=True)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.rnn(x)[0]
        return self.fc(self.mha(h, h, h)[0])


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_a_plain_checkpoint_of_recurrent_and_attention_layers_loads(preset):
    torch.manual_seed(4)
    plain = _RecurrentAttention()
    config = pf.PerforationConfig() if preset == "default" else pf.PerforationConfig.paper()
    model = pf.perforate(_RecurrentAttention(), config)
    model.load_state_dict(plain.state_dict())  # strict: every key placed, nothing missing
    x = torch.randn(2, 4, 5)
    torch.testing.assert_close(model(x), plain(x))
    assert set(model.structure()) == {"rnn", "mha.q_proj", "mha.k_proj", "mha.v_proj",
                                      "mha.out_proj", "fc"} and model.num_dendrites == 0
