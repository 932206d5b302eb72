"""Failure detection as pure functions: heartbeat silence, the watchdog, a stalled loop.

A child is *silent* when no heartbeat came for longer than allowed (the hostfile's
``restart.heartbeat_timeout``; longer while it waits in ``mx.distributed.init``, which
holds the GIL). A ready child is *stalled* when it has work in flight and made no
progress for ``restart.watchdog_interval`` seconds. Either fails its set.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

# The monitor's own loop late by more than this was starved (a busy host), not the actors.
LOOP_STALL_TOLERANCE = 0.5


class Limits(msgspec.Struct, frozen=True):
    """How long a child may be silent (``connect``: while connecting) or make no progress."""

    heartbeat: float
    connect: float
    watchdog: float


class Pulse(msgspec.Struct, frozen=True):
    """What the supervisor last heard from one child (monotonic seconds)."""

    last_beat: float
    progress_at: float  # last progress, or last moment with nothing in flight
    stage: str = ""  # the load stage it last reported ("connect": in mx.distributed.init)
    busy: bool = False  # requests in flight on it


class Ok(msgspec.Struct, frozen=True, tag=True):
    """Alive; ``progress_at`` is the child's progress time from now on."""

    progress_at: float


class Silent(msgspec.Struct, frozen=True, tag=True):
    """No heartbeat for longer than allowed."""

    cause: ClassVar[str] = "heartbeat"
    reason: str


class Stalled(msgspec.Struct, frozen=True, tag=True):
    """Work in flight and no progress for longer than the watchdog interval."""

    cause: ClassVar[str] = "watchdog"
    reason: str


Verdict = Ok | Silent | Stalled


def check(actor_id: str, pulse: Pulse, now: float, limits: Limits, ready: bool) -> Verdict:
    """Is the child alive at ``now``? While loading (not ``ready``) heartbeats alone tell."""
    silent = now - pulse.last_beat
    allowed = limits.heartbeat
    if pulse.stage == "connect":
        allowed = max(allowed, limits.connect)
    if silent > allowed:
        return Silent(f"{actor_id} heartbeat silent for {silent:.1f} s")
    if not ready:
        return Ok(pulse.progress_at)
    if not pulse.busy:
        return Ok(now)  # idle is no stall: the watchdog counts from the next request
    idle = now - pulse.progress_at
    if idle > limits.watchdog:
        return Stalled(
            f"{actor_id} made no progress for {idle:.1f} s with work in flight (watchdog)"
        )
    return Ok(pulse.progress_at)


def loop_stall(now: float, expected: float) -> float:
    """Seconds the monitor woke late past the tolerance, to credit every child; else 0.

    A starved supervisor reads no heartbeats, yet they wait unread in the sockets: the
    time it was stalled is not the actors' silence.
    """
    late = now - expected
    return late if late > LOOP_STALL_TOLERANCE else 0.0
