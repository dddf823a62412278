"""One way to rebuild a model from saved state: `perforate.io.rebuild.rebuild`, behind pf.load,
pf.resume and ``perforate export``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import perforate as pf
from conftest import grow, mlp
from perforate.io.rebuild import rebuild
from perforate.training.checkpoint import deployable_weights, read_checkpoint


def grown_model() -> pf.PerforatedModel:
    torch.manual_seed(0)
    model = pf.perforate(mlp(), pf.PerforationConfig.paper(seed=0, candidates=2))
    data = [(torch.randn(8, 5), torch.randint(0, 3, (8,)))]
    grow(model, data, nn.functional.cross_entropy, sets=2, cascade=True)
    return model


def test_rebuild_from_a_config_dict_structure_and_weights_is_exact():
    model = grown_model()
    weights = {k: v.clone() for k, v in model.net.state_dict().items()}
    torch.manual_seed(7)
    again = rebuild(mlp(), model.config.to_dict(), structure=model.structure(), weights=weights)
    assert again.config == model.config and again.structure() == model.structure()
    x = torch.randn(4, 5)
    assert torch.equal(again(x), model(x))
    bare = rebuild(mlp(), model.config)  # no structure, no weights: freshly perforated
    assert bare.num_dendrites == 0 and bare.phase == "neuron"


def test_rebuild_names_what_does_not_fit():
    model = grown_model()
    weights = dict(model.net.state_dict())
    with pytest.raises(pf.LoadError, match="config"):
        rebuild(mlp(), {"candidates": -1})
    with pytest.raises(pf.LoadError, match="saved layer '9'"):
        rebuild(mlp(), model.config, structure={**model.structure(), "9": 1})
    wider = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 4), nn.ReLU(),
                          nn.Linear(4, 3))
    with pytest.raises(pf.LoadError, match=r"'0\.base_layer\.weight'.*\(7, 5\).*\(9, 5\)"):
        rebuild(wider, model.config, structure=model.structure(), weights=weights)
    del weights["4.output_weight"]
    with pytest.raises(pf.LoadError, match=r"lack '4\.output_weight'"):
        rebuild(mlp(), model.config, structure=model.structure(), weights=weights)


def test_a_checkpoint_rebuilds_through_the_same_function(tmp_path):
    torch.manual_seed(0)
    model = pf.perforate(mlp(), pf.PerforationConfig.paper(seed=0))
    tracker = pf.Tracker(model, lambda p: torch.optim.SGD(p, lr=0.1),
                         schedule=pf.Schedule(neuron_patience=1))
    tracker.step(0.5)
    tracker.save_checkpoint(tmp_path)
    structure, weights = deployable_weights(read_checkpoint(tmp_path))
    assert not any(".candidates." in k or k.startswith("net.") for k in weights)
    again = rebuild(mlp(), model.config, structure=structure, weights=weights)
    x = torch.randn(3, 5)
    assert torch.equal(again(x), model(x))
