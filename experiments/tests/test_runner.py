"""The sweep runner and the CLI around it: seeds, plans, per-process runs, resume by skipping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from perforate_experiments import runner
from perforate_experiments.data.fashion_mnist import default_fashion_mnist_dir
from perforate_experiments.registry import experiments, get_experiment
from perforate_experiments.train import run_one


def test_parse_seeds() -> None:
    assert runner.parse_seeds("0-3") == [0, 1, 2, 3]
    assert runner.parse_seeds("5,1,2-3") == [1, 2, 3, 5]
    for bad in ("", "x", "3-1", "-2"):
        with pytest.raises(ValueError, match="bad seed list"):
            runner.parse_seeds(bad)


def test_registry_has_the_seven_experiments() -> None:
    assert set(experiments()) == {"fashion-mnist", "ablation", "tox21", "physionet", "timing",
                                  "frontier", "frontier-1d", "lm"}
    assert get_experiment("ablation").variants == (
        "pb", "pb-cc", "pb-perf", "pb-head", "pb-backbone", "cc-no-perf", "gd", "restart",
        "width", "width-cc", "width-perf")
    with pytest.raises(ValueError, match="unknown experiment"):
        get_experiment("emnist")


def test_only_keeps_the_runs_of_the_given_option_values(tmp_path: Path) -> None:
    assert runner.parse_only(["net=tf16,lstm32", "net=tf8"]) == {"net": ["tf16", "lstm32",
                                                                         "tf8"]}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        runner.parse_only(["net"])
    runs = runner.plan("frontier-1d", [0], ["pb", "plain"], False, tmp_path, only={"h": ["8"]})
    assert [(v, o) for v, _, o, _ in runs] == [("pb", {"h": 8}), ("plain", {"h": 8})]


def test_plan_orders_pb_before_width_and_names_files(tmp_path: Path) -> None:
    runs = runner.plan("fashion-mnist", [0], ["width-cc", "width", "restart", "pb-cc", "pb"],
                       True, tmp_path)
    assert [r[0] for r in runs] == ["pb-cc", "pb", "restart", "width-cc", "width"]
    assert runs[1][3] == tmp_path / "fashion-mnist-quick" / "pb" / "seed-0.json"
    with pytest.raises(ValueError, match="no variant gd"):
        runner.plan("fashion-mnist", [0], ["gd"], True, tmp_path)


@pytest.mark.skipif(not default_fashion_mnist_dir().exists(),
                    reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
def test_fashion_mnist_quick_pb_and_width_control() -> None:
    exp = get_experiment("fashion-mnist")
    pb = run_one(exp, "pb", 0, quick=True)
    assert pb["metric"] == "accuracy" and 0.0 < pb["final_test"] <= 1.0
    assert pb["architectures"][0]["dendrites"] == 0
    assert pb["protocol"]["n_train"] == 256
    width = run_one(exp, "width", 0, quick=True, lookup=lambda v, s: pb)
    assert width["final_dendrites"] == 0 and width["width"] > 1.0
    # the widened plain network has about PB's final parameter count
    assert abs(width["final_params"] - pb["final_params"]) / pb["final_params"] < 0.02
    asked: list[str] = []  # width-cc matches pb-cc, the paper's algorithm
    width_cc = run_one(exp, "width-cc", 0, quick=True, lookup=lambda v, s: asked.append(v) or pb)
    assert asked == ["pb-cc"] and width_cc["final_dendrites"] == 0
    assert width_cc["final_params"] == width["final_params"]


def test_cli_sweep_runs_in_a_process_and_resumes_by_skipping(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "perforate", "experiment", "timing", "--quick", "--seeds", "0",
           "--out", str(tmp_path)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "1 run(s) done, 0 already on disk, 0 failed" in first.stdout
    row = json.loads((tmp_path / "timing-quick" / "pb" / "seed-0.json").read_text())
    assert row["experiment"] == "timing" and row["hardware"]["torch_threads"] == 1
    assert row["git_commit"]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 run(s) done, 1 already on disk" in again.stdout
    report = subprocess.run([sys.executable, "-m", "perforate", "report", str(tmp_path),
                             "--output", str(tmp_path / "results.md"), "--include-quick"],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert "timing" in (tmp_path / "results.md").read_text()


def test_worker_records_a_failure_and_clears_it_on_success(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from perforate.errors import NonFiniteError
    from perforate_experiments import worker
    from perforate_experiments.report import build_report

    def diverge(*args: object, **kwargs: object) -> dict:
        raise NonFiniteError("epoch 4: the model's train outputs are not finite")

    argv = ["physionet", "restart", "1", "--out", str(tmp_path), "--option", "width=2.0"]
    # the worker sets process-wide torch settings: undo them for the rest of the suite
    monkeypatch.setattr(worker.torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(worker.torch, "set_flush_denormal", lambda on: True)
    monkeypatch.setattr(worker, "run_one", diverge)
    with pytest.raises(NonFiniteError):
        worker.main(argv)
    path = runner.result_path(tmp_path, "physionet", "restart", 1, {"width": 2.0}, False)
    failed = runner.failure_path(path)
    assert not path.exists() and failed.name == "seed-1__width-2.0.failed"
    record = json.loads(failed.read_text())
    assert record["error"] == "NonFiniteError: epoch 4: the model's train outputs are not finite"
    assert (record["variant"], record["seed"], record["options"]) == ("restart", 1, {"width": 2.0})
    assert record["git_commit"] and record["hardware"]["cpus"] >= 1
    # the report names it; the runner does not treat it as done
    page = build_report(tmp_path, tmp_path / "results.md").read_text()
    assert "### Failed runs" in page
    assert ("| `restart` | 1 | width = 2.0 | NonFiniteError: epoch 4: the model's train outputs "
            "are not finite |") in page
    assert [r[3] for r in runner.plan("physionet", [1], ["restart"], False, tmp_path)
            if r[2] == {"width": 2.0}] == [path] and not path.exists()
    # a later success writes the row and removes the record
    monkeypatch.setattr(worker, "run_one", lambda *a, **k: {"experiment": "physionet"})
    assert worker.main(argv) == 0
    assert path.exists() and not failed.exists()


def test_flat_variant_fields_build_the_nested_config_and_rows_of_either_layout_read_flat(
        ) -> None:
    import perforate as pf
    from perforate_experiments.base import build_config, flat_config

    fields = {"dendrite_phase": "cascade_correlation", "objective": "correlation",
              "candidates": 2, "perforated": True, "seed": 3}
    config = build_config(fields)
    assert config == pf.PerforationConfig(
        dendrite_phase="cascade_correlation", perforated=True, seed=3,
        cascade=pf.CascadeCorrelation(objective="correlation", candidates=2))
    flat = flat_config(config.to_dict())
    assert {k: flat[k] for k in fields} == fields
    legacy = {"dendrite_learning": "gd", "candidate_lr": 0.5, "candidates": 3,
              "candidate_init": "fan_in"}  # a row of 0.1
    assert flat_config(legacy) == {"dendrite_phase": "task_loss", "lr": 0.5, "candidates": 3,
                                   "dendrite_init": "fan_in"}


def test_variant_config_overrides() -> None:
    from perforate.config import PAPER, PerforationConfig
    from perforate_experiments.base import config_overrides

    assert config_overrides("pb", "fc2") == {} == config_overrides("restart", "fc2")
    perf = config_overrides("pb-perf", "fc2")
    assert perf == {"perforated": True}
    assert PerforationConfig(**perf).perforated and not PerforationConfig().perforated
    assert config_overrides("pb-head", "fc2") == {**PAPER, "target_modules": ["fc2"]}
