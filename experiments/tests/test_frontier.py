"""Protocol P (`perforate experiment frontier`): quick runs on a synthetic Fashion-MNIST tree,
and the report's Frontier section on stored rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from perforate.demo.idx import write_idx
from perforate_experiments import runner
from perforate_experiments.registry import get_experiment
from perforate_experiments.report import build_report
from perforate_experiments.report.frontier import frontier_points, interpolate
from perforate_experiments.train import run_one


@pytest.fixture(scope="module")
def fake_fashion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10,600 training and 300 test images whose class is a bright 4x4 patch at a
    class-dependent place (learnable, so cycles differ), in the Fashion-MNIST file names."""
    root = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10_600), ("t10k", 300)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, col = 2 + 2 * int(c), 4 + int(c)
            images[i, r:r + 4, col:col + 4] = 255
        write_idx(root / f"{split}-images-idx3-ubyte", images)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.mark.parametrize("variant", ["plain", "restart", "cc", "anchor-sparse32", "cc-ls"])
def test_quick_runs(fake_fashion: Path, variant: str) -> None:
    exp = get_experiment("frontier")
    row = run_one(exp, variant, 0, quick=True, options={"h": 4, "root": str(fake_fashion)})
    assert row["experiment"] == "frontier" and row["quick"] and 0 <= row["final_test"] <= 1
    assert row["protocol"]["h"] == 4 and row["protocol"]["n_train"] == 512
    assert row["first_params"] == 784 * 4 + 4 + 4 * 10 + 10  # 3,190
    if variant in ("plain", "restart"):
        assert row["final_dendrites"] == 0 and row["dendrite_phases"] == []
        if variant == "plain":
            assert len(row["architectures"]) == 1  # one cycle
        return
    assert len(row["dendrite_phases"]) == 1  # min_dendrites=1 in quick mode
    arch, layers = row["architectures"][1], row["dendrite_phases"][0]["layers"]
    hidden, out = layers["0"]["alive"], layers["2"]["alive"]  # dead neurons are not counted
    assert 0 < hidden <= 4 and out == 10
    if variant == "anchor-sparse32":  # 4 hidden neurons see 32 inputs, 10 outputs see 4
        assert row["dendrite_phases"][0]["epochs"] == 0 and hidden == 4  # none are dead
        assert arch["params"] == 3190 + 4 * (32 + 2) + 10 * (4 + 2)
    else:
        assert arch["params"] == 3190 + hidden * (784 + 2) + 10 * (4 + 2)
    assert row["config"]["seed"] == 0


def test_plan_takes_any_variants_and_widths(tmp_path: Path) -> None:
    runs = runner.plan("frontier", [0, 1], ["plain", "anchor"], quick=False, out=tmp_path)
    plain = [r for r in runs if r[0] == "plain"]
    assert {r[2]["h"] for r in plain} == {4, 6, 8, 12, 16, 24, 32, 64, 96, 128}
    assert {r[2]["h"] for r in runs if r[0] == "anchor"} == {4, 8, 16}
    assert len(runs) == 2 * (10 + 3)


def _row(variant: str, seed: int, h: int, test: float, params: int, sets: int = 0) -> dict:
    return {"experiment": "frontier", "variant": variant, "seed": seed, "quick": False,
            "options": {"h": h}, "metric": "accuracy", "decision_metric": "accuracy",
            "first_test": test, "final_test": test, "final_params": params,
            "final_dendrites": sets, "protocol": {"h": h, "batch_size": 128},
            "architectures": [], "config": {}, "epochs": 10, "wall_seconds": 1.0}


