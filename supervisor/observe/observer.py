"""The ``Observer`` the observability routes read: metrics, history, time series, the live
feed and logs, each from ``ClusterState`` (or the log ring), built in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import cached_property

from supervisor.observe import feed
from supervisor.observe.metrics import exposition, metrics_registry
from supervisor.serving.contract import FeedItem, LogFilter
from supervisor.state import ClusterState


class ClusterObserver:
    """Implements ``supervisor.serving.contract.Observer`` over ``state`` and ``log_ring``."""

    def __init__(self, state: ClusterState, log_ring=None) -> None:
        self.state = state
        self.log_ring = log_ring

    # ---------------------------------------------------------------- metrics (H-metrics)

    def metrics(self) -> tuple[bytes, str]:
        # On the event loop, as the fold: the state cannot change while it is read.
        return exposition(self._metrics_registry)

    @cached_property
    def _metrics_registry(self):
        return metrics_registry(self.state)

    # ------------------------------------------------- history, series, feed (H-feed)

    def requests(self, limit: int, status: str | None, model: str | None) -> list[dict]:
        return feed.requests(self.state, limit, status, model)

    def errors(self, limit: int) -> list[dict]:
        return feed.errors(self.state, limit)

    def timeseries(self, metric: str, window: str) -> dict:
        return feed.timeseries(self.state, metric, window)

    def events(self, after: int | None) -> AsyncIterator[FeedItem]:
        return feed.events(self.state, after)

    # -------------------------------------------------------------------- logs (H-logs)

    def logs(self, limit: int, where: LogFilter) -> list[dict]:
        _check_level(where.level)
        return self.log_ring.tail(limit, where) if self.log_ring is not None else []

    def follow_logs(self, where: LogFilter) -> AsyncIterator[dict]:
        # Not a generator: a bad filter or a full house is refused here, before any answer.
        from supervisor.logs.ring import TooManyFollowers
        from supervisor.serving.contract import QueueFull, Unavailable

        _check_level(where.level)
        if self.log_ring is None:
            raise Unavailable("this supervisor keeps no log lines to follow")
        try:
            return self.log_ring.follow(where)
        except TooManyFollowers as exc:
            raise QueueFull(str(exc), retry_after=5) from None


def _check_level(level: str | None) -> None:
    from supervisor.logs.ring import level_rank
    from supervisor.serving.contract import BadRequest

    try:
        level is None or level_rank(level)
    except ValueError as exc:
        raise BadRequest(f"level: {exc}", param="level") from None
