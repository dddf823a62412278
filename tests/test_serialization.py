"""save_pretrained / pf.load: exact round trip in a fresh process, clear errors."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import perforate as pf
from conftest import grow, mlp
from perforate.io.integrity import fingerprint, record_of
from perforate.io.storage import FINGERPRINT_KEY


def forge_config(directory: Path, meta: dict) -> None:
    """Write `meta` as perforate_config.json the way a stranger could: with checksums and
    fingerprint that match (so the loader's own checks of the content are what is tested)."""
    weights = directory / "model.safetensors"
    core = {k: v for k, v in meta.items() if k != "files"}
    save_file(load_file(weights), weights,
              metadata={"format": "pt", FINGERPRINT_KEY: fingerprint(core)})
    files = {"model.safetensors": record_of(weights.read_bytes())}
    (directory / "perforate_config.json").write_text(json.dumps({**core, "files": files}))


def _trained(tmp_path: Path) -> tuple[pf.PerforatedModel, torch.Tensor]:
    model = pf.perforate(mlp(), pf.PerforationConfig.paper(
        candidates=2, seed=0, target_modules=nn.Linear, exclude_modules=["4"]))
    data = [(torch.randn(8, 5), torch.randint(0, 3, (8,))) for _ in range(2)]
    grow(model, data, nn.functional.cross_entropy, 2)
    return model, torch.randn(6, 5)


def test_round_trip_in_a_fresh_process(tmp_path: Path) -> None:
    model, x = _trained(tmp_path)
    model.save_pretrained(tmp_path / "m")
    torch.save(x, tmp_path / "x.pt")
    meta = json.loads((tmp_path / "m" / "perforate_config.json").read_text())
    assert meta["layers"] == {"0": {"type": "Linear", "num_dendrites": 2},
                              "2": {"type": "Linear", "num_dendrites": 2}}
    assert meta["config"]["exclude_modules"] == ["4"]
    # a type selector: a fresh process resolves torch's types without importing anything
    assert meta["config"]["target_modules"] == ["type:torch.nn.modules.linear.Linear"]
    script = textwrap.dedent(f"""
        import torch, perforate as pf
        from torch import nn
        torch.manual_seed(123)  # a different init: everything must come from the file
        net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4), nn.ReLU(),
                            nn.Linear(4, 3))
        model = pf.load(r"{tmp_path / 'm'}", net)
        x = torch.load(r"{tmp_path / 'x.pt'}")
        torch.save(model(x).detach(), r"{tmp_path / 'y.pt'}")
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    assert torch.equal(torch.load(tmp_path / "y.pt"), model(x).detach())
    assert not any(p.suffix in {".pt", ".pkl", ".bin"} for p in (tmp_path / "m").iterdir())


def test_tied_weights_survive(tmp_path: Path) -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    net[1].weight = net[0].weight
    model = pf.perforate(net, pf.PerforationConfig.paper(target_modules=["0"]))
    model.save_pretrained(tmp_path)
    fresh = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    fresh[1].weight = fresh[0].weight
    loaded = pf.load(tmp_path, fresh)
    x = torch.randn(3, 4)
    assert torch.equal(loaded(x), model(x))
    assert loaded.net[1].weight is loaded.net[0].base_layer.weight


def test_load_into_a_different_network_names_the_mismatch(tmp_path: Path) -> None:
    model, _ = _trained(tmp_path)
    model.save_pretrained(tmp_path)
    wider = nn.Sequential(nn.Linear(5, 9), nn.Tanh(), nn.Linear(9, 4), nn.ReLU(), nn.Linear(4, 3))
    with pytest.raises(pf.LoadError, match=r"'0.base_layer.weight'.*\(7, 5\).*\(9, 5\)"):
        pf.load(tmp_path, wider)
    other = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    with pytest.raises(pf.LoadError, match=r"'4'"):
        pf.load(tmp_path, other)
    with pytest.raises(pf.LoadError, match=r"no perforate_config\.json"):
        pf.load(tmp_path / "missing", mlp())
    (tmp_path / "perforate_config.json").write_text("{broken")
    with pytest.raises(pf.LoadError, match="not valid JSON"):
        pf.load(tmp_path, mlp())


def test_load_never_imports_a_module_the_config_names(tmp_path: Path, monkeypatch) -> None:
    """A stranger's directory naming `evil_ser_types.Layer`: LoadError, its code never runs."""
    marker = tmp_path / "ran"
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
    (tmp_path / "evil_ser_types.py").write_text(code + "from torch import nn\n"
                                                "class Layer(nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_ser_types", raising=False)
    model = pf.perforate(mlp(), pf.PerforationConfig.paper(target_modules=["0"]))
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "perforate_config.json"
    meta = json.loads(path.read_text())
    for field in ("target_modules", "exclude_modules"):
        meta["config"][field] = ["type:evil_ser_types.Layer"]
        forge_config(tmp_path / "m", meta)
        with pytest.raises(pf.LoadError, match=r"'evil_ser_types\.Layer'.*import evil_ser_types"):
            pf.load(tmp_path / "m", mlp())
        assert not marker.exists()
        meta["config"][field] = ["0"] if field == "target_modules" else None
    forge_config(tmp_path / "m", meta)
    assert pf.load(tmp_path / "m", mlp()).num_dendrites == 0
