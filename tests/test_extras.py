"""Optional dependencies fail when a feature is set up, naming the pip install to run."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import perforate as pf
from perforate._extras import EXTRAS, available, require
from perforate.errors import MissingExtraError


def adam(params):
    return torch.optim.Adam(params, lr=1e-3)


def tiny_model() -> pf.PerforatedModel:
    return pf.perforate(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
                        pf.PerforationConfig.paper())


def test_require_returns_the_module_or_names_the_extra(monkeypatch):
    assert require("json", "train", "anything").dumps([1]) == "[1]"
    monkeypatch.setitem(sys.modules, "sklearn", None)  # simulates a missing package
    with pytest.raises(MissingExtraError) as info:
        require("sklearn.datasets", "demo", "the digits demo")
    assert str(info.value) == ("the digits demo needs scikit-learn, which is not installed: "
                               "pip install 'perforate[demo]'")
    assert isinstance(info.value, ImportError)
    assert not available("sklearn") and available("json")
    with pytest.raises(ValueError, match="unknown extra 'bogus'"):
        require("json", "bogus", "x")
    assert {"train", "demo", "experiments", "lightning", "hf", "onnx", "dev"} == set(EXTRAS)


def test_tracker_plot_true_without_matplotlib_fails_at_construction(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'perforate\[train\]'"):
        pf.Tracker(tiny_model(), adam, out_dir=tmp_path, plot=True)
    assert not any(tmp_path.iterdir())


def test_tracker_default_plot_skips_training_png_without_matplotlib(monkeypatch, tmp_path,
                                                                    caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    tracker = pf.Tracker(tiny_model(), adam, out_dir=tmp_path,
                         schedule=pf.Schedule(neuron_patience=1, max_dendrites=0))
    assert tracker.files.plot is False
    assert "pip install 'perforate[train]'" in caplog.text
    tracker.step(0.5)
    tracker.step(0.4)
    assert tracker.done
    assert (tmp_path / "history.csv").is_file() and not (tmp_path / "training.png").exists()


def test_tracker_default_plot_is_on_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    assert pf.Tracker(tiny_model(), adam, out_dir=tmp_path).files.plot is True


def test_demo_without_scikit_learn_fails_before_training(monkeypatch, tmp_path):
    from perforate.demo import run_demo

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(MissingExtraError, match=r"scikit-learn.*pip install 'perforate\[demo\]'"):
        run_demo("digits", out=tmp_path, quick=True, progress=False)
    assert not any(tmp_path.iterdir())
