"""The Tox21, PhysioNet and timing experiment specs, end to end on their quick settings."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from perforate_experiments import runner
from perforate_experiments.data.paths import default_data_dir
from perforate_experiments.registry import get_experiment
from perforate_experiments.train import run_one


def _data_dir() -> Path:
    try:
        return default_data_dir()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: these tiny runs are many times slower with two threads on a busy
    2-core machine (spin-waiting workers), and the result does not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tox21_data() -> None:
    pytest.importorskip("rdkit")
    pytest.importorskip("sklearn")
    if not (_data_dir() / "tox21" / "tox21.csv").is_file():
        pytest.skip("tox21/tox21.csv missing")


@pytest.fixture
def physionet_data() -> None:
    pytest.importorskip("sklearn")
    root = _data_dir() / "physionet2012"
    for name in ("set-a.tar.gz", "set-c.tar.gz", "Outcomes-a.txt", "Outcomes-c.txt"):
        if not (root / name).is_file():
            pytest.skip(f"physionet2012/{name} missing")


def _check_row(row: dict, variant: str, seed: int, metric: str) -> None:
    assert row["variant"] == variant and row["seed"] == seed and row["quick"] is True
    assert row["metric"] == metric == row["decision_metric"]
    for key in ("first_test", "final_test"):
        assert math.isfinite(row[key]) and 0.0 <= row[key] <= 1.0, (key, row[key])
    assert row["architectures"] and all(a["params"] > 0 for a in row["architectures"])
    assert row["final_params"] > 0 and row["first_params"] > 0
    assert row["history"] and all(h["seconds"] > 0 for h in row["history"])
    assert row["protocol"]["sizes"] and row["wall_seconds"] > 0


@pytest.mark.parametrize("model", ["mpnn", "morgan"])
def test_tox21_quick(tox21_data, model):
    exp = get_experiment("tox21")
    row = run_one(exp, "pb", 0, quick=True, options={"model": model})
    _check_row(row, "pb", 0, "roc_auc")
    assert row["options"] == {"model": model} and row["protocol"]["model"] == model
    assert row["extra_tests"] == {}


def test_tox21_width_control(tox21_data):
    exp = get_experiment("tox21")
    options = {"model": "morgan"}
    pb = run_one(exp, "pb", 1, quick=True, options=options)
    row = run_one(exp, "width", 1, quick=True, options=options, lookup=lambda v, s: pb)
    _check_row(row, "width", 1, "roc_auc")
    assert row["final_dendrites"] == 0
    assert row["width"] >= 1.0
    assert abs(row["first_params"] - pb["final_params"]) <= 0.01 * pb["final_params"]


def test_physionet_quick(physionet_data):
    exp = get_experiment("physionet")
    row = run_one(exp, "pb", 0, quick=True, options={"width": 0.125})
    _check_row(row, "pb", 0, "roc_auc")
    assert row["width"] == 0.125 and row["protocol"]["width"] == 0.125
    assert set(row["extra_tests"]) == {"set_c"}
    assert 0.0 <= row["extra_tests"]["set_c"] <= 1.0


def test_physionet_plan(tmp_path):
    runs = runner.plan("physionet", [0, 1], None, quick=False, out=tmp_path)
    combos = [(variant, options["width"]) for variant, seed, options, _ in runs if seed == 0]
    assert sorted(combos) == sorted(
        [("restart", w) for w in (0.125, 0.25, 0.5, 1.0, 2.0)]
        + [(v, w) for v in ("pb", "pb-cc", "pb-perf", "width", "width-cc", "width-perf")
           for w in (0.125, 0.25)])
    assert {v for v, _ in combos[:6]} == {"pb", "pb-cc", "pb-perf"}
    assert {v for v, _ in combos[-6:]} == {"width", "width-cc", "width-perf"}
    assert len(runs) == 2 * len(combos)
    assert len({path for *_, path in runs}) == len(runs)


def test_tox21_plan(tmp_path):
    runs = runner.plan("tox21", [0], None, quick=True, out=tmp_path)
    combos = {(variant, options["model"]) for variant, _, options, _ in runs}
    assert combos == {(v, m) for v in ("pb", "pb-cc", "pb-paper", "pb-perf", "restart",
                                     "width", "width-cc", "width-perf")
                      for m in ("mpnn", "morgan")}


def test_timing_quick(physionet_data):
    exp = get_experiment("timing")
    assert exp.variants == ("pb",) and exp.default_seeds == (0,)
    row = run_one(exp, "pb", 0, quick=True)
    _check_row(row, "pb", 0, "roc_auc")
    post = row["post"]
    assert post["train_seconds"] > 0 and post["neuron_seconds_per_epoch"] > 0
    cycles = post["cycles"]
    assert cycles[0]["phase"] == "neuron" and cycles[0]["cycle"] == 0
    assert sum(c["epochs"] for c in cycles) == row["epochs"]
    assert all(c["seconds"] > 0 and c["seconds_per_epoch"] > 0 for c in cycles)
    assert abs(post["train_seconds"] - sum(h["seconds"] for h in row["history"])) < 1e-6
    assert set(post["inference"]) == {"plain", "wrapped", "exported"}
    for name, numbers in post["inference"].items():
        assert numbers["params"] > 0, name
        assert numbers["single_per_s"] > 0 and numbers["batched_per_s"] > 0, name
    assert post["inference"]["wrapped"]["params"] == row["final_params"]
    assert [c["phase"] for c in cycles] == ["neuron", "dendrite", "neuron"]  # min = max = 1
    grown = post["by_dendrites"]
    assert [g["dendrites"] for g in grown] == [0, 1]
    assert grown[0]["params"] == post["inference"]["plain"]["params"] < grown[1]["params"]
    for g in grown:
        for kind in ("wrapped", "exported"):
            assert g[kind]["single_per_s"] > 0 and g[kind]["batched_per_s"] > 0
