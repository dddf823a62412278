"""The cycle's decision logic on scripted score sequences (no model involved)."""

from __future__ import annotations

import pytest

from perforate.training.schedule import CONTINUE, GROW, INSTALL, RESTART, STOP, Schedule


def run(schedule: Schedule, script: list[tuple[str, float]]) -> list[tuple[int, str, bool]]:
    """Feed ("n", score) / ("d", improvement) items; return (epoch, action, new_best)."""
    out = []
    for kind, value in script:
        d = schedule.neuron_epoch(value) if kind == "n" else schedule.dendrite_epoch(value)
        out.append((schedule.epoch, d.action, d.new_best))
    return out


def neuron(*scores: float) -> list[tuple[str, float]]:
    return [("n", s) for s in scores]


def dendrite(*gains: float) -> list[tuple[str, float]]:
    return [("d", g) for g in gains]


def test_paper_cycle_switch_points_and_stop():
    s = Schedule(neuron_patience=3, dendrite_patience=2, max_dendrite_epochs=5)
    # cycle 0: best 0.6 at epoch 2; the tie at epoch 3 is no improvement; ends at epoch 5
    got = run(s, neuron(0.5, 0.6, 0.6, 0.55, 0.58))
    assert got == [(1, CONTINUE, True), (2, CONTINUE, True), (3, CONTINUE, False),
                   (4, CONTINUE, False), (5, GROW, False)]
    assert s.phase == "dendrite" and s.best_cycle == 0
    r0 = s.cycle_results[0]
    assert (r0.best, r0.best_epoch, r0.epochs, r0.improved) == (0.6, 2, 5, True)
    # dendrite phase 1: gains above 1e-3 reset the plateau count; two stale epochs end it
    got = run(s, dendrite(0.3, 0.01, 0.0005, 0.0002))
    assert [a for _, a, _ in got] == [CONTINUE, CONTINUE, CONTINUE, INSTALL]
    assert (s.phase, s.cycle, s.dendrite_epochs) == ("neuron", 1, 4)
    # cycle 1: its first epoch is a new best even though it only ties cycle 0 (best starts
    # at none); beats cycle 0 with 0.65, ends at epoch 14
    got = run(s, neuron(0.6, 0.65, 0.64, 0.64, 0.64))
    assert got[0] == (10, CONTINUE, True) and got[1] == (11, CONTINUE, True)
    assert got[-1] == (14, GROW, False)
    r1 = s.cycle_results[1]
    assert (r1.best, r1.best_epoch, r1.epochs, r1.dendrite_epochs, r1.improved) == \
        (0.65, 11, 5, 4, True)
    # dendrite phase 2: always improving, ends at max_dendrite_epochs (5)
    got = run(s, dendrite(0.5, 0.5, 0.5, 0.5, 0.5))
    assert [a for _, a, _ in got] == [CONTINUE] * 4 + [INSTALL]
    # cycle 2 only ties cycle 1: a tie is no improvement -> stop, final = cycle 1
    got = run(s, neuron(0.65, 0.65, 0.65, 0.65))
    assert got == [(20, CONTINUE, True), (21, CONTINUE, False), (22, CONTINUE, False),
                   (23, STOP, False)]
    assert s.done and s.best_cycle == 1 and not s.cycle_results[2].improved
    assert "did not improve" in s.stop_reason
    with pytest.raises(RuntimeError, match="done"):
        s.neuron_epoch(1.0)


def test_min_mode_and_threshold():
    s = Schedule(mode="min", neuron_patience=2, improvement_threshold=0.1)
    got = run(s, neuron(1.0, 0.95, 0.85))
    # 0.95 is not better than 1.0 by more than 0.1; 0.85 is
    assert [b for _, _, b in got] == [True, False, True]
    got = run(s, neuron(0.8, 0.9))
    assert got[-1][1] == GROW and s.cycle_results[0].best == 0.85


