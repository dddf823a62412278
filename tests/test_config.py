import copy
import dataclasses
import importlib
import json
import pickle
import sys
import types
from pathlib import Path

import pytest
from torch import nn

import perforate as pf


def test_defaults_are_the_measured_winner_and_the_paper_is_one_call_away() -> None:
    cfg = pf.PerforationConfig()  # Protocol P's winner (docs/algorithm.md)
    assert (cfg.dendrite_phase, cfg.dendrite_activation, cfg.train_dendrites,
            cfg.perforated) == ("none", "sigmoid", True, False)
    assert (cfg.dendrite_init, cfg.dendrite_weight_std, cfg.dendrite_bias_std) == (
        "normal", 0.01, 0.01)
    paper = pf.PerforationConfig.paper()
    assert (paper.cascade.candidates, paper.dendrite_activation, paper.dendrite_phase) == (
        4, "tanh", "cascade_correlation")
    assert paper.perforated and paper.cascade.normalize_error and not paper.train_dendrites
    assert (paper.cascade.centering, paper.cascade.optimizer, paper.cascade.lr) == (
        "batch", "adam", 1e-2)
    assert (paper.dendrite_init, paper.dendrite_weight_std) == ("fan_in", 1.0)
    literal = pf.PerforationConfig.paper(literal=True, candidates=8)
    assert (literal.cascade.centering, literal.cascade.normalize_error,
            literal.cascade.candidates) == ("running", False, 8)
    assert not hasattr(pf.PerforationConfig, "anchor")  # it was the default (0.2)


def test_the_top_level_holds_what_the_default_uses_and_choices_are_literals() -> None:
    import typing

    top = {f.name for f in dataclasses.fields(pf.PerforationConfig)}
    assert len(top) <= 14 and "cascade" in top
    assert not top & {f.name for f in dataclasses.fields(pf.CascadeCorrelation)}
    hints = typing.get_type_hints(pf.PerforationConfig)
    assert typing.get_args(hints["dendrite_phase"]) == ("none", "cascade_correlation",
                                                        "task_loss")
    assert typing.get_args(typing.get_type_hints(pf.CascadeCorrelation)["output_init"]) == (
        "zero", "signed", "least_squares")


@pytest.mark.parametrize(("old", "new"), [
    ("candidates", "cascade=pf.CascadeCorrelation(candidates=...)"),
    ("dendrite_learning", "dendrite_phase='cascade_correlation'/'task_loss'/'none'"),
    ("candidate_init", "candidate_init is now dendrite_init"),
    ("gd_output_init_std", "CascadeCorrelation(task_loss_output_std=...)"),
])
def test_an_old_field_name_raises_naming_the_new_one(old: str, new: str) -> None:
    value = {"candidates": 2, "dendrite_learning": "cc", "candidate_init": "normal",
             "gd_output_init_std": 0.1}[old]
    makers = [pf.PerforationConfig, pf.PerforationConfig().replace]
    if old != "candidates":  # paper(candidates=K) is the preset's own argument
        makers.append(pf.PerforationConfig.paper)
    for make in makers:
        with pytest.raises(TypeError, match=r"renamed in 0\.2") as info:
            make(**{old: value})
        assert new in str(info.value)


def test_a_flat_config_of_0_1_loads_with_every_field_in_its_new_place() -> None:
    old = {"target_modules": None, "exclude_modules": None, "candidates": 3,
           "dendrite_activation": "tanh", "dendrite_learning": "gd", "perforated": True,
           "train_dendrites": False, "objective": "correlation", "sign_source": "running",
           "centering": "running", "normalize_error": False, "candidate_optimizer": "sgd",
           "candidate_lr": 0.5, "seed": 7, "candidate_optimizer_kwargs": {"momentum": 0.9},
           "candidate_init": "fan_in", "candidate_weight_std": 1.5, "candidate_bias_std": 0.5,
           "running_momentum": 0.9, "min_candidate_variance": 1e-5, "output_init": "signed",
           "output_init_eps": 0.01, "output_init_shrink": 0.5, "dendrite_inputs": None,
           "dendrite_input_selection": "random", "dendrite_rank": 4,
           "gd_output_init_std": 0.02}
    cfg = pf.PerforationConfig.from_dict(old)
    assert cfg == pf.PerforationConfig(
        dendrite_activation="tanh", dendrite_phase="task_loss", perforated=True,
        train_dendrites=False, seed=7, dendrite_init="fan_in", dendrite_weight_std=1.5,
        dendrite_bias_std=0.5, dendrite_rank=4, cascade=pf.CascadeCorrelation(
            candidates=3, objective="correlation", sign_source="running", centering="running",
            normalize_error=False, optimizer="sgd", lr=0.5, optimizer_kwargs={"momentum": 0.9},
            running_momentum=0.9, min_variance=1e-5, output_init="signed",
            output_init_eps=0.01, output_init_shrink=0.5, task_loss_output_std=0.02))
    for phase_0_1, phase in (("cc", "cascade_correlation"), ("none", "none")):
        assert pf.PerforationConfig.from_dict(
            {"dendrite_learning": phase_0_1}).dendrite_phase == phase
    assert pf.PerforationConfig.from_dict(cfg.to_dict()) == cfg


