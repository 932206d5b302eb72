"""OTP restart decisions: supervisor flags, restart types, backoff, intensity/period window."""

from __future__ import annotations

import pytest

from supervisor.config.spec import RestartSpec
from supervisor.supervision.policy import (
    GiveUp,
    Leave,
    Restart,
    RestartHistory,
    SupervisorFlags,
    Wait,
    backoff_delay,
    decide,
    should_restart,
    supervisor_flags,
)

DEFAULT = SupervisorFlags("one_for_all")


def flags(**values) -> SupervisorFlags:
    return SupervisorFlags("one_for_all", **values)


def crash_loop(policy: SupervisorFlags, times: list[float]) -> list[Restart | GiveUp | Leave]:
    """Feed one abnormal exit of a permanent child at each time, threading the history."""
    history, decisions = RestartHistory(), []
    for now in times:
        decision = decide(policy, history, now, "permanent", exit_normal=False)
        decisions.append(decision)
        if isinstance(decision, Restart):
            history = decision.history
    return decisions


@pytest.mark.parametrize(
    ("restart_type", "exit_normal", "expected"),
    [
        ("permanent", True, True),
        ("permanent", False, True),
        ("transient", True, False),
        ("transient", False, True),
        ("temporary", True, False),
        ("temporary", False, False),
    ],
)
def test_should_restart_follows_the_restart_type(restart_type, exit_normal, expected):
    assert should_restart(restart_type, exit_normal) is expected


@pytest.mark.parametrize(
    ("restart_type", "exit_normal"),
    [("temporary", False), ("temporary", True), ("transient", True)],
)
def test_decide_leaves_children_whose_type_says_stay_down(restart_type, exit_normal):
    history = RestartHistory((1.0, 2.0))
    assert decide(DEFAULT, history, 3.0, restart_type, exit_normal) == Leave()


@pytest.mark.parametrize(
    ("restart_type", "exit_normal"),
    [("permanent", True), ("permanent", False), ("transient", False)],
)
def test_decide_restarts_children_whose_type_says_come_back(restart_type, exit_normal):
    decision = decide(DEFAULT, RestartHistory(), 10.0, restart_type, exit_normal)
    assert decision == Restart(delay=0.5, history=RestartHistory((10.0,)))


def test_backoff_doubles_per_restart_within_the_period():
    decisions = crash_loop(DEFAULT, [0.0, 1.0, 2.0, 3.0, 4.0])
    assert [d.delay for d in decisions] == [0.5, 1.0, 2.0, 4.0, 8.0]


@pytest.mark.parametrize(
    ("initial", "cap", "expected"),
    [
        (0.5, 3.0, [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]),
        (1.0, 1.0, [1.0] * 6),
        (0.25, 100.0, [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]),
        (0.0, 30.0, [0.0] * 6),
        (2.0, 5.0, [2.0, 4.0, 5.0, 5.0, 5.0, 5.0]),
    ],
)
def test_backoff_is_capped_at_backoff_max(initial, cap, expected):
    policy = flags(intensity=10, backoff_initial=initial, backoff_max=cap)
    decisions = crash_loop(policy, [float(t) for t in range(6)])
    assert [d.delay for d in decisions] == expected


@pytest.mark.parametrize(
    ("n", "expected"), [(0, 0.5), (1, 0.5), (2, 1.0), (7, 30.0), (10**6, 30.0)]
)
def test_backoff_delay_for_the_nth_restart(n, expected):
    assert backoff_delay(DEFAULT, n) == expected


