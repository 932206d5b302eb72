"""OTP restart decisions as pure functions: supervisor flags, restart type, backoff.

One departure from OTP: a child whose host could not be reached was never started, so
it spends no restart intensity; the supervisor waits for the host (``Wait``), with the
same capped backoff, as long as it takes. A host that reboots must not fail its groups.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from supervisor.config.spec import RestartSpec, RestartType

# one_for_all: a child's failure restarts every child of the set (a group's ranks share
# one mx.distributed world); one_for_one: only the child itself (each node's actors).
Strategy = Literal["one_for_one", "one_for_all"]

# 2**64 times any sane backoff_initial is past any cap; stops float overflow for huge intensity.
_MAX_DOUBLINGS = 64


class SupervisorFlags(msgspec.Struct, frozen=True):
    """OTP's sup_flags: the strategy, and at most ``intensity`` restarts in ``period`` s.

    The backoff between restarts is ours: OTP restarts at once.
    """

    strategy: Strategy
    intensity: int = 5
    period: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


def supervisor_flags(strategy: Strategy, restart: RestartSpec) -> SupervisorFlags:
    """The flags of a supervisor with ``strategy``, from the hostfile's "restart" object."""
    return SupervisorFlags(
        strategy,
        restart.intensity,
        restart.period,
        restart.backoff_initial,
        restart.backoff_max,
    )


class RestartHistory(msgspec.Struct, frozen=True):
    """When a child was restarted recently (monotonic seconds, oldest first)."""

    timestamps: tuple[float, ...] = ()

    def within(self, period: float, now: float) -> RestartHistory:
        """The restarts at most ``period`` seconds before ``now``; older ones are forgotten."""
        return RestartHistory(tuple(t for t in self.timestamps if now - t <= period))


class Restart(msgspec.Struct, frozen=True, tag=True):
    """Restart the child after ``delay`` seconds; keep ``history`` for the next decision."""

    delay: float
    history: RestartHistory


class GiveUp(msgspec.Struct, frozen=True, tag=True):
    """Too many restarts too fast: mark the child failed and escalate."""

    reason: str


class Leave(msgspec.Struct, frozen=True, tag=True):
    """The child's restart type says it stays down; nothing failed."""


class Wait(msgspec.Struct, frozen=True, tag=True):
    """The host could not be reached: try again after ``delay``; no intensity is spent."""

    delay: float


Decision = Restart | GiveUp | Leave | Wait


def should_restart(restart_type: RestartType, exit_normal: bool) -> bool:
    """Permanent always, transient only after an abnormal exit, temporary never."""
    if restart_type == "permanent":
        return True
    if restart_type == "transient":
        return not exit_normal
    return False


def backoff_delay(flags: SupervisorFlags, restarts_in_period: int) -> float:
    """Delay before the n-th restart within the period: initial, doubling, capped at max."""
    doublings = min(max(restarts_in_period - 1, 0), _MAX_DOUBLINGS)
    return min(flags.backoff_max, flags.backoff_initial * 2.0**doublings)


def decide(
    flags: SupervisorFlags,
    history: RestartHistory,
    now: float,
    restart_type: RestartType,
    exit_normal: bool,
    unreachable: int = 0,
) -> Decision:
    """What to do when a child exited at ``now``, given its recent restarts.

    ``unreachable``: how many starts in a row could not reach the child's host (0: the
    host was reached and the child itself failed).
    """
    if not should_restart(restart_type, exit_normal):
        return Leave()
    if unreachable > 0:
        return Wait(delay=backoff_delay(flags, unreachable))
    recent = history.within(flags.period, now).timestamps + (now,)
    if len(recent) > flags.intensity:
        restarts = f"{len(recent)} restart{'s' if len(recent) > 1 else ''}"
        return GiveUp(f"{restarts} within {flags.period:g} s exceeds intensity {flags.intensity}")
    return Restart(delay=backoff_delay(flags, len(recent)), history=RestartHistory(recent))