def test_round_trip_through_json_keeps_types() -> None:
    cfg = pf.PerforationConfig(target_modules=["fc1", nn.Conv2d], exclude_modules="head",
                               cascade=pf.CascadeCorrelation(candidates=2,
                                                             centering="running"), seed=3)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["target_modules"] == ["fc1", "type:torch.nn.modules.conv.Conv2d"]
    back = pf.PerforationConfig.from_dict(data)
    assert back.target_modules == ("fc1", nn.Conv2d)
    assert back.exclude_modules == ("head",)
    assert back.cascade.candidates == 2 and back.seed == 3
    assert back.cascade.centering == "running"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("dendrite_activation", "swish9", "dendrite_activation"),
    ("dendrite_phase", "cc", "dendrite_phase must be one of 'none', 'cascade_correlation'"),
    ("dendrite_init", "xavier", "dendrite_init"),
    ("perforated", "yes", "perforated"),
    ("seed", "7", "seed"),
    ("target_modules", [], "target_modules"),
    ("target_modules", [3], "target_modules"),
    ("exclude_modules", [int], "exclude_modules"),
    ("cascade", {"candidates": 2}, "cascade must be a CascadeCorrelation"),
])
def test_invalid_values_raise_config_error(field: str, value: object, message: str) -> None:
    with pytest.raises(pf.ConfigError, match=message):
        pf.PerforationConfig(**{field: value})


@pytest.mark.parametrize(("field", "value"), [
    ("candidates", 0), ("candidates", 2.5), ("centering", "ema"), ("optimizer", "lbfgs"),
    ("lr", 0.0), ("lr", float("nan")), ("running_momentum", 1.0), ("output_init", "random"),
    ("objective", "mse"), ("normalize_error", 1),
])
def test_invalid_cascade_values_raise_config_error_naming_the_field(field: str,
                                                                   value: object) -> None:
    with pytest.raises(pf.ConfigError, match=f"cascade.{field}"):
        pf.CascadeCorrelation(**{field: value})


def test_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(pf.ConfigError, match="bogus"):
        pf.PerforationConfig.from_dict({"bogus": 1})


def _evil_module(tmp_path, monkeypatch, name: str) -> Path:
    """A module `name` on sys.path that writes ``tmp_path/ran`` when imported, and defines
    ``Layer(nn.Linear)``, ``Outer.Inner`` and ``not_a_module``. Returns the marker path."""
    marker = tmp_path / "ran"
    (tmp_path / f"{name}.py").write_text(
        f"import pathlib\nfrom torch import nn\npathlib.Path({str(marker)!r}).write_text('x')\n"
        "class Layer(nn.Linear):\n    pass\n"
        "class Outer:\n    class Inner(nn.Linear):\n        pass\n"
        "not_a_module = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return marker


def test_a_saved_type_selector_never_imports_its_module(tmp_path, monkeypatch) -> None:
    marker = _evil_module(tmp_path, monkeypatch, "evil_cfg_types")
    with pytest.raises(pf.ConfigError, match=r"unknown module type 'evil_cfg_types\.Layer'.*"
                       r"import evil_cfg_types"):
        pf.PerforationConfig.from_dict({"target_modules": ["fc", "type:evil_cfg_types.Layer"]})
    with pytest.raises(pf.ConfigError,
                       match=r"evil_cfg_types\.Outer\.Inner.*`import evil_cfg_types`"):
        pf.PerforationConfig.from_dict({"exclude_modules": ["type:evil_cfg_types.Outer.Inner"]})
    assert not marker.exists()
    # the user who trusts the module imports it first; then the saved types resolve
    try:
        module = importlib.import_module("evil_cfg_types")
        assert marker.read_text() == "x"
        cfg = pf.PerforationConfig.from_dict({
            "target_modules": ["fc", "type:evil_cfg_types.Layer"],
            "exclude_modules": ["type:evil_cfg_types.Outer.Inner"]})
        assert cfg.target_modules == ("fc", module.Layer)
        assert cfg.exclude_modules == (module.Outer.Inner,)
        assert pf.PerforationConfig.from_dict(cfg.to_dict()) == cfg
        with pytest.raises(pf.ConfigError, match=r"not an nn\.Module subclass"):
            pf.PerforationConfig.from_dict(
                {"target_modules": ["type:evil_cfg_types.not_a_module"]})
    finally:
        sys.modules.pop("evil_cfg_types", None)


def test_saved_type_selectors_resolve_torch_layers_without_module_getattr(monkeypatch) -> None:
    cfg = pf.PerforationConfig.from_dict({"target_modules": [
        "type:torch.nn.modules.linear.Linear", "type:torch.nn.Conv2d", "type:torch.nn.LSTM"]})
    assert cfg.target_modules == (nn.Linear, nn.Conv2d, nn.LSTM)
    with pytest.raises(pf.ConfigError, match=r"not an nn\.Module subclass"):
        pf.PerforationConfig.from_dict({"target_modules": ["type:collections.OrderedDict"]})
    # a module-level __getattr__ (lazy imports) is never called to resolve a saved name
    lazy = types.ModuleType("lazy_cfg_types")
    calls: list[str] = []
    lazy.__getattr__ = lambda name: calls.append(name) or nn.Linear  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lazy_cfg_types", lazy)
    with pytest.raises(pf.ConfigError, match=r"unknown module type 'lazy_cfg_types\.Layer'"):
        pf.PerforationConfig.from_dict({"target_modules": ["type:lazy_cfg_types.Layer"]})
    assert calls == []


def test_config_is_immutable_and_replace_makes_a_validated_copy() -> None:
    selectors = ["fc1", nn.Conv2d]
    kwargs = {"betas": (0.8, 0.9)}
    cfg = pf.PerforationConfig(target_modules=selectors,
                               cascade=pf.CascadeCorrelation(optimizer_kwargs=kwargs))
    selectors.append("fc2")  # the caller's list and dict are not shared
    kwargs["eps"] = 1.0
    assert cfg.target_modules == ("fc1", nn.Conv2d)
    assert cfg.cascade.optimizer_kwargs == {"betas": (0.8, 0.9)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = -5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cascade.candidates = -5  # type: ignore[misc]
    with pytest.raises(TypeError, match="immutable"):
        cfg.cascade.optimizer_kwargs["eps"] = 1.0
    with pytest.raises(pf.ConfigError, match="candidates"):
        cfg.replace(cascade=pf.CascadeCorrelation(candidates=-5))
    two = cfg.replace(cascade=pf.CascadeCorrelation(candidates=2))
    assert two.cascade.candidates == 2 and cfg.cascade.candidates == 4
    data = cfg.to_dict()  # plain lists and dicts, as before
    assert type(data["target_modules"]) is list
    assert type(data["cascade"]["optimizer_kwargs"]) is dict
    for copied in (copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg)),
                   pf.PerforationConfig.from_dict(json.loads(json.dumps(data)))):
        assert json.dumps(copied.to_dict()) == json.dumps(data)


