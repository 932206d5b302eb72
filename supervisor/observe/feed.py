"""History, time series and the live feed as the observability routes read them: JSON-ready
dicts from ``ClusterState``'s reads, and the one-line 400s for what a caller may ask wrong.

Request ids: a record's ``id`` is the id the client saw. OpenAI's ``chatcmpl-…`` / ``cmpl-…``
(the response's ``id`` and its ``x-request-id`` header) is the request id the API submits;
Ollama's replies carry no id in the body, so theirs is the ``x-request-id`` header
(``ollama-…``). A request with ``n`` > 1 choices runs as ``n`` generations and leaves ``n``
records, ``<response id>-0`` … ``<response id>-<n-1>``: one per choice, in choice order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Self

from msgspec import to_builtins

from supervisor.serving.contract import BadRequest, FeedItem
from supervisor.state import ClusterState
from supervisor.state.events import DrainStarted
from supervisor.state.feed import VITALS, Live, Snapshot, Subscription

STATUSES = ("ok", "error", "cancelled")
LIVE_INTERVAL = 0.5  # s: vitals (heartbeats, tokens, ticks) coalesced to <= 2 items a second


def check_limit(limit: int, size: int) -> None:
    if not 1 <= limit <= size:
        message = f"limit: must be from 1 to {size} (the history's size), got {limit}"
        raise BadRequest(message, param="limit")


def requests(state: ClusterState, limit: int, status: str | None, model: str | None) -> list:
    """Request records, newest first; BadRequest for a limit or status out of range."""
    check_limit(limit, state.history_sizes[0])
    if status is not None and status not in STATUSES:
        raise BadRequest(
            f"status: unknown status {status!r}; one of {', '.join(STATUSES)}", param="status"
        )
    return [to_builtins(r) for r in state.requests(limit, status, model)]


def errors(state: ClusterState, limit: int) -> list[dict]:
    check_limit(limit, state.history_sizes[1])
    return [to_builtins(e) for e in state.errors(limit)]


def timeseries(state: ClusterState, metric: str, window: str) -> dict:
    """``{metric, unit, points}``; BadRequest naming the metric or window when unknown."""
    try:
        unit, points = state.timeseries(metric, window)
    except KeyError as exc:  # the state's messages are one line, led by the parameter
        raise BadRequest(str(exc.args[0]), param="metric") from None
    except ValueError as exc:
        raise BadRequest(str(exc), param="window") from None
    return {"metric": metric, "unit": unit, "points": points}


def feed_item(number: int, item) -> FeedItem:
    """A subscription's ``(number, event | Snapshot | Live)`` as the feed shows it."""
    if isinstance(item, Snapshot):
        return FeedItem(number, "snapshot", item.state)
    if isinstance(item, Live):
        return FeedItem(number, "live", item.figures)
    return FeedItem(number, type(item).__name__, to_builtins(item))


class Feed:
    """``Observer.events``: the state's subscription (vitals coalesced) as FeedItems.

    Not an async generator on purpose: ``__anext__`` may be cancelled (a route waiting
    with a timeout to send a heartbeat) and the next call goes on where it was, since the
    subscription removes an item only when it returns it. ``close()`` is synchronous, so
    a cancelled response can unsubscribe without awaiting anything.
    """

    def __init__(self, subscription: Subscription, state: ClusterState) -> None:
        self._subscription = subscription
        self._state = state
        self._ended = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> FeedItem:
        if self._ended:  # the supervisor stops: an open feed must not hold its shutdown
            self.close()
            raise StopAsyncIteration
        number, item = await anext(self._subscription)
        self._ended = isinstance(item, DrainStarted) or self._state.draining
        return feed_item(number, item)

    def close(self) -> None:
        self._subscription.close()

    async def aclose(self) -> None:
        self.close()


def events(state: ClusterState, after: int | None) -> AsyncIterator[FeedItem]:
    return Feed(state.subscribe(after, coalesce=VITALS, interval=LIVE_INTERVAL), state)
