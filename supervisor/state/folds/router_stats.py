"""The router's figures for /api/cluster/status: decisions by reason, their CPU time,
failovers. Folded by ``ClusterState.apply`` from RouteDecided and RequestMoved only.

Unlike the views it is an accumulator (a bounded ring of decision times, for the
percentiles): ``json()`` is its view.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

DECISION_SAMPLES = 4096  # decision times kept for the percentiles


class RouterStats:
    """Decisions by reason, recent decision times and failovers."""

    def __init__(self, policy: str = "least_loaded", session_ttl: float = 600.0, cooldown=5.0):
        self.policy = policy
        self.session_ttl = session_ttl
        self.cooldown = cooldown
        self.decisions: dict[str, int] = {}
        self.sessions = 0
        self.failovers = 0
        self._times: deque[float] = deque(maxlen=DECISION_SAMPLES)

    def record(self, reason: str, seconds: float, sessions: int) -> None:
        self.decisions[reason] = self.decisions.get(reason, 0) + 1
        self.sessions = sessions
        self._times.append(seconds)

    def json(self) -> dict:
        times = sorted(self._times)
        return {
            "policy": self.policy,
            "session_ttl": self.session_ttl,
            "cooldown": self.cooldown,
            "sessions": self.sessions,
            "decisions": dict(self.decisions),
            "failovers": self.failovers,
            "decision_cpu_us": {
                "p50": round(percentile(times, 0.50) * 1e6, 1),
                "p99": round(percentile(times, 0.99) * 1e6, 1),
                "samples": len(times),
            },
        }


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
