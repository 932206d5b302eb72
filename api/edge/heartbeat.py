"""A stream that never goes quiet for long, and its clean end.

A stream can be silent for minutes (a model job waiting for in-flight requests, a hub that
stalls, an idle feed or log), and proxies and clients' read timeouts close a quiet stream.
After ``heartbeat`` seconds of silence ``with_heartbeat`` yields ``None``, on which a route
sends what keeps it open: a model job's last NDJSON line again, an SSE comment.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

HEARTBEAT = 15.0  # s of silence before the last line is sent again

T = TypeVar("T")


async def with_heartbeat(
    stream: AsyncIterator[T], heartbeat: float = HEARTBEAT
) -> AsyncGenerator[T | None, None]:
    """``stream``'s items, and ``None`` after each ``heartbeat`` s without one.

    The next item is awaited in a task that outlives a heartbeat (never cancelled while the
    stream goes on, so no item is lost to a timeout); when the consumer stops, the task is
    cancelled and ``stream`` closed.
    """
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(stream))
            done, _ = await asyncio.wait({pending}, timeout=heartbeat)
            if not done:
                yield None
                continue
            task, pending = pending, None
            try:
                item = task.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is None:
            await close(stream)
        else:
            # ``stream`` is running inside ``pending`` and cannot be closed before that ends.
            pending.cancel()
            pending.add_done_callback(lambda _: _closing(stream))


_CLOSING: set[asyncio.Task] = set()  # strong references until each close has run


def _closing(stream: AsyncIterator) -> None:
    task = asyncio.ensure_future(close(stream))
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


async def close(stream: AsyncIterator) -> None:
    """Close an async generator (or anything with ``aclose``); others need nothing."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