def test_restart_control_has_no_dendrite_phase():
    s = Schedule(neuron_patience=2, add_dendrites=False)
    got = run(s, neuron(0.1, 0.2, 0.2, 0.2))
    assert got[-1] == (4, RESTART, False)
    assert s.phase == "neuron" and s.cycle == 1
    with pytest.raises(RuntimeError, match="neuron-phase"):
        s.dendrite_epoch(0.5)
    got = run(s, neuron(0.3, 0.3, 0.3))
    assert got[-1][1] == RESTART and s.best_cycle == 1
    got = run(s, neuron(0.25, 0.2, 0.2))
    assert got[-1][1] == STOP and s.best_cycle == 1 and s.done


def test_min_dendrites_forces_growth_and_keeps_best_cycle():
    s = Schedule(neuron_patience=1, max_dendrite_epochs=1, min_dendrites=2)
    run(s, neuron(0.9, 0.8))  # cycle 0: best 0.9
    run(s, dendrite(0.5))
    got = run(s, neuron(0.7, 0.7))  # cycle 1 worse, but only 1 set tried: keep growing
    assert got[-1][1] == GROW and not s.cycle_results[1].improved
    run(s, dendrite(0.5))
    got = run(s, neuron(0.85, 0.8))  # cycle 2 beats cycle 1 but not cycle 0: stop
    assert got[-1][1] == STOP
    assert s.best_cycle == 0 and s.cycle == 2


def test_max_dendrites_stops_after_an_improving_cycle():
    s = Schedule(neuron_patience=1, max_dendrite_epochs=1, max_dendrites=1)
    run(s, neuron(0.5, 0.5) + dendrite(0.1))
    got = run(s, neuron(0.6, 0.6))
    assert got[-1][1] == STOP and s.best_cycle == 1 and "max_dendrites" in s.stop_reason
    s0 = Schedule(neuron_patience=1, max_dendrites=0)
    assert run(s0, neuron(0.5, 0.5))[-1][1] == STOP and s0.best_cycle == 0


def test_max_epochs_cap_in_neuron_phase():
    s = Schedule(neuron_patience=2, max_epochs=5)
    got = run(s, neuron(0.1, 0.2, 0.3, 0.4, 0.5))
    # the cap ends the cycle on a new-best epoch: the tracker snapshots, then stops
    assert got[-1] == (5, STOP, True) and s.best_cycle == 0
    assert s.cycle_results[0].best == 0.5 and "max_epochs" in s.stop_reason


def test_max_epochs_inside_dendrite_phase():
    s = Schedule(neuron_patience=1, max_dendrite_epochs=10, max_epochs=4)
    run(s, neuron(0.5, 0.5))
    got = run(s, dendrite(0.5, 0.5))
    assert got[-1] == (4, STOP, False) and "dendrite phase" in s.stop_reason