@pytest.mark.parametrize(("optimizer", "kwargs", "message"), [
    ("adam", {"bogus": 1}, "Adam takes no 'bogus'"),
    ("sgd", {"betas": (0.9, 0.99)}, "SGD takes no 'betas'"),
    ("adam", {"lr": 0.1}, "'lr' is set by the library"),
    ("adam", {"betas": (2.0, 0.9)}, "Invalid beta"),
    ("rmsprop", {"momentum": -1.0}, "momentum"),
    ("adamw", {"fused": True, "foreach": True}, "cannot both"),
])
def test_candidate_optimizer_kwargs_are_checked_at_construction(optimizer, kwargs,
                                                                message) -> None:
    with pytest.raises(pf.ConfigError, match=message):
        pf.PerforationConfig(cascade=pf.CascadeCorrelation(optimizer=optimizer,
                                                           optimizer_kwargs=kwargs))


def test_valid_candidate_optimizer_kwargs_pass() -> None:
    for optimizer, kwargs in [("sgd", {"momentum": 0.9, "nesterov": True}),
                              ("adam", {"betas": [0.5, 0.9], "fused": True}),
                              ("rmsprop", {"alpha": 0.9, "foreach": False})]:
        cfg = pf.PerforationConfig(cascade=pf.CascadeCorrelation(optimizer=optimizer,
                                                                 optimizer_kwargs=kwargs))
        assert cfg.cascade.optimizer_kwargs == kwargs


def test_dendrite_inputs_above_a_layers_fan_in_is_named_in_one_warning(caplog) -> None:
    net = nn.Sequential(nn.Linear(20, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
    with caplog.at_level("WARNING", logger="perforate.engine.model"):
        model = pf.perforate(net, pf.PerforationConfig(dendrite_inputs=8))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["dendrite_inputs=8 is more than the fan-in of 2 layer(s): '2' (6), "
                        "'4' (3); their dendrites see all of their inputs"]
    model.grow()
    seen = {n: int(layer.dendrite_mask[0].sum(-1).max()) for n, layer
            in model.dendrite_layers().items()}
    assert seen == {"0": 8, "2": 6, "4": 3}


def test_differing_fields_name_nested_knobs_and_ignore_the_selectors_spelling() -> None:
    from perforate.config import differing_fields

    a = pf.PerforationConfig.paper(target_modules=["fc1", nn.Linear])
    b = pf.PerforationConfig.from_dict(json.loads(json.dumps(a.to_dict())))
    assert differing_fields(a, b) == []
    c = b.replace(seed=3, cascade=b.cascade.replace(candidates=2, lr=0.5))
    assert differing_fields(a, c) == ["seed", "cascade.candidates", "cascade.lr"]
