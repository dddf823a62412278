"""pf.export: a plain module equal to the model, TorchScript-able, loadable without perforate."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import perforate as pf
from conftest import SmallCNN, grow
from perforate.layers import DendriteLayer


def _with_dendrites(net: nn.Module, data, sets: int = 2) -> pf.PerforatedModel:
    model = pf.perforate(net, pf.PerforationConfig(candidates=2, seed=0))
    grow(model, data, nn.functional.cross_entropy, sets, cascade=True)
    return model


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b).abs().max() / b.abs().max())


def test_export_equals_model_and_survives_script_save_load(tmp_path: Path) -> None:
    data = [(torch.randn(4, 2, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    model = _with_dendrites(SmallCNN(), data)
    model.eval()
    exported = pf.export(model).eval()
    assert not any(isinstance(m, DendriteLayer) for m in exported.modules())
    x = torch.randn(5, 2, 8, 8)
    ref = model(x).detach()
    assert _rel_err(exported(x), ref) <= 1e-6
    scripted = torch.jit.script(exported)
    assert _rel_err(scripted(x), ref) <= 1e-6
    path = tmp_path / "model.pt"
    torch.jit.save(scripted, str(path))
    torch.save(x, tmp_path / "x.pt")
    # Load where importing perforate is impossible.
    script = textwrap.dedent(f"""
        import sys
        sys.modules["perforate"] = None
        import torch
        m = torch.jit.load(r"{path}")
        torch.save(m(torch.load(r"{tmp_path / 'x.pt'}")), r"{tmp_path / 'y.pt'}")
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    assert _rel_err(torch.load(tmp_path / "y.pt"), ref) <= 1e-6
    assert model.count_parameters() <= sum(p.numel() for p in exported.parameters()) + sum(
        b.numel() for b in exported.buffers())


@pytest.mark.parametrize("conv", [nn.Conv1d(4, 6, 3, groups=2, padding=1),
                                  nn.Conv3d(2, 4, 2, stride=2, bias=False)])
def test_export_conv_variants(conv: nn.Module) -> None:
    model = pf.perforate(nn.Sequential(conv))
    layer = model.dendrite_layers()["0"]
    layer.resize(3)
    with torch.no_grad():
        for t in (layer.dendrite_weight, layer.dendrite_bias, layer.output_weight):
            t.normal_()
        layer.cascade_weight.normal_()
    x = torch.randn(2, conv.in_channels, *([6] * (conv.weight.dim() - 2)))
    exported = torch.jit.script(pf.export(model))
    assert _rel_err(exported(x), model(x).detach()) <= 1e-6
    assert _rel_err(exported(x[0]), model(x[0]).detach()) <= 1e-6


def test_export_without_dendrites_is_the_original_layers() -> None:
    net = SmallCNN()
    model = pf.perforate(net)
    exported = pf.export(model)
    assert type(exported.fc1) is nn.Linear and type(exported.conv1) is nn.Conv2d
    x = torch.randn(2, 2, 8, 8)
    assert torch.equal(exported(x), model(x))
    assert model.dendrite_layers()  # the model itself is untouched
