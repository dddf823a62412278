import json

import pytest
from torch import nn

import perforate as pf


def test_defaults_are_the_measured_winner_and_the_paper_is_one_call_away() -> None:
    cfg = pf.PerforationConfig()
    assert cfg == pf.PerforationConfig.anchor()  # Protocol P's winner (docs/algorithm.md)
    assert (cfg.dendrite_learning, cfg.dendrite_activation, cfg.train_dendrites,
            cfg.perforated) == ("none", "sigmoid", True, False)
    assert (cfg.candidate_init, cfg.candidate_weight_std, cfg.candidate_bias_std) == (
        "normal", 0.01, 0.01)
    paper = pf.PerforationConfig.paper()
    assert (paper.candidates, paper.dendrite_activation, paper.dendrite_learning) == (
        4, "tanh", "cc")
    assert paper.perforated and paper.normalize_error and not paper.train_dendrites
    assert (paper.centering, paper.candidate_optimizer, paper.candidate_lr) == (
        "batch", "adam", 1e-2)


def test_round_trip_through_json_keeps_types() -> None:
    cfg = pf.PerforationConfig(target_modules=["fc1", nn.Conv2d], exclude_modules="head",
                               candidates=2, seed=3, centering="running")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["target_modules"] == ["fc1", "type:torch.nn.modules.conv.Conv2d"]
    back = pf.PerforationConfig.from_dict(data)
    assert back.target_modules == ["fc1", nn.Conv2d]
    assert back.exclude_modules == ["head"]
    assert back.candidates == 2 and back.seed == 3 and back.centering == "running"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("candidates", 0, "candidates"),
    ("candidates", 2.5, "candidates"),
    ("dendrite_activation", "swish9", "dendrite_activation"),
    ("dendrite_learning", "backprop", "dendrite_learning"),
    ("centering", "ema", "centering"),
    ("candidate_optimizer", "lbfgs", "candidate_optimizer"),
    ("candidate_lr", 0.0, "candidate_lr"),
    ("candidate_lr", float("nan"), "candidate_lr"),
    ("perforated", "yes", "perforated"),
    ("running_momentum", 1.0, "running_momentum"),
    ("seed", "7", "seed"),
    ("target_modules", [], "target_modules"),
    ("target_modules", [3], "target_modules"),
    ("exclude_modules", [int], "exclude_modules"),
    ("output_init", "random", "output_init"),
])
def test_invalid_values_raise_config_error(field: str, value: object, message: str) -> None:
    with pytest.raises(pf.ConfigError, match=message):
        pf.PerforationConfig(**{field: value})


def test_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(pf.ConfigError, match="bogus"):
        pf.PerforationConfig.from_dict({"bogus": 1})
