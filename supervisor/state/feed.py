"""Numbered events and their subscribers: the feed an SSE stream or a dashboard follows.

Every applied event gets the next number (from 1) and is kept in a ring of the last
``EVENT_LOG_SIZE``. A subscriber asks for the events after a number it saw; when that
number is unknown (None, fell out of the ring, or from another run) or the backlog is
more than its queue holds, it gets a fresh ``Snapshot`` first instead. A subscriber's
queue holds at most ``SUBSCRIBER_QUEUE`` events: one that falls behind is not waited
for (``apply`` never blocks); its queue is dropped and it is resynced with a snapshot.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from typing import Self

import msgspec

from supervisor.state.events import Event

EVENT_LOG_SIZE = 4096  # events kept for subscribers resuming after a number
SUBSCRIBER_QUEUE = 1024  # events one subscriber may have unread before it is resynced


class Snapshot(msgspec.Struct, frozen=True, tag=True):
    """The whole state (``ClusterState.snapshot()``) as of the number it comes with."""

    state: dict


Item = tuple[int, Event | Snapshot]


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
    ):
        self._snapshot = snapshot
        self._on_close = on_close
        self._limit = limit
        self._queue: deque[tuple[int, Event]] = deque()
        self._resync = backlog is None or len(backlog) > limit
        if not self._resync:
            self._queue.extend(backlog or ())
        self._wakeup: asyncio.Future[None] | None = None
        self._closed = False
        self.resyncs = 0  # times it fell behind and was resynced

    def push(self, number: int, event: Event) -> None:
        """From ``apply``: queue the event, or drop the queue if this subscriber lags."""
        if self._resync or self._closed:
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
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._resync:
                self._resync = False
                number, state = self._snapshot()
                return number, Snapshot(state)
            if self._queue:
                return self._queue.popleft()
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup

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
