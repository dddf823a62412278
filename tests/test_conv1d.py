"""Hugging Face's Conv1D (GPT-2's attention and MLP layers, ``x @ weight`` with weight
[in, out]) gets dendrites through `TransposedLinear`, served by name without importing
transformers; a wrapper that does not fit a layer's weight layout is refused at `perforate`."""

import logging
import subprocess
import sys

import pytest
import torch
from torch import nn

import perforate as pf
import zoo
from perforate.engine.layers import Linear, TransposedLinear, default_registry

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

GPT2_LAYERS = ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
               "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj", "lm_head"]


class TinyGPT2(nn.Module):
    """A one-block GPT-2 built from its config (no download, no dropout), returning logits."""

    def __init__(self) -> None:
        super().__init__()
        self.gpt = GPT2LMHeadModel(GPT2Config(
            n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0,
            eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.gpt(tokens).logits


def _tokens(seed: int) -> tuple[torch.Tensor]:
    return (torch.randint(0, 50, (3, 6), generator=torch.Generator().manual_seed(seed)),)


GPT2 = zoo.ZooModel(
    "gpt2", TinyGPT2, _tokens,
    # wte 50*32, wpe 16*32, ln_1/ln_2/ln_f 3*64, c_attn 32*96+96, attn c_proj 32*32+32,
    # c_fc 32*128+128, mlp c_proj 128*32+32; lm_head is tied to wte
    base_parameters=1600 + 512 + 192 + 3168 + 1056 + 4224 + 4128,
    neurons=[(96, 32), (32, 32), (128, 32), (32, 128), (50, 32)],
    scriptable=False)  # GPT-2 is not TorchScript-able


def test_gpt2_wraps_every_conv1d_and_the_head() -> None:
    model = pf.perforate(TinyGPT2(), pf.PerforationConfig.paper())
    layers = model.dendrite_layers()
    assert list(layers) == [f"gpt.{n}" for n in GPT2_LAYERS]
    assert [type(m).__name__ for m in layers.values()] == 4 * ["TransposedLinear"] + ["Linear"]
    c_attn = layers["gpt.transformer.h.0.attn.c_attn"]
    assert (c_attn.num_neurons, c_attn.geometry.fan_in, c_attn.nf, c_attn.nx) == (96, 32, 96, 32)
    assert c_attn.weight.shape == (32, 96)  # the original's [in, out] layout, as a view


@pytest.mark.parametrize("check", [zoo.check_zero_dendrites_match, zoo.check_dendrite_cycle,
                                   zoo.check_state_dict_into_fresh_model, zoo.check_export,
                                   zoo.check_parameter_count, zoo.check_untrained_recipe],
                         ids=lambda f: f.__name__)
def test_gpt2_zoo_checks(check) -> None:
    check(GPT2)


def test_gpt2_save_load(tmp_path) -> None:
    zoo.check_save_load(GPT2, tmp_path)


def test_dendrites_compute_with_the_columns_of_the_weight() -> None:
    """A Conv1D with one dendrite set: ``x W + b + a * tanh(x V^T + c)``, V per neuron."""
    torch.manual_seed(0)
    base = Conv1D(5, 4)
    model = pf.perforate(nn.Sequential(base), pf.PerforationConfig.paper())
    layer = model.dendrite_layers()["0"]
    layer.resize(1)
    with torch.no_grad():
        for t in (layer.dendrite_weight, layer.dendrite_bias, layer.output_weight):
            t.normal_()
    assert layer.dendrite_weight.shape == (1, 5, 4)
    x = torch.randn(2, 3, 4)
    v, c, a = layer.dendrite_weight[0], layer.dendrite_bias[0], layer.output_weight[0]
    expected = x @ base.weight + base.bias + a * torch.tanh(x @ v.T + c)
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model(x[0, 0]), expected[0, 0])  # unbatched


def test_correlation_input_selection_reads_the_transposed_gradient() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(Conv1D(5, 6))
    model = pf.perforate(net, pf.PerforationConfig.paper(
        dendrite_inputs=3, dendrite_input_selection="correlation"))
    layer = model.dendrite_layers()["0"]
    model(torch.randn(4, 6)).square().sum().backward()
    assert layer.input_score.shape == (5, 6)
    torch.testing.assert_close(layer.input_score, layer.weight.grad.T.abs())


def test_dendrite_rank_is_refused_with_a_reason() -> None:
    with pytest.raises(pf.ConfigError, match=r"dendrite_rank applies to Linear.*Conv1D"):
        pf.perforate(nn.Sequential(Conv1D(5, 6)), pf.PerforationConfig.paper(dendrite_rank=2))


def test_conv1d_is_served_by_name_and_perforate_does_not_import_transformers() -> None:
    assert default_registry().lookup(Conv1D(3, 2)) is TransposedLinear
    code = ("import sys, perforate as pf; from torch import nn; "
            "pf.perforate(nn.Sequential(nn.Linear(2, 2)), pf.PerforationConfig.paper()); "
            "pf.default_registry(); print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_a_registry_without_conv1d_warns_that_gpt2_is_left_out(
        caplog: pytest.LogCaptureFixture) -> None:
    registry = pf.WrapperRegistry({nn.Linear: Linear})
    with caplog.at_level(logging.WARNING, logger="perforate.engine.targeting"):
        model = pf.perforate(TinyGPT2(), pf.PerforationConfig.paper(), registry=registry)
    assert list(model.dendrite_layers()) == ["gpt.lm_head"]
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "4 module(s) with weights get no dendrites" in record.message
    assert "Conv1D x4 (weight)" in record.message
    assert "registry.register(" in record.message and "exclude_modules" in record.message
    assert "Embedding" not in record.message.split(":")[1].split(".")[0]  # lookups not listed
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="perforate.engine.targeting"):  # excluded: silent
        pf.perforate(TinyGPT2(), pf.PerforationConfig.paper(exclude_modules=[Conv1D]),
                     registry=registry)
    assert not caplog.records


@pytest.mark.parametrize("n_embd", [32, 24], ids=["square", "not_square"])
def test_conv1d_registered_with_the_linear_wrapper_is_refused(n_embd: int) -> None:
    """The Linear wrapper reads weight [out, in]; Conv1D's is [in, out]: a square layer would
    compute silently wrong, another fail at the first forward after growth."""
    registry = default_registry()
    registry.register(Conv1D, Linear)
    net = nn.Sequential(Conv1D(n_embd, 32))
    with pytest.raises(pf.TargetError, match=r"'0' \(Conv1D\): the wrapper Linear registered "
                                             r"for Conv1D does not fit its weight layout"):
        pf.perforate(net, pf.PerforationConfig.paper(), registry=registry)
    registry.register(Conv1D, TransposedLinear)  # the right one, registered by type: accepted
    assert list(pf.perforate(net, pf.PerforationConfig.paper(),
                             registry=registry).dendrite_layers()) == ["0"]


def test_inspect_counts_a_conv1d_as_a_linear_layer() -> None:
    from perforate.cli.main import inspect_model

    net = nn.Sequential(Conv1D(6, 4), nn.Tanh(), nn.Linear(6, 2))
    (conv, _) = inspect_model(net, pf.PerforationConfig.paper(candidates=3), (5, 4))["layers"]
    assert (conv["type"], conv["neurons"], conv["fan_in"], conv["positions"], conv["params"]) \
        == ("Conv1D", 6, 4, 5, 30)
    assert conv["set_macs"] == 5 * (4 * 6 + 6) and conv["pool_params"] == 3 * (4 * 6 + 6)
