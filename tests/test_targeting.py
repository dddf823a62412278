import logging

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

import perforate as pf
from conftest import SmallCNN, mlp
from perforate.engine.layers import default_registry
from perforate.engine.targeting import select_targets


def targets(net: nn.Module, **kw: object) -> list[str]:
    return select_targets(net, pf.PerforationConfig.paper(**kw), default_registry())


def test_default_wraps_every_linear_and_conv() -> None:
    assert targets(SmallCNN()) == ["conv1", "conv2", "fc1", "fc2"]
    net = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Conv3d(3, 2, 1), nn.LayerNorm(4))
    assert targets(net) == ["0", "1"]


def test_selectors_by_name_suffix_regex_type_and_container() -> None:
    net = nn.Sequential()
    net.add_module("backbone", nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3)))
    net.add_module("head", nn.Linear(3, 1))
    assert targets(net, target_modules=["head"]) == ["head"]
    assert targets(net, target_modules="backbone.2") == ["backbone.2"]
    assert targets(net, target_modules=["2"]) == ["backbone.2"]  # suffix
    assert targets(net, target_modules=[r"backbone\.\d"]) == ["backbone.0", "backbone.2"]
    assert targets(net, target_modules=["backbone"]) == ["backbone.0", "backbone.2"]
    assert targets(net, target_modules=[nn.Linear]) == ["backbone.0", "backbone.2", "head"]
    assert targets(net, exclude_modules=["head"]) == ["backbone.0", "backbone.2"]
    assert targets(net, exclude_modules=["backbone"]) == ["head"]


def test_target_matching_nothing_lists_what_exists() -> None:
    with pytest.raises(pf.TargetError, match=r"'fc9'.*matched no module.*fc1 \(Linear\)"):
        targets(SmallCNN(), target_modules=["fc9"])
    with pytest.raises(pf.TargetError, match="exclude_modules"):
        targets(SmallCNN(), exclude_modules=["nope"])


def test_nothing_to_wrap_and_everything_excluded() -> None:
    with pytest.raises(pf.TargetError, match="nothing to wrap"):
        pf.perforate(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)), pf.PerforationConfig.paper())
    with pytest.raises(pf.TargetError, match=r"itself one layer.*nn\.Sequential"):
        pf.perforate(nn.Linear(3, 2), pf.PerforationConfig.paper())
    with pytest.raises(pf.TargetError, match="left no module"):
        targets(mlp(), exclude_modules=[nn.Linear])


def test_container_without_wrappable_layers_is_an_error() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU()))
    with pytest.raises(pf.TargetError, match="contain no wrappable"):
        targets(net, target_modules=["1"])


def test_multihead_attention_is_wrapped_whole_never_its_out_proj() -> None:
    net = nn.Sequential(nn.Linear(4, 4))
    net.add_module("attn", nn.MultiheadAttention(4, 2))
    assert targets(net, target_modules=[nn.Linear]) == ["0"]
    assert targets(net) == ["0", "attn"]
    assert targets(net, target_modules=["attn"]) == ["attn"]
    model = pf.perforate(net, pf.PerforationConfig.paper())
    assert list(model.dendrite_layers()) == ["0", "attn.q_proj", "attn.k_proj", "attn.v_proj",
                                             "attn.out_proj"]


class MyLinear(nn.Linear):
    pass


class DoubledLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_subclasses_and_parametrised_layers(caplog: pytest.LogCaptureFixture) -> None:
    net = nn.Sequential(MyLinear(3, 4), weight_norm(nn.Linear(4, 4)), DoubledLinear(4, 4),
                        spectral_norm(nn.Conv1d(4, 2, 1)), nn.ConvTranspose1d(2, 2, 3))
    with caplog.at_level(logging.INFO, logger="perforate.engine.targeting"):
        assert targets(net) == ["0", "1", "3", "4"]
    assert "not wrapping '2': DoubledLinear overrides Linear.forward" in caplog.text
    assert targets(net, target_modules=[nn.Linear]) == ["0", "1"]  # by type: skipped
    with pytest.raises(pf.TargetError, match=r"'2'.*cannot be wrapped.*overrides"):
        targets(net, target_modules=["2"])
    assert targets(net, exclude_modules=["2", "0"]) == ["1", "3", "4"]


def test_export_of_parametrised_layers_leaves_the_original_parametrised() -> None:
    net = nn.Sequential(weight_norm(nn.Linear(4, 4)), nn.Tanh(), spectral_norm(nn.Linear(4, 2)))
    model = pf.perforate(net, pf.PerforationConfig.paper()).eval()
    for layer in model.dendrite_layers().values():
        layer.resize(1)
        with torch.no_grad():
            layer.dendrite_weight.normal_()
            layer.output_weight.normal_()
    exported = torch.jit.script(pf.export(model))
    x = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), rtol=1e-5, atol=1e-6)
    assert parametrize.is_parametrized(net[0].base_layer, "weight")
    assert parametrize.is_parametrized(net[2].base_layer, "weight")
    assert net[0].weight.shape == (4, 4)  # the wrapper's view still works


