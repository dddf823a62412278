"""Checksums: a flipped byte in any saved file, a config that does not belong with its
tensors, and every other load failure are a `LoadError` naming the file; files saved before
checksums existed still load (issue 22, item 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import perforate as pf
from conftest import grow, mlp
from perforate.training.checkpoint import read_checkpoint

X = torch.randn(6, 5, generator=torch.Generator().manual_seed(3))


def trained(seed: int = 0, **config) -> pf.PerforatedModel:
    torch.manual_seed(seed)
    model = pf.perforate(mlp(), pf.PerforationConfig.paper(candidates=2, seed=seed, **config))
    data = [(torch.randn(8, 5), torch.randint(0, 3, (8,))) for _ in range(2)]
    grow(model, data, nn.functional.cross_entropy, 1)
    return model


def flipped(path: Path, positions) -> list[tuple[int, Exception | None]]:
    """Flip the lowest bit of each byte at `positions` in turn; load; restore."""
    data = path.read_bytes()
    results = []
    for i in positions:
        path.write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1:])
        try:
            if path.suffix == ".pt":
                read_checkpoint(path.parent)
            else:
                pf.load(path.parent, mlp())
            results.append((i, None))
        except Exception as exc:
            results.append((i, exc))
    path.write_bytes(data)
    return results


def spread(size: int, n: int = 48) -> list[int]:
    return sorted({*range(min(size, 16)), *(size * k // n for k in range(n)), size - 1})


@pytest.mark.parametrize("name", ["model.safetensors", "perforate_config.json", "checkpoint.pt"])
def test_a_flipped_byte_in_any_file_is_a_load_error_naming_it(tmp_path, name):
    model = trained()
    model.save_pretrained(tmp_path / "m")
    tracker = pf.Tracker(model, lambda p: torch.optim.SGD(p, lr=0.1))
    tracker.step(0.5)
    tracker.save_checkpoint(tmp_path / "ck")
    path = (tmp_path / "ck" if name == "checkpoint.pt" else tmp_path / "m") / name
    size = path.stat().st_size
    positions = range(size) if name.endswith(".json") else spread(size)
    for i, exc in flipped(path, positions):
        assert isinstance(exc, pf.LoadError), (i, exc)
        assert str(path.parent) in str(exc), (i, exc)
    assert torch.equal(pf.load(tmp_path / "m", mlp())(X), model(X))  # restored: loads again
    assert read_checkpoint(tmp_path / "ck")["schedule"]["epoch"] == 1


def test_a_flipped_checksum_in_checkpoint_json_is_a_load_error(tmp_path):
    tracker = pf.Tracker(trained(), lambda p: torch.optim.SGD(p, lr=0.1))
    tracker.save_checkpoint(tmp_path)
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert set(meta["files"]) == {"checkpoint.pt"} and "pending" not in meta
    digest = meta["files"]["checkpoint.pt"]["sha256"]
    meta["files"]["checkpoint.pt"]["sha256"] = ("0" if digest[0] != "0" else "1") + digest[1:]
    (tmp_path / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(pf.LoadError, match=r"checkpoint\.pt is corrupt or not the file .*"
                       r"checkpoint\.json was written with"):
        pf.resume(tmp_path, mlp(), lambda p: torch.optim.SGD(p, lr=0.1))


def test_a_config_from_another_save_or_edited_does_not_load(tmp_path):
    ours, theirs = trained(0), trained(1, dendrite_activation="sigmoid")
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    shutil.copy(tmp_path / "theirs" / "perforate_config.json", tmp_path / "ours")
    with pytest.raises(pf.LoadError, match=r"ours/model\.safetensors is corrupt or not the file"):
        pf.load(tmp_path / "ours", mlp())

    ours.save_pretrained(tmp_path / "ours")
    path = tmp_path / "ours" / "perforate_config.json"
    meta = json.loads(path.read_text())
    meta["config"]["dendrite_activation"] = "sigmoid"  # the same shapes, another function
    path.write_text(json.dumps(meta, indent=2))
    with pytest.raises(pf.LoadError, match=r"ours/perforate_config\.json does not belong to .*"
                       r"model\.safetensors: it was edited or comes from another save"):
        pf.load(tmp_path / "ours", mlp())


def legacy(directory: Path) -> None:
    """Make a save_pretrained directory what versions before checksums wrote."""
    path = directory / "perforate_config.json"
    meta = json.loads(path.read_text())
    del meta["files"]
    path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    weights = directory / "model.safetensors"
    save_file(load_file(weights), weights, metadata={"format": "pt"})


def test_files_saved_before_checksums_load_and_their_failures_are_load_errors(tmp_path):
    model = trained()
    model.save_pretrained(tmp_path / "m")
    legacy(tmp_path / "m")
    assert torch.equal(pf.load(tmp_path / "m", mlp())(X), model(X))

    tracker = pf.Tracker(model, lambda p: torch.optim.SGD(p, lr=0.1))
    tracker.step(0.5)
    tracker.save_checkpoint(tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "checkpoint.json").read_text())
    del meta["files"]
    (tmp_path / "ck" / "checkpoint.json").write_text(json.dumps(meta))
    resumed = pf.resume(tmp_path / "ck", mlp(), lambda p: torch.optim.SGD(p, lr=0.1))
    assert resumed.epoch == 1 and torch.equal(resumed.perforated(X), model(X))

    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-10])  # truncated: was a SafetensorError
    with pytest.raises(pf.LoadError, match=rf"{weights} is not a valid safetensors file"):
        pf.load(tmp_path / "m", mlp())
    weights.write_bytes(data)
    path = tmp_path / "m" / "perforate_config.json"
    meta = json.loads(path.read_text())
    del meta["layers"]  # was a KeyError
    path.write_text(json.dumps(meta))
    with pytest.raises(pf.LoadError, match=rf"{path}: malformed .*'layers'"):
        pf.load(tmp_path / "m", mlp())
    path.write_text("[1, 2]")
    with pytest.raises(pf.LoadError, match=rf"{path} is not a JSON object"):
        pf.load(tmp_path / "m", mlp())


def test_save_pretrained_records_every_file(tmp_path):
    model = trained()
    model.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "perforate_config.json").read_text())
    data = (tmp_path / "m" / "model.safetensors").read_bytes()
    import hashlib

    assert meta["files"] == {"model.safetensors": {
        "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}
    # a directory holding other files too is updated in place, file by file
    (tmp_path / "m" / "notes.txt").write_text("mine")
    trained(1).save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"
    assert torch.equal(pf.load(tmp_path / "m", mlp())(X), trained(1)(X))