def test_frontier_section_on_stored_rows(tmp_path: Path) -> None:
    results = tmp_path / "results"
    rows = [_row("plain", s, h, acc + 0.001 * s, p) for s in (0, 1)
            for h, acc, p in ((4, 0.80, 1000), (8, 0.84, 4000), (16, 0.86, 16000))]
    rows += [_row("restart", s, 4, 0.805 + 0.001 * s, 1000) for s in (0, 1)]
    rows += [_row("anchor", 0, 4, 0.83, 2000, 3), _row("anchor", 1, 4, 0.835, 2000, 3)]
    for r in rows[-2:]:
        r["config"] = {"dendrite_learning": "none", "dendrite_activation": "sigmoid",
                       "train_dendrites": True, "dendrite_inputs": 32}
        r["tracker"] = {"max_dendrite_epochs": 10, "dendrite_tries": 2}
        r["architectures"] = [{"cycle": 0, "best_val": 0.80}]
        r["dendrite_phases"] = [{"epochs": 0, "layers": {"0": {"mean_corr": 0.0}},
                                 "val_at_install": 0.79}]
    rows += [_row("perforatedai", 0, 4, 0.84, 2000, 3)]
    for r in rows:
        path = runner.result_path(results, "frontier", r["variant"], r["seed"], r["options"],
                                  False)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))
    page = build_report(results, tmp_path / "docs" / "results.md")
    text = page.read_text()
    section = text[text.index("## frontier"):]
    assert "| 16 | 2 | 86.05 ± 0.07 | 16,000 |" in section  # the plain frontier table
    table = section[section.index("#### h = 4"):]
    line = next(x for x in table.splitlines() if x.startswith("| `anchor` |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:5] == ["2", "83.25 ± 0.35", "2,000", "3.0"]
    assert cells[5] == "+2.70 ± 0.28" and cells[6] == "2/2"  # paired with restart by seed
    # the frontier at 2,000 parameters: halfway (in log) between 1,000 and 4,000 -> 82.05
    assert cells[8] == f"{100 * (0.8325 - 0.8205):+.2f}"
    assert ("| `anchor` | untrained sigmoid candidates, then trained with the network, "
            "dendrite_inputs=32, dendrite_tries=2 |") in section
    assert "| `anchor` | 2 | 0.0 | 0/2 | 0.000 | -1.00 |" in section  # the dendrite phases
    assert "perforatedai" in section and (tmp_path / "docs" / "results" /
                                          "frontier-params-vs-test.png").stat().st_size > 5000
    assert re.search(r"!\[test accuracy against parameters\]\(results/frontier", section)


def test_interpolation_is_linear_in_log_parameters() -> None:
    points = [(1000.0, 0.8), (4000.0, 0.84)]
    assert interpolate(points, 2000.0) == pytest.approx(0.82)
    assert interpolate(points, 500.0) is None and interpolate(points, 5000.0) is None
    table = {4: {"plain": [{"final_test": 0.8, "final_params": 1000}]}}
    assert frontier_points(table) == [(1000.0, 0.8)]


def test_describe_names_the_input_selection() -> None:
    from perforate_experiments.report.frontier import describe

    config = {"dendrite_learning": "none", "dendrite_activation": "sigmoid",
              "train_dendrites": True, "dendrite_inputs": 32}
    random = describe({"variant": "anchor-sparse32", "config": config})
    top = describe({"variant": "anchor-top32",
                    "config": {**config, "dendrite_input_selection": "correlation"}})
    assert random.endswith("dendrite_inputs=32")
    assert top == random + ", dendrite_input_selection=correlation"


def test_the_legend_marks_the_rows_that_ran_with_todays_defaults() -> None:
    from perforate.config import PerforationConfig
    from perforate_experiments.report.frontier import is_default, legend

    default = {**PerforationConfig(seed=3).to_dict()}
    default.pop("dendrite_rank")  # rows made before a field existed hold its default
    tracker = {"neuron_patience": 5, "max_dendrites": 3}
    rows = {"pb": {"config": default, "tracker": tracker},
            "perf": {"config": {**default, "perforated": True}, "tracker": tracker},
            "retry": {"config": default, "tracker": {**tracker, "dendrite_tries": 2}},
            "restart": {"config": default, "tracker": {**tracker, "add_dendrites": False}}}
    assert [v for v, r in rows.items() if is_default(r)] == ["pb"]
    text = "\n".join(legend({4: {v: [{**r, "variant": v}] for v, r in rows.items()}}))
    assert text.count("**the default**") == 1
    assert "| `pb` | untrained sigmoid candidates, then trained with the network, not " \
           "perforated (**the default**" in text
