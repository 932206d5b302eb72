"""The live link probe of a serving group: a step of its shared plan, run between steps.

Rank 0 decides (``probe_due``) when its group is idle and an interval has passed; the
plan it shares says which probe, and every rank then runs the same ``actors.probe.measure``
call on the engine thread, on the stream the batch steps on. So a probe is sequenced with
the group's generation collectives and never races one (MLX-NOTES), it measures the link
and backend the group really uses, and on a Mac it needs no second process on the RDMA
device (docs/architecture.md, "Live link probe").

A collective cannot be interrupted: a probe hung on a frozen peer is reported down by a
timer after ``timeout`` and left to the supervisor's watchdog like any hung collective;
one that fails (a peer gone) is reported, then the group is lost as for any collective.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import structlog

from actors.protocol.messages import LinkProbe, ProbeSettings

log = structlog.get_logger()

ProbeKind = Literal["latency", "bandwidth"]
LATENCY_ROUNDS = 5  # 1 KiB all_sums: the median is the latency
BANDWIDTH_ROUNDS = 2  # large all_sums: bounded, since a request may be waiting


def probe_due(
    now: float,
    idle: bool,
    last_latency: float | None,
    last_bandwidth: float | None,
    settings: ProbeSettings,
) -> ProbeKind | None:
    """Which probe rank 0 runs now, if any: only when idle, and an interval has passed.

    ``last_*``: when that probe last ran (None: never, so it is due at once: the first
    figures after a group start are the link's baseline). Latency first when both are due.
    """
    if not settings.enabled or not idle:
        return None
    if last_latency is None or now - last_latency >= settings.latency_interval:
        return "latency"
    if last_bandwidth is None or now - last_bandwidth >= settings.bandwidth_interval:
        return "bandwidth"
    return None


class LinkProber:
    """Rank 0's probe clock and report; on every rank, the measurement itself."""

    def __init__(
        self,
        settings: ProbeSettings,
        report: Callable[[LinkProbe], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self._report = report
        self._clock = clock
        self._last: dict[str, float | None] = {"latency": None, "bandwidth": None}

    def due(self, idle: bool) -> tuple[ProbeKind, int] | None:
        """Rank 0: the probe to share now, and its size in bytes (bandwidth), or None."""
        kind = probe_due(
            self._clock(), idle, self._last["latency"], self._last["bandwidth"], self.settings
        )
        if kind is None:
            return None
        return kind, self.settings.bandwidth_bytes if kind == "bandwidth" else 0

    def run(self, group: Any, kind: ProbeKind, nbytes: int, leader: bool) -> None:
        """Every rank: measure as the plan says; rank 0 reports. A collective's error is
        reported (rank 0), then raised: the group is out of step, as after any collective."""
        import mlx.core as mx

        from actors.probe import measure

        self._last[kind] = self._clock()  # a failed probe waits its interval too
        stream = mx.default_stream(mx.default_device())  # the batch's (engine.batch)
        began, at = time.perf_counter(), time.time()
        timer = self._watch(kind, at, began) if leader else None
        try:
            if kind == "latency":
                figures = {"latency_s": measure.latency(group, stream, LATENCY_ROUNDS)}
            else:
                avg, peak = measure.bandwidth(group, stream, nbytes, BANDWIDTH_ROUNDS)
                figures = {"bandwidth_gbps": avg, "peak_gbps": peak, "nbytes": nbytes}
        except RuntimeError as error:  # "[ring] connection to a peer was lost", ...
            if leader:
                timer.cancel()
                self._send(kind, at, began, ok=False, error=f"{kind} probe failed: {error}")
            raise
        if leader:
            timer.cancel()
            self._send(kind, at, began, **figures)

    def _watch(self, kind: ProbeKind, at: float, began: float) -> threading.Timer:
        """Report the probe down if it is not done within the timeout (it may never be)."""
        timeout = self.settings.timeout
        error = f"{kind} probe timed out after {timeout:g} s"
        timer = threading.Timer(
            timeout, self._send, (kind, at, began), {"ok": False, "error": error}
        )
        timer.daemon = True
        timer.start()
        return timer

    def _send(self, kind: ProbeKind, at: float, began: float, **fields) -> None:
        seconds = time.perf_counter() - began
        log.debug("link_probe", kind=kind, at=at, seconds=round(seconds, 6), **fields)
        self._report(LinkProbe(kind=kind, at=at, seconds=seconds, **fields))
