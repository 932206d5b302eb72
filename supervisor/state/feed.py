"""Numbered events and their subscribers: the feed an SSE stream or a dashboard follows.

Every applied event gets the next number (from 1) and is kept in a ring of the last
``EVENT_LOG_SIZE``. A subscriber asks for the events after a number it saw; when that
number is unknown (None, fell out of the ring, or from another run) or the backlog is
more than its queue holds, it gets a fresh ``Snapshot`` first instead. A subscriber's
queue holds at most ``SUBSCRIBER_QUEUE`` events: one that falls behind is not waited
for (``apply`` never blocks); its queue is dropped and it is resynced with a snapshot.

High-rate events (``VITALS``: heartbeats, delivered tokens, the sampler's ticks) may be
coalesced: a subscriber that asks for it gets none of them, but at most once per
``interval`` seconds after one of them, a ``Live`` item with the figures they change,
numbered as the last event the subscriber has been given or passed over (so numbers
never go down, and resuming after one repeats nothing).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from typing import Self

import msgspec

from supervisor.state.events import ActorHeartbeat, Event, Tick, TokensDelivered

EVENT_LOG_SIZE = 4096  # events kept for subscribers resuming after a number
SUBSCRIBER_QUEUE = 1024  # events one subscriber may have unread before it is resynced
COALESCE_INTERVAL = 0.5  # s: at most 2 Live items a second
VITALS: tuple[type, ...] = (ActorHeartbeat, TokensDelivered, Tick)  # what is worth coalescing


class Snapshot(msgspec.Struct, frozen=True, tag=True):
    """The whole state (``ClusterState.snapshot()``) as of the number it comes with."""

    state: dict


class Live(msgspec.Struct, frozen=True, tag=True):
    """The figures coalesced events changed (``ClusterState.live()``)."""

    figures: dict


Item = tuple[int, Event | Snapshot | Live]


class EventLog:
    """The last ``size`` events with their numbers."""

    def __init__(self, size: int = EVENT_LOG_SIZE):
        self._ring: deque[tuple[int, Event]] = deque(maxlen=size)
        self.last = 0  # the number of the last event applied

    def append(self, event: Event) -> int:
        self.last += 1
        self._ring.append((self.last, event))
        return self.last

    def since(self, after: int) -> list[tuple[int, Event]] | None:
        """The events numbered after ``after``; None when some of them are gone."""
        if after < 0 or after > self.last:
            return None
        first = self._ring[0][0] if self._ring else self.last + 1
        if after < first - 1:
            return None
        return list(itertools.islice(self._ring, after - first + 1, None))


class Subscription:
    """An async iterator of ``(number, event)``, or ``(number, Snapshot)`` on a resync.

    Registered when made, so nothing applied after ``subscribe()`` returns is missed.
    ``close()`` (or leaving ``async with``) unregisters it and ends the iteration.
    """

    def __init__(
        self,
        backlog: list[tuple[int, Event]] | None,
        snapshot: Callable[[], tuple[int, dict]],
        on_close: Callable[[Subscription], None],
        limit: int = SUBSCRIBER_QUEUE,
        *,
        coalesce: frozenset[type] = frozenset(),
        live: Callable[[], dict] | None = None,
        interval: float = COALESCE_INTERVAL,
    ):
        self._snapshot = snapshot
        self._on_close = on_close
        self._limit = limit
        self._coalesce = coalesce
        self._live = live or dict
        self._interval = interval
        self._passed: int | None = None  # the last coalesced event not yet shown as Live
        self._given = 0  # the number of the last item given
        self._next_live = 0.0  # loop time before which no Live item is given
        self._queue: deque[tuple[int, Event]] = deque()
        self._resync = backlog is None or len(backlog) > limit
        for number, event in () if self._resync else backlog or ():
            if type(event) in coalesce:
                self._passed = number
            else:
                self._queue.append((number, event))
        self._wakeup: asyncio.Future[None] | None = None
        self._closed = False
        self.resyncs = 0  # times it fell behind and was resynced

    def push(self, number: int, event: Event) -> None:
        """From ``apply``: queue the event, or drop the queue if this subscriber lags."""
        if self._resync or self._closed:
            return
        if type(event) in self._coalesce:
            first, self._passed = self._passed is None, number
            if first:  # later ones: the reader already waits for the Live item's time
                self._wake()
            return
        if len(self._queue) >= self._limit:
            self._queue.clear()
            self._resync = True
            self.resyncs += 1
        else:
            self._queue.append((number, event))
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Item:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._resync:
                self._resync, self._passed = False, None
                number, state = self._snapshot()
                self._given = number
                return number, Snapshot(state)
            if self._queue:
                item = self._queue.popleft()
                self._given = item[0]
                return item
            wait = None
            if self._passed is not None:
                wait = self._next_live - loop.time()
                if wait <= 0:
                    self._given = max(self._given, self._passed)
                    self._passed = None
                    self._next_live = loop.time() + self._interval
                    return self._given, Live(self._live())
            self._wakeup = loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._wakeup), wait)
            except TimeoutError:
                pass  # time for the Live item

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.clear()
            self._on_close(self)
            self._wake()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc) -> None:
        self.close()