def test_more_restarts_than_intensity_within_the_period_gives_up():
    decisions = crash_loop(DEFAULT, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert all(isinstance(d, Restart) for d in decisions[:5])
    assert decisions[5] == GiveUp("6 restarts within 60 s exceeds intensity 5")


@pytest.mark.parametrize(
    ("intensity", "period", "reason"),
    [
        (0, 60.0, "1 restart within 60 s exceeds intensity 0"),
        (1, 10.0, "2 restarts within 10 s exceeds intensity 1"),
        (3, 0.5, "4 restarts within 0.5 s exceeds intensity 3"),
    ],
)
def test_give_up_reason_names_count_period_and_intensity(intensity, period, reason):
    policy = flags(intensity=intensity, period=period)
    times = [i * 0.1 for i in range(intensity + 1)]
    assert crash_loop(policy, times)[-1] == GiveUp(reason)


def test_restarts_spread_wider_than_the_period_never_give_up():
    policy = flags(intensity=2, period=10.0)
    decisions = crash_loop(policy, [0.0, 6.0, 12.0, 18.0, 24.0, 30.0])
    assert all(isinstance(d, Restart) for d in decisions)
    assert [len(d.history.timestamps) for d in decisions] == [1, 2, 2, 2, 2, 2]


def test_window_slides_and_forgets_restarts_older_than_the_period():
    history = RestartHistory((0.0, 10.0, 50.0))
    decision = decide(DEFAULT, history, 65.0, "permanent", exit_normal=False)
    assert decision == Restart(delay=2.0, history=RestartHistory((10.0, 50.0, 65.0)))


def test_backoff_starts_over_once_the_old_restarts_leave_the_window():
    history = RestartHistory((0.0, 1.0, 2.0, 3.0))
    decision = decide(DEFAULT, history, 200.0, "permanent", exit_normal=False)
    assert decision == Restart(delay=0.5, history=RestartHistory((200.0,)))


@pytest.mark.parametrize(("age", "kept"), [(59.9, True), (60.0, True), (60.1, False)])
def test_window_edge_keeps_a_restart_exactly_one_period_old(age, kept):
    assert RestartHistory((100.0 - age,)).within(60.0, 100.0).timestamps == (
        ((100.0 - age),) if kept else ()
    )


def test_a_crash_loop_after_a_quiet_spell_gets_the_full_intensity_again():
    policy = flags(intensity=2, period=10.0)
    decisions = crash_loop(policy, [0.0, 1.0, 100.0, 101.0, 102.0])
    kinds = [type(d).__name__ for d in decisions]
    assert kinds == ["Restart", "Restart", "Restart", "Restart", "GiveUp"]


def test_decide_does_not_change_the_history_it_was_given():
    history = RestartHistory((1.0,))
    decide(DEFAULT, history, 2.0, "permanent", exit_normal=False)
    assert history.timestamps == (1.0,)


def test_huge_intensity_does_not_overflow_the_backoff():
    policy = flags(intensity=5000, period=1e9)
    decisions = crash_loop(policy, [float(t) for t in range(3000)])
    assert decisions[-1].delay == 30.0


@pytest.mark.parametrize(
    ("attempts", "delay"), [(1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (999, 30.0)]
)
def test_an_unreachable_host_is_waited_for_with_the_capped_backoff(attempts, delay):
    history = RestartHistory((1.0, 2.0))
    decision = decide(DEFAULT, history, 3.0, "permanent", exit_normal=False, unreachable=attempts)
    assert decision == Wait(delay=delay)


def test_waiting_for_a_host_spends_no_intensity_and_never_gives_up():
    """Intensity 0: one real failure gives up, a thousand unreachable starts do not."""
    policy = flags(intensity=0, backoff_initial=0.5, backoff_max=4.0)
    history = RestartHistory()
    waits = [
        decide(policy, history, float(t), "permanent", exit_normal=False, unreachable=t + 1)
        for t in range(1000)
    ]
    assert all(isinstance(w, Wait) for w in waits)
    assert max(w.delay for w in waits) == 4.0
    assert isinstance(decide(policy, history, 1000.0, "permanent", exit_normal=False), GiveUp)


def test_a_temporary_child_on_an_unreachable_host_stays_down():
    assert decide(DEFAULT, RestartHistory(), 1.0, "temporary", False, unreachable=1) == Leave()


@pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all"])
def test_supervisor_flags_come_from_the_hostfile_restart_object(strategy):
    restart = RestartSpec(intensity=2, period=10, backoff_initial=0.1, backoff_max=3)
    assert supervisor_flags(strategy, restart) == SupervisorFlags(strategy, 2, 10.0, 0.1, 3.0)


def test_default_flags_are_the_hostfile_defaults():
    assert supervisor_flags("one_for_all", RestartSpec()) == DEFAULT
