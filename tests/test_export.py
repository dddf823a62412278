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
from perforate.engine.layers import DendriteLayer


def _with_dendrites(net: nn.Module, data, sets: int = 2) -> pf.PerforatedModel:
    model = pf.perforate(net, pf.PerforationConfig.paper(candidates=2, seed=0))
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
    model = pf.perforate(nn.Sequential(conv), pf.PerforationConfig.paper())
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
    model = pf.perforate(net, pf.PerforationConfig.paper())
    exported = pf.export(model)
    assert type(exported.fc1) is nn.Linear and type(exported.conv1) is nn.Conv2d
    x = torch.randn(2, 2, 8, 8)
    assert torch.equal(exported(x), model(x))
    assert model.dendrite_layers()  # the model itself is untouched


def _random_sets(model: pf.PerforatedModel, sets: int) -> None:
    """Give every layer `sets` dendrite sets with random weights (cascade included)."""
    for layer in model.dendrite_layers().values():
        layer.resize(sets)
        with torch.no_grad():
            for t in (layer.dendrite_weight, layer.dendrite_bias, layer.output_weight,
                      layer.cascade_weight):
                t.normal_(std=0.5)


def _grads(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = module(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("perforated", [False, True])
def test_backward_through_the_export_equals_the_model(perforated: bool) -> None:
    """D = 3: the function's gradient (the model's with perforated=False; with perforation the
    model stops the error at its dendrites, so only the last layer's gradients agree)."""
    model = pf.perforate(SmallCNN(), pf.PerforationConfig.paper(perforated=perforated))
    _random_sets(model, 3)
    x = torch.randn(3, 2, 8, 8)
    exported = pf.export(model)
    scripted = torch.jit.script(pf.export(model))
    out, gx = _grads(model, x)
    names = list(model.dendrite_layers()) if not perforated else ["fc2"]
    for module in (exported, scripted):
        out_e, gx_e = _grads(module, x)
        assert _rel_err(out_e, out) <= 1e-6
        if not perforated:
            assert _rel_err(gx_e, gx) <= 1e-5
        for name in names:
            layer, ex = model.dendrite_layers()[name], getattr(module, name)
            n = layer.num_neurons
            base = layer.base_layer
            assert _rel_err(ex.fused.weight.grad[:n], base.weight.grad) <= 1e-5
            assert _rel_err(ex.fused.bias.grad[:n], base.bias.grad) <= 1e-5
            assert _rel_err(ex.output_weight.grad.reshape(3, n), layer.output_weight.grad) <= 1e-5
    with torch.inference_mode():  # the in-place path: the same values
        assert _rel_err(exported(x), out) <= 1e-6


class TiedLM(nn.Module):
    def __init__(self, vocab: int = 11, width: int = 6) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)
        self.head.weight = self.emb.weight  # tied

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.emb(tokens))))


def test_tied_weights_stay_tied_in_the_export() -> None:
    model = pf.perforate(TiedLM(), pf.PerforationConfig.paper(perforated=False))
    _random_sets(model, 2)
    exported = pf.export(model)
    head = exported.head
    assert head.base.weight is exported.emb.weight
    assert head.fused.weight.shape == (2 * 11, 6)  # the dendrites only: no copy of the head
    used_cascade = sum(m.num_neurons for m in model.dendrite_layers().values())  # D=2: 1 entry
    assert sum(p.numel() for p in exported.parameters()) + used_cascade \
        == model.count_parameters()
    tokens = torch.randint(0, 11, (3, 5))
    out = model(tokens)
    out_e = exported(tokens)
    assert _rel_err(out_e, out.detach()) <= 1e-6
    out.square().sum().backward()
    out_e.square().sum().backward()
    assert _rel_err(exported.emb.weight.grad, model.net.emb.weight.grad) <= 1e-5
    scripted = torch.jit.script(exported)
    assert _rel_err(scripted(tokens), out.detach()) <= 1e-6


def test_a_layer_used_twice_stays_shared() -> None:
    lin = nn.Linear(4, 4)
    model = pf.perforate(nn.Sequential(lin, nn.Tanh(), lin, nn.Tanh(), nn.Linear(4, 2)),
                         pf.PerforationConfig.paper())
    assert list(model.dendrite_layers()) == ["0", "4"]  # the second use of lin is the plain lin
    model.net[4] = model.net[0]  # a wrapper used at two places
    _random_sets(model, 1)
    exported = pf.export(model)
    assert exported[4] is exported[0]
    assert exported[2] is exported[0].base  # lin's weights stay one parameter
    assert not any(isinstance(m, DendriteLayer) for m in exported.modules())
    x = torch.randn(2, 4)
    assert _rel_err(exported(x), model(x).detach()) <= 1e-6


@pytest.mark.integrations  # ONNX (the onnx extra), 15 s: not in make test-fast
@pytest.mark.filterwarnings("ignore::FutureWarning")  # from torch.onnx's internals
def test_export_to_onnx_equals_the_model(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = pf.perforate(SmallCNN(), pf.PerforationConfig.paper())
    _random_sets(model, 2)
    model.eval()
    x = torch.randn(4, 2, 8, 8)
    path = pf.export(model, format="onnx", path=tmp_path / "m.onnx", example_inputs=(x,),
                     dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert path == tmp_path / "m.onnx" and path.stat().st_size > 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 2, 8, 8)  # another batch size
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert _rel_err(torch.from_numpy(got), model(x).detach()) <= 1e-5


def test_export_argument_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = pf.perforate(SmallCNN(), pf.PerforationConfig.paper())
    with pytest.raises(ValueError, match="format"):
        pf.export(model, format="tflite")
    with pytest.raises(TypeError, match="path="):
        pf.export(model, format="onnx")
    with pytest.raises(TypeError, match='format="onnx"'):
        pf.export(model, path=tmp_path / "m.onnx")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install perforate\[onnx\]"):
        pf.export(model, format="onnx", path=tmp_path / "m.onnx",
                  example_inputs=torch.randn(1, 2, 8, 8))
