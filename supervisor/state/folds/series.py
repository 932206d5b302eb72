"""Time series of the cluster's figures in memory: one ring per window, one point per bucket.

The sampler (``supervisor.cluster.sampler``) applies a ``Tick`` every ``STEP`` seconds; on
each, the fold closes the finest bucket and merges it into the coarser ones, which close
every few ticks. Three rings, each exactly one window long:

- ``15m``: a point every 2 s (450 points);
- ``1h``: a point every 10 s (360 points; the 2 s ring only reaches back 15 min);
- ``24h``: a point every 60 s (1,440 points).

Rates (``throughput`` tok/s, ``requests`` req/s) are what the bucket counted over its
length; percentiles (``ttft_p50``, ``ttft_p95``, ``latency_p50``, ms) are over the requests
that got their first token / ended within the bucket (None when there were none: a gap);
gauges (``queue_depth``, ``in_flight``, ``memory_used:<node>``) are the mean of the ticks'
readings.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from supervisor.state.folds.router_stats import percentile

STEP = 2.0  # seconds between ticks
# window -> (ticks per point, points kept)
WINDOWS = {"15m": (1, 450), "1h": (5, 360), "24h": (30, 1440)}
SAMPLES = 2048  # latencies one bucket keeps for its percentiles (the latest)
UNITS = {
    "throughput": "tok/s",
    "requests": "req/s",
    "ttft_p50": "ms",
    "ttft_p95": "ms",
    "latency_p50": "ms",
    "queue_depth": "requests",
    "in_flight": "requests",
}
MEMORY = "memory_used:"  # + a node's name; bytes
Point = list  # [unix_seconds, value | None]


def unit_of(metric: str) -> str:
    """The metric's unit; KeyError (one line, naming the known ones) for an unknown one."""
    if metric in UNITS:
        return UNITS[metric]
    if metric.startswith(MEMORY) and len(metric) > len(MEMORY):
        return "bytes"
    known = ", ".join([*UNITS, MEMORY + "<node>"])
    raise KeyError(f"metric: unknown metric {metric!r}; one of {known}")


@dataclass
class Bucket:
    """What happened since a bucket opened (monotonic ``opened``)."""

    opened: float
    ticks: int = 0
    tokens: int = 0
    requests: int = 0
    ttfts: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    gauges: dict[str, tuple[float, int]] = field(default_factory=dict)  # name -> (sum, n)

    def merge(self, other: Bucket) -> None:
        self.ticks += other.ticks
        self.tokens += other.tokens
        self.requests += other.requests
        self.ttfts.extend(other.ttfts)
        self.latencies.extend(other.latencies)
        for name, (total, n) in other.gauges.items():
            mine = self.gauges.get(name, (0.0, 0))
            self.gauges[name] = (mine[0] + total, mine[1] + n)

    def points(self, closed: float) -> dict[str, float | None]:
        """Each metric's value over the bucket, which closes at monotonic ``closed``."""
        seconds = max(closed - self.opened, 1e-9)
        ttfts, latencies = sorted(self.ttfts), sorted(self.latencies)
        out: dict[str, float | None] = {
            "throughput": round(self.tokens / seconds, 3),
            "requests": round(self.requests / seconds, 3),
            "ttft_p50": _ms(ttfts, 0.50),
            "ttft_p95": _ms(ttfts, 0.95),
            "latency_p50": _ms(latencies, 0.50),
        }
        for name, (total, n) in self.gauges.items():
            out[name] = round(total / n, 3)
        return out


def _ms(ordered: list[float], q: float) -> float | None:
    return round(percentile(ordered, q) * 1000, 1) if ordered else None


class Level:
    """One window's ring of points and its open bucket."""

    def __init__(self, ticks: int, size: int, now: float):
        self.ticks = ticks
        self.size = size
        self.bucket = Bucket(now)
        self.rings: dict[str, deque[Point]] = {}

    def add(self, closed: Bucket, now: float, wall: float) -> None:
        self.bucket.merge(closed)
        if self.bucket.ticks < self.ticks:
            return
        t = round(wall, 3)
        for name, value in self.bucket.points(now).items():
            ring = self.rings.get(name)
            if ring is None:
                ring = self.rings[name] = deque(maxlen=self.size)
            ring.append([t, value])
        self.bucket = Bucket(now)


class Series:
    """Every window's ring; the fold feeds the open 2 s bucket and closes it per tick."""

    def __init__(self, now: float):
        self._bucket = Bucket(now)
        self.levels = {name: Level(ticks, size, now) for name, (ticks, size) in WINDOWS.items()}

    # --- from the fold ---------------------------------------------------------

    def delivered(self, tokens: int) -> None:
        self._bucket.tokens += tokens

    def first_token(self, seconds: float) -> None:
        self._bucket.ttfts.append(seconds)

    def ended(self, seconds: float) -> None:
        self._bucket.requests += 1
        self._bucket.latencies.append(seconds)

    def tick(self, now: float, wall: float, gauges: dict[str, float]) -> None:
        """Close the 2 s bucket with the gauges read now; every level takes it."""
        closed, self._bucket = self._bucket, Bucket(now)
        closed.ticks = 1
        closed.gauges = {name: (float(value), 1) for name, value in gauges.items()}
        for level in self.levels.values():
            level.add(closed, now, wall)

    def forget(self, metric: str) -> None:
        """Drop a metric's rings (a node that left)."""
        for level in self.levels.values():
            level.rings.pop(metric, None)

    # --- reads -------------------------------------------------------------------

    def points(self, metric: str, window: str) -> list[Point]:
        """``[[unix_seconds, value], ...]`` oldest first; ValueError for an unknown window."""
        unit_of(metric)
        level = self.levels.get(window)
        if level is None:
            raise ValueError(f"window: unknown window {window!r}; one of {', '.join(WINDOWS)}")
        return [list(p) for p in level.rings.get(metric, ())]

    def tokens_per_second(self, seconds: float = 60.0) -> tuple[float, float]:
        """Average and peak throughput over the last ``seconds`` (the 2 s points)."""
        ring = self.levels["15m"].rings.get("throughput", ())
        recent = [v for _, v in list(ring)[-max(1, int(seconds / STEP)) :]]
        if not recent:
            return 0.0, 0.0
        return round(sum(recent) / len(recent), 3), max(recent)
