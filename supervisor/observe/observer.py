"""The ``Observer`` the observability routes read: metrics, history, time series, the live
feed and logs, each from ``ClusterState`` (or the log ring), built in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator

from supervisor.serving.contract import FeedItem, LogFilter
from supervisor.state import ClusterState


class ClusterObserver:
    """Implements ``supervisor.serving.contract.Observer`` over ``state`` and ``log_ring``."""

    def __init__(self, state: ClusterState, log_ring=None) -> None:
        self.state = state
        self.log_ring = log_ring

    # ---------------------------------------------------------------- metrics (H-metrics)

    def metrics(self) -> tuple[bytes, str]:
        raise NotImplementedError

    # ------------------------------------------------- history, series, feed (H-feed)

    def requests(self, limit: int, status: str | None, model: str | None) -> list[dict]:
        raise NotImplementedError

    def errors(self, limit: int) -> list[dict]:
        raise NotImplementedError

    def timeseries(self, metric: str, window: str) -> dict:
        raise NotImplementedError

    def events(self, after: int | None) -> AsyncIterator[FeedItem]:
        raise NotImplementedError

    # -------------------------------------------------------------------- logs (H-logs)

    def logs(self, limit: int, where: LogFilter) -> list[dict]:
        raise NotImplementedError

    def follow_logs(self, where: LogFilter) -> AsyncIterator[dict]:
        raise NotImplementedError