def test_state_dict_roundtrip_continues_identically():
    script = neuron(0.1, 0.3, 0.2, 0.2) + dendrite(0.5, 0.0, 0.0) + neuron(0.4, 0.35, 0.3)
    a = Schedule(neuron_patience=2, dendrite_patience=2)
    run(a, script[:5])
    b = Schedule(neuron_patience=2, dendrite_patience=2)
    b.load_state_dict(a.state_dict())
    assert run(a, script[5:]) == run(b, script[5:])
    assert a.state_dict() == b.state_dict()


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "maximum"}, "mode"), ({"neuron_patience": 0}, "neuron_patience"),
    ({"dendrite_patience": 1.5}, "dendrite_patience"), ({"max_dendrites": -1}, "max_dendrites"),
    ({"min_dendrites": 3, "max_dendrites": 2}, "below min_dendrites"),
    ({"correlation_threshold": -1.0}, "correlation_threshold"),
    ({"max_epochs": 0}, "max_epochs"), ({"add_dendrites": 1}, "add_dendrites"),
    ({"grace_epochs": -1}, "grace_epochs"), ({"grace_epochs": 2.0}, "grace_epochs"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Schedule(**kwargs)


def test_non_finite_score_rejected():
    with pytest.raises(ValueError, match="finite"):
        Schedule().neuron_epoch(float("nan"))


def test_a_set_that_did_not_improve_is_retried_until_the_tries_run_out():
    from perforate.training.schedule import RETRY

    s = Schedule(neuron_patience=1, dendrite_patience=1, max_dendrite_epochs=1,
                 dendrite_tries=2, max_dendrites=2)
    got = run(s, [*neuron(0.5, 0.4), *dendrite(0.1)])  # cycle 0 best 0.5; set 1
    assert [a for _, a, _ in got] == [CONTINUE, GROW, INSTALL]
    got = run(s, [*neuron(0.45, 0.4), *dendrite(0.1)])  # cycle 1: no improvement -> retry
    assert [a for _, a, _ in got] == [CONTINUE, RETRY, INSTALL]
    assert (s.retries, s.failed_tries, s.growth_steps) == (1, 1, 1)
    got = run(s, [*neuron(0.6, 0.5), *dendrite(0.1)])  # the retried set improves: grow on
    assert [a for _, a, _ in got] == [CONTINUE, GROW, INSTALL]
    assert (s.best_cycle, s.failed_tries, s.growth_steps) == (2, 0, 2)
    got = run(s, neuron(0.55, 0.5))  # set 2 fails: retried (a retry replaces, never adds)
    assert [a for _, a, _ in got] == [CONTINUE, RETRY]
    got = run(s, [*dendrite(0.1), *neuron(0.58, 0.5)])  # fails again: tries used up -> stop
    assert [a for _, a, _ in got] == [INSTALL, CONTINUE, STOP]
    assert s.done and "did not improve" in s.stop_reason and s.best_cycle == 2


def test_the_restart_control_retries_too():
    from perforate.training.schedule import RETRY

    s = Schedule(neuron_patience=1, add_dendrites=False, dendrite_tries=2)
    got = run(s, neuron(0.5, 0.4, 0.45, 0.4, 0.48, 0.4))
    assert [a for _, a, _ in got] == [CONTINUE, RESTART, CONTINUE, RETRY, CONTINUE, STOP]


def test_the_mean_plateau_reads_the_mean_gain():
    s = Schedule(neuron_patience=1, dendrite_patience=2, plateau="mean")
    run(s, neuron(0.5, 0.4))
    assert s.dendrite_epoch(0.5, 0.01).action == CONTINUE  # the max alone would continue too
    assert s.dendrite_epoch(0.5, 0.0005).action == CONTINUE
    assert s.dendrite_epoch(0.5, 0.0002).action == INSTALL  # two stale means end the phase
    with pytest.raises(ValueError, match="mean_improvement"):
        _mean_needed()
    with pytest.raises(ValueError, match="plateau"):
        Schedule(plateau="median")


def _mean_needed() -> None:
    s = Schedule(neuron_patience=1, plateau="mean")
    run(s, neuron(0.5, 0.4))
    s.dendrite_epoch(0.1)


@pytest.mark.parametrize("add_dendrites", [True, False])
def test_a_cycle_after_a_growth_is_not_judged_before_its_grace_epochs(add_dendrites):
    """The first cycle ends by patience as usual; a later one (after a growth, or a restart in
    the restart control) not before its ``grace_epochs``-th epoch, then by patience again."""
    s = Schedule(neuron_patience=2, max_dendrite_epochs=1, grace_epochs=6,
                 add_dendrites=add_dendrites)
    got = run(s, neuron(0.5, 0.4, 0.4))
    assert got[-1][1] == (GROW if add_dendrites else RESTART)  # cycle 0: patience 2, no grace
    if add_dendrites:
        assert run(s, dendrite(0.1))[-1][1] == INSTALL
    start = s.epoch
    # best at the cycle's 1st epoch: patience alone would end it at its 3rd; grace: its 6th
    got = run(s, neuron(0.45, 0.44, 0.44, 0.44, 0.44, 0.44))
    assert [a for _, a, _ in got] == [CONTINUE] * 5 + [STOP]
    assert s.epoch - start == 6 and s.cycle_results[1].epochs == 6
    # a late new best inside the grace period: patience counts from it
    s2 = Schedule(neuron_patience=2, max_dendrite_epochs=1, grace_epochs=3)
    run(s2, neuron(0.5, 0.4, 0.4) + dendrite(0.1))
    got = run(s2, neuron(0.45, 0.44, 0.6, 0.55, 0.55))
    assert [a for _, a, _ in got] == [CONTINUE] * 4 + [GROW]
    assert s2.cycle_results[1].best == 0.6 and s2.cycle_results[1].improved
    assert Schedule(grace_epochs=4).fresh().grace_epochs == 4
