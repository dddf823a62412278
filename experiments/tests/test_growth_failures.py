"""The growth-failure analysis (`perforate_experiments.report.growth`) on a tiny synthetic
results directory: no-set rates, the first post-growth cycle's fields, the early effect
against the restart control, and the retry comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from perforate_experiments.report import growth
from perforate_experiments.runner import result_path, write_json_atomic

OPTS = {"h": 8}
C0 = [0.50, 0.60]
# per variant and seed: (the cycles' validation scores, final test)
RUNS: dict[str, dict[int, tuple[list[list[float]], float]]] = {
    "pb": {0: ([C0, [0.55, 0.59, 0.58, 0.57]], 0.60),
           1: ([C0, [0.58, 0.56, 0.57, 0.58]], 0.61),
           2: ([C0, [0.59, 0.62, 0.61, 0.60, 0.60]], 0.63)},
    "restart": {0: ([C0, [0.56, 0.59, 0.61, 0.58]], 0.60),
                1: ([C0, [0.58, 0.57, 0.56, 0.55]], 0.59),
                2: ([C0, [0.59, 0.60, 0.58, 0.57]], 0.59)},
    "pb-retry": {0: ([C0, [0.55, 0.59, 0.58, 0.57], [0.60, 0.62, 0.61, 0.60, 0.60]], 0.62),
                 1: ([C0, [0.58, 0.56, 0.57, 0.58], [0.57, 0.58, 0.59, 0.58]], 0.61),
                 2: ([C0, [0.59, 0.62, 0.61, 0.60, 0.60]], 0.64)},
}


def make_row(variant: str, seed: int, cycles: list[list[float]], final_test: float,
             **extra: Any) -> dict[str, Any]:
    """A result row whose architectures, history and final cycle follow `cycles`."""
    archs, history, best, final_cycle, epoch = [], [], None, 0, 0
    for i, vals in enumerate(cycles):
        improved = best is None or max(vals) > best
        if improved:
            best, final_cycle = max(vals), i
        archs.append({"cycle": i, "dendrites": 0 if variant == "restart" else i,
                      "params": 100, "epochs": len(vals), "best_val": max(vals),
                      "test": max(vals), "improved": improved, "kept": False})
        for v in vals:
            epoch += 1
            history.append({"epoch": epoch, "phase": "neuron", "dendrites": i, "val": v,
                            "test": v, "seconds": 0.1})
    tracker = {"neuron_patience": 3, **({"add_dendrites": False} if variant == "restart"
                                        else {})}
    return {"experiment": "frontier-1d", "variant": variant, "seed": seed, "quick": False,
            "options": OPTS, "metric": "accuracy", "decision_metric": "accuracy",
            "first_test": 0.5, "final_test": final_test, "final_cycle": final_cycle,
            "final_dendrites": 0 if variant == "restart" else final_cycle,
            "architectures": archs, "history": history, "tracker": tracker, **extra}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("results")
    rows = [make_row(v, s, c, t) for v, runs in RUNS.items() for s, (c, t) in runs.items()]
    rows.append(make_row("plain", 0, [C0], 0.6))  # never grows: left out
    rows.append({"experiment": "frontier-1d", "variant": "perforatedai", "seed": 0,
                 "options": OPTS, "final_test": 0.6, "final_dendrites": 0, "history": []})
    for r in rows:
        write_json_atomic(result_path(out, r["experiment"], r["variant"], r["seed"],
                                      r["options"], False), r)
    return out


@pytest.fixture(scope="module")
def analysed(results: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("json") / "growth_failures.json"
    assert growth.main([str(results), "--json", str(path)]) == 0
    return json.loads(path.read_text())


def group(analysed: dict[str, Any], variant: str) -> dict[str, Any]:
    (g,) = [g for g in analysed["groups"] if g["variant"] == variant]
    return g


def test_rates_per_variant(analysed: dict[str, Any]) -> None:
    assert [g["variant"] for g in analysed["groups"]] == ["pb", "restart", "pb-retry",
                                                          "perforatedai"]
    counts = {g["variant"]: (g["runs"], g["kept_none"], g["rate"]) for g in analysed["groups"]}
    assert counts["pb"] == (3, 2, pytest.approx(2 / 3))
    assert counts["restart"] == (3, 2, pytest.approx(2 / 3))
    assert counts["pb-retry"] == (3, 1, pytest.approx(1 / 3))
    assert counts["perforatedai"] == (1, 1, 1.0)  # no architectures: final_dendrites == 0
    assert group(analysed, "pb")["options"] == OPTS


def test_first_post_growth_cycle_fields(analysed: dict[str, Any]) -> None:
    pb = group(analysed, "pb")
    none, kept = pb["no_set"], pb["kept"]
    assert none["seeds"] == [0, 1] and kept["seeds"] == [2]
    assert none["epochs"]["values"] == [4, 4]
    assert none["best_epoch"]["values"] == [2, 1]  # a tie keeps the earlier epoch
    assert none["gap"]["values"] == pytest.approx([-1.0, -2.0])
    assert none["first_epoch_gap"]["values"] == pytest.approx([-5.0, -2.0])
    assert none["tail_slope"]["values"] == pytest.approx([-1.0, 1.0])  # last 3 epochs
    assert none["rising"] == 1 and none["n"] == 2
    assert none["gap"]["mean"] == pytest.approx(-1.5)
    # the restart control's cycle 1 on the no-set seeds: improved on seed 0, not on seed 1
    assert (none["restart_cycle1_improved"], none["restart_compared"]) == (1, 2)
    assert kept["gap"]["values"] == pytest.approx([2.0])
    assert kept["best_epoch"]["values"] == [2]
    assert (kept["restart_cycle1_improved"], kept["restart_compared"]) == (0, 1)
    retry = group(analysed, "pb-retry")
    assert (retry["failed_cycles_followed"], retry["rescued"]) == (2, 1)


def test_early_effect_against_restart(analysed: dict[str, Any]) -> None:
    early = group(analysed, "pb")["early_effect"]
    assert early["seeds"] == [0, 1, 2]
    assert early["n"][:5] == [3, 3, 3, 3, 0]
    assert early["mean"][0] == pytest.approx(-1 / 3)
    assert early["mean_abs"][0] == pytest.approx(1 / 3)
    assert early["mean"][1] == pytest.approx(1 / 3)
    assert early["mean_abs"][1] == pytest.approx(1.0)
    assert early["mean"][4] is None
    assert group(analysed, "restart")["early_effect"] is None


def test_retry_compared_with_base_by_seed(analysed: dict[str, Any]) -> None:
    per_h, pooled = analysed["comparisons"]
    diffs = [2.0, 0.0, 1.0]
    expected_p = stats.ttest_rel([0.62, 0.61, 0.64], [0.60, 0.61, 0.63]).pvalue
    for c in (per_h, pooled):
        assert (c["base"], c["alt"]) == ("pb", "pb-retry")
        assert (c["n"], c["base_kept_none"], c["alt_kept_none"]) == (3, 2, 1)
        assert c["mean_diff_points"] == pytest.approx(sum(diffs) / 3)
        assert c["std_points"] == pytest.approx(1.0)
        assert (c["better"], c["worse"]) == (2, 0)
        assert c["t_p"] == pytest.approx(expected_p)
    assert per_h["options"] == OPTS and pooled["options"] == "pooled"


def test_cycle_vals_rejects_a_history_that_does_not_match() -> None:
    row = make_row("pb", 0, [C0, [0.55, 0.59]], 0.6)
    assert growth.cycle_vals(row) == [C0, [0.55, 0.59]]
    row["architectures"][1]["best_val"] = 0.7
    assert growth.cycle_vals(row) is None
    assert growth.first_growth(row) is None


def test_single_try_derived_from_a_retry_row_and_compared() -> None:
    tries = {"neuron_patience": 3, "dendrite_tries": 2}
    # seed 0: cycle 1 fails, its retry improves; seed 1: both fail; seed 2: no failure
    retry = {s: make_row("pb-retry", s, c, t) for s, (c, t) in RUNS["pb-retry"].items()}
    for r in retry.values():
        r["tracker"] = tries
    one = growth.single_try(retry[0])
    assert one is not None and one["variant"] == "pb-retry/1try"
    assert (one["final_cycle"], one["final_test"]) == (0, 0.60)  # cycle 0's test score
    assert [a["cycle"] for a in one["architectures"]] == [0, 1]
    assert [h["val"] for h in one["history"]] == [*C0, 0.55, 0.59, 0.58, 0.57]
    assert growth.single_try(retry[2])["final_cycle"] == 1  # never failed: unchanged
    assert growth.single_try(make_row("pb", 0, [C0], 0.6)) is None  # one try: nothing
    grace = make_row("pb-grace15", 0, [C0, [0.55, 0.59, 0.58, 0.57, 0.62]], 0.64)
    result = growth.analyse([*retry.values(), grace])
    counts = {g["variant"]: (g["runs"], g["kept_none"]) for g in result["groups"]}
    assert counts["pb-retry/1try"] == (3, 2) and counts["pb-retry"] == (3, 1)
    pairs = {(c["alt"], c["base"], str(c["options"])): c for c in result["comparisons"]}
    exact = pairs[("pb-retry", "pb-retry/1try", "pooled")]
    assert (exact["n"], exact["base_kept_none"], exact["alt_kept_none"]) == (3, 2, 1)
    assert exact["mean_diff_points"] == pytest.approx((2.0 + 1.0 + 0.0) / 3)
    by_grace = pairs[("pb-grace15", "pb-retry/1try", "pooled")]
    assert (by_grace["n"], by_grace["base_kept_none"], by_grace["alt_kept_none"]) == (1, 1, 0)
    assert by_grace["mean_diff_points"] == pytest.approx(4.0)
    assert growth.bases_of("pb-grace15", ["pb", "pb-retry/1try"]) == ["pb"]
    assert growth.bases_of("pb", ["pb", "pb-retry/1try"]) == []


def _grace_module() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "growth_confirm.py"
    spec = importlib.util.spec_from_file_location("growth_confirm", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("cycle1", "grace", "ends_at"), [
    ([1.0] * 12, 0, 3),          # patience 2: the best at epoch 1, judged at epoch 3
    ([1.0] * 12, 6, 6),          # grace: not before the 6th epoch after the growth
    ([1.0, 1.0, 1.0, 1.0, 1.5] + [1.0] * 7, 6, 7),  # a best at epoch 5: patience from it
])
def test_a_grace_arm_judges_a_post_growth_cycle_late(cycle1: list[float], grace: int,
                                                     ends_at: int) -> None:
    from perforate.training.schedule import GROW, STOP, Schedule

    assert _grace_module().arm_settings(f"grace{grace}") == {"grace_epochs": grace}
    assert _grace_module().arm_settings("retry") == {"dendrite_tries": 2}
    schedule = Schedule(neuron_patience=2, max_dendrites=3, max_epochs=100, grace_epochs=grace)
    for score in (1.0, 2.0, 2.0, 2.0):  # cycle 0: best 2.0, ends after 2 stale epochs
        decision = schedule.neuron_epoch(score)
    assert decision.action == GROW and schedule.cycle_epochs == 4  # cycle 0: no grace
    schedule.skip_dendrite_phase()
    for score in cycle1:
        decision = schedule.neuron_epoch(score)
        if decision.cycle_ended:
            break
    assert (schedule.cycle_epochs, decision.action) == (ends_at, STOP)  # 1.5 < 2: no gain


def test_the_grace_arm_of_the_restart_control_lands_under_its_own_variant(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _grace_module()
    calls: list[tuple[str, int, int, str, str]] = []

    def fake_run(arm: str, seed: int, h: int, base: str = "pb",
                 experiment: str = "frontier-1d") -> dict[str, Any]:
        calls.append((arm, seed, h, base, experiment))
        return {"variant": f"{base}-{arm}", "final_cycle": 0, "final_dendrites": 0,
                "final_test": 50.0, "architectures": [], "wall_seconds": 1.0}

    monkeypatch.setattr(module, "run", fake_run)
    assert module.main(["--seeds", "1,2", "--h", "8", "--arms", "grace15", "--base", "restart",
                        "--out", str(tmp_path)]) == 0
    assert calls == [("grace15", 1, 8, "restart", "frontier-1d"),
                     ("grace15", 2, 8, "restart", "frontier-1d")]
    row = json.loads((tmp_path / "frontier-1d" / "restart-grace15" / "seed-2__h-8.json")
                     .read_text())
    assert row["variant"] == "restart-grace15"
    module.main(["--seeds", "1", "--arms", "grace15", "--base", "restart",
                 "--out", str(tmp_path)])
    assert len(calls) == 2  # a row on disk is not run again
    module.main(["--seeds", "0", "--h", "4", "--arms", "grace15", "--experiment", "frontier",
                 "--out", str(tmp_path)])  # Protocol P: the defaults are anchor-unperf
    assert calls[-1] == ("grace15", 0, 4, "anchor-unperf", "frontier")
    assert (tmp_path / "frontier" / "anchor-unperf-grace15" / "seed-0__h-4.json").is_file()
    with pytest.raises(SystemExit):
        module.main(["--base", "no-such-variant", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):  # a bad arm anywhere in the list: nothing runs
        module.main(["--seeds", "7", "--arms", "grace15,bogus", "--out", str(tmp_path)])
    assert calls[-1][1] != 7


def test_why_a_run_kept_no_set_never_grew_cut_by_the_cap_or_judged() -> None:
    never = make_row("pb", 0, [[0.5, 0.6, 0.7]], 0.7)
    capped = make_row("pb", 1, [[0.5, 0.6], [0.55]], 0.6)
    judged = make_row("pb", 2, [[0.5, 0.6], [0.55, 0.58, 0.57, 0.56]], 0.6)
    kept = make_row("pb", 3, [[0.5, 0.6], [0.65]], 0.65)
    for row, cap in ((never, 3), (capped, 3), (judged, 10), (kept, 3)):
        row["tracker"]["max_epochs"] = cap
        row["epochs"] = sum(a["epochs"] for a in row["architectures"])
    assert [growth.no_set_cause(r) for r in (never, capped, judged, kept)] == [
        "never grew", "cut by the cap", "judged", None]
    assert growth.analyse_group([never, capped, judged, kept], [])["causes"] == {
        "never grew": 1, "cut by the cap": 1, "judged": 1}


def test_a_cycle_best_within_the_improvement_threshold_still_reads_as_its_cycle() -> None:
    # mode "min" with a threshold: 3.00 -> 2.995 is no improvement, the recorded best stays 3.00
    row = make_row("pb", 0, [[3.1, 3.0, 2.995], [2.9, 2.8]], 2.8)
    row["tracker"].update(mode="min", improvement_threshold=0.01)
    row["architectures"][0]["best_val"] = 3.0
    row["architectures"][1]["best_val"] = 2.8
    assert growth.cycle_vals(row) == [[3.1, 3.0, 2.995], [2.9, 2.8]]
    row["architectures"][0]["best_val"] = 3.05  # worse than the threshold allows: not its cycle
    assert growth.cycle_vals(row) is None


def test_a_longer_budgets_arm_is_compared_with_the_restart_control_of_its_budget(
        tmp_path: Path) -> None:
    rows = [make_row("restart", 0, [C0, [0.50, 0.50]], 0.6),
            make_row("restart-e150", 0, [C0, [0.56, 0.58]], 0.6,
                     tracker={"neuron_patience": 3, "add_dendrites": False}),
            make_row("pb-e150", 0, [C0, [0.57, 0.60]], 0.6)]
    for r in rows:
        write_json_atomic(result_path(tmp_path, r["experiment"], r["variant"], r["seed"],
                                      r["options"], False), r)
    analysed = growth.analyse(growth.load_rows(tmp_path)[0])
    early = group(analysed, "pb-e150")["early_effect"]
    # against restart-e150 (+1, +2 points), not against restart (+7, +10)
    assert early["mean"][:2] == pytest.approx([1.0, 2.0])
    assert group(analysed, "restart-e150")["early_effect"] is None
