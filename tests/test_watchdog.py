"""Failure detection decisions: heartbeat silence, the watchdog, a stalled monitor loop."""

from __future__ import annotations

import pytest

from supervisor.supervision.watchdog import (
    LOOP_STALL_TOLERANCE,
    Limits,
    Ok,
    Pulse,
    Silent,
    Stalled,
    check,
    loop_stall,
)

LIMITS = Limits(heartbeat=2.0, connect=45.0, watchdog=30.0)
NOW = 1000.0


def pulse(beat_age: float = 0.0, stage: str = "", busy: bool = False, progress_age: float = 0):
    return Pulse(NOW - beat_age, NOW - progress_age, stage, busy)


@pytest.mark.parametrize(
    ("the_pulse", "ready", "expected"),
    [
        # heartbeats: within the timeout is alive, past it is silent, ready or not
        (pulse(beat_age=1.9), False, Ok(NOW)),
        (pulse(beat_age=2.0), True, Ok(NOW)),
        (pulse(beat_age=2.5), False, Silent("g.rank0 heartbeat silent for 2.5 s")),
        (pulse(beat_age=2.5), True, Silent("g.rank0 heartbeat silent for 2.5 s")),
        # in mx.distributed.init the GIL is held: the connect timeout applies
        (pulse(beat_age=30.0, stage="connect"), False, Ok(NOW)),
        (
            pulse(beat_age=45.1, stage="connect"),
            False,
            Silent("g.rank0 heartbeat silent for 45.1 s"),
        ),
        (pulse(beat_age=30.0, stage="load"), False, Silent("g.rank0 heartbeat silent for 30.0 s")),
        # loading: no watchdog, whatever is in flight; progress time is kept
        (pulse(busy=True, progress_age=100.0), False, Ok(NOW - 100.0)),
        # ready and idle: no stall, and the watchdog starts over from now
        (pulse(busy=False, progress_age=100.0), True, Ok(NOW)),
        # ready and busy: progress within the interval is fine, beyond it a stall
        (pulse(busy=True, progress_age=29.0), True, Ok(NOW - 29.0)),
        (pulse(busy=True, progress_age=30.0), True, Ok(NOW - 30.0)),
        (
            pulse(busy=True, progress_age=31.0),
            True,
            Stalled("g.rank0 made no progress for 31.0 s with work in flight (watchdog)"),
        ),
        # silence is found before a stall
        (
            pulse(beat_age=3.0, busy=True, progress_age=31.0),
            True,
            Silent("g.rank0 heartbeat silent for 3.0 s"),
        ),
    ],
)
def test_check_tells_alive_silent_and_stalled(the_pulse, ready, expected):
    assert check("g.rank0", the_pulse, NOW, LIMITS, ready) == expected


def test_a_connect_limit_below_the_heartbeat_timeout_does_not_shorten_it():
    limits = Limits(heartbeat=5.0, connect=1.0, watchdog=30.0)
    assert check("a", pulse(beat_age=4.0, stage="connect"), NOW, limits, False) == Ok(NOW)


def test_a_child_that_keeps_making_progress_is_never_stalled():
    """Progress every 20 s for ten minutes against a 30 s watchdog: Ok every second."""
    progress_at = 0.0
    for now in range(600):
        if now % 20 == 0:
            progress_at = float(now)
        verdict = check("a", Pulse(now, progress_at, "", True), float(now), LIMITS, True)
        assert verdict == Ok(progress_at)


@pytest.mark.parametrize(
    ("late", "credited"),
    [
        (-0.1, 0.0),  # early
        (0.0, 0.0),
        (LOOP_STALL_TOLERANCE, 0.0),  # a busy host's ordinary jitter
        (0.6, 0.6),
        (12.0, 12.0),  # a starved supervisor: all of it is credited
    ],
)
def test_loop_stall_credits_only_lateness_past_the_tolerance(late, credited):
    assert loop_stall(100.0 + late, 100.0) == pytest.approx(credited)