def test_lazy_and_twice_perforated_modules_are_rejected() -> None:
    with pytest.raises(pf.TargetError, match="lazy"):
        pf.perforate(nn.Sequential(nn.LazyLinear(3)), pf.PerforationConfig.paper(
            target_modules=[nn.LazyLinear]))
    with pytest.raises(pf.TargetError, match=r"'0' \(LazyLinear\) is lazy.*run one forward"):
        pf.perforate(nn.Sequential(nn.LazyLinear(3), nn.Linear(3, 2)), pf.PerforationConfig.paper())
    model = pf.perforate(mlp(), pf.PerforationConfig.paper())
    with pytest.raises(pf.TargetError, match="already"):
        pf.perforate(model.net, pf.PerforationConfig.paper())


def test_bad_argument_types() -> None:
    with pytest.raises(TypeError, match=r"nn\.Module"):
        pf.perforate("not a net", pf.PerforationConfig.paper())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="PerforationConfig"):
        pf.perforate(mlp(), {"candidates": 2})  # type: ignore[arg-type]


class Matmul(nn.Module):
    """Weights no wrapper serves: ``x @ w``, w [in, out]."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_in, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def test_weights_no_wrapper_serves_are_listed_once_in_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    net = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), Matmul(4, 4), nn.LayerNorm(4),
                        Matmul(4, 4), DoubledLinear(4, 4))
    with caplog.at_level(logging.WARNING, logger="perforate.engine.targeting"):
        assert targets(net) == ["1"]
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.message.startswith("3 module(s) with weights get no dendrites, as no "
                                     "wrapper serves them: Matmul x2 (w), DoubledLinear "
                                     "(overrides forward) x1 (weight). To give them dendrites")
    assert "Embedding" not in record.message.split(". ")[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="perforate.engine.targeting"):
        # excluded (by type or name: no error though nothing wrappable matches), or outside
        # the targets: not listed
        assert targets(net, exclude_modules=[Matmul, "5"]) == ["1"]
        assert targets(net, target_modules=["1"]) == ["1"]
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="perforate.engine.targeting"):
        assert targets(net, target_modules=[nn.Linear]) == ["1"]  # selects DoubledLinear too
    assert "1 module(s)" in caplog.text and "DoubledLinear (overrides forward) x1" in caplog.text
    with pytest.raises(pf.TargetError, match="contain no wrappable"):  # no weights: an error
        targets(net, exclude_modules=["3"])


class TransposedMatmul(nn.Module):
    """A Linear layer whose weight is stored [in, out] (as Hugging Face's Conv1D)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))
        self.bias = nn.Parameter(torch.randn(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class OwnLinear(nn.Module):
    """A Linear layer written out (weight [out, in], no bias), not an nn.Linear subclass."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.weight)


class ScaledConv(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (4, 0)], ids=["square", "not_square",
                                                                 "zero_weight"])
def test_a_registered_wrapper_must_fit_the_weight_layout(shape: tuple[int, int]) -> None:
    registry = default_registry()
    registry.register(TransposedMatmul, pf.layers.Linear)
    layer = TransposedMatmul(shape[0], shape[1] or shape[0])
    if not shape[1]:  # the check uses random weights: a zero weight hides nothing
        nn.init.zeros_(layer.weight)
    rng = torch.get_rng_state()
    with pytest.raises(pf.TargetError, match=r"'0' \(TransposedMatmul\): the wrapper Linear "
                                             r"registered for TransposedMatmul does not fit"):
        pf.perforate(nn.Sequential(layer), pf.PerforationConfig.paper(), registry=registry)
    assert torch.equal(torch.get_rng_state(), rng)  # the check leaves the global RNG alone
    registry.register(TransposedMatmul, pf.layers.TransposedLinear)
    model = pf.perforate(nn.Sequential(layer), pf.PerforationConfig.paper(), registry=registry)
    assert list(model.dendrite_layers()) == ["0"]


def test_registered_wrappers_that_fit_are_accepted() -> None:
    registry = default_registry()
    registry.register(OwnLinear, pf.layers.Linear)
    registry.register(ScaledConv, pf.layers.ConvNd)
    net = nn.Sequential(ScaledConv(2, 3, 3, padding=2, dilation=2, groups=1), nn.Flatten(),
                        OwnLinear(3 * 6 * 6, 4))
    model = pf.perforate(net, pf.PerforationConfig.paper(), registry=registry)
    assert list(model.dendrite_layers()) == ["0", "2"]
