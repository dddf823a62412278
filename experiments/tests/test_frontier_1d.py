"""Protocol P on MNIST-1D (`perforate experiment frontier-1d`): the generated data, quick runs
of every arm, and the report's frontier section for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from perforate_experiments import runner
from perforate_experiments.data.mnist1d import generate, load_mnist1d
from perforate_experiments.registry import get_experiment
from perforate_experiments.report import build_report
from perforate_experiments.train import run_one


def test_generated_signals_are_cached_split_and_learnable(tmp_path: Path) -> None:
    x, y = generate(200)
    assert x.shape == (200, 40) and x.dtype == np.float32 and set(np.unique(y)) == set(range(10))
    again, _ = generate(200)
    assert np.array_equal(x, again)  # the generator's seed makes it reproducible
    train, val, test = load_mnist1d(tmp_path, n_train=300, n_val=100, n_test=100)
    assert [len(d) for d in (train, val, test)] == [300, 100, 100]
    assert (tmp_path / "mnist1d-n500-seed42.npz").is_file()
    cached = load_mnist1d(tmp_path, n_train=300, n_val=100, n_test=100)  # from the cache
    assert torch.equal(cached.train.tensors[0], train.tensors[0])
    assert not torch.equal(train.tensors[0][:100], test.tensors[0])  # disjoint parts


@pytest.mark.parametrize("variant", ["plain", "restart", "pb", "pb-perf", "pb-cc"])
def test_quick_runs(tmp_path_factory: pytest.TempPathFactory, variant: str) -> None:
    root = tmp_path_factory.getbasetemp() / "mnist1d-cache"
    row = run_one(get_experiment("frontier-1d"), variant, 0, quick=True,
                  options={"h": 8, "root": str(root)})
    assert row["experiment"] == "frontier-1d" and 0.0 <= row["final_test"] <= 1.0
    assert row["protocol"]["network"] == "MLP 40-h-h-10"
    first = row["first_params"]
    assert first == 40 * 8 + 8 + 8 * 8 + 8 + 8 * 10 + 10
    if variant in ("pb", "pb-perf", "pb-cc"):
        assert row["config"]["perforated"] == (variant != "pb")
        assert len(row["dendrite_phases"]) == 1  # min_dendrites=1 in quick mode


def test_plan_and_report_section(tmp_path: Path) -> None:
    runs = runner.plan("frontier-1d", [0], None, quick=False, out=tmp_path)
    combos = {(v, o["h"]) for v, _, o, _ in runs}
    assert ("plain", 48) in combos and ("pb", 16) in combos and ("pb", 48) not in combos
    out = tmp_path / "runs"
    for variant, h, test, params in (("plain", 8, 0.60, 500), ("plain", 16, 0.70, 1000),
                                     ("restart", 8, 0.61, 500), ("pb", 8, 0.66, 800)):
        row = {"experiment": "frontier-1d", "variant": variant, "seed": 0, "quick": False,
               "options": {"h": h}, "metric": "accuracy", "final_test": test,
               "first_test": test, "final_params": params, "final_dendrites": 0,
               "dendrite_phases": [], "config": {}, "tracker": {}}
        runner.write_json_atomic(runner.result_path(out, "frontier-1d", variant, 0,
                                                    {"h": h}, False), row)
    text = build_report(out, tmp_path / "results.md").read_text()
    section = text[text.index("## frontier-1d"):]
    assert "### The width frontier (plain network, one cycle)" in section
    assert "| `pb` | 1 | 66.00" in section
