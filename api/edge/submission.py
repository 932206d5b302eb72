"""Generation streams at the HTTP edge: submit choices, merge their events, collect them.

Whatever way a response ends (done, failed, client gone), every GenerationStream is
``aclose()``d exactly here, so cancellation always reaches the actor.

A streamed response's headers wait for the first event: a request that fails before
its first token (a prompt longer than the context, every replica gone) then gets its
HTTP status like a non-streamed one, not a 200 carrying an error event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, TypeVar

import anyio
import structlog
from litestar import Request

from actors.protocol.messages import Finished, GenerationEvent, GenerationFailed, GenerationRequest
from api.edge.choices import ChoiceResult
from api.edge.errors import failure_error
from supervisor.serving.contract import GenerationService, GenerationStream

log = structlog.get_logger(__name__)

T = TypeVar("T")


class ClientGone(Exception):
    """The client hung up before a non-streamed response was ready."""


async def submit_all(
    service: GenerationService, requests: Sequence[GenerationRequest]
) -> list[GenerationStream]:
    """Admit every choice or none: a refusal closes the ones already admitted."""
    streams: list[GenerationStream] = []
    try:
        for request in requests:
            streams.append(await service.submit(request))
    except BaseException:
        await close_streams(streams)
        raise
    return streams


async def close_streams(streams: Sequence[GenerationStream]) -> None:
    # Shielded: this runs while the request's task is being cancelled (client gone).
    with anyio.CancelScope(shield=True):
        for stream in streams:
            try:
                await stream.aclose()
            except Exception:
                log.exception("api.stream_close_failed", served_by=stream.served_by)


def served_by(streams: Sequence[GenerationStream]) -> str:
    return ", ".join(dict.fromkeys(s.served_by for s in streams))


async def _pump(
    index: int,
    stream: GenerationStream,
    request_id: str,
    queue: asyncio.Queue[tuple[int, GenerationEvent]],
) -> None:
    """Forward one choice's events up to its terminal one; a stream that just stops has failed."""
    try:
        async for event in stream:
            await queue.put((index, event))
            if isinstance(event, Finished | GenerationFailed):
                return
        message = "generation ended without a result"
    except Exception as exc:  # a broken stream fails its request, not the server
        log.exception("api.stream_failed", request_id=request_id)
        message = f"generation failed: {exc}"
    await queue.put((index, GenerationFailed(request_id=request_id, message=message)))


async def merged_events(
    streams: Sequence[GenerationStream], request_ids: Sequence[str]
) -> AsyncIterator[tuple[int, GenerationEvent]]:
    """Events of all choices as ``(index, event)`` in arrival order, until each has ended."""
    # Bounded, so a client that reads slowly slows its pumps instead of growing memory.
    queue: asyncio.Queue[tuple[int, GenerationEvent]] = asyncio.Queue(maxsize=64)
    pumps = [
        asyncio.create_task(_pump(i, s, rid, queue))
        for i, (s, rid) in enumerate(zip(streams, request_ids, strict=True))
    ]
    try:
        remaining = len(streams)
        while remaining:
            index, event = await queue.get()
            if isinstance(event, Finished | GenerationFailed):
                remaining -= 1
            yield index, event
    finally:
        for task in pumps:
            task.cancel()
        with anyio.CancelScope(shield=True):
            # Pumps must be out of the streams' iterators before the streams are closed.
            await asyncio.gather(*pumps, return_exceptions=True)
        await close_streams(streams)


async def started_events(
    request: Request, streams: Sequence[GenerationStream], request_ids: Sequence[str]
) -> AsyncIterator[tuple[int, GenerationEvent]]:
    """The merged events of a stream about to be answered, once its first event is in.

    Raises the ``ServiceError`` to answer with when that first event is a failure, and
    ``ClientGone`` when the client hangs up first; either way every stream is closed.
    """
    events = merged_events(streams, request_ids)
    try:
        first = await _unless_disconnected(request, _first(events), request_ids[0])
        if isinstance(first[1], GenerationFailed):
            raise failure_error(first[1])
    except BaseException:
        with anyio.CancelScope(shield=True):
            await events.aclose()
        raise
    return _after(first, events)


async def _first(
    events: AsyncIterator[tuple[int, GenerationEvent]],
) -> tuple[int, GenerationEvent]:
    return await anext(events)


async def _after(
    first: tuple[int, GenerationEvent], events: AsyncIterator[tuple[int, GenerationEvent]]
) -> AsyncIterator[tuple[int, GenerationEvent]]:
    try:
        yield first
        async for item in events:
            yield item
    finally:
        with anyio.CancelScope(shield=True):
            await events.aclose()


async def collect_choices(
    request: Request, streams: Sequence[GenerationStream], request_ids: Sequence[str]
) -> list[ChoiceResult]:
    """Gather every choice concurrently; stop early (and cancel) if the client hangs up."""
    return await _unless_disconnected(request, _collect(streams, request_ids), request_ids[0])


async def _unless_disconnected(
    request: Request, work: Coroutine[Any, Any, T], request_id: str
) -> T:
    """``work``'s result, or ``ClientGone`` (``work`` cancelled) if the client hangs up first."""
    working = asyncio.create_task(work)
    watching = asyncio.create_task(_until_disconnected(request))
    try:
        await asyncio.wait({working, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not working.done():
            working.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(working, watching, return_exceptions=True)
    if working.cancelled():
        raise ClientGone(request_id)
    return working.result()


async def _collect(
    streams: Sequence[GenerationStream], request_ids: Sequence[str]
) -> list[ChoiceResult]:
    results = [ChoiceResult() for _ in streams]
    events = merged_events(streams, request_ids)
    try:
        async for index, event in events:
            if isinstance(event, GenerationFailed):
                raise failure_error(event)
            results[index].add(event)
    finally:
        await events.aclose()
    return results


async def _until_disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a server that cannot tell us: let the generation run to its end
        log.debug("api.disconnect_unobservable", exc_info=True)
        await asyncio.Event().wait()
